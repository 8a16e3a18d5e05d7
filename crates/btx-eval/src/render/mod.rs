//! Rendering the report of a BTX run (the pipeline's report stage gathers what goes in):
//! `results.json` (schema in the README) and `report.md` — the
//! paper-style table with 95% intervals, compute, the diagnosis, seed spread, routing and the
//! verdict on the paper's claims (the numbers and verdicts come from `findings`).

use std::fmt::Write;

use crate::findings::{diagnosis, Stats, Verdict};

mod common;
mod json;

use crate::bootstrap::{Estimate, DRAWS};
pub use crate::input::{MethodCompute, MethodResult, ReportInput};
use crate::routing::DomainRouting;
pub(crate) use common::fmt_big;
use common::{avg_loss, get, half_range};
pub use json::results_json;

/// "1.234 ±0.012": the estimate and half its interval's width.
fn pm(e: Option<Estimate>, scale: f64, digits: usize) -> String {
    match e {
        Some(e) => format!(
            "{:.*} ±{:.*}",
            digits,
            e.value * scale,
            digits,
            (e.ci[1] - e.ci[0]) * scale / 2.0
        ),
        None => "–".into(),
    }
}

/// Which shares of a domain's routing a table shows: `[layer][expert]` shares and `[layer]`
/// entropies.
type Shares = fn(&DomainRouting) -> (&Vec<Vec<f64>>, &Vec<f64>);

