//! Merging as a streaming map over named tensors: every output tensor is computed from the
//! same-named (or chunked) input tensors, written, and its input pages released, so memory holds
//! a handful of tensors at a time whatever the model size.

use std::path::{Path, PathBuf};

use btx_core::outdir::{Existing, OutDir};
use btx_core::rng::Rng;
use btx_model::io::{write_checkpoint_with, TensorReader, TensorSink};
use btx_model::names::{attn_name, ffn_name, param_kind, param_specs, ParamKind};
use btx_model::ModelConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{MixError, Result};
use crate::spec::{AttnMix, MixOptions, NonFfn, RouterInit};

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
    pub seconds: f64,
}

/// One input model: its directory, validated config and memory-mapped weights.
pub struct Source {
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub reader: TensorReader,
    pub tokenizer_hash: Option<String>,
}

impl Source {
    pub fn open(dir: &Path) -> Result<Self> {
        let cfg = ModelConfig::load(&dir.join("config.json"))?;
        let reader = TensorReader::open(dir)?;
        let tp = dir.join("tokenizer.json");
        let tokenizer_hash = std::fs::read(&tp)
            .ok()
            .map(|b| format!("{:x}", Sha256::digest(&b)));
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            reader,
            tokenizer_hash,
        })
    }

    /// A tensor's f32 little-endian bytes (borrowed from the mapping for F32 files), after
    /// checking its shape.
    fn bytes(&self, name: &str, shape: &[usize]) -> Result<std::borrow::Cow<'_, [u8]>> {
        let found =
            self.reader
                .shape(name)
                .ok_or_else(|| btx_model::ModelError::MissingTensor {
                    path: self.reader.file_of(name),
                    name: name.into(),
                    hint: format!(
                        "{} is not a complete checkpoint for its config.json",
                        self.dir.display()
                    ),
                })?;
        if found != shape {
            return Err(btx_model::ModelError::Shape {
                path: self.reader.file_of(name),
                name: name.into(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            }
            .into());
        }
        Ok(self.reader.f32_bytes(name)?)
    }
}

/// Refuses models that cannot be mixed, naming the model and what differs.
pub fn check_compatible(sources: &[&Source]) -> Result<()> {
    let first = sources[0];
    for s in sources {
        if s.cfg.is_moe() {
            return Err(MixError::Incompatible {
                msg: format!(
                    "{} is already a MoE model; BTX mixes dense (Llama) experts",
                    s.dir.display()
                ),
                hint: "pass the dense expert checkpoints".into(),
            });
        }
    }
    for s in &sources[1..] {
        let (a, b) = (&first.cfg, &s.cfg);
        let fields: [(&str, String, String); 10] = [
            (
                "vocab_size",
                a.vocab_size.to_string(),
                b.vocab_size.to_string(),
            ),
            (
                "hidden_size",
                a.hidden_size.to_string(),
                b.hidden_size.to_string(),
            ),
            (
                "intermediate_size",
                a.intermediate_size.to_string(),
                b.intermediate_size.to_string(),
            ),
            (
                "num_hidden_layers",
                a.num_layers.to_string(),
                b.num_layers.to_string(),
            ),
            (
                "num_attention_heads",
                a.num_heads.to_string(),
                b.num_heads.to_string(),
            ),
            (
                "num_key_value_heads",
                a.num_kv_heads.to_string(),
                b.num_kv_heads.to_string(),
            ),
            ("head_dim", a.head_dim.to_string(), b.head_dim.to_string()),
            (
                "rope_theta",
                a.rope_theta.to_string(),
                b.rope_theta.to_string(),
            ),
            (
                "rms_norm_eps",
                a.rms_norm_eps.to_string(),
                b.rms_norm_eps.to_string(),
            ),
            (
                "tie_word_embeddings",
                a.tie_word_embeddings.to_string(),
                b.tie_word_embeddings.to_string(),
            ),
        ];
        for (k, x, y) in fields {
            if x != y {
                return Err(MixError::Incompatible {
                    msg: format!(
                        "{} has {k} = {y}, but {} has {k} = {x}",
                        s.dir.display(),
                        first.dir.display()
                    ),
                    hint: "all experts must be branched from the same seed (same config.json)"
                        .into(),
                });
            }
        }
        if first.tokenizer_hash.is_some()
            && s.tokenizer_hash.is_some()
            && first.tokenizer_hash != s.tokenizer_hash
        {
            return Err(MixError::Incompatible {
                msg: format!(
                    "{} and {} have different tokenizer.json files",
                    s.dir.display(),
                    first.dir.display()
                ),
                hint: "token ids would mean different things in the merged embeddings".into(),
            });
        }
    }
    Ok(())
}

/// Elements per piece when streaming a mean (bounded memory whatever the tensor size).
const PIECE: usize = 1 << 16;

fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Streams the weighted element-wise mean of one tensor over the sources into `sink`,
/// accumulated in f64 so that the mean of identical tensors is exactly that tensor.
fn mean_into(
    sources: &[Source],
    name: &str,
    shape: &[usize],
    w: &[f64],
    sink: &mut TensorSink<'_>,
) -> Result<()> {
    let bytes = sources
        .iter()
        .map(|s| s.bytes(name, shape))
        .collect::<Result<Vec<_>>>()?;
    let n: usize = shape.iter().product();
    let total: f64 = w.iter().sum();
    let mut acc = vec![0f64; PIECE];
    let mut piece = vec![0f32; PIECE];
    let mut start = 0;
    while start < n {
        let len = PIECE.min(n - start);
        acc[..len].fill(0.0);
        for (b, wi) in bytes.iter().zip(w) {
            for (j, a) in acc[..len].iter_mut().enumerate() {
                *a += f32_at(b, start + j) as f64 * wi;
            }
        }
        for (p, a) in piece[..len].iter_mut().zip(&acc[..len]) {
            *p = (a / total) as f32;
        }
        sink.f32(&piece[..len])?;
        // Drop the pages just consumed (F32 inputs are read straight from the mapping).
        sources
            .iter()
            .for_each(|s| s.reader.release_part(name, 4 * start, 4 * (start + len)));
        start += len;
    }
    drop(bytes);
    sources.iter().for_each(|s| s.reader.release(name));
    Ok(())
}

fn normalise_weights(w: Option<&Vec<f64>>, n: usize) -> Result<Vec<f64>> {
    match w {
        None => Ok(vec![1.0; n]),
        Some(w) if w.len() == n && w.iter().all(|x| *x >= 0.0) && w.iter().sum::<f64>() > 0.0 => {
            Ok(w.clone())
        }
        Some(w) => Err(MixError::Options(format!(
            "weights {w:?}: need {n} non-negative values with a positive sum (one per mixed model)"
        ))),
    }
}

/// BTX MiX: each model's FFN becomes an expert of every layer's MoE (experts in order, the seed
/// last with `generalist`); every other tensor is the (weighted) mean over the mixed models;
/// routers start as `opts.router_init` says. Writes a Mixtral checkpoint to `out`.
pub fn mix(seed: &Path, experts: &[PathBuf], opts: &MixOptions, out: &Path) -> Result<MixSummary> {
    let t0 = std::time::Instant::now();
    if experts.is_empty() {
        return Err(MixError::Options("no experts to mix".into()));
    }
    let inputs: Vec<&Path> = std::iter::once(seed)
        .chain(experts.iter().map(PathBuf::as_path))
        .collect();
    let staged = OutDir::create(out, &inputs, opts.existing)?;
    let seed_src = Source::open(seed)?;
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
    let m = sources.len();
    let spec = &opts.spec;
    let base = sources[0].cfg.clone();
    let f = base.intermediate_size;
    let mut cfg = spec.resolve(&base, m)?;
    let w = spec.weights_for(m);
    let (num_experts, expert_f) = (cfg.num_experts(), cfg.intermediate_size);
    cfg.expert_labels = expert_labels(experts, opts, num_experts)?;
    if let RouterInit::Rows { ffn: r, attn } = &opts.router_init {
        if !attn.is_empty()
            && (attn.len() != cfg.num_layers
                || attn.iter().any(|t| t.shape != [m, cfg.hidden_size]))
        {
            return Err(MixError::Options(format!(
                "attention router rows must be {} tensors of [{m}, {}]",
                cfg.num_layers, cfg.hidden_size
            )));
        }
        if r.len() != cfg.num_layers || r.iter().any(|t| t.shape != [num_experts, cfg.hidden_size])
        {
            return Err(MixError::Options(format!(
                "router rows must be {} tensors of [{num_experts}, {}]",
                cfg.num_layers, cfg.hidden_size
            )));
        }
    }
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let d = cfg.hidden_size;
    let mut rng = match &opts.router_init {
        RouterInit::Random { seed, .. } => Some(Rng::derive(*seed, "router-init")),
        _ => None,
    };
    // Its own stream, so that adding attention experts leaves the FFN routers' draws alone.
    let mut attn_rng = match &opts.router_init {
        RouterInit::Random { seed, .. } => Some(Rng::derive(*seed, "attn-router-init")),
        _ => None,
    };
    let base_specs: std::collections::HashMap<String, Vec<usize>> = param_specs(&base)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let dir = staged.path();
    write_checkpoint_with(dir, &specs, 4 << 30, |i, sink| {
        let (name, _) = &specs[i];
        match param_kind(name) {
            ParamKind::Shared => match &non_ffn_src {
                None => mean_into(&sources, name, &base_specs[name], &w, sink),
                Some(seed) => mean_into(seed, name, &base_specs[name], &[1.0], sink),
            }
            .map_err(into_model_err),
            ParamKind::Router { layer } => match &opts.router_init {
                RouterInit::Zero => sink.f32(&vec![0.0; num_experts * d]),
                RouterInit::Random { std, .. } => {
                    let r = rng.as_mut().expect("rng for random init");
                    let v: Vec<f32> = (0..num_experts * d)
                        .map(|_| (r.normal() * std) as f32)
                        .collect();
                    sink.f32(&v)
                }
                RouterInit::Rows { ffn, .. } => sink.f32(&ffn[layer].data),
            },
            ParamKind::Ffn {
                layer,
                expert: Some(e),
            } => {
                let wi = name
                    .rsplit('.')
                    .nth(1)
                    .and_then(|x| x.strip_prefix('w'))
                    .and_then(|x| x.parse::<usize>().ok())
                    .expect("w1/w2/w3");
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
            ParamKind::AttnRouter { layer } => match &opts.router_init {
                RouterInit::Random { std, .. } => {
                    let r = attn_rng.as_mut().expect("rng for random init");
                    let v: Vec<f32> = (0..m * d).map(|_| (r.normal() * std) as f32).collect();
                    sink.f32(&v)
                }
                RouterInit::Rows { attn, .. } if !attn.is_empty() => sink.f32(&attn[layer].data),
                // No rows for them: a uniform mixture (every attention expert weighted 1/E).
                RouterInit::Zero | RouterInit::Rows { .. } => sink.f32(&vec![0.0; m * d]),
            },
        }
    })?;
    cfg.save(&dir.join("config.json"))?;
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
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&dir.join("mix.json"), &summary)?;
    drop(sources);
    staged.commit()?;
    Ok(summary)
}

