//! Fused CPU ops with handwritten backward passes for the `flex` backend in f32: burn tensors
//! in, burn tensors out, a backward each, over the raw kernels of the btx-kernels crate (plain
//! `f32` slices, no burn types; the gemm clock and FMA peak `btx bench` reads live there too).
//!
//! Whether an op runs is not decided here: [`crate::ops`] calls each one only where its one
//! predicate, `ops::fused_available`, holds, and runs the composite burn ops (the reference
//! implementation, and what other backends run) elsewhere. An op handed a tensor that is not
//! on flex, or not f32, panics when it takes the flex primitive (`autodiff_flex`,
//! `plain_flex`) or its slice ([`f32_slice`]): it never reads memory of another kind. The ops
//! are public for the tests that hold each against its composite reference (tests/fused.rs).

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

/// `t` itself when contiguous, else a contiguous copy (kernels read plain row-major slices).
pub fn contiguous(t: &burn::backend::flex::FlexTensor) -> burn::backend::flex::FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The f32 elements of a contiguous flex tensor (panics for another dtype: the slice is typed).
pub fn f32_slice(t: &burn::backend::flex::FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
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
