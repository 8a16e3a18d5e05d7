use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("{path}: {source}{}", btx_core::outdir::io_hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] btx_model::ModelError),
    #[error(transparent)]
    Output(#[from] btx_core::outdir::OutputError),
    #[error("invalid training config: {0}\nhint: change it in the run's config ([optim], [train], [moe]) or with --set KEY=VALUE")]
    Config(String),
    #[error("{path}: {msg}\nhint: the checkpoint is damaged; remove it and resume from the one before (or start a fresh --out)")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{dir} already holds checkpoints of a run\nhint: pass --resume to continue it, or choose a fresh --out")]
    AlreadyStarted { dir: PathBuf },
    #[error("{dir}: the checkpoint was written with a different training config ({what})\nhint: resume with the original config, or start a fresh --out")]
    ConfigChanged { dir: PathBuf, what: String },
    #[error("data: {0}")]
    Data(String),
    #[error("training diverged: {steps} steps in a row up to step {step} had a non-finite {what} (none was applied); the newest checkpoint is {last_good}\nhint: resume from it with a lower learning rate, e.g. `--resume --set optim.lr=...` (lr, warmup, schedule length and clipping may change on resume), or raise optim.warmup_steps")]
    Diverged {
        step: usize,
        steps: usize,
        what: String,
        last_good: String,
    },
    #[error("{path}: tensor {name:?} holds a non-finite value; refusing to write it\nhint: training diverged; resume from an earlier checkpoint with a lower optim.lr")]
    NonFinite { path: PathBuf, name: String },
}

pub fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
