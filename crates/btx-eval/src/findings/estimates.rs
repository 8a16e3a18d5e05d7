//! Every method's loss and accuracy per domain with its interval, and paired differences
//! between methods: the bootstrap over evaluation windows or task items and replicas.

use std::collections::BTreeMap;

use crate::bootstrap::{Bootstrap, Estimate, Obs};
use crate::evaluate::DomainEval;
use crate::input::{MethodResult, ReportInput};

/// Fixed so the same evaluations always give the same report.
pub(super) const BOOTSTRAP_SEED: u64 = 2024;

/// One kind of per-unit observation for every method: `[replica][domain][unit]`.
struct Observed {
    by_method: BTreeMap<String, Vec<Vec<Vec<f64>>>>,
    boot: Bootstrap,
}

impl Observed {
    fn new(input: &ReportInput, units: impl Fn(&DomainEval) -> Vec<f64>) -> Option<Self> {
        let names: Vec<&str> = input
            .replicas
            .first()?
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        let mut by_method = BTreeMap::new();
        for name in &names {
            let reps: Vec<Vec<Vec<f64>>> = input
                .replicas
                .iter()
                .map(|r| {
                    let m = r.iter().find(|m| m.name == *name);
                    input
                        .domains
                        .iter()
                        .map(|d| m.and_then(|m| m.eval.domains.get(d)).map_or(vec![], &units))
                        .collect()
                })
                .collect();
            by_method.insert(name.to_string(), reps);
        }
        // Unit counts from the seed (every method is evaluated on the same units); a method
        // with other counts gets no interval.
        let reference = by_method
            .get("seed")
            .or_else(|| by_method.values().next())?;
        let counts: Vec<usize> = reference[0].iter().map(Vec::len).collect();
        if counts.iter().all(|&c| c == 0) {
            return None;
        }
        let boot = Bootstrap::new(input.replicas.len(), &counts, BOOTSTRAP_SEED);
        Some(Self { by_method, boot })
    }

    fn view(&self, m: &str) -> Option<Obs<'_>> {
        Some(
            self.by_method
                .get(m)?
                .iter()
                .map(|r| r.iter().map(Vec::as_slice).collect())
                .collect(),
        )
    }

    fn mean(&self, m: &str, ds: &[usize]) -> Option<Estimate> {
        let v = self.view(m)?;
        self.boot.estimate(|x| x.mean_over(&v, ds))
    }

    /// mean(b) − mean(a) over `ds`, paired.
    fn diff(&self, a: &str, b: &str, ds: &[usize]) -> Option<Estimate> {
        let (va, vb) = (self.view(a)?, self.view(b)?);
        self.boot
            .estimate(|x| Some(x.mean_over(&vb, ds)? - x.mean_over(&va, ds)?))
    }

    /// (mean(s) − mean(x)) / (mean(s) − mean(e)) on domain `d`: the share of e's gain over s
    /// that x reaches.
    fn share(&self, s: &str, e: &str, x: &str, d: usize) -> Option<Estimate> {
        let (vs, ve, vx) = (self.view(s)?, self.view(e)?, self.view(x)?);
        self.boot.estimate(|b| {
            let ls = b.mean(&vs, d)?;
            let gain = ls - b.mean(&ve, d)?;
            let lx = b.mean(&vx, d)?;
            (gain.abs() > 1e-12).then(|| (ls - lx) / gain)
        })
    }
}

/// Every number the report states, with its interval.
pub struct Stats<'a> {
    pub input: &'a ReportInput,
    loss: Option<Observed>,
    acc: Option<Observed>,
    /// Per domain (input order): accuracy of always giving the most common answer.
    pub chance: Vec<Option<f64>>,
    /// Per domain: whether some method's accuracy is above chance beyond noise. Accuracy
    /// averages leave out the domains where none is (tasks no model of this size solves).
    pub solvable: Vec<bool>,
}

