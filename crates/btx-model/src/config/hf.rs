//! Reading and writing Hugging Face's `config.json`: what `transformers` writes (4.x and 5.x
//! spellings, Llama and Mixtral) and btx's own keys (`btx_routing`, `btx_attention_experts`,
//! `btx_experts`), into a validated [`ModelConfig`] and back.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{
    yarn_mscale, AttnExpertsConfig, Family, ModelConfig, MoeConfig, RopeScaling, Routing,
    BTX_MOA_ARCH, BTX_MOA_TYPE, DEFAULT_TOP_K,
};
use crate::error::{ModelError, Result};

/// The config classes btx reads, as transformers tells them apart (by `model_type`, or the
/// class in `architectures`): their configs default differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Llama,
    Mistral,
    Mixtral,
    Qwen2,
    Qwen2Moe,
    Qwen3,
    Qwen3Moe,
    BtxMoa,
}

impl Class {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "LlamaForCausalLM" | "llama" => Class::Llama,
            "MistralForCausalLM" | "mistral" => Class::Mistral,
            "MixtralForCausalLM" | "mixtral" => Class::Mixtral,
            "Qwen2ForCausalLM" | "qwen2" => Class::Qwen2,
            "Qwen2MoeForCausalLM" | "qwen2_moe" => Class::Qwen2Moe,
            "Qwen3ForCausalLM" | "qwen3" => Class::Qwen3,
            "Qwen3MoeForCausalLM" | "qwen3_moe" => Class::Qwen3Moe,
            BTX_MOA_ARCH | BTX_MOA_TYPE => Class::BtxMoa,
            _ => return None,
        })
    }

    fn family(self) -> Family {
        match self {
            Class::Llama | Class::Mistral | Class::Mixtral | Class::BtxMoa => Family::Llama,
            Class::Qwen2 | Class::Qwen2Moe => Family::Qwen2,
            Class::Qwen3 | Class::Qwen3Moe => Family::Qwen3,
        }
    }

    fn is_moe_class(self) -> bool {
        matches!(self, Class::Mixtral | Class::Qwen2Moe | Class::Qwen3Moe)
    }

    // transformers' defaults (its config classes; testdata/hf-defaults holds what 5.25 builds).
    fn default_rope_theta(self) -> f64 {
        match self {
            Class::Mixtral => 1e6,
            _ => 10000.0,
        }
    }

    fn default_rms_norm_eps(self) -> f64 {
        match self {
            Class::Mixtral => 1e-5,
            _ => 1e-6,
        }
    }

    fn default_max_positions(self) -> usize {
        match self {
            Class::Mistral | Class::Mixtral => 4096 * 32,
            Class::Qwen2 | Class::Qwen2Moe | Class::Qwen3 | Class::Qwen3Moe => 32768,
            Class::Llama | Class::BtxMoa => 2048,
        }
    }

    /// `None`: as many as the query heads.
    fn default_kv_heads(self) -> Option<usize> {
        match self {
            Class::Mistral | Class::Mixtral => Some(8),
            Class::Qwen2 | Class::Qwen3 => Some(32),
            Class::Qwen2Moe => Some(16),
            Class::Qwen3Moe => Some(4),
            Class::Llama | Class::BtxMoa => None,
        }
    }

    /// `None`: hidden_size / num_attention_heads.
    fn default_head_dim(self) -> Option<usize> {
        match self {
            Class::Qwen3 => Some(128),
            _ => None,
        }
    }
}

/// The classes transformers loads a model of `family` as (architectures, model_type).
fn class_names(cfg: &ModelConfig) -> (&'static str, &'static str) {
    if cfg.attn_experts.is_some() {
        return (BTX_MOA_ARCH, BTX_MOA_TYPE);
    }
    match (cfg.family, cfg.is_moe()) {
        (Family::Llama, true) => ("MixtralForCausalLM", "mixtral"),
        // A dense model with a sliding window is a Mistral: transformers' Llama ignores the
        // key, and would attend past the window.
        (Family::Llama, false) if cfg.sliding_window.is_some() => ("MistralForCausalLM", "mistral"),
        (Family::Llama, false) => ("LlamaForCausalLM", "llama"),
        (Family::Qwen2, false) => ("Qwen2ForCausalLM", "qwen2"),
        (Family::Qwen2, true) => ("Qwen2MoeForCausalLM", "qwen2_moe"),
        (Family::Qwen3, false) => ("Qwen3ForCausalLM", "qwen3"),
        (Family::Qwen3, true) => ("Qwen3MoeForCausalLM", "qwen3_moe"),
    }
}

