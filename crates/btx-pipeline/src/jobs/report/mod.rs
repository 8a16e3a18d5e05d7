//! The report stage: gathers every eval stage's `eval.json`, the stage manifests (compute) and
//! training curves of a run directory, and writes `report.md`, `results.json` and `plots/`.

mod summary;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use btx_eval::evaluate::{MethodEval, OptOutEval};
use btx_eval::findings::{verdicts, Stats};
use btx_eval::plots;
use btx_eval::render::{markdown, results_json, MethodCompute, MethodResult, ReportInput};

use crate::plan::{names, Kind, Plan, Stage, StageId, StageKind};
use crate::run::manifest::{read_manifest, Compute};

fn compute_of(run: &Path, s: &Stage) -> Compute {
    read_manifest(&run.join(&s.dir))
        .map(|m| m.compute)
        .unwrap_or_default()
}

/// Training stages that make up a method (after the shared seed), for one replica suffix.
fn training_stages<'a>(plan: &'a Plan, method: &str, sfx: &str) -> Vec<&'a Stage> {
    let find = |n: &StageId| plan.stages.iter().find(|s| s.name == *n);
    // The experts a variant's MiX is made of (full or FFN-only), and the MiX itself (no
    // training FLOPs, but its wall time: a fitted router's forward passes).
    let mixed = |v: &str| -> Vec<&'a Stage> {
        let mix = find(&StageId::mix(v, sfx)).or_else(|| plan.mix_of(v, sfx));
        match mix.map(|s| (s, &s.kind)) {
            Some((m, StageKind::Mix { experts, .. })) => experts
                .iter()
                .filter_map(&find)
                .chain(std::iter::once(m))
                .collect(),
            _ => vec![],
        }
    };
    let experts = || -> Vec<&Stage> {
        plan.domains
            .iter()
            .filter_map(|d| find(&StageId::expert("expert", d, sfx)))
            .collect()
    };
    if method == names::SEED {
        return find(&StageId::seed()).into_iter().collect();
    }
    // An oracle evaluation routes another method's model differently: it cost what it did.
    if let Some(inner) = method.strip_prefix("oracle:") {
        return training_stages(plan, inner, sfx);
    }
    // A finetuned variant with an expert added after: the variant's cost and that expert's.
    if let Some((inner, _)) = names::split_added(method) {
        let mut s = training_stages(plan, inner, sfx);
        if let Some(v) = names::btx_variant(inner, &plan.variants[0]) {
            if let Some(add) = find(&StageId::add_expert(v, sfx)) {
                if let StageKind::AddExpert { expert, .. } = &add.kind {
                    s.extend(find(expert));
                }
                s.push(add);
            }
        }
        return s;
    }
    // Expert families (`expert`, `expert-ffn`, `expert-anchored[-<groups>]`); rescaled ones
    // (`expert-x<f>`) are not evaluated alone.
    if names::expert_domain(method).is_some() {
        let id = format!("{method}{sfx}").parse::<StageId>().ok();
        return id.and_then(|id| find(&id)).into_iter().collect();
    }
    if let Some(v) = names::mix_variant(method) {
        return mixed(v);
    }
    if let Some(v) = names::btx_variant(method, &plan.variants[0]) {
        let mut s = mixed(v);
        s.extend(find(&StageId::finetune(v, sfx)));
        return s;
    }
    if method.starts_with("btm-") || method == "merge-avg" {
        return experts();
    }
    find(&StageId::baseline(method, sfx)).into_iter().collect()
}

