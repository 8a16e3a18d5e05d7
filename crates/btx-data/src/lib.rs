//! `btx-data`: everything between text on disk and token batches in the trainer.

pub mod builtin;
pub mod cloze;
pub mod corpus;
pub mod datadir;
pub mod error;
pub mod gguf;
pub mod inputs;
pub mod mixture;
pub mod prepare;
pub mod shard;
pub mod source;
pub mod tokenizer;

pub use datadir::{prepare_verified, DataDir};
pub use error::{DataError, Result};
pub use mixture::{MixConfig, Mixture};
pub use prepare::{domain_name_problem, prepare, DataManifest, PrepareConfig};
pub use source::{Batch, BatchSource, FixedBatches};
pub use tokenizer::{copy_tokenizer_config, Tok, TOKENIZER_CONFIG};

/// The first 12 characters of a hash, for messages (char-safe: a corrupt file can hold anything).
pub fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}
