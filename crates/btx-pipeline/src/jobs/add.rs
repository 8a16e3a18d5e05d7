//! Adding an expert to a BTX model (`btx add-expert`; see [`btx_mix::add`]): checked, written
//! once with zero rows in a scratch directory, its new router rows fitted on that model layer
//! by layer (see [`btx_mix::fit::fit_new_expert`]), then written with them.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_core::outdir::{Existing, OutDir, ScratchDir};
use btx_data::DataDir;
use btx_mix::add::{AddOptions, AddPlan, AddSummary};
use btx_mix::fit::fit_new_expert;
use btx_model::burn::prelude::Device;
use btx_model::Model;

use super::mix::{domain_windows, FIT_RIDGE};
use super::{written_model, JobOutcome, StageCtx};
use crate::plan::StageId;

/// `btx add-expert`'s default `--router-margin` (about 98% of a top-2 token's weight).
pub const DEFAULT_MARGIN: f64 = 4.0;
/// `btx add-expert`'s default `--max-distance`: a branch trained a few hundred steps from the
/// seed measured 0.2 from a MiX of its siblings; two independent draws of one distribution
/// are about √2 ≈ 1.4 apart.
pub const DEFAULT_MAX_DISTANCE: f64 = 0.5;

pub struct AddJob<'a> {
    /// The BTX model.
    pub moe: &'a Path,
    /// The dense model whose FFN (and attention) becomes the new expert.
    pub dense: &'a Path,
    /// The new expert's name: its domain in `data`.
    pub name: &'a str,
    /// Prepared data holding the new domain and the MoE's other experts' domains.
    pub data: &'a Path,
    /// Logit margin of the fitted row over (on its domain) and under (elsewhere) the others.
    pub margin: f64,
    /// Largest relative distance of the dense model's shared weights from the MoE's.
    pub max_distance: f64,
    pub existing: Existing,
    pub dtype: Option<btx_model::io::OutDtype>,
    pub max_shard_bytes: usize,
    pub out: &'a Path,
}

pub fn add_expert(j: &AddJob) -> Result<AddSummary> {
    if !(j.margin.is_finite() && j.margin >= 0.0) {
        bail!(
            "--router-margin {}: a finite number >= 0\nhint: the default, 4, gives the new expert about 98% of a top-2 token's weight on its domain",
            j.margin
        );
    }
    let plan = AddPlan::new(j.moe, j.dense, j.name, j.max_distance)?;
    OutDir::precheck(j.out, &[j.moe, j.dense], j.existing)?;
    let data = DataDir::open(j.data)?;
    let (v, maxp) = (plan.cfg.vocab_size, plan.cfg.max_positions());
    let domains = data.domains();
    if !domains.iter().any(|d| d == j.name) {
        bail!(
            "{} has no domain {:?} (it has {domains:?}): the new expert's router rows are fitted on its domain's text\nhint: prepare the new domain's data with the others (btx data prepare), or name the expert after its domain",
            j.data.display(),
            j.name
        );
    }
    let own = domain_windows(&data, j.name, j.dense, v, maxp)?;
    // Every other domain of the data is text the new expert must leave alone: the other
    // experts' and the generalist's (general text has no expert of its own).
    let other_names: Vec<String> = domains.iter().filter(|d| *d != j.name).cloned().collect();
    let mut others = vec![];
    for d in &other_names {
        others.extend(domain_windows(&data, d, j.moe, v, maxp)?);
    }
    if others.is_empty() {
        bail!(
            "{} holds only the domain {:?}: the new expert's rows would have no text to keep away from\nhint: give --data a directory prepared with the other domains too (the MoE's experts' and general text)",
            j.data.display(),
            j.name
        );
    }
    tracing::info!(
        "fitting {}'s router rows on {} windows of {} and {} of {:?}",
        j.name,
        own.len(),
        j.name,
        others.len(),
        other_names
    );
    let scratch = ScratchDir::beside(j.out)?;
    let zero = scratch.path().join("model");
    let f32_opts = AddOptions {
        dtype: Some(btx_model::io::OutDtype::F32),
        ..AddOptions::default()
    };
    plan.write(None, &f32_opts, &zero)
        .context("the model the new rows are fitted on")?;
    let model = Model::load(&zero, &Device::flex()).context("loading the model to fit")?;
    let (rows, fits) = fit_new_expert(model, &own, &others, FIT_RIDGE, j.margin)?;
    for f in &fits {
        tracing::info!(
            "new expert {}: layer {} {} router, {} tokens, {:.1}% on the right side of their bound",
            j.name,
            f.layer,
            f.router,
            f.tokens,
            100.0 * f.agree
        );
    }
    let opts = AddOptions {
        existing: j.existing,
        dtype: j.dtype,
        max_shard_bytes: j.max_shard_bytes,
        router_fit: fits,
    };
    Ok(plan.write(Some(&rows), &opts, j.out)?)
}

/// The add-expert stage: stage `expert`'s dense model added to stage `model`'s MoE as the
/// expert of `domain`, its router rows fitted on stage `data`'s tokens.
pub(super) fn stage(
    ctx: &StageCtx,
    model: &StageId,
    expert: &StageId,
    domain: &str,
    data: &StageId,
) -> Result<JobOutcome> {
    let t0 = std::time::Instant::now();
    let (moe, dense) = (ctx.model_of(model)?, ctx.model_of(expert)?);
    let data = ctx.data_of(data)?;
    let model_out = ctx.model_out();
    let s = add_expert(&AddJob {
        moe: &moe,
        dense: &dense,
        name: domain,
        data: &data,
        margin: DEFAULT_MARGIN,
        max_distance: DEFAULT_MAX_DISTANCE,
        // A stage owns its directory; a retried stage replaces its own earlier output.
        existing: Existing::Replace,
        dtype: None,
        max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
        out: &model_out,
    })?;
    let c = written_model(&model_out, t0.elapsed().as_secs_f64())?;
    JobOutcome::done(c, serde_json::to_value(&s)?)
}
