//! A generated world of people and facts. Every person's facts are stated in training in
//! several declarative phrasings. For a quarter of the people ("study" people) training also
//! holds the facts as question/answer pairs; the held-out tasks ask the same kind of questions
//! about the other three quarters, whose facts training only ever states declaratively.

use super::{pick, Task};
use btx_core::rng::Rng;

const SYL_A: [&str; 16] = [
    "Al", "Bri", "Cor", "Dal", "El", "Fen", "Gar", "Hal", "Is", "Jor", "Kel", "Lor", "Mar", "Nor",
    "Or", "Tal",
];
const SYL_B: [&str; 12] = [
    "a", "e", "i", "o", "an", "en", "in", "on", "ar", "er", "ir", "or",
];
const SYL_C: [&str; 12] = [
    "dric", "wyn", "beth", "mund", "ric", "lise", "thas", "vyn", "dra", "nel", "sia", "tor",
];
const CITY_A: [&str; 12] = [
    "Brim", "Cald", "Dun", "Fair", "Glen", "Hart", "Kings", "Mill", "North", "Raven", "Stone",
    "Wester",
];
const CITY_B: [&str; 8] = [
    "haven", "ford", "moor", "wick", "field", "bridge", "holm", "port",
];
const JOBS: [&str; 16] = [
    "baker",
    "pilot",
    "doctor",
    "teacher",
    "painter",
    "farmer",
    "sailor",
    "architect",
    "librarian",
    "carpenter",
    "chemist",
    "gardener",
    "lawyer",
    "musician",
    "tailor",
    "engineer",
];
const INSTRUMENTS: [&str; 10] = [
    "violin", "piano", "flute", "cello", "guitar", "trumpet", "harp", "drums", "oboe", "banjo",
];
const COLORS: [&str; 10] = [
    "red", "blue", "green", "yellow", "purple", "orange", "silver", "white", "black", "brown",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attr {
    City,
    Job,
    Instrument,
    Color,
}

const ATTRS: [Attr; 4] = [Attr::City, Attr::Job, Attr::Instrument, Attr::Color];

impl Attr {
    /// Declarative phrasings (training text for everyone).
    fn statements(self, p: &str, v: &str) -> Vec<String> {
        match self {
            Attr::City => vec![
                format!("{p} was born in {v}."),
                format!("The birthplace of {p} is {v}."),
                format!("{p} grew up in the town of {v}, where {p} was born."),
            ],
            Attr::Job => vec![
                format!("{p} works as a {v}."),
                format!("By profession, {p} is a {v}."),
                format!("{p} earns a living as a {v}."),
            ],
            Attr::Instrument => vec![
                format!("{p} plays the {v}."),
                format!("The instrument {p} plays is the {v}."),
                format!("In the evenings {p} practises the {v}."),
            ],
            Attr::Color => vec![
                format!("{p}'s favourite colour is {v}."),
                format!("Of all colours, {p} likes {v} best."),
                format!("{p} always chooses {v}, {p}'s favourite colour."),
            ],
        }
    }

    /// The question form (training text for study people only; the task form for the rest).
    fn question(self, p: &str) -> String {
        match self {
            Attr::City => format!("Q: Where was {p} born?\nA:"),
            Attr::Job => format!("Q: What does {p} do for a living?\nA:"),
            Attr::Instrument => format!("Q: Which instrument does {p} play?\nA:"),
            Attr::Color => format!("Q: What is {p}'s favourite colour?\nA:"),
        }
    }
}

struct Person {
    name: String,
    values: [String; 4],
}

pub struct World {
    people: Vec<Person>,
}

/// People in the world: enough that memorising them is real work for a small model, and that
/// the held-out questions (three quarters of the people, four facts each: 1,200) measure a
/// model's accuracy to about ±3 points.
const PEOPLE: usize = 400;
/// One person in this many is a study person; a quarter is enough to teach the question form.
const STUDY_EVERY: usize = 4;

impl World {
    /// The world is a function of the seed alone, so docs and tasks agree on it.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::derive(seed, "knowledge-world");
        let cities: Vec<String> = (0..24)
            .map(|_| format!("{}{}", pick(&mut rng, &CITY_A), pick(&mut rng, &CITY_B)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut people = vec![];
        while people.len() < PEOPLE {
            let first = format!(
                "{}{}{}",
                pick(&mut rng, &SYL_A),
                pick(&mut rng, &SYL_B),
                pick(&mut rng, &SYL_C)
            );
            let last = format!("{}{}", pick(&mut rng, &CITY_A), pick(&mut rng, &SYL_C));
            let name = format!("{first} {last}");
            if !seen.insert(name.clone()) {
                continue;
            }
            let values = [
                pick(&mut rng, &cities).clone(),
                pick(&mut rng, &JOBS).to_string(),
                pick(&mut rng, &INSTRUMENTS).to_string(),
                pick(&mut rng, &COLORS).to_string(),
            ];
            people.push(Person { name, values });
        }
        Self { people }
    }

    fn is_study(i: usize) -> bool {
        i.is_multiple_of(STUDY_EVERY)
    }

    /// `n` documents: biographies (every person) in random phrasings and order, and question /
    /// answer sheets (study people only).
    pub fn docs(&self, rng: &mut Rng, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let i = rng.below(self.people.len());
                let p = &self.people[i];
                if Self::is_study(i) && rng.below(3) == 0 {
                    let mut order = ATTRS.to_vec();
                    rng.shuffle(&mut order);
                    order
                        .iter()
                        .map(|a| format!("{} {}", a.question(&p.name), p.values[*a as usize]))
                        .collect::<Vec<_>>()
                        .join("\n")
                } else {
                    let mut order = ATTRS.to_vec();
                    rng.shuffle(&mut order);
                    order
                        .iter()
                        .map(|a| {
                            let s = a.statements(&p.name, &p.values[*a as usize]);
                            s[rng.below(s.len())].clone()
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            })
            .collect()
    }

    /// Questions about non-study people (at most 4 per person): facts seen in training, in a
    /// phrasing never seen for them.
    pub fn tasks(&self, rng: &mut Rng, n: usize) -> Vec<Task> {
        let held: Vec<usize> = (0..self.people.len())
            .filter(|i| !Self::is_study(*i))
            .collect();
        let mut all: Vec<(usize, Attr)> = held
            .iter()
            .flat_map(|&i| ATTRS.iter().map(move |&a| (i, a)))
            .collect();
        rng.shuffle(&mut all);
        all.into_iter()
            .take(n)
            .map(|(i, a)| {
                let p = &self.people[i];
                Task {
                    prompt: a.question(&p.name),
                    answer: p.values[a as usize].clone(),
                    scorer: "first-word".into(),
                }
            })
            .collect()
    }
}
