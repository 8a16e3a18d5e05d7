//! Time spent inside matrix products (gemm's and the tile kernel's), so `btx bench train` can set a step's own gemm time against
//! the matmul floor and tell the products' slowdown in the step (cold operands, strided layouts,
//! small attention blocks) from everything else. Compiled in with the `gemm-clock` feature (the
//! btx binary has it), and even then off unless [`enable`]d; on, each gemm call costs two clock
//! reads.
//!
//! A product that spreads over the pool counts its wall time. Single-core products run as
//! pool tasks side by side on every thread (attention heads, expert blocks, the two gradients
//! of a linear layer) and count thread time; [`GemmTime::wall_s`] divides that by the thread
//! count, which is exact when the threads stay busy together, as they do there.
//!
//! With [`enable_calls`] each call is also tallied by its shape and layout ([`Call`]); `btx
//! bench train --products` replays each alone on hot caches and sets the two side by side, call
//! by call. A leaf module: the kernels it times import it, it imports none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static CALLS_ON: AtomicBool = AtomicBool::new(false);
static CALLS: Mutex<Option<HashMap<Call, (u64, u64)>>> = Mutex::new(None);

/// One gemm call's shape and layout: `dst [m, n]` (row stride `dst_rs`) = A `[m, k]` B `[k, n]`
/// with A(i, l) at `i*a_rs + l*a_cs` and B(l, j) at `l*b_rs + j*b_cs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Call {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dst_rs: usize,
    pub a: (usize, usize),
    pub b: (usize, usize),
    /// Added to the destination (else written).
    pub acc: bool,
    /// Spread over the pool by gemm itself.
    pub parallel: bool,
    /// Run by the AVX-512 tile kernel instead of gemm (B's rows contiguous: `b.1 == 1`).
    pub tile: bool,
}

/// Starts (or stops) tallying calls by shape; starting clears the tally.
pub fn enable_calls(on: bool) {
    if on {
        *CALLS.lock().expect("tally lock") = Some(HashMap::new());
    }
    CALLS_ON.store(on, Relaxed);
}

/// The tally since [`enable_calls`]: per call, (count, seconds summed over its runs).
pub fn calls() -> Vec<(Call, u64, f64)> {
    let tally = CALLS.lock().expect("tally lock");
    let mut v: Vec<(Call, u64, f64)> = tally
        .iter()
        .flatten()
        .map(|(c, &(n, ns))| (*c, n, ns as f64 * 1e-9))
        .collect();
    v.sort_by(|x, y| y.2.total_cmp(&x.2));
    v
}
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
pub(crate) struct Timer(Option<(Instant, Call)>);

impl Timer {
    /// For the call `c` (spread over the pool when `c.parallel`, else on one core).
    #[cfg(feature = "gemm-clock")]
    pub(crate) fn start(c: Call) -> Self {
        Timer(ON.load(Relaxed).then(|| (Instant::now(), c)))
    }

    /// Without the `gemm-clock` feature nothing is timed (and [`take`] reads zeros).
    #[cfg(not(feature = "gemm-clock"))]
    #[inline(always)]
    pub(crate) fn start(_: Call) -> Self {
        Timer(None)
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((t0, c)) = self.0 {
            let ns = t0.elapsed().as_nanos() as u64;
            let counter = if c.parallel { &PARALLEL_NS } else { &SERIAL_NS };
            counter.fetch_add(ns, Relaxed);
            if CALLS_ON.load(Relaxed) {
                if let Some(t) = CALLS.lock().expect("tally lock").as_mut() {
                    let e = t.entry(c).or_default();
                    e.0 += 1;
                    e.1 += ns;
                }
            }
        }
    }
}
