//! Every expert's SwiGLU FFN as one op: `y = down_e(silu(gate_e x) * up_e x)` on expert e's
//! contiguous block of rows of `x` (rows grouped by expert, as the MoE layer gathers them).
//!
//! Run expert after expert, each product is a mid-size gemm (about `k N / E` rows) that the
//! cores share, meeting inside every product. Here the work is cut into independent tasks —
//! blocks of at most `BLOCK` rows for the forward and for dX, one task per weight gradient —
//! each running its products on one core. Every output element is computed by one task in a
//! fixed order, so results do not depend on the thread count.

use std::mem::MaybeUninit;

use super::{autodiff_flex, contiguous, f32_slice, plain_flex, SharedPtr as Ptr};
use btx_kernels::gemm::{weight_grad_cols, write_product, Dst, GRAD_BLOCK, MIN_SPLIT};
use btx_kernels::gemv::{gemv_serial, GEMV_ROWS};
use btx_kernels::vexp;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;

/// Most rows per forward / dX task; an expert's rows are split into equal blocks of at most
/// this many. Each task repacks its expert's weights, so bigger is cheaper: on MoE-S (about
/// 1000 rows per expert) 1024 beat 512 and 256 by 3-4% at 1 and at 2 threads.
const BLOCK: usize = 1024;

/// Shapes: `d` model width, `f` FFN width, `bounds[e]..bounds[e + 1]` the rows of expert e.
#[derive(Clone, Debug)]
struct Shapes {
    d: usize,
    f: usize,
    bounds: Vec<usize>,
}

impl Shapes {
    fn rows(&self) -> usize {
        *self.bounds.last().expect("bounds")
    }

    /// (expert, first row, rows) of the row blocks, dealt round-robin to `parts` lists. Each
    /// expert's rows are cut into near-equal blocks of at most [`BLOCK`] rows, an even number of
    /// them when there are at least `2 * MIN_SPLIT` rows, so that two threads get the same share
    /// of every expert. The cut does not depend on `parts`: gemm's result for a row can depend
    /// on how many rows share its call (a block of up to 64 rows takes another path through
    /// gemm than a bigger one), and the trainer's results must not depend on the thread count.
    fn blocks(&self, parts: usize) -> Vec<Vec<(usize, usize, usize)>> {
        let mut out = vec![vec![]; parts];
        let mut j = 0;
        for e in 0..self.bounds.len() - 1 {
            let (r0, n) = (self.bounds[e], self.bounds[e + 1] - self.bounds[e]);
            let count = if n >= 2 * MIN_SPLIT {
                2 * n.div_ceil(2 * BLOCK)
            } else {
                n.div_ceil(BLOCK).max(1)
            };
            for i in 0..count {
                let (a, b) = (n * i / count, n * (i + 1) / count);
                if b > a {
                    out[j % parts].push((e, r0 + a, b - a));
                    j += 1;
                }
            }
        }
        out
    }
}

/// One list of work per thread of the pool; each thread takes its list whole. With whole
/// experts or whole weight gradients as tasks picked by whichever thread was free, one core
/// sat idle for the difference between the last tasks.
fn parts() -> usize {
    rayon::current_num_threads().max(1)
}

/// Which of `parts` lists each piece of work goes to, so that the largest list is as small as
/// it can be. Two lists and up to 16 pieces (an expert's weight gradients): the best split,
/// tried exhaustively — for MoE-S's 4 x 2.75 + 5.5 units it is exact, where "largest first to
/// the least loaded" left one core 6% of the phase idle, once per expert and layer. Otherwise
/// that greedy rule.
fn share(works: &[usize], parts: usize) -> Vec<usize> {
    let n = works.len();
    if parts == 2 && (1..=16).contains(&n) {
        let total: usize = works.iter().sum();
        // Piece 0 stays in list 0 (the two lists are interchangeable).
        let best = (0u32..1 << (n - 1))
            .map(|m| m << 1)
            .min_by_key(|&m| {
                let one: usize = (0..n).filter(|&i| m >> i & 1 == 1).map(|i| works[i]).sum();
                one.max(total - one)
            })
            .unwrap_or(0);
        return (0..n).map(|i| (best >> i & 1) as usize).collect();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(works[i]));
    let (mut load, mut out) = (vec![0; parts.max(1)], vec![0; n]);
    for i in order {
        let least = (0..load.len()).min_by_key(|&p| load[p]).unwrap_or(0);
        load[least] += works[i];
        out[i] = least;
    }
    out
}

