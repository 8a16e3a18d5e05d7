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
    let mut po = vec![0f32; n];
    let mut mo = vec![0f32; n];
    let mut vo = vec![0f32; n];
    po.par_chunks_mut(CHUNK)
        .zip(mo.par_chunks_mut(CHUNK))
        .zip(vo.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, ((po, mo), vo))| {
            let o = c * CHUNK;
            for i in 0..po.len() {
                let (pi, gi, mi, vi) = (ps[o + i], gs[o + i], ms[o + i], vs[o + i]);
                let p1 = pi * s.decay;
                let m1 = mi + (gi - mi) * s.one_minus_b1;
                let v1 = vi * s.b2 + gi * gi * s.one_minus_b2;
                let denom = v1.sqrt() / s.bc2_sqrt + s.eps;
                po[i] = p1 - m1 / denom * s.step;
                mo[i] = m1;
                vo[i] = v1;
            }
        });
    let mk = |x: Vec<f32>| {
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(x, shape)))
    };
    Some((mk(po), mk(mo), mk(vo)))
}
