//! Merging as a streaming map over named tensors: every output tensor is computed from the
//! same-named (or chunked) input tensors, written, and its input pages released, so memory holds
//! a handful of tensors at a time whatever the model size.

use std::path::{Path, PathBuf};

use btx_core::outdir::OutDir;
use btx_core::rng::Rng;
use btx_model::io::{write_model_checkpoint, TensorSink};
use btx_model::names::{attn_name, ffn_name, param_kind, param_specs, ParamKind};
use serde::{Deserialize, Serialize};

use crate::error::{MixError, Result};
use crate::source::{
    check_compatible, copy_tokenizer, into_model_err, mean_into, write_json, Source,
};
use crate::spec::{AttnMix, MixOptions, NonFfn, RouterInit, RouterRows};

/// What a merge did (written as `mix.json` beside the model).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MixSummary {
    pub models: Vec<PathBuf>,
    pub weights: Vec<f64>,
    pub num_experts: usize,
    pub expert_intermediate_size: usize,
    pub top_k: usize,
    pub routing: String,
    pub split: usize,
    pub blend: bool,
    pub generalist: bool,
    /// `average` or `seed` (see [`NonFfn`]).
    #[serde(default)]
    pub non_ffn: NonFfn,
    /// What became of the attention (see [`AttnMix`]).
    #[serde(default)]
    pub attention: AttnMix,
    /// The experts' names (`btx_experts`).
    #[serde(default)]
    pub labels: Vec<String>,
    /// With a fitted router: each router's fit (tokens, agreement with its targets).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub router_fit: Vec<crate::fit::LayerFit>,
    pub seconds: f64,
}

/// BTX MiX: each model's FFN becomes an expert of every layer's MoE (experts in order, the seed
/// last with `generalist`); every other tensor is the (weighted) mean over the mixed models;
/// routers start as `opts.router_init()` says. Writes a Mixtral checkpoint to `out`.
pub fn mix(seed: &Path, experts: &[PathBuf], opts: &MixOptions, out: &Path) -> Result<MixSummary> {
    let t0 = std::time::Instant::now();
    if experts.is_empty() {
        return Err(MixError::Options("no experts to mix".into()));
    }
    let inputs: Vec<&Path> = std::iter::once(seed)
        .chain(experts.iter().map(PathBuf::as_path))
        .collect();
    btx_core::outdir::check_not_an_input(out, &inputs)?;
    let (sources, non_ffn_src, save) = open_sources(seed, experts, opts)?;
    let m = sources.len();
    let spec = &opts.spec;
    let base = sources[0].cfg.clone();
    let f = base.intermediate_size;
    let mut cfg = spec.resolve(&base, m)?;
    let w = spec.weights_for(m);
    let (num_experts, expert_f) = (cfg.num_experts(), cfg.intermediate_size);
    cfg.expert_labels = expert_labels(experts, opts, num_experts)?;
    let init = opts.router_init()?;
    check_router_rows(&init, &cfg, m)?;
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let d = cfg.hidden_size;
    let mut rng = router_rng(&init, "router-init");
    // Its own stream, so that adding attention experts leaves the FFN routers' draws alone.
    let mut attn_rng = router_rng(&init, "attn-router-init");
    let base_specs: std::collections::HashMap<String, Vec<usize>> = param_specs(&base)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    // Every check above refuses before anything is written.
    let staged = OutDir::create(out, &inputs, opts.existing)?;
    let dir = staged.path();
    write_model_checkpoint(dir, &cfg, &specs, &save, |i, sink| {
        let (name, _) = &specs[i];
        match param_kind(name) {
            ParamKind::Shared => match &non_ffn_src {
                None => mean_into(&sources, name, &base_specs[name], &w, sink),
                Some(seed) => mean_into(seed, name, &base_specs[name], &[1.0], sink),
            }
            .map_err(into_model_err),
            ParamKind::Router { layer } => {
                ffn_router_into(&init, rng.as_mut(), layer, num_experts * d, sink)
            }
            ParamKind::Ffn {
                layer,
                expert: Some(e),
            } => {
                let wi = crate::source::ffn_w(name);
                let plan = ExpertPlan {
                    blend: spec.blend,
                    split: spec.split,
                    f,
                    d,
                };
                expert_into(&sources, layer, e, wi, &plan, sink).map_err(into_model_err)
            }
            ParamKind::Ffn { expert: None, .. } => unreachable!("a Mixtral has no dense FFN"),
            // Expert e's attention is mixed model e's, unchanged.
            ParamKind::AttnExpert {
                layer,
                expert,
                proj,
            } => {
                let src = attn_name(layer, None, proj);
                mean_into(
                    &sources[expert..=expert],
                    &src,
                    &base_specs[&src],
                    &[1.0],
                    sink,
                )
                .map_err(into_model_err)
            }
            ParamKind::AttnRouter { layer } => {
                attn_router_into(&init, attn_rng.as_mut(), layer, m * d, sink)
            }
        }
    })?;
    cfg.save_as(&dir.join("config.json"), save.dtype)?;
    copy_tokenizer(&sources[0].dir, dir)?;
    let summary = MixSummary {
        models: sources.iter().map(|s| s.dir.clone()).collect(),
        weights: w,
        num_experts,
        expert_intermediate_size: expert_f,
        top_k: spec.top_k,
        routing: spec.routing.name().into(),
        split: spec.split,
        blend: spec.blend,
        generalist: spec.generalist,
        non_ffn: spec.non_ffn,
        attention: spec.attention,
        labels: cfg.expert_labels.clone(),
        router_fit: opts.router_fit.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&dir.join("mix.json"), &summary)?;
    drop(sources);
    staged.commit()?;
    Ok(summary)
}