/// RoPE's base as transformers reads `config.json`, or why btx refuses the file.
///
/// What this relies on (transformers' source, not run here):
/// - transformers 5 (`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` and
///   `standardize_rope_params`): `rope_parameters = rope_scaling or rope_parameters` (a
///   non-empty `rope_scaling` replaces `rope_parameters` whole), then
///   `setdefault("rope_theta", <top-level rope_theta, else the class default>)` and
///   `setdefault("rope_type", <its "type", else "default">)`; the rotary embedding then builds
///   `ROPE_INIT_FUNCTIONS[rope_type]` unless it is "default" (a null type fails there).
/// - transformers 4.x: RoPE's base is the top-level `rope_theta` (else the class default); the
///   type is `rope_scaling.get("rope_type", rope_scaling.get("type"))` when `rope_scaling` is
///   a dict (a dict without a type fails in `ROPE_INIT_FUNCTIONS`), and the config copies a
///   legacy `type` over `rope_type`; `rope_parameters` is an unknown key, ignored.
///
/// So: a file in 4.x's spelling (top-level `rope_theta`, `rope_scaling`) is read as both read
/// it; a file with `rope_parameters` is one only transformers 5 writes and is read as 5 reads
/// it (btx's own writer adds an equal top-level `rope_theta` for 4.x); every file on which the
/// two would disagree, or which either cannot build, is refused by name.
fn rope(
    obj: &Map<String, Value>,
    class: Class,
    max_positions: usize,
) -> std::result::Result<(f64, RopeScaling), String> {
    let object = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!("{key} must be an object or null, found {other}")),
    };
    let top = theta_in(obj, "", class)?;
    let default = class.default_rope_theta();
    let (key, m) = match (object("rope_parameters")?, object("rope_scaling")?) {
        (None, None) => return Ok((top.unwrap_or(default), RopeScaling::Default)),
        (Some(m), None) => ("rope_parameters", m),
        (None, Some(m)) => ("rope_scaling", m),
        // As btx writes a scaled RoPE for both versions: the same dict twice, which both read
        // alike (5 takes rope_scaling in place of rope_parameters).
        (Some(a), Some(b)) if a == b => ("rope_scaling", b),
        (Some(_), Some(_)) => {
            return Err(
                "rope_scaling and rope_parameters are both set and differ: transformers 5 reads rope_scaling in place of rope_parameters, transformers 4.x reads rope_scaling and top-level rope_theta and ignores rope_parameters\nhint: keep one: rope_parameters (as transformers 5 writes it), or rope_scaling with rope_theta at top level (as 4.x writes it)"
                    .into(),
            )
        }
    };
    if let Some((k, _)) = m.iter().find(|(_, v)| v.is_object()) {
        return Err(format!(
            "{key}.{k}: RoPE per layer type is not supported (only one default RoPE)"
        ));
    }
    let t = match (m.get("rope_type"), m.get("type")) {
        (Some(Value::Null), _) | (_, Some(Value::Null)) => {
            return Err(format!(
                "{key} has a null rope type, from which transformers cannot build RoPE\nhint: write \"rope_type\": \"default\" (the plain rotate-half RoPE)"
            ))
        }
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "{key} gives the rope type twice, as rope_type {a} and type {b}: transformers 5 reads rope_type, transformers 4.x copies type over it\nhint: keep rope_type only"
            ))
        }
        (Some(t), _) | (None, Some(t)) => Some(t),
        (None, None) => None,
    };
    let rope_type = match t {
        Some(Value::String(t)) => t.as_str(),
        None if key == "rope_parameters" => "default",
        None => {
            return Err(
                "rope_scaling names no rope type: transformers 4.x cannot build RoPE from it (transformers 5 takes the default)\nhint: remove rope_scaling (or set it to null) for the default RoPE, or write \"rope_type\": \"default\" in it"
                    .into(),
            )
        }
        Some(t) => return Err(format!("{key}: rope type {t} must be a string")),
    };
    // transformers 5 reads a partial rotary factor from the chosen dict (4.x from the top
    // level only); either way btx rotates whole heads, so anything but 1 is refused.
    match m.get("partial_rotary_factor") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64() == Some(1.0) => {}
        Some(v) => {
            return Err(format!(
                "{key}.partial_rotary_factor = {v} is not supported (btx rotates whole heads)"
            ))
        }
    }
    let nested = theta_in(m, &format!("{key}."), class)?;
    if key == "rope_scaling" {
        // transformers 5 takes RoPE's base from rope_scaling, 4.x from the top level only.
        return match (nested, top) {
            (Some(a), b) if Some(a) != b => Err(format!(
                "rope_scaling.rope_theta = {a} but {}: transformers 5 takes RoPE's base from rope_scaling, transformers 4.x from the top-level rope_theta only\nhint: move it to the top-level rope_theta and out of rope_scaling",
                match b {
                    Some(b) => format!("rope_theta = {b}"),
                    None => format!("there is no top-level rope_theta (the default is {default})"),
                }
            )),
            _ => Ok(top.unwrap_or(default)),
        }
        .and_then(|theta| Ok((theta, scaling(obj, key, m, rope_type, max_positions)?)));
    }
    if let (Some(a), Some(b)) = (nested, top) {
        if a != b {
            return Err(format!(
                "rope_parameters.rope_theta = {a} but rope_theta = {b}\nhint: make the two agree (transformers 4 reads rope_theta, 5 reads rope_parameters)"
            ));
        }
    }
    let theta = nested.or(top).unwrap_or(default);
    Ok((theta, scaling(obj, key, m, rope_type, max_positions)?))
}

