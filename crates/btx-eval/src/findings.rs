//! What a run's evaluations support: every method's loss and accuracy with 95% intervals
//! (bootstrap over evaluation windows or task items and replicas, `stats`), paired
//! differences between methods, the verdict on each of the paper's claims, and the diagnosis
//! (how much of each expert's gain survives in each method, forgetting, ablations).

use std::collections::BTreeMap;

use crate::evaluate::DomainEval;
use crate::input::{MethodResult, ReportInput};
use crate::routing::{RoutingReport, WindowShares};
use crate::stats::{Bootstrap, Estimate, Finding, Obs};

/// Fixed so the same evaluations always give the same report.
const BOOTSTRAP_SEED: u64 = 2024;

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

    /// The share of expert:d's in-domain loss gain over the seed that method `x` reaches on d.
    pub fn gain_kept(&self, x: &str, d: &str) -> Option<Estimate> {
        self.loss
            .as_ref()?
            .share("seed", &format!("expert:{d}"), x, self.index(d)?)
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

/// One verdict line: a claim, what the intervals say about it, and the numbers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub claim: String,
    /// `holds`, `does not hold`, `within noise` or `not tested`.
    pub status: String,
    pub evidence: String,
}

impl Verdict {
    /// `untested` says why, in parentheses after "not tested", when no part could be measured.
    fn new(claim: &str, parts: &[Finding], evidence: Vec<String>, untested: &str) -> Self {
        let status = match Finding::all(parts) {
            Some(f) => f.as_str().to_string(),
            None => format!("not tested{untested}"),
        };
        Verdict {
            claim: claim.into(),
            status,
            evidence: evidence.join("; "),
        }
    }
}

/// "a vs b: gap [lo, hi] → finding", the gap being loss(b) − loss(a).
fn gap_text(st: &Stats, a: &str, b: &str, gap: &Estimate) -> String {
    let (la, lb) = (st.avg_loss(a), st.avg_loss(b));
    format!(
        "average loss {a} {} vs {b} {}: {b} − {a} = {:+.3} [{:+.3}, {:+.3}] → {}",
        la.map_or("?".into(), |e| format!("{:.3}", e.value)),
        lb.map_or("?".into(), |e| format!("{:.3}", e.value)),
        gap.value,
        gap.ci[0],
        gap.ci[1],
        Finding::of_positive(gap).as_str()
    )
}

/// Compares `a` (predicted better) with the first of `others` the run has.
fn ahead_of(st: &Stats, a: &str, others: &[&str]) -> Option<(Finding, String)> {
    let b = others.iter().find(|o| st.has(o))?;
    let g = st.loss_gap(a, b, &[])?;
    Some((Finding::of_positive(&g), gap_text(st, a, b, &g)))
}