/// The mixed models, checked compatible (the experts in order, then the seed with
/// `generalist`); the seed alone when it is the source of the non-FFN weights; and how the
/// output is saved (in the seed's dtype unless `opts.dtype` says).
fn open_sources(
    seed: &Path,
    experts: &[PathBuf],
    opts: &MixOptions,
) -> Result<(Vec<Source>, Option<Vec<Source>>, btx_model::io::SaveOpts)> {
    let seed_src = Source::open(seed)?;
    let save = btx_model::io::SaveOpts {
        dtype: opts
            .dtype
            .unwrap_or_else(|| seed_src.reader.weights_dtype()),
        max_shard_bytes: opts.max_shard_bytes,
    };
    // The seed once more, alone, when it is the source of the non-FFN weights.
    let non_ffn_src = match opts.spec.non_ffn {
        NonFfn::Average => None,
        NonFfn::Seed => Some(vec![Source::open(seed)?]),
    };
    let mut sources = experts
        .iter()
        .map(|d| Source::open(d))
        .collect::<Result<Vec<_>>>()?;
    let all: Vec<&Source> = std::iter::once(&seed_src).chain(sources.iter()).collect();
    check_compatible(&all)?;
    if opts.spec.generalist {
        sources.push(seed_src);
    }
    Ok((sources, non_ffn_src, save))
}

/// Refuses router rows ([`RouterInit::Rows`]) of the wrong count or shape for `cfg`, whose
/// MoE mixes `m` models.
fn check_router_rows(init: &RouterInit, cfg: &btx_model::ModelConfig, m: usize) -> Result<()> {
    let RouterInit::Rows(RouterRows { ffn: r, attn }) = init else {
        return Ok(());
    };
    let num_experts = cfg.num_experts();
    if !attn.is_empty()
        && (attn.len() != cfg.num_layers || attn.iter().any(|t| t.shape != [m, cfg.hidden_size]))
    {
        return Err(MixError::Options(format!(
            "attention router rows must be {} tensors of [{m}, {}]",
            cfg.num_layers, cfg.hidden_size
        )));
    }
    if r.len() != cfg.num_layers || r.iter().any(|t| t.shape != [num_experts, cfg.hidden_size]) {
        return Err(MixError::Options(format!(
            "router rows must be {} tensors of [{num_experts}, {}]",
            cfg.num_layers, cfg.hidden_size
        )));
    }
    Ok(())
}

/// The random stream `name` of a random router init; None for the other inits.
fn router_rng(init: &RouterInit, name: &str) -> Option<Rng> {
    match init {
        RouterInit::Random { seed, .. } => Some(Rng::derive(*seed, name)),
        _ => None,
    }
}

/// `n` draws of Normal(0, `std`) from a random router's stream (`router_rng` gives one exactly
/// when the init is random).
fn normal_rows(rng: Option<&mut Rng>, std: f64, n: usize) -> Vec<f32> {
    let r = rng.expect("router_rng gives a random init its stream");
    (0..n).map(|_| (r.normal() * std) as f32).collect()
}

