//! The diagnosis: how much of each expert's gain survives in each method, forgetting, and what
//! the ablations change.

use crate::bootstrap::{Estimate, Finding};

use super::estimates::Stats;

/// The diagnosis paragraph: why BTX lands where it does, from the numbers.
pub fn diagnosis(st: &Stats) -> String {
    let primary_mix = st
        .methods()
        .map(|m| m.name.clone())
        .find(|n| n.starts_with("mix:"));
    let primary_mix = primary_mix.as_deref();
    let mut s = vec![];
    s.extend(expert_gains(st));
    s.extend(gains_kept(st, primary_mix));
    s.extend(gains_kept_with_oracle(st));
    s.extend(mix_before_finetune(st, primary_mix));
    s.extend(other_mixes(st, primary_mix));
    s.extend(against_baselines(st));
    s.extend(ablations(st));
    s.extend(added(st));
    s.join(" ")
}

/// Experts: gain in-domain, loss off-domain.
fn expert_gains(st: &Stats) -> Option<String> {
    let input = st.input;
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
    if gains.is_empty() {
        return None;
    }
    let f = forgets.iter().sum::<f64>() / forgets.len().max(1) as f64;
    Some(format!(
        "The experts lower their own domain's loss by {} nats; off-domain their loss changes by {:+.3} on average{}.",
        gains.join(", "),
        f,
        if f > 0.1 {
            " (heavy forgetting)"
        } else {
            ""
        }
    ))
}

