//! `btx` as a library: the command-line tool's commands (`cmd/`), each a `clap` front end over
//! the library crates (the pipeline in `btx-pipeline`), so that tests reach what the binary runs.
//! The binary (`main.rs`) only dispatches.

#[macro_use]
extern crate btx_core;

pub mod cmd;
