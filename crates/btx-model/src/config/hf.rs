//! Reading and writing Hugging Face's `config.json`: what `transformers` writes (4.x and 5.x
//! spellings, Llama and Mixtral) and btx's own keys (`btx_routing`, `btx_attention_experts`,
//! `btx_experts`), into a validated [`ModelConfig`] and back.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{ModelConfig, MoeConfig, Routing, BTX_MOA_ARCH, BTX_MOA_TYPE, DEFAULT_TOP_K};
use crate::error::{ModelError, Result};

/// The model families btx reads, as transformers tells them apart (by `model_type`, or the
/// class in `architectures`): their configs default differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Llama,
    Mistral,
    Mixtral,
    BtxMoa,
}

impl Family {
    fn of(name: &str) -> Option<Self> {
        Some(match name {
            "LlamaForCausalLM" | "llama" => Family::Llama,
            "MistralForCausalLM" | "mistral" => Family::Mistral,
            "MixtralForCausalLM" | "mixtral" => Family::Mixtral,
            BTX_MOA_ARCH | BTX_MOA_TYPE => Family::BtxMoa,
            _ => return None,
        })
    }

    // transformers' defaults (LlamaConfig, MistralConfig, MixtralConfig; 4.x and 5.x agree).
    fn default_rope_theta(self) -> f64 {
        match self {
            Family::Mixtral => 1e6,
            _ => 10000.0,
        }
    }

    fn default_rms_norm_eps(self) -> f64 {
        match self {
            Family::Mixtral => 1e-5,
            _ => 1e-6,
        }
    }

    fn default_max_positions(self) -> usize {
        match self {
            Family::Mistral | Family::Mixtral => 4096 * 32,
            Family::Llama | Family::BtxMoa => 2048,
        }
    }