/// Weights of expert e: (gate `[f, d]`, up `[f, d]`, down `[d, f]`).
type Weights<'a> = Vec<(&'a [f32], &'a [f32], &'a [f32])>;

fn uninit_ptr(v: &mut [MaybeUninit<f32>]) -> Ptr {
    Ptr(v.as_mut_ptr().cast())
}

/// Returns (y `[M, d]`, g `[M, f]`, u `[M, f]`). H = swiglu(g, u) lives only in its row
/// block's scratch: the backward makes it again from g and u, which it reads anyway, instead of
/// keeping 11.5 MB per MoE-S layer from the forward to the backward (written out to memory and
/// read back).
fn forward(x: &[f32], w: &Weights, s: &Shapes, inference: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (d, f, m) = (s.d, s.f, s.rows());
    let (mut y, mut g, mut u) = (
        super::uninit(m * d),
        super::uninit(m * f),
        super::uninit(m * f),
    );
    let (py, pg, pu) = (uninit_ptr(&mut y), uninit_ptr(&mut g), uninit_ptr(&mut u));
    let run = |hs: &mut Vec<f32>, &(e, r0, n): &(usize, usize, usize)| {
        let (gate, up, down) = w[e];
        let xb = &x[r0 * d..(r0 + n) * d];
        hs.clear();
        hs.reserve(n * f);
        // Decoding's few rows per expert, outside training: one pass over each weight, as
        // the dense layers' inference products (see `gemv`); this task's rows only.
        if inference && n <= GEMV_ROWS {
            let gv = gemv_serial(xb, gate, n, d, f);
            let uv = gemv_serial(xb, up, n, d, f);
            vexp::swiglu(&gv, &uv, &mut hs.spare_capacity_mut()[..n * f]);
            // SAFETY: swiglu wrote all n * f elements; this task alone writes rows r0..r0+n
            // of y, g and u (blocks are disjoint).
            unsafe {
                hs.set_len(n * f);
                let yv = gemv_serial(hs, down, n, f, d);
                std::ptr::copy_nonoverlapping(gv.as_ptr(), pg.row(r0, f), n * f);
                std::ptr::copy_nonoverlapping(uv.as_ptr(), pu.row(r0, f), n * f);
                std::ptr::copy_nonoverlapping(yv.as_ptr(), py.row(r0, d), n * d);
            }
            return;
        }
        // SAFETY: this task alone writes rows r0..r0+n of y, g and u (blocks are disjoint);
        // the products write them whole before the slices below read them, and `swiglu`
        // writes all n * f elements of the scratch.
        unsafe {
            let (gb, ub) = (pg.row(r0, f), pu.row(r0, f));
            write_product(
                gb,
                [n, f, d],
                (xb, d, 1),
                (gate, 1, d),
                1.0,
                Dst::Write,
                false,
            );
            write_product(
                ub,
                [n, f, d],
                (xb, d, 1),
                (up, 1, d),
                1.0,
                Dst::Write,
                false,
            );
            let (gs, us) = (
                std::slice::from_raw_parts(gb, n * f),
                std::slice::from_raw_parts(ub, n * f),
            );
            vexp::swiglu(gs, us, &mut hs.spare_capacity_mut()[..n * f]);
            hs.set_len(n * f);
            let yb = py.row(r0, d);
            write_product(
                yb,
                [n, d, f],
                (hs, f, 1),
                (down, 1, f),
                1.0,
                Dst::Write,
                false,
            );
        }
    };
    s.blocks(parts()).into_par_iter().for_each(|part| {
        let mut hs = Vec::new();
        part.iter().for_each(|b| run(&mut hs, b))
    });
    // SAFETY: the blocks cover all rows and every task wrote its rows of all three whole.
    unsafe {
        (
            super::assume_init(y),
            super::assume_init(g),
            super::assume_init(u),
        )
    }
}

