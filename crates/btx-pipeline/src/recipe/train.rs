//! A training job's settings, as recipes write them for the seed, each expert, the finetune
//! and the baselines.

use std::collections::BTreeMap;

use btx_model::ModelSpec;
use btx_train::{LoopConfig, MoeLossConfig, OptimConfig, TrainerConfig};
use serde::{Deserialize, Serialize};

/// A training job's settings: model shape (for new models), data mixture, optimizer, loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Shape of a new model (only for pretraining).
    #[serde(default)]
    pub init: Option<ModelSpec>,
    /// Domain weights; empty = all domains equally.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
    #[serde(default)]
    pub moe: MoeLossConfig,
}

impl TrainSpec {
    pub fn trainer(&self) -> TrainerConfig {
        TrainerConfig {
            optim: self.optim.clone(),
            train: self.train.clone(),
            moe: self.moe.clone(),
        }
    }

    /// Tokens one run of this spec trains on.
    pub fn tokens(&self) -> u64 {
        let t = &self.train;
        (t.steps * t.batch_size * t.seq_len * t.grad_accum) as u64
    }

    pub fn tokens_per_step(&self) -> u64 {
        let t = &self.train;
        (t.batch_size * t.seq_len * t.grad_accum) as u64
    }
}