/// For each variant that adds an expert after its finetune (`btx:<v>+<d>`), the variant whose
/// MiX is the same spec over the same family of experts with d's among them: the reference that
/// isolates adding late (main budget, replica 0).
fn added_twins(plan: &Plan) -> BTreeMap<String, String> {
    let primary = &plan.variants[0];
    let family = |experts: &[StageId]| match experts.first().map(StageId::kind) {
        Some(Kind::Expert { family }) => Some(family.to_string()),
        _ => None,
    };
    let mix_of = |v: &str| match plan
        .stages
        .iter()
        .find(|s| s.name == StageId::mix(v, ""))
        .or_else(|| plan.mix_of(v, ""))
        .map(|s| &s.kind)
    {
        Some(StageKind::Mix {
            spec,
            experts,
            domains,
            ..
        }) => Some((spec.clone(), family(experts), domains.clone())),
        _ => None,
    };
    let mut out = BTreeMap::new();
    for s in &plan.stages {
        let StageKind::AddExpert { model, domain, .. } = &s.kind else {
            continue;
        };
        if !s.name.suffix().is_empty() {
            continue;
        }
        let (Kind::Finetune, Some(v)) = (model.kind(), model.what()) else {
            continue;
        };
        let Some((spec, fam, _)) = mix_of(v) else {
            continue;
        };
        let twin = plan.variants.iter().find(|w| {
            *w != v
                && mix_of(w)
                    .is_some_and(|(ws, wf, wd)| ws == spec && wf == fam && wd.contains(domain))
        });
        if let Some(w) = twin {
            let method = StageId::finetune(v, "").method(primary);
            out.insert(
                names::added_method(&method, domain),
                StageId::finetune(w, "").method(primary),
            );
        }
    }
    out
}

/// A training stage as the cost model sees it (see [`btx_eval::cost`]): its measured FLOPs,
/// optimizer steps, the values all-reduced per step (everything outside MoE experts) and sent
/// through all-to-all (4 passes per MoE layer of k copies of every token's hidden state); an
/// expert stage is a branch. `None` for stages that do not train.
fn stage_work(run: &Path, s: &Stage, flops: f64) -> Option<btx_eval::cost::StageWork> {
    let StageKind::Train { spec, .. } = &s.kind else {
        return None;
    };
    let cfg = btx_model::ModelConfig::load(&run.join(&s.dir).join("model/config.json")).ok()?;
    let (mut synced, mut expert) = (0f64, 0f64);
    for p in btx_model::names::param_specs(&cfg) {
        match btx_model::names::param_kind(&p.name) {
            btx_model::names::ParamKind::Ffn {
                expert: Some(_), ..
            } => expert += p.numel() as f64,
            _ => synced += p.numel() as f64,
        }
    }
    let a2a = match &cfg.moe {
        Some(m) if expert > 0.0 => {
            4.0 * (cfg.num_layers * m.top_k * cfg.hidden_size) as f64
                * spec.tokens_per_step() as f64
        }
        _ => 0.0,
    };
    Some(btx_eval::cost::StageWork {
        flops,
        steps: spec.trainer.train.steps as f64,
        synced_params: synced,
        a2a_values: a2a,
        expert_params: expert,
        experts: cfg.moe.as_ref().map_or(0, |m| m.num_experts),
        branch: s.name.expert_domain().is_some(),
    })
}

