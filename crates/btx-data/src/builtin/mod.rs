//! The built-in domains: deterministic generators of training text and held-out exact-match
//! tasks, so that the whole BTX pipeline runs with no downloads.
//!
//! - `math`: arithmetic word problems at three levels (a quantity read off the question, one
//!   step, two steps) with a worked solution and `#### <answer>`.
//! - `code`: small Python-like programs ending in an assertion, at three levels (a variable read
//!   back, one operation, programs that must be executed); the task is to complete the value.
//! - `knowledge`: a generated world of people and their facts, stated in several phrasings;
//!   the task asks questions about facts seen in training, in a phrasing not seen for them.
//! - `general`: narrative and descriptive English from a template grammar; the task is to
//!   complete a story's last word, which only its earlier context determines.

mod code;
mod general;
mod knowledge;
mod math;
mod words;

use btx_core::rng::Rng;
use serde::{Deserialize, Serialize};

/// One held-out exact-match task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Text given to the model.
    pub prompt: String,
    /// The expected answer (what the scorer extracts must equal this).
    pub answer: String,
    /// How to extract the answer from a generation: `math` (the number after `####`),
    /// `first-line` (the generation's first line, trimmed) or `first-word`.
    pub scorer: String,
}

pub const DOMAINS: [&str; 4] = ["math", "code", "knowledge", "general"];

/// Training documents of a built-in domain: `n` documents, deterministic in `seed`.
pub fn docs(domain: &str, seed: u64, n: usize) -> Option<Vec<String>> {
    let mut rng = Rng::derive(seed, &format!("builtin-docs-{domain}"));
    Some(match domain {
        "math" => (0..n).map(|_| math::problem(&mut rng).document()).collect(),
        "code" => (0..n).map(|_| code::program(&mut rng).document()).collect(),
        "knowledge" => knowledge::World::new(seed).docs(&mut rng, n),
        "general" => (0..n)
            .map(|_| general::story(&mut rng).document())
            .collect(),
        _ => return None,
    })
}

/// Bytes at least that `docs` documents and `tasks` tasks of a built-in domain take while
/// `btx data prepare` holds them: each document's text twice (the document, and the joined
/// training text its tasks are checked against) at the mean length of a sample, its two
/// strings' headers, and each task's. `None` for an unknown domain.
pub fn memory_estimate(domain: &str, seed: u64, docs_n: usize, tasks_n: usize) -> Option<f64> {
    const SAMPLE: usize = 16;
    let sample = docs(domain, seed, SAMPLE)?;
    let mean = sample.iter().map(String::len).sum::<usize>() as f64 / SAMPLE as f64;
    let header = std::mem::size_of::<String>() as f64;
    Some(
        docs_n as f64 * (2.0 * mean + 2.0 * header)
            + tasks_n as f64 * std::mem::size_of::<Task>() as f64,
    )
}

/// A source of candidate tasks (None = exhausted or not a task).
type TaskGen = Box<dyn FnMut(&mut Rng) -> Option<Task>>;

/// Held-out tasks of a built-in domain: up to `n` distinct tasks whose prompt occurs nowhere in
/// `train_text` (the domain's training documents joined), deterministic in `seed`.
/// Knowledge tasks are held out by construction (facts only ever stated declaratively), the
/// others are drawn from a separate stream and checked.
pub fn tasks(domain: &str, seed: u64, n: usize, train_text: &str) -> Option<Vec<Task>> {
    let mut rng = Rng::derive(seed, &format!("builtin-tasks-{domain}"));
    let mut gen: TaskGen = match domain {
        "math" => Box::new(|r| Some(math::problem(r).task())),
        "code" => Box::new(|r| Some(code::program(r).task())),
        "general" => Box::new(|r| {
            let s = general::story(r);
            s.is_story().then(|| s.task())
        }),
        "knowledge" => {
            let world = knowledge::World::new(seed);
            let all = world.tasks(&mut rng, usize::MAX >> 1);
            let mut it = all.into_iter();
            Box::new(move |_| it.next())
        }
        _ => return None,
    };
    // (Grown as found: a domain may hold far fewer distinct tasks than asked for.)
    let mut out = Vec::with_capacity(n.min(1 << 12));
    let mut seen = std::collections::HashSet::new();
    let mut misses = 0;
    while out.len() < n && misses < 50 * n + 100 {
        match gen(&mut rng) {
            Some(t) if !seen.contains(&t.prompt) && !train_text.contains(&t.prompt) => {
                seen.insert(t.prompt.clone());
                out.push(t);
            }
            Some(_) => misses += 1,
            None if domain == "knowledge" => break,
            None => misses += 1,
        }
    }
    Some(out)
}

