//! GGUF (llama, Mixtral, qwen2, qwen3, qwen3moe) → Hugging Face checkpoint: dequantised f32 weights under HF names (with the Q/K
//! row permutation that llama.cpp's converter applies for its RoPE undone), `config.json`, and a
//! `tokenizer.json` rebuilt from the GGUF vocabulary and merges.
//!
//! The import is exact or refused: btx must compute what llama.cpp computes from the same file.
//! So every `llama.*` key is either implemented, known to be informational, or known to be
//! inert at the value given (anything else is refused by name, unknown keys included); every
//! tensor is mapped or provably inert (all-ones RoPE factors, all-zero biases); the tokenizer
//! splits text with llama.cpp's pre-tokenizer for `tokenizer.ggml.pre` or is refused; and no
//! NaN or infinite weight is written. All of it is checked before the first write.

use std::path::Path;

use btx_core::outdir::{Existing, OutDir};
use btx_model::config::{Family, MoeConfig, RopeScaling};
use btx_model::io::{write_model_checkpoint, OutDtype, SaveOpts};
use btx_model::names::param_specs;
use btx_model::ModelConfig;
use serde_json::{json, Value as Json};

use btx_data::error::{file_err, DataError, Result};
use btx_data::gguf::{GgufFile, Value};
use btx_data::Tok;

/// The GGUF tensor that holds an HF parameter (llama.cpp's names for llama, qwen2 and qwen3).
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let g = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        // Qwen2's projection biases and Qwen3's per-head norms.
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{l}.{g}"))
}

/// Where an HF parameter lives in a GGUF: the tensor, and for one expert of a MoE its index
/// along the stacked `ffn_*_exps` tensor's first dimension (llama.cpp's converter stacks the
/// experts of a layer into one tensor per matrix).
pub(crate) fn gguf_source(hf: &str) -> Option<(String, Option<usize>)> {
    use btx_model::names::{param_kind, ParamKind};
    match param_kind(hf) {
        ParamKind::Router { layer } => Some((format!("blk.{layer}.ffn_gate_inp.weight"), None)),
        ParamKind::Ffn {
            layer,
            expert: Some(e),
        } => {
            let g = match hf.rsplit('.').nth(1)? {
                "w1" => "ffn_gate_exps",
                "w2" => "ffn_down_exps",
                "w3" => "ffn_up_exps",
                _ => return None,
            };
            Some((format!("blk.{layer}.{g}.weight"), Some(e)))
        }
        _ => gguf_name(hf).map(|g| (g, None)),
    }
}

/// The GGUF architectures btx imports, with the family each is: `llama` (dense, or Mixtral
/// with `llama.expert_count`; its converter permutes the Q/K rows for llama.cpp's interleaved
/// RoPE), `qwen2` (q/k/v biases), `qwen3` (per-head q/k norms) and `qwen3moe` (Qwen3-MoE); the
/// Qwen graphs use rotate-half RoPE, so their rows are as in HF.
fn family_of(arch: &str) -> Option<Family> {
    Some(match arch {
        "llama" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" | "qwen3moe" => Family::Qwen3,
        _ => return None,
    })
}

/// Undoes llama.cpp's `permute(w, n_head)`: within each head, GGUF row 2i is HF row i and GGUF
/// row 2i + 1 is HF row hd/2 + i.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for (src, dst) in [(2 * i, i), (2 * i + 1, half + i)] {
                let s = (h * hd + src) * cols;
                let d = (h * hd + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// The inverse of [`unpermute_rows`] (what llama.cpp's converter does), for writing GGUF files.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for (dst, src) in [(2 * i, i), (2 * i + 1, half + i)] {
                let s = (h * hd + src) * cols;
                let d = (h * hd + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// `hint:` for a file btx cannot import exactly because of what the model computes.
const HINT_UNSUPPORTED: &str = "btx imports llama (dense and Mixtral), qwen2, qwen3 and qwen3moe GGUFs exactly or not at all; if the model has a Hugging Face checkpoint, use that as the seed ([seed] path), where btx checks config.json key by key";

/// `hint:` for a file that is not what llama.cpp's converter writes for a Llama.
const HINT_RECONVERT: &str = "the file is not what llama.cpp's convert_hf_to_gguf.py writes for a Llama; convert the model again with a current llama.cpp";

/// `hint:` for a key llama.cpp cannot load the model without.
const HINT_MISSING: &str = "llama.cpp's convert_hf_to_gguf.py writes this key for every model of the architecture, and llama.cpp cannot load the model without it; convert the model again with a current llama.cpp";

fn refuse(g: &GgufFile, msg: impl std::fmt::Display, hint: &str) -> DataError {
    file_err(&g.path, format!("{msg}\nhint: {hint}"))
}

/// Metadata read with its type checked: a key that is present with a value of the wrong kind is
/// refused by name, never taken as absent (which would silently use the default; llama.cpp
/// refuses such a file too).
struct Meta<'a>(&'a GgufFile);

impl<'a> Meta<'a> {
    fn bad(&self, key: &str, v: &Value, want: &str) -> DataError {
        refuse(
            self.0,
            format!("metadata {key} is {}, expected {want}", show(v)),
            HINT_RECONVERT,
        )
    }

    /// An integer that llama.cpp reads as a u32.
    fn uint(&self, key: &str) -> Result<Option<usize>> {
        match self.0.meta.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) if x <= u32::MAX as u64 => Ok(Some(x as usize)),
                _ => Err(self.bad(key, v, "an integer from 0 to 2^32 - 1")),
            },
        }
    }

    fn need_uint(&self, key: &str) -> Result<usize> {
        self.uint(key)?.ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> DataError {
        refuse(
            self.0,
            format!("metadata {key} is missing, and btx will not guess it"),
            HINT_MISSING,
        )
    }

    /// A per-layer count (llama.cpp's `get_key_or_arr`): one integer, or an array with one per
    /// layer, which btx accepts only when every layer has the same value.
    fn per_layer(&self, key: &str, layers: usize) -> Result<Option<usize>> {
        let Some(Value::Array(a)) = self.0.meta.get(key) else {
            return self.uint(key);
        };
        let vals: Vec<Option<u64>> = a.iter().map(Value::as_u64).collect();
        if a.len() != layers || vals.iter().any(|v| v.is_none_or(|x| x > u32::MAX as u64)) {
            return Err(refuse(
                self.0,
                format!(
                    "metadata {key} is an array of {} values, expected {layers} integers (one per layer)",
                    a.len()
                ),
                HINT_RECONVERT,
            ));
        }
        if vals.windows(2).any(|w| w[0] != w[1]) {
            return Err(refuse(
                self.0,
                format!(
                    "metadata {key} differs between layers ({:?}); btx models have the same shape in every layer",
                    vals.iter().map(|v| v.unwrap()).collect::<Vec<_>>()
                ),
                HINT_UNSUPPORTED,
            ));
        }
        Ok(vals.first().map(|v| v.unwrap() as usize))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.0.meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.bad(key, v, "a number")),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.0.meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(key, v, "a string")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.0.meta.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, v, "true or false")),
        }
    }
}

