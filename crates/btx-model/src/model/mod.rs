//! The decoder: embeddings, N x (RMSNorm → GQA attention → RMSNorm → dense or MoE SwiGLU),
//! final norm, LM head. Parameters are named exactly as in Hugging Face checkpoints.

use std::path::Path;

use burn::prelude::*;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::io::{write_model_checkpoint, HostTensor, OutDtype, SaveOpts, TensorReader};
use crate::moa::MoA;
use crate::moe::{Mlp, Moe};
use crate::names::{
    attn_bias_name, attn_name, attn_router_name, ffn_name, layer_prefix, param_specs, qk_norm_name,
    router_name, ParamSpec,
};
use btx_core::rng::Rng;

pub mod forward;

// One Ffn per layer: the size difference between variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

/// A layer's attention: Llama's one block, or attention experts (BAM).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Attn {
    Dense {
        q: Tensor<2>,
        k: Tensor<2>,
        v: Tensor<2>,
        o: Tensor<2>,
        /// Qwen2's q, k and v biases, `[1, out]` rows.
        bias: Option<[Tensor<2>; 3]>,
        /// Qwen3's q and k head norms, `[1, head_dim]` rows.
        qk_norm: Option<[Tensor<2>; 2]>,
    },
    Experts(MoA),
}

#[derive(Clone, Debug)]
pub struct Layer {
    /// RMSNorm weights are kept as `[1, d]` rows so they broadcast over `[N, d]`.
    pub input_norm: Tensor<2>,
    pub attn: Attn,
    pub post_norm: Tensor<2>,
    pub ffn: Ffn,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub cfg: ModelConfig,
    pub embed: Tensor<2>,
    pub layers: Vec<Layer>,
    pub norm: Tensor<2>,
    /// `None` when tied to the embeddings.
    pub lm_head: Option<Tensor<2>>,
}

/// Refuses checkpoints whose tensors the config does not explain: a name no parameter has, or
/// (with `tie_word_embeddings`) a stored `lm_head.weight` that differs from the embeddings.
/// Every reader of a checkpoint (loading, mixing, averaging) runs it.
pub fn check_tensors(cfg: &ModelConfig, reader: &TensorReader) -> Result<()> {
    // By counting first: listing the parameters of a config that claims absurdly many layers
    // (1e8) would exhaust the memory before the first missing tensor is named. A near miss
    // (a few layers more than the files hold) goes on to the precise per-tensor errors below.
    let layers_held = reader
        .names()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |l| l + 1);
    if cfg.num_layers > 2 * layers_held + 8 {
        return Err(ModelError::refused(
            format!(
                "config.json describes {} layers, but the weights files hold {layers_held}",
                cfg.num_layers
            ),
            "is config.json the one that belongs to these weights?",
        ));
    }
    // Experts likewise (FFN and attention experts): a config claiming 1e8 of them would list
    // 3e8 names per layer before the first missing one is named.
    let held = |marker: &str| {
        reader
            .names()
            .filter_map(|n| {
                n.split_once(marker)?
                    .1
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |e| e + 1)
    };
    for (what, claimed, marker) in [
        (
            "FFN experts",
            cfg.moe.as_ref().map_or(0, |m| m.num_experts),
            ".block_sparse_moe.experts.",
        ),
        (
            "attention experts",
            cfg.attn_experts.map_or(0, |a| a.num_experts),
            ".self_attn.experts.",
        ),
    ] {
        let in_files = held(marker);
        if claimed > 2 * in_files + 8 {
            return Err(ModelError::refused(
                format!(
                    "config.json describes {claimed} {what} per layer, but the weights files hold {in_files}"
                ),
                "is config.json the one that belongs to these weights?",
            ));
        }
    }
    let specs = param_specs(cfg);
    let known: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in reader.names() {
        // Older checkpoints carry rotary buffers, which are not parameters; a tied head that
        // transformers saved anyway is checked below.
        let harmless = (cfg.tie_word_embeddings && name == "lm_head.weight")
            || name.ends_with("rotary_emb.inv_freq");
        if !known.contains(name) && !harmless {
            return Err(ModelError::UnexpectedTensor {
                path: reader.file_of(name),
                name: name.to_string(),
                arch: if cfg.is_moe() { "Mixtral" } else { "Llama" }.into(),
            });
        }
    }
    if cfg.tie_word_embeddings && reader.contains("lm_head.weight") {
        check_tied_head(cfg, reader)?;
    }
    Ok(())
}

