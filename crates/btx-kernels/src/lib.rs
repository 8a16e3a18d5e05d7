//! `btx-kernels`: the raw half of btx's CPU fast path. Plain `f32` slices and pointers only (no
//! burn types), so each kernel can be tested and benchmarked alone; every `unsafe fn` documents
//! its contract under `# Safety`.
//!
//! - [`simd`]: run-time choice of vector width (`simd_fn!`); [`vexp`] and [`reduce`]: the
//!   vectorised exp (softmax, SwiGLU) and row reductions.
//! - [`gemm`] and [`gemv`]: matrix products (the `gemm` crate's microkernels, and one pass over
//!   the weight for a few rows); [`tile_mm`]: the AVX-512 register-tiled product;
//!   [`attention`]: causal GQA attention forward and backward.
//! - [`fan_in`]: one input gradient summed inside the kernels of several consumers.
//! - [`awake`]: the pool's other workers kept polling through a train step.
//! - [`instrument`]: what `btx bench` reads (time inside products, the FMA peak).
//! - the output buffers below ([`zeroed`], [`uninit`]) and [`SharedPtr`].
//!
//! btx-model's `fused` wraps these in burn ops with handwritten backward passes, and its `ops`
//! alone decides when those run instead of the composite burn ops. Nothing here depends back
//! on btx-model, so the kernels build (and are tested) without burn.

pub mod attention;
pub mod awake;
pub mod fan_in;
pub mod gemm;
pub mod gemv;
pub mod instrument;
pub mod reduce;
pub mod simd;
pub mod tile_mm;
pub mod vexp;

/// A zero-filled buffer for a kernel's output, zeroed by all the pool's threads in the chunks
/// they will most likely fill (`vec![0; n]` zeroes on the calling thread alone, a serial pass
/// the other cores wait through).
pub fn zeroed(n: usize) -> Vec<f32> {
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
pub fn uninit(n: usize) -> Vec<std::mem::MaybeUninit<f32>> {
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
pub unsafe fn assume_init(v: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same allocation, layout-compatible element type, and (per the caller) every
    // element initialised.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
}

/// A raw output pointer that rayon tasks may share; each task writes a disjoint set of elements
/// (documented at each use).
#[derive(Clone, Copy)]
pub struct SharedPtr(pub *mut f32);
// SAFETY: used only for writes to disjoint regions (each use says which), so no two threads
// touch the same element.
unsafe impl Send for SharedPtr {}
// SAFETY: as for Send: shared references only ever write disjoint elements.
unsafe impl Sync for SharedPtr {}

impl SharedPtr {
    /// Through a method, so closures capture the `Send` wrapper, not the raw field.
    pub fn get(self) -> *mut f32 {
        self.0
    }

    /// Row `r` of a buffer of rows `width` wide.
    pub fn row(self, r: usize, width: usize) -> *mut f32 {
        self.0.wrapping_add(r * width)
    }
}
