//! Matrix products on plain `f32` slices (gemm's microkernels), the raw half of the fused
//! linear layer and of every op that multiplies: a product into a fresh buffer, into a strided
//! destination (written or accumulated), spread over the pool in blocks, and a weight gradient
//! in fixed column blocks. No burn types: the ops in btx-model's `fused` wrap these.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::SharedPtr;
use crate::instrument::gemm_clock;

/// Below this many multiply-adds one core does the product (as burn-flex decides).
const PARALLEL_MACS: usize = 192 * 192 * 192;

/// A new `[m, n]` matrix `A B` (one gemm call, output written once), with
/// A(i, l) = a[i*a_rs + l*a_cs] (`[m, k]`) and B(l, j) = b[l*b_rs + j*b_cs] (`[k, n]`).
/// Uses every thread of the current rayon pool above a size threshold.
#[allow(clippy::too_many_arguments)]
pub fn product(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_rs: usize,
    a_cs: usize,
    b: &[f32],
    b_rs: usize,
    b_cs: usize,
) -> Vec<f32> {
    fresh([m, n, k], (a, a_rs, a_cs), (b, b_rs, b_cs), true)
}

/// [`product`] written into `dst` (`m * n` elements, overwritten) instead of a new buffer.
pub fn product_into(
    dst: &mut [f32],
    [m, n, k]: [usize; 3],
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
) {
    assert_eq!(dst.len(), m * n, "destination size");
    // SAFETY: `dst` holds the m * n elements written; the operands' bounds are checked inside.
    unsafe { spread_product(dst.as_mut_ptr(), n, [m, n, k], a, b, 1.0, Dst::Write) };
}

/// A new matrix `A B` (dimensions and operands as for [`write_product`]), spread over the pool
/// as [`spread_product`] does, or on one core.
fn fresh(
    [m, n, k]: [usize; 3],
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    spread: bool,
) -> Vec<f32> {
    let len = m * n;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = out.spare_capacity_mut().as_mut_ptr().cast();
    // SAFETY: both initialise all `len` elements of the spare capacity.
    unsafe {
        if spread {
            spread_product(dst, n, [m, n, k], a, b, 1.0, Dst::Write);
        } else {
            write_product(dst, [m, n, k], a, b, 1.0, Dst::Write, false);
        }
        out.set_len(len);
    }
    out
}

/// [`write_product_strided`] using the pool. A product worth spreading is cut into two halves
/// of its output columns, each in blocks of [`SPREAD_BLOCK`] columns, and the blocks are taken
/// by whichever thread is free: faster than gemm's own two-thread split by 2-7% for preset S's
/// forward products and 5-10% for M's, and than one fixed half per core by 1.5% on the S and
/// MoE-S steps at two threads (interleaved A/B; a half that ran slower left the other core
/// waiting). The cut depends on the shape alone, never on the thread count: gemm's result for
/// an element can depend on how many rows or columns share its call, and the trainer's results
/// must not depend on the thread count (which thread runs a block does not matter).
///
/// # Safety
/// As for [`write_product_strided`].
pub unsafe fn spread_product(
    dst: *mut f32,
    dst_rs: usize,
    [m, n, k]: [usize; 3],
    a: (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    beta: f32,
    mode: Dst,
) {
    let big = m * n * k >= PARALLEL_MACS;
    if !big || n < 2 * MIN_SPLIT {
        // SAFETY: the caller's contract.
        unsafe {
            write_product_strided(dst, dst_rs, [m, n, k], a, (b, b_rs, b_cs), beta, mode, big)
        };
        return;
    }
    let (h, out) = (n / 2, SharedPtr(dst));
    // Column blocks of SPREAD_BLOCK from the start of each half: a cut by the shape alone.
    let blocks: Vec<(usize, usize)> = [(0, h), (h, n)]
        .into_iter()
        .flat_map(|(c0, c1)| {
            (c0..c1)
                .step_by(SPREAD_BLOCK)
                .map(move |c| (c, (c + SPREAD_BLOCK).min(c1)))
        })
        .collect();
    let block = |&(c, e): &(usize, usize)| {
        // SAFETY: the blocks write disjoint columns of the caller's destination.
        unsafe {
            write_product_strided(
                out.get().add(c),
                dst_rs,
                [m, e - c, k],
                a,
                (&b[c * b_cs..], b_rs, b_cs),
                beta,
                mode,
                false,
            )
        };
    };
    blocks.par_iter().with_max_len(1).for_each(block);
}

/// Width of the column blocks [`spread_product`] runs each half in: gemm does the step's
/// forward products (`x Wᵀ`, a column-major right operand) 2-10% faster in blocks of 64 output
/// columns than in halves of 256-704 (preset M's 512- and 1408-wide outputs most).
const SPREAD_BLOCK: usize = 64;

/// What [`write_product`] does with the destination's old contents.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dst {
    /// Overwrite without reading (the destination may be uninitialised).
    Write,
    /// Add the product to what is there.
    Accumulate,
}