/// The frequency scaling of `rope_type`, with its parameters from `m` (the dict at `key`), as
/// transformers 5.25's `modeling_rope_utils` reads them; every type it cannot build, or that
/// btx does not implement (`longrope`, per-layer types), is refused by name.
fn scaling(
    obj: &Map<String, Value>,
    key: &str,
    m: &Map<String, Value>,
    rope_type: &str,
    max_positions: usize,
) -> std::result::Result<RopeScaling, String> {
    let num = |k: &str| -> std::result::Result<Option<f64>, String> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("{key}.{k} must be a number, found {v}")),
        }
    };
    let need = |k: &str| -> std::result::Result<f64, String> {
        num(k)?.ok_or_else(|| {
            format!("{key} of rope type {rope_type:?} needs {k}, from which transformers builds it")
        })
    };
    // transformers 5 (`standardize_rope_params`) gives llama3 and yarn the pretraining length
    // from a top-level original_max_position_embeddings first, then the dict's, then
    // max_position_embeddings; transformers 4.x reads the dict's only. Where both are given
    // and differ, the two versions build different frequencies.
    let int = |v: &Value, at: &str| {
        v.as_u64().map(|x| x as usize).ok_or_else(|| {
            format!("{at}original_max_position_embeddings must be a positive integer, found {v}")
        })
    };
    let original = || -> std::result::Result<(usize, bool), String> {
        let top = match obj.get("original_max_position_embeddings") {
            None | Some(Value::Null) => None,
            Some(v) => Some(int(v, "")?),
        };
        let inner = match m.get("original_max_position_embeddings") {
            None | Some(Value::Null) => None,
            Some(v) => Some(int(v, &format!("{key}."))?),
        };
        match (top, inner) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "original_max_position_embeddings = {a} at the top level but {b} in {key}: transformers 5 takes the top-level one, 4.x the one in {key}\nhint: keep one of them"
            )),
            (Some(a), _) => Ok((a, true)),
            (None, Some(b)) => Ok((b, true)),
            (None, None) => Ok((max_positions, false)),
        }
    };
    Ok(match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: original()?.0,
        },
        "yarn" => {
            let (original, given) = original()?;
            let ratio = max_positions as f64 / original as f64;
            let factor = num("factor")?.unwrap_or(ratio);
            // transformers 4.x (from its source, not run here) takes factor =
            // max_position_embeddings / original_max_position_embeddings whenever rope_scaling
            // gives the original length, whatever `factor` says; 5 takes `factor`.
            if key == "rope_scaling" && given && factor != ratio {
                return Err(format!(
                    "rope_scaling of type yarn has factor {factor} but max_position_embeddings / original_max_position_embeddings = {}: transformers 4.x scales by the latter, transformers 5 by factor\nhint: set max_position_embeddings to factor x original_max_position_embeddings ({}), or write the parameters as rope_parameters (transformers 5's spelling)",
                    ratio,
                    factor * original as f64
                ));
            }
            let attention_factor = match num("attention_factor")? {
                Some(a) => a,
                None => match (num("mscale")?, num("mscale_all_dim")?) {
                    (Some(a), Some(b)) if a != 0.0 && b != 0.0 => {
                        yarn_mscale(factor, a) / yarn_mscale(factor, b)
                    }
                    _ => yarn_mscale(factor, 1.0),
                },
            };
            let truncate = match m.get("truncate") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(v) => return Err(format!("{key}.truncate must be true or false, found {v}")),
            };
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: original,
                // transformers: `get("beta_fast") or 32` (a 0 is the default too).
                beta_fast: num("beta_fast")?.filter(|&b| b != 0.0).unwrap_or(32.0),
                beta_slow: num("beta_slow")?.filter(|&b| b != 0.0).unwrap_or(1.0),
                attention_factor,
                truncate,
            }
        }
        other => {
            return Err(format!(
                "{key}: rope type {other:?} is not supported (btx implements default, linear, dynamic, llama3 and yarn)"
            ))
        }
    })
}

/// `rope_theta` in `m` (`at` prefixes its key in messages). A theta given as null reaches
/// transformers' RoPE as None, which it cannot raise to a power: refused rather than read as
/// the default.
fn theta_in(
    m: &Map<String, Value>,
    at: &str,
    class: Class,
) -> std::result::Result<Option<f64>, String> {
    match m.get("rope_theta") {
        None => Ok(None),
        Some(Value::Null) => Err(format!(
            "{at}rope_theta is null, from which transformers cannot build RoPE\nhint: remove the key for the architecture's default ({}), or give RoPE's base as a number",
            class.default_rope_theta()
        )),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{at}rope_theta must be a number, found {v}")),
    }
}

