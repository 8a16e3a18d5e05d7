//! The MoE combine step: `out[i] = Σ_r g[r] · y[r]` over the expert-output rows `r` routed from
//! token `i`, with a handwritten backward (dy[r] = g[r] · dOut[i], dg[r] = <y[r], dOut[i]>).
//!
//! It replaces the composite chain "gate multiply, zeros, scatter-add rows" (three passes and a
//! zero-filled allocation forward, a gather and a broadcast multiply backward, all on one core)
//! with one pass each way, split over the cores: forward by token (each token sums its own
//! rows, in row order, so the result does not depend on the thread count), backward by row.

use std::sync::Arc;

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
use std::mem::MaybeUninit;

/// Rows per parallel task.
const ROWS: usize = 64;

/// Which expert-output rows feed each token (CSR: rows of token i are
/// `rows[start[i]..start[i + 1]]`, ascending).
#[derive(Debug)]
pub struct Routes {
    /// Destination token of each row.
    pub tok: Vec<usize>,
    start: Vec<usize>,
    rows: Vec<usize>,
}

impl Routes {
    pub fn new(tok: Vec<usize>, n: usize) -> Self {
        let mut start = vec![0usize; n + 1];
        for &t in &tok {
            assert!(t < n, "row routed to token {t} of {n}");
            start[t + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut fill = start.clone();
        let mut rows = vec![0usize; tok.len()];
        for (r, &t) in tok.iter().enumerate() {
            rows[fill[t]] = r;
            fill[t] += 1;
        }
        Self { tok, start, rows }
    }

    /// The number of tokens rows are routed to.
    pub fn tokens(&self) -> usize {
        self.start.len() - 1
    }
}

fn forward(y: &[f32], g: &[f32], routes: &Routes, d: usize) -> Vec<f32> {
    let mut out = super::zeroed(routes.tokens() * d);
    out.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, o) in chunk.chunks_exact_mut(d).enumerate() {
                let i = c * ROWS + j;
                for &r in &routes.rows[routes.start[i]..routes.start[i + 1]] {
                    let (yr, gr) = (&y[r * d..(r + 1) * d], g[r]);
                    for (a, b) in o.iter_mut().zip(yr) {
                        *a += gr * b;
                    }
                }
            }
        });
    out
}

#[derive(Debug)]
struct CombineBackward;

impl Backward<Flex, 2> for CombineBackward {
    /// (y `[m, d]`, g `[m]`, routes)
    type State = (FlexTensor, FlexTensor, Arc<Routes>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (y, g, routes) = ops.state;
        let dout = contiguous(&grads.consume::<Flex>(&ops.node));
        let (y, g, dout) = (f32_slice(&y), f32_slice(&g), f32_slice(&dout));
        let m = routes.tok.len();
        let d = y.len().checked_div(m).unwrap_or(0);
        let mut dy = super::uninit(m * d);
        let mut dg = vec![0f32; m];
        if d > 0 {
            dy.par_chunks_mut(ROWS * d)
                .zip(dg.par_chunks_mut(ROWS))
                .enumerate()
                .for_each(|(c, (dyc, dgc))| {
                    for (j, (dyr, dgr)) in dyc.chunks_exact_mut(d).zip(dgc).enumerate() {
                        let r = c * ROWS + j;
                        let t = routes.tok[r];
                        let (yr, gr) = (&y[r * d..(r + 1) * d], &dout[t * d..(t + 1) * d]);
                        for (o, &x) in dyr.iter_mut().zip(gr) {
                            o.write(g[r] * x);
                        }
                        *dgr = btx_kernels::reduce::dot(yr, gr);
                    }
                });
        }
        // SAFETY: the row blocks cover `dy` (empty when d = 0) and every row is written whole.
        let dy = unsafe { super::assume_init(dy) };
        let [py, pg] = ops.parents;
        if let Some(node) = py {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dy, [m, d])));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dg, [m])));
        }
    }
}

/// `out [n, d]` with `out[i] = Σ_{r: tok[r] = i} g[r] · y[r]` for expert outputs `y [m, d]` and
/// gate values `g [m]`.
pub fn combine(y: Tensor<2>, g: Tensor<1>, routes: Arc<Routes>) -> Tensor<2> {
    let [m, d] = y.dims();
    assert_eq!(
        m,
        routes.tok.len(),
        "combine: {m} rows but {} routes",
        routes.tok.len()
    );
    let shape = [routes.tokens(), d];
    if y.is_autodiff() || g.is_autodiff() {
        let (y, g) = (autodiff_flex(y), autodiff_flex(g));
        let (yc, gc) = (contiguous(y.primitive()), contiguous(g.primitive()));
        let out = FlexTensor::from_data(TensorData::new(
            forward(f32_slice(&yc), f32_slice(&gc), &routes, d),
            shape,
        ));
        let t = match CombineBackward
            .prepare::<NoCheckpointing>([y.node(), g.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((yc, gc, routes), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (y, g) = (plain_flex(y), plain_flex(g));
        let out = forward(f32_slice(&y), f32_slice(&g), &routes, d);
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, shape)))
    }
}