/// Writes (or adds) `beta · A B` into the `m x n` row-major `dst` (A and B as in [`product`]:
/// slice, row stride, column stride). On the calling thread alone unless `parallel`; gemm
/// splits only the output among threads, so the result does not depend on their number.
///
/// # Safety
/// `dst` must be valid for `m * n` writes of `f32`, and initialised for `Dst::Accumulate`.
pub unsafe fn write_product(
    dst: *mut f32,
    [m, n, k]: [usize; 3],
    a: (&[f32], usize, usize),
    b: (&[f32], usize, usize),
    beta: f32,
    mode: Dst,
    parallel: bool,
) {
    // SAFETY: a row stride of `n` is the caller's contract.
    unsafe { write_product_strided(dst, n, [m, n, k], a, b, beta, mode, parallel) }
}

/// [`write_product`] into a destination with row stride `dst_rs` (>= n); the elements between
/// rows are not touched.
///
/// # Safety
/// `dst` must be valid for writes of `m` rows of `n` `f32`s, `dst_rs` apart, and those
/// initialised for `Dst::Accumulate`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn write_product_strided(
    dst: *mut f32,
    dst_rs: usize,
    [m, n, k]: [usize; 3],
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    beta: f32,
    mode: Dst,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n, "destination rows overlap");
    if k == 0 {
        if mode == Dst::Accumulate {
            return;
        }
        for i in 0..m {
            // SAFETY: the caller vouches for `m` writable rows of `n` elements.
            unsafe { std::ptr::write_bytes(dst.add(i * dst_rs), 0, n) };
        }
        return;
    }
    assert!(
        a.len() > (m - 1) * a_rs + (k - 1) * a_cs,
        "lhs out of bounds"
    );
    assert!(
        b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
        "rhs out of bounds"
    );
    let par = if parallel {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    let acc = mode == Dst::Accumulate;
    let _clock = gemm_clock::Timer::start(gemm_clock::Call {
        m,
        n,
        k,
        dst_rs,
        a: (a_rs, a_cs),
        b: (b_rs, b_cs),
        acc,
        parallel,
        tile: false,
    });
    // SAFETY: the operand extents are checked above and the caller vouches for `dst`; with
    // `read_dst = false` gemm writes every element of the destination without reading it.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if acc { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            par,
        )
    };
}

/// `x [m, k] · wᵀ` for `w [n, k]`.
pub fn forward(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    product(m, n, k, x, k, 1, w, 1, k)
}

/// Width of the column blocks a weight gradient `Zᵀ B` is computed in. gemm runs that layout
/// (transposed left operand, reduction over the long row dimension) 5-15% slower than the
/// contiguous floor once the gradient is wider than 128 columns (widths 256-1408 over
/// 1024-2048 rows: 2048x512 -> 512 1.13x, 2048x704 -> 256 1.09x, as two halves), and within
/// about 2% of it in blocks of 128 (blocks of 96, 176 or 256 are 5-20% slower again).
pub const GRAD_BLOCK: usize = 128;

/// The column cut nearest `cols / 2` that falls on a [`GRAD_BLOCK`] boundary.
pub fn grad_cut(cols: usize) -> usize {
    ((cols + GRAD_BLOCK) / (2 * GRAD_BLOCK) * GRAD_BLOCK).min(cols)
}

