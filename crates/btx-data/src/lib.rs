//! `btx-data`: everything between text on disk and token batches in the trainer.

pub mod source;

pub use source::{Batch, BatchSource, FixedBatches};
