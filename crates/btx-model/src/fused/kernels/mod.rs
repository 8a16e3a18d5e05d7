//! Raw kernels: SIMD dispatch, vectorised exp and reductions, gemm products and the AVX-512
//! tile product, the pool's keep-awake loop, and the buffers they write. Plain `f32` slices and
//! pointers only (no burn types), so each can be tested and benchmarked alone.

pub mod attention;
pub mod awake;
pub mod gemm;
pub mod gemv;
pub mod reduce;
pub mod simd;
pub mod tile_mm;
pub mod vexp;

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
