//! A register-tiled AVX-512 product for the attention's small blocks (64 rows against up to a
//! sequence of keys, head-dim wide), where `gemm`'s per-call packing and dispatch cost a third
//! of the work: S = Q Kᵀ of 64 x 256 x 64 took 13.1 µs in gemm (161 GFLOP/s) and 8.5 µs here
//! (246 GFLOP/s); P V of 64 x 64 x 256 9.4 vs 8.2 µs (hot operands, one core).
//!
//! No packing: the right operand must have contiguous rows (B(l, j) at `l * b_rs + j`), which
//! the attention arranges by transposing K and V once per head. Each output tile of up to 6 rows
//! x 64 columns sits in 24 registers through the whole reduction, which runs in order l = 0..k
//! for every element: the result depends on the shapes alone.

/// True when [`product`] may be called (AVX-512 found and not capped by `BTX_SIMD`).
pub fn available() -> bool {
    cfg!(target_arch = "x86_64") && super::simd::level() == super::simd::Level::V4
}

/// `dst[m x n] = (acc ? dst : 0) + alpha * A[m x k] B[k x n]`, with A(i, l) at
/// `a[i*a_rs + l*a_cs]`, B(l, j) at `b[l*b_rs + j]`, dst row stride `dst_rs`.
///
/// # Safety
/// [`available`] must be true; the pointers must be valid for every element the strides reach
/// (dst initialised when `acc`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    (a, a_rs, a_cs): (*const f32, usize, usize),
    (b, b_rs): (*const f32, usize),
    alpha: f32,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; `available` checked AVX-512.
    unsafe {
        x86::product(
            [m, n, k],
            dst,
            dst_rs,
            acc,
            (a, a_rs, a_cs),
            (b, b_rs),
            alpha,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, n, k, dst, dst_rs, acc, a, a_rs, a_cs, b, b_rs, alpha);
        unreachable!("tile_mm::product without AVX-512");
    }
}

