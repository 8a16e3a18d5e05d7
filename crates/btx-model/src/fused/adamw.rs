//! AdamW in one pass over each tensor: reads parameter, gradient and both moments once and
//! writes the three results, instead of ten element-wise tensor ops. Same arithmetic, in the same
//! order and precision, as the composite update in btx-train.

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use rayon::prelude::*;

/// The scalars of one AdamW step (computed in f64, applied in f32 like tensor-scalar ops).
#[derive(Clone, Copy, Debug)]
pub struct AdamWScalars {
    /// `1 - lr * weight_decay`, or 1 without decay.
    pub decay: f32,
    pub one_minus_b1: f32,
    pub b2: f32,
    pub one_minus_b2: f32,
    /// `sqrt(1 - b2^t)`.
    pub bc2_sqrt: f32,
    pub eps: f32,
    /// `lr / (1 - b1^t)`.
    pub step: f32,
    /// Global-norm clipping coefficient applied to the gradient first (1 without clipping), as
    /// PyTorch's in-place `grad.mul_(coef)` would.
    pub grad_scale: f32,
}

const CHUNK: usize = 1 << 14;

fn flex(t: Tensor<2>) -> FlexTensor {
    let f = t.try_into_primitive::<Flex>().expect("flex tensor");
    if f.is_contiguous() {
        f
    } else {
        f.to_contiguous()
    }
}

/// Returns (p', m', v'), or `None` when the tensors are not plain flex tensors (use the
/// composite update).
pub fn adamw(
    p: Tensor<2>,
    g: Tensor<2>,
    m: Tensor<2>,
    v: Tensor<2>,
    s: AdamWScalars,
) -> Option<(Tensor<2>, Tensor<2>, Tensor<2>)> {
    if !super::on_flex(&p) || p.is_autodiff() || g.is_autodiff() {
        return None;
    }
    let shape = p.dims();
    let (p, g, m, v) = (flex(p), flex(g), flex(m), flex(v));
    let (ps, gs, ms, vs) = (
        p.as_slice::<f32>()?,
        g.as_slice::<f32>()?,
        m.as_slice::<f32>()?,
        v.as_slice::<f32>()?,
    );
    let n = ps.len();
    // Outputs are written exactly once, element by element, into uninitialised capacity: no
    // zeroing pass over three parameter-sized buffers.
    let (mut po, mut mo, mut vo) = (
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
    );
    po.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .zip(mo.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
        .zip(vo.spare_capacity_mut()[..n].par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((po, mo), vo))| {
            let o = c * CHUNK;
            for i in 0..po.len() {
                let (pi, mi, vi) = (ps[o + i], ms[o + i], vs[o + i]);
                // g * 1.0 == g exactly, so the unclipped case is unchanged.
                let gi = gs[o + i] * s.grad_scale;
                let p1 = pi * s.decay;
                let m1 = mi + (gi - mi) * s.one_minus_b1;
                let v1 = vi * s.b2 + gi * gi * s.one_minus_b2;
                let denom = v1.sqrt() / s.bc2_sqrt + s.eps;
                po[i].write(p1 - m1 / denom * s.step);
                mo[i].write(m1);
                vo[i].write(v1);
            }
        });
    // SAFETY: the chunks cover 0..n and the loop above wrote every element of each.
    unsafe {
        po.set_len(n);
        mo.set_len(n);
        vo.set_len(n);
    }
    let mk = |x: Vec<f32>| {
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(x, shape)))
    };
    Some((mk(po), mk(mo), mk(vo)))
}

/// Sum of squares of a gradient, for the global norm: f32 squares accumulated in f64 per chunk,
/// chunks combined in order (the same number for any thread count). `None` off flex.
pub fn sum_squares(g: &Tensor<2>) -> Option<f64> {
    if !super::on_flex(g) || g.is_autodiff() {
        return None;
    }
    let f = flex(g.clone());
    let x = f.as_slice::<f32>()?;
    let parts: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|c| {
            // Eight f32 lanes per block of 256 (vectorises), flushed to f64.
            let mut total = 0f64;
            for block in c.chunks(256) {
                let mut lanes = [0f32; 8];
                let mut it = block.chunks_exact(8);
                for w in &mut it {
                    for (l, v) in lanes.iter_mut().zip(w) {
                        *l += v * v;
                    }
                }
                total += lanes.iter().map(|&l| l as f64).sum::<f64>()
                    + it.remainder().iter().map(|&v| (v * v) as f64).sum::<f64>();
            }
            total
        })
        .collect();
    Some(parts.iter().sum())
}
