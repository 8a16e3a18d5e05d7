//! `results.json`: every reported number with its interval, the verdicts and the diagnosis, in
//! the schema the README documents.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::common::{avg_loss, get};
use crate::bootstrap::{Estimate, DRAWS, LEVEL};
use crate::findings::{diagnosis, Stats, Verdict};

fn est_json(e: Option<Estimate>, scale: f64) -> (Value, Value) {
    match e {
        Some(e) => (
            json!(e.value * scale),
            json!([e.ci[0] * scale, e.ci[1] * scale]),
        ),
        None => (Value::Null, Value::Null),
    }
}

/// `results.json`. `loss` and `accuracy` are means over replicas, `*_ci` their 95% intervals.
pub fn results_json(st: &Stats, verdicts: &[Verdict]) -> Value {
    let input = st.input;
    let ms = &input.replicas[0];
    let mut methods = serde_json::Map::new();
    let mut compute = serde_json::Map::new();
    let mut kept = serde_json::Map::new();
    for m in ms {
        let mut per = serde_json::Map::new();
        for (d, e) in &m.eval.domains {
            let (loss, loss_ci) = st
                .loss(&m.name, d)
                .map_or((json!(e.loss), Value::Null), |x| est_json(Some(x), 1.0));
            let (acc, acc_ci) = match st.acc(&m.name, d) {
                Some(x) => est_json(Some(x), 1.0),
                None => (json!(e.accuracy), Value::Null),
            };
            per.insert(
                d.clone(),
                json!({"loss": loss, "loss_ci": loss_ci, "perplexity": loss.as_f64().map(f64::exp),
                       "accuracy": acc, "accuracy_ci": acc_ci}),
            );
        }
        let (loss, loss_ci) = st
            .avg_loss(&m.name)
            .map_or((json!(st.mean_avg_loss(&m.name)), Value::Null), |x| {
                est_json(Some(x), 1.0)
            });
        let (acc, acc_ci) = est_json(st.avg_acc(&m.name), 1.0);
        per.insert(
            "average".into(),
            json!({"loss": loss, "loss_ci": loss_ci, "accuracy": acc, "accuracy_ci": acc_ci}),
        );
        methods.insert(m.name.clone(), Value::Object(per));
        compute.insert(
            m.name.clone(),
            serde_json::to_value(&m.compute).expect("json"),
        );
        let k: serde_json::Map<String, Value> = input
            .expert_domains
            .iter()
            .filter_map(|d| {
                let e = st.gain_kept(&m.name, d)?;
                Some((d.clone(), json!({"share": e.value, "share_ci": e.ci})))
            })
            .collect();
        if !k.is_empty() && !m.name.starts_with("expert:") && m.name != "seed" {
            kept.insert(m.name.clone(), Value::Object(k));
        }
    }
    let tasks: serde_json::Map<String, Value> = input
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                d.clone(),
                json!({"chance": st.chance[i], "solvable": st.solvable[i]}),
            )
        })
        .collect();
    let spread: serde_json::Map<String, Value> = ms
        .iter()
        .map(|m| {
            let losses: Vec<f64> = input
                .replicas
                .iter()
                .filter_map(|r| avg_loss(r, &m.name))
                .collect();
            let accs: Vec<f64> = input
                .replicas
                .iter()
                .filter_map(|r| get(r, &m.name).and_then(|x| x.eval.average.accuracy))
                .collect();
            (
                m.name.clone(),
                json!({"average_loss": losses, "average_accuracy": accs}),
            )
        })
        .collect();
    json!({
        "title": input.title,
        "domains": input.domains,
        "expert_domains": input.expert_domains,
        "methods": methods,
        "compute": compute,
        "tasks": tasks,
        "gain_kept": kept,
        "noise": {"method": "bootstrap over evaluation windows (loss) or task items (accuracy) and replicas",
                  "level": LEVEL, "draws": DRAWS, "replicas": input.replicas.len()},
        // The shares without their per-window breakdown (the bootstrap's input, in eval.json).
        "routing": input.routing.iter().map(|(m, r)| {
            let mut r = r.clone();
            r.domains.values_mut().for_each(|d| d.windows.clear());
            (m.clone(), r)
        }).collect::<BTreeMap<_, _>>(),
        "replicas": input.replicas.len(),
        "seed_spread": spread,
        "diagnosis": diagnosis(st),
        "verdict": verdicts,
    })
}