/// A metadata value for a message: its type and value, cut short (an array of 128k tokens is
/// no help in an error).
fn show(v: &Value) -> String {
    let s = match v {
        Value::Array(a) => format!("an array of {} values ({:?}...)", a.len(), a.first()),
        v => format!("{v:?}"),
    };
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// `llama.*` keys that [`config_from_gguf`] reads and implements (or checks against the shape).
const LLAMA_KEYS_READ: &[&str] = &[
    "context_length",
    "embedding_length",
    "block_count",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.layer_norm_rms_epsilon",
    "attention.key_length",
    "attention.value_length",
    "rope.freq_base",
    "rope.dimension_count",
    "rope.scaling.type",
    "rope.scaling.factor",
    "rope.scale_linear",
    "expert_count",
    "expert_used_count",
    "expert_feed_forward_length",
];

/// `llama.*` keys that do not enter what llama.cpp computes for a llama model btx accepts:
/// `vocab_size` only names the model size; `rope.scaling.finetuned` is recorded and never used;
/// `rope.scaling.original_context_length` only enters YaRN's frequency ramp (ext_factor is 0
/// unless the scaling type is yarn, which is refused); `tensor_data_layout` labels how an old
/// converter laid out Q/K, which llama.cpp's llama graph never reads.
const LLAMA_KEYS_INFORMATIONAL: &[&str] = &[
    "vocab_size",
    "rope.scaling.finetuned",
    "rope.scaling.original_context_length",
    "tensor_data_layout",
];

#[derive(Clone, Copy)]
enum Neutral {
    Num(f64),
    Bool(bool),
}

/// `llama.*` keys (from llama.cpp's llama-arch key list) that change the computation unless they
/// hold the value listed, at which the model computes exactly what btx does. Any other value is
/// refused; so is any `llama.*` key in none of these lists, since btx cannot know what it does.
const LLAMA_KEYS_NEUTRAL: &[(&str, Neutral, &str)] = &[
    ("expert_shared_count", Neutral::Num(0.0), "shared experts, which btx's MoE does not have"),
    ("expert_group_count", Neutral::Num(0.0), "grouped expert routing, which btx does not implement"),
    ("expert_group_used_count", Neutral::Num(0.0), "grouped expert routing, which btx does not implement"),
    ("attention.sliding_window", Neutral::Num(0.0), "sliding-window attention: llama.cpp attends to every earlier position of a llama model while the model was made to mask keys past the window, and btx will not pick one of the two"),
    ("rope.scaling.attn_factor", Neutral::Num(1.0), "a factor on RoPE's cos/sin (llama.cpp multiplies its attention factor by it), which btx does not implement"),
    ("attention.clamp_kqv", Neutral::Num(0.0), "clamping of Q, K and V, which btx does not implement"),
    ("attention.max_alibi_bias", Neutral::Num(0.0), "ALiBi position biases, which btx does not implement"),
    ("attention.scale", Neutral::Num(0.0), "an attention scale other than 1/sqrt(head_dim), which btx does not implement"),
    ("attention.causal", Neutral::Bool(true), "non-causal attention, which btx does not implement"),
    ("logit_scale", Neutral::Num(1.0), "a scale on the logits, which btx does not implement"),
    ("embedding_scale", Neutral::Num(1.0), "a scale on the token embeddings, which btx does not implement"),
    ("residual_scale", Neutral::Num(1.0), "a scale on the residual branches, which btx does not implement"),
    ("attn_logit_softcapping", Neutral::Num(0.0), "soft-capping of the attention scores, which btx does not implement"),
    ("final_logit_softcapping", Neutral::Num(0.0), "soft-capping of the logits, which btx does not implement"),
    ("use_parallel_residual", Neutral::Bool(false), "parallel attention and FFN residuals, which btx does not implement"),
];

/// Refuses every file-level and `llama.*` key that would make llama.cpp compute something other
/// than the Llama (or Mixtral) btx builds. Keys of other namespaces (`general.*` aside from those below,
/// `quantize.*`, another architecture's) are not read by llama.cpp for a llama model.
fn check_keys(g: &GgufFile, arch: &str) -> Result<()> {
    let m = Meta(g);
    if let Some(t) = m.string("general.type")? {
        if t != "model" {
            return Err(refuse(
                g,
                format!("general.type is {t:?}: not a model (an adapter needs its base model, and btx does not apply one)"),
                "give the GGUF of the whole model",
            ));
        }
    }
    if let Some(n) = m.uint("split.count")? {
        if n > 1 {
            return Err(refuse(
                g,
                format!("split.count is {n}: this file holds one part of a model split over {n} files"),
                "merge the parts into one file with llama.cpp's `llama-gguf-split --merge` and import that",
            ));
        }
    }
    for (key, v) in &g.meta {
        let Some(rest) = key.strip_prefix(arch).and_then(|k| k.strip_prefix('.')) else {
            continue;
        };
        if LLAMA_KEYS_READ.contains(&rest) || LLAMA_KEYS_INFORMATIONAL.contains(&rest) {
            continue;
        }
        let Some((_, neutral, what)) = LLAMA_KEYS_NEUTRAL.iter().find(|(k, ..)| *k == rest) else {
            return Err(refuse(
                g,
                format!("metadata {key} is not supported: btx does not know what it changes in the model's computation, so it cannot import the model exactly"),
                HINT_UNSUPPORTED,
            ));
        };
        let ok = match (neutral, v) {
            (Neutral::Num(x), v) => v.as_f64() == Some(*x),
            (Neutral::Bool(b), Value::Bool(y)) => b == y,
            _ => false,
        };
        if !ok {
            return Err(refuse(
                g,
                format!("metadata {key} = {} means {what}", show(v)),
                HINT_UNSUPPORTED,
            ));
        }
    }
    Ok(())
}

/// The model shape from GGUF metadata (architecture `llama`), after refusing every key that
/// would make llama.cpp compute another model than this shape under btx's Llama.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let m = Meta(g);
    let arch = m
        .string("general.architecture")?
        .ok_or_else(|| m.missing("general.architecture"))?;
    let Some(family) = family_of(arch) else {
        return Err(refuse(
            g,
            format!("general.architecture is {arch:?}; btx imports llama, qwen2 and qwen3 GGUFs"),
            "btx builds Llama-, Qwen2- and Qwen3-shaped models; a model of another architecture cannot be imported",
        ));
    };
    check_keys(g, arch)?;
    // Every key of the architecture's namespace: "llama.block_count", "qwen3.block_count", ...
    let k = |key: &str| format!("{arch}.{key}");
    let s = shape_from_gguf(g, arch)?;
    let rope_scaling = rope_scaling_from_gguf(g, arch)?;
    let (eps, theta) = eps_and_theta(g, arch)?;
    let ctx = m.need_uint(&k("context_length"))?;
    let vocab = vocab_from_gguf(g, arch, s.hidden)?;
    let mut c = ModelConfig::llama(vocab, s.hidden, s.ff, s.layers, s.heads, s.kv_heads, ctx);
    c.head_dim = s.head_dim;
    c.family = family;
    c.qkv_bias = family == Family::Qwen2;
    c.qk_norm = family == Family::Qwen3;
    c.rope_scaling = rope_scaling;
    c.moe = moe_from_gguf(g, arch, s.layers)?;
    if c.moe.is_some() && arch == "qwen3moe" {
        c.intermediate_size = m.need_uint(&k("expert_feed_forward_length"))?;
    }
    // What btx's export records of the experts' domains (llama.cpp ignores the key).
    if let (Some(moe), Some(Value::Array(a))) = (&c.moe, g.meta.get("btx.expert_labels")) {
        let labels: Vec<String> = a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if labels.len() == moe.num_experts
            && labels
                .iter()
                .all(|l| btx_model::expert_name_problem(l).is_none())
        {
            c.expert_labels = labels;
        }
    }
    read_rope_freqs(g, arch, &mut c, theta, ctx)?;
    // GGUF stores f32 metadata; round through f32 text so 1e-5 stays 1e-5, not 9.99999974e-6.
    c.rms_norm_eps = format!("{}", eps as f32).parse().unwrap_or(eps);
    c.rope_theta = theta;
    c.tie_word_embeddings = g.tensor("output.weight").is_none();
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        if let Some(id) = m.uint(key)?.filter(|&id| id >= vocab) {
            return Err(refuse(
                g,
                format!("metadata {key} is {id}, outside the vocabulary of {vocab} tokens"),
                HINT_RECONVERT,
            ));
        }
    }
    c.bos_token_id = m.uint("tokenizer.ggml.bos_token_id")?.map(|x| x as u32);
    c.eos_token_id = m.uint("tokenizer.ggml.eos_token_id")?.map(|x| x as u32);
    c.validate()
        .map_err(|e| refuse(g, e.to_string().replace("\nhint: ", "; "), HINT_RECONVERT))?;
    Ok(c)
}

