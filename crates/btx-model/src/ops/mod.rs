//! The model's ops, one function each, choosing inside between the fused flex kernel (with its
//! handwritten backward, `crate::fused`) and the composite burn ops every other backend runs
//! (and that the fused ones are tested against). Call sites never see the choice.

use burn::prelude::*;
use burn::tensor::activation::silu;

use crate::{fused, precision};

/// A linear layer in Hugging Face's `[out, in]` layout: `x [N, in] · wᵀ`. The fused kernel on
/// flex, the composite `matmul` elsewhere (in the process's [`precision`]).
pub fn linear(x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
    match fused::linear::linear(x.clone(), w.clone()) {
        Some(y) => y,
        None => precision::matmul(x, w.clone().transpose()),
    }
}

/// Softmax over each row of `[N, E]`: the fused op on flex (a vectorised exp that takes a
/// masked score to 0 without libm's slow underflow path), burn's composite elsewhere.
pub fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    match fused::elementwise::softmax_rows(x.clone()) {
        Some(y) => y,
        None => burn::tensor::activation::softmax(x, 1),
    }
}

/// [`linear`] of one input by several weights (q, k, v; an MLP's gate and up). On flex the
/// input's gradient is summed inside the products' backward passes (see
/// [`btx_kernels::fan_in::FanIn`]) rather than by burn, one serial add per extra weight.
pub fn linears(x: Tensor<2>, ws: &[&Tensor<2>]) -> Vec<Tensor<2>> {
    if fused::on_flex(&x) {
        let fan = btx_kernels::fan_in::FanIn::new();
        return ws
            .iter()
            .map(|w| fused::linear::linear_shared(x.clone(), (*w).clone(), &fan).expect("on flex"))
            .collect();
    }
    ws.iter().map(|w| linear(x.clone(), w)).collect()
}

/// A MoE layer's output `[n, d]`: expert row i (`y [rows, d]`) times its gate `g[i]`, added
/// into the row of its token (`routes.tok[i]`, of `routes`' n tokens).
pub fn combine(
    y: Tensor<2>,
    g: Tensor<1>,
    routes: std::sync::Arc<fused::moe::Routes>,
) -> Tensor<2> {
    if let Some(out) = fused::moe::combine(y.clone(), g.clone(), routes.clone()) {
        return out;
    }
    let dev = y.device();
    let [n, d] = [routes.tokens(), y.dims()[1]];
    let tok: Vec<i64> = routes.tok.iter().map(|&t| t as i64).collect();
    let len = tok.len();
    Tensor::<2>::zeros([n, d], &dev).select_assign(
        0,
        Tensor::<1, Int>::from_data(TensorData::new(tok, [len]), &dev),
        y * g.unsqueeze_dim(1),
        burn::tensor::IndexingUpdateOp::Add,
    )
}

/// SwiGLU's `silu(g) * u`: one fused pass on flex.
pub fn swiglu(g: Tensor<2>, u: Tensor<2>) -> Tensor<2> {
    match fused::elementwise::swiglu(g.clone(), u.clone()) {
        Some(h) => h,
        None => silu(g) * u,
    }
}

/// `x * rsqrt(mean(x^2) + eps) * w`, over the last dim of `[N, d]`; `w` is `[1, d]`.
pub fn rms_norm(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> Tensor<2> {
    if let Some(y) = fused::elementwise::rms_norm(x.clone(), w.clone(), eps, None) {
        return y;
    }
    rms_norm_composite(x, w, eps)
}

/// A pre-norm residual block's two reads of the stream `x`: its RMSNorm, and (after the block)
/// `x + delta`. On flex the two share x's gradient (see [`btx_kernels::fan_in::FanIn`]) so
/// that burn does not add them in a serial pass; elsewhere plain composite ops.
pub struct Residual {
    x: Tensor<2>,
    fan: Option<std::sync::Arc<btx_kernels::fan_in::FanIn>>,
}

impl Residual {
    /// The block's input `x` and `rms_norm(x, w)`.
    pub fn norm(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> (Self, Tensor<2>) {
        if fused::on_flex(&x) {
            let fan = btx_kernels::fan_in::FanIn::new();
            let h = fused::elementwise::rms_norm(x.clone(), w.clone(), eps, Some(&fan))
                .expect("on flex");
            return (Self { x, fan: Some(fan) }, h);
        }
        let h = rms_norm_composite(x.clone(), w, eps);
        (Self { x, fan: None }, h)
    }

    /// `x + delta`, the block's output.
    pub fn output(self, delta: Tensor<2>) -> Tensor<2> {
        match &self.fan {
            Some(fan) => fused::elementwise::residual_add(self.x, delta, fan).expect("on flex"),
            None => self.x + delta,
        }
    }
}

/// The composite reference of [`rms_norm`].
pub fn rms_norm_composite(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> Tensor<2> {
    let inv = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * inv * w.clone()
}
