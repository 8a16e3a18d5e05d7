//! Fused element-wise kernels with handwritten backward: SwiGLU's `silu(a) * b` and RMSNorm.
//! One pass over the data forward and one backward, split over the cores, instead of the chain
//! of element-wise tensor ops (each its own pass and allocation) the composite versions run.

use super::announce_if_tracked;
use super::{autodiff_flex, contiguous, f32_slice, plain_flex};
use btx_kernels::fan_in::{share, FanIn};
use btx_kernels::gemm::Dst;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;
use std::sync::Arc;

use btx_kernels::simd::simd_fn;
use btx_kernels::vexp;
use std::mem::MaybeUninit;

const CHUNK: usize = 1 << 13;

fn flex2(v: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(v, shape))
}

fn swiglu_forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = super::uninit(a.len());
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let s = c * CHUNK;
        vexp::swiglu(&a[s..s + o.len()], &b[s..s + o.len()], o);
    });
    // SAFETY: the chunks cover the buffer and `swiglu` writes every element of each.
    unsafe { super::assume_init(out) }
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    /// (a, b, shape)
    type State = (FlexTensor, FlexTensor, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b, shape) = ops.state;
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (a, b, g) = (f32_slice(&a), f32_slice(&b), f32_slice(&g));
        let n = a.len();
        let mut da = super::uninit(n);
        let mut db = super::uninit(n);
        da.par_chunks_mut(CHUNK)
            .zip(db.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, (da, db))| {
                let r = c * CHUNK..c * CHUNK + da.len();
                vexp::swiglu_backward(&a[r.clone()], &b[r.clone()], &g[r], da, db, None);
            });
        // SAFETY: the chunks cover both buffers and every element of each is written.
        let (da, db) = unsafe { (super::assume_init(da), super::assume_init(db)) };
        let [pa, pb] = ops.parents;
        if let Some(n) = pa {
            grads.register::<Flex>(n.id, flex2(da, shape));
        }
        if let Some(n) = pb {
            grads.register::<Flex>(n.id, flex2(db, shape));
        }
    }
}

