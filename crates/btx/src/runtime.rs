//! Process-wide setup: logging, thread pool, device, exit codes.

use anyhow::{bail, Result};
use btx_model::burn::prelude::Device;

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BTX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Sets up the global thread pool: `threads` workers (default: RAYON_NUM_THREADS, else all
/// cores), with room for deep stacks since commands run on a worker (see [`on_pool`]).
pub fn init_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or(0);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .stack_size(64 << 20)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot set up {n} threads: {e}"))
}

/// Runs `f` on a worker of the global pool and waits for it. Every parallel kernel called from
/// outside the pool is handed to it through a sleeping latch (a futex round trip per call,
/// thousands per train step; 1-3% of a preset-S step); from a worker it is a plain call.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!(
            "this btx was built without CUDA\nhint: rebuild with `cargo build --release --features cuda` (needs network to fetch LLVM)"
        ),
        other => bail!("unknown device {other:?} (cpu or cuda)"),
    }
}

/// Exit code 75 (EX_TEMPFAIL) when a run stopped early on a signal with a checkpoint written,
/// so schedulers can tell "requeue me" from "failed".
pub const EXIT_STOPPED: i32 = 75;

pub fn exit_code(_e: &anyhow::Error) -> i32 {
    1
}
