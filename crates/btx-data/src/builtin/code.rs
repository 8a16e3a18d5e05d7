//! Small Python-like programs whose last line asserts a value that only executing the program
//! gives. Values are computed while the program is generated.
//!
//! Three levels, a third of the programs each: reading a variable back (no execution), one
//! operation on small numbers, and longer programs (straight-line code, functions, loops,
//! branches, lists). With the last level alone every model of the demo's size stayed at chance
//! (seed 7%, chance 10%): the levels put a small seed above chance and far from the ceiling,
//! with room for its code expert to gain (measured: docs/study.md).

use super::{pick, range, Task};
use btx_core::rng::Rng;

const VARS: [&str; 12] = [
    "a", "b", "c", "x", "y", "z", "n", "m", "k", "total", "count", "value",
];
const FUNCS: [&str; 6] = ["f", "g", "step", "scale", "shift", "combine"];

pub struct Program {
    body: String,
    /// The asserted expression, e.g. `c` or `f(4)`.
    expr: String,
    value: i64,
}

impl Program {
    fn prompt(&self) -> String {
        format!("{}assert {} ==", self.body, self.expr)
    }

    pub fn document(&self) -> String {
        format!("{} {}", self.prompt(), self.value)
    }

    pub fn task(&self) -> Task {
        Task {
            prompt: self.prompt(),
            answer: self.value.to_string(),
            scorer: "first-line".into(),
        }
    }
}

fn distinct_vars(rng: &mut Rng, k: usize) -> Vec<&'static str> {
    let mut v: Vec<&str> = VARS.to_vec();
    rng.shuffle(&mut v);
    v.truncate(k);
    v
}

/// `op` applied to two values, with its source spelling.
fn binop(rng: &mut Rng, l: (String, i64), r: (String, i64)) -> (String, i64) {
    match rng.below(3) {
        0 => (format!("{} + {}", l.0, r.0), l.1 + r.1),
        1 => (format!("{} - {}", l.0, r.0), l.1 - r.1),
        _ => (format!("{} * {}", l.0, r.0), l.1 * r.1),
    }
}

pub fn program(rng: &mut Rng) -> Program {
    match rng.below(3) {
        0 => return lookup(rng),
        1 => return one_op(rng),
        _ => {}
    }
    match rng.below(5) {
        0 => straight_line(rng),
        1 => function(rng),
        2 => loop_sum(rng),
        3 => branch(rng),
        _ => list_ops(rng),
    }
}

/// One or two constants assigned, one of them asserted.
fn lookup(rng: &mut Rng) -> Program {
    let k = 1 + rng.below(2);
    let vars = distinct_vars(rng, k);
    let vals: Vec<i64> = vars.iter().map(|_| range(rng, 1, 20)).collect();
    let body: String = vars
        .iter()
        .zip(&vals)
        .map(|(v, x)| format!("{v} = {x}\n"))
        .collect();
    let i = rng.below(vars.len());
    Program {
        body,
        expr: vars[i].to_string(),
        value: vals[i],
    }
}

/// `x = a` then `y = x op b`, a single digit and a small step, `+` or `-`.
fn one_op(rng: &mut Rng) -> Program {
    let vars = distinct_vars(rng, 2);
    let (x, y) = (vars[0], vars[1]);
    let (a, b) = (range(rng, 1, 9), range(rng, 1, 4));
    let (op, value) = if rng.below(2) == 0 {
        ("+", a + b)
    } else {
        ("-", a - b)
    };
    Program {
        body: format!("{x} = {a}\n{y} = {x} {op} {b}\n"),
        expr: y.to_string(),
        value,
    }
}

fn straight_line(rng: &mut Rng) -> Program {
    let k = 2 + rng.below(3);
    let vars = distinct_vars(rng, k + 1);
    let mut body = String::new();
    let mut known: Vec<(String, i64)> = vec![];
    let first = range(rng, 1, 9);
    body += &format!("{} = {first}\n", vars[0]);
    known.push((vars[0].to_string(), first));
    for v in &vars[1..] {
        let l = known[rng.below(known.len())].clone();
        let r = if rng.below(2) == 0 {
            known[rng.below(known.len())].clone()
        } else {
            let c = range(rng, 1, 9);
            (c.to_string(), c)
        };
        let (src, val) = binop(rng, l, r);
        body += &format!("{v} = {src}\n");
        known.push((v.to_string(), val));
    }
    let (expr, value) = known.last().unwrap().clone();
    Program { body, expr, value }
}

fn function(rng: &mut Rng) -> Program {
    let f = *pick(rng, &FUNCS);
    let (a, b) = (range(rng, 1, 9), range(rng, 2, 5));
    let arg = range(rng, 1, 9);
    let (l1, v1) = binop(rng, ("x".into(), arg), (a.to_string(), a));
    let (l2, v2) = binop(rng, ("y".into(), v1), (b.to_string(), b));
    let body = format!("def {f}(x):\n    y = {l1}\n    return {l2}\n");
    Program {
        body,
        expr: format!("{f}({arg})"),
        value: v2,
    }
}

fn loop_sum(rng: &mut Rng) -> Program {
    let v = *pick(rng, &["s", "total", "acc", "count"]);
    let start = range(rng, 0, 5);
    let n = range(rng, 2, 6);
    let (line, value) = match rng.below(3) {
        0 => {
            let c = range(rng, 1, 9);
            (format!("    {v} = {v} + {c}\n"), start + n * c)
        }
        1 => (format!("    {v} = {v} + i\n"), start + n * (n - 1) / 2),
        _ => {
            let c = range(rng, 2, 3);
            (
                format!("    {v} = {v} + i * {c}\n"),
                start + c * n * (n - 1) / 2,
            )
        }
    };
    let body = format!("{v} = {start}\nfor i in range({n}):\n{line}");
    Program {
        body,
        expr: v.to_string(),
        value,
    }
}

fn branch(rng: &mut Rng) -> Program {
    let x = range(rng, 1, 12);
    let t = range(rng, 2, 10);
    let (a, b) = (range(rng, 1, 9), range(rng, 1, 9));
    let cmp = *pick(rng, &[">", "<"]);
    let cond = if cmp == ">" { x > t } else { x < t };
    let value = if cond { x - a } else { x + b };
    let body = format!("x = {x}\nif x {cmp} {t}:\n    y = x - {a}\nelse:\n    y = x + {b}\n");
    Program {
        body,
        expr: "y".into(),
        value,
    }
}

fn list_ops(rng: &mut Rng) -> Program {
    let n = 2 + rng.below(4);
    let mut xs: Vec<i64> = (0..n).map(|_| range(rng, 1, 9)).collect();
    let lit = |xs: &[i64]| {
        format!(
            "[{}]",
            xs.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut body = format!("xs = {}\n", lit(&xs));
    if rng.below(2) == 0 {
        let y = range(rng, 1, 9);
        body += &format!("xs.append({y})\n");
        xs.push(y);
    }
    let (expr, value) = match rng.below(4) {
        0 => ("len(xs)".to_string(), xs.len() as i64),
        1 => ("sum(xs)".to_string(), xs.iter().sum()),
        2 => {
            let i = rng.below(xs.len());
            (format!("xs[{i}]"), xs[i])
        }
        _ => ("max(xs)".to_string(), *xs.iter().max().unwrap()),
    };
    Program { body, expr, value }
}
