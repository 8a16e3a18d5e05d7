//! AdamW in one pass over each tensor: reads parameter, gradient and both moments once and
//! writes the three results, instead of ten element-wise tensor ops. Same arithmetic, in the same
//! order and precision, as the composite update in [`crate::optim`]. The optimizer lives with
//! the trainer; the SIMD dispatch (`simd_fn!`) is btx-kernels', the flex buffers btx-model's
//! `fused`.

use btx_model::burn::backend::flex::FlexTensor;
use btx_model::burn::backend::Flex;
use btx_model::burn::prelude::*;
use btx_model::fused::{contiguous, f32_slice};
use btx_model::ops::fused_available;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use btx_kernels::simd_fn;

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
    contiguous(&t.try_into_primitive::<Flex>().expect("flex tensor"))
}

impl AdamWScalars {
    /// One element: (p, g, m, v) -> (p', m', v').
    #[inline(always)]
    fn step(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        // g * 1.0 == g exactly, so the unclipped case is unchanged.
        let g = g * self.grad_scale;
        let p1 = p * self.decay;
        let m1 = m + (g - m) * self.one_minus_b1;
        let v1 = v * self.b2 + g * g * self.one_minus_b2;
        let denom = v1.sqrt() / self.bc2_sqrt + self.eps;
        (p1 - m1 / denom * self.step, m1, v1)
    }
}

/// A flex tensor whose buffer can be updated in place: only owner, contiguous, exactly its size.
fn exclusive(t: FlexTensor) -> Result<FlexTensor, FlexTensor> {
    let n = t.layout().num_elements();
    let ok = t.is_unique()
        && t.is_contiguous()
        && t.layout().start_offset() == 0
        && t.as_slice::<f32>().is_some_and(|s| s.len() == n);
    if ok {
        Ok(t)
    } else {
        Err(t)
    }
}

/// The inputs (p, g, m, v), handed back when the fused update does not apply.
pub type AdamWInputs = (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>);

/// Returns (p', m', v'), or the inputs back when they are not plain flex tensors (use the
/// composite update). When the caller hands over the only reference to p, m and v (the trainer
/// does), they are updated in place: no new buffers, 30% less memory traffic.
pub fn adamw(
    p: Tensor<2>,
    g: Tensor<2>,
    m: Tensor<2>,
    v: Tensor<2>,
    s: AdamWScalars,
) -> Result<(Tensor<2>, Tensor<2>, Tensor<2>), Box<AdamWInputs>> {
    if !fused_available(&p) || p.is_autodiff() || g.is_autodiff() || m.is_autodiff() {
        return Err(Box::new((p, g, m, v)));
    }
    let shape = p.dims();
    let prim = |t: Tensor<2>| t.try_into_primitive::<Flex>().expect("flex tensor");
    let g = flex(g);
    let gs = g.as_slice::<f32>().expect("contiguous f32 gradient");
    let mk = |t: FlexTensor| Tensor::from_primitive::<Flex>(t);
    match (exclusive(prim(p)), exclusive(prim(m)), exclusive(prim(v))) {
        (Ok(mut p), Ok(mut m), Ok(mut v)) => {
            let (ps, ms, vs) = (
                p.try_storage_mut::<f32>().expect("checked exclusive"),
                m.try_storage_mut::<f32>().expect("checked exclusive"),
                v.try_storage_mut::<f32>().expect("checked exclusive"),
            );
            assert!(ps.len() == gs.len() && ms.len() == gs.len() && vs.len() == gs.len());
            ps.par_chunks_mut(CHUNK)
                .zip(ms.par_chunks_mut(CHUNK))
                .zip(vs.par_chunks_mut(CHUNK))
                .zip(gs.par_chunks(CHUNK))
                .for_each(|(((ps, ms), vs), gs)| update_in_place(s, ps, ms, vs, gs));
            Ok((mk(p), mk(m), mk(v)))
        }
        (p, m, v) => {
            let unwrap = |r: Result<FlexTensor, FlexTensor>| contiguous(&r.unwrap_or_else(|t| t));
            let (p, m, v) = (unwrap(p), unwrap(m), unwrap(v));
            let (ps, ms, vs) = (f32_slice(&p), f32_slice(&m), f32_slice(&v));
            let n = ps.len();
            assert!(gs.len() == n && ms.len() == n && vs.len() == n);
            // Outputs are written exactly once, element by element, into uninitialised
            // capacity: no zeroing pass over three parameter-sized buffers.
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
                    let e = c * CHUNK..c * CHUNK + po.len();
                    let inputs = (&ps[e.clone()], &gs[e.clone()], &ms[e.clone()], &vs[e]);
                    update_into(s, inputs, po, mo, vo);
                });
            // SAFETY: the chunks cover 0..n and the loop above wrote every element of each.
            unsafe {
                po.set_len(n);
                mo.set_len(n);
                vo.set_len(n);
            }
            let fresh = |x: Vec<f32>| mk(FlexTensor::from_data(TensorData::new(x, shape)));
            Ok((fresh(po), fresh(mo), fresh(vo)))
        }
    }
}

simd_fn! {
fn update_in_place(s: AdamWScalars, ps: &mut [f32], ms: &mut [f32], vs: &mut [f32], gs: &[f32]) {
    for i in 0..ps.len() {
        (ps[i], ms[i], vs[i]) = s.step(ps[i], gs[i], ms[i], vs[i]);
    }
}
}

simd_fn! {
/// The update of `(p, g, m, v)` written into fresh buffers.
fn update_into(
    s: AdamWScalars,
    inputs: (&[f32], &[f32], &[f32], &[f32]),
    po: &mut [MaybeUninit<f32>],
    mo: &mut [MaybeUninit<f32>],
    vo: &mut [MaybeUninit<f32>],
) {
    let (ps, gs, ms, vs) = inputs;
    for i in 0..po.len() {
        let (a, b, c) = s.step(ps[i], gs[i], ms[i], vs[i]);
        po[i].write(a);
        mo[i].write(b);
        vo[i].write(c);
    }
}
}

simd_fn! {
/// Eight f32 lanes per block of 256 (vectorises), flushed to f64.
fn sum_squares_chunk(c: &[f32]) -> f64 {
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
}
}

/// Sum of squares of a gradient, for the global norm: f32 squares accumulated in f64 per chunk,
/// chunks combined in order (the same number for any thread count). `None` off flex.
pub fn sum_squares(g: &Tensor<2>) -> Option<f64> {
    if !fused_available(g) || g.is_autodiff() {
        return None;
    }
    let f = flex(g.clone());
    let x = f.as_slice::<f32>()?;
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(sum_squares_chunk).collect();
    Some(parts.iter().sum())
}
