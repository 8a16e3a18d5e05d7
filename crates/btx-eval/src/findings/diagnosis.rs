//! The diagnosis: how much of each expert's gain survives in each method, forgetting, and what
//! the ablations change.

use crate::bootstrap::{Estimate, Finding};

use super::estimates::Stats;

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
            stages.push(format!("{m} {:.0}%{}", 100.0 * k, st.kept_basis(&m)));
        }
    }
    if !stages.is_empty() {
        s.push(format!(
            "Of the experts' in-domain gains (mean over domains) these keep: {}.",
            stages.join(", ")
        ));
    }
    // Oracle routing (`oracle:<method>`: each token to its domain's expert alone) separates
    // the two losses: the gap between a method and its oracle is its router's, the oracle's
    // own shortfall is the MiX's (averaged weights the experts' FFNs no longer match).
    let oracles: Vec<String> = st
        .methods()
        .filter_map(|m| {
            let inner = m.name.strip_prefix("oracle:")?;
            let k = mean_kept(&m.name)?;
            let routed = mean_kept(inner).map_or(String::new(), |r| {
                let gap =
                    st.loss_gap(&m.name, inner, &input.expert_domains)
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
    if !oracles.is_empty() {
        s.push(format!(
            "With oracle routing (every token of an expert's domain sent to that expert alone: what the MiX keeps when the router is not the problem) they keep: {}.",
            oracles.join(", ")
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
                100.0 * mean_kept(&m.name)?,
                st.kept_basis(&m.name)
            ))
        })
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
    s.extend(added(st));
    s.join(" ")
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
