//! Reading and writing Hugging Face's `config.json`: what `transformers` writes (4.x and 5.x
//! spellings, Llama and Mixtral) and btx's own keys (`btx_routing`, `btx_attention_experts`,
//! `btx_experts`), into a validated [`ModelConfig`] and back.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{ModelConfig, MoeConfig, Routing, BTX_MOA_ARCH, BTX_MOA_TYPE};
use crate::error::{ModelError, Result};

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

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::Config {
            msg: format!("not valid JSON: {e}"),
        })?;
        let obj = v.as_object().ok_or_else(|| ModelError::Config {
            msg: "config.json must be a JSON object".into(),
        })?;
        let arch = obj
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .or_else(|| obj.get("model_type").and_then(|m| m.as_str()))
            .unwrap_or("");
        let is_moe = match arch {
            "LlamaForCausalLM" | "llama" | "MistralForCausalLM" | "mistral" => false,
            "MixtralForCausalLM" | "mixtral" => true,
            BTX_MOA_ARCH | BTX_MOA_TYPE => obj.contains_key("num_local_experts"),
            other => {
                return Err(ModelError::Config {
                    msg: format!(
                        "unsupported architecture {other:?}; btx reads LlamaForCausalLM, MixtralForCausalLM and its own {BTX_MOA_ARCH}"
                    ),
                })
            }
        };
        let usize_of = |key: &str| -> Result<Option<usize>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(|x| Some(x as usize))
                    .ok_or_else(|| ModelError::Config {
                        msg: format!("{key} must be a non-negative integer, found {v}"),
                    }),
            }
        };
        let need = |key: &str| -> Result<usize> {
            usize_of(key)?.ok_or_else(|| ModelError::Config {
                msg: format!("missing required key {key:?}"),
            })
        };
        let f64_of = |v: Option<&Value>| v.and_then(|x| x.as_f64());
        let token_id = |key: &str| -> Option<u32> {
            match obj.get(key) {
                Some(Value::Number(n)) => n.as_u64().map(|x| x as u32),
                Some(Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
                _ => None,
            }
        };
        let flag = |key: &str| obj.get(key).and_then(|x| x.as_bool()).unwrap_or(false);

        if let Some(act) = obj.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                return Err(ModelError::Config {
                    msg: format!("hidden_act {act:?} is not supported (only silu / SwiGLU)"),
                });
            }
        }
        if flag("attention_bias") || flag("mlp_bias") {
            return Err(ModelError::Config {
                msg: "attention_bias / mlp_bias = true is not supported".into(),
            });
        }
        // Rope: transformers 5 nests it in rope_parameters; 4.x has rope_theta (+ rope_scaling).
        let rope_params = obj.get("rope_parameters").and_then(|r| r.as_object());
        let rope_theta = f64_of(rope_params.and_then(|r| r.get("rope_theta")))
            .or_else(|| f64_of(obj.get("rope_theta")))
            .unwrap_or(10000.0);
        let rope_type = rope_params
            .and_then(|r| r.get("rope_type"))
            .or_else(|| {
                obj.get("rope_scaling")
                    .and_then(|s| s.as_object())
                    .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
            })
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        if rope_type != "default" {
            return Err(ModelError::Config {
                msg: format!(
                    "rope type {rope_type:?} is not supported (only the default rotate-half RoPE)"
                ),
            });
        }

        let hidden_size = need("hidden_size")?;
        let num_heads = need("num_attention_heads")?;
        let head_dim = usize_of("head_dim")?.unwrap_or(hidden_size / num_heads.max(1));
        let moe = if is_moe {
            let num_experts = need("num_local_experts")?;
            let top_k = need("num_experts_per_tok")?;
            let routing = match obj.get("btx_routing") {
                None | Some(Value::Null) => Routing::TopK,
                Some(r) => serde_json::from_value(r.clone()).map_err(|e| ModelError::Config {
                    msg: format!("btx_routing: {e}"),
                })?,
            };
            Some(MoeConfig {
                num_experts,
                top_k,
                routing,
            })
        } else {
            None
        };
        let attn_experts = match obj.get("btx_attention_experts") {
            None | Some(Value::Null) => None,
            Some(a) => Some(
                serde_json::from_value(a.clone()).map_err(|e| ModelError::Config {
                    msg: format!("btx_attention_experts: {e}"),
                })?,
            ),
        };
        if attn_experts.is_some() != matches!(arch, BTX_MOA_ARCH | BTX_MOA_TYPE) {
            return Err(ModelError::Config {
                msg: format!(
                    "btx_attention_experts goes with architecture {BTX_MOA_ARCH} (found {arch:?})"
                ),
            });
        }
        let expert_labels = match obj.get("btx_experts") {
            None | Some(Value::Null) => vec![],
            Some(l) => serde_json::from_value(l.clone()).map_err(|e| ModelError::Config {
                msg: format!("btx_experts must be a list of names: {e}"),
            })?,
        };
        let cfg = ModelConfig {
            vocab_size: need("vocab_size")?,
            hidden_size,
            intermediate_size: need("intermediate_size")?,
            num_layers: need("num_hidden_layers")?,
            num_heads,
            num_kv_heads: usize_of("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: f64_of(obj.get("rms_norm_eps")).unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: usize_of("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: flag("tie_word_embeddings"),
            bos_token_id: token_id("bos_token_id"),
            eos_token_id: token_id("eos_token_id"),
            sliding_window: usize_of("sliding_window")?,
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
        let (arch, model_type) = if self.attn_experts.is_some() {
            (BTX_MOA_ARCH, BTX_MOA_TYPE)
        } else if self.is_moe() {
            ("MixtralForCausalLM", "mixtral")
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
        m.insert("attention_dropout".into(), json!(0.0));
        m.insert("initializer_range".into(), json!(0.02));
        m.insert("use_cache".into(), json!(true));
        m.insert("dtype".into(), json!("float32"));
        m.insert("torch_dtype".into(), json!("float32"));
        m.insert("bos_token_id".into(), json!(self.bos_token_id));
        m.insert("eos_token_id".into(), json!(self.eos_token_id));
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
            m.insert("router_jitter_noise".into(), json!(0.0));
            m.insert("output_router_logits".into(), json!(false));
            m.insert("sliding_window".into(), json!(self.sliding_window));
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
        } else {
            m.insert("attention_bias".into(), json!(false));
            m.insert("mlp_bias".into(), json!(false));
            m.insert("pretraining_tp".into(), json!(1));
        }
        Value::Object(m)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_hf_json()).expect("json");
        std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
    }
}