/// The sizes of a model's layers, from GGUF metadata.
struct Shape {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ff: usize,
    head_dim: usize,
}

/// The layer sizes from `{arch}.*` metadata, with llama.cpp's defaults where a key is absent.
fn shape_from_gguf(g: &GgufFile, arch: &str) -> Result<Shape> {
    let m = Meta(g);
    let k = |key: &str| format!("{arch}.{key}");
    let layers = m.need_uint(&k("block_count"))?;
    // A llama layer is 9 tensors of the file: a count past what it holds can only be wrong, and
    // believed it would have btx list (and allocate for) billions of layers before any check.
    if layers == 0 || layers.saturating_mul(9) > g.tensors.len() {
        return Err(refuse(
            g,
            format!(
                "metadata {arch}.block_count is {layers}, but the file holds {} tensors (a layer has at least 9)",
                g.tensors.len()
            ),
            HINT_RECONVERT,
        ));
    }
    let hidden = m.need_uint(&k("embedding_length"))?;
    let heads = m
        .per_layer(&k("attention.head_count"), layers)?
        .ok_or_else(|| m.missing(&k("attention.head_count")))?;
    if heads == 0 {
        return Err(refuse(
            g,
            format!("metadata {arch}.attention.head_count is 0"),
            HINT_RECONVERT,
        ));
    }
    // llama.cpp's defaults where a key is absent: as many KV heads as heads, heads of
    // embedding_length / head_count values, RoPE over the whole key head, theta 10000.
    let kv_heads = m
        .per_layer(&k("attention.head_count_kv"), layers)?
        .unwrap_or(heads);
    let ff = m
        .per_layer(&k("feed_forward_length"), layers)?
        .ok_or_else(|| m.missing(&k("feed_forward_length")))?;
    let key_len = m
        .uint(&k("attention.key_length"))?
        .unwrap_or(hidden / heads);
    // llama.cpp's value default is embedding_length / head_count, not key_length, and its
    // llama graph asserts the two are equal.
    let value_len = m
        .uint(&k("attention.value_length"))?
        .unwrap_or(hidden / heads);
    if value_len != key_len {
        return Err(refuse(
            g,
            format!("value heads of {value_len} (llama.attention.value_length, default embedding_length / head_count) differ from key heads of {key_len} (llama.attention.key_length); btx's heads have one size"),
            HINT_UNSUPPORTED,
        ));
    }
    let rot = m.uint(&k("rope.dimension_count"))?.unwrap_or(key_len);
    if rot != key_len {
        return Err(refuse(
            g,
            format!("{arch}.rope.dimension_count is {rot}, but heads have {key_len} values: partial RoPE, which btx does not implement (and llama.cpp refuses for llama models)"),
            HINT_UNSUPPORTED,
        ));
    }
    Ok(Shape {
        layers,
        hidden,
        heads,
        kv_heads,
        ff,
        head_dim: key_len,
    })
}