/// FFN router `layer`'s `n` weights as `init` starts them (`rng`: its stream, with random init).
fn ffn_router_into(
    init: &RouterInit,
    rng: Option<&mut Rng>,
    layer: usize,
    n: usize,
    sink: &mut TensorSink<'_>,
) -> btx_model::Result<()> {
    match init {
        RouterInit::Zero => sink.f32(&vec![0.0; n]),
        RouterInit::Random { std, .. } => sink.f32(&normal_rows(rng, *std, n)),
        RouterInit::Rows(RouterRows { ffn, .. }) => sink.f32(&ffn[layer].data),
    }
}

/// Attention router `layer`'s `n` weights as `init` starts them (`rng`: its stream, with
/// random init).
fn attn_router_into(
    init: &RouterInit,
    rng: Option<&mut Rng>,
    layer: usize,
    n: usize,
    sink: &mut TensorSink<'_>,
) -> btx_model::Result<()> {
    match init {
        RouterInit::Random { std, .. } => sink.f32(&normal_rows(rng, *std, n)),
        RouterInit::Rows(RouterRows { attn, .. }) if !attn.is_empty() => {
            sink.f32(&attn[layer].data)
        }
        // No rows for them: a uniform mixture (every attention expert weighted 1/E).
        RouterInit::Zero | RouterInit::Rows(_) => sink.f32(&vec![0.0; n]),
    }
}

/// Refuses expert names that `--drop`/`--without-expert` could not tell apart or would read
/// as something else: each must be a name ([`btx_model::expert_name_problem`]: never a number,
/// which reads as a position), used once, and never `generalist` (reserved for the seed's FFN). Every place names enter a MiX (`btx mix --domains`, a recipe's
/// domains) checks them here.
pub fn check_expert_names(names: &[String], generalist: bool) -> Result<()> {
    let bad = |msg: String, hint: &str| {
        Err(MixError::Model(btx_model::ModelError::ExpertName {
            msg,
            hint: hint.into(),
        }))
    };
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if let Some(p) = btx_model::expert_name_problem(n) {
            return bad(
                format!("expert name {n:?}: {p}"),
                "name each expert after its domain, e.g. math, code",
            );
        }
        if !seen.insert(n) {
            return bad(
                format!("expert name {n:?} is given twice ({names:?})"),
                "each expert needs its own name: prune-experts and --without-expert remove experts by name",
            );
        }
        // Reserved with or without the generalist: prune-experts and --without-expert take an
        // expert called `generalist` for the seed's FFN.
        if n == btx_model::GENERALIST {
            return bad(
                format!(
                    "expert name {n:?} is reserved for the generalist (the seed's FFN{})",
                    if generalist {
                        ", which this MiX adds as its last expert"
                    } else {
                        ""
                    }
                ),
                "rename that domain",
            );
        }
    }
    Ok(())
}

/// `btx_experts`: one name per output expert. Split experts carry their model's name (dropping
/// it drops every chunk); blended experts hold every model and are named `blend-N`.
fn expert_labels(
    experts: &[PathBuf],
    opts: &MixOptions,
    num_experts: usize,
) -> Result<Vec<String>> {
    if let Some(l) = &opts.labels {
        if l.len() != experts.len() {
            return Err(MixError::Options(format!(
                "{} expert names for {} experts",
                l.len(),
                experts.len()
            )));
        }
        check_expert_names(l, opts.spec.generalist)?;
    }
    if opts.spec.blend {
        return Ok((0..num_experts).map(|i| format!("blend-{i}")).collect());
    }
    let names: Vec<String> = match &opts.labels {
        Some(l) => l.clone(),
        // The directories' names where they make good names; else plain numbered ones.
        None => {
            let dirs: Vec<String> = experts
                .iter()
                .map(|p| {
                    p.file_name()
                        .map_or(String::new(), |n| n.to_string_lossy().into_owned())
                })
                .collect();
            if check_expert_names(&dirs, true).is_ok() {
                dirs
            } else {
                (0..experts.len()).map(|i| format!("expert-{i}")).collect()
            }
        }
    };
    let mut names = names;
    if opts.spec.generalist {
        names.push(btx_model::GENERALIST.into());
    }
    Ok(names
        .iter()
        .flat_map(|n| std::iter::repeat_n(n.clone(), opts.spec.split))
        .collect())
}

