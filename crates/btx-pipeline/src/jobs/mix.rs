//! MiX and sparse upcycling, with their router starts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_core::outdir::{Existing, OutDir, ScratchDir};
use btx_data::mixture::eval_windows;
use btx_data::DataDir;
use btx_mix::fit::{fit_layerwise, token_losses, FitSample, LayerFit};
use btx_mix::router::{domain_mean_rows, mean_inputs};
use btx_mix::{FitTarget, RouterInitKind};
use btx_mix::{MixOptions, MixSpec, MixSummary, RouterRows};
use btx_model::burn::prelude::Device;
use btx_model::Model;

use super::{written_model, JobOutcome, StageCtx};
use crate::plan::StageId;

/// A MiX to run: the models, the spec, and what a router start or the output needs.
pub struct MixJob<'a> {
    pub seed: &'a Path,
    /// Expert model directories, in expert order.
    pub experts: &'a [PathBuf],
    pub spec: &'a MixSpec,
    /// The experts' domains, in the same order: their names in `config.json` (`btx_experts`)
    /// and, for a `domain-mean` router, the data each is measured on. `None`: the directories'
    /// names, and no domain-mean.
    pub domains: Option<&'a [String]>,
    /// Prepared data for a `domain-mean` router.
    pub domain_data: Option<&'a Path>,
    /// Seed of a random router.
    pub router_seed: u64,
    pub existing: Existing,
    pub out: &'a Path,
    /// The output's dtype (`None`: the seed's) and largest shard.
    pub dtype: Option<btx_model::io::OutDtype>,
    pub max_shard_bytes: usize,
}

/// BTX's MiX (see [`btx_mix::mix`]), its routers started as the spec says.
pub fn mix(j: &MixJob) -> Result<MixSummary> {
    // Names first: a domain-mean router loads every expert before the merge would refuse them.
    if let Some(d) = j.domains {
        if d.len() != j.experts.len() {
            bail!(
                "{} domains for {} experts\nhint: give one --domains name per --experts model, in the same order",
                d.len(),
                j.experts.len()
            );
        }
        btx_mix::check_expert_names(d, j.spec.generalist)?;
    }
    let mut router_fit = vec![];
    // What the merge would refuse of the spec, before minutes of measuring or fitting.
    let models = j.experts.len() + j.spec.generalist as usize;
    let problems = j.spec.problems(models, None);
    if !problems.is_empty() {
        bail!(
            "{}\nhint: `btx mix --help` describes each option",
            problems.join("; ")
        );
    }
    // A measured or fitted start needs its rows first; a random or zero one is the spec's.
    let router_rows = if j.spec.needs_router_rows() {
        let data = j.domain_data.context(
            "router_init domain-mean and fit need prepared domain data (--domain-data DIR)",
        )?;
        let domains = j
            .domains
            .context("router_init domain-mean and fit need the experts' domains (--domains)")?;
        Some(match j.spec.router_init {
            RouterInitKind::Fit => {
                let (rows, fit) = fit_init(j, domains, data)?;
                router_fit = fit;
                rows
            }
            _ => domain_mean_init(j.experts, domains, j.spec, data)?,
        })
    } else {
        None
    };
    let opts = MixOptions {
        spec: j.spec.clone(),
        router_seed: j.router_seed,
        router_rows,
        labels: j.domains.map(<[String]>::to_vec),
        existing: j.existing,
        dtype: j.dtype,
        max_shard_bytes: j.max_shard_bytes,
        router_fit,
    };
    btx_mix::mix(j.seed, j.experts, &opts, j.out).context("mix")
}

/// Sparse upcycling (see [`btx_mix::upcycle`]): `n` copies of the seed's FFN, routed as the
/// spec says, from a random (seeded `router_seed`) or zero router.
pub fn upcycle(
    seed: &Path,
    n: usize,
    spec: &MixSpec,
    router_seed: u64,
    existing: Existing,
    out: &Path,
) -> Result<MixSummary> {
    if spec.needs_router_rows() {
        bail!("upcycling starts from a random or zero router (domain-mean needs experts trained on domains)");
    }
    let opts = MixOptions {
        spec: spec.clone(),
        router_seed,
        labels: None,
        existing,
        ..MixOptions::default()
    };
    Ok(btx_mix::upcycle(seed, n, &opts, out)?)
}

