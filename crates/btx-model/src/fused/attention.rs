//! Fused causal self-attention as a burn op: the forward and backward kernels
//! ([`btx_kernels::attention`]) wrapped with autodiff, the probabilities kept for the
//! backward.

use super::{autodiff_flex, contiguous, f32_slice};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

use btx_kernels::attention::{backward, forward};
pub use btx_kernels::attention::{Dims, Rope};

#[derive(Debug)]
struct AttnBackward;

impl Backward<Flex, 3> for AttnBackward {
    /// (rotated q, rotated k, v, p, dims, RoPE)
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        [usize; 5],
        Option<std::sync::Arc<Rope>>,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, p, [b, t, h, kvh, hd], rope) = ops.state;
        let d = Dims { b, t, h, kvh, hd };
        let g = contiguous(&grads.consume::<Flex>(&ops.node));
        let (mut dq, mut dk, dv) = backward(
            f32_slice(&q),
            f32_slice(&k),
            f32_slice(&v),
            f32_slice(&p),
            f32_slice(&g),
            d,
        );
        if let Some(r) = &rope {
            r.rotate(&mut dq, d.qd(), d, true);
            r.rotate(&mut dk, d.kd(), d, true);
        }
        let [pq, pk, pv] = ops.parents;
        let mk =
            |x: Vec<f32>, cols: usize| FlexTensor::from_data(TensorData::new(x, [b * t, cols]));
        if let Some(n) = pq {
            grads.register::<Flex>(n.id, mk(dq, d.qd()));
        }
        if let Some(n) = pk {
            grads.register::<Flex>(n.id, mk(dk, d.kd()));
        }
        if let Some(n) = pv {
            grads.register::<Flex>(n.id, mk(dv, d.kd()));
        }
    }
}

/// Causal GQA attention of `q: [B*T, H*hd]`, `k, v: [B*T, KV*hd]`, returning `[B*T, H*hd]`;
/// with `rope`, q and k are rotated first (and the rotation's gradient folded into the
/// backward), else they must arrive rotated.
pub fn causal_attention(
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    d: Dims,
    rope: Option<std::sync::Arc<Rope>>,
) -> Tensor<2> {
    let shape = [d.b * d.t, d.qd()];
    // Rotated copies (fresh buffers: the inputs may be shared).
    let rotated = |x: &FlexTensor, cols: usize| -> FlexTensor {
        match &rope {
            None => contiguous(x),
            Some(r) => {
                let v = r.rotated(f32_slice(&contiguous(x)), cols, d);
                FlexTensor::from_data(TensorData::new(v, [d.b * d.t, cols]))
            }
        }
    };
    if q.is_autodiff() {
        let (q, k, v) = (autodiff_flex(q), autodiff_flex(k), autodiff_flex(v));
        let (qc, kc, vc) = (
            rotated(q.primitive(), d.qd()),
            rotated(k.primitive(), d.kd()),
            contiguous(v.primitive()),
        );
        let (o, p) = forward(f32_slice(&qc), f32_slice(&kc), f32_slice(&vc), d);
        let o = FlexTensor::from_data(TensorData::new(o, shape));
        let out = match AttnBackward
            .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = FlexTensor::from_data(TensorData::new(p, [d.b * d.h, d.t, d.t]));
                let dims = [d.b, d.t, d.h, d.kvh, d.hd];
                prep.finish((qc, kc, vc, p, dims, rope), o)
            }
            OpsKind::UnTracked(prep) => prep.finish(o),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(out)
    } else {
        let fl = |t: Tensor<2>| t.try_into_primitive::<Flex>().expect("flex tensor");
        let (q, k, v) = (fl(q), fl(k), fl(v));
        let (q, k, v) = (rotated(&q, d.qd()), rotated(&k, d.kd()), contiguous(&v));
        let (o, _) = forward(f32_slice(&q), f32_slice(&k), f32_slice(&v), d);
        Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(o, shape)))
    }
}