pub fn verdicts(st: &Stats) -> Vec<Verdict> {
    let input = st.input;
    // Why a claim has nothing to rest on.
    let why = |missing: &'static str| -> &'static str {
        if st.has_intervals() {
            missing
        } else {
            " (the evaluations carry no per-window losses: re-run the eval stages)"
        }
    };
    let mut out = vec![];
    // 1. Experts beat the seed in their domain and forget elsewhere.
    {
        let (mut parts, mut ev) = (vec![], vec![]);
        for d in &input.expert_domains {
            let e = format!("expert:{d}");
            let others: Vec<String> = input.domains.iter().filter(|o| *o != d).cloned().collect();
            if let Some(g) = st.loss_gap(&e, "seed", std::slice::from_ref(d)) {
                parts.push(Finding::of_positive(&g));
                ev.push(format!(
                    "{d}: in-domain gain {:+.3} [{:+.3}, {:+.3}]",
                    g.value, g.ci[0], g.ci[1]
                ));
            }
            if let Some(f) = st.loss_gap("seed", &e, &others) {
                parts.push(Finding::of_positive(&f));
                ev.push(format!(
                    "{d} expert off-domain loss change {:+.3} [{:+.3}, {:+.3}]",
                    f.value, f.ci[0], f.ci[1]
                ));
            }
        }
        out.push(Verdict::new(
            "Each expert beats the seed on its own domain and loses ground elsewhere",
            &parts,
            ev,
            why(" (no expert evaluated)"),
        ));
    }
    // 2. BTX keeps most of each expert's gain in one model and is ahead of the seed and of
    //    dense training at equal compute. The core is the comparison with dense.
    {
        let (mut parts, mut ev) = (vec![], vec![]);
        if st.has("btx") {
            let mut kept = vec![];
            for d in &input.expert_domains {
                if let Some(k) = st.gain_kept("btx", d) {
                    // "Most" = more than half.
                    let over_half = Estimate {
                        value: k.value - 0.5,
                        ci: [k.ci[0] - 0.5, k.ci[1] - 0.5],
                    };
                    parts.push(Finding::of_positive(&over_half));
                    kept.push(format!(
                        "{d} {:.0}% [{:.0}, {:.0}]",
                        100.0 * k.value,
                        100.0 * k.ci[0],
                        100.0 * k.ci[1]
                    ));
                }
            }
            if !kept.is_empty() {
                ev.push(format!(
                    "share of each expert's in-domain gain BTX keeps (claim: > 50%): {}",
                    kept.join(", ")
                ));
            }
            for others in [&["seed"][..], &["dense-compute", "dense", "dense-data"][..]] {
                if let Some((f, t)) = ahead_of(st, "btx", others) {
                    parts.push(f);
                    ev.push(t);
                }
            }
            if !st.has("dense-compute") && (st.has("dense") || st.has("dense-data")) {
                ev.push("no compute-matched dense run: compared at equal tokens".into());
            }
        }
        out.push(Verdict::new(
            "BTX recovers most of each expert's in-domain gain in one model and is ahead of the seed and of dense training at equal compute",
            &parts,
            ev,
            why(" (no btx method)"),
        ));
    }
    // 3. BTX beats sparse upcycling at equal compute.
    {
        let (mut parts, mut ev) = (vec![], vec![]);
        if st.has("btx") {
            if let Some((f, t)) = ahead_of(st, "btx", &["upcycle-compute", "upcycle"]) {
                parts.push(f);
                ev.push(t);
            } else if let Some((_, t)) = ahead_of(st, "btx", &["upcycle-data"]) {
                ev.push(format!("{t} (data-matched only: not the claim)"));
            }
        }
        out.push(Verdict::new(
            "BTX beats sparse upcycling at equal compute",
            &parts,
            ev,
            why(" (no compute-matched upcycling baseline)"),
        ));
    }
    // 4. BTM: strong in-domain, N models at inference, weaker on average than BTX.
    {
        let (mut parts, mut ev) = (vec![], vec![]);
        if st.has("btm-top1") && st.has("btx") {
            if let Some(g) = st.loss_gap("btm-top1", "btx", &input.expert_domains) {
                parts.push(Finding::of_positive(&g));
                ev.push(format!(
                    "in the experts' domains BTX − BTM top-1 = {:+.3} [{:+.3}, {:+.3}]",
                    g.value, g.ci[0], g.ci[1]
                ));
            }
            if let Some((f, t)) = ahead_of(st, "btx", &["btm-top1"]) {
                parts.push(f);
                ev.push(t);
            }
            if let Some(m) = st.methods().find(|m| m.name == "btm-top1") {
                ev.push(format!(
                    "inference: BTM {} forward passes per token vs BTX 1",
                    m.compute.inference_forward_passes
                ));
            }
        }
        out.push(Verdict::new(
            "BTM ensembles are strong in-domain but cost N models at inference and are weaker on average than BTX",
            &parts,
            ev,
            why(" (no BTM ensemble evaluated)"),
        ));
    }
    out.push(load_balancing(st));
    out
}

/// The smallest share of tokens any expert gets in any layer, over all domains' tokens.
fn min_share(r: &RoutingReport) -> f64 {
    let layers = r.domains.values().next().map_or(0, |d| d.topk_share.len());
    let total: usize = r.domains.values().map(|d| d.tokens).sum();
    let mut min = f64::INFINITY;
    for l in 0..layers {
        for e in 0..r.num_experts {
            let s: f64 = r
                .domains
                .values()
                .map(|d| d.topk_share[l][e] * d.tokens as f64)
                .sum::<f64>()
                / total.max(1) as f64;
            min = min.min(s);
        }
    }
    min
}

