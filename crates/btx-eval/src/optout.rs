//! The opt-out cost (FlexOlmo's question): what each domain's held-out loss gains when one
//! expert is removed from a BTX model, as a paired difference per evaluation window, with
//! bootstrap intervals over windows and replicas like every other number of the report.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};

use crate::bootstrap::{Bootstrap, Draw, Estimate, Obs};
use crate::evaluate::OptOutEval;

/// Per-window loss differences, `[replica][domain]`, of the model without `label`.
struct Deltas {
    label: String,
    by_rep: Vec<Vec<Vec<f64>>>,
}

/// The opt-out evaluations of one method (replica order), as paired per-window differences.
struct MethodOptOut {
    deltas: Vec<Deltas>,
    boot: Bootstrap,
}

impl MethodOptOut {
    fn new(reps: &[OptOutEval], domains: &[String]) -> Option<Self> {
        let first = reps.first()?;
        let units: Vec<usize> = domains
            .iter()
            .map(|d| {
                first
                    .full
                    .domains
                    .get(d)
                    .map_or(0, |e| e.window_losses.len())
            })
            .collect();
        let mut deltas = vec![];
        for (label, _) in &first.removed {
            let mut by_rep = vec![];
            for r in reps {
                let without = &r.removed.iter().find(|(l, _)| l == label)?.1;
                let per_domain: Vec<Vec<f64>> = domains
                    .iter()
                    .map(|d| {
                        let a = &without.domains.get(d)?.window_losses;
                        let b = &r.full.domains.get(d)?.window_losses;
                        (a.len() == b.len()).then(|| a.iter().zip(b).map(|(x, y)| x - y).collect())
                    })
                    .collect::<Option<_>>()?;
                by_rep.push(per_domain);
            }
            deltas.push(Deltas {
                label: label.clone(),
                by_rep,
            });
        }
        Some(Self {
            deltas,
            boot: Bootstrap::new(reps.len(), &units, 0x0b7),
        })
    }

    fn obs(d: &Deltas) -> Obs<'_> {
        d.by_rep
            .iter()
            .map(|rep| rep.iter().map(Vec::as_slice).collect())
            .collect()
    }

    /// Δloss of domain `di` without expert `e`.
    fn cell(&self, e: usize, di: usize) -> Option<Estimate> {
        let obs = Self::obs(&self.deltas[e]);
        self.boot.estimate(|dr: &Draw| dr.mean(&obs, di))
    }

    /// Mean Δloss over (expert, domain) pairs: on the expert's own domain, or on the others.
    fn summary(&self, domains: &[String], own: bool) -> Option<Estimate> {
        let obs: Vec<Obs> = self.deltas.iter().map(Self::obs).collect();
        let pairs: Vec<(usize, usize)> = self
            .deltas
            .iter()
            .enumerate()
            .filter_map(|(e, d)| {
                domains
                    .iter()
                    .position(|x| *x == d.label)
                    .map(|home| (e, home))
            })
            .flat_map(|(e, home)| {
                (0..domains.len())
                    .filter(move |&di| (di == home) == own)
                    .map(move |di| (e, di))
            })
            .collect();
        if pairs.is_empty() {
            return None;
        }
        self.boot.estimate(|dr: &Draw| {
            let mut s = 0.0;
            for &(e, di) in &pairs {
                s += dr.mean(&obs[e], di)?;
            }
            Some(s / pairs.len() as f64)
        })
    }
}

fn signed(e: Option<Estimate>) -> String {
    match e {
        Some(e) => format!("{:+.3} [{:+.3}, {:+.3}]", e.value, e.ci[0], e.ci[1]),
        None => "–".into(),
    }
}

/// Methods in the order the report lists them: `btx` first, then the others by name.
fn ordered(opt_out: &BTreeMap<String, Vec<OptOutEval>>) -> Vec<&String> {
    let mut names: Vec<&String> = opt_out.keys().collect();
    names.sort_by_key(|n| (n.as_str() != "btx", n.as_str()));
    names
}