/// A routing table: one row per domain (its share per expert, in percent, and an entropy).
fn share_table(input: &ReportInput, experts: usize, rows: &[(&str, Vec<f64>, f64)]) -> String {
    let mut s = String::from("| domain |");
    for e in 0..experts {
        let label = input
            .expert_labels
            .get(e)
            .cloned()
            .unwrap_or(format!("e{e}"));
        let _ = write!(s, " {label} |");
    }
    s.push_str(" entropy |\n|---|");
    for _ in 0..experts {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    for (d, per, ent) in rows {
        let _ = write!(s, "| {d} |");
        for v in per {
            let _ = write!(s, " {:.0}% |", 100.0 * v);
        }
        let _ = writeln!(s, " {ent:.2} |");
    }
    s
}

/// The paper-style table (loss and accuracy per domain, average), as markdown.
pub fn main_table(st: &Stats) -> String {
    let input = st.input;
    let mut s = String::from("| method |");
    for (i, d) in input.domains.iter().enumerate() {
        // Only a domain with tasks can be at the floor.
        let floor = if st.chance[i].is_some() && !st.solvable[i] {
            " (floor)"
        } else {
            ""
        };
        let _ = write!(s, " {d} loss | {d} acc %{floor} |");
    }
    s.push_str(" **avg loss** | **avg acc %** |\n|---|");
    for _ in &input.domains {
        s.push_str("---:|---:|");
    }
    s.push_str("---:|---:|\n");
    for m in st.methods() {
        let _ = write!(s, "| {} |", m.name);
        for d in &input.domains {
            let loss = st
                .loss(&m.name, d)
                .map(|e| pm(Some(e), 1.0, 3))
                .or_else(|| m.eval.domains.get(d).map(|e| format!("{:.3}", e.loss)))
                .unwrap_or("–".into());
            let _ = write!(s, " {loss} | {} |", pm(st.acc(&m.name, d), 100.0, 1));
        }
        let avg = st
            .avg_loss(&m.name)
            .map(|e| pm(Some(e), 1.0, 3))
            .or_else(|| st.mean_avg_loss(&m.name).map(|x| format!("{x:.3}")))
            .unwrap_or("–".into());
        let _ = writeln!(
            s,
            " **{avg}** | **{}** |",
            pm(st.avg_acc(&m.name), 100.0, 1)
        );
    }
    s
}

/// How much of each expert's in-domain gain every other method keeps, and the experts'
/// forgetting.
fn diagnosis_tables(st: &Stats) -> String {
    let input = st.input;
    let mut s = String::new();
    let _ = write!(s, "| method |");
    for d in &input.expert_domains {
        let _ = write!(s, " {d} |");
    }
    s.push_str("\n|---|");
    for _ in &input.expert_domains {
        s.push_str("---:|");
    }
    s.push('\n');
    let mut rows = 0;
    for m in st.methods() {
        if m.name == "seed" || m.name.starts_with("expert:") {
            continue;
        }
        let cells: Vec<String> = input
            .expert_domains
            .iter()
            .map(|d| {
                st.gain_kept(&m.name, d).map_or("–".into(), |e| {
                    format!(
                        "{:.0}% [{:.0}, {:.0}]",
                        100.0 * e.value,
                        100.0 * e.ci[0],
                        100.0 * e.ci[1]
                    )
                })
            })
            .collect();
        let _ = writeln!(
            s,
            "| {}{} | {} |",
            m.name,
            st.kept_basis(&m.name),
            cells.join(" | ")
        );
        rows += 1;
    }
    if rows == 0 {
        return String::new();
    }
    let mut f = String::from(
        "\n| expert | in-domain loss change vs seed | off-domain loss change vs seed (mean) |\n|---|---:|---:|\n",
    );
    for d in &input.expert_domains {
        let e = format!("expert:{d}");
        let others: Vec<String> = input.domains.iter().filter(|o| *o != d).cloned().collect();
        let fmt = |x: Option<Estimate>| {
            x.map_or("–".into(), |x| {
                format!("{:+.3} [{:+.3}, {:+.3}]", x.value, x.ci[0], x.ci[1])
            })
        };
        let _ = writeln!(
            f,
            "| {e} | {} | {} |",
            fmt(st.loss_gap("seed", &e, std::slice::from_ref(d))),
            fmt(st.loss_gap("seed", &e, &others))
        );
    }
    format!(
        "Share of each expert's in-domain loss gain over the seed (seed − expert) that a method keeps on that domain, with its 95% interval (100% = as good as the expert, 0% = as the seed, negative = worse than the seed):\n\n{s}{f}"
    )
}

/// `report.md`: every section, in the order a reader wants them.
pub fn markdown(st: &Stats, verdicts: &[Verdict]) -> String {
    let input = st.input;
    let ms = &input.replicas[0];
    let mut s = format!("# {}\n\n", input.title);
    if !input.setup.is_empty() {
        s.push_str("## Setup\n\n");
        for l in &input.setup {
            let _ = writeln!(s, "- {l}");
        }
        s.push('\n');
    }
    results_section(st, &mut s);
    compute_section(ms, &mut s);

    let diag = diagnosis(st);
    if !diag.is_empty() {
        s.push_str("## Diagnosis\n\n");
        s.push_str(&diag);
        s.push_str("\n\n");
        s.push_str(&diagnosis_tables(st));
        s.push('\n');
    }

    if input.replicas.len() > 1 {
        seed_spread_section(input, &mut s);
    }
    if !input.routing.is_empty() {
        routing_section(input, &mut s);
    }

    s.push_str(&crate::optout::section(&input.opt_out, &input.domains));

    if !input.plots.is_empty() {
        s.push_str("## Plots\n\n");
        for (cap, link) in &input.plots {
            let _ = writeln!(s, "**{cap}**\n\n![{cap}]({link})\n");
        }
    }

    verdict_section(input, verdicts, &mut s);
    if let Some(btx) = get(ms, "btx") {
        samples_section(btx, &mut s);
    }
    s
}

/// The results: the main table, its intervals, chance levels, tasks left out, and what each
/// method is.
fn results_section(st: &Stats, s: &mut String) {
    let input = st.input;
    s.push_str("## Results (held-out loss, lower is better; exact-match accuracy)\n\n");
    s.push_str(&main_table(st));
    let _ = writeln!(
        s,
        "\nMeans over {} replica{}; ± is half the 95% interval (bootstrap over the evaluation windows, or task items for accuracy, and the replicas; {} draws).",
        input.replicas.len(),
        if input.replicas.len() == 1 { "" } else { "s" },
        DRAWS
    );
    let chance: Vec<String> = input
        .domains
        .iter()
        .zip(&st.chance)
        .zip(&st.solvable)
        .filter_map(|((d, c), ok)| {
            Some(format!(
                "{d} {:.0}%{}",
                100.0 * (*c)?,
                if *ok {
                    ""
                } else {
                    " (floor: no method beats it, left out of the average accuracy)"
                }
            ))
        })
        .collect();
    if !chance.is_empty() {
        let _ = writeln!(
            s,
            "Chance level (always the task set's most common answer): {}.",
            chance.join(", ")
        );
    }
    // Tasks whose prompt does not fit the models' positions are not scored: say how many.
    let unfit: Vec<String> = input
        .domains
        .iter()
        .filter_map(|d| {
            let n = input
                .replicas
                .iter()
                .flatten()
                .filter_map(|m| m.eval.domains.get(d))
                .map(|e| e.tasks_unfit)
                .max()?;
            (n > 0).then(|| format!("{d} {n}"))
        })
        .collect();
    if !unfit.is_empty() {
        let _ = writeln!(
            s,
            "Task prompts left out because they leave no room for an answer within the models' positions (not scored): {}.",
            unfit.join(", ")
        );
    }
    s.push_str("\nMethods: `seed` the starting model; `expert:<d>` trained on domain d only; `dense*` continued training of the seed on the finetune mixture; `upcycle-*` sparse upcycling (copies of the seed FFN) trained on the same mixture; `btm-top1/2` Branch-Train-Merge ensembles of the experts (and the generalist seed) weighted by the domain posterior of the context; `merge-avg` the weight average of those models; `mix:<v>` the MiX before any finetuning; `btx` Branch-Train-MiX (top-2, load balancing) and `btx:<v>` its variants; `oracle:<m>` method m with oracle routing (each domain's tokens to its own expert alone), a diagnostic, not a method one can run. `-data` = as many training tokens as BTX, `-compute` = as many training FLOPs.\n\n");
}

/// The compute each method trains and infers with, and its training time as run.
fn compute_section(ms: &[MethodResult], s: &mut String) {
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
    s.push_str("\nTraining compute of a method counts what it trains after the seed: BTX = its experts + MoE-finetune; BTM, merge-avg and mix = the experts; the seed's pretraining is shared by all and listed on its own row.\n\n");
    s.push_str(&cost_section(ms));
}

/// Each method's average per replica, with the half-range.
fn seed_spread_section(input: &ReportInput, s: &mut String) {
    let ms = &input.replicas[0];
    let _ = writeln!(
        s,
        "## Seed spread ({} runs with different training seeds)\n",
        input.replicas.len()
    );
    s.push_str("| method | average loss per run | ± half-range | average accuracy % per run |\n|---|---|---:|---|\n");
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
            .map(|x| {
                x.eval
                    .average
                    .accuracy
                    .map_or("–".into(), |a| format!("{:.1}", 100.0 * a))
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {} |",
            m.name,
            l.join(", "),
            half_range(input, &m.name),
            a.join(", ")
        );
    }
    s.push('\n');
}

/// Each routed model's shares of each domain's tokens per expert, and its dead experts.
fn routing_section(input: &ReportInput, s: &mut String) {
    s.push_str("## Routing\n\n");
    for (name, r) in &input.routing {
        let _ = writeln!(
            s,
            "**{name}** ({} experts, top-{}, replica 0): share of each domain's held-out tokens routed to each expert (top-k slots), averaged over layers; router entropy in nats (max ln {} = {:.2}).\n",
            r.num_experts,
            r.top_k,
            r.num_experts,
            (r.num_experts as f64).ln()
        );
        // The FFN routers' top-k shares, and the attention routers' mean weights.
        let rows = |shares: Shares| {
            r.domains
                .iter()
                .map(|(d, dr)| {
                    let (share, ent) = shares(dr);
                    let layers = share.len().max(1) as f64;
                    let per: Vec<f64> = (0..r.num_experts)
                        .map(|e| {
                            share
                                .iter()
                                .map(|l| l.get(e).copied().unwrap_or(0.0))
                                .sum::<f64>()
                                / layers
                        })
                        .collect();
                    (d.as_str(), per, ent.iter().sum::<f64>() / layers)
                })
                .collect::<Vec<_>>()
        };
        s.push_str(&share_table(
            input,
            r.num_experts,
            &rows(|dr| (&dr.topk_share, &dr.entropy)),
        ));
        if r.domains.values().any(|dr| !dr.attn_share.is_empty()) {
            let _ = writeln!(
                s,
                "\nAttention experts: mean weight the attention router gives each attention expert (soft: all run), averaged over layers; entropy in nats.\n"
            );
            s.push_str(&share_table(
                input,
                r.num_experts,
                &rows(|dr| (&dr.attn_share, &dr.attn_entropy)),
            ));
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

/// The verdict on each of the paper's claims, and what the verdicts mean.
fn verdict_section(input: &ReportInput, verdicts: &[Verdict], s: &mut String) {
    s.push_str("## Verdict on the paper's claims\n\n");
    for v in verdicts {
        let _ = writeln!(s, "- **{}** — *{}*. {}", v.claim, v.status, v.evidence);
    }
    let _ = writeln!(
        s,
        "\nA claim *holds* only when the 95% interval of every difference it rests on lies on the side the paper predicts, *does not hold* when one lies on the other side, and is *within noise* otherwise. The intervals cover evaluation noise (windows, task items){}.\n",
        if input.replicas.len() > 1 {
            " and training noise (the replicas)"
        } else {
            "; with one replica, training noise is not measured (set `replicas = 3` in the recipe)"
        }
    );
}

/// A few of BTX's generations on each domain's tasks.
fn samples_section(btx: &MethodResult, s: &mut String) {
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

/// Seconds as a reader wants them: 1.23 s, 45.6 ms, 789 µs, 2.1 h.
fn fmt_secs(t: f64) -> String {
    if t >= 7200.0 {
        format!("{:.1} h", t / 3600.0)
    } else if t >= 1.0 {
        format!("{t:.3} s")
    } else if t >= 1e-3 {
        format!("{:.1} ms", t * 1e3)
    } else {
        format!("{:.0} µs", t * 1e6)
    }
}

/// Equal FLOPs is not equal wall-clock: each method's training time as run (its stages one
/// after another, and with its branches side by side) and on N workers in the cost model
/// ([`crate::cost`]), with the sentence that compares btx with dense training at equal FLOPs.
fn cost_section(ms: &[MethodResult]) -> String {
    use crate::cost::{seconds, H100_CLUSTER, WORKERS};
    let rows: Vec<&MethodResult> = ms
        .iter()
        .filter(|m| {
            !m.compute.work.is_empty()
                && !m.name.starts_with("oracle:")
                && !m.name.starts_with("expert")
                && m.name != "seed"
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let hw = H100_CLUSTER;
    let mut s = String::from("## Where BTX's advantage lives: time, not FLOPs\n\n");
    let _ = write!(
        s,
        "| method | train FLOPs | wall s as run, stages in sequence | wall s, branches side by side |"
    );
    for n in WORKERS {
        let _ = write!(s, " model: time on {n} |");
    }
    s.push_str("\n|---|---:|---:|---:|");
    for _ in WORKERS {
        s.push_str("---:|");
    }
    s.push('\n');
    for m in &rows {
        let c = &m.compute;
        let _ = write!(
            s,
            "| {} | {} | {:.0} | {:.0} |",
            m.name,
            fmt_big(c.train_flops),
            c.wall_seconds,
            c.wall_parallel_seconds
        );
        for n in WORKERS {
            let _ = write!(s, " {} |", fmt_secs(seconds(&c.work, n, &hw)));
        }
        s.push('\n');
    }
    let _ = write!(
        s,
        "\nThe model's workers each sustain {} FLOP/s and send {} B/s (an H100 at 40% of its bf16 peak on one 400 Gb/s link), values of {} bytes. A dense stage trains data-parallel with a ring all-reduce of every gradient per step; a MoE stage all-reduces the weights outside its experts and sends each token's hidden state to its k experts and back in every MoE layer, forward and backward; BTX's experts train side by side on N/E workers each with nothing between them (README: \"Cost model\"). It ignores latency and the overlap of communication with compute.",
        fmt_big(hw.flops),
        fmt_big(hw.bandwidth),
        hw.value_bytes
    );
    let find = |n: &str| rows.iter().find(|m| m.name == n);
    if let (Some(b), Some(d)) = (find("btx"), find("dense-compute")) {
        let ratio: Vec<String> = WORKERS
            .iter()
            .map(|&n| {
                let (tb, td) = (
                    seconds(&b.compute.work, n, &hw),
                    seconds(&d.compute.work, n, &hw),
                );
                format!("{:.2}x on {n}", td / tb.max(1e-30))
            })
            .collect();
        let _ = write!(
            s,
            " At equal FLOPs (btx {}, dense-compute {}) the model gives dense-compute's time over btx's as {}: above 1, BTX finishes first and the same wall-clock buys it more training.",
            fmt_big(b.compute.train_flops),
            fmt_big(d.compute.train_flops),
            ratio.join(", ")
        );
    }
    s.push_str("\n\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::{Average, DomainEval, EvalResult};
    use crate::findings::verdicts;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The cost section: btx's experts side by side beat dense data-parallel training of
    /// the same FLOPs once there are workers to share, and the sentence says by how much.
    #[test]
    fn the_cost_section_compares_time_at_equal_flops() {
        use crate::cost::StageWork;
        let mut btx = method("btx", &[("a", 1.0)], 0);
        let expert = StageWork {
            flops: 1e15,
            steps: 100.0,
            synced_params: 1e8,
            branch: true,
            ..Default::default()
        };
        btx.compute.train_flops = 4e15;
        btx.compute.work = vec![
            expert.clone(),
            expert.clone(),
            StageWork {
                flops: 2e15,
                branch: false,
                a2a_values: 1e9,
                ..expert
            },
        ];
        let mut dense = method("dense-compute", &[("a", 1.0)], 0);
        dense.compute.train_flops = 4e15;
        dense.compute.work = vec![StageWork {
            flops: 4e15,
            steps: 400.0,
            synced_params: 1e8,
            ..Default::default()
        }];
        let s = cost_section(&[btx, dense]);
        assert!(s.contains("| btx | 4000.00T |"), "{s}");
        assert!(s.contains("1.00x on 1"), "{s}");
        let r8: f64 = s
            .split("x on 8")
            .next()
            .and_then(|h| h.rsplit(' ').next())
            .and_then(|x| x.parse().ok())
            .unwrap();
        assert!(r8 > 1.0, "{s}");
        assert_eq!(fmt_secs(0.0123), "12.3 ms");
        assert_eq!(fmt_secs(9000.0), "2.5 h");
    }

    fn method(name: &str, losses: &[(&str, f64)], correct: usize) -> MethodResult {
        let domains = losses
            .iter()
            .map(|(d, l)| {
                let w: Vec<f64> = (0..16).map(|i| l + 0.05 * ((i % 4) as f64 - 1.5)).collect();
                (
                    d.to_string(),
                    DomainEval {
                        loss: *l,
                        perplexity: l.exp(),
                        loss_tokens: 100,
                        accuracy: Some(correct as f64 / 20.0),
                        tasks: 20,
                        tasks_unfit: 0,
                        samples: vec![],
                        window_losses: w,
                        task_correct: (0..20).map(|i| i < correct).collect(),
                        chance: Some(0.05),
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
                    accuracy: Some(correct as f64 / 20.0),
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
            method("seed", &[("a", 2.0), ("b", 2.0)], 2),
            method("expert:a", &[("a", 1.0), ("b", 2.5)], 4),
            method("expert:b", &[("a", 2.5), ("b", 1.2)], 4),
            method("dense", &[("a", 1.6), ("b", 1.6)], 6),
            method("mix:btx", &[("a", 1.9), ("b", 1.9)], 3),
            method("btx", &[("a", 1.2), ("b", 1.4)], 8),
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
        let st = Stats::new(&i);
        let v = results_json(&st, &verdicts(&st));
        assert_eq!(v["domains"], json!(["a", "b"]));
        for m in ["seed", "expert:a", "dense", "btx", "mix:btx"] {
            for d in ["a", "b", "average"] {
                let x = &v["methods"][m][d];
                let (l, ci) = (x["loss"].as_f64().unwrap(), &x["loss_ci"]);
                let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
                assert!(lo <= l && l <= hi && lo < hi, "{m} {d}: {x}");
                assert!(x["accuracy_ci"][1].is_number(), "{m} {d}: {x}");
            }
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
        assert_eq!(v["tasks"]["a"]["chance"], json!(0.05));
        assert_eq!(v["tasks"]["a"]["solvable"], json!(true));
        assert!(v["gain_kept"]["btx"]["a"]["share_ci"][0].is_number());
        assert!(v["routing"].is_object());
        assert!(v["diagnosis"].as_str().unwrap().contains("mix:btx"));
        assert_eq!(v["verdict"].as_array().unwrap().len(), 5);
        for x in v["verdict"].as_array().unwrap() {
            let st = x["status"].as_str().unwrap();
            assert!(
                ["holds", "does not hold", "within noise"].contains(&st)
                    || st.starts_with("not tested"),
                "{x}"
            );
        }
    }

    #[test]
    fn markdown_shows_intervals_diagnosis_and_verdicts() {
        let i = input();
        let st = Stats::new(&i);
        let v = verdicts(&st);
        let md = markdown(&st, &v);
        assert!(md.contains("| btx | 1.200 ±"), "{md}");
        assert!(
            md.contains("## Diagnosis") && md.contains("## Verdict"),
            "{md}"
        );
        assert!(md.contains("Chance level"), "{md}");
        // BTX (1.3) is ahead of dense (1.6) on every window: the core claim holds.
        assert_eq!(v[1].status, "holds", "{:?}", v[1]);
    }
}
