//! Time spent inside matrix products, so `btx bench train` can set a step's own gemm time against
//! the matmul floor and tell the products' slowdown in the step (cold operands, strided layouts,
//! small attention blocks) from everything else. Off unless [`enable`]d; then each gemm call costs
//! two clock reads.
//!
//! A product that spreads over the pool counts its wall time. Single-core products run as
//! pool tasks side by side on every thread (attention heads, expert blocks, the two gradients
//! of a linear layer) and count thread time; [`GemmTime::wall_s`] divides that by the thread
//! count, which is exact when the threads stay busy together, as they do there.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static PARALLEL_NS: AtomicU64 = AtomicU64::new(0);
static SERIAL_NS: AtomicU64 = AtomicU64::new(0);

/// Starts (or stops) counting.
pub fn enable(on: bool) {
    ON.store(on, Relaxed);
}

/// Gemm time counted since the last `take`.
#[derive(Clone, Copy, Debug, Default)]
pub struct GemmTime {
    /// Wall time of products spread over the pool.
    pub parallel_s: f64,
    /// Summed thread time of single-core products.
    pub serial_s: f64,
}

impl GemmTime {
    /// The products' share of wall-clock time on `threads` threads.
    pub fn wall_s(&self, threads: usize) -> f64 {
        self.parallel_s + self.serial_s / threads.max(1) as f64
    }
}

/// Reads and resets the counters.
pub fn take() -> GemmTime {
    GemmTime {
        parallel_s: PARALLEL_NS.swap(0, Relaxed) as f64 * 1e-9,
        serial_s: SERIAL_NS.swap(0, Relaxed) as f64 * 1e-9,
    }
}

/// Counts the time until it is dropped (when counting is on).
pub(crate) struct Timer(Option<(Instant, bool)>);

impl Timer {
    /// For a product that spreads over the pool (`parallel`) or runs on one core.
    pub(crate) fn start(parallel: bool) -> Self {
        Timer(ON.load(Relaxed).then(|| (Instant::now(), parallel)))
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((t0, parallel)) = self.0 {
            let ns = t0.elapsed().as_nanos() as u64;
            let counter = if parallel { &PARALLEL_NS } else { &SERIAL_NS };
            counter.fetch_add(ns, Relaxed);
        }
    }
}
