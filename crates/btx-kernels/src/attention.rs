//! Fused causal self-attention (grouped-query) with a handwritten backward.
//!
//! Layout: q `[B*T, H*hd]`, k and v `[B*T, KV*hd]`, row-major, heads as column blocks — the
//! natural output of the projections, so no transposes are materialised. Query head h reads
//! key/value head h / (H / KV), as transformers' `repeat_kv` does.
//!
//! Forward, per (batch, head), in blocks of `BLK` query rows: S = Q Kᵀ only against the keys the
//! block can see (the upper triangle is never computed), P = softmax(S / sqrt(hd)) with a
//! vectorised exp, O = P V. P is kept for the backward:
//! dV = Pᵀ dO, dP = dO Vᵀ, dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = dS K / sqrt(hd),
//! dK = dSᵀ Q / sqrt(hd). The backward runs per (batch, KV head) so the query heads sharing a
//! KV head accumulate into its dK / dV without races. The matrix products run on one core each
//! (rayon spreads the heads over the cores): on [`tile_mm`]'s register-tiled kernel where the
//! CPU has AVX-512 — K and V transposed once per KV head for the products against Kᵀ and Vᵀ —
//! else through the `gemm` crate.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::simd::simd_fn;
use super::tile_mm;
use super::vexp::exp_sub_sum;
use super::SharedPtr as Ptr;

const BLK: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub kvh: usize,
    pub hd: usize,
}

impl Dims {
    pub fn rep(&self) -> usize {
        self.h / self.kvh
    }
    pub fn qd(&self) -> usize {
        self.h * self.hd
    }
    pub fn kd(&self) -> usize {
        self.kvh * self.hd
    }
}

/// RoPE tables for positions `0..T`: `cos`, `sin` as `[T, hd/2]` (rotate-half convention).
#[derive(Clone, Debug)]
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    /// Rotates every head of `x: [B*T, heads*hd]` in place: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).
    /// `inverse` rotates by the negated angle, which is the gradient of the forward rotation.
    pub fn rotate(&self, x: &mut [f32], cols: usize, d: Dims, inverse: bool) {
        x.par_chunks_mut(cols * 64)
            .enumerate()
            .for_each(|(c, chunk)| self.rotate_rows(chunk, c * 64, cols, d, inverse));
    }

    /// A rotated copy of `x` (each task copies and rotates its own rows).
    pub fn rotated(&self, x: &[f32], cols: usize, d: Dims) -> Vec<f32> {
        let mut out = super::uninit(x.len());
        out.par_chunks_mut(cols * 64)
            .zip(x.par_chunks(cols * 64))
            .enumerate()
            .for_each(|(c, (o, x))| {
                for (o, &x) in o.iter_mut().zip(x) {
                    o.write(x);
                }
                // SAFETY: every element of the chunk was written just above.
                let o = unsafe { &mut *(o as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
                self.rotate_rows(o, c * 64, cols, d, false);
            });
        // SAFETY: the chunks cover the buffer and each was written whole.
        unsafe { super::assume_init(out) }
    }

    fn rotate_rows(&self, rows: &mut [f32], first: usize, cols: usize, d: Dims, inverse: bool) {
        rotate_rows(&self.cos, &self.sin, rows, first, cols, d, inverse)
    }
}

simd_fn! {
/// Rotates rows `first..` (of `cols` columns, positions modulo `d.t`) by the tables' angles.
fn rotate_rows(
    cos: &[f32],
    sin: &[f32],
    rows: &mut [f32],
    first: usize,
    cols: usize,
    d: Dims,
    inverse: bool,
) {
    let (t, hd) = (d.t, d.hd);
    let half = hd / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    for (r, row) in rows.chunks_exact_mut(cols).enumerate() {
        let pos = (first + r) % t;
        let cs = &cos[pos * half..(pos + 1) * half];
        let sn = &sin[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b, c, s) = (x1[j], x2[j], cs[j], sign * sn[j]);
                x1[j] = a * c - b * s;
                x2[j] = b * c + a * s;
            }
        }
    }
}
}

