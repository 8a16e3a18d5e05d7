//! The report stage: gathers every eval stage's `eval.json`, the stage manifests (compute) and
//! training curves of a run directory, and writes `report.md`, `results.json` and `plots/`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use btx_eval::evaluate::MethodEval;
use btx_eval::findings::{verdicts, Stats};
use btx_eval::plots;
use btx_eval::report::{markdown, results_json, MethodCompute, MethodResult, ReportInput};

use crate::manifest::{read_manifest, Compute};
use crate::plan::{method_of, Plan, Stage, StageKind};

fn compute_of(run: &Path, s: &Stage) -> Compute {
    read_manifest(&run.join(&s.dir))
        .map(|m| m.compute)
        .unwrap_or_default()
}

/// Training stages that make up a method (after the shared seed), for one replica suffix.
fn training_stages<'a>(plan: &'a Plan, method: &str, sfx: &str) -> Vec<&'a Stage> {
    let find = |n: &str| plan.stages.iter().find(|s| s.name == n);
    let experts: Vec<&Stage> = plan
        .domains
        .iter()
        .filter_map(|d| find(&format!("expert:{d}{sfx}")))
        .collect();
    match method {
        "seed" => find("seed").into_iter().collect(),
        m if m.starts_with("expert:") => find(&format!("{m}{sfx}")).into_iter().collect(),
        m if m == "btx" || m.starts_with("btx:") => {
            let v = m.strip_prefix("btx:").unwrap_or(&plan.variants[0]);
            let mut s = experts;
            s.extend(find(&format!("finetune:{v}{sfx}")));
            s
        }
        m if m.starts_with("btm-") || m == "merge-avg" => experts,
        m => find(&format!("baseline:{m}{sfx}")).into_iter().collect(),
    }
}

/// Loss curve (step, loss) from a training stage's metrics.jsonl.
fn curve(run: &Path, s: &Stage) -> Vec<(f64, f64)> {
    std::fs::read_to_string(run.join(&s.dir).join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["step"].as_f64()?, v["loss"].as_f64()?))
        })
        .collect()
}

