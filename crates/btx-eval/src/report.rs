//! The report of a BTX run: `results.json` (schema in the README), `report.md` with the
//! paper-style table, compute, seed spread, routing and an honest verdict on the paper's claims.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::evaluate::EvalResult;
use crate::routing::RoutingReport;

/// Training and inference cost of one method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodCompute {
    pub train_tokens: u64,
    pub train_flops: f64,
    pub wall_seconds: f64,
    pub active_params: u64,
    pub total_params: u64,
    /// Forward passes per generated token (N for a BTM ensemble of N models).
    pub inference_forward_passes: usize,
    /// ≈ 2 x active parameters x forward passes.
    pub inference_flops_per_token: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// `seed`, `expert:<d>`, `dense`, `upcycle-data`, `btm-top1`, `merge-avg`, `btx`, ...
    pub name: String,
    pub eval: EvalResult,
    pub compute: MethodCompute,
}

#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    pub title: String,
    pub domains: Vec<String>,
    /// Domains that have an expert, in expert order.
    pub expert_domains: Vec<String>,
    /// Replica 0 (the primary run) first; further replicas differ only in training seeds.
    pub replicas: Vec<Vec<MethodResult>>,
    /// Routing analysis of each MoE method (replica 0).
    pub routing: BTreeMap<String, RoutingReport>,
    /// Expert labels of the MoE (for heatmaps).
    pub expert_labels: Vec<String>,
    /// Markdown image links (relative to the report) by caption.
    pub plots: Vec<(String, String)>,
    /// Free-form lines for the setup section.
    pub setup: Vec<String>,
}

fn get<'a>(ms: &'a [MethodResult], name: &str) -> Option<&'a MethodResult> {
    ms.iter().find(|m| m.name == name)
}

fn loss(ms: &[MethodResult], name: &str, d: &str) -> Option<f64> {
    get(ms, name)
        .and_then(|m| m.eval.domains.get(d))
        .map(|e| e.loss)
}

fn avg_loss(ms: &[MethodResult], name: &str) -> Option<f64> {
    get(ms, name).map(|m| m.eval.average.loss)
}