/// What the backward needs: x, the weights, the forward's g and u, and the shapes.
#[derive(Clone, Debug)]
struct State {
    x: FlexTensor,
    weights: Vec<[FlexTensor; 3]>,
    g: Vec<f32>,
    u: Vec<f32>,
    shapes: Shapes,
}

/// Gradients: dX `[M, d]` and, per expert, (dGate, dUp, dDown) for the ones asked for.
/// Per expert, (dGate, dUp, dDown) where asked for.
type WeightGrads = Vec<[Option<Vec<f32>>; 3]>;

fn backward(st: &State, dy: &[f32], want: &[[bool; 3]]) -> (Vec<f32>, WeightGrads) {
    let s = &st.shapes;
    let (d, f, m) = (s.d, s.f, s.rows());
    let x = f32_slice(&st.x);
    let w: Vec<[&[f32]; 3]> = st
        .weights
        .iter()
        .map(|t| t.each_ref().map(f32_slice))
        .collect();
    // dG, dU and H of one expert's rows at a time (row i of expert e at i - bounds[e]): they
    // live only from its row blocks to its weight gradients. One expert's (~8.7 MB for MoE-S)
    // instead of all rows' (~35 MB per MoE-S layer): MoE-S peak RSS -65 MB; the step time was
    // within noise, though one expert's can stay in the last-level cache.
    let most = s.bounds.windows(2).map(|b| b[1] - b[0]).max().unwrap_or(0);
    let (mut dx, mut dg, mut du, mut hh) = (
        super::uninit(m * d),
        super::uninit(most * f),
        super::uninit(most * f),
        super::uninit(most * f),
    );
    let (pdx, pdg, pdu, ph) = (
        uninit_ptr(&mut dx),
        uninit_ptr(&mut dg),
        uninit_ptr(&mut du),
        uninit_ptr(&mut hh),
    );
    // Per row block: dH = dY down, (dG, dU, H) through SwiGLU, dX = dG gate + dU up.
    let run = |dh: &mut Vec<f32>, &(e, r0, n): &(usize, usize, usize)| {
        let [gate, up, down] = w[e];
        let r = r0 * f..(r0 + n) * f;
        let lo = r0 - s.bounds[e];
        dh.clear();
        dh.reserve(n * f);
        // SAFETY: this task alone writes rows r0..r0+n of dX and rows lo..lo+n of the expert's
        // dG, dU and H; every product and `swiglu_backward` writes its destination whole
        // before anything reads it.
        unsafe {
            let dyb = &dy[r0 * d..(r0 + n) * d];
            write_product(
                dh.as_mut_ptr(),
                [n, f, d],
                (dyb, d, 1),
                (down, f, 1),
                1.0,
                Dst::Write,
                false,
            );
            dh.set_len(n * f);
            let (gb, ub, hb) = (pdg.row(lo, f), pdu.row(lo, f), ph.row(lo, f));
            vexp::swiglu_backward(
                &st.g[r.clone()],
                &st.u[r.clone()],
                dh,
                std::slice::from_raw_parts_mut(gb.cast(), n * f),
                std::slice::from_raw_parts_mut(ub.cast(), n * f),
                Some(std::slice::from_raw_parts_mut(hb.cast(), n * f)),
            );
            let (gs, us) = (
                std::slice::from_raw_parts(gb, n * f),
                std::slice::from_raw_parts(ub, n * f),
            );
            let xb = pdx.row(r0, d);
            write_product(
                xb,
                [n, d, f],
                (gs, f, 1),
                (gate, d, 1),
                1.0,
                Dst::Write,
                false,
            );
            write_product(
                xb,
                [n, d, f],
                (us, f, 1),
                (up, d, 1),
                1.0,
                Dst::Accumulate,
                false,
            );
        }
    };
    // Every weight gradient is `Zᵀ B` over expert e's rows: dGate [f, d] = dGᵀ x, dUp
    // likewise, dDown [d, f] = dYᵀ h. Returns (Z, its width, B, its width), each from the
    // expert's first row.
    let operands = |e: usize, k: usize| -> (*const f32, usize, *const f32, usize) {
        let r0 = s.bounds[e];
        match k {
            0 => (pdg.get().cast_const(), f, x[r0 * d..].as_ptr(), d),
            1 => (pdu.get().cast_const(), f, x[r0 * d..].as_ptr(), d),
            _ => (dy[r0 * d..].as_ptr(), d, ph.get().cast_const(), f),
        }
    };
    let tasks: Vec<(usize, usize)> = (0..want.len())
        .flat_map(|e| (0..3).map(move |k| (e, k)))
        .filter(|&(e, k)| want[e][k])
        .collect();
    let mut outs: Vec<Vec<f32>> = tasks.iter().map(|_| Vec::with_capacity(d * f)).collect();
    let ptrs: Vec<Ptr> = outs.iter_mut().map(|o| Ptr(o.as_mut_ptr())).collect();
    let blocks = s.blocks(parts());
    // Each part's dH scratch, kept from expert to expert (a fresh one per expert, allocated
    // on one worker and freed on another, grew the peak RSS by 30 MB over 40 MoE-S steps).
    let mut scratch: Vec<Vec<f32>> = vec![Vec::new(); blocks.len()];
    // Expert by expert: its row blocks (dH, SwiGLU, dX), then its weight gradients, which read
    // the dG / dU / H those blocks wrote into the one expert's scratch.
    for e in 0..s.bounds.len() - 1 {
        blocks
            .par_iter()
            .zip(scratch.par_iter_mut())
            .for_each(|(part, dh)| part.iter().filter(|b| b.0 == e).for_each(|b| run(dh, b)));
        expert_weight_grads(e, s, &tasks, &ptrs, &operands);
    }
    // SAFETY: the blocks cover all rows; every task wrote its rows of dX whole.
    let dx = unsafe { super::assume_init(dx) };
    drop((dg, du, hh));
    let grads = tasks.into_iter().zip(outs).map(|((e, k), mut out)| {
        // SAFETY: see above: every element written.
        unsafe { out.set_len(d * f) };
        (e, k, out)
    });
    let mut per_expert: Vec<[Option<Vec<f32>>; 3]> =
        (0..want.len()).map(|_| [None, None, None]).collect();
    for (e, k, g) in grads {
        per_expert[e][k] = Some(g);
    }
    (dx, per_expert)
}