    /// `None`: as many as the query heads.
    fn default_kv_heads(self) -> Option<usize> {
        match self {
            Family::Mistral | Family::Mixtral => Some(8),
            Family::Llama | Family::BtxMoa => None,
        }
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
fn rope_theta(obj: &Map<String, Value>, family: Family) -> std::result::Result<f64, String> {
    let object = |key: &str| match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!("{key} must be an object or null, found {other}")),
    };
    let top = theta_in(obj, "", family)?;
    let default = family.default_rope_theta();
    let (key, m) = match (object("rope_parameters")?, object("rope_scaling")?) {
        (None, None) => return Ok(top.unwrap_or(default)),
        (Some(m), None) => ("rope_parameters", m),
        (None, Some(m)) => ("rope_scaling", m),
        (Some(_), Some(_)) => {
            return Err(
                "rope_scaling and rope_parameters are both set: transformers 5 reads rope_scaling in place of rope_parameters, transformers 4.x reads rope_scaling and top-level rope_theta and ignores rope_parameters\nhint: keep one: rope_parameters (as transformers 5 writes it), or rope_scaling with rope_theta at top level (as 4.x writes it)"
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
    match t {
        Some(Value::String(t)) if t == "default" => {}
        None if key == "rope_parameters" => {}
        None => {
            return Err(
                "rope_scaling names no rope type: transformers 4.x cannot build RoPE from it (transformers 5 takes the default)\nhint: remove rope_scaling (or set it to null) for the default RoPE, or write \"rope_type\": \"default\" in it"
                    .into(),
            )
        }
        Some(t) => {
            return Err(format!(
                "{key}: rope type {t} is not supported (only the default rotate-half RoPE)"
            ))
        }
    }
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
    let nested = theta_in(m, &format!("{key}."), family)?;
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
        };
    }
    if let (Some(a), Some(b)) = (nested, top) {
        if a != b {
            return Err(format!(
                "rope_parameters.rope_theta = {a} but rope_theta = {b}\nhint: make the two agree (transformers 4 reads rope_theta, 5 reads rope_parameters)"
            ));
        }
    }
    Ok(nested.or(top).unwrap_or(default))
}

/// `rope_theta` in `m` (`at` prefixes its key in messages). A theta given as null reaches
/// transformers' RoPE as None, which it cannot raise to a power: refused rather than read as
/// the default.
fn theta_in(
    m: &Map<String, Value>,
    at: &str,
    family: Family,
) -> std::result::Result<Option<f64>, String> {
    match m.get("rope_theta") {
        None => Ok(None),
        Some(Value::Null) => Err(format!(
            "{at}rope_theta is null, from which transformers cannot build RoPE\nhint: remove the key for the architecture's default ({}), or give RoPE's base as a number",
            family.default_rope_theta()
        )),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{at}rope_theta must be a number, found {v}")),
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
        let cfg_err = |msg: String| ModelError::Config { msg };
        let present = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let usize_of = |key: &str| -> Result<Option<usize>> {
            match present(key) {
                None => Ok(None),
                Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                    cfg_err(format!("{key} must be a non-negative integer, found {v}"))
                }),
            }
        };
        let need = |key: &str| -> Result<usize> {
            usize_of(key)?.ok_or_else(|| cfg_err(format!("missing required key {key:?}")))
        };
        // A value of the wrong type is an error, never the default: `"rms_norm_eps": "1e-5"`
        // silently read as 1e-6 would be a wrong number.
        let f64_in = |m: &Map<String, Value>, key: &str, at: &str| -> Result<Option<f64>> {
            match m.get(key).filter(|v| !v.is_null()) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| cfg_err(format!("{at}{key} must be a number, found {v}"))),
            }
        };
        let f64_of = |key: &str| f64_in(obj, key, "");
        let bool_of = |key: &str| -> Result<Option<bool>> {
            match present(key) {
                None => Ok(None),
                Some(v) => v
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| cfg_err(format!("{key} must be true or false, found {v}"))),
            }
        };
        let str_of = |key: &str| -> Result<Option<&str>> {
            match present(key) {
                None => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| cfg_err(format!("{key} must be a string, found {v}"))),
            }
        };
        // Every id of a list is checked against the vocabulary (below), not only the first,
        // which is the one btx keeps.
        let token_ids = |key: &str| -> Result<Option<Vec<u32>>> {
            let one = |x: &Value| {
                x.as_u64()
                    .filter(|&i| i <= u32::MAX as u64)
                    .map(|i| i as u32)
            };
            match present(key) {
                None => Ok(None),
                Some(Value::Array(a)) if a.iter().all(|x| one(x).is_some()) => {
                    Ok(Some(a.iter().filter_map(one).collect()))
                }
                Some(x) => one(x).map(|i| Some(vec![i])).ok_or_else(|| {
                    cfg_err(format!(
                        "{key} must be a token id or a list of them, found {x}"
                    ))
                }),
            }
        };
        // transformers' AutoModel picks the class from model_type; `architectures` names it
        // too. Both must mean the same family, or the file means two different models.
        let arch_name = match present("architectures") {
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
        let model_type = str_of("model_type")?;
        let unsupported = |other: &str| {
            cfg_err(format!(
                "unsupported architecture {other:?}; btx reads LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM and its own {BTX_MOA_ARCH}"
            ))
        };
        let family = match (arch_name, model_type) {
            (None, None) => return Err(unsupported("")),
            (Some(a), None) => Family::of(a).ok_or_else(|| unsupported(a))?,
            (None, Some(t)) => Family::of(t).ok_or_else(|| unsupported(t))?,
            (Some(a), Some(t)) => {
                let fa = Family::of(a).ok_or_else(|| unsupported(a))?;
                let ft = Family::of(t).ok_or_else(|| unsupported(t))?;
                if fa != ft {
                    return Err(cfg_err(format!(
                        "architectures names {a:?} but model_type is {t:?}: transformers would build a {t} model\nhint: make the two agree"
                    )));
                }
                fa
            }
        };
        let is_moe = match family {
            Family::Llama | Family::Mistral => false,
            Family::Mixtral => true,
            Family::BtxMoa => obj.contains_key("num_local_experts"),
        };

        if let Some(act) = str_of("hidden_act")? {
            // transformers' ACT2FN maps both names to SiLU.
            if act != "silu" && act != "swish" {
                return Err(cfg_err(format!(
                    "hidden_act {act:?} is not supported (only silu / SwiGLU)"
                )));
            }
        }
        // Llama has biases when asked; Mistral's and Mixtral's projections never do, whatever
        // the keys say (transformers ignores them there).
        if matches!(family, Family::Llama | Family::BtxMoa) {
            for key in ["attention_bias", "mlp_bias"] {
                if bool_of(key)? == Some(true) {
                    return Err(cfg_err(format!(
                        "{key} = true is not supported (btx's projections have no bias)"
                    )));
                }
            }
        }
        if present("quantization_config").is_some() {
            return Err(cfg_err(
                "quantization_config: btx reads unquantized float checkpoints only\nhint: use the unquantized model".into(),
            ));
        }
        // transformers (`_get_resolved_checkpoint_files`, assumed from its source) loads the
        // weights from the file this key names instead of model.safetensors; btx reads
        // model.safetensors (or the index's shards), so only that default name is accepted.
        match obj.get("transformers_weights") {
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
        // rope_parameters or rope_scaling it is checked by rope_theta().)
        if let Some(f) = f64_of("partial_rotary_factor")? {
            if f != 1.0 {
                return Err(cfg_err(format!(
                    "partial_rotary_factor = {f} is not supported (btx rotates whole heads)"
                )));
            }
        }
        let rope_theta = rope_theta(obj, family).map_err(cfg_err)?;
        if !is_moe && present("btx_routing").is_some() {
            return Err(cfg_err(
                "btx_routing is set but the model has no experts (no num_local_experts)".into(),
            ));
        }

        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let head_dim = usize_of("head_dim")?.unwrap_or(hidden_size / num_heads.max(1));
        // Missing and null differ: a missing key takes the architecture's default (8 for
        // Mistral and Mixtral), null means "as many as the query heads".
        let num_kv_heads = match obj.get("num_key_value_heads") {
            None => family.default_kv_heads().unwrap_or(num_heads),
            Some(_) => usize_of("num_key_value_heads")?.unwrap_or(num_heads),
        };
        // Llama does not read sliding_window; Mistral's default window is 4096 (null: none).
        let sliding_window = match family {
            Family::Llama => None,
            Family::Mistral if !obj.contains_key("sliding_window") => Some(4096),
            Family::Mistral | Family::Mixtral | Family::BtxMoa => usize_of("sliding_window")?,
        };
        let moe = if is_moe {
            let num_experts = usize_of("num_local_experts")?.unwrap_or(8);
            let top_k = usize_of("num_experts_per_tok")?.unwrap_or(DEFAULT_TOP_K);
            let routing = match present("btx_routing") {
                None => Routing::TopK,
                Some(r) => serde_json::from_value(r.clone())
                    .map_err(|e| cfg_err(format!("btx_routing: {e}")))?,
            };
            Some(MoeConfig {
                num_experts,
                top_k,
                routing,
            })
        } else {
            None
        };
        let attn_experts = match present("btx_attention_experts") {
            None => None,
            Some(a) => Some(
                serde_json::from_value(a.clone())
                    .map_err(|e| cfg_err(format!("btx_attention_experts: {e}")))?,
            ),
        };
        if attn_experts.is_some() != (family == Family::BtxMoa) {
            return Err(cfg_err(format!(
                "btx_attention_experts goes with architecture {BTX_MOA_ARCH} (found {:?})",
                arch_name.or(model_type).unwrap_or("")
            )));
        }
        let expert_labels = match present("btx_experts") {
            None => vec![],
            Some(l) => serde_json::from_value(l.clone())
                .map_err(|e| cfg_err(format!("btx_experts must be a list of names: {e}")))?,
        };
        let vocab_size = need("vocab_size")?;
        let token_id = |key: &str| -> Result<Option<u32>> {
            let Some(ids) = token_ids(key)? else {
                return Ok(None);
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
            // A single id is range-checked by validate(), with the others.
            Ok(ids.first().copied())
        };
        // transformers passes pad_token_id to nn.Embedding as padding_idx: one index, never a
        // list. torch takes a negative one as counted from the end (vocab_size + id); btx keeps
        // ids as they index the table, so it asks for that spelling instead of guessing.
        let pad_token_id = match present("pad_token_id") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(i) if i < 0 && vocab_size as i64 + i >= 0 => {
                    return Err(cfg_err(format!(
                        "pad_token_id {i} is negative: transformers' nn.Embedding takes it as row {} of the vocabulary of {vocab_size}\nhint: write that row as pad_token_id ({}), or null for no padding token",
                        vocab_size as i64 + i,
                        vocab_size as i64 + i
                    )))
                }
                Some(i) if i < 0 => {
                    return Err(cfg_err(format!(
                        "pad_token_id {i} is outside the vocabulary of {vocab_size} (transformers cannot build nn.Embedding with this padding_idx)\nhint: set pad_token_id to a token of the vocabulary, or null"
                    )))
                }
                Some(i) if i <= u32::MAX as i64 => Some(i as u32),
                _ => {
                    return Err(cfg_err(format!(
                        "pad_token_id must be one token id (or null), found {v}"
                    )))
                }
            },
        };

        let cfg = ModelConfig {
            vocab_size,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: f64_of("rms_norm_eps")?.unwrap_or(family.default_rms_norm_eps()),
            rope_theta,
            max_position_embeddings: usize_of("max_position_embeddings")?
                .unwrap_or(family.default_max_positions()),
            tie_word_embeddings: bool_of("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: token_id("bos_token_id")?,
            eos_token_id: token_id("eos_token_id")?,
            pad_token_id,
            sliding_window,
            attention_dropout: f64_of("attention_dropout")?.unwrap_or(0.0),
            // Only Mixtral's router reads it.
            router_jitter_noise: if is_moe {
                f64_of("router_jitter_noise")?.unwrap_or(0.0)
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

    /// The `config.json` that `transformers` loads as `LlamaForCausalLM` or `MixtralForCausalLM`.
    /// Writes `rope_theta` both at top level (transformers 4.x) and in `rope_parameters` (5.x).
    pub fn to_hf_json(&self) -> Value {
        let mut m = Map::new();
        // A dense model with a sliding window is a Mistral: transformers' Llama ignores the key,
        // and would attend past the window.
        let (arch, model_type) = if self.attn_experts.is_some() {
            (BTX_MOA_ARCH, BTX_MOA_TYPE)
        } else if self.is_moe() {
            ("MixtralForCausalLM", "mixtral")
        } else if self.sliding_window.is_some() {
            ("MistralForCausalLM", "mistral")
        } else {
            ("LlamaForCausalLM", "llama")
        };
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
        m.insert(
            "rope_parameters".into(),
            json!({"rope_theta": self.rope_theta, "rope_type": "default"}),
        );
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
            m.insert("num_local_experts".into(), json!(moe.num_experts));
            m.insert("num_experts_per_tok".into(), json!(k));
            m.insert("router_aux_loss_coef".into(), json!(0.01));
            m.insert(
                "router_jitter_noise".into(),
                json!(self.router_jitter_noise),
            );
            m.insert("output_router_logits".into(), json!(false));
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
        if model_type != "llama" {
            // Written even when null: a Mistral without the key would get a 4096 window.
            m.insert("sliding_window".into(), json!(self.sliding_window));
        }
        Value::Object(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_hf_json()).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}
