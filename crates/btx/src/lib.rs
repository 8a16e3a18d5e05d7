//! `btx` as a library: the command-line tool's modules (recipes, plans, executors, stages and
//! commands), so that the fuzz targets and tests can reach the parsers the binary uses. The
//! binary (`main.rs`) is a thin `clap` front end over it.

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

pub mod cmd;
pub mod executor;
pub mod jobs;
pub mod local;
pub mod lock;
pub mod manifest;
pub mod overrides;
pub mod plan;
pub mod recipe;
pub mod record;
pub mod report;
mod report_summary;
pub mod runner;
pub mod runtime;
pub mod sections;
pub mod slurm;
pub mod stage;
pub mod status;
