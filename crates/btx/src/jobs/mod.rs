//! The jobs both `btx <cmd>` and `btx stage` run: each takes typed inputs and does the whole
//! thing (router starts measured on data, checks, the write), so a command and a pipeline stage
//! cannot drift apart. The stage runner only maps a plan's stage onto a job's inputs.

pub mod add;
pub mod eval;
pub mod mix;
pub mod train;
