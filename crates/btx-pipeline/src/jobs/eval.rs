//! Evaluating a model, or a BTM ensemble of models: `btx eval` and the pipeline's eval stages.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_data::DataDir;
use btx_eval::evaluate::MethodEval;
use btx_eval::routing::analyze;
use btx_eval::{evaluate, Ensemble, EvalSpec, Weighting};
use btx_model::burn::prelude::Device;
use btx_model::Model;
use serde_json::json;

use super::{JobOutcome, StageCtx};
use crate::plan::{StageId, StageKind};
use crate::run::manifest::Compute;

/// Share of tokens below which the routing analysis calls an expert dead.
const DEAD_SHARE: f64 = 0.01;

/// Loads a model for evaluation on `data`, checking that they share a tokenizer.
pub fn load(dir: &Path, data: &DataDir, dev: &Device) -> Result<Model> {
    let model = Model::load(dir, dev).with_context(|| format!("loading {}", dir.display()))?;
    data.check_model(dir, model.cfg.vocab_size)?;
    Ok(model)
}

/// Held-out loss (and task accuracy) of `models` on `domains`: one model alone, or several as
/// an ensemble weighted as `ensemble` says. With `routing`, a MoE model alone also gets its
/// routing analysed.
pub fn eval(
    method: &str,
    models: Vec<Model>,
    ensemble: Option<Weighting>,
    data: &DataDir,
    domains: &[String],
    spec: &EvalSpec,
    routing: bool,
) -> Result<MethodEval> {
    let (result, routing) = match ensemble {
        Some(w) => (
            evaluate(&Ensemble::new(models, w), data, domains, spec)
                .with_context(|| format!("evaluating {method}"))?,
            None,
        ),
        None => {
            if models.len() != 1 {
                bail!("{} models need an ensemble weighting", models.len());
            }
            let m = &models[0];
            let r =
                evaluate(m, data, domains, spec).with_context(|| format!("evaluating {method}"))?;
            let routing = if routing && m.cfg.is_moe() {
                Some(analyze(
                    m,
                    data,
                    domains,
                    spec.seq_len,
                    spec.windows,
                    spec.batch,
                    DEAD_SHARE,
                )?)
            } else {
                None
            };
            (r, routing)
        }
    };
    Ok(MethodEval {
        method: method.into(),
        result,
        routing,
    })
}

/// The opt-out cost of a BTX model: its evaluation whole, then without each expert label in
/// turn (FFN and attention experts alike; a label that holds every expert is skipped).
pub fn opt_out(
    method: &str,
    m: &Model,
    data: &DataDir,
    domains: &[String],
    spec: &EvalSpec,
) -> Result<btx_eval::evaluate::OptOutEval> {
    let full = evaluate(m, data, domains, spec).with_context(|| format!("evaluating {method}"))?;
    let mut labels = m.cfg.expert_labels.clone();
    labels.dedup();
    let mut removed = vec![];
    if m.cfg.num_experts() > 1 {
        for l in &labels {
            let idx = m.cfg.expert_indices(std::slice::from_ref(l))?;
            if idx.len() == m.cfg.num_experts() {
                continue;
            }
            let without = m.without_experts(&idx)?;
            tracing::info!("{method} without {l}");
            removed.push((
                l.clone(),
                evaluate(&without, data, domains, spec)
                    .with_context(|| format!("evaluating {method} without {l}"))?,
            ));
        }
    }
    Ok(btx_eval::evaluate::OptOutEval {
        method: method.into(),
        full,
        removed,
    })
}

/// The experts a token of `domain` reaches under oracle routing: the experts labelled
/// `domain` (all chunks of a split FFN, which the router still weighs among themselves) and
/// nothing else, so the domain's expert gets the token's whole weight; a domain without an
/// expert of its own goes
/// to the generalist alone. Not the generalist as a top-2 second choice: its weight would come
/// from the router under diagnosis (a random MiX router splits it about evenly and halves what
/// the oracle shows). Every other expert is removed, so the router's top-k (renormalised)
/// picks among exactly these.
pub fn oracle_keep(m: &Model, domain: &str) -> Result<Vec<usize>> {
    let labels = &m.cfg.expert_labels;
    if m.cfg.moe.is_none() {
        bail!("routing by domain needs a MoE model\nhint: give a model from btx mix or a finetuned BTX model");
    }
    if labels.is_empty() {
        bail!("routing by domain needs expert names (btx_experts in config.json) to know which expert is a domain's\nhint: models from btx mix carry them; pass --domains to btx mix");
    }
    let generalist: Vec<usize> = (0..labels.len())
        .filter(|&i| labels[i] == btx_model::config::GENERALIST)
        .collect();
    let keep: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == domain).collect();
    if keep.is_empty() {
        // A domain no expert was trained on: its oracle is the generalist (the seed's FFN).
        if !generalist.is_empty() {
            return Ok(generalist);
        }
        let mut known = labels.clone();
        known.dedup();
        bail!(
            "no expert of domain {domain:?} to route its tokens to, and no generalist (the model's experts are {known:?})\nhint: evaluate the domains the model has experts for (--domains)"
        );
    }
    Ok(keep)
}

