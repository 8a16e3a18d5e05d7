//! `[model.init]`: the shape of a freshly initialised model, as written in configs and recipes.
//! The vocabulary size comes from the tokenizer, never from here.

use serde::{Deserialize, Serialize};

use crate::config::{Family, ModelConfig, MoeConfig, Routing};
use crate::error::Result;

fn d_hidden() -> usize {
    256
}
fn d_ffn() -> usize {
    704
}
fn d_layers() -> usize {
    4
}
fn d_heads() -> usize {
    4
}
fn d_theta() -> f64 {
    10000.0
}
fn d_eps() -> f64 {
    1e-5
}
fn d_maxpos() -> usize {
    2048
}
fn d_family() -> Family {
    Family::Llama
}
fn is_llama(f: &Family) -> bool {
    *f == Family::Llama
}
fn d_topk() -> usize {
    crate::config::DEFAULT_TOP_K
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The decoder family: "llama" (default), "qwen2" (q/k/v biases, zeros at init) or
    /// "qwen3" (per-head q/k norms); a MoE of the family is written as its MoE class.
    #[serde(default = "d_family", skip_serializing_if = "is_llama")]
    pub family: Family,
    /// Model width. Default 256.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// SwiGLU inner width. Default 704.
    #[serde(default = "d_ffn")]
    pub intermediate_size: usize,
    /// Decoder layers. Default 4.
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    /// Query heads. Default 4.
    #[serde(default = "d_heads")]
    pub num_heads: usize,
    /// Key/value heads (GQA). Default = num_heads.
    #[serde(default)]
    pub num_kv_heads: Option<usize>,
    /// Per-head width. Default hidden_size / num_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RoPE base. Default 10000.
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    /// Default 1e-5.
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    /// Share the embedding matrix with the LM head. Default false.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Default 2048.
    #[serde(default = "d_maxpos")]
    pub max_position_embeddings: usize,
    /// 0 (default) = dense Llama; otherwise a Mixtral with this many experts per layer.
    #[serde(default)]
    pub num_experts: usize,
    /// Experts per token for top-k routing. Default 2.
    #[serde(default = "d_topk")]
    pub top_k: usize,
    /// Routing of a MoE: `{mode = "top-k"}` (default), `{mode = "switch", capacity_factor = 1.5}`,
    /// `{mode = "soft"}`, `{mode = "sample-top1", anneal_rate = 1e-4, min_tau = 0.5}`.
    #[serde(default)]
    pub routing: Option<Routing>,
}

impl Default for ModelSpec {
    fn default() -> Self {
        toml_default()
    }
}

fn toml_default() -> ModelSpec {
    ModelSpec {
        family: d_family(),
        hidden_size: d_hidden(),
        intermediate_size: d_ffn(),
        num_layers: d_layers(),
        num_heads: d_heads(),
        num_kv_heads: None,
        head_dim: None,
        rope_theta: d_theta(),
        rms_norm_eps: d_eps(),
        tie_word_embeddings: false,
        max_position_embeddings: d_maxpos(),
        num_experts: 0,
        top_k: d_topk(),
        routing: None,
    }
}

impl ModelSpec {
    /// Every value of `[model.init]` that cannot make a model, named by its key.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| {
            Err(crate::ModelError::Config {
                msg: format!("[model.init] {msg}"),
            })
        };
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("{key} must be > 0"));
            }
        }
        for (key, v) in [
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == Some(0) {
                return bad(format!("{key} must be > 0"));
            }
        }
        for (key, v, default) in [
            ("rms_norm_eps", self.rms_norm_eps, d_eps()),
            ("rope_theta", self.rope_theta, d_theta()),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!(
                    "{key} must be a finite number > 0, got {v}\nhint: the default is {default:e}"
                ));
            }
        }
        if self.num_experts == 0 && self.routing.is_some() {
            return bad(
                "routing is set but num_experts is 0 (a dense model does not route)\nhint: set num_experts, or drop routing".into(),
            );
        }
        if self.num_experts > 0 && (self.top_k == 0 || self.top_k > self.num_experts) {
            return bad(format!(
                "top_k {} must be in 1..={} (num_experts)",
                self.top_k, self.num_experts
            ));
        }
        if let Some(r) = &self.routing {
            if let Err(e) = r.validate() {
                return bad(format!("routing: {e}"));
            }
        }
        Ok(())
    }

    pub fn to_config(&self, vocab_size: usize, eos: Option<u32>) -> Result<ModelConfig> {
        self.validate()?;
        if self.head_dim.is_none()
            && (self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads))
        {
            return Err(crate::ModelError::Config {
                msg: format!(
                    "hidden_size {} is not a multiple of num_heads {} (set head_dim to use another head size)",
                    self.hidden_size, self.num_heads
                ),
            });
        }
        let mut c = ModelConfig::llama(
            vocab_size,
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads.unwrap_or(self.num_heads),
            self.max_position_embeddings,
        );
        if let Some(h) = self.head_dim {
            c.head_dim = h;
        }
        c.family = self.family;
        c.qkv_bias = self.family == Family::Qwen2;
        c.qk_norm = self.family == Family::Qwen3;
        c.rope_theta = self.rope_theta;
        c.rms_norm_eps = self.rms_norm_eps;
        c.tie_word_embeddings = self.tie_word_embeddings;
        c.eos_token_id = eos;
        c.bos_token_id = eos;
        if self.num_experts > 0 {
            c.moe = Some(MoeConfig {
                num_experts: self.num_experts,
                top_k: self.top_k,
                routing: self.routing.clone().unwrap_or(Routing::TopK),
            });
        }
        c.validate()?;
        Ok(c)
    }
}
