//! Fused CPU kernels with handwritten backward passes for the `flex` backend. Each op checks at
//! run time that its inputs live on a flex device and otherwise returns `None`, so callers fall
//! back to the composite ops (the reference implementation, and what other backends run).
//! `BTX_COMPOSITE=1` forces the composite path everywhere (for comparisons).

pub mod adamw;
pub mod attention;
pub mod awake;
pub mod cross_entropy;
pub mod elementwise;
pub mod experts;
pub mod fan_in;
pub mod gemm_clock;
pub mod linear;
pub mod lm_head;
pub mod moe;
pub mod peak;
pub mod reduce;
pub mod simd;
pub mod tile_mm;
pub mod vexp;

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
pub(crate) fn contiguous(t: &burn::backend::flex::FlexTensor) -> burn::backend::flex::FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// The f32 elements of a contiguous flex tensor.
pub(crate) fn f32_slice(t: &burn::backend::flex::FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

fn composite_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("BTX_COMPOSITE").is_some_and(|v| v != "0"))
}

/// A zero-filled buffer for a kernel's output, zeroed by all the pool's threads in the chunks
/// they will most likely fill (`vec![0; n]` zeroes on the calling thread alone, a serial pass
/// the other cores wait through).
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    if n < 4 * CHUNK {
        return vec![0.0; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .for_each(|c| c.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: every one of the n elements was initialised just above.
    unsafe { v.set_len(n) };
    v
}

/// `n` uninitialised elements for a kernel that writes every one of them (through
/// `MaybeUninit::write`); [`assume_init`] then turns them into the output without the zeroing
/// pass [`zeroed`] costs.
/// Debug builds fill it with NaN, so that an element a kernel forgot shows up in the tests
/// (`cargo test` without `--release`) as a NaN in its output.
pub(crate) fn uninit(n: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    if cfg!(debug_assertions) {
        return vec![std::mem::MaybeUninit::new(f32::NAN); n];
    }
    let mut v = Vec::with_capacity(n);
    // SAFETY: `MaybeUninit` elements need no initialisation.
    unsafe { v.set_len(n) };
    v
}

/// The buffer of [`uninit`] as plain floats.
///
/// # Safety
/// Every element must have been written.
pub(crate) unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout-compatible element type, and (per the caller) every
    // element initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
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

/// A raw output pointer that rayon tasks may share; each task writes a disjoint set of elements
/// (documented at each use).
#[derive(Clone, Copy)]
pub(crate) struct SharedPtr(pub(crate) *mut f32);
// SAFETY: used only for writes to disjoint regions (each use says which), so no two threads
// touch the same element.
unsafe impl Send for SharedPtr {}
// SAFETY: as for Send: shared references only ever write disjoint elements.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Through a method, so closures capture the `Send` wrapper, not the raw field.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }

    /// Row `r` of a buffer of rows `width` wide.
    pub(crate) fn row(self, r: usize, width: usize) -> *mut f32 {
        self.0.wrapping_add(r * width)
    }
}
