//! `x [m, k] · wᵀ` for a few rows of `x` (decoding: one row per sequence) without gemm. At such
//! shapes the product is a pass over the weight, and gemm's packing of the weight into its
//! panel layout reads and writes it once more before the multiply reads it again; here every
//! weight row is read once, straight from the model's buffer, and dotted with each input row
//! while it is in cache. The weight's rows are shared out over the pool in fixed blocks, and
//! each output element is one lane-split dot product (`reduce::dot`'s order), so the result is
//! the same whatever the thread count.

use rayon::prelude::*;

use super::simd::simd_fn;

/// Input rows up to which [`gemv`] is used for an inference product.
pub const GEMV_ROWS: usize = 8;

/// Weight bytes per task: enough that the pool's hand-over costs little next to the reading.
const TASK_BYTES: usize = 128 << 10;

/// Products below this many multiply-adds run on the calling thread.
const PARALLEL_MACS: usize = 1 << 16;

// The lanes of `reduce::dot`: every output is that dot product, in its order.
use super::reduce::{dot, LANES};

simd_fn! {
/// `out[j * m + i] = x_i · w_j` for the `out.len() / m` rows `w_j` of `w` (row length `k`).
/// Four weight rows at a time share each load of x and keep four streams from memory in
/// flight; each output is still `reduce::dot`'s sum, in its order.
fn block(x: &[f32], w: &[f32], k: usize, m: usize, out: &mut [f32]) {
    let quads = w.chunks_exact(4 * k).zip(out.chunks_exact_mut(4 * m));
    let whole = (w.len() / k) / 4 * 4;
    for (w4, o4) in quads {
        let (w0, rest) = w4.split_at(k);
        let (w1, rest) = rest.split_at(k);
        let (w2, w3) = rest.split_at(k);
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let (mut a0, mut a1, mut a2, mut a3) =
                ([0f32; LANES], [0f32; LANES], [0f32; LANES], [0f32; LANES]);
            let chunks = xi
                .chunks_exact(LANES)
                .zip(w0.chunks_exact(LANES))
                .zip(w1.chunks_exact(LANES))
                .zip(w2.chunks_exact(LANES))
                .zip(w3.chunks_exact(LANES));
            for ((((a, b0), b1), b2), b3) in chunks {
                for l in 0..LANES {
                    a0[l] += a[l] * b0[l];
                    a1[l] += a[l] * b1[l];
                    a2[l] += a[l] * b2[l];
                    a3[l] += a[l] * b3[l];
                }
            }
            let n = k / LANES * LANES;
            for (r, (acc, wr)) in [(a0, w0), (a1, w1), (a2, w2), (a3, w3)].into_iter().enumerate() {
                let s: f32 = acc.iter().sum();
                o4[r * m + i] = s + xi[n..].iter().zip(&wr[n..]).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    for (wj, o) in w[whole * k..].chunks_exact(k).zip(out[whole * m..].chunks_exact_mut(m)) {
        for (i, oi) in o.iter_mut().enumerate() {
            *oi = dot(&x[i * k..(i + 1) * k], wj);
        }
    }
}
}

/// `x [m, k] · wᵀ` for `w [n, k]`, as `[m, n]`.
pub fn gemv(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    gemv_on(x, w, [m, k, n], true)
}

/// [`gemv`] on the calling thread alone (inside a task that already has its share of the
/// pool); the same bits.
pub fn gemv_serial(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    gemv_on(x, w, [m, k, n], false)
}

fn gemv_on(x: &[f32], w: &[f32], [m, k, n]: [usize; 3], spread: bool) -> Vec<f32> {
    assert!(x.len() == m * k && w.len() == n * k, "gemv: shapes");
    // Computed as [n, m] (each task's outputs contiguous), then laid out as [m, n].
    let mut yt = vec![0f32; n * m];
    if k == 0 || n == 0 || m == 0 {
        return yt;
    }
    if !spread || m * n * k < PARALLEL_MACS {
        block(x, w, k, m, &mut yt);
    } else {
        // Whole groups of four rows per task (the kernel's step), about TASK_BYTES of weight.
        let rows = (TASK_BYTES / 4 / k / 4 * 4).max(4);
        yt.par_chunks_mut(rows * m)
            .zip(w.par_chunks(rows * k))
            .with_max_len(1)
            .for_each(|(o, wb)| block(x, wb, k, m, o));
    }
    if m == 1 {
        return yt;
    }
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal to the f64 product within f32 rounding, and the same bits on 1 and 3 threads.
    #[test]
    fn matches_the_product_and_not_the_thread_count() {
        for (m, k, n) in [
            (1, 576, 1536),
            (3, 70, 33),
            (8, 64, 5000),
            (1, 5, 7),
            (2, 40, 6),
        ] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0)
                .collect();
            let run = |t: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
                    .install(|| gemv(&x, &w, m, k, n))
            };
            let y = run(1);
            assert_eq!(y, run(3), "{m}x{k}x{n}");
            assert_eq!(y, gemv_serial(&x, &w, m, k, n), "{m}x{k}x{n}");
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                        .sum();
                    let scale: f64 = (0..k)
                        .map(|l| (x[i * k + l] as f64 * w[j * k + l] as f64).abs())
                        .sum();
                    // Four-row blocks and single rows give `dot`'s bits.
                    let d = dot(&x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
                    assert_eq!(y[i * n + j].to_bits(), d.to_bits(), "{m}x{k}x{n} [{i},{j}]");
                    let got = y[i * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-6 * scale.max(1.0),
                        "{m}x{k}x{n} [{i},{j}]"
                    );
                }
            }
        }
    }
}
