//! The machine's fused multiply-add peak: what no matrix product can beat, so `btx bench` can
//! say how far its matmul floor (and the whole step) sits from the hardware.

use rayon::prelude::*;

/// GFLOP/s of independent FMA chains on every thread of the current pool at once (an FMA is
/// two FLOPs), each running for about `seconds`. `None` without AVX2 + FMA.
pub fn fma_gflops(seconds: f64) -> Option<f64> {
    use crate::simd::{level, Level};
    if level() == Level::Base {
        return None;
    }
    let rates: Vec<f64> = rayon::broadcast(|_| {
        // Grow the loop until one run takes long enough to time; then time one more.
        let mut iters = 1 << 16;
        loop {
            let t0 = std::time::Instant::now();
            let flops = chains(iters);
            let dt = t0.elapsed().as_secs_f64();
            if dt >= seconds {
                return flops / dt;
            }
            iters *= 2;
        }
    });
    Some(rates.par_iter().sum::<f64>() / 1e9)
}

/// Runs `iters` rounds over every accumulator; returns the FLOPs done.
fn chains(iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::{level, Level};
        match level() {
            // SAFETY: the CPU has the features.
            Level::V4 => return unsafe { x86::chains16(iters) },
            // SAFETY: as above.
            Level::V3 => return unsafe { x86::chains8(iters) },
            Level::Base => {}
        }
    }
    let _ = iters;
    0.0
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Accumulators per kernel: more independent chains than FMA latency x FMA ports on
    /// current cores (4 x 2), so the ports, not the chains, are the limit.
    const CHAINS: usize = 12;

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains16(iters: usize) -> f64 {
        let mut acc = [_mm512_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        // Keeps the chains alive.
        std::hint::black_box(acc);
        (iters * CHAINS * 16 * 2) as f64
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains8(iters: usize) -> f64 {
        let mut acc = [_mm256_set1_ps(0.0); CHAINS];
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        for _ in 0..iters {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        std::hint::black_box(acc);
        (iters * CHAINS * 8 * 2) as f64
    }
}

#[cfg(test)]
mod tests {
    /// A rate comes back wherever there are vector FMAs, finite and above zero (no zero-FLOP
    /// kernel, no loop that never reaches its time), and never where there are none.
    #[test]
    fn peak_measured_where_there_are_fmas() {
        use crate::simd::{level, Level};
        match (level(), super::fma_gflops(0.01)) {
            (Level::Base, r) => assert_eq!(r, None),
            (_, Some(r)) => assert!(r.is_finite() && r > 0.0, "{r}"),
            (l, None) => panic!("no rate at {l:?}"),
        }
    }
}