/// Oracle routing (a diagnostic): each domain evaluated with every token routed to its own
/// expert alone, as if the router knew the document's domain; what the MiX keeps of each
/// expert's gain when routing is not the problem, on the same windows as every other method.
pub fn oracle(
    method: &str,
    m: &Model,
    data: &DataDir,
    domains: &[String],
    spec: &EvalSpec,
) -> Result<MethodEval> {
    let mut out = std::collections::BTreeMap::new();
    for d in domains {
        let keep = oracle_keep(m, d)?;
        let drop: Vec<usize> = (0..m.cfg.num_experts())
            .filter(|i| !keep.contains(i))
            .collect();
        let routed = if drop.is_empty() {
            m.clone()
        } else {
            m.without_experts(&drop)?
        };
        tracing::info!(
            "{method}: {d} routed to {:?}",
            keep.iter()
                .map(|&i| &m.cfg.expert_labels[i])
                .collect::<Vec<_>>()
        );
        let r = evaluate(&routed, data, std::slice::from_ref(d), spec)
            .with_context(|| format!("evaluating {method} on {d} with oracle routing"))?;
        out.extend(r.domains);
    }
    Ok(MethodEval {
        method: method.into(),
        result: btx_eval::evaluate::EvalResult::from_domains(out, m),
        routing: None,
    })
}

/// The eval stage: one method (a model, or an ensemble of models), with the model's router or
/// oracle routing; writes `eval.json`.
pub(super) fn eval_stage(ctx: &StageCtx) -> Result<JobOutcome> {
    let StageKind::Eval {
        method,
        models,
        ensemble,
        data,
        spec,
        routing,
        oracle: by_domain,
    } = &ctx.stage.kind
    else {
        unreachable!("jobs::run hands eval_stage eval stages only")
    };
    let data_dir = DataDir::open(&ctx.data_of(data)?)?;
    let loaded = models
        .iter()
        .map(|m| load(&ctx.model_of(m)?, &data_dir, ctx.dev))
        .collect::<Result<Vec<_>>>()?;
    let me = if *by_domain {
        let mut m = loaded
            .into_iter()
            .next()
            .context("an oracle evaluates one model")?;
        with_plan_labels(ctx, &mut m);
        oracle(method, &m, &data_dir, &data_dir.domains(), spec)?
    } else {
        eval(
            method,
            loaded,
            *ensemble,
            &data_dir,
            &data_dir.domains(),
            spec,
            *routing,
        )?
    };
    btx_core::atomic::write_file(
        &ctx.dir.join("eval.json"),
        serde_json::to_string_pretty(&me)?.as_bytes(),
    )?;
    JobOutcome::done(
        Compute::default(),
        json!({"method": method, "average": me.result.average}),
    )
}

/// The opt-out stage: a BTX model's held-out loss with each expert removed (`optout.json`).
pub(super) fn opt_out_stage(
    ctx: &StageCtx,
    method: &str,
    model: &StageId,
    data: &StageId,
    spec: &EvalSpec,
) -> Result<JobOutcome> {
    let data_dir = DataDir::open(&ctx.data_of(data)?)?;
    let domains = data_dir.domains();
    let d = ctx.model_of(model)?;
    let mut m = Model::load(&d, ctx.dev).with_context(|| format!("loading {}", d.display()))?;
    with_plan_labels(ctx, &mut m);
    let o = opt_out(method, &m, &data_dir, &domains, spec)?;
    btx_core::atomic::write_file(
        &ctx.dir.join("optout.json"),
        serde_json::to_string_pretty(&o)?.as_bytes(),
    )?;
    let cost: serde_json::Map<String, serde_json::Value> = o
        .removed
        .iter()
        .map(|(l, r)| (l.clone(), json!(r.average.loss - o.full.average.loss)))
        .collect();
    JobOutcome::done(
        Compute::default(),
        json!({"method": method, "average_loss_increase": cost}),
    )
}

/// A MiX from before `btx_experts` names no experts: the plan knows their order.
fn with_plan_labels(ctx: &StageCtx, m: &mut Model) {
    if m.cfg.expert_labels.is_empty() {
        m.cfg.expert_labels = ctx.plan.expert_labels(m.cfg.num_experts());
    }
}
