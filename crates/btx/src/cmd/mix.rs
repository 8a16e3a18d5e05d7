//! `btx mix`, `btx upcycle`, `btx average`: build MoE (or averaged) checkpoints from dense ones.

use std::path::PathBuf;

use anyhow::Result;
use btx_core::outdir::Existing;
use btx_mix::{average, AttnMix, FitTarget, MixSpec, NonFfn, RouterInitKind, RoutingMode};

use btx_pipeline::jobs::mix::{self as job, MixJob};

/// Router and routing options shared by `mix` and `upcycle` (defaults: [`MixSpec`]'s).
#[derive(clap::Args, Clone, Debug)]
pub struct RouteArgs {
    /// Router initialisation: random, zero, domain-mean or fit (ridge regression in closed form;
    /// domain-mean and fit need --domain-data and --domains).
    #[arg(long, value_enum, default_value_t = MixSpec::default().router_init)]
    pub router_init: RouterInitKind,
    /// With --router-init fit: regress each token onto its domain's expert (`domain`) or onto
    /// every mixed model's measured loss advantage on it (`advantage`).
    #[arg(long, value_enum, default_value_t = FitTarget::Domain)]
    pub fit_target: FitTarget,
    /// Std of a random router.
    #[arg(long, default_value_t = MixSpec::default().router_std)]
    pub router_std: f64,
    /// Seed of a random router.
    #[arg(long, default_value_t = 0)]
    pub router_seed: u64,
    /// Logit scale of a domain-mean or fitted router.
    #[arg(long, default_value_t = MixSpec::default().router_scale)]
    pub router_scale: f64,
    /// Experts per token.
    #[arg(long, default_value_t = MixSpec::default().top_k)]
    pub top_k: usize,
    /// Routing (recorded in config.json as btx_routing); sample-top1 anneals at 1e-4 down to
    /// a temperature of 0.5.
    #[arg(long, value_enum, default_value_t = RoutingMode::TopK)]
    pub routing: RoutingMode,
    /// Switch capacity factor (default 1.5); only with --routing switch.
    #[arg(long)]
    pub capacity_factor: Option<f64>,
}

impl RouteArgs {
    /// These flags over `base`.
    fn spec(&self, base: MixSpec) -> Result<MixSpec> {
        // A capacity factor means something to switch routing only: given with another, it
        // would be silently ignored.
        if let Some(cf) = self
            .capacity_factor
            .filter(|_| self.routing != RoutingMode::Switch)
        {
            anyhow::bail!(
                "--capacity-factor {cf} with --routing {}: only switch routing has a capacity\nhint: --routing switch --capacity-factor {cf}, or drop --capacity-factor",
                self.routing
            );
        }
        Ok(MixSpec {
            router_init: self.router_init,
            fit_target: self.fit_target,
            router_std: self.router_std,
            router_scale: self.router_scale,
            top_k: self.top_k,
            routing: self.routing.routing(self.capacity_factor.unwrap_or(1.5)),
            ..base
        })
    }
}