/// Mean over layers and expert domains of the share of a domain's tokens whose top-1 expert is
/// its own.
pub fn own_share(r: &RoutingReport, expert_domains: &[String]) -> Option<f64> {
    let mut v = vec![];
    for (i, d) in expert_domains.iter().enumerate() {
        let dr = r.domains.get(d)?;
        let layers = dr.top1_share.len().max(1);
        v.push(dr.top1_share.iter().map(|l| l[i]).sum::<f64>() / layers as f64);
    }
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Routing statistics resampled like losses: over replicas and the evaluation windows the
/// routing analysis recorded one by one (every MoE method saw the same windows, so the draws
/// pair methods).
struct RoutingBoot<'a> {
    boot: Bootstrap,
    domains: &'a [String],
    expert_domains: &'a [String],
}

impl<'a> RoutingBoot<'a> {
    /// None when the analyses carry no per-window shares (evaluated before they were recorded).
    fn new(input: &'a ReportInput, reps: &[RoutingReport]) -> Option<Self> {
        let counts: Vec<usize> = input
            .domains
            .iter()
            .map(|d| reps.first()?.domains.get(d).map(|x| x.windows.len()))
            .collect::<Option<_>>()?;
        if counts.contains(&0) {
            return None;
        }
        Some(Self {
            boot: Bootstrap::new(reps.len(), &counts, BOOTSTRAP_SEED),
            domains: &input.domains,
            expert_domains: &input.expert_domains,
        })
    }

    /// One replica's windows of every domain, checked against the draw's shape.
    fn windows<'r>(
        &self,
        reps: &'r [RoutingReport],
        r: usize,
        units: &[Vec<usize>],
    ) -> Option<Vec<&'r [WindowShares]>> {
        let rep = reps.get(r)?;
        let ws: Vec<&[WindowShares]> = self
            .domains
            .iter()
            .map(|d| rep.domains.get(d).map(|x| x.windows.as_slice()))
            .collect::<Option<_>>()?;
        let fits = ws
            .iter()
            .zip(units)
            .all(|(w, u)| !u.is_empty() && w.len() == u.len());
        (fits && units.len() == ws.len()).then_some(ws)
    }

    /// [`min_share`] of replica `r` on the drawn windows, pooled over domains as
    /// [`min_share`] pools their tokens (windows are the same length; a domain with a short
    /// validation split has fewer).
    fn min_share(&self, reps: &[RoutingReport], r: usize, units: &[Vec<usize>]) -> Option<f64> {
        let ws = self.windows(reps, r, units)?;
        let layers = ws.first()?.first()?.topk.len();
        let experts = reps.get(r)?.num_experts;
        let n: usize = units.iter().map(Vec::len).sum();
        let mut min = f64::INFINITY;
        for l in 0..layers {
            for e in 0..experts {
                let mut s = 0.0;
                for (w, u) in ws.iter().zip(units) {
                    s += u.iter().map(|&i| w[i].topk[l][e]).sum::<f64>();
                }
                min = min.min(s / n as f64);
            }
        }
        Some(min)
    }

    /// [`own_share`] of replica `r` on the drawn windows.
    fn own_share(&self, reps: &[RoutingReport], r: usize, units: &[Vec<usize>]) -> Option<f64> {
        let ws = self.windows(reps, r, units)?;
        let mut total = 0.0;
        for (i, d) in self.expert_domains.iter().enumerate() {
            let k = self.domains.iter().position(|x| x == d)?;
            let own = |w: &WindowShares| {
                w.top1.iter().map(|l| l[i]).sum::<f64>() / w.top1.len().max(1) as f64
            };
            total += units[k].iter().map(|&j| own(&ws[k][j])).sum::<f64>() / units[k].len() as f64;
        }
        (!self.expert_domains.is_empty()).then(|| total / self.expert_domains.len() as f64)
    }
}

