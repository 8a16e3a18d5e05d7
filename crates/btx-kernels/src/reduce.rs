//! Row reductions written as independent lanes so the compiler vectorises them. A plain `fold`
//! or `sum` over f32 is one dependent chain (evaluation order and NaN rules forbid reordering),
//! one element per add or max latency — for the softmax maxima alone that was several ms of a
//! preset-S step. The lane split depends only on the length, never on the thread count (nor on
//! the vector width the CPU runs them at: see `simd`).

use super::simd::simd_fn;

pub(crate) const LANES: usize = 16;

simd_fn! {
/// The largest element (NaNs ignored, as `f32::max` does); `-inf` for an empty slice.
pub fn max(x: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = pick(*a, v);
        }
    }
    let m = acc.iter().fold(f32::NEG_INFINITY, |a, &b| pick(a, b));
    rest.iter().fold(m, |a, &b| pick(a, b))
}
}

simd_fn! {
/// `sum_i a_i b_i`.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let s: f32 = acc.iter().sum();
    s + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}
}

simd_fn! {
/// `sum_i a_i b_i c_i`.
pub fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    assert!(a.len() == b.len() && b.len() == c.len());
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    let s: f32 = acc.iter().sum();
    s + ra
        .iter()
        .zip(rb)
        .zip(rc)
        .map(|((x, y), z)| x * y * z)
        .sum::<f32>()
}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_the_plain_loops() {
        for n in [0usize, 1, 15, 16, 17, 100, 257] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) * 0.1)
                .collect();
            let c: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
            let want_max = a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&a), want_max, "max of {n}");
            let want: f64 = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "dot of {n}");
            let want: f64 = (0..n).map(|i| (a[i] * b[i] * c[i]) as f64).sum();
            assert!((dot3(&a, &b, &c) as f64 - want).abs() < 1e-4, "dot3 of {n}");
        }
        assert_eq!(max(&[1.0, f32::NAN, 3.0]), 3.0);
    }
}
