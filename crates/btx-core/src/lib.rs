//! `btx-core`: the pieces every btx crate shares and none owns — the deterministic RNG (so a run
//! is the same everywhere) and output directories that appear whole or not at all. A leaf: it
//! depends on no other btx crate.

pub mod atomic;
pub mod memory;
pub mod outdir;
pub mod record;
pub mod rng;
