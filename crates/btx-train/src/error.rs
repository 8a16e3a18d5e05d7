use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] btx_model::ModelError),
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    #[error("{dir} already holds checkpoints of a run\nhint: pass --resume to continue it, or choose a fresh --out")]
    AlreadyStarted { dir: PathBuf },
    #[error("{dir}: the checkpoint was written with a different training config ({what})\nhint: resume with the original config, or start a fresh --out")]
    ConfigChanged { dir: PathBuf, what: String },
    #[error("data: {0}")]
    Data(String),
    #[error("loss became {value} at step {step}\nhint: lower optim.lr or set optim.clip_norm")]
    Diverged { step: usize, value: f64 },
}

pub fn io_err(path: &Path, source: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