/// Expert e's weight gradients (the `tasks` of expert e, each written to its `ptrs` entry):
/// `operands(e, k)` gives Z and B of gradient k (see `backward`), which must hold the expert's
/// dG / dU / H from its row blocks already.
fn expert_weight_grads(
    e: usize,
    s: &Shapes,
    tasks: &[(usize, usize)],
    ptrs: &[Ptr],
    operands: &(impl Fn(usize, usize) -> (*const f32, usize, *const f32, usize) + Sync),
) {
    // Each gradient in column blocks of GRAD_BLOCK (a cut that, like the row blocks,
    // depends on the shapes alone); the blocks shared out by their work (which part runs a
    // block does not change its result). Every part computes its share of the columns of
    // every one (splitting columns leaves each element's sum as it was).
    let rows = s.bounds[e + 1] - s.bounds[e];
    let pieces: Vec<(usize, usize, std::ops::Range<usize>)> = tasks
        .iter()
        .enumerate()
        .filter(|(_, &(te, _))| te == e)
        .flat_map(|(t, &(_, k))| {
            let (zw, bw) = (operands(e, k).1, operands(e, k).3);
            (0..bw.div_ceil(GRAD_BLOCK).max(1)).map(move |b| {
                let c = b * GRAD_BLOCK..((b + 1) * GRAD_BLOCK).min(bw);
                (t, zw * c.len() * rows, c)
            })
        })
        .collect();
    // Per part: its pieces as (task, columns).
    let mut lists: Vec<Vec<(usize, std::ops::Range<usize>)>> = vec![vec![]; parts()];
    let works: Vec<usize> = pieces.iter().map(|p| p.1).collect();
    for ((t, _, c), part) in pieces.into_iter().zip(share(&works, parts())) {
        lists[part].push((t, c));
    }
    lists.par_iter().for_each(|list| {
        for (t, c) in list {
            let ((e, k), dst) = (tasks[*t], ptrs[*t]);
            let rows = s.bounds[e + 1] - s.bounds[e];
            let (z, zw, b, bw) = operands(e, k);
            // SAFETY: each piece writes its own columns of one output (`ptrs` holds room for
            // `d * f` each); together the pieces write all of it (zeros when the expert has
            // no rows). Z and B (this expert's dG / dU / H, written whole by its row blocks
            // before this call, or its rows of x / dY) are read only.
            unsafe {
                weight_grad_cols(
                    dst.get(),
                    bw,
                    [zw, rows],
                    (std::slice::from_raw_parts(z, rows * zw), zw),
                    (std::slice::from_raw_parts(b, rows * bw), bw),
                    c.clone(),
                    1.0,
                    Dst::Write,
                );
            }
        }
    });
}