/// The sliding window of a Qwen2 / Qwen3 (-MoE) config as transformers 5.25 applies it: the
/// `sliding_window` key only when `use_sliding_window`, and only on the layers `layer_types`
/// (or, without it, `max_window_layers`) marks as sliding. btx applies one window to the whole
/// model (and refuses sequences past it), so a window on some layers only is refused.
fn qwen_window(
    obj: &Map<String, Value>,
    class: Class,
    num_layers: usize,
) -> std::result::Result<Option<usize>, String> {
    let use_window = match obj.get("use_sliding_window") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            return Err(format!(
                "use_sliding_window must be true or false, found {v}"
            ))
        }
    };
    let listed = match obj.get("layer_types") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut sliding = Vec::with_capacity(a.len());
            for t in a {
                sliding.push(match t.as_str() {
                    Some("sliding_attention") => true,
                    Some("full_attention") => false,
                    _ => {
                        return Err(format!(
                            "layer_types holds {t}, which btx does not know (full_attention, sliding_attention)"
                        ))
                    }
                });
            }
            if sliding.len() != num_layers {
                return Err(format!(
                    "layer_types names {} layers but num_hidden_layers is {num_layers}",
                    sliding.len()
                ));
            }
            Some(sliding)
        }
        Some(v) => return Err(format!("layer_types must be a list, found {v}")),
    };
    if !use_window {
        if listed.as_ref().is_some_and(|l| l.iter().any(|&s| s)) {
            return Err(
                "layer_types marks sliding_attention layers but use_sliding_window is false (transformers then has no window to apply)\nhint: set use_sliding_window, or mark every layer full_attention".into(),
            );
        }
        return Ok(None);
    }
    let window = match obj.get("sliding_window") {
        None => 4096,
        Some(Value::Null) => return Ok(None),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("sliding_window must be a non-negative integer, found {v}"))?
            as usize,
    };
    let max_window_layers = match obj.get("max_window_layers") {
        None | Some(Value::Null) => 28,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("max_window_layers must be a non-negative integer, found {v}"))?
            as usize,
    };
    let sliding: Vec<bool> = match (class, listed) {
        // Qwen3-MoE has no layer types: the window is on every layer.
        (Class::Qwen3Moe, _) => vec![true; num_layers],
        (_, Some(l)) => l,
        // Qwen2-MoE: every other layer below max_window_layers.
        (Class::Qwen2Moe, None) => (0..num_layers)
            .map(|i| i % 2 == 0 && i < max_window_layers)
            .collect(),
        (_, None) => (0..num_layers).map(|i| i >= max_window_layers).collect(),
    };
    match sliding.iter().filter(|&&s| s).count() {
        0 => Ok(None),
        n if n == num_layers => Ok(Some(window)),
        n => Err(format!(
            "the sliding window of {window} is on {n} of the {num_layers} layers (use_sliding_window with layer_types / max_window_layers): btx applies a window to every layer or to none\nhint: set use_sliding_window to false if sequences stay within {window} positions anyway"
        )),
    }
}

/// Refuses a Qwen2-MoE / Qwen3-MoE layout btx's MoE does not compute: dense layers among the
/// sparse ones, Qwen2-MoE's shared expert, or top-k weights that are not renormalised.
fn qwen_moe_layout(
    obj: &Map<String, Value>,
    class: Class,
    top_k: usize,
    num_experts: usize,
) -> std::result::Result<(), String> {
    let uint = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{k} must be a non-negative integer, found {v}")),
    };
    if let Some(step) = uint("decoder_sparse_step")? {
        if step != 1 {
            return Err(format!(
                "decoder_sparse_step = {step}: only every {step}th layer is a MoE, and btx's MoE models have experts in every layer"
            ));
        }
    }
    match obj.get("mlp_only_layers") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            return Err(format!(
                "mlp_only_layers = {v}: dense layers among the MoE ones are not supported (btx's MoE models have experts in every layer)"
            ))
        }
    }
    if class == Class::Qwen2Moe {
        let shared = uint("shared_expert_intermediate_size")?.unwrap_or(5632);
        if shared != 0 {
            return Err(format!(
                "shared_expert_intermediate_size = {shared}: Qwen2-MoE's shared expert is not supported (btx writes Qwen2-MoE with a shared expert of size 0)"
            ));
        }
    }
    let norm = match obj.get("norm_topk_prob") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(format!("norm_topk_prob must be true or false, found {v}")),
    };
    if !norm && top_k < num_experts {
        return Err(format!(
            "norm_topk_prob is false: the top-{top_k} experts are weighted by their softmax over all {num_experts}, while btx renormalises the top-k weights (Mixtral's routing)\nhint: a model btx wrote has norm_topk_prob = true"
        ));
    }
    Ok(())
}

fn cfg_err(msg: String) -> ModelError {
    ModelError::Config { msg }
}

/// `config.json`'s top-level keys, read by type. A key given as null counts as missing. A
/// value of the wrong type is an error, never the default: `"rms_norm_eps": "1e-5"` silently
/// read as 1e-6 would be a wrong number.
#[derive(Clone, Copy)]
struct Keys<'a>(&'a Map<String, Value>);

impl<'a> Keys<'a> {
    fn present(self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize_of(self, key: &str) -> Result<Option<usize>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|x| Some(x as usize))
                .ok_or_else(|| cfg_err(format!("{key} must be a non-negative integer, found {v}"))),
        }
    }

    fn need(self, key: &str) -> Result<usize> {
        self.usize_of(key)?
            .ok_or_else(|| cfg_err(format!("missing required key {key:?}")))
    }

    fn f64_of(self, key: &str) -> Result<Option<f64>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{key} must be a number, found {v}"))),
        }
    }

    fn bool_of(self, key: &str) -> Result<Option<bool>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{key} must be true or false, found {v}"))),
        }
    }

    fn str_of(self, key: &str) -> Result<Option<&'a str>> {
        match self.present(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| cfg_err(format!("{key} must be a string, found {v}"))),
        }
    }

    /// The first id of a token-id key (one id or a list of them), the one btx keeps. Every id
    /// of a list is checked against the vocabulary, not only the first; a single id is
    /// range-checked by validate(), with the others.
    fn token_id(self, key: &str, vocab_size: usize) -> Result<Option<u32>> {
        let one = |x: &Value| {
            x.as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .map(|i| i as u32)
        };
        let ids: Vec<u32> = match self.present(key) {
            None => return Ok(None),
            Some(Value::Array(a)) if a.iter().all(|x| one(x).is_some()) => {
                a.iter().filter_map(one).collect()
            }
            Some(x) => one(x).map(|i| vec![i]).ok_or_else(|| {
                cfg_err(format!(
                    "{key} must be a token id or a list of them, found {x}"
                ))
            })?,
        };
        if ids.len() > 1 {
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= vocab_size)
            {
                return Err(cfg_err(format!(
                    "{key}[{i}] {id} is outside the vocabulary 0..{vocab_size}\nhint: is vocab_size right for this tokenizer?"
                )));
            }
        }
        Ok(ids.first().copied())
    }
}

