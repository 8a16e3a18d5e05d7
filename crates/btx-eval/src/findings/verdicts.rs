//! The verdict on each of the paper's claims, from intervals (and the routing's own).

use crate::bootstrap::{Bootstrap, Estimate, Finding};
use crate::input::ReportInput;
use crate::routing::{RoutingReport, WindowShares};

use super::estimates::{pcts, Stats, BOOTSTRAP_SEED};

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
pub(super) fn load_balancing(st: &Stats) -> Verdict {
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