/// Half the spread (max - min) of a method's average loss over replicas; 0 with one replica.
fn half_range(input: &ReportInput, name: &str) -> f64 {
    let v: Vec<f64> = input
        .replicas
        .iter()
        .filter_map(|r| avg_loss(r, name))
        .collect();
    if v.len() < 2 {
        return 0.0;
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    (hi - lo) / 2.0
}

fn mean_over_replicas(
    input: &ReportInput,
    name: &str,
    f: impl Fn(&MethodResult) -> Option<f64>,
) -> Option<f64> {
    let v: Vec<f64> = input
        .replicas
        .iter()
        .filter_map(|r| get(r, name))
        .filter_map(f)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// One verdict line: a claim, whether it holds here, and the numbers.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    pub claim: String,
    /// `holds`, `does not hold`, `partly`, `within noise` or `not tested`.
    pub status: String,
    pub evidence: String,
}

/// " (seed spread ±x)" when there are several runs to measure it, else "".
fn noise_note(input: &ReportInput, noise: f64) -> String {
    if input.replicas.len() > 1 {
        format!(" (seed spread ±{noise:.3})")
    } else {
        String::new()
    }
}

/// Compares BTX's average loss with another method's, taking seed noise into account.
fn compare(input: &ReportInput, a: &str, b: &str) -> Option<(f64, f64, f64, &'static str)> {
    let la = mean_over_replicas(input, a, |m| Some(m.eval.average.loss))?;
    let lb = mean_over_replicas(input, b, |m| Some(m.eval.average.loss))?;
    let noise = half_range(input, a).max(half_range(input, b));
    let status = if lb - la > noise {
        "holds"
    } else if la - lb > noise {
        "does not hold"
    } else {
        "within noise"
    };
    Some((la, lb, noise, status))
}

pub fn verdicts(input: &ReportInput) -> Vec<Verdict> {
    let ms = &input.replicas[0];
    let mut out = vec![];
    // 1. Experts beat the seed in their domain and forget elsewhere.
    {
        let mut gains = vec![];
        let mut forget = vec![];
        let mut ok = true;
        for d in &input.expert_domains {
            let e = format!("expert:{d}");
            if let (Some(s), Some(x)) = (loss(ms, "seed", d), loss(ms, &e, d)) {
                gains.push(format!("{d} {:.3}→{:.3}", s, x));
                ok &= x < s;
                let others: Vec<f64> = input
                    .domains
                    .iter()
                    .filter(|o| *o != d)
                    .filter_map(|o| Some(loss(ms, &e, o)? - loss(ms, "seed", o)?))
                    .collect();
                if !others.is_empty() {
                    forget.push(others.iter().sum::<f64>() / others.len() as f64);
                }
            }
        }
        let mean_forget = forget.iter().sum::<f64>() / forget.len().max(1) as f64;
        out.push(Verdict {
            claim: "Each expert beats the seed on its own domain and loses ground elsewhere".into(),
            status: if gains.is_empty() {
                "not tested".into()
            } else if ok && mean_forget > 0.0 {
                "holds".into()
            } else if ok {
                "partly".into()
            } else {
                "does not hold".into()
            },
            evidence: format!(
                "in-domain loss seed→expert: {}; off-domain loss change of experts: {:+.3} on average",
                gains.join(", "),
                mean_forget
            ),
        });
    }
    // 2. BTX keeps most of the experts' gains in one model and has the best average.
    {
        let mut rec = vec![];
        for d in &input.expert_domains {
            let (Some(s), Some(x), Some(b)) = (
                loss(ms, "seed", d),
                loss(ms, &format!("expert:{d}"), d),
                loss(ms, "btx", d),
            ) else {
                continue;
            };
            if s > x {
                rec.push(format!("{d} {:.0}%", 100.0 * (s - b) / (s - x)));
            }
        }
        let mut parts = vec![format!(
            "share of each expert's in-domain gain BTX keeps: {}",
            rec.join(", ")
        )];
        let mut statuses = vec![];
        for other in ["seed", "dense", "dense-data", "dense-compute"] {
            if let Some((a, b, noise, st)) = compare(input, "btx", other) {
                parts.push(format!(
                    "average loss BTX {a:.3} vs {other} {b:.3}{}: {st}",
                    noise_note(input, noise)
                ));
                statuses.push(st);
            }
        }
        let best = ms
            .iter()
            .filter(|m| !m.name.starts_with("expert:"))
            .min_by(|a, b| {
                a.eval
                    .average
                    .loss
                    .partial_cmp(&b.eval.average.loss)
                    .unwrap()
            })
            .map(|m| m.name.clone())
            .unwrap_or_default();
        parts.push(format!(
            "lowest average loss among single models and ensembles: {best}"
        ));
        out.push(Verdict {
            claim: "BTX recovers most of each expert's in-domain gain in one model and has the best average, ahead of the seed and of dense training at equal compute".into(),
            status: summarise(&statuses),
            evidence: parts.join("; "),
        });
    }
    // 3. BTX beats sparse upcycling at equal compute.
    {
        let mut parts = vec![];
        let mut statuses = vec![];
        for other in ["upcycle-compute", "upcycle-data", "upcycle"] {
            if let Some((a, b, noise, st)) = compare(input, "btx", other) {
                parts.push(format!(
                    "average loss BTX {a:.3} vs {other} {b:.3}{}: {st}",
                    noise_note(input, noise)
                ));
                statuses.push(st);
            }
        }
        out.push(Verdict {
            claim: "BTX beats sparse upcycling at equal compute".into(),
            status: if statuses.is_empty() {
                "not tested".into()
            } else {
                statuses[0].to_string()
            },
            evidence: parts.join("; "),
        });
    }
    // 4. BTM: strong in-domain, N models at inference, weaker on average.
    {
        let mut parts = vec![];
        let mut st = "not tested".to_string();
        if let (Some(btm), Some(_)) = (get(ms, "btm-top1"), get(ms, "btx")) {
            let indom: Vec<String> = input
                .expert_domains
                .iter()
                .filter_map(|d| {
                    Some(format!(
                        "{d} {:.3} (expert {:.3})",
                        btm.eval.domains.get(d)?.loss,
                        loss(ms, &format!("expert:{d}"), d)?
                    ))
                })
                .collect();
            parts.push(format!("BTM top-1 in-domain loss: {}", indom.join(", ")));
            parts.push(format!(
                "inference: BTM {} forward passes per token vs BTX 1",
                btm.compute.inference_forward_passes
            ));
            if let Some((a, b, noise, s)) = compare(input, "btx", "btm-top1") {
                parts.push(format!(
                    "average loss BTX {a:.3} vs BTM top-1 {b:.3}{}",
                    noise_note(input, noise)
                ));
                st = match s {
                    "holds" => "holds".into(),
                    "does not hold" => "does not hold (BTM's average is better here)".into(),
                    other => other.into(),
                };
            }
        }
        out.push(Verdict {
            claim: "BTM ensembles are strong in-domain but cost N models at inference and are weaker on average".into(),
            status: st,
            evidence: parts.join("; "),
        });
    }
    // 5. Load balancing keeps experts alive; routing specialises by domain.
    {
        let (st, ev) = match input.routing.get("btx") {
            None => ("not tested".to_string(), String::new()),
            Some(r) => {
                let mut spec = vec![];
                let layers = r.domains.values().next().map_or(0, |d| d.top1_share.len());
                for (i, d) in input.expert_domains.iter().enumerate() {
                    if let Some(dr) = r.domains.get(d) {
                        let own: f64 = (0..layers).map(|l| dr.top1_share[l][i]).sum::<f64>()
                            / layers.max(1) as f64;
                        spec.push(format!("{d} {:.0}%", 100.0 * own));
                    }
                }
                let alive = r.dead_experts.is_empty();
                (
                    if alive { "holds".into() } else { "does not hold".into() },
                    format!(
                        "dead experts (< {:.0}% of tokens): {}; share of a domain's tokens whose top-1 is its own expert (mean over layers; uniform would be {:.0}%): {}",
                        100.0 * r.dead_threshold,
                        if alive { "none".to_string() } else { format!("{:?}", r.dead_experts) },
                        100.0 / r.num_experts as f64,
                        spec.join(", ")
                    ),
                )
            }
        };
        out.push(Verdict {
            claim:
                "With load balancing every expert stays in use and routing specialises by domain"
                    .into(),
            status: st,
            evidence: ev,
        });
    }
    out
}

fn summarise(statuses: &[&str]) -> String {
    if statuses.is_empty() {
        "not tested".into()
    } else if statuses.iter().all(|s| *s == "holds") {
        "holds".into()
    } else if statuses.iter().all(|s| *s == "does not hold") {
        "does not hold".into()
    } else if statuses.contains(&"holds") {
        "partly".into()
    } else {
        "within noise".into()
    }
}

/// `results.json`.
pub fn results_json(input: &ReportInput, verdicts: &[Verdict]) -> Value {
    let ms = &input.replicas[0];
    let mut methods = serde_json::Map::new();
    let mut compute = serde_json::Map::new();
    for m in ms {
        let mut per = serde_json::Map::new();
        for (d, e) in &m.eval.domains {
            per.insert(
                d.clone(),
                json!({"loss": e.loss, "accuracy": e.accuracy, "perplexity": e.perplexity}),
            );
        }
        per.insert(
            "average".into(),
            json!({"loss": m.eval.average.loss, "accuracy": m.eval.average.accuracy}),
        );
        methods.insert(m.name.clone(), Value::Object(per));
        compute.insert(
            m.name.clone(),
            serde_json::to_value(&m.compute).expect("json"),
        );
    }
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
        "routing": input.routing,
        "replicas": input.replicas.len(),
        "seed_spread": spread,
        "verdict": verdicts,
    })
}