/// Elements per piece when comparing a stored head with the embeddings (bounded memory).
const HEAD_PIECE: usize = 1 << 16;

/// A config that ties the head to the embeddings over a file that also stores `lm_head.weight`:
/// many checkpoints save both, identical, and that is accepted; a different head is refused,
/// because btx would use the embeddings where transformers uses the stored head, and the logits
/// would differ. Streams both tensors in pieces, releasing their pages as it goes.
fn check_tied_head(cfg: &ModelConfig, reader: &TensorReader) -> Result<()> {
    let (head, embed) = ("lm_head.weight", "model.embed_tokens.weight");
    let shape = [cfg.vocab_size, cfg.hidden_size];
    let found = reader.shape(head).unwrap_or_default();
    if found != shape {
        return Err(ModelError::Shape {
            path: reader.file_of(head),
            name: head.into(),
            expected: shape.to_vec(),
            found: found.to_vec(),
        });
    }
    // The embeddings' own shape is checked when they are read; a mismatch here is theirs.
    if reader.shape(embed) != Some(&shape[..]) {
        return Ok(());
    }
    let n = shape[0] * shape[1];
    let mut max_abs = 0f64;
    let mut differ = 0usize;
    let mut start = 0;
    while start < n {
        let end = (start + HEAD_PIECE).min(n);
        let a = reader.read_f32_range(head, start, end)?;
        let b = reader.read_f32_range(embed, start, end)?;
        for (x, y) in a.iter().zip(&b) {
            // Equal bits, or equal values (+0 and -0 give the same logits).
            if x.to_bits() != y.to_bits() && x != y {
                differ += 1;
                let d = (*x as f64 - *y as f64).abs();
                max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d) };
            }
        }
        reader.release_elems(head, start, end);
        reader.release_elems(embed, start, end);
        start = end;
    }
    reader.release(head);
    reader.release(embed);
    if differ > 0 {
        return Err(ModelError::refused(
            format!(
                "{}: config.json ties the output head to the embeddings (tie_word_embeddings = true), but the file also holds an lm_head.weight that differs from model.embed_tokens.weight ({differ} of {n} values, max abs difference {max_abs:e}); transformers would use the stored head, btx the embeddings",
                reader.file_of(head).display()
            ),
            "set tie_word_embeddings to false in config.json to use the stored head, or remove lm_head.weight from the checkpoint to tie",
        ));
    }
    Ok(())
}

fn tensor_from_host(t: &HostTensor, dev: &Device) -> Tensor<2> {
    let shape = match t.shape.as_slice() {
        [n] => [1, *n],
        [a, b] => [*a, *b],
        s => panic!("model parameters are 1-D or 2-D, got {s:?}"),
    };
    Tensor::from_data(TensorData::new(t.data.clone(), shape), dev)
}

