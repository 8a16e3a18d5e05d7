use std::path::{Path, PathBuf};

use thiserror::Error;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    At {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Output(#[from] btx_core::outdir::OutputError),
}

pub fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn file_err(path: &Path, msg: impl Into<String>) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}