/// 5. Load balancing keeps every expert in use (against a run without it) and routing
///    specialises by domain. Three intervals over replicas and evaluation windows: the
///    smallest expert's share of tokens is above the dead-expert threshold, and above the
///    run without load balancing; the share of a domain's tokens whose top-1 expert is its own
///    is above uniform.
fn load_balancing(st: &Stats) -> Verdict {
    let claim = "Load balancing keeps every expert in use (against the same run without it) and routing specialises by domain";
    let input = st.input;
    let (with, without) = (
        input.routing_replicas.get("btx"),
        input.routing_replicas.get("btx:no-lb"),
    );
    let Some(with) = with.filter(|w| !w.is_empty()) else {
        return Verdict::new(claim, &[], vec![], " (no routing analysis of btx)");
    };
    let mut ev = vec![];
    let mins: Vec<f64> = with.iter().map(min_share).collect();
    let dead = with.iter().filter(|r| !r.dead_experts.is_empty()).count();
    let uniform = 1.0 / with[0].num_experts as f64;
    let threshold = with[0].dead_threshold;
    let own: Vec<f64> = with
        .iter()
        .filter_map(|r| own_share(r, &input.expert_domains))
        .collect();
    ev.push(format!(
        "btx: smallest expert share of tokens per replica {}; replicas with dead experts {dead}/{}; own-expert top-1 share per replica {} (uniform {:.0}%)",
        pcts(&mins),
        with.len(),
        pcts(&own),
        100.0 * uniform
    ));
    let Some(without) = without else {
        return Verdict::new(
            claim,
            &[],
            ev,
            " (no run without load balancing: add a finetune variant named no-lb with lb_coef = 0)",
        );
    };
    ev.push(format!(
        "btx:no-lb: smallest expert share per replica {}",
        pcts(&without.iter().map(min_share).collect::<Vec<_>>())
    ));
    let Some(rb) = RoutingBoot::new(input, with) else {
        return Verdict::new(
            claim,
            &[],
            ev,
            " (these evaluations carry no per-window routing: re-run the eval stages for intervals)",
        );
    };
    let smallest = rb
        .boot
        .estimate(|x| Some(x.per_replica(|r, u| rb.min_share(with, r, u))? - threshold));
    let gap = rb.boot.estimate(|x| {
        Some(
            x.per_replica(|r, u| rb.min_share(with, r, u))?
                - x.per_replica(|r, u| rb.min_share(without, r, u))?,
        )
    });
    let specialised = rb
        .boot
        .estimate(|x| Some(x.per_replica(|r, u| rb.own_share(with, r, u))? - uniform));
    let (Some(smallest), Some(gap), Some(specialised)) = (smallest, gap, specialised) else {
        return Verdict::new(
            claim,
            &[],
            ev,
            " (btx and btx:no-lb were analysed on different windows or replicas: no paired interval)",
        );
    };
    let pt = |e: &Estimate, add: f64| {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * (e.value + add),
            100.0 * (e.ci[0] + add),
            100.0 * (e.ci[1] + add)
        )
    };
    ev.push(format!(
        "smallest expert share (mean over replicas) {} against the dead-expert threshold {:.0}%",
        pt(&smallest, threshold),
        100.0 * threshold
    ));
    ev.push(format!(
        "btx − btx:no-lb smallest share {:+.1} points [{:+.1}, {:+.1}]",
        100.0 * gap.value,
        100.0 * gap.ci[0],
        100.0 * gap.ci[1]
    ));
    ev.push(format!(
        "own-expert top-1 share {} against uniform {:.0}%",
        pt(&specialised, uniform),
        100.0 * uniform
    ));
    let parts = [
        Finding::of_positive(&smallest),
        Finding::of_positive(&gap),
        Finding::of_positive(&specialised),
    ];
    Verdict::new(claim, &parts, ev, "")
}