/// `dst[m x n] = (acc ? dst : 0) + scale * A[m x k] B[k x n]`, with A(i, l) = a[i*a_rs + l*a_cs],
/// B(l, j) = b[l*b_rs + j*b_cs], dst row stride `dst_rs`, column stride 1.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` floats `dst_rs` apart (initialised when
/// `acc`), `a` and `b` for reads of the extents their strides reach; on the AVX-512 path
/// `b_cs` must be 1 (B's rows contiguous).
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
    scale: f32,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let tile = b_cs == 1 && tile_mm::available();
    let _clock = crate::instrument::gemm_clock::Timer::start(crate::instrument::gemm_clock::Call {
        m,
        n,
        k,
        dst_rs,
        a: (a_rs, a_cs),
        b: (b_rs, b_cs),
        acc,
        parallel: false,
        tile,
    });
    if tile {
        // SAFETY: the caller's contract; AVX-512 checked, B's rows contiguous.
        unsafe {
            tile_mm::product(
                [m, n, k],
                dst,
                dst_rs,
                acc,
                (a, a_rs, a_cs),
                (b, b_rs),
                scale,
            )
        };
        return;
    }
    gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        if acc { 1.0 } else { 0.0 },
        scale,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// The right operand of a product against Xᵀ (X one head of `t` rows, row stride `rs`): the
/// transposed copy in `scratch` when the tile kernel will run it, else X's own strides.
/// Returns (pointer, B row stride, B column stride).
///
/// # Safety
/// `x` must be valid for `t` rows of `rs` elements, of which the first `hd` are read.
unsafe fn against_transposed(
    x: *const f32,
    rs: usize,
    t: usize,
    hd: usize,
    scratch: &mut Vec<f32>,
) -> (*const f32, usize, usize) {
    if tile_mm::available() {
        scratch.clear();
        scratch.reserve(hd * t);
        // SAFETY: the caller's contract; AVX-512 checked; the scratch holds hd * t elements,
        // all written by the transpose.
        unsafe {
            tile_mm::transpose([t, hd], x, rs, scratch.as_mut_ptr());
            scratch.set_len(hd * t);
        }
        (scratch.as_ptr(), t, 1)
    } else {
        (x, 1, rs)
    }
}

simd_fn! {
/// In place: a row of scores becomes softmax probabilities.
fn softmax(row: &mut [f32]) {
    let m = super::reduce::max(row);
    let inv = 1.0 / exp_sub_sum(row, m);
    row.iter_mut().for_each(|x| *x *= inv);
}
}

simd_fn! {
/// In place: a row of dP becomes dS = P (dP - D) with D = <P, dP> (= <dO, O>, but this way a
/// row that sees a single key gets exactly zero, as the composite softmax does).
fn softmax_grad(p: &[f32], dp: &mut [f32]) {
    let d = super::reduce::dot(p, dp);
    for (s, &pp) in dp.iter_mut().zip(p) {
        *s = pp * (*s - d);
    }
}
}

/// Forward: returns (O `[B*T, H*hd]`, P `[B*H, T, T]`).
pub fn forward(q: &[f32], k: &[f32], v: &[f32], d: Dims) -> (Vec<f32>, Vec<f32>) {
    let (t, hd, qd, kd) = (d.t, d.hd, d.qd(), d.kd());
    let scale = 1.0 / (hd as f32).sqrt();
    // Both outputs are written whole: `out` by the O = P V products (every row of every head),
    // `p` row by row (the visible part by the S = Q Kᵀ product, the rest filled with zeros).
    let mut out = super::uninit(d.b * t * qd);
    let mut p = super::uninit(d.b * d.h * t * t);
    let op = Ptr(out.as_mut_ptr().cast());
    // One task per (batch, KV head): K is transposed once for the query heads that read it,
    // whose P blocks lie next to each other (h = g * rep + r).
    p.par_chunks_mut(d.rep() * t * t)
        .enumerate()
        .for_each_init(Vec::new, |kt, (bg, pg)| {
            let (bi, g) = (bg / d.kvh, bg % d.kvh);
            // SAFETY: task (b, g) writes only the columns of group g's query heads in batch b's
            // rows of `out`, and those heads' P blocks; reads are within q/k/v bounds by
            // construction of the offsets.
            unsafe {
                let kp = k.as_ptr().add(bi * t * kd + g * hd);
                let vp = v.as_ptr().add(bi * t * kd + g * hd);
                let (kb, kb_rs, kb_cs) = against_transposed(kp, kd, t, hd, kt);
                for (r, pb) in pg.chunks_mut(t * t).enumerate() {
                    let hi = g * d.rep() + r;
                    let qp = q.as_ptr().add(bi * t * qd + hi * hd);
                    let o = op.get().add(bi * t * qd + hi * hd);
                    let mut r0 = 0;
                    while r0 < t {
                        let rows = BLK.min(t - r0);
                        let cols = r0 + rows;
                        mm(
                            rows,
                            cols,
                            hd,
                            pb.as_mut_ptr().add(r0 * t).cast(),
                            t,
                            false,
                            qp.add(r0 * qd),
                            qd,
                            1,
                            kb,
                            kb_rs,
                            kb_cs,
                            scale,
                        );
                        for i in r0..r0 + rows {
                            let (seen, future) = pb[i * t..(i + 1) * t].split_at_mut(i + 1);
                            // The product above wrote columns 0..cols of this row, and i < cols.
                            softmax(
                                &mut *(seen as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]),
                            );
                            future.fill(std::mem::MaybeUninit::new(0.0));
                        }
                        mm(
                            rows,
                            hd,
                            cols,
                            o.add(r0 * qd),
                            qd,
                            false,
                            pb.as_ptr().add(r0 * t).cast(),
                            t,
                            1,
                            vp,
                            kd,
                            1,
                            1.0,
                        );
                        r0 += rows;
                    }
                }
            }
        });
    // SAFETY: see the comment at the allocations.
    unsafe { (super::assume_init(out), super::assume_init(p)) }
}

