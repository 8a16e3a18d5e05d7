//! `btx-train`: the one training loop shared by every BTX stage.

pub mod adamw;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod golden;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod signal;
pub mod trainer;

pub use config::{LbKind, LoopConfig, MoeLossConfig, OptimConfig, TrainerConfig};
pub use error::TrainError;
pub use run::{train, TrainOpts, TrainOutcome};
pub use trainer::{StepStats, Trainer};
