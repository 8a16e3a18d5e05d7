//! Compute precision of the matmuls (mixed precision, as `torch.autocast` does it): weights,
//! optimizer state, norms, softmaxes and the loss stay f32; with `bf16` every matmul — the
//! projections, attention's two products, the experts and the output head — rounds its
//! operands to bf16 and returns its product as f32. The gradients flow back through the same
//! casts, so the weight gradients are bf16 products accumulated into f32 master weights.
//!
//! One setting per process (a training run is one process): `btx train` sets it from
//! `[train] precision` before the first step. btx's fused CPU kernels are f32 only; under bf16
//! the matmul-bearing ones step aside for burn's ops, which run bf16 on every backend (flex
//! converts through f32, slowly: bf16 on the CPU is for checking the numbers, the GPU is where
//! it pays).

use std::sync::atomic::{AtomicBool, Ordering};

use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

/// `[train] precision`: the matmuls' precision. Default f32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

static BF16: AtomicBool = AtomicBool::new(false);

/// Sets the process's matmul precision.
pub fn set(p: Precision) {
    BF16.store(p == Precision::Bf16, Ordering::Relaxed);
}

/// The process's matmul precision.
pub fn current() -> Precision {
    if BF16.load(Ordering::Relaxed) {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

/// Whether an f32-only fused matmul kernel may run (not under bf16).
pub fn fused_matmul_allowed() -> bool {
    current().is_f32()
}

/// `a · b` in the process's precision: as is in f32; in bf16 the operands are rounded to bf16
/// and the product comes back as f32.
pub fn matmul<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    match current() {
        Precision::F32 => a.matmul(b),
        Precision::Bf16 => a
            .cast(FloatDType::BF16)
            .matmul(b.cast(FloatDType::BF16))
            .cast(FloatDType::F32),
    }
}