/// `silu(a) * b` for `[N, F]` tensors.
pub fn swiglu(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    let shape = a.dims();
    if a.is_autodiff() {
        let (a, b) = (autodiff_flex(a), autodiff_flex(b));
        let (ac, bc) = (contiguous(a.primitive()), contiguous(b.primitive()));
        let out = flex2(swiglu_forward(f32_slice(&ac), f32_slice(&bc)), shape);
        let t = match SwigluBackward
            .prepare::<NoCheckpointing>([a.node(), b.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((ac, bc, shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (a, b) = (plain_flex(a), plain_flex(b));
        let out = flex2(swiglu_forward(f32_slice(&a), f32_slice(&b)), shape);
        Tensor::from_primitive::<Flex>(out)
    }
}

/// Rows per task for RMSNorm.
const ROWS: usize = 64;

/// y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row; returns (y, r).
fn rms_forward(x: &[f32], w: &[f32], d: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let n = x.len() / d;
    let mut y = super::uninit(x.len());
    let mut r = vec![0f32; n];
    y.par_chunks_mut(ROWS * d)
        .zip(r.par_chunks_mut(ROWS))
        .enumerate()
        .for_each(|(c, (y, r))| rms_rows(&x[c * ROWS * d..c * ROWS * d + y.len()], w, eps, y, r));
    // SAFETY: the row blocks cover `y` and every element of each row is written.
    (unsafe { super::assume_init(y) }, r)
}

simd_fn! {
/// RMSNorm forward of the rows of `x` (each `w.len()` long) into `y`, with their `r`.
fn rms_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [MaybeUninit<f32>], r: &mut [f32]) {
    let d = w.len();
    for ((row, yr), rr) in x.chunks(d).zip(y.chunks_mut(d)).zip(r.iter_mut()) {
        let ms = btx_kernels::reduce::dot(row, row) / d as f32;
        *rr = 1.0 / (ms + eps).sqrt();
        for k in 0..d {
            yr[k].write(row[k] * *rr * w[k]);
        }
    }
}
}

simd_fn! {
/// RMSNorm backward of a block of rows: writes `dx` (or with `acc` adds to it) and adds the
/// rows' share of dw into `dw`.
fn rms_back_rows(
    x: &[f32],
    g: &[f32],
    r: &[f32],
    w: &[f32],
    dx: &mut [MaybeUninit<f32>],
    acc: bool,
    dw: &mut [f32],
) {
    let d = w.len();
    for (((xr, gr), &ri), dxr) in x.chunks(d).zip(g.chunks(d)).zip(r).zip(dx.chunks_mut(d)) {
        let dot = btx_kernels::reduce::dot3(gr, w, xr);
        for k in 0..d {
            dw[k] += gr[k] * xr[k] * ri;
        }
        let c2 = ri * ri * dot / d as f32;
        if acc {
            for k in 0..d {
                // SAFETY: in accumulate mode the caller passes initialised elements.
                let old = unsafe { dxr[k].assume_init() };
                dxr[k].write(old + ri * (gr[k] * w[k] - xr[k] * c2));
            }
        } else {
            for k in 0..d {
                dxr[k].write(ri * (gr[k] * w[k] - xr[k] * c2));
            }
        }
    }
}
}

#[derive(Debug)]
struct RmsBackward;

impl Backward<Flex, 2> for RmsBackward {
    /// (x, w, per-row r, shape, the fan-in x's gradient goes to)
    type State = (
        FlexTensor,
        FlexTensor,
        Vec<f32>,
        [usize; 2],
        Option<Arc<FanIn>>,
    );

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, r, [n, d], fan) = ops.state;
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (x, w, g) = (f32_slice(&x), f32_slice(&w), f32_slice(&g));
        let [px, pw] = ops.parents;
        let mut dw_parts: Vec<Vec<f32>> = vec![];
        // dx = r (g w - x r^2 mean(g w x)); dw = sum_rows g x r (per-task partial sums).
        let write = |dst: *mut f32, mode: Dst| {
            // SAFETY: `share` hands over n*d elements, initialised in accumulate mode.
            let dx =
                unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<f32>>(), n * d) };
            dw_parts = dx
                .par_chunks_mut(ROWS * d)
                .enumerate()
                .map(|(c, dxc)| {
                    let mut dw = vec![0f32; d];
                    let (e, rows) = (c * ROWS * d..c * ROWS * d + dxc.len(), dxc.len() / d);
                    let r = &r[c * ROWS..c * ROWS + rows];
                    let acc = mode == Dst::Accumulate;
                    rms_back_rows(&x[e.clone()], &g[e], r, w, dxc, acc, &mut dw);
                    dw
                })
                .collect();
        };
        // (dx is computed even when x needs no gradient: dw comes from the same pass.)
        // SAFETY: `write` writes (or adds into) every one of the n*d rows' elements, no more:
        // `rms_back_rows` fills each chunk whole.
        let dx = unsafe { share(fan.as_deref().filter(|_| px.is_some()), n * d, write) };
        let mut dw = vec![0f32; d];
        for p in &dw_parts {
            for (a, b) in dw.iter_mut().zip(p) {
                *a += b;
            }
        }
        if let (Some(node), Some(dx)) = (px, dx) {
            grads.register::<Flex>(node.id, flex2(dx, [n, d]));
        }
        if let Some(node) = pw {
            grads.register::<Flex>(node.id, flex2(dw, [1, d]));
        }
    }
}

/// RMSNorm of `x: [N, d]` with weight `w: [1, d]`. With `fan`, x's gradient is summed there (x is read by other ops built with the same [`FanIn`]).
pub fn rms_norm(x: Tensor<2>, w: Tensor<2>, eps: f64, fan: Option<&Arc<FanIn>>) -> Tensor<2> {
    let [n, d] = x.dims();
    let eps = eps as f32;
    if x.is_autodiff() || w.is_autodiff() {
        let (x, w) = (autodiff_flex(x), autodiff_flex(w));
        let fan = fan.filter(|f| announce_if_tracked(f, &x));
        let (xc, wc) = (contiguous(x.primitive()), contiguous(w.primitive()));
        let (y, r) = rms_forward(f32_slice(&xc), f32_slice(&wc), d, eps);
        let out = flex2(y, [n, d]);
        let t = match RmsBackward
            .prepare::<NoCheckpointing>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xc, wc, r, [n, d], fan.cloned()), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (x, w) = (plain_flex(x), plain_flex(w));
        let (y, _) = rms_forward(f32_slice(&x), f32_slice(&w), d, eps);
        Tensor::from_primitive::<Flex>(flex2(y, [n, d]))
    }
}

#[derive(Debug)]
struct ResidualBackward;

impl Backward<Flex, 2> for ResidualBackward {
    /// (shape, the fan-in x's gradient goes to: there when x needs one)
    type State = ([usize; 2], Option<Arc<FanIn>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (shape, fan) = ops.state;
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let [px, pd] = ops.parents;
        match (px, fan) {
            (Some(node), Some(fan)) => {
                let gs = f32_slice(&g);
                // SAFETY: `add_into` writes (or adds into) exactly `gs.len()` elements.
                if let Some(dx) = unsafe { fan.add(gs.len(), |dst, mode| add_into(dst, mode, gs)) }
                {
                    grads.register::<Flex>(node.id, flex2(dx, shape));
                }
            }
            (Some(node), None) => grads.register::<Flex>(node.id, g.clone()),
            (None, _) => {}
        }
        if let Some(node) = pd {
            grads.register::<Flex>(node.id, g);
        }
    }
}