/// The opt-out evaluations at the main budget, by method, in replica order.
fn opt_outs(plan: &Plan, run: &Path) -> Result<BTreeMap<String, Vec<OptOutEval>>> {
    let mut out: BTreeMap<String, Vec<OptOutEval>> = BTreeMap::new();
    for s in &plan.stages {
        let StageKind::OptOut { method, .. } = &s.kind else {
            continue;
        };
        if !s.name.tags().0.is_empty() {
            continue;
        }
        let p = run.join(&s.dir).join("optout.json");
        let o: OptOutEval = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        out.entry(method.clone()).or_default().push(o);
    }
    Ok(out)
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
    // Results by budget tag ("" = the primary budget), then replica.
    let mut by_budget: BTreeMap<String, Vec<Vec<MethodResult>>> = BTreeMap::new();
    for b in &plan.budgets {
        let tag = crate::plan::budget_tags(b.scale, plan.budget.scale).0;
        by_budget.insert(tag, vec![vec![]; plan.replicas]);
    }
    by_budget
        .entry(String::new())
        .or_insert_with(|| vec![vec![]; plan.replicas]);
    let mut routing = BTreeMap::new();
    let mut routing_replicas: BTreeMap<String, Vec<_>> = BTreeMap::new();
    let mut domains: Vec<String> = vec![];
    for s in &plan.stages {
        let StageKind::Eval { method, .. } = &s.kind else {
            continue;
        };
        let p = run.join(&s.dir).join("eval.json");
        let me: MethodEval = serde_json::from_str(
            &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
        )?;
        if domains.is_empty() {
            domains = me.result.domains.keys().cloned().collect();
        }
        let (btag, rep) = s.name.tags();
        let sfx = s.name.suffix().to_string();
        let c = method_compute(plan, run, method, &sfx, &me);
        if let Some(r) = me.routing.as_ref().filter(|_| btag.is_empty()) {
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
        if method == names::SEED {
            // The seed is shared by every budget and replica.
            for r in by_budget.values_mut().flatten() {
                r.push(result.clone());
            }
        } else {
            by_budget
                .get_mut(&btag)
                .context("a budget tag the plan does not have")?[rep]
                .push(result);
        }
    }
    let replicas = by_budget.remove("").unwrap_or_default();
    // The other budgets, for the loss-vs-FLOPs view.
    let other_inputs: Vec<(f64, ReportInput)> = plan
        .budgets
        .iter()
        .filter_map(|b| {
            let tag = crate::plan::budget_tags(b.scale, plan.budget.scale).0;
            let reps = by_budget.remove(&tag)?;
            Some((
                b.scale,
                ReportInput {
                    domains: domains.clone(),
                    expert_domains: plan.domains.clone(),
                    replicas: reps,
                    ..Default::default()
                },
            ))
        })
        .collect();
    let mut expert_labels: Vec<String> = plan.domains.clone();
    if plan.generalist {
        expert_labels.push("generalist".into());
    }
    // Everything is written beside its target and moved into place only once all of it is
    // complete: a failing run (a full disk, a plot that cannot be written) leaves the previous
    // report as it was.
    // The report owns these names: whatever is there (a link included) is replaced, never
    // written through.
    let plots_out = btx_core::outdir::OutDir::create_owned(&run.join("plots"), &[])?;
    let plots_dir = plots_out.path().to_path_buf();
    let title = if plan.name.is_empty() {
        "BTX report".to_string()
    } else {
        format!("BTX report: {}", plan.name)
    };
    let experts_of = experts_of(plan, replicas.first());
    let added_twin = added_twins(plan);
    let mut input = ReportInput {
        title,
        domains: domains.clone(),
        expert_domains: plan.domains.clone(),
        replicas,
        routing,
        routing_replicas,
        expert_labels: expert_labels.clone(),
        plots: vec![],
        setup: vec![],
        opt_out: opt_outs(plan, run)?,
        experts_of,
        added_twin,
    };
    let others: Vec<(f64, Stats)> = other_inputs
        .iter()
        .map(|(scale, i)| (*scale, Stats::new(i)))
        .collect();
    let curves = {
        let st = Stats::new(&input);
        let mut all: Vec<(f64, &Stats)> = vec![(plan.budget.scale, &st)];
        all.extend(others.iter().map(|(s, x)| (*s, x)));
        let curves = budget_curves(&all);
        input.plots = draw_plots(plan, run, &st, &curves, &plots_dir, &expert_labels)?;
        curves
    };
    if input.plots.is_empty() && !plots::font_available() {
        tracing::warn!("no plots: no TrueType font found (set BTX_FONT)");
    }
    let setup = setup_lines(plan, run, &input.domains);
    input.setup = setup;
    let st = Stats::new(&input);
    let v = verdicts(&st);
    let mut results = results_json(&st, &v);
    results["budgets"] = serde_json::to_value(&curves)?;
    if !st.input.opt_out.is_empty() {
        results["opt_out"] = btx_eval::optout::json(&st.input.opt_out, &st.input.domains);
    }
    let results = serde_json::to_string_pretty(&results)?;
    let md = markdown(&st, &v);
    plots_out.commit()?;
    write_texts(run, &[("results.json", &results), ("report.md", &md)])
}

/// What a method cost: its training stages' tokens, FLOPs and wall time (the branches' in
/// parallel: the slowest of them), and its size and inference cost from its evaluation.
fn method_compute(
    plan: &Plan,
    run: &Path,
    method: &str,
    sfx: &str,
    me: &MethodEval,
) -> MethodCompute {
    let mut c = MethodCompute::default();
    let mut slowest_branch = 0f64;
    for t in training_stages(plan, method, sfx) {
        let x = compute_of(run, t);
        c.train_tokens += x.train_tokens;
        c.train_flops += x.train_flops;
        c.wall_seconds += x.wall_seconds;
        let w = stage_work(run, t, x.train_flops);
        match &w {
            Some(w) if w.branch => slowest_branch = slowest_branch.max(x.wall_seconds),
            _ => c.wall_parallel_seconds += x.wall_seconds,
        }
        c.work.extend(w);
    }
    c.wall_parallel_seconds += slowest_branch;
    c.active_params = me.result.active_params as u64;
    c.total_params = me.result.total_params as u64;
    c.inference_forward_passes = me.result.forward_passes_per_token;
    c.inference_flops_per_token = 2.0 * me.result.active_params as f64;
    c
}

/// For each method whose model mixes experts other than the plain ones (FFN-only, anchored,
/// rescaled), its experts by domain (replica 0).
fn experts_of(
    plan: &Plan,
    replica: Option<&Vec<MethodResult>>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    replica
        .map(|r| {
            r.iter()
                .filter_map(|m| {
                    let own: BTreeMap<String, String> = training_stages(plan, &m.name, "")
                        .into_iter()
                        .filter(|s| {
                            matches!(s.name.kind(), Kind::Expert { family } if family != "expert")
                        })
                        .filter_map(|s| {
                            Some((s.name.expert_domain()?.to_string(), s.name.to_string()))
                        })
                        .collect();
                    (!own.is_empty() && names::expert_domain(&m.name).is_none())
                        .then(|| (m.name.clone(), own))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The report's setup lines: the seed, the budget, the domains, the replicas.
fn setup_lines(plan: &Plan, run: &Path, domains: &[String]) -> Vec<String> {
    let seed_stage = plan.stages.iter().find(|s| s.name == names::SEED);
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
            "{} replicas: everything after the seed repeated with different training seeds; tables show means over them with 95% intervals, the seed-spread section each run, routing tables the first",
            plan.replicas
        ));
    }
    setup
}

/// Writes each `(file, text)` at the top of the run directory, atomically.
fn write_texts(run: &Path, files: &[(&str, &String)]) -> Result<()> {
    for (file, text) in files {
        let p = run.join(file);
        // A directory in the report's place (a file rename cannot replace one) goes first.
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&p).with_context(|| format!("replacing {}", p.display()))?;
        }
        btx_core::atomic::write_file(&p, text.as_bytes())?;
    }
    Ok(())
}

/// One method's average loss at every budget.
#[derive(serde::Serialize)]
struct BudgetCurve {
    method: String,
    points: Vec<BudgetPoint>,
}

#[derive(serde::Serialize)]
struct BudgetPoint {
    scale: f64,
    train_flops: f64,
    loss: f64,
    loss_ci: [f64; 2],
}

/// Average loss (with its interval) against training FLOPs after the seed, per method and
/// budget; the seed and single experts are left out (they are not candidates).
fn budget_curves(all: &[(f64, &Stats)]) -> Vec<BudgetCurve> {
    let Some((_, primary)) = all.first() else {
        return vec![];
    };
    primary
        .methods()
        .filter(|m| !names::is_seed_or_expert(&m.name))
        .map(|m| BudgetCurve {
            method: m.name.clone(),
            points: all
                .iter()
                .filter_map(|(scale, st)| {
                    let x = st.methods().find(|x| x.name == m.name)?;
                    let e = st.avg_loss(&m.name)?;
                    Some(BudgetPoint {
                        scale: *scale,
                        train_flops: x.compute.train_flops,
                        loss: e.value,
                        loss_ci: e.ci,
                    })
                })
                .collect(),
        })
        .filter(|c| !c.points.is_empty())
        .collect()
}

/// What each expert of a MoE method is, for heatmap columns: the domain experts (and the
/// generalist) for a MiX, their chunks when split, blends, and plain copies for upcycling.
fn expert_names(plan: &Plan, method: &str, labels: &[String], n: usize) -> Vec<String> {
    if method.starts_with("upcycle") {
        return (0..n).map(|i| format!("copy {i}")).collect();
    }
    let variant = names::mix_variant(method)
        .or_else(|| names::btx_variant(method, &plan.variants[0]))
        .unwrap_or(&plan.variants[0]);
    let spec = plan.mix_of(variant, "").and_then(|s| match &s.kind {
        StageKind::Mix { spec, .. } => Some(spec),
        _ => None,
    });
    match spec {
        Some(m) if m.blend => (0..n).map(|i| format!("blend {i}")).collect(),
        Some(m) if m.split > 1 => (0..n)
            .map(|i| {
                let model = labels.get(i / m.split).cloned().unwrap_or_default();
                format!("{model}.{}", i % m.split)
            })
            .collect(),
        _ => labels.to_vec(),
    }
}

/// The loss-vs-FLOPs lines: one per method run at every budget (the paper's view: btx, its
/// MiX and the baselines); the variants and oracle evaluations, run at the main budget only,
/// are in the forest plot instead of crowding one column of points here.
fn flops_points(plan: &Plan, curves: &[BudgetCurve]) -> Vec<(String, Vec<(f64, plots::WithCi)>)> {
    let primary_mix = format!("mix:{}", plan.variants[0]);
    curves
        .iter()
        .filter(|c| {
            let m = c.method.as_str();
            !m.starts_with("oracle:")
                && !m.starts_with("btx:")
                && (!m.starts_with("mix:") || m == primary_mix)
        })
        .map(|c| {
            (
                c.method.clone(),
                c.points
                    .iter()
                    .map(|p| (p.train_flops, (p.loss, p.loss_ci)))
                    .collect(),
            )
        })
        .collect()
}

/// Named loss curves: (name, [(x, loss)]).
type Curves = Vec<(String, Vec<(f64, f64)>)>;

/// Training curves of replica 0: the branches (seed, experts) on their own steps; the final
/// stages on the FLOPs their method has spent so far (BTX's finetune starts after its
/// experts' FLOPs).
fn training_curves(plan: &Plan, run: &Path) -> (Curves, Curves) {
    let mut branch = vec![];
    let mut final_stage = vec![];
    for s in &plan.stages {
        if s.name.tags().1 > 0 || !matches!(s.kind, StageKind::Train { .. }) {
            continue;
        }
        let c = curve(run, s);
        if c.is_empty() {
            continue;
        }
        if s.name.is_seed_or_expert() {
            branch.push((s.name.to_string(), c));
            continue;
        }
        let method = s.name.method(&plan.variants[0]);
        let stages = training_stages(plan, &method, "");
        let before: f64 = stages
            .iter()
            .filter(|t| t.name != s.name)
            .map(|t| compute_of(run, t).train_flops)
            .sum();
        let own = compute_of(run, s);
        let last = c.last().map_or(1.0, |p| p.0).max(1.0);
        let per_step = own.train_flops / last;
        final_stage.push((
            method,
            c.into_iter()
                .map(|(step, l)| (before + step * per_step, l))
                .collect(),
        ));
    }
    (branch, final_stage)
}

/// Writes every plot; returns (caption, link) of those written.
fn draw_plots(
    plan: &Plan,
    run: &Path,
    st: &Stats,
    curves: &[BudgetCurve],
    dir: &Path,
    labels: &[String],
) -> Result<Vec<(String, String)>> {
    let input = st.input;
    let mut links = vec![];
    let mut failed: Option<anyhow::Error> = None;
    // A plot that cannot be written fails the report (a full disk must not leave a report
    // that links to a cut-off image); one with nothing to draw, or no font, is left out.
    let mut try_plot =
        |file: &str, caption: &str, r: Result<(), Box<dyn std::error::Error>>| match r {
            Ok(()) if dir.join(file).exists() => {
                links.push((caption.to_string(), format!("plots/{file}")));
            }
            Ok(()) => {}
            Err(e) => {
                if failed.is_none() {
                    failed = Some(anyhow::anyhow!(
                        "writing plot {}: {e}",
                        dir.join(file).display()
                    ));
                }
            }
        };
    let names: Vec<String> = st.methods().map(|m| m.name.clone()).collect();
    let per_domain = |f: &dyn Fn(&str, &str) -> Option<btx_eval::bootstrap::Estimate>,
                      scale: f64| {
        names
            .iter()
            .map(|m| {
                input
                    .domains
                    .iter()
                    .map(|d| f(m, d).map(|e| (scale * e.value, [scale * e.ci[0], scale * e.ci[1]])))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    try_plot(
        "accuracy.png",
        "Task accuracy per domain and method (95% intervals)",
        plots::grouped_bars(
            &names,
            &input.domains,
            &per_domain(&|m, d| st.acc(m, d), 100.0),
            "Exact-match accuracy (%)",
            "accuracy %",
            true,
            &dir.join("accuracy.png"),
        ),
    );
    try_plot(
        "loss.png",
        "Held-out loss per domain and method (95% intervals; the axis is zoomed to the data)",
        plots::grouped_bars(
            &names,
            &input.domains,
            &per_domain(&|m, d| st.loss(m, d), 1.0),
            "Held-out loss (lower is better)",
            "loss (nats/token)",
            false,
            &dir.join("loss.png"),
        ),
    );
    // Average loss against the training FLOPs each method spent after the seed.
    let points = flops_points(plan, curves);
    try_plot(
        "loss_vs_flops.png",
        "Average held-out loss against training FLOPs after the seed (95% intervals)",
        plots::loss_vs_flops(
            &points,
            "Average loss vs training compute",
            &dir.join("loss_vs_flops.png"),
        ),
    );
    let (branch, final_stage) = training_curves(plan, run);
    try_plot(
        "loss_branch_train.png",
        "Training loss: seed pretraining and expert training",
        plots::loss_curves(
            &branch,
            "Seed and experts (each on its own data)",
            "step",
            &dir.join("loss_branch_train.png"),
        ),
    );
    try_plot(
        "loss_finetune.png",
        "Training loss on the finetune mixture against the FLOPs each method has spent after the seed (BTX's curve starts after its experts)",
        plots::loss_curves(
            &final_stage,
            "MoE-finetune and baselines",
            "training FLOPs after the seed",
            &dir.join("loss_finetune.png"),
        ),
    );
    // Routing heatmaps on one colour scale; rows in expert order so the diagonal is each
    // domain's own expert.
    let mut rows: Vec<String> = input.expert_domains.clone();
    rows.extend(
        input
            .domains
            .iter()
            .filter(|d| !input.expert_domains.contains(d))
            .cloned(),
    );
    let scale = input
        .routing
        .values()
        .flat_map(|r| r.domains.values())
        .flat_map(|d| d.topk_share.iter().flatten())
        .fold(0f64, |a, &b| a.max(b));
    for (name, r) in &input.routing {
        let file = format!("routing_{}.png", name.replace(':', "-"));
        try_plot(
            &file,
            &format!("Routing of {name}: share of each domain's tokens per expert and layer (one colour scale for every heatmap)"),
            plots::routing_heatmap(
                r,
                &expert_names(plan, name, labels, r.num_experts),
                &rows,
                scale,
                &format!("{name}: top-{} routing share", r.top_k),
                &dir.join(&file),
            ),
        );
    }
    for (file, caption, r) in summary::summary_plots(plan, st, dir) {
        try_plot(file, caption, r);
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(links),
    }
}
