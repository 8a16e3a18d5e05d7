//! GSM8K-style word problems: a question, a worked solution line by line, `#### <answer>`.
//!
//! Three levels, a third of the problems each: reading a quantity off the question (no
//! arithmetic), one operation on small numbers, two operations on numbers up to 40. With the
//! two-step level alone every model of the demo's size stayed at chance (seed 7%, chance 10%):
//! the levels put a small seed above chance and far from the ceiling, with room for its math
//! expert to gain (measured: docs/study.md).

use super::words::{capitalize, pronoun, NAMES};
use super::{pick, range, Task};
use btx_core::rng::Rng;

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

/// One random problem: a lookup, a one-step or a two-step template, evenly.
pub fn problem(rng: &mut Rng) -> Problem {
    match rng.below(3) {
        0 => lookup(rng),
        1 => one_step(rng),
        _ => two_step(rng),
    }
}

/// Two quantities stated, one asked: the answer is in the question.
fn lookup(rng: &mut Rng) -> Problem {
    let n = *pick(rng, &NAMES);
    let i = rng.below(ITEMS.len());
    let j = (i + 1 + rng.below(ITEMS.len() - 1)) % ITEMS.len();
    let (a, b) = (range(rng, 1, 20), range(rng, 1, 20));
    let (p, q) = (ITEMS[i].1, ITEMS[j].1);
    let (asked, answer) = if rng.below(2) == 0 { (p, a) } else { (q, b) };
    Problem {
        question: format!("{n} has {a} {p} and {b} {q}. How many {asked} does {n} have?"),
        steps: vec![format!("{n} has {answer} {asked}.")],
        answer,
    }
}

/// One operation on small numbers (sums and products up to 25): the worked solution is one
/// line.
fn one_step(rng: &mut Rng) -> Problem {
    let n = *pick(rng, &NAMES);
    let (he, _) = pronoun(n);
    let (_, many) = *pick(rng, &ITEMS);
    let (question, line, answer) = match rng.below(3) {
        0 => {
            let (a, b) = (range(rng, 1, 9), range(rng, 1, 4));
            (
                format!(
                    "{n} has {a} {many}. {} gets {b} more. How many {many} does {n} have now?",
                    capitalize(he)
                ),
                format!("{n} has {a} + {b} = {} {many}.", a + b),
                a + b,
            )
        }
        1 => {
            let a = range(rng, 2, 9);
            let b = range(rng, 1, (a - 1).min(4));
            (
                format!(
                    "{n} has {a} {many}. {} gives away {b}. How many {many} does {n} have left?",
                    capitalize(he)
                ),
                format!("{n} has {a} - {b} = {} {many} left.", a - b),
                a - b,
            )
        }
        _ => {
            let (a, b) = (range(rng, 2, 5), range(rng, 2, 5));
            let (box_, boxes) = *pick(rng, &CONTAINERS);
            (
                format!("{n} has {a} {boxes} with {b} {many} in each {box_}. How many {many} does {n} have?"),
                format!("{n} has {a} * {b} = {} {many}.", a * b),
                a * b,
            )
        }
    };
    Problem {
        question,
        steps: vec![line],
        answer,
    }
}

/// Two operations, numbers up to 40.
fn two_step(rng: &mut Rng) -> Problem {
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