/// How output experts are cut from the input FFNs.
struct ExpertPlan {
    blend: bool,
    split: usize,
    /// Input d_ff and hidden size.
    f: usize,
    d: usize,
}

/// Streams one expert matrix of the output into `sink`, copying byte ranges of the inputs:
/// `wi` is Mixtral's 1 (gate, `[f, d]`), 2 (down, `[d, f]`) or 3 (up, `[f, d]`). A chunk of
/// w1/w3 is a block of rows (contiguous); a chunk of w2 is a block of columns (a slice per row).
fn expert_into(
    sources: &[Source],
    layer: usize,
    e: usize,
    wi: usize,
    p: &ExpertPlan,
    sink: &mut TensorSink<'_>,
) -> Result<()> {
    let (f, d) = (p.f, p.d);
    let shape = if wi == 2 { vec![d, f] } else { vec![f, d] };
    let src_name = ffn_name(layer, None, wi);
    // (model, chunk index, chunks per FFN) for each piece of this expert, in order.
    let pieces: Vec<(usize, usize, usize)> = if p.blend {
        (0..sources.len()).map(|m| (m, e, sources.len())).collect()
    } else {
        vec![(e / p.split, e % p.split, p.split)]
    };
    let bytes = pieces
        .iter()
        .map(|(m, _, _)| sources[*m].bytes(&src_name, &shape))
        .collect::<Result<Vec<_>>>()?;
    for ((m, _, _), b) in pieces.iter().zip(&bytes) {
        if let Some(i) = (0..b.len() / 4).find(|&i| !crate::source::f32_at(b, i).is_finite()) {
            let x = crate::source::f32_at(b, i);
            return Err(crate::source::non_finite(&sources[*m], &src_name, i, x));
        }
    }
    let range = |c: usize, of: usize| (c * f / of, (c + 1) * f / of);
    if wi == 2 {
        for r in 0..d {
            for ((_, c, of), b) in pieces.iter().zip(&bytes) {
                let (a, z) = range(*c, *of);
                sink.f32_le_bytes(&b[4 * (r * f + a)..4 * (r * f + z)])?;
            }
        }
    } else {
        for ((_, c, of), b) in pieces.iter().zip(&bytes) {
            let (a, z) = range(*c, *of);
            sink.f32_le_bytes(&b[4 * a * d..4 * z * d])?;
        }
    }
    drop(bytes);
    // The last expert reading a tensor can drop its pages.
    if p.blend || e % p.split == p.split - 1 {
        sources.iter().for_each(|s| s.reader.release(&src_name));
    }
    Ok(())
}

/// Sparse upcycling: `n` copies of the seed's FFN as experts, the seed's other weights, a
/// random router.
pub fn upcycle(seed: &Path, n: usize, opts: &MixOptions, out: &Path) -> Result<MixSummary> {
    if n == 0 {
        return Err(MixError::Incompatible {
            msg: "upcycling into 0 experts leaves no FFN".into(),
            hint: "--num-experts 2 or more (e.g. the number of domains)".into(),
        });
    }
    // The shape of what n copies make, before the n copies are opened: a model that cannot be
    // loaded on this machine is refused, not written over hours (or grown in memory here).
    let base = Source::open(seed)?.cfg;
    let cfg = opts.spec.resolve(&base, n)?;
    // In f64: the exact count (`total_params`) can overflow usize for an absurd n. Every
    // weight but the FFNs, then each expert's FFN and router row in every layer.
    let (d, layers) = (base.hidden_size as f64, base.num_layers as f64);
    let ffn = |f: usize| 3.0 * d * f as f64;
    let params = base.total_params() as f64 - layers * ffn(base.intermediate_size)
        + n as f64 * layers * (ffn(cfg.intermediate_size) + d);
    if let Some(total) = btx_model::budget::machine_memory() {
        btx_model::budget::check_fits(
            4.0 * params,
            total,
            &format!(
                "the upcycled model of {n} experts ({params:.3e} parameters, in f32 once loaded)"
            ),
            "fewer --num-experts",
        )?;
    }
    let copies = vec![seed.to_path_buf(); n];
    let o = MixOptions {
        spec: crate::MixSpec {
            generalist: false,
            weights: vec![],
            ..opts.spec.clone()
        },
        labels: Some((0..n).map(|i| format!("copy-{i}")).collect()),
        ..opts.clone()
    };
    mix(seed, &copies, &o, out)
}