/// RoPE's scaling from `{arch}.rope.scaling.*` (Llama 3's comes as a tensor instead, see
/// [`read_rope_freqs`]).
fn rope_scaling_from_gguf(g: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let m = Meta(g);
    let k = |key: &str| format!("{arch}.{key}");
    // llama.cpp: the scaling type defaults to linear, the factor comes from
    // rope.scaling.factor or else the older rope.scale_linear, and 0 means none; type none
    // never scales, whatever the factor.
    let scaling = m.string(&k("rope.scaling.type"))?.unwrap_or("linear");
    let factor_key = if g.meta.contains_key(&k("rope.scaling.factor")) {
        k("rope.scaling.factor")
    } else {
        k("rope.scale_linear")
    };
    let factor = m.float(&factor_key)?.unwrap_or(0.0);
    // llama.cpp divides every frequency by the factor: transformers' linear scaling.
    Ok(match scaling {
        "none" => RopeScaling::Default,
        "linear" if factor == 0.0 || factor == 1.0 => RopeScaling::Default,
        "linear" if factor.is_finite() && factor > 0.0 => RopeScaling::Linear { factor },
        "linear" => {
            return Err(refuse(
                g,
                format!("{factor_key} is {factor}, not a finite number > 0"),
                HINT_RECONVERT,
            ))
        }
        other => {
            return Err(refuse(
                g,
                format!("{arch}.rope.scaling.type is {other:?}: RoPE scaling btx does not import from GGUF (none and linear; Llama 3's comes as rope_freqs.weight)"),
                HINT_UNSUPPORTED,
            ))
        }
    })
}

