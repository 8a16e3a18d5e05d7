//! MiX and sparse upcycling, with their router starts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::mixture::eval_windows;
use btx_data::DataDir;
use btx_mix::router::{domain_mean_rows, fit_rows, mean_inputs, token_inputs};
use btx_mix::RouterInitKind;
use btx_mix::{MixOptions, MixSpec, MixSummary, RouterInit};
use btx_model::burn::prelude::Device;
use btx_model::Model;

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
    let router_init = match j.spec.simple_router_init(j.router_seed) {
        Some(i) => i,
        None => {
            let data = j.domain_data.context(
                "router_init domain-mean and fit need prepared domain data (--domain-data DIR)",
            )?;
            let domains = j
                .domains
                .context("router_init domain-mean and fit need the experts' domains (--domains)")?;
            match j.spec.router_init {
                RouterInitKind::Fit => fit_init(j.experts, domains, j.spec, data)?,
                _ => domain_mean_init(j.experts, domains, j.spec, data)?,
            }
        }
    };
    let opts = MixOptions {
        spec: j.spec.clone(),
        router_init,
        labels: j.domains.map(<[String]>::to_vec),
        existing: j.existing,
        dtype: j.dtype,
        max_shard_bytes: j.max_shard_bytes,
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
    let router_init = spec.simple_router_init(router_seed).context(
        "upcycling starts from a random or zero router (domain-mean needs experts trained on domains)",
    )?;
    let opts = MixOptions {
        spec: spec.clone(),
        router_init,
        labels: None,
        existing,
        ..MixOptions::default()
    };
    Ok(btx_mix::upcycle(seed, n, &opts, out)?)
}

/// Expert `e`'s model and a sample of its domain `d` (16 training windows of 128 tokens, or
/// as many as the model computes exactly), each token id checked against its vocabulary.
fn domain_sample(e: &Path, d: &str, data: &DataDir) -> Result<(Model, Vec<Vec<i64>>)> {
    let model =
        Model::load(e, &Device::flex()).with_context(|| format!("loading {}", e.display()))?;
    data.check_model(e, model.cfg.vocab_size)?;
    let shard = data.shard(d, "train")?;
    let windows = eval_windows(&shard, 128.min(model.cfg.max_positions()), 16);
    let v = model.cfg.vocab_size;
    if let Some(bad) = windows
        .iter()
        .flatten()
        .find(|&&i| i < 0 || i as usize >= v)
    {
        bail!(
            "{}: holds token id {bad}, outside the vocabulary of {v} of {}\nhint: the shard is corrupt or was made with another tokenizer; prepare the data again (`btx data info` checks a data directory)",
            shard.path.display(),
            e.display()
        );
    }
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

/// Ridge regression above for the rows of a MiX's routers (see [`btx_mix::router::fit_rows`]).
const FIT_RIDGE: f64 = 1e-3;

/// Router rows fitted in closed form from every token of each expert's model on a sample of
/// its own domain (FFN inputs for the MoE routers, attention inputs for attention experts'):
/// a ridge regression to the expert that should take the token. The generalist (the seed,
/// with `spec.generalist`) has no domain: no target, a zero row. Deterministic, no gradient
/// steps.
pub fn fit_init(
    experts: &[PathBuf],
    domains: &[String],
    spec: &MixSpec,
    data: &Path,
) -> Result<RouterInit> {
    let mut d = 0;
    let (ffn, attn) = measure_experts("fit", experts, domains, spec, data, |model, windows| {
        d = model.cfg.hidden_size;
        let t = token_inputs(model, windows)?;
        Ok((t.ffn, t.attn))
    })?;
    Ok(RouterInit::Rows {
        ffn: fit_rows(&ffn, d, FIT_RIDGE, spec.router_scale),
        attn: fit_rows(&attn, d, FIT_RIDGE, spec.router_scale),
    })
}

/// Router rows from each expert's mean FFN input on a sample of its domain, and for attention
/// experts' routers from its mean attention input (see btx_mix::router). The generalist (the
/// seed, with `spec.generalist`) gets no row of its own: it starts at zero.
pub fn domain_mean_init(
    experts: &[PathBuf],
    domains: &[String],
    spec: &MixSpec,
    data: &Path,
) -> Result<RouterInit> {
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
    Ok(RouterInit::Rows {
        ffn: domain_mean_rows(&ffn, spec.router_scale),
        attn: domain_mean_rows(&attn, spec.router_scale),
    })
}