/// The config class and the name the file gives it (for messages). transformers' AutoModel
/// picks the class from model_type; `architectures` names it too. Both must mean the same
/// family, or the file means two different models.
fn class_of<'a>(keys: Keys<'a>) -> Result<(Class, &'a str)> {
    let arch_name = match keys.present("architectures") {
        None => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(a) => Some(
            a.as_array()
                .and_then(|a| a.first())
                .and_then(|a| a.as_str())
                .ok_or_else(|| {
                    cfg_err(format!(
                        "architectures must be a list of class names, found {a}"
                    ))
                })?,
        ),
    };
    let model_type = keys.str_of("model_type")?;
    let unsupported = |other: &str| {
        cfg_err(format!(
            "unsupported architecture {other:?}; btx reads LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM and its own {BTX_MOA_ARCH}"
        ))
    };
    let class = match (arch_name, model_type) {
        (None, None) => return Err(unsupported("")),
        (Some(a), None) => Class::of(a).ok_or_else(|| unsupported(a))?,
        (None, Some(t)) => Class::of(t).ok_or_else(|| unsupported(t))?,
        (Some(a), Some(t)) => {
            let fa = Class::of(a).ok_or_else(|| unsupported(a))?;
            let ft = Class::of(t).ok_or_else(|| unsupported(t))?;
            if fa != ft {
                return Err(cfg_err(format!(
                    "architectures names {a:?} but model_type is {t:?}: transformers would build a {t} model\nhint: make the two agree"
                )));
            }
            fa
        }
    };
    Ok((class, arch_name.or(model_type).unwrap_or("")))
}

/// Whether q, k and v have biases. Which projections have biases, per class as transformers
/// builds them: Llama's and Qwen3's when attention_bias / mlp_bias ask (all four attention
/// projections: not implemented, refused), Qwen2's q/k/v always, Qwen2-MoE's q/k/v when
/// qkv_bias (default true); Mistral's and Mixtral's never, whatever the keys say
/// (transformers ignores them).
fn qkv_bias(keys: Keys, class: Class, name: &str) -> Result<bool> {
    let bias_keys: &[&str] = match class {
        Class::Llama | Class::BtxMoa => &["attention_bias", "mlp_bias"],
        Class::Qwen3 | Class::Qwen3Moe => &["attention_bias"],
        _ => &[],
    };
    for key in bias_keys {
        if keys.bool_of(key)? == Some(true) {
            return Err(cfg_err(format!(
                "{key} = true is not supported for {name} (btx's attention has biases on q, k and v only, as Qwen2's)"
            )));
        }
    }
    Ok(match class {
        Class::Qwen2 => true,
        Class::Qwen2Moe => keys.bool_of("qkv_bias")?.unwrap_or(true),
        _ => false,
    })
}

/// Refuses quantized weights, weights in a file other than model.safetensors, and a partial
/// rotary factor.
fn refuse_unimplemented(keys: Keys) -> Result<()> {
    if keys.present("quantization_config").is_some() {
        return Err(cfg_err(
            "quantization_config: btx reads unquantized float checkpoints only\nhint: use the unquantized model".into(),
        ));
    }
    // transformers (`_get_resolved_checkpoint_files`, assumed from its source) loads the
    // weights from the file this key names instead of model.safetensors; btx reads
    // model.safetensors (or the index's shards), so only that default name is accepted.
    match keys.0.get("transformers_weights") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == crate::io::SINGLE_FILE => {}
        Some(v) => {
            return Err(cfg_err(format!(
                "transformers_weights = {v}: transformers loads the weights from that file, btx reads {} (or the shards {} lists)\nhint: rename the weights file to {} and remove transformers_weights",
                crate::io::SINGLE_FILE,
                crate::io::INDEX_FILE,
                crate::io::SINGLE_FILE
            )))
        }
    }
    // A partial rotary factor rotates only part of each head: not implemented. (Inside
    // rope_parameters or rope_scaling it is checked by rope().)
    if let Some(f) = keys.f64_of("partial_rotary_factor")? {
        if f != 1.0 {
            return Err(cfg_err(format!(
                "partial_rotary_factor = {f} is not supported (btx rotates whole heads)"
            )));
        }
    }
    Ok(())
}

