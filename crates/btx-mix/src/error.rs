use std::path::{Path, PathBuf};

use thiserror::Error;

pub type Result<T, E = MixError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum MixError {
    #[error(transparent)]
    Model(#[from] btx_model::ModelError),
    #[error(transparent)]
    Output(#[from] btx_core::outdir::OutputError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot mix: {msg}\nhint: {hint}")]
    Incompatible { msg: String, hint: String },
    #[error("mix options: {0}")]
    Options(String),
}

impl MixError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        MixError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