/// Backward: returns (dQ, dK, dV) in the layouts of q, k, v.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    dout: &[f32],
    d: Dims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, hd, qd, kd) = (d.t, d.hd, d.qd(), d.kd());
    let scale = 1.0 / (hd as f32).sqrt();
    // dQ is written whole (one dS K product per block of rows of every query head); dK and dV
    // are accumulated into, so they start at zero.
    let mut dq = super::uninit(d.b * t * qd);
    let mut dk = super::zeroed(d.b * t * kd);
    let mut dv = super::zeroed(d.b * t * kd);
    let (dqp, dkp, dvp) = (
        Ptr(dq.as_mut_ptr().cast()),
        Ptr(dk.as_mut_ptr()),
        Ptr(dv.as_mut_ptr()),
    );
    (0..d.b * d.kvh).into_par_iter().for_each_init(
        || (vec![0f32; t * t], Vec::new()),
        |(ds, vt), bg| {
            let (bi, g) = (bg / d.kvh, bg % d.kvh);
            // SAFETY: task (b, g) writes the head-g columns of dK/dV and the columns of the query
            // heads of group g in dQ, for batch b's rows only: disjoint between tasks.
            unsafe {
                let kp = k.as_ptr().add(bi * t * kd + g * hd);
                let vp = v.as_ptr().add(bi * t * kd + g * hd);
                let dkb = dkp.get().add(bi * t * kd + g * hd);
                let dvb = dvp.get().add(bi * t * kd + g * hd);
                let (vb, vb_rs, vb_cs) = against_transposed(vp, kd, t, hd, vt);
                for hi in g * d.rep()..(g + 1) * d.rep() {
                    let base = bi * t * qd + hi * hd;
                    let (qp, gp) = (q.as_ptr().add(base), dout.as_ptr().add(base));
                    let dqb = dqp.get().add(base);
                    let pb = &p[(bi * d.h + hi) * t * t..(bi * d.h + hi + 1) * t * t];
                    let mut r0 = 0;
                    while r0 < t {
                        let rows = BLK.min(t - r0);
                        let cols = r0 + rows;
                        // dP = dO Vᵀ on the visible block, then dS = P (dP - D).
                        mm(
                            rows,
                            cols,
                            hd,
                            ds.as_mut_ptr().add(r0 * t),
                            t,
                            false,
                            gp.add(r0 * qd),
                            qd,
                            1,
                            vb,
                            vb_rs,
                            vb_cs,
                            1.0,
                        );
                        for i in r0..r0 + rows {
                            softmax_grad(&pb[i * t..i * t + cols], &mut ds[i * t..i * t + cols]);
                        }
                        // dQ = scale dS K
                        mm(
                            rows,
                            hd,
                            cols,
                            dqb.add(r0 * qd),
                            qd,
                            false,
                            ds.as_ptr().add(r0 * t),
                            t,
                            1,
                            kp,
                            kd,
                            1,
                            scale,
                        );
                        r0 += rows;
                    }
                    let mut c0 = 0;
                    while c0 < t {
                        let cols = BLK.min(t - c0);
                        let n = t - c0;
                        // dK[c0..] += scale dSᵀ Q, dV[c0..] += Pᵀ dO, over the rows that see them.
                        mm(
                            cols,
                            hd,
                            n,
                            dkb.add(c0 * kd),
                            kd,
                            true,
                            ds.as_ptr().add(c0 * t + c0),
                            1,
                            t,
                            qp.add(c0 * qd),
                            qd,
                            1,
                            scale,
                        );
                        mm(
                            cols,
                            hd,
                            n,
                            dvb.add(c0 * kd),
                            kd,
                            true,
                            pb.as_ptr().add(c0 * t + c0),
                            1,
                            t,
                            gp.add(c0 * qd),
                            qd,
                            1,
                            1.0,
                        );
                        c0 += cols;
                    }
                }
            }
        },
    );
    // SAFETY: see the comment at the allocation.
    (unsafe { super::assume_init(dq) }, dk, dv)
}
