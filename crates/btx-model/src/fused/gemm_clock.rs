//! Time spent inside matrix products, so `btx bench train` can set a step's own gemm time against
//! the matmul floor and tell the products' slowdown in the step (cold operands, strided layouts,
//! small attention blocks) from everything else. Off unless [`enable`]d; then each gemm call costs
//! two clock reads.
//!
//! A product called from outside the rayon pool (whether it then spreads over the pool or not)
//! counts its wall time. Products called inside pool tasks run concurrently on every thread and
//! count thread time; [`GemmTime::wall_s`] divides that by the thread count, which is exact when
//! the threads stay busy together, as they do in the attention kernels.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static CALLER_NS: AtomicU64 = AtomicU64::new(0);
static WORKER_NS: AtomicU64 = AtomicU64::new(0);

/// Starts (or stops) counting.
pub fn enable(on: bool) {
    ON.store(on, Relaxed);
}

/// Gemm time counted since the last `take`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmTime {
    /// Wall time of products called from outside the pool.
    pub caller_s: f64,
    /// Summed thread time of products called inside pool tasks.
    pub worker_s: f64,
}

impl GemmTime {
    /// The products' share of wall-clock time on `threads` threads.
    pub fn wall_s(&self, threads: usize) -> f64 {
        self.caller_s + self.worker_s / threads.max(1) as f64
    }
}

/// Reads and resets the counters.
pub fn take() -> GemmTime {
    GemmTime {
        caller_s: CALLER_NS.swap(0, Relaxed) as f64 * 1e-9,
        worker_s: WORKER_NS.swap(0, Relaxed) as f64 * 1e-9,
    }
}

/// Counts the time until it is dropped (when counting is on).
pub(crate) struct Timer(Option<Instant>);

impl Timer {
    pub(crate) fn start() -> Self {
        Timer(ON.load(Relaxed).then(Instant::now))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(t0) = self.0 {
            let ns = t0.elapsed().as_nanos() as u64;
            let counter = if rayon::current_thread_index().is_some() {
                &WORKER_NS
            } else {
                &CALLER_NS
            };
            counter.fetch_add(ns, Relaxed);
        }
    }
}