impl<'a> Stats<'a> {
    pub fn new(input: &'a ReportInput) -> Self {
        let loss = Observed::new(input, |e| e.window_losses.clone());
        let acc = Observed::new(input, |e| {
            e.task_correct.iter().map(|&c| c as u8 as f64).collect()
        });
        let chance: Vec<Option<f64>> = input
            .domains
            .iter()
            .map(|d| {
                input
                    .replicas
                    .first()
                    .and_then(|r| r.iter().find_map(|m| m.eval.domains.get(d)?.chance))
            })
            .collect();
        let mut s = Self {
            input,
            loss,
            acc,
            chance,
            solvable: vec![],
        };
        s.solvable = (0..input.domains.len())
            .map(|i| {
                let floor = s.chance[i].unwrap_or(0.0);
                input.replicas[0].iter().any(|m| {
                    s.acc
                        .as_ref()
                        .and_then(|o| o.mean(&m.name, &[i]))
                        .is_some_and(|e| e.ci[0] > floor)
                })
            })
            .collect();
        s
    }

    pub fn replicas(&self) -> usize {
        self.input.replicas.len()
    }

    /// Whether the evaluations carry per-window losses (runs evaluated before they were
    /// recorded do not, and get no intervals).
    pub fn has_intervals(&self) -> bool {
        self.loss.is_some()
    }

    fn index(&self, d: &str) -> Option<usize> {
        self.input.domains.iter().position(|x| x == d)
    }

    fn indices(&self, ds: &[String]) -> Vec<usize> {
        ds.iter().filter_map(|d| self.index(d)).collect()
    }

    fn all(&self) -> Vec<usize> {
        (0..self.input.domains.len()).collect()
    }

    pub fn loss(&self, m: &str, d: &str) -> Option<Estimate> {
        self.loss.as_ref()?.mean(m, &[self.index(d)?])
    }

    pub fn avg_loss(&self, m: &str) -> Option<Estimate> {
        self.loss.as_ref()?.mean(m, &self.all())
    }

    pub fn acc(&self, m: &str, d: &str) -> Option<Estimate> {
        self.acc.as_ref()?.mean(m, &[self.index(d)?])
    }

    /// Mean accuracy over the domains whose tasks some model solves.
    pub fn avg_acc(&self, m: &str) -> Option<Estimate> {
        let ds: Vec<usize> = (0..self.input.domains.len())
            .filter(|&i| self.solvable[i])
            .collect();
        self.acc.as_ref()?.mean(m, &ds)
    }

    /// loss(b) − loss(a) averaged over `ds` (all domains when empty): positive when a is better.
    pub fn loss_gap(&self, a: &str, b: &str, ds: &[String]) -> Option<Estimate> {
        let idx = if ds.is_empty() {
            self.all()
        } else {
            self.indices(ds)
        };
        self.loss.as_ref()?.diff(a, b, &idx)
    }

    /// The share of the in-domain loss gain over the seed of the expert of d that method `x`
    /// mixes (`expert:d`, or its own experts: see [`ReportInput::experts_of`]) that `x`
    /// reaches on d.
    pub fn gain_kept(&self, x: &str, d: &str) -> Option<Estimate> {
        let e = self.expert_of(x, d);
        self.loss.as_ref()?.share("seed", &e, x, self.index(d)?)
    }

    /// " of expert-ffn's" when method `x`'s gains kept are measured against experts other than
    /// `expert:<d>` (see [`ReportInput::experts_of`]), else "".
    pub fn kept_basis(&self, x: &str) -> String {
        let d = self.input.expert_domains.first();
        match d.map(|d| self.expert_of(x, d)) {
            Some(e) if !e.starts_with("expert:") => {
                format!(" of {}'s", e.split(':').next().unwrap_or(&e))
            }
            _ => String::new(),
        }
    }

    /// The method name of the expert of domain d whose gain method `x` is measured against.
    pub fn expert_of(&self, x: &str, d: &str) -> String {
        self.input
            .experts_of
            .get(x)
            .and_then(|m| m.get(d))
            .filter(|e| self.has(e))
            .cloned()
            .unwrap_or_else(|| format!("expert:{d}"))
    }

    /// Mean over replicas of a method's plain average loss (for runs without intervals).
    pub fn mean_avg_loss(&self, m: &str) -> Option<f64> {
        let v: Vec<f64> = self
            .input
            .replicas
            .iter()
            .filter_map(|r| r.iter().find(|x| x.name == m))
            .map(|x| x.eval.average.loss)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    pub fn has(&self, m: &str) -> bool {
        self.input.replicas[0].iter().any(|x| x.name == m)
    }

    pub fn methods(&self) -> impl Iterator<Item = &MethodResult> {
        self.input.replicas[0].iter()
    }
}

pub(super) fn pcts(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.1}%", 100.0 * x))
        .collect::<Vec<_>>()
        .join(", ")
}
