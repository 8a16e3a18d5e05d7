use std::path::{Path, PathBuf};

use thiserror::Error;

pub type Result<T, E = DataError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: {source}{}", btx_core::outdir::io_hint(.source))]
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
    #[error("{path}: {msg}{}", file_hint(.path, .msg))]
    File { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Output(#[from] btx_core::outdir::OutputError),
}

/// A hint for a file that is not what it should be, by its kind, when the message has none.
fn file_hint(path: &Path, msg: &str) -> &'static str {
    if msg.contains("hint:") {
        return "";
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("tok") => "\nhint: the shard is damaged or was not written by btx; prepare the data again (`btx data prepare`, or `btx run`, which redoes a broken data stage)",
        Some("gguf") => "\nhint: the file is damaged, cut short, or not a llama.cpp GGUF; download or convert it again",
        Some("jsonl") => "\nhint: one JSON object per line",
        Some("json") => "\nhint: the file is damaged or not what btx wrote there; prepare or write it again",
        _ => "\nhint: check the file, or make it again",
    }
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