/// RMSNorm's epsilon and RoPE's base, each a finite number > 0.
fn eps_and_theta(g: &GgufFile, arch: &str) -> Result<(f64, f64)> {
    let m = Meta(g);
    let k = |key: &str| format!("{arch}.{key}");
    let eps = m
        .float(&k("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| m.missing(&k("attention.layer_norm_rms_epsilon")))?;
    let theta = m.float(&k("rope.freq_base"))?.unwrap_or(10000.0);
    // Named by their GGUF keys here rather than by config.json's names in validate().
    for (key, v) in [
        (k("attention.layer_norm_rms_epsilon"), eps),
        (k("rope.freq_base"), theta),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(refuse(
                g,
                format!("metadata {key} is {v}, not a finite number > 0"),
                HINT_RECONVERT,
            ));
        }
    }
    Ok((eps, theta))
}

/// The vocabulary size: the rows of `token_embd.weight`, which must agree with the token list.
fn vocab_from_gguf(g: &GgufFile, arch: &str, hidden: usize) -> Result<usize> {
    let emb = g.tensor("token_embd.weight").ok_or_else(|| {
        refuse(
            g,
            "no token_embd.weight tensor",
            "is this a complete Llama GGUF? (a file of llama.cpp's split format holds part of the tensors)",
        )
    })?;
    let vocab = match emb.shape()[..] {
        [v, h] if h == hidden => v,
        _ => {
            return Err(refuse(
                g,
                format!(
                    "tensor token_embd.weight has shape {:?}, expected [vocabulary, {hidden}] ({arch}.embedding_length)",
                    emb.shape()
                ),
                HINT_RECONVERT,
            ))
        }
    };
    // llama.cpp sizes the embeddings and the output by the token list; a model whose rows
    // disagree with its vocabulary is one it refuses to load.
    if let Some(v) = g.meta.get("tokenizer.ggml.tokens") {
        let n = v.as_array().map_or(0, <[Value]>::len);
        if n != vocab {
            return Err(refuse(
                g,
                format!(
                    "tokenizer.ggml.tokens has {n} tokens but token_embd.weight has {vocab} rows"
                ),
                HINT_RECONVERT,
            ));
        }
    }
    Ok(vocab)
}

/// Llama 3.1-style scaling arrives as per-frequency divisors (`rope_freqs.weight`), read into
/// `c.rope_scaling`; all ones is no scaling (and is checked as inert with the other tensors).
fn read_rope_freqs(
    g: &GgufFile,
    arch: &str,
    c: &mut ModelConfig,
    theta: f64,
    ctx: usize,
) -> Result<()> {
    let Some(t) = g.tensor("rope_freqs.weight") else {
        return Ok(());
    };
    let key_len = c.head_dim;
    if c.family != Family::Llama {
        return Err(refuse(
            g,
            format!("tensor rope_freqs.weight in a {arch} model: RoPE frequency factors btx does not import for this architecture"),
            HINT_UNSUPPORTED,
        ));
    }
    if t.shape() != [key_len / 2] {
        return Err(refuse(
            g,
            format!(
                "tensor rope_freqs.weight has shape {:?}, expected [{}]",
                t.shape(),
                key_len / 2
            ),
            HINT_RECONVERT,
        ));
    }
    let f = g.dequantize(t)?;
    if f.iter().any(|&x| x != 1.0) {
        if c.rope_scaling != RopeScaling::Default {
            return Err(refuse(
                g,
                "both rope_freqs.weight and a RoPE scaling type are given; llama.cpp applies both, transformers one",
                HINT_UNSUPPORTED,
            ));
        }
        let original = Meta(g).uint(&format!("{arch}.rope.scaling.original_context_length"))?;
        c.rope_scaling = llama3_from_factors(&f, theta, key_len, ctx, original).ok_or_else(|| {
            refuse(
                g,
                "tensor \"rope_freqs.weight\" is not supported: it holds RoPE frequency factors that no Llama 3 rope scaling (factor, low/high frequency factors, original context) gives, so btx cannot write them as a transformers config",
                HINT_UNSUPPORTED,
            )
        })?;
    }
    Ok(())
}

/// The MoE shape from `{arch}.expert_count` and `expert_used_count`: llama.cpp's llama and
/// qwen3moe graphs weigh the top-k experts by the softmax of their router logits (renormalised
/// over the k), which is Mixtral's top-k routing. A dense architecture must have none, qwen3moe
/// must have some.
fn moe_from_gguf(g: &GgufFile, arch: &str, layers: usize) -> Result<Option<MoeConfig>> {
    let m = Meta(g);
    let k = |key: &str| format!("{arch}.{key}");
    let experts = m.uint(&k("expert_count"))?.unwrap_or(0);
    let used = m.per_layer(&k("expert_used_count"), layers)?.unwrap_or(0);
    let moe_arch = matches!(arch, "llama" | "qwen3moe");
    if experts == 0 {
        if arch == "qwen3moe" {
            return Err(m.missing(&k("expert_count")));
        }
        if used != 0 {
            return Err(refuse(
                g,
                format!("metadata {arch}.expert_used_count is {used} without experts ({arch}.expert_count is 0 or missing)"),
                HINT_RECONVERT,
            ));
        }
        return Ok(None);
    }
    if !moe_arch {
        return Err(refuse(
            g,
            format!("metadata {arch}.expert_count is {experts}: a {arch} model has no experts"),
            HINT_UNSUPPORTED,
        ));
    }
    if used == 0 || used > experts {
        return Err(refuse(
            g,
            format!("metadata {arch}.expert_used_count is {used}, expected 1 to {experts} ({arch}.expert_count)"),
            HINT_RECONVERT,
        ));
    }
    Ok(Some(MoeConfig {
        num_experts: experts,
        top_k: used,
        routing: btx_model::Routing::TopK,
    }))
}

/// llama.cpp's regex for its `llama3` pre-tokenizer: Llama 3's, with `(?i:'s|...)` spelt out as
/// ASCII classes (case-insensitive matching would also take e.g. U+017F for `s`).
pub(crate) const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3.1's RoPE scaling from the `rope_freqs.weight` llama.cpp's converter writes for it
/// (GGUF keeps the per-frequency divisors, not the parameters they came from): the
/// parameters among Llama 3's usual ones whose divisors are the file's, to f32 precision, or
/// None. llama.cpp divides each angle by the stored divisor; transformers computes the same
/// frequencies from the parameters (the two agree to f32 rounding).
fn llama3_from_factors(
    factors: &[f32],
    theta: f64,
    head_dim: usize,
    ctx: usize,
    original: Option<usize>,
) -> Option<RopeScaling> {
    let factor = factors.iter().copied().fold(f32::MIN, f32::max) as f64;
    if !(factor.is_finite() && factor > 1.0) {
        return None;
    }
    let plain = RopeScaling::Default.inv_freq(theta, head_dim);
    // The file's own original context first (btx's export writes it; llama.cpp reads it only
    // for YaRN), then the usual ones.
    for original in original
        .into_iter()
        .chain([8192, 4096, 2048, 16384, 32768, 65536, 131072, ctx])
    {
        for (low, high) in [(1.0, 4.0), (1.0, 2.0), (2.0, 4.0), (1.0, 8.0)] {
            let cand = RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: original,
            };
            let scaled = cand.inv_freq(theta, head_dim);
            let same = plain.iter().zip(&scaled).zip(factors).all(|((p, s), f)| {
                let want = p / s;
                (want - f).abs() <= 1e-5 * f.abs()
            });
            if same {
                return Some(cand);
            }
        }
    }
    None
}

