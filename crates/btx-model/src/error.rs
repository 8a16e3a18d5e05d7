use std::path::{Path, PathBuf};

use thiserror::Error;

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, validating or writing a model. Each variant names the
/// file and, where there is one, the tensor, so the user can find the culprit without a debugger.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("{path}: {source}{}", btx_core::outdir::io_hint(.source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model config: {msg}{}", config_hint(.msg))]
    Config { msg: String },
    #[error("{path}: invalid model config: {msg}{}", config_hint(.msg))]
    ConfigFile { path: PathBuf, msg: String },
    #[error("{path}: not a readable safetensors file: {msg}\nhint: the file is damaged or cut short (an interrupted download or copy?); fetch or write it again")]
    Safetensors { path: PathBuf, msg: String },
    #[error("{path}: tensor {name:?} is missing\nhint: {hint}")]
    MissingTensor {
        path: PathBuf,
        name: String,
        hint: String,
    },
    #[error(
        "{path}: tensor {name:?} has shape {found:?}, expected {expected:?} (from config.json)"
    )]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor stored in a dtype that the reader asked for cannot be: `expected` says what it
    /// reads there (floats for weights, integers for token ids).
    #[error(
        "{path}: tensor {name:?} has dtype {dtype}, but btx reads {expected} there\nhint: {hint}"
    )]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
        expected: String,
        hint: String,
    },
    /// A sharded checkpoint's `model.safetensors.index.json` that cannot be followed: not JSON,
    /// no or an empty `weight_map`, a value that is not a file name, a shard that is not there.
    #[error("{path}: {msg}\nhint: {hint}")]
    Index {
        path: PathBuf,
        msg: String,
        hint: String,
    },
    /// One tensor name in two shards: which one a reader takes would be arbitrary.
    #[error("{path}: tensor {name:?} is also in {other}; a checkpoint holds each tensor once\nhint: the shards overlap (two checkpoints written into one directory, or an index that lists another checkpoint's shards); keep the shards of one checkpoint and the index that names them")]
    DuplicateTensor {
        path: PathBuf,
        other: PathBuf,
        name: String,
    },
    #[error("{path}: unexpected tensor {name:?} (not part of a {arch} with this config)\nhint: is config.json the one that belongs to these weights?")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        arch: String,
    },
    #[error("{msg}")]
    Invalid { msg: String },
    /// A request btx cannot compute exactly or at all (a sequence past the sliding window, a
    /// step larger than the machine's memory, a stored head that contradicts a tied one).
    #[error("{msg}\nhint: {hint}")]
    Refused { msg: String, hint: String },
    /// An expert name the user gave (on the command line, in a recipe) that names no expert or
    /// cannot be a name; not a fault of the model's config.
    #[error("{msg}\nhint: {hint}")]
    ExpertName { msg: String, hint: String },
    #[error(transparent)]
    Output(#[from] btx_core::outdir::OutputError),
}

/// A hint for a config error whose message carries none.
fn config_hint(msg: &str) -> &'static str {
    if msg.contains("hint:") {
        ""
    } else {
        "\nhint: config.json must describe these weights as transformers reads them; fix the key named above"
    }
}

impl ModelError {
    pub fn refused(msg: impl Into<String>, hint: impl Into<String>) -> Self {
        ModelError::Refused {
            msg: msg.into(),
            hint: hint.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
