//! `btx status DIR` and `btx cancel DIR` (see [`btx_pipeline::exec::status`]).

use std::path::PathBuf;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// The run directory.
    pub run: PathBuf,
    /// Print one JSON object per stage instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// The run directory.
    pub run: PathBuf,
    /// Seconds to wait for each stopped process to exit (a trainer writes a checkpoint first).
    #[arg(long, default_value_t = 120)]
    pub wait: u64,
}

pub fn status(a: Args) -> Result<()> {
    btx_pipeline::exec::status::print_status(&a.run, a.json)
}

pub fn cancel(a: CancelArgs) -> Result<()> {
    btx_pipeline::exec::status::cancel(&a.run, a.wait)
}