/// A sample of domain `d` (16 training windows of 128 tokens, or as many as a model of
/// `max_positions` computes exactly), each token id checked against the vocabulary of `v`
/// (of the model at `model`).
pub(crate) fn domain_windows(
    data: &DataDir,
    d: &str,
    model: &Path,
    v: usize,
    max_positions: usize,
) -> Result<Vec<Vec<i64>>> {
    data.check_model(model, v)?;
    let shard = data.shard(d, "train")?;
    let seq = 128.min(max_positions);
    let windows = eval_windows(&shard, seq, 16);
    if windows.is_empty() {
        bail!(
            "{}: domain {d:?} holds fewer than {seq} training tokens: nothing to measure a router on\nhint: prepare more of the domain's text (btx data info shows each shard's tokens)",
            shard.path.display()
        );
    }
    if let Some(bad) = windows
        .iter()
        .flatten()
        .find(|&&i| i < 0 || i as usize >= v)
    {
        bail!(
            "{}: holds token id {bad}, outside the vocabulary of {v} of {}\nhint: the shard is corrupt or was made with another tokenizer; prepare the data again (`btx data info` checks a data directory)",
            shard.path.display(),
            model.display()
        );
    }
    Ok(windows)
}

/// Expert `e`'s model and a sample of its domain `d` (see [`domain_windows`]).
fn domain_sample(e: &Path, d: &str, data: &DataDir) -> Result<(Model, Vec<Vec<i64>>)> {
    let model =
        Model::load(e, &Device::flex()).with_context(|| format!("loading {}", e.display()))?;
    let windows = domain_windows(data, d, e, model.cfg.vocab_size, model.cfg.max_positions())?;
    Ok((model, windows))
}

/// What each router row is measured from: per expert model, its (FFN, attention) statistic
/// over a sample of its own domain, in router order (chunks of a split FFN share their
/// model's; the generalist, with `spec.generalist`, has none: `None`).
type Measured<T> = (Vec<Option<T>>, Vec<Option<T>>);

fn measure_experts<T: Clone>(
    what: &str,
    experts: &[PathBuf],
    domains: &[String],
    spec: &MixSpec,
    data: &Path,
    mut measure: impl FnMut(&Model, &[Vec<i64>]) -> Result<(T, T)>,
) -> Result<Measured<T>> {
    if domains.len() != experts.len() {
        bail!(
            "{what} router init needs one domain per expert ({} experts, {} domains)",
            experts.len(),
            domains.len()
        );
    }
    let split = spec.split.max(1);
    let data = DataDir::open(data)?;
    let (mut ffn, mut attn) = (vec![], vec![]);
    for (e, d) in experts.iter().zip(domains) {
        let (model, windows) = domain_sample(e, d, &data)?;
        let (f, a) = measure(&model, &windows)?;
        // Split experts share their model's row (each chunk of the FFN sees the same inputs).
        ffn.extend(std::iter::repeat_n(Some(f), split));
        attn.push(Some(a));
    }
    if spec.generalist {
        ffn.extend(std::iter::repeat_n(None, split));
        attn.push(None);
    }
    Ok((ffn, attn))
}

/// Ridge of a fitted router (see [`btx_mix::fit`]): λ = this × the mean diagonal of XᵀX.
pub(crate) const FIT_RIDGE: f64 = 1e-3;

/// Router rows fitted in closed form on the MiX itself, layer by layer (see
/// [`btx_mix::fit`]), on a sample of each expert's domain: the MiX is built first with zero
/// routers in a scratch directory beside the output (removed after), then each layer's routers
/// are solved on its hidden states. Targets as `spec.fit_target` says: each token's domain
/// expert, or every mixed model's measured loss advantage on it (each model, the seed as
/// generalist included, is run over the whole sample). Deterministic, no gradient steps.
fn fit_init(j: &MixJob, domains: &[String], data: &Path) -> Result<(RouterRows, Vec<LayerFit>)> {
    // What the final merge would refuse of the output comes before minutes of forward passes.
    let inputs: Vec<&Path> = std::iter::once(j.seed)
        .chain(j.experts.iter().map(PathBuf::as_path))
        .collect();
    OutDir::precheck(j.out, &inputs, j.existing)?;
    let data = DataDir::open(data)?;
    let seed_cfg = btx_model::ModelConfig::load(&j.seed.join("config.json"))
        .with_context(|| format!("reading {}", j.seed.display()))?;
    let (mut windows, mut owner) = (vec![], vec![]);
    for (i, (e, d)) in j.experts.iter().zip(domains).enumerate() {
        let w = domain_windows(&data, d, e, seed_cfg.vocab_size, seed_cfg.max_positions())?;
        owner.extend(std::iter::repeat_n(i, w.len()));
        windows.extend(w);
    }
    let mut models: Vec<&Path> = j.experts.iter().map(PathBuf::as_path).collect();
    if j.spec.generalist {
        models.push(j.seed);
    }
    let scratch = ScratchDir::beside(j.out)?;
    let zero = scratch.path().join("mix");
    // The MiX the routers are fitted on starts them at zero (the fit replaces them).
    let opts = MixOptions {
        spec: MixSpec {
            router_init: RouterInitKind::Zero,
            fit_target: FitTarget::Domain,
            ..j.spec.clone()
        },
        labels: Some(domains.to_vec()),
        existing: Existing::Refuse,
        dtype: Some(btx_model::io::OutDtype::F32),
        ..MixOptions::default()
    };
    btx_mix::mix(j.seed, j.experts, &opts, &zero).context("the MiX a router is fitted on")?;
    let sample = match j.spec.fit_target {
        FitTarget::Domain => FitSample::domain(windows, &owner, models.len()),
        FitTarget::Advantage => {
            let mut losses = vec![];
            for m in &models {
                let model = Model::load(m, &Device::flex())
                    .with_context(|| format!("loading {}", m.display()))?;
                tracing::info!("router fit: {} on {} windows", m.display(), windows.len());
                losses.push(windows.iter().map(|w| token_losses(&model, w)).collect());
            }
            FitSample::advantage(windows, &losses)
        }
    };
    let mix = Model::load(&zero, &Device::flex()).context("loading the MiX to fit")?;
    let fitted = fit_layerwise(mix, &sample, j.spec.split, FIT_RIDGE, j.spec.router_scale)?;
    for f in &fitted.layers {
        tracing::info!(
            "router fit ({}): layer {} {} router, {} tokens, {:.1}% agree with their targets",
            j.spec.fit_target,
            f.layer,
            f.router,
            f.tokens,
            100.0 * f.agree
        );
    }
    Ok((
        RouterRows {
            ffn: fitted.ffn,
            attn: fitted.attn,
        },
        fitted.layers,
    ))
}