/// Writes (or adds) `src` into `len = src.len()` elements at `dst`, in parallel chunks.
fn add_into(dst: *mut f32, mode: Dst, src: &[f32]) {
    // SAFETY: the FanIn hands over `src.len()` elements, initialised in accumulate mode.
    let dst = unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<f32>>(), src.len()) };
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| match mode {
            Dst::Write => d.iter_mut().zip(s).for_each(|(d, &s)| {
                d.write(s);
            }),
            Dst::Accumulate => d.iter_mut().zip(s).for_each(|(d, &s)| {
                // SAFETY: initialised in accumulate mode (above).
                let old = unsafe { d.assume_init() };
                d.write(old + s);
            }),
        });
}

/// The residual connection `x + delta` (`[N, d]` each), x's gradient summed in `fan` (where
/// the RMSNorm that also reads x adds its share inside its own kernel).
pub fn residual_add(x: Tensor<2>, delta: Tensor<2>, fan: &Arc<FanIn>) -> Tensor<2> {
    let shape = x.dims();
    assert_eq!(shape, delta.dims(), "residual_add: shapes differ");
    let sum = |x: &[f32], d: &[f32]| {
        let mut out = super::uninit(x.len());
        out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
            let s = c * CHUNK;
            for ((o, a), b) in o.iter_mut().zip(&x[s..]).zip(&d[s..]) {
                o.write(a + b);
            }
        });
        // SAFETY: the chunks cover the buffer and each element is written.
        flex2(unsafe { super::assume_init(out) }, shape)
    };
    if x.is_autodiff() || delta.is_autodiff() {
        let (x, d) = (autodiff_flex(x), autodiff_flex(delta));
        let fan = announce_if_tracked(fan, &x).then(|| fan.clone());
        let out = sum(
            f32_slice(&contiguous(x.primitive())),
            f32_slice(&contiguous(d.primitive())),
        );
        let t = match ResidualBackward
            .prepare::<NoCheckpointing>([x.node(), d.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((shape, fan), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (x, d) = (plain_flex(x), plain_flex(delta));
        Tensor::from_primitive::<Flex>(sum(f32_slice(&x), f32_slice(&d)))
    }
}

/// Rows per task for the row softmax.
const SOFTMAX_ROWS: usize = 256;

fn softmax_forward(x: &[f32], e: usize) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(SOFTMAX_ROWS * e).for_each(|c| {
        for row in c.chunks_exact_mut(e) {
            let m = btx_kernels::reduce::max(row);
            let inv = 1.0 / vexp::exp_sub_sum(row, m);
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
    y
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    /// (the softmax output y, shape)
    type State = (FlexTensor, [usize; 2]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, [n, e]) = ops.state;
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let [px] = ops.parents;
        let Some(node) = px else { return };
        // dx = y (dy - <y, dy>) per row.
        let (y, g) = (f32_slice(&y), f32_slice(&g));
        let mut dx = g.to_vec();
        dx.par_chunks_mut(SOFTMAX_ROWS * e)
            .zip(y.par_chunks(SOFTMAX_ROWS * e))
            .for_each(|(d, y)| {
                for (dr, yr) in d.chunks_exact_mut(e).zip(y.chunks_exact(e)) {
                    let dot = btx_kernels::reduce::dot(yr, dr);
                    for (a, &b) in dr.iter_mut().zip(yr) {
                        *a = b * (*a - dot);
                    }
                }
            });
        grads.register::<Flex>(node.id, flex2(dx, [n, e]));
    }
}

/// Softmax over the last dim of `x: [N, E]` in one op (the router's probabilities and top-k
/// gates: burn's composite softmax is five small ops forward and more backward, each a pass on
/// the calling thread). Rows of length 0 are the composite softmax's (`ops::softmax_rows`).
pub fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    let shape = x.dims();
    assert!(shape[1] > 0, "softmax_rows: rows of length 0");
    if x.is_autodiff() {
        let x = autodiff_flex(x);
        let y = flex2(
            softmax_forward(f32_slice(&contiguous(x.primitive())), shape[1]),
            shape,
        );
        let t = match SoftmaxBackward
            .prepare::<NoCheckpointing>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((y.clone(), shape), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let x = plain_flex(x);
        Tensor::from_primitive::<Flex>(flex2(softmax_forward(f32_slice(&x), shape[1]), shape))
    }
}