fn pcts(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{:.1}%", 100.0 * x))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The diagnosis paragraph: why BTX lands where it does, from the numbers.
pub fn diagnosis(st: &Stats) -> String {
    let input = st.input;
    let mut s = vec![];
    // Experts: gain in-domain, loss off-domain.
    let mut gains = vec![];
    let mut forgets = vec![];
    for d in &input.expert_domains {
        let e = format!("expert:{d}");
        let others: Vec<String> = input.domains.iter().filter(|o| *o != d).cloned().collect();
        if let Some(g) = st.loss_gap(&e, "seed", std::slice::from_ref(d)) {
            gains.push(format!("{d} {:.3}", g.value));
        }
        if let Some(f) = st.loss_gap("seed", &e, &others) {
            forgets.push(f.value);
        }
    }
    if !gains.is_empty() {
        let f = forgets.iter().sum::<f64>() / forgets.len().max(1) as f64;
        s.push(format!(
            "The experts lower their own domain's loss by {} nats; off-domain their loss changes by {:+.3} on average{}.",
            gains.join(", "),
            f,
            if f > 0.1 {
                " (heavy forgetting)"
            } else {
                ""
            }
        ));
    }
    let mean_kept = |m: &str| -> Option<f64> {
        let v: Vec<f64> = input
            .expert_domains
            .iter()
            .filter_map(|d| st.gain_kept(m, d).map(|e| e.value))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let primary_mix = st
        .methods()
        .map(|m| m.name.clone())
        .find(|n| n.starts_with("mix:"));
    let mut stages = vec![];
    for m in ["btm-top1", "merge-avg"]
        .iter()
        .map(|x| x.to_string())
        .chain(primary_mix.clone())
        .chain(["btx".to_string()])
    {
        if let Some(k) = mean_kept(&m) {
            stages.push(format!("{m} {:.0}%", 100.0 * k));
        }
    }
    if !stages.is_empty() {
        s.push(format!(
            "Of the experts' in-domain gains (mean over domains) these keep: {}.",
            stages.join(", ")
        ));
    }
    if let (Some(mix), Some(g)) = (
        &primary_mix,
        primary_mix
            .as_ref()
            .and_then(|m| st.loss_gap("btx", m, &[])),
    ) {
        let avg = |m: &str| {
            st.avg_loss(m)
                .map_or("?".into(), |e| format!("{:.3}", e.value))
        };
        s.push(format!(
            "The MiX before finetuning ({mix}) has an average loss of {} against the seed's {}; the MoE-finetune takes it to btx's {} (btx − {mix} = {:+.4} [{:+.4}, {:+.4}]).",
            avg(mix),
            avg("seed"),
            avg("btx"),
            -g.value,
            -g.ci[1],
            -g.ci[0]
        ));
    }
    // The other MiXes (non-FFN weights from the seed, FFN-only experts, ...): how much of the
    // gains each keeps before any finetuning, against the paper's MiX.
    let other_mixes: Vec<String> = st
        .methods()
        .filter(|m| m.name.starts_with("mix:") && Some(&m.name) != primary_mix.as_ref())
        .filter_map(|m| Some(format!("{} {:.0}%", m.name, 100.0 * mean_kept(&m.name)?)))
        .collect();
    if let (Some(mix), false) = (&primary_mix, other_mixes.is_empty()) {
        if let Some(k) = mean_kept(mix) {
            s.push(format!(
                "Before finetuning, the share of the gains kept is {mix} {:.0}% against {}.",
                100.0 * k,
                other_mixes.join(", ")
            ));
        }
    }
    // Differences are stated as "this − that" with the interval of that difference.
    let diff = |a: &str, b: &str| -> Option<(Estimate, Finding)> {
        let g = st.loss_gap(a, b, &[])?;
        let d = Estimate {
            value: -g.value,
            ci: [-g.ci[1], -g.ci[0]],
        };
        Some((d, Finding::of_positive(&g)))
    };
    for (b, what) in [
        ("dense-compute", "dense training at equal compute"),
        ("dense", "dense training at equal tokens"),
        ("upcycle-compute", "sparse upcycling at equal compute"),
        ("btm-top1", "the BTM top-1 ensemble"),
    ] {
        if !(st.has("btx") && st.has(b)) {
            continue;
        }
        if let Some((d, f)) = diff("btx", b) {
            s.push(format!(
                "Against {what}: btx − {b} = {:+.4} [{:+.4}, {:+.4}] ({}).",
                d.value,
                d.ci[0],
                d.ci[1],
                match f {
                    Finding::Holds => "BTX lower beyond noise",
                    Finding::DoesNotHold => "BTX higher beyond noise",
                    Finding::WithinNoise => "within noise",
                }
            ));
        }
    }
    for m in st.methods() {
        if !m.name.starts_with("btx:") {
            continue;
        }
        if let Some((d, f)) = diff(&m.name, "btx") {
            s.push(format!(
                "Ablation {}: {} − btx = {:+.4} [{:+.4}, {:+.4}] ({}).",
                m.name,
                m.name,
                d.value,
                d.ci[0],
                d.ci[1],
                match f {
                    Finding::Holds => "lower beyond noise",
                    Finding::DoesNotHold => "higher beyond noise",
                    Finding::WithinNoise => "within noise",
                }
            ));
        }
    }
    s.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Average, EvalResult};
    use crate::input::MethodCompute;

    /// A method whose windows on domain d have losses `base[d] + wiggle` (the same wiggle for
    /// every method, as windows of one text are alike in difficulty for all models).
    fn method(name: &str, base: &[(&str, f64)], noise: f64) -> MethodResult {
        let domains: BTreeMap<String, DomainEval> = base
            .iter()
            .map(|(d, l)| {
                let w: Vec<f64> = (0..32)
                    .map(|i| l + 0.3 * ((i % 5) as f64 - 2.0) + noise * ((i % 3) as f64 - 1.0))
                    .collect();
                (
                    d.to_string(),
                    DomainEval {
                        loss: w.iter().sum::<f64>() / 32.0,
                        perplexity: 1.0,
                        loss_tokens: 32 * 63,
                        accuracy: Some(0.0),
                        tasks: 10,
                        samples: vec![],
                        window_losses: w,
                        task_correct: vec![false; 10],
                        chance: Some(0.1),
                    },
                )
            })
            .collect();
        MethodResult {
            name: name.into(),
            eval: EvalResult {
                average: Average {
                    loss: base.iter().map(|x| x.1).sum::<f64>() / base.len() as f64,
                    accuracy: Some(0.0),
                },
                domains,
                forward_passes_per_token: 1,
                active_params: 1,
                total_params: 1,
            },
            compute: MethodCompute::default(),
        }
    }

    fn input(btx_vs_dense: f64) -> ReportInput {
        let ms = vec![
            method("seed", &[("a", 2.0), ("b", 2.0)], 0.0),
            method("expert:a", &[("a", 1.0), ("b", 2.5)], 0.0),
            method("expert:b", &[("a", 2.5), ("b", 1.0)], 0.0),
            method("dense", &[("a", 1.5), ("b", 1.5)], 0.01),
            method(
                "btx",
                &[("a", 1.5 - btx_vs_dense), ("b", 1.5 - btx_vs_dense)],
                0.02,
            ),
        ];
        ReportInput {
            title: "t".into(),
            domains: vec!["a".into(), "b".into()],
            expert_domains: vec!["a".into(), "b".into()],
            replicas: vec![ms],
            ..Default::default()
        }
    }

    #[test]
    fn the_core_claim_follows_the_interval_not_the_sign() {
        // BTX clearly ahead of dense: holds. Clearly behind: does not hold (never "partly",
        // whatever the other parts say). A hair apart: within noise.
        for (gap, want) in [
            (0.2, "holds"),
            (-0.2, "does not hold"),
            (0.0005, "within noise"),
        ] {
            let i = input(gap);
            let st = Stats::new(&i);
            let v = verdicts(&st);
            assert_eq!(v[0].status, "holds", "{:?}", v[0]);
            let claim2 = &v[1];
            if want == "within noise" {
                // The seed part and the kept-gain part hold, the dense part is noise.
                assert_eq!(claim2.status, "within noise", "{claim2:?}");
            } else {
                assert_eq!(claim2.status, want, "{claim2:?}");
            }
            assert!(claim2.evidence.contains('['), "{}", claim2.evidence);
            assert!(v[2].status.starts_with("not tested"), "{:?}", v[2]);
            assert!(v[4].status.starts_with("not tested"), "{:?}", v[4]);
        }
    }

    #[test]
    fn tasks_at_the_floor_are_left_out_of_accuracy_averages() {
        let i = input(0.1);
        let st = Stats::new(&i);
        // Every method answers nothing: no domain is solvable, there is no average accuracy.
        assert_eq!(st.solvable, vec![false, false]);
        assert!(st.avg_acc("btx").is_none());
        assert_eq!(st.chance, vec![Some(0.1), Some(0.1)]);
    }

    #[test]
    fn kept_gain_is_a_share_of_the_experts_gain() {
        let i = input(0.0);
        let st = Stats::new(&i);
        // seed 2.0, expert 1.0, btx 1.5 on domain a: half the gain.
        let k = st.gain_kept("btx", "a").unwrap();
        assert!((k.value - 0.5).abs() < 2e-3, "{k}");
        assert!(diagnosis(&st).contains("btx 50%"), "{}", diagnosis(&st));
    }

    /// Routing of two replicas over domains a, b (one layer, experts a and b): `share(d, w)`
    /// is the share of expert a among domain d's tokens in window w (top-1 and top-k alike).
    fn routed(share: impl Fn(usize, usize) -> f64, per_window: bool) -> Vec<RoutingReport> {
        use crate::routing::DomainRouting;
        (0..2)
            .map(|_| {
                let mut r = RoutingReport {
                    num_experts: 2,
                    top_k: 1,
                    dead_threshold: 0.01,
                    ..Default::default()
                };
                for (d, name) in ["a", "b"].iter().enumerate() {
                    let ws: Vec<WindowShares> = (0..16)
                        .map(|w| {
                            let p = vec![vec![share(d, w), 1.0 - share(d, w)]];
                            WindowShares {
                                top1: p.clone(),
                                topk: p,
                            }
                        })
                        .collect();
                    let mean = ws.iter().map(|w| w.top1[0][0]).sum::<f64>() / 16.0;
                    let whole = vec![vec![mean, 1.0 - mean]];
                    r.domains.insert(
                        name.to_string(),
                        DomainRouting {
                            top1_share: whole.clone(),
                            topk_share: whole,
                            entropy: vec![0.5],
                            tokens: 16 * 8,
                            windows: if per_window { ws } else { vec![] },
                            ..Default::default()
                        },
                    );
                }
                r
            })
            .collect()
    }

    #[test]
    fn the_load_balancing_claim_rests_on_intervals() {
        let wobble = |w: usize| 0.02 * ((w % 3) as f64 - 1.0);
        // With load balancing: each domain's tokens mostly go to its own expert, both experts
        // get half the tokens overall.
        let balanced = routed(|d, w| if d == 0 { 0.7 } else { 0.3 } + wobble(w), true);
        // Without: expert a takes 95% of everything.
        let collapsed = routed(|_, w| 0.95 + wobble(w) / 4.0, true);
        let verdict = |with: Vec<RoutingReport>, without: Vec<RoutingReport>| {
            let mut i = input(0.0);
            i.routing_replicas.insert("btx".into(), with);
            i.routing_replicas.insert("btx:no-lb".into(), without);
            load_balancing(&Stats::new(&i))
        };
        let v = verdict(balanced.clone(), collapsed);
        assert_eq!(v.status, "holds", "{v:?}");
        assert!(
            v.evidence.contains("smallest share +44.8 points ["),
            "{}",
            v.evidence
        );
        // The same routing with and without: the gap is exactly zero, within noise.
        let v = verdict(balanced.clone(), balanced.clone());
        assert_eq!(v.status, "within noise", "{v:?}");
        // Expert b starves with load balancing too: the smallest share is below the
        // dead-expert threshold beyond noise.
        let starved = routed(|_, w| 0.995 + wobble(w) / 10.0, true);
        let v = verdict(starved, routed(|_, _| 1.0, true));
        assert_eq!(v.status, "does not hold", "{v:?}");
        // Analyses without per-window shares give no verdict.
        let v = verdict(
            routed(|d, _| [0.7, 0.3][d], false),
            routed(|_, _| 0.9, false),
        );
        assert!(v.status.starts_with("not tested"), "{v:?}");
    }
}