/// Gathers the routed rows: `out[r] = x[tok[r]]`, rows in parallel.
fn gather_forward(x: &[f32], routes: &Routes, d: usize) -> Vec<f32> {
    let mut out = super::uninit(routes.tok.len() * d);
    out.par_chunks_mut(ROWS * d)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, o) in chunk.chunks_exact_mut(d).enumerate() {
                let t = routes.tok[c * ROWS + j];
                for (a, &b) in o.iter_mut().zip(&x[t * d..(t + 1) * d]) {
                    a.write(b);
                }
            }
        });
    // SAFETY: the row blocks cover `out` and every row is written whole.
    unsafe { super::assume_init(out) }
}

#[derive(Debug)]
struct GatherBackward;

impl Backward<Flex, 1> for GatherBackward {
    /// (routes, d, the fan-in x's gradient goes to, the row of x that gets no gradient)
    type State = (Arc<Routes>, usize, Option<Arc<FanIn>>, Option<usize>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (routes, d, fan, skip) = ops.state;
        let dout = contiguous(&grads.consume::<Flex>(&ops.node));
        let dout = f32_slice(&dout);
        let [px] = ops.parents;
        let Some(node) = px else { return };
        // dx[i] = Σ of the gradients of token i's rows, added in row order onto zero (or onto
        // what the fan-in holds) — the order, and so the bits, of the composite scatter-add —
        // one token per row of work.
        let n = routes.tokens();
        let write = |dst: *mut f32, mode: Dst| {
            // SAFETY: n*d elements handed over, initialised in accumulate mode.
            let dx =
                unsafe { std::slice::from_raw_parts_mut(dst.cast::<MaybeUninit<f32>>(), n * d) };
            dx.par_chunks_mut(ROWS * d.max(1))
                .enumerate()
                .for_each(|(c, chunk)| {
                    if mode == Dst::Write {
                        chunk.fill(MaybeUninit::new(0.0));
                    }
                    // SAFETY: initialised just above or by the caller.
                    let chunk = unsafe { &mut *(chunk as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    for (j, o) in chunk.chunks_exact_mut(d.max(1)).enumerate() {
                        let i = c * ROWS + j;
                        // The skipped row keeps what it holds: zero, or the fan-in's sum.
                        if skip == Some(i) {
                            continue;
                        }
                        for &r in &routes.rows[routes.start[i]..routes.start[i + 1]] {
                            for (a, &b) in o.iter_mut().zip(&dout[r * d..(r + 1) * d]) {
                                *a += b;
                            }
                        }
                    }
                });
        };
        // SAFETY: `write` zero-fills (in write mode) and then adds into exactly the n*d elements.
        if let Some(dx) = unsafe { share(fan.as_deref(), n * d, write) } {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [n, d])));
        }
    }
}

/// `out [m, d]` with `out[r] = x[tok[r]]` (the rows sent to the experts, in `routes`' row
/// order; or, with x the embedding table, the token embeddings), with the backward summing
/// each token's row gradients. With `fan`, x's gradient is summed there (x is read by other ops built with the same [`FanIn`]).
pub fn gather(x: Tensor<2>, routes: Arc<Routes>, fan: Option<&Arc<FanIn>>) -> Tensor<2> {
    gather_skipping(x, routes, fan, None)
}

/// [`gather`] whose backward gives row `skip` of x no gradient (the rows gathered from it
/// still pass theirs nowhere): an embedding lookup with a `padding_idx`, whose backward in
/// torch (`embedding_dense_backward`) skips that index. The forward is [`gather`]'s.
pub fn gather_skipping(
    x: Tensor<2>,
    routes: Arc<Routes>,
    fan: Option<&Arc<FanIn>>,
    skip: Option<usize>,
) -> Tensor<2> {
    let [n, d] = x.dims();
    assert_eq!(
        n,
        routes.tokens(),
        "gather: {n} tokens but routes for {}",
        routes.tokens()
    );
    let shape = [routes.tok.len(), d];
    if x.is_autodiff() {
        let x = autodiff_flex(x);
        let fan = fan.filter(|f| announce_if_tracked(f, &x)).cloned();
        let xc = contiguous(x.primitive());
        let out = FlexTensor::from_data(TensorData::new(
            gather_forward(f32_slice(&xc), &routes, d),
            shape,
        ));
        let t = match GatherBackward
            .prepare::<NoCheckpointing>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((routes, d, fan, skip), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let x = plain_flex(x);
        let out = gather_forward(f32_slice(&x), &routes, d);
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(out, shape)))
    }
}