/// The share of the experts' in-domain gains method `m` keeps, as a mean over domains.
fn mean_kept(st: &Stats, m: &str) -> Option<f64> {
    let v: Vec<f64> = st
        .input
        .expert_domains
        .iter()
        .filter_map(|d| st.gain_kept(m, d).map(|e| e.value))
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// How much of the gains each stage from the experts to btx keeps.
fn gains_kept(st: &Stats, primary_mix: Option<&str>) -> Option<String> {
    let mut stages = vec![];
    for m in ["btm-top1", "merge-avg"]
        .iter()
        .map(|x| x.to_string())
        .chain(primary_mix.map(str::to_string))
        .chain(["btx".to_string()])
    {
        if let Some(k) = mean_kept(st, &m) {
            stages.push(format!("{m} {:.0}%{}", 100.0 * k, st.kept_basis(&m)));
        }
    }
    (!stages.is_empty()).then(|| {
        format!(
            "Of the experts' in-domain gains (mean over domains) these keep: {}.",
            stages.join(", ")
        )
    })
}

/// Oracle routing (`oracle:<method>`: each token to its domain's expert alone) separates
/// the two losses: the gap between a method and its oracle is its router's, the oracle's
/// own shortfall is the MiX's (averaged weights the experts' FFNs no longer match).
fn gains_kept_with_oracle(st: &Stats) -> Option<String> {
    let oracles: Vec<String> = st
        .methods()
        .filter_map(|m| {
            let inner = m.name.strip_prefix("oracle:")?;
            let k = mean_kept(st, &m.name)?;
            let routed = mean_kept(st, inner).map_or(String::new(), |r| {
                let gap = st
                    .loss_gap(&m.name, inner, &st.input.expert_domains)
                    .map_or(String::new(), |g| {
                        format!(
                            "; its loss − the oracle's {:+.4} [{:+.4}, {:+.4}]",
                            g.value, g.ci[0], g.ci[1]
                        )
                    });
                format!(" (its own router: {:.0}%{gap})", 100.0 * r)
            });
            Some(format!(
                "{inner} {:.0}%{}{routed}",
                100.0 * k,
                st.kept_basis(inner)
            ))
        })
        .collect();
    (!oracles.is_empty()).then(|| {
        format!(
            "With oracle routing (every token of an expert's domain sent to that expert alone: what the MiX keeps when the router is not the problem) they keep: {}.",
            oracles.join(", ")
        )
    })
}

/// The MiX before finetuning against the seed and btx.
fn mix_before_finetune(st: &Stats, primary_mix: Option<&str>) -> Option<String> {
    let mix = primary_mix?;
    let g = st.loss_gap("btx", mix, &[])?;
    let avg = |m: &str| {
        st.avg_loss(m)
            .map_or("?".into(), |e| format!("{:.3}", e.value))
    };
    Some(format!(
        "The MiX before finetuning ({mix}) has an average loss of {} against the seed's {}; the MoE-finetune takes it to btx's {} (btx − {mix} = {:+.4} [{:+.4}, {:+.4}]).",
        avg(mix),
        avg("seed"),
        avg("btx"),
        -g.value,
        -g.ci[1],
        -g.ci[0]
    ))
}

/// The other MiXes (non-FFN weights from the seed, FFN-only experts, ...): how much of the
/// gains each keeps before any finetuning, against the paper's MiX.
fn other_mixes(st: &Stats, primary_mix: Option<&str>) -> Option<String> {
    let other_mixes: Vec<String> = st
        .methods()
        .filter(|m| m.name.starts_with("mix:") && Some(m.name.as_str()) != primary_mix)
        .filter_map(|m| {
            // A MiX with no finetune against the finetuned btx, paired: does it need one?
            let vs_btx = st.loss_gap("btx", &m.name, &[]).map_or(String::new(), |g| {
                format!(
                    " (its loss − btx's {:+.4} [{:+.4}, {:+.4}])",
                    g.value, g.ci[0], g.ci[1]
                )
            });
            Some(format!(
                "{} {:.0}%{}{vs_btx}",
                m.name,
                100.0 * mean_kept(st, &m.name)?,
                st.kept_basis(&m.name)
            ))
        })
        .collect();
    let mix = primary_mix.filter(|_| !other_mixes.is_empty())?;
    let k = mean_kept(st, mix)?;
    Some(format!(
        "Before finetuning, the share of the gains kept is {mix} {:.0}% against {}.",
        100.0 * k,
        other_mixes.join(", ")
    ))
}

/// `a − b` in loss with the interval of that difference (differences are stated as "this −
/// that"), and whether `a` is lower beyond noise.
fn diff(st: &Stats, a: &str, b: &str) -> Option<(Estimate, Finding)> {
    let g = st.loss_gap(a, b, &[])?;
    let d = Estimate {
        value: -g.value,
        ci: [-g.ci[1], -g.ci[0]],
    };
    Some((d, Finding::of_positive(&g)))
}

/// btx against the baselines the paper compares it with.
fn against_baselines(st: &Stats) -> Vec<String> {
    let mut s = vec![];
    for (b, what) in [
        ("dense-compute", "dense training at equal compute"),
        ("dense", "dense training at equal tokens"),
        ("upcycle-compute", "sparse upcycling at equal compute"),
        ("btm-top1", "the BTM top-1 ensemble"),
    ] {
        if !(st.has("btx") && st.has(b)) {
            continue;
        }
        if let Some((d, f)) = diff(st, "btx", b) {
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
    s
}

/// Each variant `btx:<v>` against btx.
fn ablations(st: &Stats) -> Vec<String> {
    let mut s = vec![];
    for m in st.methods() {
        if !m.name.starts_with("btx:") {
            continue;
        }
        if let Some((d, f)) = diff(st, &m.name, "btx") {
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
    s
}

/// `btx:<v>+<d>`: the finetuned variant with d's expert added after, with no retraining. Per
/// domain, the paired change the addition makes (its own domain should gain, every other
/// stay within noise), and where it lands against btx, which mixed that expert from the start.
fn added(st: &Stats) -> Vec<String> {
    let mut out = vec![];
    for m in st.methods() {
        let Some((before, d)) = m.name.rsplit_once('+') else {
            continue;
        };
        if !st.has(before) {
            continue;
        }
        // loss(after) − loss(before) on one domain, with its finding.
        let change = |a: &str, b: &str, dom: &str| -> Option<String> {
            let g = st.loss_gap(b, a, &[dom.to_string()])?;
            Some(format!(
                "{dom} {:+.4} [{:+.4}, {:+.4}] ({})",
                g.value,
                g.ci[0],
                g.ci[1],
                match Finding::of_positive(&g) {
                    Finding::Holds => "higher beyond noise",
                    Finding::DoesNotHold => "lower beyond noise",
                    Finding::WithinNoise => "within noise",
                }
            ))
        };
        let own = change(&m.name, before, d);
        let others: Vec<String> = st
            .input
            .domains
            .iter()
            .filter(|x| *x != d)
            .filter_map(|x| change(&m.name, before, x))
            .collect();
        let Some(own) = own else { continue };
        let mut line = format!(
            "Adding {d}'s expert to {before} after its finetune, with no retraining ({}): {own}; every other domain: {}.",
            m.name,
            others.join(", ")
        );
        // The same variant with d's expert mixed from the start isolates adding it late;
        // without one in the run, btx (whose experts and router may differ) is the reference.
        let (twin, same) = match st.input.added_twin.get(&m.name).filter(|t| st.has(t)) {
            Some(t) => (t.as_str(), ", otherwise the same"),
            None => ("btx", ""),
        };
        if st.has(twin) {
            if let Some(vs) = change(&m.name, twin, d) {
                line.push_str(&format!(
                    " Against {twin}, which mixed {d}'s expert from the start{same}: {vs}."
                ));
            }
        }
        out.push(line);
    }
    out
}