/// The attention's head size, its number of KV heads and its sliding window (if any).
fn attention_shape(
    keys: Keys,
    class: Class,
    hidden_size: usize,
    num_heads: usize,
    num_layers: usize,
) -> Result<(usize, usize, Option<usize>)> {
    // Qwen3's head_dim defaults to 128 whatever the sizes; a null there reaches its
    // attention as None, which it cannot build.
    let head_dim = match (class.default_head_dim(), keys.0.get("head_dim")) {
        (Some(_), Some(Value::Null)) => {
            return Err(cfg_err(
                "head_dim is null, from which transformers cannot build this model's attention\nhint: give head_dim as a number".into(),
            ))
        }
        (default, _) => keys
            .usize_of("head_dim")?
            .or(default)
            .unwrap_or(hidden_size / num_heads.max(1)),
    };
    // Missing and null differ: a missing key takes the architecture's default (8 for
    // Mistral and Mixtral, 32 for Qwen2 and Qwen3), null means "as many as the query heads".
    let num_kv_heads = match keys.0.get("num_key_value_heads") {
        None => class.default_kv_heads().unwrap_or(num_heads),
        Some(_) => keys.usize_of("num_key_value_heads")?.unwrap_or(num_heads),
    };
    let sliding_window = match class {
        // Llama does not read sliding_window; Mistral's default window is 4096 (null: none).
        Class::Llama => None,
        Class::Mistral if !keys.0.contains_key("sliding_window") => Some(4096),
        Class::Mistral | Class::Mixtral | Class::BtxMoa => keys.usize_of("sliding_window")?,
        _ => qwen_window(keys.0, class, num_layers).map_err(cfg_err)?,
    };
    Ok((head_dim, num_kv_heads, sliding_window))
}

/// The experts of a MoE config: how many, top-k and btx's routing mode.
fn moe_of(keys: Keys, class: Class) -> Result<MoeConfig> {
    let experts_key = match class {
        Class::Qwen2Moe => "num_experts",
        // Qwen3-MoE's config maps num_experts onto num_local_experts.
        Class::Qwen3Moe if keys.present("num_local_experts").is_none() => "num_experts",
        _ => "num_local_experts",
    };
    let (default_experts, default_k) = match class {
        Class::Qwen2Moe => (60, 4),
        Class::Qwen3Moe => (128, 8),
        _ => (8, DEFAULT_TOP_K),
    };
    let num_experts = keys.usize_of(experts_key)?.unwrap_or(default_experts);
    let top_k = keys.usize_of("num_experts_per_tok")?.unwrap_or(default_k);
    if matches!(class, Class::Qwen2Moe | Class::Qwen3Moe) {
        qwen_moe_layout(keys.0, class, top_k, num_experts).map_err(cfg_err)?;
    }
    let routing = routing_of(keys)?;
    // btx writes the top-k transformers computes each mode as (soft: every expert,
    // renormalised, which is soft routing exactly; switch and sample-top1: 1); a file
    // whose top-k says otherwise would give transformers other logits than btx.
    let want_k = match routing {
        Routing::TopK => None,
        Routing::Soft => Some(num_experts),
        Routing::Switch { .. } | Routing::SampleTop1 { .. } => Some(1),
    };
    if let Some(k) = want_k.filter(|&k| k != top_k) {
        return Err(cfg_err(format!(
            "btx_routing mode {:?} goes with num_experts_per_tok = {k}, but config.json has {top_k}: transformers would route top-{top_k}, btx {}\nhint: set num_experts_per_tok to {k} (what btx writes for this mode)",
            routing.name(),
            routing.name()
        )));
    }
    Ok(MoeConfig {
        num_experts,
        top_k,
        routing,
    })
}

/// btx's routing mode (`btx_routing`; top-k without it).
fn routing_of(keys: Keys) -> Result<Routing> {
    let Some(r) = keys.present("btx_routing") else {
        return Ok(Routing::TopK);
    };
    let routing: Routing =
        serde_json::from_value(r.clone()).map_err(|e| cfg_err(format!("btx_routing: {e}")))?;
    // serde lets unknown keys through beside a mode without parameters.
    let known = serde_json::to_value(&routing).expect("routing serialises");
    if let (Some(given), Some(known)) = (r.as_object(), known.as_object()) {
        if let Some(k) = given.keys().find(|k| !known.contains_key(*k)) {
            return Err(cfg_err(format!(
                "btx_routing: unknown key {k:?} for mode {:?}",
                routing.name()
            )));
        }
    }
    Ok(routing)
}

/// btx's attention experts (`btx_attention_experts`), which go with its own architecture only.
fn attn_experts_of(keys: Keys, class: Class, name: &str) -> Result<Option<AttnExpertsConfig>> {
    let attn_experts = match keys.present("btx_attention_experts") {
        None => None,
        Some(a) => Some(
            serde_json::from_value(a.clone())
                .map_err(|e| cfg_err(format!("btx_attention_experts: {e}")))?,
        ),
    };
    if attn_experts.is_some() != (class == Class::BtxMoa) {
        return Err(cfg_err(format!(
            "btx_attention_experts goes with architecture {BTX_MOA_ARCH} (found {name:?})"
        )));
    }
    Ok(attn_experts)
}

/// transformers passes pad_token_id to nn.Embedding as padding_idx: one index, never a list.
/// torch takes a negative one as counted from the end (vocab_size + id); btx keeps ids as
/// they index the table, so it asks for that spelling instead of guessing.
fn pad_token_id_of(keys: Keys, vocab_size: usize) -> Result<Option<u32>> {
    let Some(v) = keys.present("pad_token_id") else {
        return Ok(None);
    };
    match v.as_i64() {
        Some(i) if i < 0 && vocab_size as i64 + i >= 0 => Err(cfg_err(format!(
            "pad_token_id {i} is negative: transformers' nn.Embedding takes it as row {} of the vocabulary of {vocab_size}\nhint: write that row as pad_token_id ({}), or null for no padding token",
            vocab_size as i64 + i,
            vocab_size as i64 + i
        ))),
        Some(i) if i < 0 => Err(cfg_err(format!(
            "pad_token_id {i} is outside the vocabulary of {vocab_size} (transformers cannot build nn.Embedding with this padding_idx)\nhint: set pad_token_id to a token of the vocabulary, or null"
        ))),
        Some(i) if i <= u32::MAX as i64 => Ok(Some(i as u32)),
        _ => Err(cfg_err(format!(
            "pad_token_id must be one token id (or null), found {v}"
        ))),
    }
}