/// Extracts the answer from a generation according to `scorer`.
pub fn extract(scorer: &str, generation: &str) -> Option<String> {
    match scorer {
        "math" => {
            let after = generation.split("####").nth(1)?;
            let tok: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-' || *c == '.')
                .collect();
            let tok = tok.trim_end_matches('.').to_string();
            (!tok.is_empty()).then_some(tok)
        }
        "first-line" => {
            let l = generation
                .trim_start_matches([' ', '\t'])
                .lines()
                .next()?
                .trim();
            (!l.is_empty()).then(|| l.to_string())
        }
        "first-word" => {
            let w: String = generation
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '\'')
                .collect();
            (!w.is_empty()).then_some(w)
        }
        _ => None,
    }
}

/// Exact match of a generation against a task.
pub fn score(task: &Task, generation: &str) -> bool {
    extract(&task.scorer, generation).is_some_and(|a| a == task.answer)
}

fn pick<'a, T>(rng: &mut Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.below(xs.len())]
}

fn range(rng: &mut Rng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as usize) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        for d in DOMAINS {
            let a = docs(d, 7, 20).unwrap();
            assert_eq!(a, docs(d, 7, 20).unwrap(), "{d} is not deterministic");
            assert_ne!(a, docs(d, 8, 20).unwrap(), "{d} ignores the seed");
            assert!(a.iter().all(|x| !x.trim().is_empty()));
            let t = tasks(d, 7, 20, "").unwrap();
            assert_eq!(t.len(), 20);
            assert!(t
                .iter()
                .all(|x| !x.answer.is_empty() && !x.prompt.is_empty()));
        }
    }

    #[test]
    fn task_prompts_are_held_out() {
        for d in DOMAINS {
            let train = docs(d, 3, 3000).unwrap().join("\n\n");
            let held = tasks(d, 3, 100, &train).unwrap();
            assert_eq!(held.len(), 100, "{d}");
            for t in &held {
                assert!(!train.contains(&t.prompt), "{d}: {:?} leaked", t.prompt);
            }
        }
    }

    #[test]
    fn scorers_extract_answers() {
        assert_eq!(
            extract("math", " So 3 + 4 = 7.\n#### 7\nQuestion"),
            Some("7".into())
        );
        assert_eq!(extract("math", "#### -12."), Some("-12".into()));
        assert_eq!(extract("math", "no answer"), None);
        assert_eq!(extract("first-line", " 42\nassert x"), Some("42".into()));
        assert_eq!(
            extract("first-word", " lantern. The end"),
            Some("lantern".into())
        );
        let t = Task {
            prompt: "p".into(),
            answer: "7".into(),
            scorer: "math".into(),
        };
        assert!(score(&t, "1 + 6 = 7\n#### 7"));
        assert!(!score(&t, "#### 8"));
        assert!(!score(&t, "7"));
    }

    #[test]
    fn documents_contain_their_own_answers() {
        // Each generator's documents are the task format plus the answer, so the domains teach
        // exactly what their tasks ask.
        let mut rng = Rng::new(1);
        for _ in 0..50 {
            let p = math::problem(&mut rng);
            let t = p.task();
            assert!(p.document().starts_with(&t.prompt));
            assert!(score(&t, &p.document()[t.prompt.len()..]));
            let c = code::program(&mut rng);
            let t = c.task();
            assert!(c.document().starts_with(&t.prompt));
            assert!(score(&t, &c.document()[t.prompt.len()..]));
            let s = general::story(&mut rng);
            if !s.is_story() {
                continue;
            }
            let t = s.task();
            assert!(s.document().starts_with(&t.prompt));
            assert!(score(&t, &s.document()[t.prompt.len()..]));
        }
    }
}
