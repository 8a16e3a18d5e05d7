//! The model's ops, one function each, and the one place that chooses between a fused flex
//! kernel (with its handwritten backward, [`crate::fused`]) and the composite burn ops every
//! other backend runs (and that the fused ones are tested against). The choice is
//! [`fused_available`], asked here and in the child [`attention`] before every fused op the
//! model runs, and nowhere else; the model's modules call these functions and never see it.
//!
//! Attention's choice is a child module because both of its halves live in `crate::attention`,
//! which itself builds on the element ops here: this file must not import it (no module
//! imports one that imports it back: crates/btx/tests/architecture.rs).

use std::sync::Arc;

use btx_kernels::fan_in::FanIn;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, silu};

use crate::{fused, precision};

pub mod attention;

/// Whether the ops run the fused kernels on `t`: it lives on a flex device (with or without
/// autodiff), the process computes in f32 (the kernels are f32 only; in bf16 the composite ops
/// run, as on every backend), and `BTX_COMPOSITE=1` does not force the composite path (for
/// comparisons). The one predicate: this module asks it before each fused op, and btx-train's
/// fused AdamW asks it of its parameters.
pub fn fused_available<const D: usize>(t: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    if composite_forced() || !precision::current().is_f32() {
        return false;
    }
    matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

fn composite_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("BTX_COMPOSITE").is_some_and(|v| v != "0"))
}

/// A linear layer in Hugging Face's `[out, in]` layout: `x [N, in] · wᵀ`. The fused kernel on
/// flex, the composite `matmul` elsewhere (in the process's [`precision`]).
pub fn linear(x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
    if fused_available(&x) {
        return fused::linear::linear(x, w.clone());
    }
    precision::matmul(x, w.clone().transpose())
}

/// Softmax over each row of `[N, E]`: the fused op on flex (a vectorised exp that takes a
/// masked score to 0 without libm's slow underflow path), burn's composite elsewhere (and for
/// rows of length 0).
pub fn softmax_rows(x: Tensor<2>) -> Tensor<2> {
    if fused_available(&x) && x.dims()[1] > 0 {
        return fused::elementwise::softmax_rows(x);
    }
    burn::tensor::activation::softmax(x, 1)
}

/// [`linear`] of one input by several weights (q, k, v; an MLP's gate and up). On flex the
/// input's gradient is summed inside the products' backward passes (see
/// [`FanIn`]) rather than by burn, one serial add per extra weight.
pub fn linears(x: Tensor<2>, ws: &[&Tensor<2>]) -> Vec<Tensor<2>> {
    if fused_available(&x) {
        let fan = FanIn::new();
        return ws
            .iter()
            .map(|w| fused::linear::linear_shared(x.clone(), (*w).clone(), &fan))
            .collect();
    }
    ws.iter().map(|w| linear(x.clone(), w)).collect()
}

