//! A vectorised exp for softmax-like loops: exp(x) via range reduction (x = n ln2 + r) and a
//! degree-6 polynomial for e^r, accurate to ~2 ulp on [-87, 88]; below that it returns 0.
//! Sixteen lanes at a time with AVX-512, eight with AVX2 + FMA, libm otherwise (the vector
//! versions run the same operations, so an element's result is the same in both). Also SwiGLU
//! forward and backward built on it, each a single pass (sigmoid in registers, never stored).

use super::simd::{level, Level};
use std::mem::MaybeUninit;

/// In place: `x[i] = exp(x[i] - sub)`; returns the sum of the results.
pub fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU supports the target features the function is compiled for.
        Level::V4 => return unsafe { avx512::exp_sub_sum(x, sub) },
        // SAFETY: as above.
        Level::V3 => return unsafe { exp_sub_sum_avx2(x, sub) },
        Level::Base => {}
    }
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = (*v - sub).exp();
        s += *v;
    }
    s
}

/// The exp kernels' constants, shared so the AVX2 and AVX-512 versions stay the same
/// computation: the range of inputs, ln 2 split in a high part exact in float and a low
/// remainder (Cody-Waite), and the minimax coefficients of e^r on [-ln2/2, ln2/2] from the
/// highest power down to r^2's (then e^r = 1 + r + r^2 * poly).
const EXP_LO: f32 = -87.3;
const EXP_HI: f32 = 88.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// `e^v` of eight lanes; 0 below -87.3, `e^88` above 88.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(v0: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let lo = _mm256_set1_ps(EXP_LO);
    let under = _mm256_cmp_ps(v0, lo, _CMP_LT_OQ);
    let v = _mm256_min_ps(_mm256_max_ps(v0, lo), _mm256_set1_ps(EXP_HI));
    let k = _mm256_round_ps(
        _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(
        k,
        _mm256_set1_ps(LN2_LO),
        _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), v),
    );
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
    }
    y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(r, r),
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(under, _mm256_mul_ps(y, scale))
}

/// # Safety
/// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(x: &mut [f32], sub: f32) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let mut i = 0;
    let vsub = _mm256_set1_ps(sub);
    let mut acc = _mm256_setzero_ps();
    while i + 8 <= n {
        let p = x.as_mut_ptr().add(i);
        let out = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), vsub));
        _mm256_storeu_ps(p, out);
        acc = _mm256_add_ps(acc, out);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut s: f32 = lanes.iter().sum();
    while i < n {
        let e = (x[i] - sub).exp();
        x[i] = e;
        s += e;
        i += 1;
    }
    s
}

/// SwiGLU forward, `out = silu(a) * b = sigmoid(a) (a b)`, in one pass.
pub fn swiglu(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>]) {
    assert!(a.len() == b.len() && b.len() == out.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features; the kernel stays within the equal lengths.
        Level::V4 => i = unsafe { avx512::swiglu(a, b, out) },
        // SAFETY: as above.
        Level::V3 => i = unsafe { swiglu_avx2(a, b, out) },
        Level::Base => {}
    }
    for j in i..a.len() {
        out[j].write(sigmoid(a[j]) * (a[j] * b[j]));
    }
}