/// llama.cpp's regex for its `qwen2` pre-tokenizer: Llama 3's with single digits (`\p{N}`),
/// the case-insensitive contractions spelt out the same way.
pub(crate) const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizers` pre-tokenizer that splits text as llama.cpp's pre-tokenizer `pre` does, whether
/// llama.cpp's BPE takes a whole word found in the vocabulary without merging (`ignore_merges`),
/// and whether it adds BOS when no `add_bos_token` says. None for the types btx cannot reproduce.
fn pre_tokenizer(pre: &str) -> Option<(Json, bool, bool)> {
    // GPT-2's regex, as ByteLevel applies it (the same as llama.cpp's gpt2 split).
    let gpt2 = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let llama3 = json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]});
    Some(match pre {
        "gpt-2" | "phi-2" | "mpt" | "olmo" => (gpt2, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (llama3, true, true),
        "dbrx" | "smaug-bpe" => (llama3, false, false),
        // llama.cpp's qwen2 type: its own regex, merges applied to every word (only llama3
        // ignores them), no BOS unless add_bos_token says so.
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            false,
            false,
        ),
        // llama.cpp splits every \p{N} off first, then applies GPT-2's regex.
        "starcoder" | "refact" | "smollm" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (
                json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, gpt2]}),
                false,
                false,
            )
        }
        _ => return None,
    })
}

/// `tokenizer.json` for a GGUF `gpt2`-type (byte-level BPE) vocabulary, splitting text as
/// llama.cpp does for the file's `tokenizer.ggml.pre`; anything that would make it tokenise
/// differently from llama.cpp is refused by key.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Tok> {
    let (pre, ignore_merges, bos_default) = bpe_pre_tokenizer(g)?;
    let tokens = string_array(g, "tokenizer.ggml.tokens")?;
    let merges = string_array(g, "tokenizer.ggml.merges")?;
    let types = token_types(g, &tokens)?;
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (i, t) in tokens.iter().enumerate() {
        if let Some(j) = vocab.insert(t.clone(), json!(i)) {
            return Err(refuse(
                g,
                format!("tokenizer.ggml.tokens holds {t:?} twice (ids {j} and {i}): text could map to either"),
                HINT_RECONVERT,
            ));
        }
        // Control and unknown tokens are llama.cpp's special tokens; user-defined ones are
        // matched in text as a whole but are not special.
        if matches!(types[i], 2..=4) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": types[i] != 4}),
            );
        }
    }
    let merges = merge_pairs(g, &merges)?;
    let post = post_processor(g, &tokens, bos_default)?;
    let j = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
    });
    Tok::from_json(&j.to_string()).map_err(|e| {
        refuse(
            g,
            format!(
                "the GGUF vocabulary (tokenizer.ggml.*) does not make a tokenizer: {}",
                e.to_string().replace('\n', "; ")
            ),
            HINT_RECONVERT,
        )
    })
}

/// The pre-tokenizer of a byte-level BPE vocabulary (`tokenizer.ggml.model` "gpt2"), with
/// [`pre_tokenizer`]'s flags; any other model or pre-tokenizer is refused.
fn bpe_pre_tokenizer(g: &GgufFile) -> Result<(Json, bool, bool)> {
    let m = Meta(g);
    let model = m.string("tokenizer.ggml.model")?.unwrap_or("");
    if model != "gpt2" {
        return Err(refuse(
            g,
            format!("tokenizer.ggml.model is {model:?}; btx rebuilds byte-level BPE (\"gpt2\") tokenizers only"),
            "a SentencePiece (\"llama\") vocabulary cannot be imported from GGUF; use the model's Hugging Face checkpoint as the seed ([seed] path)",
        ));
    }
    let pre_name = m.string("tokenizer.ggml.pre")?.ok_or_else(|| {
        refuse(
            g,
            "metadata tokenizer.ggml.pre is missing: llama.cpp then splits text with its \"default\" pre-tokenizer (and warns that generation quality will be degraded), which btx does not reproduce",
            HINT_RECONVERT,
        )
    })?;
    pre_tokenizer(pre_name).ok_or_else(|| {
        refuse(
            g,
            format!("tokenizer.ggml.pre is {pre_name:?}, a pre-tokenizer btx does not reproduce exactly (it does gpt-2, llama-bpe/llama3, smollm/starcoder and their aliases)"),
            HINT_UNSUPPORTED,
        )
    })
}

/// A metadata array of strings that must be present.
fn string_array(g: &GgufFile, key: &str) -> Result<Vec<String>> {
    let m = Meta(g);
    let a = match g.meta.get(key) {
        None => return Err(m.missing(key)),
        Some(v) => v
            .as_array()
            .ok_or_else(|| m.bad(key, v, "an array of strings"))?,
    };
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| m.bad(&format!("{key}[{i}]"), v, "a string"))
        })
        .collect()
}

/// Each token's type (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
/// 6 byte (SentencePiece only). All normal without `tokenizer.ggml.token_type`.
fn token_types(g: &GgufFile, tokens: &[String]) -> Result<Vec<u64>> {
    let Some(v) = g.meta.get("tokenizer.ggml.token_type") else {
        return Ok(vec![1; tokens.len()]);
    };
    let a = v
        .as_array()
        .filter(|a| a.len() == tokens.len())
        .ok_or_else(|| {
            Meta(g).bad(
                "tokenizer.ggml.token_type",
                v,
                &format!("one type per token ({} values)", tokens.len()),
            )
        })?;
    a.iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(t @ 1..=5) => Ok(t),
            _ => Err(refuse(
                g,
                format!("tokenizer.ggml.token_type[{i}] ({:?}) is {v:?}, not a type a BPE vocabulary has (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused)", tokens[i]),
                HINT_RECONVERT,
            )),
        })
        .collect()
}

/// The merges as `tokenizers` pairs. llama.cpp splits a merge at its first space after the
/// first byte (a merge's left part may itself be a space).
fn merge_pairs(g: &GgufFile, merges: &[String]) -> Result<Vec<Json>> {
    merges
        .iter()
        .enumerate()
        .map(|(i, mg)| {
            let at = mg.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
            match at {
                Some(p) => Ok(json!([&mg[..p], &mg[p + 1..]])),
                None => Err(refuse(
                    g,
                    format!(
                        "tokenizer.ggml.merges[{i}] is {mg:?}, not two tokens separated by a space"
                    ),
                    HINT_RECONVERT,
                )),
            }
        })
        .collect()
}

/// The post-processor that adds the BOS/EOS llama.cpp adds when it tokenises a prompt (null
/// when it adds neither). btx itself never adds special tokens (its data and evals separate
/// documents by EOS), as for any Hugging Face tokenizer; the template makes tokenizer.json say
/// what llama.cpp does, for whoever else uses it.
fn post_processor(g: &GgufFile, tokens: &[String], bos_default: bool) -> Result<Json> {
    let m = Meta(g);
    let add_bos = m
        .boolean("tokenizer.ggml.add_bos_token")?
        .unwrap_or(bos_default);
    let add_eos = m.boolean("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if m.boolean("tokenizer.ggml.add_sep_token")? == Some(true) {
        return Err(refuse(
            g,
            "tokenizer.ggml.add_sep_token is true: llama.cpp appends a separator token, which btx's tokenizer does not reproduce",
            HINT_UNSUPPORTED,
        ));
    }
    let special = |flag: &str, key: &str| -> Result<Option<(u32, String)>> {
        let id = m.uint(key)?.ok_or_else(|| {
            refuse(
                g,
                format!("{flag} is true but {key} is missing (llama.cpp would then add token 11)"),
                HINT_RECONVERT,
            )
        })?;
        let t = tokens.get(id).ok_or_else(|| {
            refuse(
                g,
                format!("{key} is {id}, outside the {} tokens", tokens.len()),
                HINT_RECONVERT,
            )
        })?;
        Ok(Some((id as u32, t.clone())))
    };
    let bos = if add_bos {
        special(
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
        )?
    } else {
        None
    };
    let eos = if add_eos {
        special(
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
        )?
    } else {
        None
    };
    if bos.is_none() && eos.is_none() {
        return Ok(Json::Null);
    }
    let mut special_tokens = serde_json::Map::new();
    let piece = |seq: &str, type_id: u32| {
        let mut v = vec![];
        if let Some((_, t)) = &bos {
            v.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        if let Some((_, t)) = &eos {
            v.push(json!({"SpecialToken": {"id": t, "type_id": type_id}}));
        }
        v
    };
    for (id, t) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    let mut pair = piece("A", 0);
    pair.extend(piece("B", 1));
    Ok(
        json!({"type": "TemplateProcessing", "single": piece("A", 0), "pair": pair,
        "special_tokens": special_tokens}),
    )
}

/// Tensors llama.cpp's llama graph uses that btx has no place for, but which are provably
/// inert at the value given: a `rope_freqs.weight` of all ones (llama.cpp's RoPE divides each
/// angle by its factor; x / 1.0, like x * (1 / 1.0), is x exactly in IEEE arithmetic, so no
/// kernel can make it differ from RoPE without factors), and
/// all-zero biases of the projections (adding +0.0 changes at most the sign of a zero, which
/// no later sum, product, exp or RMS norm can tell). Returns (expected shape, neutral value, what
/// a non-neutral one would be), or None for a tensor that is not one of these.
fn inert_tensor(name: &str, cfg: &ModelConfig) -> Option<(Vec<usize>, f32, &'static str)> {
    if name == "rope_freqs.weight" {
        return Some((
            vec![cfg.head_dim / 2],
            1.0,
            "RoPE frequency factors (Llama 3.1-style rope scaling), which btx does not implement",
        ));
    }
    let (ls, rest) = name.strip_prefix("blk.")?.split_once('.')?;
    // Only the names llama.cpp looks up: "blk.01" or a layer past the last is not one.
    let l: usize = ls.parse().ok()?;
    if l.to_string() != ls || l >= cfg.num_layers {
        return None;
    }
    let rows = match rest {
        "attn_q.bias" => cfg.q_dim(),
        "attn_k.bias" | "attn_v.bias" => cfg.kv_dim(),
        "attn_output.bias" | "ffn_down.bias" => cfg.hidden_size,
        "ffn_gate.bias" | "ffn_up.bias" => cfg.intermediate_size,
        _ => return None,
    };
    Some((
        vec![rows],
        0.0,
        "a bias, which btx's projections do not have",
    ))
}

/// What an unmapped tensor is, for the refusal.
fn unmapped_what(name: &str) -> &'static str {
    let base = name.rsplit_once('.').map_or(name, |x| x.0);
    let base = base.rsplit('.').next().unwrap_or(base);
    if base.contains("exps") || base.contains("shexp") || base == "ffn_gate_inp" {
        "a mixture-of-experts tensor btx does not map (a shared expert, expert biases or scales, or experts the metadata does not declare with expert_count)"
    } else if base == "attn_qkv" {
        "fused Q/K/V, which btx does not split"
    } else if base.starts_with("rope_factors") {
        "LongRoPE factors, which btx does not implement"
    } else if name.starts_with("blk.") {
        "a tensor btx's Llama layer has no place for (or of a layer past llama.block_count), which llama.cpp would use"
    } else {
        "a tensor btx's Llama has no place for, which llama.cpp would use"
    }
}

/// Writes `out/{config.json, model.safetensors, tokenizer.json}` from a llama GGUF file. Every
/// metadata key and tensor is checked before anything is written: the keys and tensors must
/// describe exactly the model btx builds (anything else is refused by name), and every
/// tensor must be present, of the right shape, of a type btx can dequantise, inside the file and
/// finite. The output appears whole or not at all (see [`OutDir`]).
pub fn import_gguf(path: &Path, out: &Path, existing: Existing) -> Result<ModelConfig> {
    let g = GgufFile::open(path)?;
    let cfg = config_from_gguf(&g)?;
    let tok = tokenizer_from_gguf(&g)?;
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    check_unmapped(&g, &cfg, &specs)?;
    for (name, shape) in &specs {
        let (t, expert) = param_tensor(&g, &cfg, name, shape)?;
        if expert.is_some_and(|e| e > 0) {
            continue; // the stacked tensor was checked with expert 0
        }
        g.check_readable(t)?;
        // Found here, before the first write, from the bytes that decide it (see
        // first_non_finite): btx never writes a model it would refuse to run.
        if let Some(i) = g.first_non_finite(t)? {
            return Err(non_finite(&g, &t.name, i, t.numel()));
        }
    }
    let staged = OutDir::create(out, &[path], existing)?;
    let dir = staged.path();
    let q_suffix = ".self_attn.q_proj.weight";
    let k_suffix = ".self_attn.k_proj.weight";
    let save = SaveOpts {
        dtype: OutDtype::F32,
        max_shard_bytes: 4 << 30,
    };
    write_model_checkpoint(dir, &cfg, &specs, &save, |i, sink| {
        let (name, shape) = &specs[i];
        let w = param_values(&g, &cfg, name, shape)
            .map_err(|e| btx_model::ModelError::Invalid { msg: e.to_string() })?;
        // Only the llama converter permutes Q/K (for llama.cpp's interleaved RoPE).
        let permuted = cfg.family == Family::Llama;
        let w = if permuted && name.ends_with(q_suffix) {
            unpermute_rows(&w, shape[0], shape[1], cfg.num_heads)
        } else if permuted && name.ends_with(k_suffix) {
            unpermute_rows(&w, shape[0], shape[1], cfg.num_kv_heads)
        } else {
            w
        };
        sink.f32(&w)
    })
    .map_err(|e| DataError::Invalid(e.to_string()))?;
    cfg.save(&dir.join("config.json"))
        .map_err(|e| DataError::Invalid(e.to_string()))?;
    tok.save(&dir.join("tokenizer.json"))?;
    // The chat template, where transformers (and btx's export back to GGUF) look for it.
    if let Some(t) = Meta(&g).string("tokenizer.chat_template")? {
        let j = json!({ "chat_template": t });
        btx_core::atomic::write_file(
            &dir.join(btx_data::TOKENIZER_CONFIG),
            serde_json::to_string_pretty(&j).expect("json").as_bytes(),
        )?;
    }
    staged.commit()?;
    Ok(cfg)
}

/// The GGUF tensor of a parameter, and for one expert its index in the stacked tensor.
fn source(name: &str) -> (String, Option<usize>) {
    gguf_source(name).expect("every parameter has a GGUF name")
}

/// Refuses a tensor that no parameter maps to, unless it is inert ([`inert_tensor`]) at the
/// value it holds. llama.cpp refuses a file with a tensor its graph does not load, and uses
/// every one it loads: a tensor btx does not map would be a part of the model left out.
fn check_unmapped(g: &GgufFile, cfg: &ModelConfig, specs: &[(String, Vec<usize>)]) -> Result<()> {
    let mapped: std::collections::HashSet<String> =
        specs.iter().map(|(n, _)| source(n).0).collect();
    let mut unmapped = vec![];
    for t in &g.tensors {
        // Read into the config's RoPE scaling (see config_from_gguf).
        let rope_read =
            t.name == "rope_freqs.weight" && matches!(cfg.rope_scaling, RopeScaling::Llama3 { .. });
        if mapped.contains(&t.name) || rope_read {
            continue;
        }
        match inert_tensor(&t.name, cfg) {
            Some((shape, neutral, what)) => {
                if t.shape() != shape {
                    return Err(refuse(
                        g,
                        format!(
                            "tensor {:?} has shape {:?}, expected {shape:?}",
                            t.name,
                            t.shape()
                        ),
                        HINT_RECONVERT,
                    ));
                }
                let v = g.dequantize(t)?;
                if let Some(x) = v.iter().find(|&&x| x != neutral) {
                    return Err(refuse(
                        g,
                        format!(
                            "tensor {:?} is not supported: it holds {what} (it has {x}; only all {neutral} changes nothing)",
                            t.name
                        ),
                        HINT_UNSUPPORTED,
                    ));
                }
            }
            None => unmapped.push(&t.name),
        }
    }
    if let Some(first) = unmapped.first() {
        let more = match unmapped.len() {
            1 => String::new(),
            n => format!(" (and {} more tensors btx does not map)", n - 1),
        };
        return Err(refuse(
            g,
            format!(
                "tensor {first:?} is not supported: {}{more}",
                unmapped_what(first)
            ),
            HINT_UNSUPPORTED,
        ));
    }
    Ok(())
}

/// A parameter's tensor, checked to have the shape the metadata gives it (for one expert,
/// the stacked shape [experts, rows, cols]), and the expert's index in it.
fn param_tensor<'g>(
    g: &'g GgufFile,
    cfg: &ModelConfig,
    name: &str,
    shape: &[usize],
) -> Result<(&'g btx_data::gguf::TensorInfo, Option<usize>)> {
    let (gname, expert) = source(name);
    let shape: Vec<usize> = match (expert, &cfg.moe) {
        (Some(_), Some(moe)) => std::iter::once(moe.num_experts)
            .chain(shape.iter().copied())
            .collect(),
        _ => shape.to_vec(),
    };
    let t = g.tensor(&gname).ok_or_else(|| {
        refuse(
            g,
            format!("tensor {gname:?} is missing (needed for {name})"),
            "is this a complete Llama GGUF? (a file of llama.cpp's split format holds part of the tensors)",
        )
    })?;
    if t.shape() != shape {
        return Err(refuse(
            g,
            format!(
                "tensor {gname:?} has shape {:?}, expected {shape:?} from the file's metadata",
                t.shape()
            ),
            HINT_RECONVERT,
        ));
    }
    Ok((t, expert))
}

/// A parameter's values, dequantised (one expert's slice of a stacked tensor).
fn param_values(g: &GgufFile, cfg: &ModelConfig, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (t, expert) = param_tensor(g, cfg, name, shape)?;
    let w = match expert {
        Some(e) => {
            let n: usize = shape.iter().product();
            g.dequantize_range(t, e * n, (e + 1) * n)?
        }
        None => g.dequantize(t)?,
    };
    // Checked in import_gguf already; kept because it costs one pass over values about to be
    // written, and a non-finite model must never appear (an error here leaves only the
    // staging directory, which OutDir removes).
    if let Some(i) = w.iter().position(|x| !x.is_finite()) {
        return Err(non_finite(g, &t.name, i, w.len()));
    }
    Ok(w)
}

fn non_finite(g: &GgufFile, tensor: &str, i: usize, n: usize) -> DataError {
    refuse(
        g,
        format!("tensor {tensor:?} holds a non-finite value (NaN or infinity) at element {i} of {n}"),
        "the model itself is broken (a diverged training run or a damaged conversion); btx never writes a model with NaN or infinite weights: use another copy or quantisation of it",
    )
}
