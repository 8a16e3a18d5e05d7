//! The trainer's part of the config tree. Every field has a documented default; unknown keys are
//! rejected by name.

use btx_model::precision::Precision;
use serde::{Deserialize, Serialize};

/// `[optim]`: AdamW with decoupled weight decay, linear warmup, cosine decay to a floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Peak learning rate. Default 1e-3.
    pub lr: f64,
    /// AdamW beta1. Default 0.9.
    pub beta1: f64,
    /// AdamW beta2. Default 0.95.
    pub beta2: f64,
    /// AdamW epsilon. Default 1e-8.
    pub eps: f64,
    /// Decoupled weight decay, applied to tensors with 2 or more dims only (not norms).
    /// Default 0.1 (the paper's).
    pub weight_decay: f64,
    /// Linear warmup steps: lr(s) = peak * (s + 1) / warmup. Default 100 (the paper's).
    pub warmup_steps: usize,
    /// Cosine decay ends at this fraction of the peak. Default 0.1 (the paper's).
    pub min_lr_ratio: f64,
    /// Clip the global L2 norm of all gradients to this; 0 disables. Default 1.0.
    pub clip_norm: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
        }
    }
}

/// `[train]`: the loop itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopConfig {
    /// Optimizer steps. Default 100.
    pub steps: usize,
    /// Sequences per micro-batch. Default 8.
    pub batch_size: usize,
    /// Tokens per sequence. Default 256.
    pub seq_len: usize,
    /// Micro-batches per optimizer step (gradients averaged). Default 1.
    pub grad_accum: usize,
    /// Seed of everything random in the run (init, data order, Gumbel noise). Default 0.
    pub seed: u64,
    /// Write a checkpoint every N steps; 0 = only at the end. Default 100.
    pub checkpoint_every: usize,
    /// How many checkpoints to keep (newest first). Default 2.
    pub keep_checkpoints: usize,
    /// Log (and record expert load) every N steps. Default 10.
    pub log_every: usize,
    /// Parameters to freeze, as glob patterns over Hugging Face names (`*` matches any run of
    /// characters), e.g. `"model.layers.*.block_sparse_moe.experts.*"`. Default none.
    pub freeze: Vec<String>,
    /// Stop after this many optimizer steps in a row whose loss or gradient norm is not finite
    /// (each such step is skipped: its update is not applied and no checkpoint is written).
    /// Default 3.
    pub max_nonfinite_steps: usize,
    /// The matmuls' precision: `f32` (default) or `bf16` (mixed precision: bf16 operands, f32
    /// products, master weights and optimizer state; see `btx_model::precision`).
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

impl Default for LoopConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            batch_size: 8,
            seq_len: 256,
            grad_accum: 1,
            seed: 0,
            checkpoint_every: 100,
            keep_checkpoints: 2,
            log_every: 10,
            freeze: vec![],
            max_nonfinite_steps: 3,
            precision: Precision::F32,
        }
    }
}

/// Which load-balancing formula to add for MoE models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbKind {
    /// The BTX paper's: per layer `E * sum_i u_i p_i` with u the mean sparse gate, summed over
    /// layers.
    Paper,
    /// transformers' `load_balancing_loss_func`: hard top-k counts, all layers pooled.
    Hf,
}

/// `[moe]`: losses that only exist for MoE models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MoeLossConfig {
    /// Load-balancing coefficient alpha; 0 disables. Default 0.01 (the paper's, with top-2).
    pub lb_coef: f64,
    /// `paper` (default) or `hf`.
    pub lb_kind: LbKind,
    /// Router z-loss coefficient; 0 (default) disables.
    pub z_loss_coef: f64,
    /// Warn when an expert gets less than this fraction of a layer's tokens. Default 0.01.
    pub dead_expert_threshold: f64,
}

impl Default for MoeLossConfig {
    fn default() -> Self {
        Self {
            lb_coef: 0.01,
            lb_kind: LbKind::Paper,
            z_loss_coef: 0.0,
            dead_expert_threshold: 0.01,
        }
    }
}

/// Everything the training loop needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainerConfig {
    pub optim: OptimConfig,
    pub train: LoopConfig,
    pub moe: MoeLossConfig,
}

impl TrainerConfig {
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        if t.steps == 0 {
            return Err("train.steps must be > 0".into());
        }
        if t.batch_size == 0 || t.grad_accum == 0 {
            return Err("train.batch_size and train.grad_accum must be > 0".into());
        }
        if t.seq_len < 2 {
            return Err("train.seq_len must be at least 2".into());
        }
        if t.max_nonfinite_steps == 0 {
            return Err("train.max_nonfinite_steps must be >= 1".into());
        }
        let o = &self.optim;
        if !o.lr.is_finite()
            || o.lr <= 0.0
            || !(0.0..1.0).contains(&o.beta1)
            || !(0.0..1.0).contains(&o.beta2)
        {
            return Err("optim: need lr > 0 and betas in [0, 1)".into());
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return Err("optim.min_lr_ratio must be in [0, 1]".into());
        }
        Ok(())
    }
}

/// Settings a run may change when it resumes from a checkpoint: they steer the updates to come
/// but change nothing the checkpoint holds (weights, moments, data position). Everything else
/// must match the checkpoint's config.
pub const RESUME_MAY_CHANGE: &[&str] = &[
    "optim.lr",
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "optim.clip_norm",
    "train.steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.max_nonfinite_steps",
];

/// `*`-glob match (the only wildcard freeze patterns need).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let n = "model.layers.3.block_sparse_moe.experts.1.w2.weight";
        assert!(glob_match("model.layers.*.block_sparse_moe.experts.*", n));
        assert!(glob_match("*w2.weight", n));
        assert!(glob_match(n, n));
        assert!(!glob_match("model.layers.*.self_attn.*", n));
        assert!(!glob_match("*.gate.weight", n));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = serde_json::from_str::<TrainerConfig>(r#"{"optim": {"lrr": 1}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lrr"), "{e}");
    }
}