#[derive(clap::Args)]
pub struct MixArgs {
    /// The seed model the experts were branched from.
    #[arg(long)]
    seed: PathBuf,
    /// Expert model directories, in expert order.
    #[arg(long, num_args = 1.., required = true)]
    experts: Vec<PathBuf>,
    /// Add the seed as the last ("generalist") expert and average it with the experts.
    #[arg(long)]
    generalist: bool,
    /// Averaging weights, one per mixed model (experts, then the seed with --generalist).
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Cut each FFN into C experts of d_ff / C.
    #[arg(long, default_value_t = MixSpec::default().split)]
    split: usize,
    /// Expert n built from the n-th chunk of every model's FFN.
    #[arg(long)]
    blend: bool,
    /// Where the weights outside the FFNs come from: `average` (the mean over the mixed
    /// models, the paper's MiX) or `seed` (the seed's own).
    #[arg(long, value_enum, default_value_t = NonFfn::Average)]
    non_ffn: NonFfn,
    /// The experts' attention: `average` (the paper's MiX, a Mixtral), `experts` (each model's
    /// attention becomes an attention expert, BAM) or `experts-shared-kv` (attention experts
    /// with averaged, shared keys and values). Attention experts are written in btx's own
    /// layout (README: "Attention experts"), which transformers does not load.
    #[arg(long, value_enum, default_value_t = AttnMix::Average)]
    attention: AttnMix,
    #[command(flatten)]
    route: RouteArgs,
    /// Prepared data for --router-init domain-mean or fit.
    #[arg(long)]
    domain_data: Option<PathBuf>,
    /// The domain of each expert (same order as --experts): its name in config.json
    /// (`btx_experts`, what --without-expert and prune-experts take) and, for domain-mean and
    /// fit, the data it is measured on. Default: the directories' names.
    #[arg(long, num_args = 1..)]
    domains: Vec<String>,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    save: super::SaveArgs,
}

#[derive(clap::Args)]
pub struct UpcycleArgs {
    #[arg(long)]
    seed: PathBuf,
    #[arg(long)]
    num_experts: usize,
    #[command(flatten)]
    route: RouteArgs,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
pub struct AverageArgs {
    /// Dense models to average (a "model soup").
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',')]
    weights: Option<Vec<f64>>,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
}

pub fn run_mix(a: MixArgs) -> Result<()> {
    let spec = a.route.spec(MixSpec {
        // `btx mix` mixes exactly the models it is given unless asked for the generalist.
        generalist: a.generalist,
        weights: a.weights.clone().unwrap_or_default(),
        split: a.split,
        blend: a.blend,
        non_ffn: a.non_ffn,
        attention: a.attention,
        ..MixSpec::default()
    })?;
    let s = job::mix(&MixJob {
        seed: &a.seed,
        experts: &a.experts,
        spec: &spec,
        domains: (!a.domains.is_empty()).then_some(a.domains.as_slice()),
        domain_data: a.domain_data.as_deref(),
        router_seed: a.route.router_seed,
        existing: Existing::replace_if(a.force),
        out: &a.out,
        dtype: a.save.dtype,
        max_shard_bytes: a.save.max_shard_size,
    })?;
    outln!(
        "mixed {} models into {} with {} experts {:?} (d_ff {}, top-{} {}) in {:.2}s: {}",
        s.models.len(),
        match s.attention {
            // The family's MoE class, as written in config.json.
            AttnMix::Average => btx_model::ModelConfig::load(&a.out.join("config.json"))
                .map(|c| c.to_hf_json()["architectures"][0]
                    .as_str()
                    .unwrap_or("a MoE")
                    .to_string())
                .unwrap_or_else(|_| "a MoE".into()),
            other => format!("a btx MoA model (attention: {})", other.name()),
        },
        s.num_experts,
        s.labels,
        s.expert_intermediate_size,
        s.top_k,
        s.routing,
        s.seconds,
        a.out.display()
    );
    Ok(())
}

pub fn run_upcycle(a: UpcycleArgs) -> Result<()> {
    let spec = a.route.spec(MixSpec {
        generalist: false,
        ..MixSpec::default()
    })?;
    let s = job::upcycle(
        &a.seed,
        a.num_experts,
        &spec,
        a.route.router_seed,
        Existing::replace_if(a.force),
        &a.out,
    )?;
    outln!(
        "upcycled {} into {} experts in {:.2}s: {}",
        a.seed.display(),
        s.num_experts,
        s.seconds,
        a.out.display()
    );
    Ok(())
}

pub fn run_average(a: AverageArgs) -> Result<()> {
    let s = average(
        &a.models,
        a.weights.as_ref(),
        &a.out,
        Existing::replace_if(a.force),
    )?;
    outln!(
        "averaged {} models in {:.2}s: {}",
        s.models.len(),
        s.seconds,
        a.out.display()
    );
    Ok(())
}
