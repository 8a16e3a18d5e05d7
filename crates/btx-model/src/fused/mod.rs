//! Fused CPU kernels with handwritten backward passes for the `flex` backend. Each op checks at
//! run time that its inputs live on a flex device and otherwise returns `None`, so callers fall
//! back to the composite ops (the reference implementation, and what other backends run).
//! `BTX_COMPOSITE=1` forces the composite path everywhere (for comparisons).
//!
//! The ops here take burn tensors in and give burn tensors out, a backward each; the raw
//! kernels they run on `f32` slices (SIMD, gemm, attention, the gradient fan-in's bookkeeping)
//! are the btx-kernels crate's, which has no burn types. The gemm clock and FMA peak that
//! `btx bench` reads live there too, beside the products they time.

// The ops: burn autograd ops with handwritten backward passes, over the kernels. (The fused
// AdamW update is the optimizer's: btx-train's `adamw`.)
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod experts;
pub mod linear;
pub mod lm_head;
pub mod moe;

pub(crate) use btx_kernels::{assume_init, uninit, zeroed, SharedPtr};

use btx_kernels::fan_in::FanIn;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

/// True when `t` lives on a flex device (with or without autodiff) and fused kernels are on.
pub fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    use burn::backend::DispatchDevice;
    // bf16 matmuls: the composite ops, which every backend runs in bf16 (the kernels here are
    // f32 only).
    if composite_forced() || !crate::precision::current().is_f32() {
        return false;
    }
    matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
}

/// `t` itself when contiguous, else a contiguous copy (kernels read plain row-major slices).
pub fn contiguous(t: &burn::backend::flex::FlexTensor) -> burn::backend::flex::FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The f32 elements of a contiguous flex tensor.
pub fn f32_slice(t: &burn::backend::flex::FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

fn composite_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("BTX_COMPOSITE").is_some_and(|v| v != "0"))
}

/// The flex autodiff primitive of `t` (a tensor off the graph joins it untracked), for ops
/// whose inputs may mix tracked and plain tensors.
pub(crate) fn autodiff_flex<const D: usize>(
    t: Tensor<D>,
) -> <burn::backend::Autodiff<burn::backend::Flex> as burn::backend::BackendTypes>::FloatTensorPrimitive{
    t.autodiff()
        .try_into_primitive::<burn::backend::Autodiff<burn::backend::Flex>>()
        .expect("flex autodiff tensor")
}

/// The contiguous flex primitive of a tensor that is not on the autodiff graph.
pub(crate) fn plain_flex<const D: usize>(t: Tensor<D>) -> burn::backend::flex::FlexTensor {
    contiguous(
        &t.try_into_primitive::<burn::backend::Flex>()
            .expect("flex tensor"),
    )
}

/// Announces to `fan` one more consumer whose backward pass will add a share, if `x` (its
/// input) needs a gradient; returns whether it does. (btx-kernels' [`FanIn`] keeps the count;
/// whether an input is tracked is the autodiff graph's to say.)
pub(crate) fn announce_if_tracked(
    fan: &FanIn,
    x: &<Autodiff<Flex> as burn::backend::BackendTypes>::FloatTensorPrimitive,
) -> bool {
    let tracked = matches!(
        Probe
            .prepare::<NoCheckpointing>([x.node()])
            .compute_bound()
            .stateful(),
        OpsKind::Tracked(_)
    );
    if tracked {
        fan.announce();
    }
    tracked
}

/// An op that is never finished: preparing it tells whether its input needs a gradient.
#[derive(Debug)]
struct Probe;

impl Backward<Flex, 1> for Probe {
    type State = ();

    fn backward(self, _: Ops<(), 1>, _: &mut Gradients, _: &mut Checkpointer) {}
}