/// Writes (or adds) columns `cols` of a weight gradient `dst [n, w]` (row stride `dst_rs`) =
/// Zᵀ B over `rows` rows, with Z `[rows, n]` and B `[rows, w]` given as (slice, row stride),
/// one core, in [`GRAD_BLOCK`] blocks aligned to column 0: where a column's block starts
/// depends on the shape alone, never on how the columns were shared out.
///
/// # Safety
/// `dst` must be valid for the written elements (initialised for `Dst::Accumulate`).
#[allow(clippy::too_many_arguments)]
pub unsafe fn weight_grad_cols(
    dst: *mut f32,
    dst_rs: usize,
    [n, rows]: [usize; 2],
    (z, z_rs): (&[f32], usize),
    (b, b_rs): (&[f32], usize),
    cols: std::ops::Range<usize>,
    beta: f32,
    mode: Dst,
) {
    let mut c = cols.start;
    while c < cols.end {
        let end = ((c / GRAD_BLOCK + 1) * GRAD_BLOCK).min(cols.end);
        // SAFETY: the caller's contract, for columns c..end.
        unsafe {
            write_product_strided(
                dst.add(c),
                dst_rs,
                [n, end - c, rows],
                (z, 1, z_rs),
                // (With no rows `b` may be empty; nothing is read then.)
                (&b[c.min(b.len())..], b_rs, 1),
                beta,
                mode,
                false,
            )
        };
        c = end;
    }
}

/// dX `[m, k]` = dY `[m, n]` · W `[n, k]` written into (or, with `Dst::Accumulate`, added
/// to) `dx`, and a new dW `[n, k]` = dYᵀ · X `[m, k]`.
///
/// In two parts, side by side: one takes the top rows of dX and the left columns of dW, the
/// other the rest, with dW cut on a [`GRAD_BLOCK`] boundary and dX's rows cut to even out the
/// work. With the two whole products side by side instead, one core sat idle for their
/// difference (9 ms of idle core time per step for preset S at 2 threads). The cut depends on
/// the shapes alone, never on the thread count: gemm's result for an element can depend on how
/// many rows share its call (1 vs several, or up to 64 for some layouts), and the trainer's
/// results must not depend on the thread count.
///
/// # Safety
/// `dx` must be valid for `m * k` writes (initialised for `Dst::Accumulate`).
pub unsafe fn both_grads(
    g: &[f32],
    w: &[f32],
    x: &[f32],
    [m, k, n]: [usize; 3],
    (dx, dx_mode): (*mut f32, Dst),
) -> Vec<f32> {
    // With more than two threads the dX parts spread over the pool as well.
    let spread = rayon::current_num_threads() > 2;
    let c = grad_cut(k);
    // Rows of dX for the first part so that both do half of the 2·m·k·n multiply-adds; whole
    // dX to one side when dW could not be cut.
    let mr = if c == 0 || c == k || m < 2 * MIN_SPLIT {
        if c == 0 {
            m
        } else {
            0
        }
    } else {
        (m * (k - c) / k / 8 * 8).clamp(MIN_SPLIT, m - MIN_SPLIT)
    };
    let mut dw: Vec<f32> = Vec::with_capacity(n * k);
    let (dxp, dwp) = (SharedPtr(dx), SharedPtr(dw.as_mut_ptr()));
    let part = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
        // SAFETY: the parts write disjoint rows of dX and disjoint columns of dW, together
        // every element of both (the caller vouches for dX, dW has capacity n*k).
        unsafe {
            write_product(
                dxp.get().add(rows.start * k),
                [rows.len(), k, n],
                (&g[rows.start * n..], n, 1),
                (w, k, 1),
                1.0,
                dx_mode,
                spread,
            );
            weight_grad_cols(dwp.get(), k, [n, m], (g, n), (x, k), cols, 1.0, Dst::Write);
        }
    };
    rayon::join(|| part(0..mr, 0..c), || part(mr..m, c..k));
    // SAFETY: both parts have written every element.
    unsafe { dw.set_len(n * k) };
    dw
}

/// dW `[n, k]` = dYᵀ · X alone: its columns in two parts cut on a [`GRAD_BLOCK`] boundary.
pub fn weight_grad(g: &[f32], x: &[f32], [m, k, n]: [usize; 3]) -> Vec<f32> {
    let mut dw: Vec<f32> = Vec::with_capacity(n * k);
    let dwp = SharedPtr(dw.as_mut_ptr());
    let c = grad_cut(k);
    // SAFETY: the parts write disjoint columns, together all n*k elements.
    let part = |cols| unsafe {
        weight_grad_cols(dwp.get(), k, [n, m], (g, n), (x, k), cols, 1.0, Dst::Write)
    };
    rayon::join(|| part(0..c), || part(c..k));
    // SAFETY: see above.
    unsafe { dw.set_len(n * k) };
    dw
}

/// Fewest rows (or columns) in a piece of a product that is cut for the cores.
pub const MIN_SPLIT: usize = 32;
