//! Hugging Face `config.json` ⇄ validated [`ModelConfig`].
//!
//! The raw side accepts what `transformers` writes (4.x and 5.x spellings); the validated side is
//! the one source of truth for every shape in the model, the name map and the checkpoint writer.

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

mod hf;
mod rope;

pub use rope::{yarn_mscale, RopeScaling};

/// The decoder family: which weights a layer has beyond Llama's and which transformers classes
/// the model is written as. Mistral and Mixtral are Llama's math (plus, for Mistral, a sliding
/// window, which [`ModelConfig::sliding_window`] carries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama, Mistral, Mixtral (and btx's attention-experts layout).
    Llama,
    /// Qwen2 / Qwen2.5 (dense) and Qwen2-MoE: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3 and Qwen3-MoE: an RMSNorm over each query and key head before RoPE, and a
    /// `head_dim` of its own.
    Qwen3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
        }
    }
}

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

/// The label of the seed's FFN when a MiX adds it as an expert (`btx_experts`); no domain may
/// take the name in a MiX that adds the generalist.
pub const GENERALIST: &str = "generalist";

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

/// Why `name` cannot name an expert (in `btx_experts`, `btx mix --domains`, a recipe's
/// domains), if it cannot: a name is non-empty, without whitespace or control characters, and
/// never an integer, which `--drop`/`--without-expert` would otherwise have to guess between
/// a name and a position.
pub fn expert_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("an expert name must not be empty".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("an expert name must not contain spaces or control characters".into());
    }
    // Names become directory and stage names (experts/<name>, eval:expert:<name>).
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        return Some("an expert name must not contain a path separator or be . or ..".into());
    }
    // `+` joins a BTX method and the domain whose expert was added to it (`btx:v+law`).
    if name.contains('+') {
        return Some(
            "an expert name must not contain + (it joins a method and an added expert's domain)"
                .into(),
        );
    }
    if name.parse::<i128>().is_ok() {
        return Some(
            "an expert name must not be a number (numbers address experts by position)".into(),
        );
    }
    None
}

/// The validated model shape. Every tensor shape in the crate is derived from this.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    /// Biases on the query, key and value projections (Qwen2's; none on the output one).
    pub qkv_bias: bool,
    /// Qwen3's RMSNorm over each query and key head (weights `[head_dim]`, eps
    /// `rms_norm_eps`), applied after the projection and before RoPE.
    pub qk_norm: bool,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// RoPE's frequency scaling (`rope_scaling` / `rope_parameters.rope_type`).
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `pad_token_id`: transformers' Llama, Mistral and Mixtral build their embedding as
    /// `nn.Embedding(vocab, hidden, padding_idx=pad_token_id)`. That leaves the forward as it is
    /// but makes the lookup's gradient of that row zero (F.embedding's backward skips
    /// `padding_idx`), which btx's forward reproduces ([`crate::Model::embed_lookup`]).
    pub pad_token_id: Option<u32>,
    /// Keys beyond this window are masked by transformers (Mistral, Mixtral); btx does not
    /// implement the window and refuses longer sequences (see [`ModelConfig::check_positions`]).
    pub sliding_window: Option<usize>,
    /// Dropout on the attention probabilities while training (`attention_dropout`). It changes
    /// nothing at evaluation; btx's trainer does not implement it, so it refuses to train a
    /// model with a non-zero value rather than train it without (see
    /// [`ModelConfig::check_trainable`]).
    pub attention_dropout: f64,
    /// Mixtral's multiplicative noise on the router input while training
    /// (`router_jitter_noise`): likewise inert at evaluation and refused by the trainer.
    pub router_jitter_noise: f64,
    pub moe: Option<MoeConfig>,
    /// Attention experts (BAM); `None` is the usual single attention block.
    pub attn_experts: Option<AttnExpertsConfig>,
    /// What each FFN expert was made from, in expert order (`btx_experts`: the experts'
    /// domains, then `generalist`): what `btx prune-experts --drop` and `--without-expert` name.
    /// Empty when unknown (a Mixtral from elsewhere).
    pub expert_labels: Vec<String>,
}