#[derive(Debug)]
struct ExpertsBackward<const N: usize>;

impl<const N: usize> Backward<Flex, N> for ExpertsBackward<N> {
    type State = State;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let st = ops.state;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let parents = ops.parents;
        let e = st.weights.len();
        // An expert that got no rows gets no gradient, as when the composite path never runs
        // it (AdamW then leaves it alone, as PyTorch does for a parameter without .grad).
        let b = &st.shapes.bounds;
        let want: Vec<[bool; 3]> = (0..e)
            .map(|i| [0, 1, 2].map(|k| parents[1 + 3 * i + k].is_some() && b[i + 1] > b[i]))
            .collect();
        let (dx, mut dws) = backward(&st, f32_slice(&dy), &want);
        let (m, d, f) = (st.shapes.rows(), st.shapes.d, st.shapes.f);
        let mut parents = parents.into_iter();
        if let Some(node) = parents.next().flatten() {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [m, d])));
        }
        for (i, node) in parents.enumerate() {
            let (ex, k) = (i / 3, i % 3);
            if let (Some(node), Some(g)) = (node, dws[ex][k].take()) {
                let shape = if k == 2 { [d, f] } else { [f, d] };
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(g, shape)));
            }
        }
    }
}

/// Most experts [`experts_ffn`] takes (one graph input per weight, fixed at compile time).
pub const MAX_EXPERTS: usize = 16;

/// Expert e's SwiGLU FFN on rows `bounds[e]..bounds[e + 1]` of `x: [M, d]`, for every e;
/// `experts[e] = (gate [f, d], up [f, d], down [d, f])`, 1 to [`MAX_EXPERTS`] experts (for
/// more, `ops` runs the composite per-expert path).
pub fn experts_ffn(
    x: Tensor<2>,
    bounds: &[usize],
    experts: &[(&Tensor<2>, &Tensor<2>, &Tensor<2>)],
) -> Tensor<2> {
    macro_rules! dispatch {
        ($($e:literal => $n:literal),*) => {
            match experts.len() {
                $($e => run::<$n>(x, bounds, experts),)*
                n => panic!("experts_ffn takes 1 to {MAX_EXPERTS} experts, not {n}"),
            }
        };
    }
    dispatch!(1 => 4, 2 => 7, 3 => 10, 4 => 13, 5 => 16, 6 => 19, 7 => 22, 8 => 25,
        9 => 28, 10 => 31, 11 => 34, 12 => 37, 13 => 40, 14 => 43, 15 => 46, 16 => 49)
}

