//! `y = x Wᵀ` (a linear layer in Hugging Face's `[out, in]` weight layout) with a handwritten
//! backward: dX = dY W and dW = dYᵀ X, each written by gemm straight into a fresh buffer
//! (in column blocks where gemm runs them faster: see [`GRAD_BLOCK`] and [`spread_product`]).
//!
//! The composite `x.matmul(w.transpose())` costs more than its gemm on flex: every output is
//! allocated zeroed and then copied once more to meet the runtime alignment, and the weight
//! gradient arrives as a transposed view that the optimizer has to copy back to `[out, in]`.
//! Here outputs are written once, and dW is produced in the weight's own layout.

use super::announce_if_tracked;
use super::{autodiff_flex, contiguous, f32_slice, plain_flex};
use btx_kernels::fan_in::{share, FanIn};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use std::sync::Arc;

use btx_kernels::gemm::{both_grads, forward, spread_product, weight_grad};
use btx_kernels::gemv::{gemv, GEMV_ROWS};

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    /// (x `[m, k]`, w `[n, k]`, [m, k, n], the fan-in x's gradient goes to)
    type State = (FlexTensor, FlexTensor, [usize; 3], Option<Arc<FanIn>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, [m, k, n], fan) = ops.state;
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let g = f32_slice(&g);
        let [px, pw] = ops.parents;
        let (w, x) = (f32_slice(&w), f32_slice(&x));
        let fan = fan.as_deref();
        let (dx, dw) = match (px.is_some(), pw.is_some()) {
            (true, true) => {
                let mut dw = None;
                let write = |dst, mode| {
                    // SAFETY: `share` hands over m*k writable elements in the mode given.
                    dw = Some(unsafe { both_grads(g, w, x, [m, k, n], (dst, mode)) });
                };
                // SAFETY: `both_grads` writes (or adds into) all m*k elements of dX, no more.
                let dx = unsafe { share(fan, m * k, write) };
                (dx, dw)
            }
            // One product: spread over the pool.
            (want_dx, want_dw) => (
                want_dx
                    .then(|| {
                        let write = |dst, mode| {
                            // SAFETY: as above; every element of dX written (or added to).
                            unsafe {
                                spread_product(dst, k, [m, k, n], (g, n, 1), (w, k, 1), 1.0, mode)
                            }
                        };
                        // SAFETY: the product writes (or adds into) every element of dX, no more.
                        unsafe { share(fan, m * k, write) }
                    })
                    .flatten(),
                want_dw.then(|| weight_grad(g, x, [m, k, n])),
            ),
        };
        if let (Some(node), Some(dx)) = (px, dx) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, [m, k])));
        }
        if let (Some(node), Some(dw)) = (pw, dw) {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dw, [n, k])));
        }
    }
}

/// `x [m, k] · wᵀ` for `w [n, k]`.
pub fn linear(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    linear_into(x, w, None)
}

/// [`linear`] for one of the ops built with `fan` that read the same `x`: x's gradient is
/// summed in `fan` (see [`FanIn`]) instead of by burn.
pub fn linear_shared(x: Tensor<2>, w: Tensor<2>, fan: &Arc<FanIn>) -> Tensor<2> {
    linear_into(x, w, Some(fan.clone()))
}

fn linear_into(x: Tensor<2>, w: Tensor<2>, fan: Option<Arc<FanIn>>) -> Tensor<2> {
    let ([m, k], [n, kw]) = (x.dims(), w.dims());
    assert_eq!(
        k, kw,
        "linear: x is [{m}, {k}] but the weight is [{n}, {kw}]"
    );
    if x.is_autodiff() || w.is_autodiff() {
        let (x, w) = (autodiff_flex(x), autodiff_flex(w));
        let fan = fan.filter(|f| announce_if_tracked(f, &x));
        let (xc, wc) = (contiguous(x.primitive()), contiguous(w.primitive()));
        let y = FlexTensor::from_data(TensorData::new(
            forward(f32_slice(&xc), f32_slice(&wc), m, k, n),
            [m, n],
        ));
        let t = match LinearBackward
            .prepare::<NoCheckpointing>([x.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xc, wc, [m, k, n], fan), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (x, w) = (plain_flex(x), plain_flex(w));
        // Inference on a few rows (decoding): one pass over the weight, no packing.
        let y = if m <= GEMV_ROWS {
            gemv(f32_slice(&x), f32_slice(&w), m, k, n)
        } else {
            forward(f32_slice(&x), f32_slice(&w), m, k, n)
        };
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(y, [m, n])))
    }
}