/// A MoE layer's output `[n, d]`: expert row i (`y [rows, d]`) times its gate `g[i]`, added
/// into the row of its token (`routes.tok[i]`, of `routes`' n tokens).
pub fn combine(y: Tensor<2>, g: Tensor<1>, routes: Arc<fused::moe::Routes>) -> Tensor<2> {
    if fused_available(&y) {
        return fused::moe::combine(y, g, routes);
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
    if fused_available(&g) {
        return fused::elementwise::swiglu(g, u);
    }
    silu(g) * u
}

/// A SwiGLU FFN in Hugging Face's layout: `down(silu(gate x) * up x)`, the gate and up
/// projections sharing x's gradient on flex ([`linears`]).
pub fn mlp(x: Tensor<2>, gate: &Tensor<2>, up: &Tensor<2>, down: &Tensor<2>) -> Tensor<2> {
    let [g, u]: [Tensor<2>; 2] = linears(x, &[gate, up]).try_into().expect("two projections");
    linear(swiglu(g, u), down)
}

/// `x * rsqrt(mean(x^2) + eps) * w`, over the last dim of `[N, d]`; `w` is `[1, d]`.
pub fn rms_norm(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> Tensor<2> {
    if fused_available(&x) {
        return fused::elementwise::rms_norm(x, w.clone(), eps, None);
    }
    rms_norm_composite(x, w, eps)
}

/// A pre-norm residual block's two reads of the stream `x`: its RMSNorm, and (after the block)
/// `x + delta`. On flex the two share x's gradient (see [`FanIn`]) so that burn does not add
/// them in a serial pass; elsewhere plain composite ops.
pub struct Residual {
    x: Tensor<2>,
    /// Some on the fused path (chosen in [`Residual::norm`]).
    fan: Option<Arc<FanIn>>,
}

impl Residual {
    /// The block's input `x` and `rms_norm(x, w)`.
    pub fn norm(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> (Self, Tensor<2>) {
        if fused_available(&x) {
            let fan = FanIn::new();
            let h = fused::elementwise::rms_norm(x.clone(), w.clone(), eps, Some(&fan));
            return (Self { x, fan: Some(fan) }, h);
        }
        let h = rms_norm_composite(x.clone(), w, eps);
        (Self { x, fan: None }, h)
    }

    /// `x + delta`, the block's output.
    pub fn output(self, delta: Tensor<2>) -> Tensor<2> {
        match &self.fan {
            Some(fan) => fused::elementwise::residual_add(self.x, delta, fan),
            None => self.x + delta,
        }
    }
}

/// The composite reference of [`rms_norm`].
pub fn rms_norm_composite(x: Tensor<2>, w: &Tensor<2>, eps: f64) -> Tensor<2> {
    let inv = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * inv * w.clone()
}

/// A MoE layer's two reads of its input `x: [N, d]`: the router's linear and the gather of the
/// rows its experts run. On flex the two share x's gradient (see [`FanIn`]); elsewhere plain
/// composite ops.
pub struct MoeInput {
    x: Tensor<2>,
    /// Some on the fused path (chosen in [`MoeInput::new`]).
    fan: Option<Arc<FanIn>>,
}

impl MoeInput {
    pub fn new(x: Tensor<2>) -> Self {
        let fan = fused_available(&x).then(FanIn::new);
        Self { x, fan }
    }

    /// The router's logits `x · wᵀ` for its weight `w: [E, d]`.
    pub fn router(&self, w: &Tensor<2>) -> Tensor<2> {
        match &self.fan {
            Some(fan) => fused::linear::linear_shared(self.x.clone(), w.clone(), fan),
            None => linear(self.x.clone(), w),
        }
    }

    /// Expert e's SwiGLU FFN (`experts[e] = (gate, up, down)`, as [`mlp`] takes them) on the rows
    /// `toks[e]` of x, the outputs grouped by expert in expert order: one gather and the fused
    /// all-experts FFN on flex (up to [`fused::experts::MAX_EXPERTS`] experts), else expert by
    /// expert.
    pub fn experts(
        &self,
        toks: &[Vec<i64>],
        experts: &[(&Tensor<2>, &Tensor<2>, &Tensor<2>)],
    ) -> Tensor<2> {
        let x = &self.x;
        // (A gather whose rows went unused would leave the fan-in short.)
        if fused_available(x) && experts.len() <= fused::experts::MAX_EXPERTS {
            let mut bounds = vec![0usize];
            for t in toks {
                bounds.push(bounds.last().expect("bounds") + t.len());
            }
            let rows: Vec<usize> = toks.iter().flatten().map(|&t| t as usize).collect();
            let routes = Arc::new(fused::moe::Routes::new(rows, x.dims()[0]));
            let xg = fused::moe::gather(x.clone(), routes, self.fan.as_ref());
            return fused::experts::experts_ffn(xg, &bounds, experts);
        }
        let dev = x.device();
        let ys: Vec<Tensor<2>> = experts
            .iter()
            .zip(toks)
            .filter(|(_, t)| !t.is_empty())
            .map(|(&(gate, up, down), t)| {
                let idx = Tensor::<1, Int>::from_data(TensorData::new(t.clone(), [t.len()]), &dev);
                mlp(x.clone().select(0, idx), gate, up, down)
            })
            .collect();
        Tensor::cat(ys, 0)
    }
}

/// The rows `ids` (in range) of an embedding table `table: [V, d]`, `[ids.len(), d]`.
///
/// With `pad`, the lookup's gradient of that row is zero, as in transformers'
/// `nn.Embedding(..., padding_idx=pad)` (F.embedding's backward skips `padding_idx`); the
/// forward is unchanged, and another read of the table (a tied head) still passes its gradient
/// to the row.
pub fn embed(table: &Tensor<2>, ids: &[i64], pad: Option<i64>) -> Tensor<2> {
    // On flex the fused row gather: rows copied in parallel, and the table's gradient summed
    // per vocabulary row in parallel (burn's select backward zero-fills the [V, d] gradient and
    // scatter-adds on one core), with the same bits; its backward skips the pad row itself.
    if fused_available(table) {
        let rows = ids.iter().map(|&i| i as usize).collect();
        let routes = Arc::new(fused::moe::Routes::new(rows, table.dims()[0]));
        let skip = pad.map(|p| p as usize);
        return fused::moe::gather_skipping(table.clone(), routes, None, skip);
    }
    let dev = table.device();
    let n = ids.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(ids.to_vec(), [n]), &dev);
    let x = table.clone().select(0, idx.clone());
    let Some(pad) = pad else { return x };
    // Composite: the rows at pad positions are taken from the detached table, the others from
    // the tracked one. Values are unchanged (x·1 + x·0 and x·0 + x·1), and the lookup's gradient
    // reaches only the rows of non-pad positions.
    let is_pad: Vec<f32> = ids.iter().map(|&i| f32::from(i == pad)).collect();
    let is_pad = Tensor::<2>::from_data(TensorData::new(is_pad, [n, 1]), &dev);
    let keep = is_pad.clone().neg().add_scalar(1.0);
    let fixed = table.clone().detach().select(0, idx);
    x * keep + fixed * is_pad
}

/// Mean cross-entropy of `logits: [N, V]` against `targets` (one per row; negative = ignored):
/// one fused pass on flex, [`cross_entropy_composite`] elsewhere.
pub fn cross_entropy(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    if fused_available(&logits) {
        return fused::cross_entropy::mean_cross_entropy(logits, targets);
    }
    cross_entropy_composite(logits, targets)
}

/// The composite reference of [`cross_entropy`]: the rows with a target, their log-softmax at
/// the target, negated, averaged. (`loss::token_nll` computes the same per row, but `loss`
/// imports `moe`, which imports `ops`: calling it from here would close an import circle.)
pub fn cross_entropy_composite(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let (pos, tgt): (Vec<i64>, Vec<i64>) = (0..)
        .zip(targets)
        .filter(|(_, &t)| t >= 0)
        .map(|(i, &t)| (i, t))
        .unzip();
    let dev = logits.device();
    let n = pos.len();
    let rows = logits.select(0, Tensor::from_data(TensorData::new(pos, [n]), &dev));
    let tgt = Tensor::<2, Int>::from_data(TensorData::new(tgt, [n, 1]), &dev);
    log_softmax(rows, 1)
        .gather(1, tgt)
        .reshape([n])
        .neg()
        .mean()
}

/// [`cross_entropy`] of the output head applied to `hidden: [N, d]` (`head: [V, d]`): on flex one
/// fused kernel computes head, loss and their gradients block by block, so training never holds
/// the `[N, V]` logits; elsewhere `cross_entropy(linear(hidden, head))`.
pub fn head_cross_entropy(hidden: Tensor<2>, head: &Tensor<2>, targets: &[i64]) -> Tensor<1> {
    if fused_available(&hidden) {
        return fused::lm_head::head_cross_entropy(hidden, head.clone(), targets);
    }
    cross_entropy(linear(hidden, head), targets)
}