/// `out [cols, rows]` (row-major) = the transpose of `x [rows, cols]` (row stride `rs`).
///
/// # Safety
/// [`available`] must be true; `x` valid for `rows` rows of `rs` elements (the first `cols`
/// read), `out` for `rows * cols` writes.
pub unsafe fn transpose([rows, cols]: [usize; 2], x: *const f32, rs: usize, out: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller's contract; `available` checked AVX-512.
    unsafe {
        x86::transpose([rows, cols], x, rs, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, cols, x, rs, out);
        unreachable!("tile_mm::transpose without AVX-512");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Most rows per register tile (6 x 4 accumulators + 4 B vectors + 1 broadcast of 32).
    const MR: usize = 6;
    /// Columns per tile: four vectors of 16.
    const NR: usize = 64;

    /// Where one tile reads and writes.
    #[derive(Clone, Copy)]
    struct Tile {
        k: usize,
        a: *const f32,
        a_rs: usize,
        a_cs: usize,
        b: *const f32,
        b_rs: usize,
        c: *mut f32,
        c_rs: usize,
        alpha: f32,
        acc: bool,
        /// Per vector: which of its 16 columns exist (the last may be partial).
        masks: [__mmask16; 4],
    }

    /// R rows x V vectors of output, accumulated in registers over l = 0..k.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// Every pointer of `t` must be valid for the rows, columns and strides it describes
    /// (R rows of A and C, the masked columns of B and C, k steps).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn tile<const R: usize, const V: usize>(t: Tile) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for l in 0..t.k {
            let bp = t.b.add(l * t.b_rs);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                // Masked loads never touch the columns past n.
                *x = _mm512_maskz_loadu_ps(t.masks[v], bp.add(16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*t.a.add(i * t.a_rs + l * t.a_cs));
                for (r, x) in row.iter_mut().zip(&bv) {
                    *r = _mm512_fmadd_ps(av, *x, *r);
                }
            }
        }
        let alpha = _mm512_set1_ps(t.alpha);
        for (i, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                let cp = t.c.add(i * t.c_rs + 16 * v);
                let mut x = _mm512_mul_ps(*r, alpha);
                if t.acc {
                    x = _mm512_add_ps(_mm512_maskz_loadu_ps(t.masks[v], cp), x);
                }
                _mm512_mask_storeu_ps(cp, t.masks[v], x);
            }
        }
    }

    /// `tile::<R, V>` for a run-time row count `r <= MR`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// As for `tile`, with `r` rows.
    #[target_feature(enable = "avx512f")]
    unsafe fn rows<const V: usize>(r: usize, t: Tile) {
        match r {
            1 => tile::<1, V>(t),
            2 => tile::<2, V>(t),
            3 => tile::<3, V>(t),
            4 => tile::<4, V>(t),
            5 => tile::<5, V>(t),
            _ => tile::<MR, V>(t),
        }
    }

    /// In 16 x 16 blocks transposed in registers (unpack, then two rounds of 128-bit lane
    /// shuffles): 16 loads and 16 stores of whole lines per block. A scalar loop wrote every
    /// element to another cache line (2% of a MoE-S step), and 16-row gathers were no faster.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// `x` must be valid for reads of `rows` rows of `cols` floats `rs` apart, and `out` for
    /// writes of `cols * rows` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose(
        [rows, cols]: [usize; 2],
        x: *const f32,
        rs: usize,
        out: *mut f32,
    ) {
        let mask = |n: usize| ((1u32 << n.min(16)) - 1) as __mmask16;
        for r0 in (0..rows).step_by(16) {
            let nr = (rows - r0).min(16);
            for c0 in (0..cols).step_by(16) {
                let nc = (cols - c0).min(16);
                let r: [__m512; 16] = std::array::from_fn(|i| {
                    if i < nr {
                        _mm512_maskz_loadu_ps(mask(nc), x.add((r0 + i) * rs + c0))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                let t: [__m512; 16] = std::array::from_fn(|i| {
                    let (a, b) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm512_unpacklo_ps(a, b)
                    } else {
                        _mm512_unpackhi_ps(a, b)
                    }
                });
                // u[4g + j]: rows 4g..4g+4 of columns j, 4 + j, 8 + j, 12 + j (one per lane).
                let u: [__m512; 16] = std::array::from_fn(|i| {
                    let (g, j) = (i / 4, i % 4);
                    let (a, b) = (
                        _mm512_castps_pd(t[4 * g + j / 2]),
                        _mm512_castps_pd(t[4 * g + 2 + j / 2]),
                    );
                    _mm512_castpd_ps(if j % 2 == 0 {
                        _mm512_unpacklo_pd(a, b)
                    } else {
                        _mm512_unpackhi_pd(a, b)
                    })
                });
                for j in 0..4 {
                    let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
                    let v1 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
                    let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
                    let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
                    let col = [
                        _mm512_shuffle_f32x4::<0x88>(v0, w0),
                        _mm512_shuffle_f32x4::<0x88>(v1, w1),
                        _mm512_shuffle_f32x4::<0xdd>(v0, w0),
                        _mm512_shuffle_f32x4::<0xdd>(v1, w1),
                    ];
                    for (q, v) in col.into_iter().enumerate() {
                        let c = 4 * q + j;
                        if c < nc {
                            _mm512_mask_storeu_ps(out.add((c0 + c) * rows + r0), mask(nr), v);
                        }
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// As for [`super::product`]: `dst` valid for `m` rows of `n` floats `dst_rs` apart
    /// (initialised when `acc`), `a` and `b` for the extents their strides reach.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn product(
        [m, n, k]: [usize; 3],
        dst: *mut f32,
        dst_rs: usize,
        acc: bool,
        (a, a_rs, a_cs): (*const f32, usize, usize),
        (b, b_rs): (*const f32, usize),
        alpha: f32,
    ) {
        let mut j = 0;
        while j < n {
            let w = (n - j).min(NR);
            let masks: [__mmask16; 4] = std::array::from_fn(|v| {
                let cols = w.saturating_sub(16 * v).min(16);
                ((1u32 << cols) - 1) as __mmask16
            });
            let mut i = 0;
            while i < m {
                let r = (m - i).min(MR);
                let t = Tile {
                    k,
                    a: a.add(i * a_rs),
                    a_rs,
                    a_cs,
                    b: b.add(j),
                    b_rs,
                    c: dst.add(i * dst_rs + j),
                    c_rs: dst_rs,
                    alpha,
                    acc,
                    masks,
                };
                match w.div_ceil(16) {
                    1 => rows::<1>(r, t),
                    2 => rows::<2>(r, t),
                    3 => rows::<3>(r, t),
                    _ => rows::<4>(r, t),
                }
                i += r;
            }
            j += w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition() {
        if !available() {
            return;
        }
        for (rows, cols, rs) in [
            (1, 1, 1),
            (17, 5, 9),
            (256, 64, 256),
            (33, 64, 70),
            (40, 37, 50),
        ] {
            let x: Vec<f32> = (0..rows * rs).map(|i| i as f32).collect();
            let mut out = vec![f32::NAN; rows * cols + 1];
            // SAFETY: x spans rows rows of rs elements (cols <= rs), out rows * cols.
            unsafe { transpose([rows, cols], x.as_ptr(), rs, out.as_mut_ptr()) };
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[c * rows + r], x[r * rs + c], "{rows}x{cols} ({r}, {c})");
                }
            }
            assert!(out[rows * cols].is_nan(), "wrote past the end");
        }
    }

    /// Against a plain triple loop, over odd shapes, strides, accumulation and scaling.
    #[test]
    #[cfg_attr(not(host_avx512), ignore = "needs a CPU with AVX-512 (F, VL, BW, DQ)")]
    fn matches_the_definition() {
        assert!(
            available(),
            "this CPU has AVX-512 but tile_mm is not available (is BTX_SIMD set?)"
        );
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 17, 3),
            (64, 64, 64),
            (13, 100, 37),
            (6, 130, 256),
        ] {
            for (a_t, acc) in [(false, false), (true, true)] {
                let (a_rs, a_cs) = if a_t { (1, m + 3) } else { (k + 2, 1) };
                let b_rs = n + 5;
                let dst_rs = n + 1;
                let a: Vec<f32> = (0..(m + 3) * (k + 2))
                    .map(|i| ((i * 37) % 19) as f32 * 0.1 - 0.9)
                    .collect();
                let b: Vec<f32> = (0..k * b_rs)
                    .map(|i| ((i * 11) % 23) as f32 * 0.05 - 0.5)
                    .collect();
                let init: Vec<f32> = (0..m * dst_rs).map(|i| (i % 5) as f32).collect();
                let mut got = init.clone();
                // SAFETY: every buffer spans the extents its strides reach.
                unsafe {
                    product(
                        [m, n, k],
                        got.as_mut_ptr(),
                        dst_rs,
                        acc,
                        (a.as_ptr(), a_rs, a_cs),
                        (b.as_ptr(), b_rs),
                        0.5,
                    )
                };
                for i in 0..m {
                    for j in 0..dst_rs {
                        let want = if j < n {
                            let s: f64 = (0..k)
                                .map(|l| a[i * a_rs + l * a_cs] as f64 * b[l * b_rs + j] as f64)
                                .sum();
                            0.5 * s as f32 + if acc { init[i * dst_rs + j] } else { 0.0 }
                        } else {
                            init[i * dst_rs + j]
                        };
                        let g = got[i * dst_rs + j];
                        assert!(
                            (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{m}x{n}x{k} a_t={a_t} acc={acc}: ({i}, {j}) {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