/// The report's opt-out section (empty without opt-out evaluations).
pub fn section(opt_out: &BTreeMap<String, Vec<OptOutEval>>, domains: &[String]) -> String {
    let mut s = String::new();
    let methods: Vec<(&String, MethodOptOut)> = ordered(opt_out)
        .into_iter()
        .filter_map(|m| Some((m, MethodOptOut::new(&opt_out[m], domains)?)))
        .filter(|(_, o)| !o.deltas.is_empty())
        .collect();
    if methods.is_empty() {
        return s;
    }
    s.push_str("## Removing an expert (opt-out cost)\n\n");
    let _ = writeln!(
        s,
        "Held-out loss change per domain when one expert (its FFN, attention expert and router rows) is removed from the finetuned model with no retraining (`btx prune-experts`, `--without-expert`); mean over replicas, 95% interval (paired per window). A removable expert costs its own domain and leaves the others near +0.\n"
    );
    let _ = writeln!(
        s,
        "| method | own domain | other domains |\n|---|---:|---:|"
    );
    for (m, o) in &methods {
        let _ = writeln!(
            s,
            "| {m} | {} | {} |",
            signed(o.summary(domains, true)),
            signed(o.summary(domains, false))
        );
    }
    s.push('\n');
    for (m, o) in &methods {
        let _ = write!(s, "**{m}** without |");
        for d in domains {
            let _ = write!(s, " {d} |");
        }
        s.push_str("\n|---|");
        for _ in domains {
            s.push_str("---:|");
        }
        s.push('\n');
        for (e, d) in o.deltas.iter().enumerate() {
            let _ = write!(s, "| {} |", d.label);
            for di in 0..domains.len() {
                let _ = write!(s, " {} |", signed(o.cell(e, di)));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    s
}

/// The same numbers for `results.json`: method → removed expert → domain → {delta, ci}.
pub fn json(opt_out: &BTreeMap<String, Vec<OptOutEval>>, domains: &[String]) -> Value {
    let mut out = serde_json::Map::new();
    for m in ordered(opt_out) {
        let Some(o) = MethodOptOut::new(&opt_out[m], domains) else {
            continue;
        };
        let mut per = serde_json::Map::new();
        for (e, d) in o.deltas.iter().enumerate() {
            let cells: serde_json::Map<String, Value> = domains
                .iter()
                .enumerate()
                .map(|(di, name)| {
                    let c = o.cell(e, di);
                    (
                        name.clone(),
                        json!({"delta_loss": c.map(|x| x.value), "ci95": c.map(|x| x.ci)}),
                    )
                })
                .collect();
            per.insert(d.label.clone(), Value::Object(cells));
        }
        out.insert(m.clone(), Value::Object(per));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Average, DomainEval, EvalResult};

    fn result(losses: &[(&str, Vec<f64>)]) -> EvalResult {
        EvalResult {
            domains: losses
                .iter()
                .map(|(d, w)| {
                    (
                        d.to_string(),
                        DomainEval {
                            loss: w.iter().sum::<f64>() / w.len() as f64,
                            perplexity: 1.0,
                            loss_tokens: w.len(),
                            accuracy: None,
                            tasks: 0,
                            tasks_unfit: 0,
                            samples: vec![],
                            window_losses: w.clone(),
                            task_correct: vec![],
                            chance: None,
                        },
                    )
                })
                .collect(),
            average: Average {
                loss: 0.0,
                accuracy: None,
            },
            forward_passes_per_token: 1,
            active_params: 1,
            total_params: 1,
        }
    }

    #[test]
    fn own_domain_cost_and_others_are_paired_differences() {
        let domains = vec!["code".to_string(), "math".to_string()];
        let noise = |i: usize| (i as f64 * 0.37).sin() * 0.5;
        let full: Vec<f64> = (0..20).map(|i| 2.0 + noise(i)).collect();
        // Removing math costs math 0.3 exactly per window and code nothing.
        let plus = |v: &[f64], x: f64| v.iter().map(|y| y + x).collect::<Vec<_>>();
        let reps: Vec<OptOutEval> = (0..2)
            .map(|_| OptOutEval {
                method: "btx".into(),
                full: result(&[("code", full.clone()), ("math", full.clone())]),
                removed: vec![(
                    "math".into(),
                    result(&[("code", full.clone()), ("math", plus(&full, 0.3))]),
                )],
            })
            .collect();
        let map: BTreeMap<String, Vec<OptOutEval>> = [("btx".to_string(), reps)].into();
        let o = MethodOptOut::new(&map["btx"], &domains).unwrap();
        let own = o.summary(&domains, true).unwrap();
        let other = o.summary(&domains, false).unwrap();
        // Paired: the window noise cancels, so the intervals are points.
        assert!((own.value - 0.3).abs() < 1e-12 && (own.ci[1] - own.ci[0]).abs() < 1e-12);
        assert!(other.value.abs() < 1e-12);
        let md = section(&map, &domains);
        assert!(
            md.contains("| btx | +0.300 [+0.300, +0.300] | +0.000"),
            "{md}"
        );
        assert_eq!(
            json(&map, &domains)["btx"]["math"]["math"]["delta_loss"]
                .as_f64()
                .map(|x| (x * 1000.0).round()),
            Some(300.0)
        );
    }
}
