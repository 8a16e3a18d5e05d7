//! The report's summary plots (see [`btx_eval::plots::summary`]): which group each method is
//! listed under, its paired differences against btx and dense-compute, the share of the
//! experts' gains it keeps.

use std::path::Path;

use btx_eval::findings::Stats;
use btx_eval::plots::summary::{forest, kept_heatmap, Row};
use btx_mix::RouterInitKind;

use crate::plan::{names, Kind, Plan, StageId, StageKind};

const PAPER: &str = "the paper (BTX)";
const ABLATIONS: &str = "ablations (one of the paper's choices changed)";
const BEYOND: &str = "beyond the paper";
const BASELINES: &str = "baselines";
const ORACLE: &str = "oracle routing (a diagnostic)";
const ORDER: [&str; 5] = [PAPER, ABLATIONS, BEYOND, BASELINES, ORACLE];

/// The group a method is listed under; `None` for the seed and the experts (and, without
/// `oracles`, for oracle evaluations).
fn group_of(plan: &Plan, method: &str, oracles: bool) -> Option<&'static str> {
    if let Some(inner) = method.strip_prefix("oracle:") {
        return (oracles && group_of(plan, inner, false).is_some()).then_some(ORACLE);
    }
    if method == names::SEED || names::expert_domain(method).is_some() {
        return None;
    }
    if method.starts_with("dense")
        || method.starts_with("upcycle")
        || method.starts_with("btm-")
        || method == "merge-avg"
    {
        return Some(BASELINES);
    }
    let primary = plan.variants.first().map(String::as_str).unwrap_or("btx");
    let (base, added) = match names::split_added(method) {
        Some((b, _)) => (b, true),
        None => (method, false),
    };
    let v = names::mix_variant(base).or_else(|| names::btx_variant(base, primary))?;
    if v == primary {
        return Some(PAPER);
    }
    let mix = plan
        .stages
        .iter()
        .find(|s| s.name == StageId::mix(v, ""))
        .or_else(|| plan.mix_of(v, ""));
    let beyond = added
        || match mix.map(|s| &s.kind) {
            Some(StageKind::Mix { spec, experts, .. }) => {
                matches!(
                    spec.router_init,
                    RouterInitKind::Fit | RouterInitKind::DomainMean
                ) || !spec.attention.is_average()
                    || experts.iter().any(|e| {
                        matches!(e.kind(), Kind::Expert { family } if family.starts_with("expert-anchored"))
                    })
                    || plan
                        .stages
                        .iter()
                        .any(|s| s.name == StageId::add_expert(v, ""))
            }
            _ => false,
        };
    Some(if beyond { BEYOND } else { ABLATIONS })
}

/// The methods of `st` with their group, in group order (report order within a group).
fn grouped<'a>(plan: &Plan, st: &'a Stats, oracles: bool) -> Vec<(&'static str, &'a str)> {
    let mut v: Vec<(&'static str, &str)> = st
        .methods()
        .filter_map(|m| Some((group_of(plan, &m.name, oracles)?, m.name.as_str())))
        .collect();
    v.sort_by_key(|(g, _)| ORDER.iter().position(|x| x == g));
    v
}

/// A drawn plot: its file, caption and how drawing went.
pub type SummaryPlot = (
    &'static str,
    &'static str,
    Result<(), Box<dyn std::error::Error>>,
);

/// The forest plot and the gain-kept heatmap: (file, caption, result) each.
pub fn summary_plots(plan: &Plan, st: &Stats, dir: &Path) -> Vec<SummaryPlot> {
    let refs: Vec<String> = ["btx", "dense-compute"]
        .iter()
        .filter(|r| st.has(r))
        .map(|r| r.to_string())
        .collect();
    let rows: Vec<Row> = grouped(plan, st, false)
        .into_iter()
        .map(|(group, m)| Row {
            label: m.to_string(),
            group: group.to_string(),
            values: refs
                .iter()
                .map(|r| {
                    // loss(m) − loss(r), paired.
                    (r != m)
                        .then(|| st.loss_gap(r, m, &[]))
                        .flatten()
                        .map(|e| (e.value, e.ci))
                })
                .collect(),
        })
        .collect();
    let mut out = vec![(
        "forest.png",
        "Each method's average held-out loss minus btx's and dense-compute's, paired, with 95% intervals (blue: lower beyond noise, red: higher, grey: within noise)",
        forest(
            &rows,
            &refs,
            "Paired differences in average held-out loss",
            &dir.join("forest.png"),
        ),
    )];
    let domains = &st.input.expert_domains;
    let mut columns = domains.clone();
    columns.push("mean".into());
    let rows: Vec<Row> = grouped(plan, st, true)
        .into_iter()
        .map(|(group, m)| {
            let mut values: Vec<Option<(f64, [f64; 2])>> = domains
                .iter()
                .map(|d| st.gain_kept(m, d).map(|e| (e.value, e.ci)))
                .collect();
            let have: Vec<f64> = values.iter().flatten().map(|v| v.0).collect();
            values.push(
                (have.len() == domains.len() && !have.is_empty())
                    .then(|| (have.iter().sum::<f64>() / have.len() as f64, [0.0; 2])),
            );
            Row {
                label: format!("{m}{}", st.kept_basis(m)),
                group: group.to_string(),
                values,
            }
        })
        .collect();
    out.push((
        "gain_kept.png",
        "The share of the experts' in-domain loss gains each method keeps (100%: all of it; below 0: worse than the seed)",
        kept_heatmap(
            &rows,
            &columns,
            "Share of the experts' in-domain gains kept",
            &dir.join("gain_kept.png"),
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    /// The demo's methods land in the groups the plots promise: btx and its MiX are the
    /// paper's, a changed paper choice an ablation, fitted routers and added experts beyond the
    /// paper, dense and upcycled training and BTM baselines; the seed and experts are in none.
    #[test]
    fn methods_are_grouped_by_what_they_change() {
        let r: Recipe = toml::from_str(include_str!("../../../../../examples/demo.toml")).unwrap();
        let plan = Plan::from_recipe(&r, Path::new("examples")).unwrap();
        for (m, want) in [
            ("btx", Some(PAPER)),
            ("mix:btx", Some(PAPER)),
            ("btx:no-lb", Some(ABLATIONS)),
            ("mix:ffn-only", Some(ABLATIONS)),
            ("btx:fit", Some(BEYOND)),
            ("mix:ffn-only-fit", Some(BEYOND)),
            ("btx:ffn-only-fit-add+knowledge", Some(BEYOND)),
            ("dense-compute", Some(BASELINES)),
            ("btm-top1", Some(BASELINES)),
            ("merge-avg", Some(BASELINES)),
            ("seed", None),
            ("expert:math", None),
            ("expert-ffn:math", None),
        ] {
            assert_eq!(group_of(&plan, m, true), want, "{m}");
        }
        assert_eq!(group_of(&plan, "oracle:btx", true), Some(ORACLE));
        assert_eq!(group_of(&plan, "oracle:btx", false), None);
    }
}
