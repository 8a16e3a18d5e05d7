//! Memory estimates of a training step and an evaluation pass, from the shapes alone, and the
//! refusal of requests that clearly cannot fit in the machine: `train.batch_size = 1e8` would
//! otherwise try to allocate hundreds of gigabytes and die in the allocator, or swap for hours.
//!
//! The estimates count what the code materialises and keeps (f32 throughout), and leave out
//! what they are unsure of, so they err low: a refusal means the request cannot fit.

use crate::config::{ModelConfig, Routing};
use crate::error::{ModelError, Result};

const F32: f64 = 4.0;

use btx_core::memory::gib;
pub use btx_core::memory::machine_memory;

/// FFN experts each token passes through (1 for a dense model).
fn active_experts(cfg: &ModelConfig) -> f64 {
    match &cfg.moe {
        None => 1.0,
        Some(m) => match m.routing {
            Routing::TopK => m.top_k as f64,
            Routing::Soft => m.num_experts as f64,
            Routing::Switch { .. } | Routing::SampleTop1 { .. } => 1.0,
        },
    }
}

/// Floats one token keeps per layer through a forward that a backward will need: the residual
/// stream and both norms' outputs, queries, keys and values, the attention output, the causal
/// attention probabilities (the fused kernel keeps the whole `T x T` block per head), and the
/// SwiGLU's gate, up and product for each expert the token visits.
fn per_token_layer_floats(cfg: &ModelConfig, seq_len: usize) -> f64 {
    let d = cfg.hidden_size as f64;
    let attn_sets = cfg.attn_experts.map_or(1, |a| a.num_experts) as f64;
    let qkv = (2 * cfg.q_dim() + 2 * cfg.kv_dim()) as f64 * attn_sets;
    let probs = (cfg.num_heads * seq_len) as f64 * attn_sets;
    let ffn = 3.0 * cfg.intermediate_size as f64 * active_experts(cfg);
    3.0 * d + qkv + probs + ffn
}

/// Bytes of one training step on micro-batches of `batch x seq_len`: every weight, a gradient
/// and AdamW's two moments for each of the `trainable` parameters, and the activations of one
/// micro-batch (micro-batches of an accumulated step run one after the other). The head's
/// cross-entropy runs in blocks of about 16 MB and never holds the `[B*T, V]` logits
/// (`loss::lm_head_loss`), so only its `[B*T, d]` input and gradient count.
pub fn train_step_bytes(cfg: &ModelConfig, batch: usize, seq_len: usize, trainable: usize) -> f64 {
    let tokens = batch as f64 * seq_len as f64;
    let params = cfg.total_params() as f64 + 3.0 * trainable as f64;
    let acts = tokens
        * (cfg.num_layers as f64 * per_token_layer_floats(cfg, seq_len)
            + 2.0 * cfg.hidden_size as f64);
    (params + acts) * F32
}

/// Bytes of one evaluation forward over `batch x seq_len` tokens without gradients: the
/// weights, the `[B*T, V]` logits and their log-softmax (evaluation materialises both), and
/// one layer's activations at a time.
pub fn eval_forward_bytes(cfg: &ModelConfig, batch: usize, seq_len: usize) -> f64 {
    let tokens = batch as f64 * seq_len as f64;
    let logits = 2.0 * tokens * cfg.vocab_size as f64;
    let layer = tokens * per_token_layer_floats(cfg, seq_len);
    (cfg.total_params() as f64 + logits + layer) * F32
}

/// Bytes of batched KV-cache decoding of `batch` rows up to `ctx` positions each: the weights,
/// each row's KV cache at full length, its `[V]` logits and their probabilities, and one
/// layer's activations of a prompt token.
pub fn generate_bytes(cfg: &ModelConfig, batch: usize, ctx: usize) -> f64 {
    let per_row = ctx as f64 * cfg.kv_cache_floats_per_token() as f64
        + 2.0 * cfg.vocab_size as f64
        + per_token_layer_floats(cfg, ctx);
    (cfg.total_params() as f64 + batch as f64 * per_row) * F32
}

/// Refuses `estimate` bytes for `what` when it is more than `total`, the machine's memory
/// ([`machine_memory`]; a caller that cannot read it skips the check and says so in its log).
pub fn check_fits(estimate: f64, total: u64, what: &str, hint: &str) -> Result<()> {
    if estimate > total as f64 {
        return Err(ModelError::refused(
            format!(
                "{what} needs at least {} of memory by its shapes, but this machine has {}",
                gib(estimate),
                gib(total as f64)
            ),
            hint,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelSpec;

    /// The estimates grow with the batch as the code's allocations do, stay small for the demo
    /// shapes, and refuse what no machine holds without allocating any of it.
    #[test]
    fn estimates_refuse_only_what_cannot_fit() {
        let s = ModelSpec::default().to_config(4096, Some(0)).unwrap();
        let demo = train_step_bytes(&s, 8, 256, s.total_params());
        // Preset S: 4 x 10M floats of weights and optimizer state, ~100 MB of activations.
        assert!(
            demo > 4.0 * 4.0 * s.total_params() as f64 && demo < 1e9,
            "{demo}"
        );
        let huge = train_step_bytes(&s, 100_000_000, 256, s.total_params());
        assert!(huge > 1e15, "{huge}");
        assert!(check_fits(demo, 8 << 30, "x", "y").is_ok());
        let e = check_fits(huge, 8 << 30, "a step", "lower it")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("8.0 GiB") && e.contains("\nhint: lower it"),
            "{e}"
        );
        // Evaluation holds the [B*T, V] logits twice.
        let ev = eval_forward_bytes(&s, 8, 256);
        assert!(ev > 2.0 * 8.0 * 256.0 * 4096.0 * 4.0, "{ev}");
        assert!(machine_memory().is_none_or(|m| m > 0));
    }
}
