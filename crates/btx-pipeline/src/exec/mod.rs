//! What an executor is: something that runs the stages of a plan that are not done and says how
//! each ended. Two implement it: local processes (`local`) and Slurm jobs (`slurm`).

pub mod local;
pub mod slurm;
pub mod status;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::plan::{Plan, StageId};

/// Where a stage stands before this invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    Done,
    /// Started earlier with the same configuration (a trainer resumes from its checkpoint).
    Partial,
    Pending,
    /// Has a DONE that no longer holds (an output missing or changed, or an input changed since
    /// it ran): the stage process clears it and runs it again.
    Redo(String),
    /// Has a DONE that holds, but something upstream is redone first: the stage process checks
    /// it again then, and runs it only if what it read changed.
    Recheck(String),
}

/// How a stage ended in this invocation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    AlreadyDone,
    Done {
        seconds: f64,
    },
    Failed {
        code: Option<i32>,
    },
    /// Stopped on a signal with a checkpoint; the next run resumes it.
    Stopped,
    Blocked {
        by: String,
    },
    /// Handed to a scheduler (Slurm) that runs it later.
    Submitted,
}

/// Runs the stages of a plan that are not done. Implementations: local processes (here),
/// Slurm jobs.
pub trait Executor {
    fn execute(
        &mut self,
        plan: &Plan,
        run: &Path,
        states: &BTreeMap<StageId, State>,
    ) -> Result<BTreeMap<StageId, Outcome>>;
}