/// A config error, for `validate`'s checks.
fn bad(msg: String) -> Result<()> {
    Err(ModelError::Config { msg })
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
            family: Family::Llama,
            qkv_bias: false,
            qk_norm: false,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim: hidden_size / num_heads.max(1),
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            sliding_window: None,
            attention_dropout: 0.0,
            router_jitter_noise: 0.0,
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
        self.validate_sizes()?;
        self.validate_values()?;
        self.validate_token_ids()?;
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
        self.validate_experts()
    }

    /// Sizes: none is 0, and their products fit in a usize.
    fn validate_sizes(&self) -> Result<()> {
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
        // Sizes whose products overflow (2^62 heads of 2^62 values) would wrap into small
        // shapes: refused before any shape is derived.
        let fits = [
            self.num_heads.checked_mul(self.head_dim),
            self.num_kv_heads.checked_mul(self.head_dim),
            self.vocab_size.checked_mul(self.hidden_size),
            self.intermediate_size.checked_mul(self.hidden_size),
        ]
        .iter()
        .all(|p| p.is_some_and(|n| n.checked_mul(self.hidden_size.max(1)).is_some()));
        if !fits {
            return bad(
                "the sizes in config.json overflow when multiplied into tensor shapes\nhint: check hidden_size, num_attention_heads, head_dim, intermediate_size and vocab_size"
                    .into(),
            );
        }
        Ok(())
    }

    /// The numbers that have no shape: RMSNorm's eps, RoPE, windows, dropout and jitter.
    fn validate_values(&self) -> Result<()> {
        // Values that make NaN or nonsense without failing anything on the way: a negative eps
        // makes RMSNorm divide by the root of a negative number, theta <= 0 makes RoPE's
        // frequencies NaN or infinite.
        for (name, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!(
                    "{name} must be a finite number > 0, got {v}\nhint: transformers' default is {}",
                    if name == "rms_norm_eps" { "1e-6" } else { "10000.0" }
                ));
            }
        }
        self.rope_scaling
            .validate()
            .map_err(|msg| ModelError::Config { msg })?;
        if self.attn_experts.is_some() && (self.qkv_bias || self.qk_norm) {
            return bad(format!(
                "attention experts are not supported for the {} family (its attention has {})",
                self.family.name(),
                if self.qkv_bias { "biases" } else { "q/k norms" }
            ));
        }
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings must be > 0".into());
        }
        if self.sliding_window == Some(0) {
            return bad(
                "sliding_window must be > 0\nhint: null (or no key, for Mixtral) means no window"
                    .into(),
            );
        }
        if !(self.attention_dropout.is_finite() && (0.0..=1.0).contains(&self.attention_dropout)) {
            return bad(format!(
                "attention_dropout must be in [0, 1], got {}",
                self.attention_dropout
            ));
        }
        if !(self.router_jitter_noise.is_finite() && self.router_jitter_noise >= 0.0) {
            return bad(format!(
                "router_jitter_noise must be a finite number >= 0, got {}",
                self.router_jitter_noise
            ));
        }
        Ok(())
    }

    /// The special tokens are in the vocabulary.
    fn validate_token_ids(&self) -> Result<()> {
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id {
                if id as usize >= self.vocab_size {
                    // The pad id is the embedding's padding_idx in transformers, which fails to
                    // build the model with one outside the table.
                    let also = if name == "pad_token_id" {
                        " (transformers cannot build nn.Embedding with this padding_idx)"
                    } else {
                        ""
                    };
                    return bad(format!(
                        "{name} {id} is outside the vocabulary 0..{}{also}\nhint: is vocab_size right for this tokenizer?",
                        self.vocab_size
                    ));
                }
            }
        }
        Ok(())
    }

    /// The FFN and attention experts, and the names of the experts.
    fn validate_experts(&self) -> Result<()> {
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
        // Names are what `--drop` and `--without-expert` match, so each must be a name (never
        // a number, which would read as a position) and mean one expert. A name repeated in
        // one run is the chunks of one split FFN; the same name again later is a duplicate.
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.expert_labels.iter().enumerate() {
            if let Some(p) = expert_name_problem(l) {
                return bad(format!(
                    "btx_experts[{i}] {l:?}: {p}\nhint: rename it in config.json (e.g. \"expert-{i}\"), or remove btx_experts to address the experts by number"
                ));
            }
            if i > 0 && self.expert_labels[i - 1] == *l {
                continue;
            }
            if !seen.insert(l) {
                return bad(format!(
                    "btx_experts names {l:?} for two different experts ({:?})\nhint: give each expert its own name in config.json",
                    self.expert_labels
                ));
            }
        }
        Ok(())
    }

    /// The positions btx computes as transformers does: at most `max_position_embeddings`,
    /// and at most `sliding_window` where config.json sets one (btx does not implement the
    /// window; within it, the window masks nothing).
    pub fn max_positions(&self) -> usize {
        self.sliding_window
            .map_or(self.max_position_embeddings, |w| {
                w.min(self.max_position_embeddings)
            })
    }

    /// Refuses a sequence of `n` positions that btx cannot compute as transformers does: past
    /// `sliding_window` (where transformers masks keys btx would attend to) or past
    /// `max_position_embeddings`. `what` names the request in the message (e.g.
    /// "train.seq_len"), `hint` says what to change.
    pub fn check_positions(&self, n: usize, what: &str, hint: &str) -> Result<()> {
        if let Some(w) = self.sliding_window {
            if n > w {
                return Err(ModelError::refused(
                    format!(
                        "{what} needs {n} positions, more than the model's sliding_window of {w}, which btx does not implement (past it, transformers masks keys that btx would attend to)"
                    ),
                    hint,
                ));
            }
        }
        if n > self.max_position_embeddings {
            return Err(ModelError::refused(
                format!(
                    "{what} needs {n} positions, more than the model's max_position_embeddings of {}",
                    self.max_position_embeddings
                ),
                hint,
            ));
        }
        Ok(())
    }

    /// Refuses to train what btx's trainer would train differently from what config.json
    /// asks: dropout on the attention probabilities and Mixtral's router jitter are
    /// training-time noise btx does not implement (neither changes an evaluation).
    pub fn check_trainable(&self) -> Result<()> {
        for (key, v) in [
            ("attention_dropout", self.attention_dropout),
            ("router_jitter_noise", self.router_jitter_noise),
        ] {
            if v != 0.0 {
                return Err(ModelError::refused(
                    format!(
                        "config.json has {key} = {v}, training-time noise that btx's trainer does not implement"
                    ),
                    format!("set {key} to 0.0 in the model's config.json to train without it"),
                ));
            }
        }
        Ok(())
    }

    /// The experts named by `names`, sorted and deduplicated; a name matches every expert
    /// carrying that label (the chunks of a split FFN). A model with `btx_experts` is addressed
    /// by those names only; numbers are positions only where no name could be meant (a model
    /// without labels, e.g. a Mixtral from elsewhere).
    pub fn expert_indices(&self, names: &[String]) -> Result<Vec<usize>> {
        let n = self.num_experts();
        if self.moe.is_none() {
            return Err(ModelError::ExpertName {
                msg: "a dense model has no experts to name".into(),
                hint: "name the experts of a MoE model (from btx mix, or finetuned from one)"
                    .into(),
            });
        }
        let mut out = vec![];
        for name in names {
            let hits: Vec<usize> = if self.expert_labels.is_empty() {
                match name.parse::<usize>() {
                    Ok(i) if i < n => vec![i],
                    _ => vec![],
                }
            } else {
                (0..n).filter(|&i| self.expert_labels[i] == *name).collect()
            };
            if hits.is_empty() {
                let (msg, hint) = if self.expert_labels.is_empty() {
                    (
                        format!(
                            "no expert {name:?}: this model names none (no btx_experts in config.json)"
                        ),
                        format!("address its experts by number, 0 to {}", n - 1),
                    )
                } else {
                    let mut known = self.expert_labels.clone();
                    known.dedup();
                    (
                        format!("no expert {name:?}: the model's experts are {known:?}"),
                        if name.parse::<i128>().is_ok() {
                            "a model whose experts have names is addressed by name, never by number"
                                .to_string()
                        } else {
                            "use one of those names".to_string()
                        },
                    )
                };
                return Err(ModelError::ExpertName { msg, hint });
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
            return Err(ModelError::ExpertName {
                msg: format!("removing experts {drop:?} would leave none of the {n}"),
                hint: "keep at least one expert".into(),
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
        let extras = if self.qkv_bias {
            self.q_dim() + 2 * self.kv_dim()
        } else {
            0
        } + if self.qk_norm { 2 * self.head_dim } else { 0 };
        let attn = match &self.attn_experts {
            None => d * self.q_dim() * 2 + d * self.kv_dim() * 2 + extras,
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