impl ModelConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_hf_json(&text).map_err(|e| match e {
            ModelError::Config { msg } => ModelError::ConfigFile {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        })
    }

    /// Parses a Hugging Face `config.json` as transformers reads it for the architecture it
    /// names: its defaults for missing keys (they differ between Llama, Mistral and Mixtral),
    /// and a refusal by name for every key that would change the logits in a way btx does not
    /// implement. Keys transformers ignores for that architecture are ignored here too.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            msg: format!("not valid JSON: {e}"),
        })?;
        let obj = v.as_object().ok_or_else(|| ModelError::Config {
            msg: "config.json must be a JSON object".into(),
        })?;
        let keys = Keys(obj);
        let (class, name) = class_of(keys)?;
        let family = class.family();
        let is_moe = class.is_moe_class()
            || (class == Class::BtxMoa && obj.contains_key("num_local_experts"));

        if let Some(act) = keys.str_of("hidden_act")? {
            // transformers' ACT2FN maps both names to SiLU.
            if act != "silu" && act != "swish" {
                return Err(cfg_err(format!(
                    "hidden_act {act:?} is not supported (only silu / SwiGLU)"
                )));
            }
        }
        let qkv_bias = qkv_bias(keys, class, name)?;
        refuse_unimplemented(keys)?;
        let max_position_embeddings = keys
            .usize_of("max_position_embeddings")?
            .unwrap_or(class.default_max_positions());
        let (rope_theta, rope_scaling) =
            rope(obj, class, max_position_embeddings).map_err(cfg_err)?;
        if !is_moe && keys.present("btx_routing").is_some() {
            return Err(cfg_err(
                "btx_routing is set but the model has no experts (no num_local_experts)".into(),
            ));
        }

        let hidden_size = keys.need("hidden_size")?;
        let num_heads = keys.need("num_attention_heads")?;
        let num_layers = keys.need("num_hidden_layers")?;
        let (head_dim, num_kv_heads, sliding_window) =
            attention_shape(keys, class, hidden_size, num_heads, num_layers)?;
        let moe = if is_moe {
            Some(moe_of(keys, class)?)
        } else {
            None
        };
        // Qwen-MoE experts are moe_intermediate_size wide (intermediate_size is the width of
        // dense layers, which btx's MoE layouts do not have).
        let intermediate_size = match class {
            Class::Qwen2Moe | Class::Qwen3Moe => keys
                .usize_of("moe_intermediate_size")?
                .unwrap_or(if class == Class::Qwen2Moe { 1408 } else { 768 }),
            _ => keys.need("intermediate_size")?,
        };
        let attn_experts = attn_experts_of(keys, class, name)?;
        let expert_labels = match keys.present("btx_experts") {
            None => vec![],
            Some(l) => serde_json::from_value(l.clone())
                .map_err(|e| cfg_err(format!("btx_experts must be a list of names: {e}")))?,
        };
        let vocab_size = keys.need("vocab_size")?;
        let pad_token_id = pad_token_id_of(keys, vocab_size)?;

        let cfg = ModelConfig {
            family,
            qkv_bias,
            qk_norm: family == Family::Qwen3,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: keys
                .f64_of("rms_norm_eps")?
                .unwrap_or(class.default_rms_norm_eps()),
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: keys.bool_of("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: keys.token_id("bos_token_id", vocab_size)?,
            eos_token_id: keys.token_id("eos_token_id", vocab_size)?,
            pad_token_id,
            sliding_window,
            attention_dropout: keys.f64_of("attention_dropout")?.unwrap_or(0.0),
            // Only Mixtral's router reads it.
            router_jitter_noise: if class == Class::Mixtral || class == Class::BtxMoa {
                keys.f64_of("router_jitter_noise")?.unwrap_or(0.0)
            } else {
                0.0
            },
            moe,
            attn_experts,
            expert_labels,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// RoPE's parameters as transformers 5 writes them (`rope_parameters`).
    fn rope_json(&self) -> Value {
        let mut r = match serde_json::to_value(&self.rope_scaling).expect("rope serialises") {
            Value::Object(m) => m,
            _ => unreachable!("an enum with a tag serialises as an object"),
        };
        r.insert("rope_theta".into(), json!(self.rope_theta));
        Value::Object(r)
    }

    /// Whether transformers 4.x reads `rope_scaling` as 5 reads `rope_parameters`: not for a
    /// YaRN whose factor is not max_position_embeddings / original (4.x takes the ratio).
    fn rope_v4_agrees(&self) -> bool {
        match self.rope_scaling {
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                ..
            } => {
                factor
                    == self.max_position_embeddings as f64 / original_max_position_embeddings as f64
            }
            _ => true,
        }
    }

    /// The `config.json` that `transformers` loads as the family's class ([`class_names`]):
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `MixtralForCausalLM`, `Qwen2ForCausalLM`,
    /// `Qwen2MoeForCausalLM`, `Qwen3ForCausalLM` or `Qwen3MoeForCausalLM`. RoPE is written for
    /// both transformers 4.x (top-level `rope_theta`, and `rope_scaling` when scaled) and 5.x
    /// (`rope_parameters`).
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        let (arch, model_type) = class_names(self);
        m.insert("architectures".into(), json!([arch]));
        m.insert("model_type".into(), json!(model_type));
        m.insert("vocab_size".into(), json!(self.vocab_size));
        m.insert("hidden_size".into(), json!(self.hidden_size));
        m.insert("intermediate_size".into(), json!(self.intermediate_size));
        m.insert("num_hidden_layers".into(), json!(self.num_layers));
        m.insert("num_attention_heads".into(), json!(self.num_heads));
        m.insert("num_key_value_heads".into(), json!(self.num_kv_heads));
        m.insert("head_dim".into(), json!(self.head_dim));
        m.insert("hidden_act".into(), json!("silu"));
        m.insert("rms_norm_eps".into(), json!(self.rms_norm_eps));
        m.insert("rope_theta".into(), json!(self.rope_theta));
        m.insert("rope_parameters".into(), self.rope_json());
        if self.rope_scaling != RopeScaling::Default && self.rope_v4_agrees() {
            m.insert("rope_scaling".into(), self.rope_json());
        }
        m.insert(
            "max_position_embeddings".into(),
            json!(self.max_position_embeddings),
        );
        m.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        m.insert("attention_dropout".into(), json!(self.attention_dropout));
        m.insert("initializer_range".into(), json!(0.02));
        m.insert("use_cache".into(), json!(true));
        m.insert("dtype".into(), json!("float32"));
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        m.insert("eos_token_id".into(), json!(self.eos_token_id));
        m.insert("pad_token_id".into(), json!(self.pad_token_id));
        if let Some(moe) = &self.moe {
            // Mixtral only knows top-k: export the nearest setting and keep the real mode aside.
            let k = match moe.routing {
                Routing::TopK => moe.top_k,
                Routing::Soft => moe.num_experts,
                Routing::Switch { .. } | Routing::SampleTop1 { .. } => 1,
            };
            let experts_key = match self.family {
                Family::Llama => "num_local_experts",
                Family::Qwen2 | Family::Qwen3 => "num_experts",
            };
            m.insert(experts_key.into(), json!(moe.num_experts));
            m.insert("num_experts_per_tok".into(), json!(k));
            m.insert("router_aux_loss_coef".into(), json!(0.01));
            m.insert("output_router_logits".into(), json!(false));
            if self.family == Family::Llama {
                m.insert(
                    "router_jitter_noise".into(),
                    json!(self.router_jitter_noise),
                );
            } else {
                // Every layer a MoE of moe_intermediate_size experts whose top-k weights are
                // renormalised (Mixtral's routing), and for Qwen2-MoE a shared expert of size 0.
                m.insert(
                    "moe_intermediate_size".into(),
                    json!(self.intermediate_size),
                );
                m.insert("norm_topk_prob".into(), json!(true));
                m.insert("decoder_sparse_step".into(), json!(1));
                m.insert("mlp_only_layers".into(), json!([]));
                if self.family == Family::Qwen2 {
                    m.insert("shared_expert_intermediate_size".into(), json!(0));
                    m.insert("qkv_bias".into(), json!(self.qkv_bias));
                }
            }
            if moe.routing != Routing::TopK {
                m.insert(
                    "btx_routing".into(),
                    serde_json::to_value(&moe.routing).expect("routing serialises"),
                );
            }
            if !self.expert_labels.is_empty() {
                m.insert("btx_experts".into(), json!(self.expert_labels));
            }
            if let Some(a) = &self.attn_experts {
                m.insert(
                    "btx_attention_experts".into(),
                    serde_json::to_value(a).expect("attention experts serialise"),
                );
            }
        } else if model_type == "llama" {
            m.insert("attention_bias".into(), json!(false));
            m.insert("mlp_bias".into(), json!(false));
            m.insert("pretraining_tp".into(), json!(1));
        }
        match self.family {
            Family::Llama if model_type != "llama" => {
                // Written even when null: a Mistral without the key would get a 4096 window.
                m.insert("sliding_window".into(), json!(self.sliding_window));
            }
            Family::Llama => {}
            Family::Qwen2 | Family::Qwen3 => {
                // One window on every layer, or none (what the reader accepts).
                let kind = if self.sliding_window.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                };
                m.insert(
                    "use_sliding_window".into(),
                    json!(self.sliding_window.is_some()),
                );
                m.insert("sliding_window".into(), json!(self.sliding_window));
                m.insert("max_window_layers".into(), json!(0));
                if !(self.family == Family::Qwen3 && self.is_moe()) {
                    m.insert("layer_types".into(), json!(vec![kind; self.num_layers]));
                }
                if self.family == Family::Qwen3 {
                    m.insert("attention_bias".into(), json!(false));
                }
            }
        }
        Value::Object(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.save_as(path, crate::io::OutDtype::F32)
    }

    /// [`ModelConfig::save`] for weights stored in `dtype` (config.json's `dtype` /
    /// `torch_dtype`, which transformers loads them as by default).
    pub fn save_as(&self, path: &Path, dtype: crate::io::OutDtype) -> Result<()> {
        let mut j = self.to_hf_json();
        j["dtype"] = json!(dtype.torch_name());
        j["torch_dtype"] = json!(dtype.torch_name());
        let text = serde_json::to_string_pretty(&j).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}
