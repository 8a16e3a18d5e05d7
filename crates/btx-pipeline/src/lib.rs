//! `btx-pipeline`: a BTX experiment as a resumable pipeline. A recipe (`recipe/`, one TOML file)
//! compiles into a plan (`plan/`, pure: a DAG of stages with fingerprints); each stage runs one
//! job (`jobs/`, one function per stage kind, shared with the `btx` commands that do the same
//! thing); executors (`exec/`: local processes, Slurm, and the status both read) run the stages
//! that are not done; `run/` decides what is done (DONE markers checked, manifests, locks) and
//! `report/` writes the run's report.

#[macro_use]
extern crate btx_core;

pub mod exec;
pub mod jobs;
pub mod plan;
pub mod recipe;
pub mod report;
pub mod run;
pub mod runtime;