impl Model {
    /// Builds a model by asking `get` for every parameter (by HF spec, in checkpoint order).
    pub fn from_fn(
        cfg: &ModelConfig,
        dev: &Device,
        mut get: impl FnMut(&ParamSpec) -> Result<HostTensor>,
    ) -> Result<Self> {
        cfg.validate()?;
        let specs = param_specs(cfg);
        let mut it = specs.iter();
        let mut next = || -> Result<Tensor<2>> {
            let s = it.next().expect("spec order matches the model layout");
            let t = get(s)?;
            if t.shape != s.shape {
                return Err(ModelError::Invalid {
                    msg: format!(
                        "tensor {:?}: expected shape {:?}, got {:?}",
                        s.name, s.shape, t.shape
                    ),
                });
            }
            Ok(tensor_from_host(&t, dev))
        };
        let embed = next()?;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for _ in 0..cfg.num_layers {
            let input_norm = next()?;
            let attn = match &cfg.attn_experts {
                None => {
                    let (q, k, v, o) = (next()?, next()?, next()?, next()?);
                    let bias = if cfg.qkv_bias {
                        Some([next()?, next()?, next()?])
                    } else {
                        None
                    };
                    let qk_norm = if cfg.qk_norm {
                        Some([next()?, next()?])
                    } else {
                        None
                    };
                    Attn::Dense {
                        q,
                        k,
                        v,
                        o,
                        bias,
                        qk_norm,
                    }
                }
                // In param_specs' order: router, shared K/V, then each expert's projections.
                Some(a) => {
                    let router = next()?;
                    let (mut k, mut v) = (vec![], vec![]);
                    if a.shared_kv {
                        k.push(next()?);
                        v.push(next()?);
                    }
                    let (mut q, mut o) = (vec![], vec![]);
                    for _ in 0..a.num_experts {
                        q.push(next()?);
                        if !a.shared_kv {
                            k.push(next()?);
                            v.push(next()?);
                        }
                        o.push(next()?);
                    }
                    Attn::Experts(MoA::new(router, q, k, v, o))
                }
            };
            let post_norm = next()?;
            let mlp = |next: &mut dyn FnMut() -> Result<Tensor<2>>| -> Result<Mlp> {
                let gate = next()?;
                let down = next()?;
                let up = next()?;
                Ok(Mlp { gate, up, down })
            };
            let ffn = match &cfg.moe {
                None => Ffn::Dense(mlp(&mut next)?),
                Some(m) => {
                    let router = next()?;
                    let experts = (0..m.num_experts)
                        .map(|_| mlp(&mut next))
                        .collect::<Result<Vec<_>>>()?;
                    Ffn::Moe(Moe { router, experts })
                }
            };
            layers.push(Layer {
                input_norm,
                attn,
                post_norm,
                ffn,
            });
        }
        let norm = next()?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(next()?)
        };
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
        })
    }

    /// Random init: normal(0, std) for matrices (std 0.02, output projections scaled by
    /// 1/sqrt(2 x layers) as in GPT-2), ones for norms. Deterministic in `seed`.
    pub fn init(cfg: &ModelConfig, seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = Rng::derive(seed, "init");
        let out_std = 0.02 / (2.0 * cfg.num_layers as f64).sqrt();
        Self::from_fn(cfg, dev, |s| {
            let n = s.numel();
            let data = if s.name.ends_with(".bias") {
                vec![0.0; n]
            } else if s.shape.len() == 1 {
                vec![1.0; n]
            } else {
                let std = if s.name.ends_with("o_proj.weight")
                    || s.name.ends_with("down_proj.weight")
                    || s.name.ends_with(".w2.weight")
                {
                    out_std
                } else {
                    0.02
                };
                (0..n).map(|_| (rng.normal() * std) as f32).collect()
            };
            Ok(HostTensor::new(s.shape.clone(), data))
        })
    }

    /// Loads `config.json` + safetensors from a Hugging Face model directory, checking every
    /// tensor's name and shape and refusing tensors the config does not explain.
    pub fn load(dir: &Path, dev: &Device) -> Result<Self> {
        let cfg = ModelConfig::load(&dir.join("config.json"))?;
        let reader = TensorReader::open_for(dir, &cfg)?;
        Self::load_with(&cfg, &reader, dev)
    }

    pub fn load_with(cfg: &ModelConfig, reader: &TensorReader, dev: &Device) -> Result<Self> {
        check_tensors(cfg, reader)?;
        Self::from_fn(cfg, dev, |s| {
            let t = reader.read_expect(&s.name, &s.shape)?;
            // A NaN or infinite weight makes every logit downstream NaN: refuse the file
            // rather than report NaN losses or generate from NaN logits with exit 0.
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(ModelError::refused(
                    format!(
                        "{}: tensor {:?} holds a non-finite value ({} at flat index {i})",
                        reader.file_of(&s.name).display(),
                        s.name,
                        t.data[i]
                    ),
                    "the checkpoint is corrupt or comes from a diverged run; use an earlier checkpoint",
                ));
            }
            Ok(t)
        })
    }

    /// Visits every parameter with its HF name, in checkpoint order.
    pub fn visit(&self, mut f: impl FnMut(&str, &Tensor<2>)) {
        f("model.embed_tokens.weight", &self.embed);
        for (l, layer) in self.layers.iter().enumerate() {
            let p = layer_prefix(l);
            f(&format!("{p}.input_layernorm.weight"), &layer.input_norm);
            match &layer.attn {
                Attn::Dense {
                    q,
                    k,
                    v,
                    o,
                    bias,
                    qk_norm,
                } => {
                    for (proj, t) in [("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o)] {
                        f(&attn_name(l, None, proj), t);
                    }
                    for (proj, t) in ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .zip(bias.iter().flatten())
                    {
                        f(&attn_bias_name(l, proj), t);
                    }
                    for (which, t) in ["q_norm", "k_norm"].iter().zip(qk_norm.iter().flatten()) {
                        f(&qk_norm_name(l, which), t);
                    }
                }
                Attn::Experts(m) => {
                    f(&attn_router_name(l), &m.router);
                    let shared = m.k.len() != m.q.len();
                    if shared {
                        f(&attn_name(l, None, "k_proj"), &m.k[0]);
                        f(&attn_name(l, None, "v_proj"), &m.v[0]);
                    }
                    for e in 0..m.num_experts() {
                        f(&attn_name(l, Some(e), "q_proj"), &m.q[e]);
                        if !shared {
                            f(&attn_name(l, Some(e), "k_proj"), &m.k[e]);
                            f(&attn_name(l, Some(e), "v_proj"), &m.v[e]);
                        }
                        f(&attn_name(l, Some(e), "o_proj"), &m.o[e]);
                    }
                }
            }
            f(
                &format!("{p}.post_attention_layernorm.weight"),
                &layer.post_norm,
            );
            match &layer.ffn {
                Ffn::Dense(m) => visit_mlp(&mut f, l, None, m),
                Ffn::Moe(moe) => {
                    f(&router_name(l), &moe.router);
                    for (e, m) in moe.experts.iter().enumerate() {
                        visit_mlp(&mut f, l, Some(e), m);
                    }
                }
            }
        }
        f("model.norm.weight", &self.norm);
        if let Some(h) = &self.lm_head {
            f("lm_head.weight", h);
        }
    }

    /// This model with the parameter `name` replaced by `t` of the same shape (a fitted
    /// router's rows, set layer by layer).
    pub fn with_param(self, name: &str, t: &HostTensor) -> Result<Self> {
        let dev = self.device();
        let mut had = None;
        let m = self.map(|n, old| {
            if n == name {
                had = Some(old.dims());
                tensor_from_host(t, &dev)
            } else {
                old
            }
        });
        match had {
            None => Err(ModelError::Invalid {
                msg: format!("the model has no parameter {name}"),
            }),
            Some(dims) if dims.as_slice() != t.shape.as_slice() => Err(ModelError::Invalid {
                msg: format!(
                    "{name}: the model holds {dims:?}, the new tensor is {:?}",
                    t.shape
                ),
            }),
            Some(_) => Ok(m),
        }
    }

    /// Replaces every parameter by `f(name, tensor)`, in checkpoint order.
    pub fn map(mut self, mut f: impl FnMut(&str, Tensor<2>) -> Tensor<2>) -> Self {
        let mut g = |name: &str, t: &mut Tensor<2>| {
            let old = std::mem::replace(t, placeholder(t));
            *t = f(name, old);
        };
        g("model.embed_tokens.weight", &mut self.embed);
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let p = layer_prefix(l);
            g(
                &format!("{p}.input_layernorm.weight"),
                &mut layer.input_norm,
            );
            match &mut layer.attn {
                Attn::Dense {
                    q,
                    k,
                    v,
                    o,
                    bias,
                    qk_norm,
                } => {
                    for (proj, t) in [("q_proj", q), ("k_proj", k), ("v_proj", v), ("o_proj", o)] {
                        g(&attn_name(l, None, proj), t);
                    }
                    for (proj, t) in ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .zip(bias.iter_mut().flatten())
                    {
                        g(&attn_bias_name(l, proj), t);
                    }
                    for (which, t) in ["q_norm", "k_norm"]
                        .iter()
                        .zip(qk_norm.iter_mut().flatten())
                    {
                        g(&qk_norm_name(l, which), t);
                    }
                }
                Attn::Experts(m) => {
                    m.reset_stacked();
                    g(&attn_router_name(l), &mut m.router);
                    let shared = m.k.len() != m.q.len();
                    if shared {
                        g(&attn_name(l, None, "k_proj"), &mut m.k[0]);
                        g(&attn_name(l, None, "v_proj"), &mut m.v[0]);
                    }
                    for e in 0..m.q.len() {
                        g(&attn_name(l, Some(e), "q_proj"), &mut m.q[e]);
                        if !shared {
                            g(&attn_name(l, Some(e), "k_proj"), &mut m.k[e]);
                            g(&attn_name(l, Some(e), "v_proj"), &mut m.v[e]);
                        }
                        g(&attn_name(l, Some(e), "o_proj"), &mut m.o[e]);
                    }
                }
            }
            g(
                &format!("{p}.post_attention_layernorm.weight"),
                &mut layer.post_norm,
            );
            match &mut layer.ffn {
                Ffn::Dense(m) => map_mlp(&mut g, l, None, m),
                Ffn::Moe(moe) => {
                    g(&router_name(l), &mut moe.router);
                    for (e, m) in moe.experts.iter_mut().enumerate() {
                        map_mlp(&mut g, l, Some(e), m);
                    }
                }
            }
        }
        g("model.norm.weight", &mut self.norm);
        if let Some(h) = &mut self.lm_head {
            g("lm_head.weight", h);
        }
        self
    }

    /// The model without the experts `drop` (indices from [`ModelConfig::expert_indices`]):
    /// their FFNs, attention experts and router rows are gone, every other weight is unchanged,
    /// so the experts left compute what they computed before and the routers' softmax (and
    /// top-k) renormalises over them.
    pub fn without_experts(&self, drop: &[usize]) -> Result<Self> {
        let cfg = self.cfg.without_experts(drop)?;
        let keep: Vec<usize> = (0..self.cfg.num_experts())
            .filter(|i| !drop.contains(i))
            .collect();
        let rows = |t: &Tensor<2>| {
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
                &t.device(),
            );
            t.clone().select(0, idx)
        };
        let mut m = self.clone();
        m.cfg = cfg;
        for layer in &mut m.layers {
            if let Ffn::Moe(moe) = &mut layer.ffn {
                moe.router = rows(&moe.router);
                moe.experts = keep.iter().map(|&i| moe.experts[i].clone()).collect();
            }
            if let Attn::Experts(moa) = &mut layer.attn {
                *moa = moa.keep(&keep);
            }
        }
        Ok(m)
    }

    /// Moves the parameters to `dev`; on an autodiff device they become gradient leaves.
    pub fn to_device(self, dev: &Device) -> Self {
        self.to_device_with(dev, |_| true)
    }

    /// Like [`Model::to_device`], but on an autodiff device only parameters for which
    /// `trainable(name)` holds require gradients; the rest are constants (frozen).
    pub fn to_device_with(self, dev: &Device, trainable: impl Fn(&str) -> bool) -> Self {
        let ad = dev.is_autodiff();
        let base = dev.clone().inner();
        self.map(|name, t| {
            let t = t.inner().to_device(&base);
            match (ad, trainable(name)) {
                (true, true) => t.autodiff().require_grad(),
                (true, false) => t.autodiff(),
                (false, _) => t,
            }
        })
    }

    /// Parameters as host tensors with HF shapes, in checkpoint order.
    pub fn host_params(&self) -> Vec<(String, HostTensor)> {
        let specs = param_specs(&self.cfg);
        let mut out = Vec::with_capacity(specs.len());
        let mut i = 0;
        self.visit(|name, t| {
            debug_assert_eq!(specs[i].name, name);
            let data = crate::to_vec(t.clone());
            out.push((
                name.to_string(),
                HostTensor::new(specs[i].shape.clone(), data),
            ));
            i += 1;
        });
        out
    }

    /// Writes `config.json` + `model.safetensors` in f32 (sharded above `max_shard_bytes`).
    pub fn save(&self, dir: &Path, max_shard_bytes: usize) -> Result<()> {
        self.save_as(
            dir,
            &SaveOpts {
                dtype: OutDtype::F32,
                max_shard_bytes,
            },
        )
    }

    /// Writes `config.json` + the weights in `save.dtype` (rounded once from f32), sharded
    /// above `save.max_shard_bytes`, under the family's tensor names.
    pub fn save_as(&self, dir: &Path, save: &SaveOpts) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let specs: Vec<(String, Vec<usize>)> = param_specs(&self.cfg)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        let mut tensors = Vec::with_capacity(specs.len());
        self.visit(|_, t| tensors.push(t.clone()));
        write_model_checkpoint(dir, &self.cfg, &specs, save, |i, sink| {
            sink.f32(&crate::to_vec(tensors[i].clone()))
        })?;
        self.cfg.save_as(&dir.join("config.json"), save.dtype)
    }

    pub fn device(&self) -> Device {
        self.embed.device()
    }
}

fn placeholder(t: &Tensor<2>) -> Tensor<2> {
    Tensor::zeros([1, 1], &t.device())
}

fn visit_mlp(f: &mut impl FnMut(&str, &Tensor<2>), l: usize, e: Option<usize>, m: &Mlp) {
    f(&ffn_name(l, e, 1), &m.gate);
    f(&ffn_name(l, e, 2), &m.down);
    f(&ffn_name(l, e, 3), &m.up);
}

fn map_mlp(g: &mut impl FnMut(&str, &mut Tensor<2>), l: usize, e: Option<usize>, m: &mut Mlp) {
    g(&ffn_name(l, e, 1), &mut m.gate);
    g(&ffn_name(l, e, 2), &mut m.down);
    g(&ffn_name(l, e, 3), &mut m.up);
}
