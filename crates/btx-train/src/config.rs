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

/// Refuses a freeze pattern that matches no parameter of `model` (a typo would silently train
/// what was meant to stay frozen).
pub fn check_freeze(
    freeze: &[String],
    model: &btx_model::ModelConfig,
) -> Result<(), crate::TrainError> {
    if freeze.is_empty() {
        return Ok(());
    }
    let specs = btx_model::names::param_specs(model);
    for pat in freeze {
        if !specs.iter().any(|s| glob_match(pat, &s.name)) {
            return Err(crate::TrainError::Config(format!(
                "freeze pattern {pat:?} matches no parameter (names are Hugging Face's, e.g. {:?})",
                specs.last().map(|s| s.name.as_str()).unwrap_or("")
            )));
        }
    }
    Ok(())
}

impl TrainerConfig {
    /// Every value that cannot train, or would train into NaN, refused with its key: an eps of
    /// 0 divides by zero where a moment is 0, a negative weight decay grows the weights, a
    /// non-finite clip norm or coefficient poisons every update.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        for (key, v) in [
            ("train.steps", t.steps),
            ("train.batch_size", t.batch_size),
            ("train.grad_accum", t.grad_accum),
            ("train.max_nonfinite_steps", t.max_nonfinite_steps),
        ] {
            if v == 0 {
                return Err(format!("{key} must be > 0, got 0"));
            }
        }
        if t.seq_len < 2 {
            return Err(format!(
                "train.seq_len must be at least 2 (a sequence predicts its next tokens), got {}",
                t.seq_len
            ));
        }
        // Tokens per step are counted in a usize: a product that overflows would wrap.
        if t.batch_size
            .checked_mul(t.seq_len)
            .and_then(|x| x.checked_mul(t.grad_accum))
            .is_none()
        {
            return Err(format!(
                "train.batch_size {} x train.seq_len {} x train.grad_accum {} tokens per step is beyond counting",
                t.batch_size, t.seq_len, t.grad_accum
            ));
        }
        let o = &self.optim;
        let m = &self.moe;
        let finite = |key: &str, v: f64, ok: bool, want: &str| {
            if v.is_finite() && ok {
                Ok(())
            } else {
                Err(format!("{key} must be {want}, got {v}"))
            }
        };
        finite("optim.lr", o.lr, o.lr > 0.0, "a finite number > 0")?;
        finite(
            "optim.beta1",
            o.beta1,
            (0.0..1.0).contains(&o.beta1),
            "in [0, 1)",
        )?;
        finite(
            "optim.beta2",
            o.beta2,
            (0.0..1.0).contains(&o.beta2),
            "in [0, 1)",
        )?;
        // The optimizer computes in f32: an eps that rounds to 0 (or to a subnormal) there
        // divides by zero on the first step.
        finite(
            "optim.eps",
            o.eps,
            o.eps > 0.0 && (o.eps as f32) >= f32::MIN_POSITIVE,
            "a finite number > 0 that f32 holds (>= 1.2e-38)",
        )?;
        finite(
            "optim.weight_decay",
            o.weight_decay,
            o.weight_decay >= 0.0,
            "a finite number >= 0",
        )?;
        finite(
            "optim.min_lr_ratio",
            o.min_lr_ratio,
            (0.0..=1.0).contains(&o.min_lr_ratio),
            "in [0, 1]",
        )?;
        finite(
            "optim.clip_norm",
            o.clip_norm,
            o.clip_norm >= 0.0,
            "a finite number >= 0 (0 disables clipping)",
        )?;
        finite(
            "moe.lb_coef",
            m.lb_coef,
            m.lb_coef >= 0.0,
            "a finite number >= 0",
        )?;
        finite(
            "moe.z_loss_coef",
            m.z_loss_coef,
            m.z_loss_coef >= 0.0,
            "a finite number >= 0",
        )?;
        finite(
            "moe.dead_expert_threshold",
            m.dead_expert_threshold,
            (0.0..=1.0).contains(&m.dead_expert_threshold),
            "in [0, 1] (a share of a layer's tokens)",
        )?;
        Ok(())
    }

    /// Parameters of a model of `cfg` that this config trains (the rest are frozen).
    pub fn trainable_params(&self, cfg: &btx_model::ModelConfig) -> usize {
        if self.train.freeze.is_empty() {
            // (By arithmetic: listing the parameters of an absurd config would itself exhaust
            // the memory its check is there to protect.)
            return cfg.total_params();
        }
        btx_model::names::param_specs(cfg)
            .iter()
            .filter(|s| !self.train.freeze.iter().any(|p| glob_match(p, &s.name)))
            .map(|s| s.numel())
            .sum()
    }

    /// What must hold before a run of this config trains a model of `model` writes anything:
    /// the config's own values, sequences within the positions btx computes as transformers
    /// does, no training-time noise btx does not implement, and a step that fits in the
    /// machine's memory.
    pub fn preflight(&self, model: &btx_model::ModelConfig) -> Result<(), crate::TrainError> {
        self.validate().map_err(crate::TrainError::Config)?;
        let t = &self.train;
        model.check_positions(
            t.seq_len,
            &format!("train.seq_len {}", t.seq_len),
            "lower train.seq_len",
        )?;
        model.check_trainable()?;
        if let Some(total) = btx_model::budget::machine_memory() {
            // The weights, a gradient and AdamW's two moments for each, before any activation:
            // a model that cannot fit needs another hint than a batch that cannot.
            let state = 4.0 * 4.0 * model.total_params() as f64;
            btx_model::budget::check_fits(
                state,
                total,
                &format!(
                    "training a model of {:.3e} parameters (weights, gradients and AdamW moments)",
                    model.total_params() as f64
                ),
                "the model itself is too large for this machine: choose a smaller model (or freeze most of it with train.freeze)",
            )
            .or_else(|e| {
                if t.freeze.is_empty() {
                    Err(e)
                } else {
                    Ok(())
                }
            })?;
        }
        let bytes = btx_model::budget::train_step_bytes(
            model,
            t.batch_size,
            t.seq_len,
            self.trainable_params(model),
        );
        match btx_model::budget::machine_memory() {
            Some(total) => btx_model::budget::check_fits(
                bytes,
                total,
                &format!(
                    "a training step of train.batch_size {} x train.seq_len {}",
                    t.batch_size, t.seq_len
                ),
                "lower train.batch_size or train.seq_len; train.grad_accum keeps the tokens per step with smaller micro-batches",
            )?,
            None => tracing::debug!(
                "cannot read MemTotal from /proc/meminfo: the step's memory ({bytes:.3e} bytes) is not checked"
            ),
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
