//! `btx-core`: the pieces every btx crate shares and none owns — the deterministic RNG (so a run
//! is the same everywhere) and output directories that appear whole or not at all. A leaf: it
//! depends on no other btx crate.

/// `println!` that never panics: std's macros panic when the write fails (a closed pipe, a log
/// on a full disk), which turned error messages into panics that hid them.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that never panics (see [`outln`]).
#[macro_export]
macro_rules! errln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

pub mod atomic;
pub mod memory;
pub mod outdir;
pub mod record;
pub mod rng;
