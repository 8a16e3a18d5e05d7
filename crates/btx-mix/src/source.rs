//! The mixed models as sources of named tensors: opened and memory-mapped, checked to be
//! mixable with one another, and averaged tensor by tensor in pieces (so memory holds a handful
//! of tensors whatever the model size); the small file helpers every merge shares.

use std::path::{Path, PathBuf};

use btx_model::io::{TensorReader, TensorSink};
use btx_model::ModelConfig;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{MixError, Result};

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
        let reader = TensorReader::open_for(dir, &cfg)?;
        // What loading the model refuses, a merge refuses too: tensors the config does not
        // explain, and a stored head that a tied config would silently replace.
        btx_model::model::check_tensors(&cfg, &reader)?;
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
    pub(crate) fn bytes(&self, name: &str, shape: &[usize]) -> Result<std::borrow::Cow<'_, [u8]>> {
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

/// Refuses models that cannot be mixed, naming the models and what differs. The output takes
/// the first model's config, so every field that the others could hold differently must agree:
/// the shapes (the tensors are averaged element by element), the math (norm eps, RoPE base, the
/// window, the tied head), what the config promises (positions, special tokens, training-time
/// noise). None may differ legitimately: the inputs are dense models of one seed, so they have
/// no experts (moe, attention experts) and no expert names.
pub fn check_compatible(sources: &[&Source]) -> Result<()> {
    let first = sources[0];
    for s in sources {
        if s.cfg.is_moe() || s.cfg.attn_experts.is_some() {
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
        if let Some((k, x, y)) = config_difference(&first.cfg, &s.cfg) {
            return Err(MixError::Incompatible {
                msg: format!(
                    "{} has {k} = {y}, but {} has {k} = {x}",
                    s.dir.display(),
                    first.dir.display()
                ),
                hint: "all experts must be branched from the same seed (same config.json)".into(),
            });
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

/// The first field (its config.json key and both values) in which two dense configs differ.
pub(crate) fn config_difference(
    a: &ModelConfig,
    b: &ModelConfig,
) -> Option<(&'static str, String, String)> {
    // Destructured without `..`: a new field fails to compile here until it is compared (or
    // listed below as one that cannot differ between dense inputs).
    let ModelConfig {
        family,
        qkv_bias,
        qk_norm,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings,
        tie_word_embeddings,
        bos_token_id,
        eos_token_id,
        pad_token_id,
        sliding_window,
        attention_dropout,
        router_jitter_noise,
        // Dense inputs (checked above): no experts, so nothing to compare.
        moe: _,
        attn_experts: _,
        expert_labels: _,
    } = a;
    // As config.json writes them (null for none; floats in their shortest exact form, so
    // equal text means the same number).
    fn show<T: serde::Serialize>(x: &T) -> String {
        serde_json::to_string(x).unwrap_or_default()
    }
    let fields: [(&str, String, String); 21] = [
        ("model_type (family)", show(family), show(&b.family)),
        ("qkv_bias", show(qkv_bias), show(&b.qkv_bias)),
        ("q/k norms", show(qk_norm), show(&b.qk_norm)),
        ("rope_parameters", show(rope_scaling), show(&b.rope_scaling)),
        ("vocab_size", show(vocab_size), show(&b.vocab_size)),
        ("hidden_size", show(hidden_size), show(&b.hidden_size)),
        (
            "intermediate_size",
            show(intermediate_size),
            show(&b.intermediate_size),
        ),
        ("num_hidden_layers", show(num_layers), show(&b.num_layers)),
        ("num_attention_heads", show(num_heads), show(&b.num_heads)),
        (
            "num_key_value_heads",
            show(num_kv_heads),
            show(&b.num_kv_heads),
        ),
        ("head_dim", show(head_dim), show(&b.head_dim)),
        ("rms_norm_eps", show(rms_norm_eps), show(&b.rms_norm_eps)),
        ("rope_theta", show(rope_theta), show(&b.rope_theta)),
        (
            "max_position_embeddings",
            show(max_position_embeddings),
            show(&b.max_position_embeddings),
        ),
        (
            "tie_word_embeddings",
            show(tie_word_embeddings),
            show(&b.tie_word_embeddings),
        ),
        ("bos_token_id", show(bos_token_id), show(&b.bos_token_id)),
        ("eos_token_id", show(eos_token_id), show(&b.eos_token_id)),
        // The embedding's padding_idx: which row the lookup trains.
        ("pad_token_id", show(pad_token_id), show(&b.pad_token_id)),
        (
            "sliding_window",
            show(sliding_window),
            show(&b.sliding_window),
        ),
        (
            "attention_dropout",
            show(attention_dropout),
            show(&b.attention_dropout),
        ),
        (
            "router_jitter_noise",
            show(router_jitter_noise),
            show(&b.router_jitter_noise),
        ),
    ];
    fields.into_iter().find(|(_, x, y)| x != y)
}

/// Elements per piece when streaming a mean (bounded memory whatever the tensor size).
pub(crate) const PIECE: usize = 1 << 16;

/// Mixtral's matrix number of an expert FFN tensor name (`...experts.E.w1.weight` → 1). The
/// names come from `param_specs` of a MoE config, never from user input: always w1, w2 or w3.
pub(crate) fn ffn_w(name: &str) -> usize {
    name.rsplit('.')
        .nth(1)
        .and_then(|x| x.strip_prefix('w'))
        .and_then(|x| x.parse::<usize>().ok())
        .expect("param_specs names expert FFN matrices w1, w2, w3")
}

pub(crate) fn f32_at(b: &[u8], i: usize) -> f32 {
    f32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
}

/// Streams the weighted element-wise mean of one tensor over the sources into `sink`,
/// accumulated in f64 so that the mean of identical tensors is exactly that tensor.
pub(crate) fn mean_into(
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
        for ((b, wi), src) in bytes.iter().zip(w).zip(sources) {
            for (j, a) in acc[..len].iter_mut().enumerate() {
                let x = f32_at(b, start + j);
                // A NaN or infinite weight in one model would poison the merged tensor.
                if !x.is_finite() {
                    return Err(non_finite(src, name, start + j, x));
                }
                *a += x as f64 * wi;
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

/// The refusal of a source tensor holding `x` (NaN or infinite) at flat index `i`.
pub(crate) fn non_finite(src: &Source, name: &str, i: usize, x: f32) -> MixError {
    MixError::Incompatible {
        msg: format!(
            "{}: tensor {name:?} holds a non-finite value ({x} at flat index {i})",
            src.reader.file_of(name).display()
        ),
        hint: "the checkpoint is corrupt or comes from a diverged run; mix an earlier checkpoint"
            .into(),
    }
}

pub(crate) fn into_model_err(e: MixError) -> btx_model::ModelError {
    match e {
        MixError::Model(m) => m,
        other => btx_model::ModelError::Invalid {
            msg: other.to_string(),
        },
    }
}

pub(crate) fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    let t = from.join("tokenizer.json");
    if t.exists() {
        std::fs::copy(&t, to.join("tokenizer.json")).map_err(|e| MixError::io(&t, e))?;
    }
    // btx_data::TOKENIZER_CONFIG (the chat template), which goes wherever tokenizer.json goes.
    let c = from.join("tokenizer_config.json");
    if c.is_file() {
        std::fs::copy(&c, to.join("tokenizer_config.json")).map_err(|e| MixError::io(&c, e))?;
    }
    Ok(())
}

pub(crate) fn write_json<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    std::fs::write(p, serde_json::to_string_pretty(v).expect("json"))
        .map_err(|e| MixError::io(p, e))
}
