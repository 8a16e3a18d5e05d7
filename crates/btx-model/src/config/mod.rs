//! Hugging Face `config.json` ⇄ validated [`ModelConfig`].
//!
//! The raw side accepts what `transformers` writes (4.x and 5.x spellings); the validated side is
//! the one source of truth for every shape in the model, the name map and the checkpoint writer.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

mod hf;

/// How a MoE layer routes tokens to experts. Mixtral itself only knows top-k; the other modes are
/// the BTX paper's variants and are recorded in `config.json` under the `btx_routing` key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Routing {
    /// `softmax(TopK(W x))`, Mixtral's routing; `k` is `MoeConfig::top_k`.
    TopK,
    /// Top-1 with a per-expert capacity of `capacity_factor * tokens / experts`; overflow tokens
    /// skip the FFN (residual only).
    Switch { capacity_factor: f64 },
    /// `softmax(W x)` over all experts; every expert computes every token.
    Soft,
    /// Gumbel-softmax sample, keep the largest entry; `tau = max(min_tau, exp(-anneal_rate * step))`;
    /// argmax at inference; the first MoE layer routes softly.
    SampleTop1 { anneal_rate: f64, min_tau: f64 },
}

impl Routing {
    /// Refuses parameters that cannot route: a capacity factor that is not a finite number > 0,
    /// an anneal rate < 0 or a minimum temperature <= 0 (or any NaN).
    pub fn validate(&self) -> std::result::Result<(), String> {
        match *self {
            Routing::Switch { capacity_factor } if !(capacity_factor.is_finite() && capacity_factor > 0.0) => {
                Err(format!("switch routing needs capacity_factor > 0, got {capacity_factor}"))
            }
            Routing::SampleTop1 { anneal_rate, min_tau }
                if !(anneal_rate.is_finite() && anneal_rate >= 0.0 && min_tau.is_finite() && min_tau > 0.0) =>
            {
                Err(format!(
                    "sample-top1 routing needs anneal_rate >= 0 and min_tau > 0, got {anneal_rate} and {min_tau}"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The routing a CLI flag names, with the paper's settings for what the name leaves open
    /// (a switch capacity factor of `capacity_factor`; sample-top1 annealing at 1e-4 down to
    /// a temperature of 0.5).
    pub fn from_name(name: &str, capacity_factor: f64) -> std::result::Result<Self, String> {
        Ok(match name {
            "top-k" | "topk" => Routing::TopK,
            "switch" => Routing::Switch { capacity_factor },
            "soft" => Routing::Soft,
            "sample-top1" => Routing::SampleTop1 {
                anneal_rate: 1e-4,
                min_tau: 0.5,
            },
            other => {
                return Err(format!(
                    "unknown routing {other:?} (top-k, switch, soft, sample-top1)"
                ))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Routing::TopK => "top-k",
            Routing::Switch { .. } => "switch",
            Routing::Soft => "soft",
            Routing::SampleTop1 { .. } => "sample-top1",
        }
    }
}

/// BAM's attention experts (Branch-Attend-Mix, beyond Mixtral): every layer's attention is a
/// soft mixture of `num_experts` attention blocks weighted by a per-layer router; with
/// `shared_kv` the experts share one key/value projection (and one KV cache) and keep their own
/// query and output projections. Recorded in `config.json` under `btx_attention_experts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttnExpertsConfig {
    pub num_experts: usize,
    pub shared_kv: bool,
}

impl AttnExpertsConfig {
    /// Key/value projections per layer: one when shared, else one per expert.
    pub fn kv_sets(&self) -> usize {
        if self.shared_kv {
            1
        } else {
            self.num_experts
        }
    }
}

/// The architecture name of a model with attention experts: btx's own layout (docs/formats.md),
/// which `transformers` does not load.
pub const BTX_MOA_ARCH: &str = "BtxMoaForCausalLM";
pub const BTX_MOA_TYPE: &str = "btx_moa";

/// Experts per token when nothing says otherwise (Mixtral's, and the paper's).
pub const DEFAULT_TOP_K: usize = 2;

/// A MoE's resolved shape, as `config.json` records it (made by `btx_mix::MixSpec::resolve`
/// for a MiX, or from `[model.init]` for a MoE trained from scratch).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    /// Experts per token for top-k routing (Mixtral's `num_experts_per_tok`).
    pub top_k: usize,
    pub routing: Routing,
}

/// The validated model shape. Every tensor shape in the crate is derived from this.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub sliding_window: Option<usize>,
    pub moe: Option<MoeConfig>,
    /// Attention experts (BAM); `None` is the usual single attention block.
    pub attn_experts: Option<AttnExpertsConfig>,
    /// What each FFN expert was made from, in expert order (`btx_experts`: the experts'
    /// domains, then `generalist`): what `btx prune-experts --drop` and `--without-expert` name.
    /// Empty when unknown (a Mixtral from elsewhere).
    pub expert_labels: Vec<String>,
}

impl ModelConfig {
    /// A Llama-shaped config with the usual defaults (head_dim = hidden / heads, eps 1e-5).
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        max_position_embeddings: usize,
    ) -> Self {
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            sliding_window: None,
            moe: None,
            attn_experts: None,
            expert_labels: vec![],
        }
    }

    pub fn is_moe(&self) -> bool {
        self.moe.is_some()
    }

    pub fn num_experts(&self) -> usize {
        self.moe.as_ref().map_or(1, |m| m.num_experts)
    }

    /// Checks the relations between sizes that the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(ModelError::Config { msg });
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if let Some(m) = &self.moe {
            if m.num_experts == 0 {
                return bad("num_local_experts must be > 0".into());
            }
            if m.top_k == 0 || m.top_k > m.num_experts {
                return bad(format!(
                    "num_experts_per_tok ({}) must be in 1..={} (num_local_experts)",
                    m.top_k, m.num_experts
                ));
            }
            m.routing
                .validate()
                .map_err(|msg| ModelError::Config { msg })?;
        }
        if let Some(a) = &self.attn_experts {
            if a.num_experts == 0 {
                return bad("btx_attention_experts.num_experts must be > 0".into());
            }
        }
        if !self.expert_labels.is_empty() && self.expert_labels.len() != self.num_experts() {
            return bad(format!(
                "btx_experts names {} experts but the model has {}",
                self.expert_labels.len(),
                self.num_experts()
            ));
        }
        Ok(())
    }

    /// The experts named by `names` (labels from `btx_experts`, or expert numbers), sorted and
    /// deduplicated; a name matches every expert carrying that label (the chunks of a split FFN).
    pub fn expert_indices(&self, names: &[String]) -> Result<Vec<usize>> {
        let n = self.num_experts();
        if self.moe.is_none() {
            return Err(ModelError::Config {
                msg: "a dense model has no experts to remove".into(),
            });
        }
        let mut out = vec![];
        for name in names {
            let hits: Vec<usize> = match name.parse::<usize>() {
                Ok(i) if i < n => vec![i],
                _ => (0..n)
                    .filter(|&i| self.expert_labels.get(i) == Some(name))
                    .collect(),
            };
            if hits.is_empty() {
                let known = if self.expert_labels.is_empty() {
                    format!(
                        "this model names none (no btx_experts in config.json): use numbers 0..{n}"
                    )
                } else {
                    format!("it has {:?} (or numbers 0..{n})", self.expert_labels)
                };
                return Err(ModelError::Config {
                    msg: format!("no expert {name:?}: {known}"),
                });
            }
            out.extend(hits);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The config once the experts `drop` are removed (FFN experts, and attention experts,
    /// which follow the same order): top-k keeps at most the experts left.
    pub fn without_experts(&self, drop: &[usize]) -> Result<Self> {
        let n = self.num_experts();
        let left = n - drop.iter().filter(|&&i| i < n).count();
        if left == 0 {
            return Err(ModelError::Config {
                msg: format!("removing {drop:?} would leave no expert of {n}"),
            });
        }
        if let Some(a) = &self.attn_experts {
            if a.num_experts != n {
                return Err(ModelError::Config {
                    msg: format!(
                        "{} attention experts do not pair with {n} FFN experts, so an expert cannot be removed from both",
                        a.num_experts
                    ),
                });
            }
        }
        let mut c = self.clone();
        if let Some(m) = &mut c.moe {
            m.num_experts = left;
            m.top_k = m.top_k.min(left);
        }
        if let Some(a) = &mut c.attn_experts {
            a.num_experts = left;
        }
        if !c.expert_labels.is_empty() {
            c.expert_labels = (0..n)
                .filter(|i| !drop.contains(i))
                .map(|i| self.expert_labels[i].clone())
                .collect();
        }
        c.validate()?;
        Ok(c)
    }

    /// Inference FLOPs of one token at `context` positions: 2 per active matmul weight (the
    /// embedding lookup is not a matmul; a tied head is) plus the attention products (QK^T and
    /// PV, 2 x q_dim x context each, per layer and per attention expert).
    pub fn infer_flops_per_token(&self, context: usize) -> f64 {
        // Training counts a causal window of T (mean context T/2) at three passes.
        self.train_flops_per_token(2 * context) / 3.0
    }

    /// Floats of KV cache per token (all layers): keys and values of every KV projection.
    pub fn kv_cache_floats_per_token(&self) -> usize {
        let sets = self.attn_experts.map_or(1, |a| a.kv_sets());
        2 * self.num_layers * sets * self.kv_dim()
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Number of parameters of the whole model.
    pub fn total_params(&self) -> usize {
        self.param_count(self.num_experts())
    }

    /// Parameters touched by one token: only `top_k` experts per MoE layer (all of them for soft
    /// routing).
    pub fn active_params(&self) -> usize {
        let active = match &self.moe {
            None => 1,
            Some(m) => match m.routing {
                Routing::TopK => m.top_k,
                Routing::Soft => m.num_experts,
                Routing::Switch { .. } | Routing::SampleTop1 { .. } => 1,
            },
        };
        self.param_count(active)
    }

    fn param_count(&self, experts: usize) -> usize {
        let d = self.hidden_size;
        // Attention experts route softly: every one of them is active for every token.
        let attn = match &self.attn_experts {
            None => d * self.q_dim() * 2 + d * self.kv_dim() * 2,
            Some(a) => {
                a.num_experts * (d * self.q_dim() * 2 + d) + a.kv_sets() * d * self.kv_dim() * 2
            }
        };
        let ffn = 3 * d * self.intermediate_size * experts;
        let router = self.moe.as_ref().map_or(0, |m| m.num_experts * d);
        let per_layer = attn + ffn + router + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_layers * per_layer + d + head
    }

    /// Training FLOPs per token (forward + backward): 6 x active params that do matmuls, plus
    /// attention scores and values (causal, so half of the T x T block), as in the PaLM appendix.
    pub fn train_flops_per_token(&self, seq_len: usize) -> f64 {
        let matmul_params = self.active_params() - self.vocab_size * self.hidden_size
            + if self.tie_word_embeddings {
                self.vocab_size * self.hidden_size
            } else {
                0
            };
        let attn = 6.0
            * self.num_layers as f64
            * self.q_dim() as f64
            * seq_len as f64
            * self.attn_experts.map_or(1, |a| a.num_experts) as f64;
        6.0 * matmul_params as f64 + attn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_both_rope_spellings() {
        let base = r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2"#;
        let a = ModelConfig::from_hf_json(&format!("{base},\"rope_theta\":5e5}}")).unwrap();
        let b = ModelConfig::from_hf_json(&format!(
            "{base},\"rope_parameters\":{{\"rope_theta\":5e5,\"rope_type\":\"default\"}}}}"
        ))
        .unwrap();
        assert_eq!(a.rope_theta, 5e5);
        assert_eq!(a, b);
        assert_eq!(a.head_dim, 4);
        assert_eq!(a.num_kv_heads, 2);
    }

    #[test]
    fn round_trips_mixtral_with_routing_mode() {
        let mut c = ModelConfig::llama(32, 16, 24, 2, 4, 2, 64);
        c.moe = Some(MoeConfig {
            num_experts: 4,
            top_k: 2,
            routing: Routing::Switch {
                capacity_factor: 1.5,
            },
        });
        let text = c.to_hf_json().to_string();
        let back = ModelConfig::from_hf_json(&text).unwrap();
        assert_eq!(
            back.moe.as_ref().unwrap().routing,
            c.moe.as_ref().unwrap().routing
        );
        // Switch exports as Mixtral top-1.
        assert_eq!(back.moe.unwrap().top_k, 1);
    }

    #[test]
    fn rejects_bad_shapes_with_key_names() {
        let e = ModelConfig::from_hf_json(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
            "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = ModelConfig::from_hf_json(r#"{"architectures":["GPT2LMHeadModel"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPT2LMHeadModel"), "{e}");
    }

    #[test]
    fn param_counts_match_a_hand_count() {
        let c = ModelConfig::llama(256, 64, 176, 2, 4, 2, 128);
        // embed + head + per layer (q,o: 64x64; k,v: 32x64; mlp 3x64x176; 2 norms) + final norm
        let per_layer = 2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 176 + 2 * 64;
        assert_eq!(c.total_params(), 2 * 256 * 64 + 2 * per_layer + 64);
        assert_eq!(c.active_params(), c.total_params());
    }
}
