//! `btx-pipeline`: a BTX experiment as a resumable pipeline. A recipe (`recipe/`, one TOML file)
//! compiles into a plan (`plan/`, pure: a DAG of stages with fingerprints); each stage runs one
//! job (`jobs/`, one function per stage kind, shared with the `btx` commands that do the same
//! thing); executors (`exec/`: local processes, Slurm, and the status both read) run the stages
//! that are not done; `run/` decides what is done (DONE markers checked, manifests, locks). The
//! report is the last stage's job (`jobs/report/`: a run's results gathered, plotted and
//! handed to btx-eval's `render`).

#[macro_use]
extern crate btx_core;

pub mod exec;
pub mod jobs;
pub mod plan;
pub mod recipe;
pub mod run;
pub mod runtime;
