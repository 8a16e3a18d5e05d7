//! `btx stage NAME --run DIR`: one stage of a run directory's plan in this process (what every
//! executor schedules; see [`btx_pipeline::run::stage`]).

use std::path::PathBuf;

use anyhow::Result;
use btx_model::burn::prelude::Device;
use btx_pipeline::run::stage::{run_stage, StageEnd};
use btx_pipeline::runtime::EXIT_STOPPED;

#[derive(clap::Args)]
pub struct Args {
    /// Stage name, e.g. `expert:math` (see plan.json in the run directory).
    pub name: String,
    /// The run directory (made by `btx run`).
    #[arg(long)]
    pub run: PathBuf,
}

pub fn run(a: Args, dev: &Device, device_name: &str) -> Result<()> {
    match run_stage(&a.run, &a.name, dev, device_name)? {
        StageEnd::Done | StageEnd::AlreadyDone => Ok(()),
        StageEnd::Stopped { steps } => {
            // The executor reads this exit code as "stopped with a checkpoint, resume later".
            errln!("{}: stopped at step {steps} with a checkpoint", a.name);
            std::process::exit(EXIT_STOPPED);
        }
    }
}
