//! `btx run RECIPE --out DIR`: the command line of [`btx_pipeline::run`].

use std::path::PathBuf;

use anyhow::Result;
use btx_pipeline::run::RunOptions;

#[derive(clap::Args)]
pub struct Args {
    /// The experiment recipe (TOML); see examples/quick.toml.
    pub recipe: PathBuf,
    /// Run directory (created; re-running continues it).
    #[arg(long)]
    pub out: PathBuf,
    /// Stages to run at once (training stages share the cores).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Override a recipe value, e.g. --set experts.train.steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Only plan: print the stages and their states; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `local` (child processes, default) or `slurm` (batch jobs; see the README).
    #[arg(long, default_value = "local")]
    pub executor: String,
    /// With `--executor slurm`: wait until every job has ended.
    #[arg(long)]
    pub wait: bool,
    /// With `--device cuda` and the local executor: the GPUs to spread stages over, as a count
    /// (`4` = GPUs 0-3) or a list of ids (`0,2,5`). Each stage process sees one GPU
    /// (`CUDA_VISIBLE_DEVICES`), the least busy; with `--jobs` = the GPU count the experts
    /// train at once, one GPU each. Default: CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi
    /// lists, else GPU 0.
    #[arg(long, value_name = "N|IDS")]
    pub gpus: Option<String>,
}

impl Args {
    pub fn options(self) -> Result<RunOptions> {
        Ok(RunOptions {
            executor: self.executor.parse()?,
            recipe: self.recipe,
            out: self.out,
            jobs: self.jobs,
            sets: self.sets,
            dry_run: self.dry_run,
            wait: self.wait,
            gpus: self.gpus,
        })
    }
}

pub fn run(a: Args, device: &str) -> Result<()> {
    btx_pipeline::run::run(a.options()?, device)
}