/// `btx_experts`: one name per output expert. Split experts carry their model's name (dropping
/// it drops every chunk); blended experts hold every model and are named `blend-N`.
fn expert_labels(
    experts: &[PathBuf],
    opts: &MixOptions,
    num_experts: usize,
) -> Result<Vec<String>> {
    if opts.spec.blend {
        return Ok((0..num_experts).map(|i| format!("blend-{i}")).collect());
    }
    let mut names: Vec<String> = match &opts.labels {
        Some(l) if l.len() == experts.len() => l.clone(),
        Some(l) => {
            return Err(MixError::Options(format!(
                "{} expert names for {} experts",
                l.len(),
                experts.len()
            )))
        }
        None => experts
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned())
            })
            .collect(),
    };
    let unique = names.iter().collect::<std::collections::HashSet<_>>().len() == names.len();
    if opts.labels.is_none() && (!unique || names.iter().any(|n| n.is_empty() || n == "generalist"))
    {
        names = (0..experts.len()).map(|i| format!("expert-{i}")).collect();
    }
    if opts.spec.generalist {
        names.push("generalist".into());
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

fn into_model_err(e: MixError) -> btx_model::ModelError {
    match e {
        MixError::Model(m) => m,
        other => btx_model::ModelError::Invalid {
            msg: other.to_string(),
        },
    }
}

fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    let t = from.join("tokenizer.json");
    if t.exists() {
        std::fs::copy(&t, to.join("tokenizer.json")).map_err(|e| MixError::io(&t, e))?;
    }
    Ok(())
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    std::fs::write(p, serde_json::to_string_pretty(v).expect("json"))
        .map_err(|e| MixError::io(p, e))
}

/// Sparse upcycling: `n` copies of the seed's FFN as experts, the seed's other weights, a
/// random router.
pub fn upcycle(seed: &Path, n: usize, opts: &MixOptions, out: &Path) -> Result<MixSummary> {
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

/// Weight averaging ("model soup"): every tensor, FFNs included, is the weighted mean over the
/// models. The result is a dense model like its inputs.
pub fn average(
    models: &[PathBuf],
    weights: Option<&Vec<f64>>,
    out: &Path,
    existing: Existing,
) -> Result<MixSummary> {
    let t0 = std::time::Instant::now();
    if models.is_empty() {
        return Err(MixError::Options("no models to average".into()));
    }
    let inputs: Vec<&Path> = models.iter().map(PathBuf::as_path).collect();
    let staged = OutDir::create(out, &inputs, existing)?;
    let dir = staged.path();
    let sources = models
        .iter()
        .map(|d| Source::open(d))
        .collect::<Result<Vec<_>>>()?;
    check_compatible(&sources.iter().collect::<Vec<_>>())?;
    let w = normalise_weights(weights, sources.len())?;
    let cfg = sources[0].cfg.clone();
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    write_checkpoint_with(dir, &specs, 4 << 30, |i, sink| {
        let (name, shape) = &specs[i];
        mean_into(&sources, name, shape, &w, sink).map_err(into_model_err)
    })?;
    cfg.save(&dir.join("config.json"))?;
    copy_tokenizer(&sources[0].dir, dir)?;
    let summary = MixSummary {
        models: models.to_vec(),
        weights: w,
        num_experts: 1,
        expert_intermediate_size: cfg.intermediate_size,
        top_k: 1,
        routing: "dense".into(),
        split: 1,
        blend: false,
        generalist: false,
        non_ffn: NonFfn::Average,
        attention: AttnMix::Average,
        labels: vec![],
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&dir.join("mix.json"), &summary)?;
    drop(sources);
    staged.commit()?;
    Ok(summary)
}
