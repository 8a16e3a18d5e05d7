//! GSM8K-style word problems: a question, a worked solution line by line, `#### <answer>`.

use super::words::{capitalize, pronoun, NAMES};
use super::{pick, range, Task};
use btx_model::rng::Rng;

const ITEMS: [(&str, &str); 12] = [
    ("apple", "apples"),
    ("pencil", "pencils"),
    ("marble", "marbles"),
    ("sticker", "stickers"),
    ("book", "books"),
    ("cookie", "cookies"),
    ("coin", "coins"),
    ("card", "cards"),
    ("shell", "shells"),
    ("stamp", "stamps"),
    ("orange", "oranges"),
    ("balloon", "balloons"),
];

const CONTAINERS: [(&str, &str); 5] = [
    ("box", "boxes"),
    ("bag", "bags"),
    ("basket", "baskets"),
    ("jar", "jars"),
    ("crate", "crates"),
];

pub struct Problem {
    question: String,
    steps: Vec<String>,
    answer: i64,
}

impl Problem {
    fn prompt(&self) -> String {
        format!("Question: {}\nAnswer:", self.question)
    }

    pub fn document(&self) -> String {
        format!(
            "{} {}\n#### {}",
            self.prompt(),
            self.steps.join(" "),
            self.answer
        )
    }

    pub fn task(&self) -> Task {
        Task {
            prompt: self.prompt(),
            answer: self.answer.to_string(),
            scorer: "math".into(),
        }
    }
}

/// One random problem from one of six two-step templates.
pub fn problem(rng: &mut Rng) -> Problem {
    let n = *pick(rng, &NAMES);
    let (he, his) = pronoun(n);
    let (one, many) = *pick(rng, &ITEMS);
    match rng.below(6) {
        0 => {
            let (a, b) = (range(rng, 5, 30), range(rng, 2, 20));
            let c = range(rng, 1, a + b - 1);
            let (s1, s2) = (a + b, a + b - c);
            Problem {
                question: format!("{n} has {a} {many}. {} buys {b} more {many} and then gives away {c} {many}. How many {many} does {n} have now?", capitalize(he)),
                steps: vec![
                    format!("{n} starts with {a} {many}."),
                    format!("After buying {b} more, {he} has {a} + {b} = {s1} {many}."),
                    format!("After giving away {c}, {he} has {s1} - {c} = {s2} {many}."),
                ],
                answer: s2,
            }
        }
        1 => {
            let (a, b, c) = (range(rng, 2, 9), range(rng, 2, 9), range(rng, 1, 15));
            let (box_, boxes) = *pick(rng, &CONTAINERS);
            let (s1, s2) = (a * b, a * b + c);
            Problem {
                question: format!("{n} has {a} {boxes}. Each {box_} holds {b} {many}. {} also finds {c} loose {many}. How many {many} does {n} have in total?", capitalize(he)),
                steps: vec![
                    format!("The {boxes} hold {a} * {b} = {s1} {many}."),
                    format!("With the loose ones, {n} has {s1} + {c} = {s2} {many}."),
                ],
                answer: s2,
            }
        }
        2 => {
            let m = *pick(rng, &NAMES);
            let m = if m == n { "Alex" } else { m };
            let (a, b) = (range(rng, 3, 25), range(rng, 1, 15));
            let (s1, s2) = (a + b, a + a + b);
            Problem {
                question: format!("{n} has {a} {many}. {m} has {b} more {many} than {n}. How many {many} do they have together?"),
                steps: vec![
                    format!("{m} has {a} + {b} = {s1} {many}."),
                    format!("Together they have {a} + {s1} = {s2} {many}."),
                ],
                answer: s2,
            }
        }
        3 => {
            let (per, k, c) = (range(rng, 2, 9), range(rng, 2, 6), range(rng, 1, 9));
            let total = per * k;
            let s2 = per + c;
            Problem {
                question: format!("{n} shares {total} {many} equally among {k} friends. Then each friend gets {c} more {many}. How many {many} does each friend have?"),
                steps: vec![
                    format!("Each friend first gets {total} / {k} = {per} {many}."),
                    format!("After getting {c} more, each friend has {per} + {c} = {s2} {many}."),
                ],
                answer: s2,
            }
        }
        4 => {
            let (p, q) = (range(rng, 2, 9), range(rng, 2, 6));
            let cost = p * q;
            let bill = if cost < 20 {
                20
            } else if cost < 50 {
                50
            } else {
                100
            };
            let change = bill - cost;
            Problem {
                question: format!("One {one} costs {p} dollars. {n} buys {q} {many} and pays with a {bill} dollar bill. How much change does {n} get?"),
                steps: vec![
                    format!("The {many} cost {q} * {p} = {cost} dollars."),
                    format!("The change is {bill} - {cost} = {change} dollars."),
                ],
                answer: change,
            }
        }
        _ => {
            let (a, b, c) = (range(rng, 20, 40), range(rng, 2, 9), range(rng, 2, 9));
            let (s1, s2) = (a - b, a - b - c);
            Problem {
                question: format!("{n} had {a} {many}. {} lost {b} of them on Monday and {c} of them on Tuesday. How many {many} does {n} have left?", capitalize(he)),
                steps: vec![
                    format!("After Monday, {n} has {a} - {b} = {s1} {many}."),
                    format!("After Tuesday, {he} has {s1} - {c} = {s2} {many} left in {his} collection."),
                ],
                answer: s2,
            }
        }
    }
}