/// Router rows from each expert's mean FFN input on a sample of its domain, and for attention
/// experts' routers from its mean attention input (see btx_mix::router). The generalist (the
/// seed, with `spec.generalist`) gets no row of its own: it starts at zero.
pub fn domain_mean_init(
    experts: &[PathBuf],
    domains: &[String],
    spec: &MixSpec,
    data: &Path,
) -> Result<RouterRows> {
    let (ffn, attn) = measure_experts(
        "domain-mean",
        experts,
        domains,
        spec,
        data,
        |model, windows| {
            let m = mean_inputs(model, windows)?;
            Ok((m.ffn, m.attn))
        },
    )?;
    Ok(RouterRows {
        ffn: domain_mean_rows(&ffn, spec.router_scale),
        attn: domain_mean_rows(&attn, spec.router_scale),
    })
}

/// The MiX stage: the plan's experts (+ the seed as generalist) into one MoE.
pub(super) fn mix_stage(
    ctx: &StageCtx,
    seed: &StageId,
    experts: &[StageId],
    domains: &[String],
    spec: &MixSpec,
    data: &StageId,
    router_seed: u64,
) -> Result<JobOutcome> {
    let expert_dirs = experts
        .iter()
        .map(|e| ctx.model_of(e))
        .collect::<Result<Vec<_>>>()?;
    let t0 = std::time::Instant::now();
    let model_out = ctx.model_out();
    let s = mix(&MixJob {
        seed: &ctx.model_of(seed)?,
        experts: &expert_dirs,
        spec,
        domains: Some(domains),
        domain_data: Some(&ctx.data_of(data)?),
        router_seed,
        // A stage owns its directory; a retried stage replaces its own earlier output.
        existing: Existing::Replace,
        out: &model_out,
        dtype: None,
        max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
    })?;
    // The whole stage: a measured or fitted router start is part of what the MiX costs.
    let c = written_model(&model_out, t0.elapsed().as_secs_f64())?;
    JobOutcome::done(c, serde_json::to_value(&s)?)
}

/// The upcycling stage (the sparse-upcycling baseline's start).
pub(super) fn upcycle_stage(
    ctx: &StageCtx,
    seed: &StageId,
    num_experts: usize,
    spec: &MixSpec,
    router_seed: u64,
) -> Result<JobOutcome> {
    let model_out = ctx.model_out();
    let s = upcycle(
        &ctx.model_of(seed)?,
        num_experts,
        spec,
        1000 + router_seed,
        Existing::Replace,
        &model_out,
    )?;
    let c = written_model(&model_out, s.seconds)?;
    JobOutcome::done(c, serde_json::to_value(&s)?)
}

/// The weight-average stage (the model-soup baseline).
pub(super) fn average_stage(ctx: &StageCtx, models: &[StageId]) -> Result<JobOutcome> {
    let dirs = models
        .iter()
        .map(|m| ctx.model_of(m))
        .collect::<Result<Vec<_>>>()?;
    let model_out = ctx.model_out();
    let s = btx_mix::average(&dirs, None, &model_out, Existing::Replace)?;
    let c = written_model(&model_out, s.seconds)?;
    JobOutcome::done(c, serde_json::to_value(&s)?)
}
