//! A training job's settings, as recipes write them for the seed, each expert, the finetune
//! and the baselines.

use std::collections::BTreeMap;

use btx_model::ModelSpec;
use btx_train::TrainerConfig;
use serde::{Deserialize, Serialize};

/// A training job's settings: model shape (for new models), data mixture, and the training
/// loop's own settings ([`TrainerConfig`], declared once in btx-train: `[optim]`, `[train]`,
/// `[moe]` beside `init` and `weights`, as `btx train`'s file and the recipe's `[experts]` and
/// `[finetune]` write them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Shape of a new model (only for pretraining).
    #[serde(default)]
    pub init: Option<ModelSpec>,
    /// Domain weights; empty = all domains equally.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Serialised flat, after `init` and `weights`: the same JSON as when the three were
    /// fields here, so stage fingerprints did not change.
    #[serde(flatten)]
    pub trainer: TrainerConfig,
}

impl TrainSpec {
    /// Tokens one run of this spec trains on.
    pub fn tokens(&self) -> u64 {
        let t = &self.trainer.train;
        (t.steps * t.batch_size * t.seq_len * t.grad_accum) as u64
    }

    pub fn tokens_per_step(&self) -> u64 {
        let t = &self.trainer.train;
        (t.batch_size * t.seq_len * t.grad_accum) as u64
    }
}