pub fn build(plan: &Plan, run: &Path) -> Result<()> {
    let mut replicas: Vec<Vec<MethodResult>> = vec![vec![]; plan.replicas];
    let mut routing = BTreeMap::new();
    let mut routing_replicas: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut domains: Vec<String> = vec![];
    for s in &plan.stages {
        let StageKind::Eval { method, models, .. } = &s.kind else {
            continue;
        };
        let p = run.join(&s.dir).join("eval.json");
        let me: MethodEval = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        if domains.is_empty() {
            domains = me.result.domains.keys().cloned().collect();
        }
        let rep: usize = s
            .name
            .split('@')
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        let sfx = if rep == 0 {
            String::new()
        } else {
            format!("@{rep}")
        };
        let mut c = MethodCompute::default();
        for t in training_stages(plan, method, &sfx) {
            let x = compute_of(run, t);
            c.train_tokens += x.train_tokens;
            c.train_flops += x.train_flops;
            c.wall_seconds += x.wall_seconds;
        }
        c.active_params = me.result.active_params as u64;
        c.total_params = me.result.total_params as u64;
        c.inference_forward_passes = me.result.forward_passes_per_token;
        c.inference_flops_per_token = 2.0 * me.result.active_params as f64;
        let _ = models;
        if let Some(r) = &me.routing {
            if rep == 0 {
                routing.insert(method.clone(), r.clone());
            }
            // Stages run in replica order, so this is in replica order too.
            routing_replicas
                .entry(method.clone())
                .or_default()
                .push(r.clone());
        }
        let result = MethodResult {
            name: method.clone(),
            eval: me.result,
            compute: c,
        };
        if method == "seed" {
            // The seed is shared by every replica.
            for r in replicas.iter_mut() {
                r.push(result.clone());
            }
        } else {
            replicas[rep].push(result);
        }
    }
    let mut expert_labels: Vec<String> = plan.domains.clone();
    if plan.generalist {
        expert_labels.push("generalist".into());
    }
    let plots_dir = run.join("plots");
    std::fs::create_dir_all(&plots_dir)?;
    let mut plot_links = vec![];
    let primary = &replicas[0];
    let title = if plan.name.is_empty() {
        "BTX report".to_string()
    } else {
        format!("BTX report: {}", plan.name)
    };
    // Accuracy and loss per domain per method.
    let names: Vec<String> = primary.iter().map(|m| m.name.clone()).collect();
    let accs: Vec<Vec<Option<f64>>> = primary
        .iter()
        .map(|m| {
            domains
                .iter()
                .map(|d| {
                    m.eval
                        .domains
                        .get(d)
                        .and_then(|e| e.accuracy)
                        .map(|a| 100.0 * a)
                })
                .collect()
        })
        .collect();
    let losses: Vec<Vec<Option<f64>>> = primary
        .iter()
        .map(|m| {
            domains
                .iter()
                .map(|d| m.eval.domains.get(d).map(|e| e.loss))
                .collect()
        })
        .collect();
    let mut try_plot =
        |file: &str, caption: &str, r: Result<(), Box<dyn std::error::Error>>| match r {
            Ok(()) if plots_dir.join(file).exists() => {
                plot_links.push((caption.to_string(), format!("plots/{file}")));
            }
            Ok(()) => {}
            Err(e) => tracing::warn!("plot {file}: {e}"),
        };
    try_plot(
        "accuracy.png",
        "Task accuracy per domain and method",
        plots::grouped_bars(
            &names,
            &domains,
            &accs,
            "Exact-match accuracy (%)",
            "accuracy %",
            &plots_dir.join("accuracy.png"),
        ),
    );
    try_plot(
        "loss.png",
        "Held-out loss per domain and method",
        plots::grouped_bars(
            &names,
            &domains,
            &losses,
            "Held-out loss (lower is better)",
            "loss (nats/token)",
            &plots_dir.join("loss.png"),
        ),
    );
    let mut branch = vec![];
    let mut final_stage = vec![];
    for s in &plan.stages {
        if s.name.contains('@') || !matches!(s.kind, StageKind::Train { .. }) {
            continue;
        }
        let c = curve(run, s);
        if c.is_empty() {
            continue;
        }
        if s.name == "seed" || s.name.starts_with("expert:") {
            branch.push((s.name.clone(), c));
        } else {
            final_stage.push((method_of(&s.name, &plan.variants[0]), c));
        }
    }
    try_plot(
        "loss_branch_train.png",
        "Training loss: seed pretraining and expert training",
        plots::loss_curves(
            &branch,
            "Seed and experts (each on its own data)",
            &plots_dir.join("loss_branch_train.png"),
        ),
    );
    try_plot(
        "loss_finetune.png",
        "Training loss: MoE-finetune and baselines (on the finetune mixture)",
        plots::loss_curves(
            &final_stage,
            "MoE-finetune and baselines",
            &plots_dir.join("loss_finetune.png"),
        ),
    );
    for (name, r) in &routing {
        let file = format!("routing_{}.png", name.replace(':', "-"));
        try_plot(
            &file,
            &format!("Routing of {name}: share of each domain's tokens per expert and layer"),
            plots::routing_heatmap(
                r,
                &expert_labels,
                &format!("{name}: top-{} routing share", r.top_k),
                &plots_dir.join(&file),
            ),
        );
    }
    if plot_links.is_empty() && !plots::font_available() {
        tracing::warn!("no plots: no TrueType font found (set BTX_FONT)");
    }
    let seed_stage = plan.stages.iter().find(|s| s.name == "seed");
    let mut setup = vec![];
    if let Some(s) = seed_stage {
        let c = compute_of(run, s);
        setup.push(format!(
            "seed: {:.2}M parameters{}",
            c.total_params as f64 / 1e6,
            if c.train_tokens > 0 {
                format!(", pretrained on {} tokens", c.train_tokens)
            } else {
                String::new()
            }
        ));
    }
    setup.push(format!(
        "experts: {} ({} tokens in all); MoE-finetune: {} tokens; BTX total {} tokens, {:.3e} training FLOPs",
        plan.domains.join(", "),
        plan.budget.expert_tokens,
        plan.budget.finetune_tokens,
        plan.budget.btx_tokens,
        plan.budget.btx_flops
    ));
    setup.push(format!("domains evaluated: {}", domains.join(", ")));
    if plan.replicas > 1 {
        setup.push(format!(
            "{} replicas: everything after the seed repeated with different training seeds; tables show the first, the spread section all",
            plan.replicas
        ));
    }
    let input = ReportInput {
        title,
        domains: domains.clone(),
        expert_domains: plan.domains.clone(),
        replicas,
        routing,
        routing_replicas,
        expert_labels,
        plots: plot_links,
        setup,
    };
    let st = Stats::new(&input);
    let v = verdicts(&st);
    std::fs::write(
        run.join("results.json"),
        serde_json::to_string_pretty(&results_json(&st, &v))?,
    )?;
    std::fs::write(run.join("report.md"), markdown(&st, &v))?;
    Ok(())
}