/// [`experts_ffn`] for `N = 1 + 3 E` graph inputs.
fn run<const N: usize>(
    x: Tensor<2>,
    bounds: &[usize],
    experts: &[(&Tensor<2>, &Tensor<2>, &Tensor<2>)],
) -> Tensor<2> {
    let [m, d] = x.dims();
    let f = experts[0].0.dims()[0];
    assert_eq!(bounds.len(), experts.len() + 1, "one row range per expert");
    assert_eq!(bounds[experts.len()], m, "the row ranges cover x");
    let shapes = Shapes {
        d,
        f,
        bounds: bounds.to_vec(),
    };
    let autodiff = x.is_autodiff() || experts.iter().any(|(g, _, _)| g.is_autodiff());
    if !autodiff {
        let xc = plain_flex(x);
        let ws: Vec<[FlexTensor; 3]> = experts
            .iter()
            .map(|(g, u, dn)| [(*g).clone(), (*u).clone(), (*dn).clone()].map(plain_flex))
            .collect();
        let w: Weights = ws
            .iter()
            .map(|[g, u, dn]| (f32_slice(g), f32_slice(u), f32_slice(dn)))
            .collect();
        let (y, ..) = forward(f32_slice(&xc), &w, &shapes, true);
        return Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(y, [m, d])));
    }
    let xa = autodiff_flex(x);
    let wa: Vec<_> = experts
        .iter()
        .map(|(g, u, dn)| [(*g).clone(), (*u).clone(), (*dn).clone()].map(autodiff_flex))
        .collect();
    let nodes: [_; N] = std::array::from_fn(|i| {
        if i == 0 {
            xa.node()
        } else {
            wa[(i - 1) / 3][(i - 1) % 3].node()
        }
    });
    let xc = contiguous(xa.primitive());
    let ws: Vec<[FlexTensor; 3]> = wa
        .iter()
        .map(|t| t.each_ref().map(|t| contiguous(t.primitive())))
        .collect();
    let (y, g, u) = {
        let w: Weights = ws
            .iter()
            .map(|[g, u, dn]| (f32_slice(g), f32_slice(u), f32_slice(dn)))
            .collect();
        forward(f32_slice(&xc), &w, &shapes, false)
    };
    let out = FlexTensor::from_data(TensorData::new(y, [m, d]));
    let t = match ExpertsBackward::<N>
        .prepare::<NoCheckpointing>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            State {
                x: xc,
                weights: ws,
                g,
                u,
                shapes,
            },
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive::<Autodiff<Flex>>(t)
}

#[cfg(test)]
mod tests {
    use super::share;

    fn loads(works: &[usize], parts: usize) -> Vec<usize> {
        let mut l = vec![0; parts];
        for (w, p) in works.iter().zip(share(works, parts)) {
            l[p] += w;
        }
        l
    }

    /// MoE-S's weight-gradient pieces of one expert (dGate and dUp in two 128-column blocks of
    /// 704 x 128, dDown in five of 256 x 128 and one of 256 x 64): split exactly in two, where
    /// largest-first-to-the-least-loaded gives 278528 against 262144.
    #[test]
    fn two_lists_split_exactly_when_they_can() {
        let works = [
            90112, 90112, 90112, 90112, 32768, 32768, 32768, 32768, 32768, 16384,
        ];
        assert_eq!(loads(&works, 2), vec![270336, 270336]);
    }

    /// Every piece goes to one list, and two lists are never worse than the greedy rule.
    #[test]
    fn every_piece_placed_and_no_worse_than_greedy() {
        let mut x = 12345u64;
        for n in [1, 2, 3, 7, 16, 17] {
            let works: Vec<usize> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (x >> 40) as usize % 1000 + 1
                })
                .collect();
            for parts in [1, 2, 3] {
                let s = share(&works, parts);
                assert_eq!(s.len(), n);
                assert!(s.iter().all(|&p| p < parts));
                let l = loads(&works, parts);
                assert_eq!(l.iter().sum::<usize>(), works.iter().sum::<usize>());
                if parts == 2 {
                    let mut sorted = works.clone();
                    sorted.sort_unstable_by(|a, b| b.cmp(a));
                    let mut g = [0usize; 2];
                    for w in sorted {
                        let i = if g[0] <= g[1] { 0 } else { 1 };
                        g[i] += w;
                    }
                    assert!(
                        l.iter().max() <= g.iter().max(),
                        "{works:?}: {l:?} vs {g:?}"
                    );
                }
            }
        }
    }
}
