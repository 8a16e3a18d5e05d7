//! The jobs: one function per stage kind, each mapping a plan's stage onto the typed inputs of
//! the work it does. The work itself (router starts measured on data, checks, the write) lives
//! in functions `btx <cmd>` calls too, so a command and a pipeline stage cannot drift apart. A
//! job returns how it ended ([`JobOutcome`]); it never exits the process.

pub mod add;
mod data;
pub mod eval;
pub mod mix;
mod report;
mod seed;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::Result;
use btx_model::burn::prelude::Device;
use btx_model::ModelConfig;
use serde_json::json;

use crate::plan::{model_dir, Plan, Stage, StageId, StageKind};
use crate::run::manifest::Compute;

/// How a job ended.
#[derive(Debug)]
pub enum JobOutcome {
    /// Finished: what it computed (recorded in `manifest.json`) and its summary.
    Done {
        compute: Compute,
        outputs: serde_json::Value,
    },
    /// A trainer stopped on a signal with its checkpoint written at `steps`; the next run
    /// resumes it.
    Stopped { steps: usize },
}

impl JobOutcome {
    fn done(compute: Compute, outputs: serde_json::Value) -> Result<Self> {
        Ok(Self::Done { compute, outputs })
    }
}

/// What a job sees of the run: the plan, its stage, the run directory, the stage's own
/// directory (the only one it writes) and the device.
pub struct StageCtx<'a> {
    pub plan: &'a Plan,
    pub stage: &'a Stage,
    pub run: &'a Path,
    pub dir: &'a Path,
    pub dev: &'a Device,
}

impl StageCtx<'_> {
    /// The `model/` directory of an upstream stage.
    fn model_of(&self, name: &StageId) -> Result<PathBuf> {
        Ok(model_dir(self.run, self.plan.stage(name)?))
    }

    /// The prepared data (`tokens/`) of an upstream data stage.
    fn data_of(&self, name: &StageId) -> Result<PathBuf> {
        Ok(data_root(self.run, self.plan.stage(name)?))
    }

    /// Where this stage writes its model.
    fn model_out(&self) -> PathBuf {
        self.dir.join("model")
    }
}

/// Root of the prepared data a data stage produced.
fn data_root(run: &Path, data_stage: &Stage) -> PathBuf {
    run.join(&data_stage.dir).join("tokens")
}

/// Runs the job of `ctx.stage`'s kind.
pub fn run(ctx: &StageCtx) -> Result<JobOutcome> {
    match &ctx.stage.kind {
        StageKind::Data {
            section,
            base,
            tokenizer_from,
        } => data::data(ctx, section, base, tokenizer_from.as_ref()),
        StageKind::SeedCopy { path } => seed::copy(ctx, path),
        StageKind::SeedGguf { path } => seed::gguf(ctx, path),
        StageKind::Train { from, spec, data } => train::stage(ctx, from.as_ref(), spec, data),
        StageKind::Mix {
            seed,
            experts,
            domains,
            spec,
            data,
            router_seed,
        } => mix::mix_stage(ctx, seed, experts, domains, spec, data, *router_seed),
        StageKind::Upcycle {
            seed,
            num_experts,
            spec,
            router_seed,
        } => mix::upcycle_stage(ctx, seed, *num_experts, spec, *router_seed),
        StageKind::Average { models } => mix::average_stage(ctx, models),
        StageKind::AddExpert {
            model,
            expert,
            domain,
            data,
        } => add::stage(ctx, model, expert, domain, data),
        StageKind::Eval { .. } => eval::eval_stage(ctx),
        StageKind::OptOut {
            method,
            model,
            data,
            spec,
        } => eval::opt_out_stage(ctx, method, model, data, spec),
        StageKind::Report => {
            report::build(ctx.plan, ctx.run)?;
            JobOutcome::done(
                Compute::default(),
                json!({"report": ctx.run.join("report.md")}),
            )
        }
    }
}

/// A model's parameter counts, the start of every model-writing stage's [`Compute`].
fn params_compute(cfg: &ModelConfig) -> Compute {
    Compute {
        total_params: cfg.total_params() as u64,
        active_params: cfg.active_params() as u64,
        ..Default::default()
    }
}

/// The [`Compute`] of a stage that wrote a model to `model_out` in `seconds`.
fn written_model(model_out: &Path, seconds: f64) -> Result<Compute> {
    let cfg = ModelConfig::load(&model_out.join("config.json"))?;
    let mut c = params_compute(&cfg);
    c.wall_seconds = seconds;
    Ok(c)
}