/// SwiGLU backward for the incoming gradient `g`: `db = g silu(a)`,
/// `da = g b sigmoid(a) (1 + a (1 - sigmoid(a)))`, in one pass; with `h`, also the forward's
/// output again (the same bits as [`swiglu`]), for a caller that did not keep it.
pub fn swiglu_backward(
    a: &[f32],
    b: &[f32],
    g: &[f32],
    da: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
    mut h: Option<&mut [MaybeUninit<f32>]>,
) {
    let n = a.len();
    assert!(b.len() == n && g.len() == n && da.len() == n && db.len() == n);
    assert!(h.as_ref().is_none_or(|h| h.len() == n));
    let ph = h
        .as_mut()
        .map_or(std::ptr::null_mut(), |h| h.as_mut_ptr().cast::<f32>());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features; the kernel stays within the equal lengths (`ph`
        // null or valid for n writes).
        Level::V4 => i = unsafe { avx512::swiglu_backward(a, b, g, da, db, ph) },
        // SAFETY: as above.
        Level::V3 => i = unsafe { swiglu_backward_avx2(a, b, g, da, db, ph) },
        Level::Base => {}
    }
    for j in i..n {
        let sg = sigmoid(a[j]);
        db[j].write(g[j] * (a[j] * sg));
        da[j].write(g[j] * b[j] * sg * (1.0 + a[j] * (1.0 - sg)));
        if let Some(h) = h.as_mut() {
            h[j].write(sg * (a[j] * b[j]));
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Lanes of `1 / (1 + e^-a)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn sigmoid8(a: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), a));
    _mm256_div_ps(one, _mm256_add_ps(one, e))
}

/// Every element, the last partial group of eight through a padded copy, so that an element's
/// result does not depend on where the slice starts (the trainer's results must not depend on
/// how rows are cut among threads). Returns how many elements it did.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
/// `b` and `out` must be at least as long as `a` (they are read and written through raw pointers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_avx2(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>]) -> usize {
    use std::arch::x86_64::*;
    let len = a.len();
    let n = len / 8 * 8;
    let o = out.as_mut_ptr().cast::<f32>();
    let lanes = |va: __m256, vb: __m256| _mm256_mul_ps(sigmoid8(va), _mm256_mul_ps(va, vb));
    for i in (0..n).step_by(8) {
        let va = _mm256_loadu_ps(a.as_ptr().add(i));
        let vb = _mm256_loadu_ps(b.as_ptr().add(i));
        _mm256_storeu_ps(o.add(i), lanes(va, vb));
    }
    if n < len {
        let [mut ta, mut tb, mut to] = [[0f32; 8]; 3];
        ta[..len - n].copy_from_slice(&a[n..]);
        tb[..len - n].copy_from_slice(&b[n..]);
        let y = lanes(_mm256_loadu_ps(ta.as_ptr()), _mm256_loadu_ps(tb.as_ptr()));
        _mm256_storeu_ps(to.as_mut_ptr(), y);
        std::ptr::copy_nonoverlapping(to.as_ptr(), o.add(n), len - n);
    }
    len
}

/// Every element, the last partial group of eight through a padded copy, so that an element's
/// result does not depend on where the slice starts (the trainer's results must not depend on
/// how rows are cut among threads). Returns how many elements it did.
///
/// # Safety
/// The CPU must support AVX2 and FMA (`simd::level()` says so before any call).
/// `b`, `g`, `da` and `db` must be at least as long as `a`, and `ph` valid for writes of
/// `a.len()` floats (or null when the product is not wanted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn swiglu_backward_avx2(
    a: &[f32],
    b: &[f32],
    g: &[f32],
    da: &mut [MaybeUninit<f32>],
    db: &mut [MaybeUninit<f32>],
    ph: *mut f32,
) -> usize {
    use std::arch::x86_64::*;
    let len = a.len();
    let n = len / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    let (pa, pb) = (da.as_mut_ptr().cast::<f32>(), db.as_mut_ptr().cast::<f32>());
    // (da, db, h) of eight lanes; da = g b sg (1 + a (1 - sg)), multiplied left to right as
    // the scalar form, h as `swiglu_avx2`.
    let lanes = |va: __m256, vb: __m256, vg: __m256| {
        let sg = sigmoid8(va);
        let t = _mm256_add_ps(one, _mm256_mul_ps(va, _mm256_sub_ps(one, sg)));
        (
            _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(vg, vb), sg), t),
            _mm256_mul_ps(vg, _mm256_mul_ps(va, sg)),
            _mm256_mul_ps(sg, _mm256_mul_ps(va, vb)),
        )
    };
    for i in (0..n).step_by(8) {
        let (ya, yb, yh) = lanes(
            _mm256_loadu_ps(a.as_ptr().add(i)),
            _mm256_loadu_ps(b.as_ptr().add(i)),
            _mm256_loadu_ps(g.as_ptr().add(i)),
        );
        _mm256_storeu_ps(pa.add(i), ya);
        _mm256_storeu_ps(pb.add(i), yb);
        if !ph.is_null() {
            _mm256_storeu_ps(ph.add(i), yh);
        }
    }
    if n < len {
        let [mut ta, mut tb, mut tg, mut oa, mut ob, mut oh] = [[0f32; 8]; 6];
        ta[..len - n].copy_from_slice(&a[n..]);
        tb[..len - n].copy_from_slice(&b[n..]);
        tg[..len - n].copy_from_slice(&g[n..]);
        let (ya, yb, yh) = lanes(
            _mm256_loadu_ps(ta.as_ptr()),
            _mm256_loadu_ps(tb.as_ptr()),
            _mm256_loadu_ps(tg.as_ptr()),
        );
        _mm256_storeu_ps(oa.as_mut_ptr(), ya);
        _mm256_storeu_ps(ob.as_mut_ptr(), yb);
        _mm256_storeu_ps(oh.as_mut_ptr(), yh);
        std::ptr::copy_nonoverlapping(oa.as_ptr(), pa.add(n), len - n);
        std::ptr::copy_nonoverlapping(ob.as_ptr(), pb.add(n), len - n);
        if !ph.is_null() {
            std::ptr::copy_nonoverlapping(oh.as_ptr(), ph.add(n), len - n);
        }
    }
    len
}

/// The same kernels sixteen lanes wide; partial groups through masked loads and stores, so an
/// element's result never depends on where its slice starts.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Mask of the first `n` (< 16) lanes.
    #[inline]
    fn first(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `e^v` of sixteen lanes: `exp8`'s operations, lane for lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp16(v0: __m512) -> __m512 {
        use super::{EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO};
        let lo = _mm512_set1_ps(EXP_LO);
        let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v0, lo);
        let v = _mm512_min_ps(_mm512_max_ps(v0, lo), _mm512_set1_ps(EXP_HI));
        let k = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(
            k,
            _mm512_set1_ps(LN2_LO),
            _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), v),
        );
        let mut y = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
        }
        y = _mm512_fmadd_ps(
            y,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(k),
            _mm512_set1_epi32(127),
        )));
        _mm512_maskz_mov_ps(!under, _mm512_mul_ps(y, scale))
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn sigmoid16(a: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), a));
        _mm512_div_ps(one, _mm512_add_ps(one, e))
    }

    /// Masked load of `n` lanes from `p` (the rest zero).
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// `p` must be valid for reads of `n` (at most 16) floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32, n: usize) -> __m512 {
        if n == 16 {
            _mm512_loadu_ps(p)
        } else {
            _mm512_maskz_loadu_ps(first(n), p)
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// `p` must be valid for writes of `n` (at most 16) floats.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store(p: *mut f32, v: __m512, n: usize) {
        if n == 16 {
            _mm512_storeu_ps(p, v)
        } else {
            _mm512_mask_storeu_ps(p, first(n), v)
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_sub_sum(x: &mut [f32], sub: f32) -> f32 {
        let vsub = _mm512_set1_ps(sub);
        let mut acc = _mm512_setzero_ps();
        for i in (0..x.len()).step_by(16) {
            let n = 16.min(x.len() - i);
            let p = x.as_mut_ptr().add(i);
            let out = _mm512_maskz_mov_ps(first_or_all(n), exp16(_mm512_sub_ps(load(p, n), vsub)));
            store(p, out, n);
            acc = _mm512_add_ps(acc, out);
        }
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    #[inline]
    fn first_or_all(n: usize) -> __mmask16 {
        if n == 16 {
            !0
        } else {
            first(n)
        }
    }

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// `b` and `out` must be at least as long as `a`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu(a: &[f32], b: &[f32], out: &mut [MaybeUninit<f32>]) -> usize {
        let o = out.as_mut_ptr().cast::<f32>();
        for i in (0..a.len()).step_by(16) {
            let n = 16.min(a.len() - i);
            let (va, vb) = (load(a.as_ptr().add(i), n), load(b.as_ptr().add(i), n));
            store(
                o.add(i),
                _mm512_mul_ps(sigmoid16(va), _mm512_mul_ps(va, vb)),
                n,
            );
        }
        a.len()
    }

    /// # Safety
    /// The CPU must support AVX-512F (`simd::level()` is `V4`).
    /// As for the AVX2 version: `b`, `g`, `da`, `db` at least as long as `a`, `ph` valid for
    /// `a.len()` floats or null.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu_backward(
        a: &[f32],
        b: &[f32],
        g: &[f32],
        da: &mut [MaybeUninit<f32>],
        db: &mut [MaybeUninit<f32>],
        ph: *mut f32,
    ) -> usize {
        let one = _mm512_set1_ps(1.0);
        let (pa, pb) = (da.as_mut_ptr().cast::<f32>(), db.as_mut_ptr().cast::<f32>());
        for i in (0..a.len()).step_by(16) {
            let n = 16.min(a.len() - i);
            let va = load(a.as_ptr().add(i), n);
            let vb = load(b.as_ptr().add(i), n);
            let vg = load(g.as_ptr().add(i), n);
            // As the AVX2 kernel: da = g b sg (1 + a (1 - sg)), left to right.
            let sg = sigmoid16(va);
            let t = _mm512_add_ps(one, _mm512_mul_ps(va, _mm512_sub_ps(one, sg)));
            let ya = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(vg, vb), sg), t);
            store(pa.add(i), ya, n);
            store(pb.add(i), _mm512_mul_ps(vg, _mm512_mul_ps(va, sg)), n);
            if !ph.is_null() {
                // As `swiglu`.
                store(ph.add(i), _mm512_mul_ps(sg, _mm512_mul_ps(va, vb)), n);
            }
        }
        a.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_to_a_few_ulp() {
        let xs: Vec<f32> = (0..4000).map(|i| -100.0 + i as f32 * 0.032).collect();
        let mut y = xs.clone();
        let s = exp_sub_sum(&mut y, 1.5);
        let mut want_sum = 0f64;
        for (x, got) in xs.iter().zip(&y) {
            let want = ((*x - 1.5) as f64).exp();
            want_sum += want;
            if want < 1e-37 {
                assert!(*got < 1e-30, "exp({}) = {got}", x - 1.5);
                continue;
            }
            let rel = ((*got as f64 - want) / want).abs();
            assert!(
                rel < 5e-7,
                "exp({}) = {got}, want {want} (rel {rel})",
                x - 1.5
            );
        }
        assert!(((s as f64 - want_sum) / want_sum).abs() < 1e-5);
    }

    #[test]
    fn swiglu_kernels_match_the_scalar_formulas() {
        // 37 elements: four AVX2 groups and a scalar tail; inputs span saturated sigmoids.
        let a: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 1.7).collect();
        let b: Vec<f32> = (0..37).map(|i| 0.5 - (i % 7) as f32 * 0.3).collect();
        let g: Vec<f32> = (0..37).map(|i| 1.0 + (i % 3) as f32).collect();
        let mut out = vec![MaybeUninit::uninit(); 37];
        let (mut da, mut db, mut h) = (out.clone(), out.clone(), out.clone());
        swiglu(&a, &b, &mut out);
        swiglu_backward(&a, &b, &g, &mut da, &mut db, Some(&mut h));
        let bits = |v: &[MaybeUninit<f32>]| -> Vec<u32> {
            v.iter()
                // SAFETY: all 37 elements of each buffer were written above.
                .map(|x| unsafe { x.assume_init() }.to_bits())
                .collect()
        };
        assert_eq!(bits(&h), bits(&out), "the backward's h is the forward's");
        for i in 0..37 {
            let sg = 1.0 / (1.0 + (-(a[i] as f64)).exp());
            let (x, y, dy) = (a[i] as f64, b[i] as f64, g[i] as f64);
            let want = [
                x * sg * y,
                dy * y * sg * (1.0 + x * (1.0 - sg)),
                dy * x * sg,
            ];
            // SAFETY: all 37 elements were written above.
            let got = unsafe {
                [
                    out[i].assume_init(),
                    da[i].assume_init(),
                    db[i].assume_init(),
                ]
            };
            for (w, o) in want.iter().zip(got) {
                assert!(
                    (w - o as f64).abs() <= 1e-6 * (1.0 + w.abs()),
                    "{i}: {o} vs {w}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[cfg_attr(not(host_avx512), ignore = "needs a CPU with AVX-512 (F, VL, BW, DQ)")]
    fn the_avx512_kernels_compute_the_avx2_kernels_bits() {
        assert_eq!(
            level(),
            Level::V4,
            "this CPU has AVX-512 but the V4 kernels are not picked (is BTX_SIMD set?)"
        );
        // 45 elements: two full groups of sixteen, a partial one, inputs spanning the
        // underflow cut-off and saturated sigmoids; offset starts check position independence.
        let a: Vec<f32> = (0..45).map(|i| (i as f32 - 22.0) * 4.3).collect();
        let b: Vec<f32> = (0..45).map(|i| 0.5 - (i % 7) as f32 * 0.3).collect();
        let g: Vec<f32> = (0..45).map(|i| 1.0 + (i % 3) as f32).collect();
        let run = |wide: bool, s: usize| {
            let n = a.len() - s;
            let mut out = vec![MaybeUninit::uninit(); n];
            let (mut da, mut db, mut h) = (out.clone(), out.clone(), out.clone());
            let ph = h.as_mut_ptr().cast::<f32>();
            // SAFETY: asserted above: the CPU has AVX-512 (and so AVX2 + FMA).
            unsafe {
                if wide {
                    avx512::swiglu(&a[s..], &b[s..], &mut out);
                    avx512::swiglu_backward(&a[s..], &b[s..], &g[s..], &mut da, &mut db, ph);
                } else {
                    swiglu_avx2(&a[s..], &b[s..], &mut out);
                    swiglu_backward_avx2(&a[s..], &b[s..], &g[s..], &mut da, &mut db, ph);
                }
                let bits = |v: Vec<MaybeUninit<f32>>| -> Vec<u32> {
                    v.iter().map(|x| x.assume_init().to_bits()).collect()
                };
                let (out, h) = (bits(out), bits(h));
                assert_eq!(h, out, "the backward's h is the forward's (start {s})");
                [out, bits(da), bits(db)]
            }
        };
        for s in [0, 3, 16] {
            assert_eq!(run(true, s), run(false, s), "start {s}");
            assert_eq!(run(true, s)[0][..], run(true, 0)[0][s..], "start {s}");
        }
        // exp: the same bits lane for lane (AVX2 does its tail with libm, so full groups only).
        let x: Vec<f32> = (0..48).map(|i| (i as f32 - 40.0) * 2.9).collect();
        let (mut wide, mut narrow) = (x.clone(), x.clone());
        // SAFETY: as above.
        let (s16, s8) = unsafe {
            (
                avx512::exp_sub_sum(&mut wide, 0.7),
                exp_sub_sum_avx2(&mut narrow, 0.7),
            )
        };
        assert_eq!(wide, narrow);
        assert!((s16 - s8).abs() <= 1e-6 * s8.abs(), "{s16} vs {s8}");
        let mut tail = x[..37].to_vec();
        // SAFETY: as above.
        unsafe { avx512::exp_sub_sum(&mut tail, 0.7) };
        assert_eq!(tail[..], wide[..37]);
    }
}
