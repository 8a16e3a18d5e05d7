//! `btx mix`, `btx upcycle`, `btx average`: build MoE (or averaged) checkpoints from dense ones.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::mixture::eval_windows;
use btx_data::DataDir;
use btx_mix::router::{domain_mean_rows, mean_inputs};
use btx_mix::{average, mix, upcycle, MixOptions, RouterInit};
use btx_model::burn::prelude::Device;
use btx_model::{Model, Routing};

/// Router and routing options shared by `mix` and `upcycle`.
#[derive(clap::Args, Clone, Debug)]
pub struct RouteArgs {
    /// Router initialisation: random, zero or domain-mean (needs --domain-data and --domains).
    #[arg(long, default_value = "random")]
    pub router_init: String,
    /// Std of a random router.
    #[arg(long, default_value_t = 0.02)]
    pub router_std: f64,
    /// Seed of a random router.
    #[arg(long, default_value_t = 0)]
    pub router_seed: u64,
    /// Logit scale of a domain-mean router.
    #[arg(long, default_value_t = 4.0)]
    pub router_scale: f64,
    /// Experts per token.
    #[arg(long, default_value_t = 2)]
    pub top_k: usize,
    /// top-k, switch, soft or sample-top1 (recorded in config.json as btx_routing).
    #[arg(long, default_value = "top-k")]
    pub routing: String,
    /// Switch capacity factor.
    #[arg(long, default_value_t = 1.5)]
    pub capacity_factor: f64,
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
    #[arg(long, default_value_t = 1)]
    split: usize,
    /// Expert n built from the n-th chunk of every model's FFN.
    #[arg(long)]
    blend: bool,
    /// Where the weights outside the FFNs come from: `average` (the mean over the mixed
    /// models, the paper's MiX) or `seed` (the seed's own).
    #[arg(long, default_value = "average")]
    non_ffn: String,
    /// The experts' attention: `average` (the paper's MiX, a Mixtral), `experts` (each model's
    /// attention becomes an attention expert, BAM) or `experts-shared-kv` (attention experts
    /// with averaged, shared keys and values). Attention experts are written in btx's own
    /// layout (README: "Attention experts"), which transformers does not load.
    #[arg(long, default_value = "average")]
    attention: String,
    #[command(flatten)]
    route: RouteArgs,
    /// Prepared data for --router-init domain-mean.
    #[arg(long)]
    domain_data: Option<PathBuf>,
    /// The domain of each expert (same order as --experts): its name in config.json
    /// (`btx_experts`, what --without-expert and prune-experts take) and, for domain-mean, the
    /// data it is measured on. Default: the directories' names.
    #[arg(long, num_args = 1..)]
    domains: Vec<String>,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
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

pub fn routing_of(name: &str, capacity_factor: f64) -> Result<Routing> {
    Ok(match name {
        "top-k" | "topk" => Routing::TopK,
        "switch" => Routing::Switch { capacity_factor },
        "soft" => Routing::Soft,
        "sample-top1" => Routing::SampleTop1 {
            anneal_rate: 1e-4,
            min_tau: 0.5,
        },
        other => bail!("unknown routing {other:?} (top-k, switch, soft, sample-top1)"),
    })
}

/// Router rows from each expert's mean FFN input on a sample of its domain, and for attention
/// experts' routers from its mean attention input (see btx_mix::router).
pub fn domain_mean_init(
    experts: &[PathBuf],
    domains: &[String],
    generalist: bool,
    data: &Path,
    scale: f64,
    split: usize,
) -> Result<RouterInit> {
    if domains.len() != experts.len() {
        bail!(
            "domain-mean router init needs one domain per expert ({} experts, {} domains)",
            experts.len(),
            domains.len()
        );
    }
    let data = DataDir::open(data)?;
    let (mut ffn, mut attn) = (vec![], vec![]);
    for (e, d) in experts.iter().zip(domains) {
        let model = Model::load(e, &Device::flex())?;
        let shard = data.shard(d, "train")?;
        let windows = eval_windows(&shard, 128, 16);
        let m = mean_inputs(&model, &windows);
        // Split experts share their model's row (each chunk of the FFN sees the same inputs).
        ffn.extend(std::iter::repeat_n(Some(m.ffn), split));
        attn.push(Some(m.attn));
    }
    if generalist {
        ffn.extend(std::iter::repeat_n(None, split));
        attn.push(None);
    }
    Ok(RouterInit::Rows {
        ffn: domain_mean_rows(&ffn, scale),
        attn: domain_mean_rows(&attn, scale),
    })
}

fn options(r: &RouteArgs, init: RouterInit) -> Result<MixOptions> {
    Ok(MixOptions {
        router_init: init,
        top_k: r.top_k,
        routing: routing_of(&r.routing, r.capacity_factor)?,
        ..Default::default()
    })
}

fn simple_init(r: &RouteArgs) -> Result<Option<RouterInit>> {
    Ok(match r.router_init.as_str() {
        "random" => Some(RouterInit::Random {
            std: r.router_std,
            seed: r.router_seed,
        }),
        "zero" => Some(RouterInit::Zero),
        "domain-mean" => None,
        other => bail!("--router-init {other:?}: random, zero or domain-mean"),
    })
}

pub fn run_mix(a: MixArgs) -> Result<()> {
    let init = match simple_init(&a.route)? {
        Some(i) => i,
        None => {
            let data = a
                .domain_data
                .as_ref()
                .context("--router-init domain-mean needs --domain-data DIR")?;
            domain_mean_init(
                &a.experts,
                &a.domains,
                a.generalist,
                data,
                a.route.router_scale,
                a.split,
            )?
        }
    };
    let opts = MixOptions {
        generalist: a.generalist,
        weights: a.weights.clone(),
        split: a.split,
        blend: a.blend,
        non_ffn: btx_mix::NonFfn::parse(&a.non_ffn)?,
        attention: btx_mix::AttnMix::parse(&a.attention)?,
        labels: (!a.domains.is_empty()).then(|| a.domains.clone()),
        existing: Existing::replace_if(a.force),
        ..options(&a.route, init)?
    };
    let s = mix(&a.seed, &a.experts, &opts, &a.out).context("mix")?;
    outln!(
        "mixed {} models into {} with {} experts {:?} (d_ff {}, top-{} {}) in {:.2}s: {}",
        s.models.len(),
        match s.attention {
            btx_mix::AttnMix::Average => "a Mixtral".to_string(),
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
    let init = simple_init(&a.route)?.context("upcycling supports random or zero router init")?;
    let opts = MixOptions {
        existing: Existing::replace_if(a.force),
        ..options(&a.route, init)?
    };
    let s = upcycle(&a.seed, a.num_experts, &opts, &a.out)?;
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
