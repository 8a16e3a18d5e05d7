//! Fused CPU kernels with handwritten backward passes for the `flex` backend. Each op checks at
//! run time that its inputs live on a flex device and otherwise returns `None`, so callers fall
//! back to the composite ops (the reference implementation, and what other backends run).
//! `BTX_COMPOSITE=1` forces the composite path everywhere (for comparisons).
//!
//! Three layers, each importing only the ones below it:
//! - [`kernels`]: raw SIMD and gemm kernels on `f32` slices and raw pointers, no burn types;
//!   every `unsafe fn` documents its contract under `# Safety`.
//! - [`instrument`]: what `btx bench` reads (time inside products, the FMA peak); off, it costs
//!   a relaxed atomic load per product.
//! - the ops in this module's files: burn tensors in, burn tensors out, a backward each.

// The ops: burn autograd ops with handwritten backward passes, over the kernels. (The fused
// AdamW update is the optimizer's: btx-train's `adamw`.)
pub mod attention;
pub mod cross_entropy;
pub mod elementwise;
pub mod experts;
pub mod fan_in;
pub mod linear;
pub mod lm_head;
pub mod moe;

pub mod instrument;
pub mod kernels;

pub(crate) use kernels::{assume_init, uninit, zeroed, SharedPtr};

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