fn fmt_acc(a: Option<f64>) -> String {
    a.map_or("–".into(), |a| format!("{:.1}", 100.0 * a))
}

fn fmt_big(x: f64) -> String {
    if x >= 1e12 {
        format!("{:.2}T", x / 1e12)
    } else if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// The paper-style table (loss and accuracy per domain, average), as markdown.
pub fn main_table(input: &ReportInput) -> String {
    let ms = &input.replicas[0];
    let mut s = String::from("| method |");
    for d in &input.domains {
        let _ = write!(s, " {d} loss | {d} acc % |");
    }
    s.push_str(" **avg loss** | **avg acc %** |\n|---|");
    for _ in &input.domains {
        s.push_str("---:|---:|");
    }
    s.push_str("---:|---:|\n");
    for m in ms {
        let _ = write!(s, "| {} |", m.name);
        for d in &input.domains {
            match m.eval.domains.get(d) {
                Some(e) => {
                    let _ = write!(s, " {:.3} | {} |", e.loss, fmt_acc(e.accuracy));
                }
                None => s.push_str(" – | – |"),
            }
        }
        let _ = writeln!(
            s,
            " **{:.3}** | **{}** |",
            m.eval.average.loss,
            fmt_acc(m.eval.average.accuracy)
        );
    }
    s
}

pub fn markdown(input: &ReportInput, verdicts: &[Verdict]) -> String {
    let ms = &input.replicas[0];
    let mut s = format!("# {}\n\n", input.title);
    if !input.setup.is_empty() {
        s.push_str("## Setup\n\n");
        for l in &input.setup {
            let _ = writeln!(s, "- {l}");
        }
        s.push('\n');
    }
    s.push_str("## Results (held-out loss, lower is better; exact-match accuracy)\n\n");
    s.push_str(&main_table(input));
    s.push_str("\nMethods: `seed` the starting model; `expert:<d>` trained on domain d only; `dense*` continued training of the seed on the finetune mixture; `upcycle-*` sparse upcycling (copies of the seed FFN) trained on the same mixture; `btm-top1/2` Branch-Train-Merge ensembles of the experts (and the generalist seed) weighted by the domain posterior of the context; `merge-avg` the weight average of those models; `btx` Branch-Train-MiX (top-2, load balancing). `-data` = as many training tokens as BTX, `-compute` = as many training FLOPs.\n\n");

    s.push_str("## Compute\n\n| method | train tokens | train FLOPs | train wall s | total params | active params | inference passes/token | inference FLOPs/token |\n|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in ms {
        let c = &m.compute;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            m.name,
            fmt_big(c.train_tokens as f64),
            fmt_big(c.train_flops),
            c.wall_seconds,
            fmt_big(c.total_params as f64),
            fmt_big(c.active_params as f64),
            c.inference_forward_passes,
            fmt_big(c.inference_flops_per_token)
        );
    }
    s.push_str("\nTraining compute of a method counts what it trains after the seed: BTX = its experts + MoE-finetune; BTM and merge-avg = the experts; the seed's pretraining is shared by all and listed on its own row.\n\n");

    if input.replicas.len() > 1 {
        let _ = writeln!(
            s,
            "## Seed spread ({} runs with different training seeds)\n",
            input.replicas.len()
        );
        s.push_str("| method | average loss per run | mean | ± half-range | average accuracy % per run |\n|---|---|---:|---:|---|\n");
        for m in ms {
            let l: Vec<String> = input
                .replicas
                .iter()
                .filter_map(|r| avg_loss(r, &m.name))
                .map(|x| format!("{x:.3}"))
                .collect();
            let a: Vec<String> = input
                .replicas
                .iter()
                .filter_map(|r| get(r, &m.name))
                .map(|x| fmt_acc(x.eval.average.accuracy))
                .collect();
            let mean = mean_over_replicas(input, &m.name, |x| Some(x.eval.average.loss))
                .unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} | {:.3} | {} |",
                m.name,
                l.join(", "),
                mean,
                half_range(input, &m.name),
                a.join(", ")
            );
        }
        s.push('\n');
    }

    if !input.routing.is_empty() {
        s.push_str("## Routing\n\n");
        for (name, r) in &input.routing {
            let _ = writeln!(
                s,
                "**{name}** ({} experts, top-{}): share of each domain's held-out tokens routed to each expert (top-k slots), averaged over layers; router entropy in nats (max ln {} = {:.2}).\n",
                r.num_experts,
                r.top_k,
                r.num_experts,
                (r.num_experts as f64).ln()
            );
            let _ = write!(s, "| domain |");
            for e in 0..r.num_experts {
                let _ = write!(
                    s,
                    " {} |",
                    input
                        .expert_labels
                        .get(e)
                        .cloned()
                        .unwrap_or(format!("e{e}"))
                );
            }
            s.push_str(" entropy |\n|---|");
            for _ in 0..r.num_experts {
                s.push_str("---:|");
            }
            s.push_str("---:|\n");
            for (d, dr) in &r.domains {
                let layers = dr.topk_share.len().max(1);
                let _ = write!(s, "| {d} |");
                for e in 0..r.num_experts {
                    let v: f64 = dr.topk_share.iter().map(|l| l[e]).sum::<f64>() / layers as f64;
                    let _ = write!(s, " {:.0}% |", 100.0 * v);
                }
                let ent: f64 = dr.entropy.iter().sum::<f64>() / layers as f64;
                let _ = writeln!(s, " {ent:.2} |");
            }
            let _ = writeln!(
                s,
                "\nDead experts (< {:.0}% of tokens in a layer): {}\n",
                100.0 * r.dead_threshold,
                if r.dead_experts.is_empty() {
                    "none".to_string()
                } else {
                    r.dead_experts
                        .iter()
                        .map(|(l, e)| format!("layer {l} expert {e}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
        }
    }

    if !input.plots.is_empty() {
        s.push_str("## Plots\n\n");
        for (cap, link) in &input.plots {
            let _ = writeln!(s, "**{cap}**\n\n![{cap}]({link})\n");
        }
    }

    s.push_str("## Verdict on the paper's claims\n\n");
    for v in verdicts {
        let _ = writeln!(s, "- **{}** — *{}*. {}", v.claim, v.status, v.evidence);
    }
    if input.replicas.len() > 1 {
        s.push_str("\nA claim \"holds\" only when the difference is larger than the spread between the runs with different training seeds; \"within noise\" means it is not.\n\n");
    } else {
        s.push_str("\nOne run only: differences are not checked against seed-to-seed noise (set `replicas = 2` in the recipe to measure it).\n\n");
    }

    if let Some(btx) = get(ms, "btx") {
        s.push_str("## Sample generations (BTX)\n\n");
        for (d, e) in &btx.eval.domains {
            for smp in e.samples.iter().take(2) {
                let _ = writeln!(
                    s,
                    "- *{d}* {} — expected `{}`, generated `{}`",
                    if smp.correct { "✓" } else { "✗" },
                    smp.answer,
                    smp.generated
                        .trim()
                        .replace('\n', "⏎")
                        .chars()
                        .take(80)
                        .collect::<String>()
                );
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Average, DomainEval};

    fn method(name: &str, losses: &[(&str, f64)], acc: f64) -> MethodResult {
        let domains = losses
            .iter()
            .map(|(d, l)| {
                (
                    d.to_string(),
                    DomainEval {
                        loss: *l,
                        perplexity: l.exp(),
                        loss_tokens: 100,
                        accuracy: Some(acc),
                        tasks: 10,
                        samples: vec![],
                    },
                )
            })
            .collect::<BTreeMap<_, _>>();
        let avg = losses.iter().map(|x| x.1).sum::<f64>() / losses.len() as f64;
        MethodResult {
            name: name.into(),
            eval: EvalResult {
                domains,
                average: Average {
                    loss: avg,
                    accuracy: Some(acc),
                },
                forward_passes_per_token: if name.starts_with("btm") { 3 } else { 1 },
                active_params: 10,
                total_params: 20,
            },
            compute: MethodCompute::default(),
        }
    }

    fn input() -> ReportInput {
        let ms = vec![
            method("seed", &[("a", 2.0), ("b", 2.0)], 0.1),
            method("expert:a", &[("a", 1.0), ("b", 2.5)], 0.2),
            method("expert:b", &[("a", 2.5), ("b", 1.2)], 0.2),
            method("dense", &[("a", 1.6), ("b", 1.6)], 0.3),
            method("btx", &[("a", 1.2), ("b", 1.4)], 0.4),
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
    fn results_json_has_the_documented_schema() {
        let i = input();
        let v = results_json(&i, &verdicts(&i));
        assert_eq!(v["domains"], json!(["a", "b"]));
        for m in ["seed", "expert:a", "dense", "btx"] {
            assert!(v["methods"][m]["a"]["loss"].is_number(), "{m}");
            assert!(v["methods"][m]["average"]["accuracy"].is_number(), "{m}");
            for k in [
                "train_tokens",
                "train_flops",
                "wall_seconds",
                "active_params",
                "total_params",
            ] {
                assert!(!v["compute"][m][k].is_null(), "{m}.{k}");
            }
        }
        assert!(v["routing"].is_object());
        assert_eq!(v["verdict"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let i = input();
        let v = verdicts(&i);
        assert_eq!(v[0].status, "holds", "{:?}", v[0]);
        assert_eq!(v[1].status, "holds", "{:?}", v[1]);
        assert!(v[1].evidence.contains("a 80%"), "{}", v[1].evidence);
        assert_eq!(v[2].status, "not tested");
        // With a second run whose numbers straddle, the same comparison is within noise.
        let mut i2 = i.clone();
        let mut r2 = i.replicas[0].clone();
        for m in &mut r2 {
            if m.name == "dense" {
                m.eval.average.loss = 1.0;
            }
        }
        i2.replicas.push(r2);
        let v2 = verdicts(&i2);
        assert!(
            v2[1].evidence.contains("within noise"),
            "{}",
            v2[1].evidence
        );
        let md = markdown(&i2, &v2);
        assert!(md.contains("| btx |") && md.contains("Seed spread") && md.contains("Verdict"));
    }
}
