//! Mean next-token cross-entropy over `[M, V]` logits in one pass per row (max, vectorised exp
//! and sum, log-sum-exp), with a backward that writes `(softmax - onehot) * g / count` directly —
//! no `[M, V]` log-softmax, gather or one-hot tensors in between.

use super::contiguous;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;

use btx_kernels::vexp::exp_sub_sum;

/// Rows per rayon task (a row is a whole vocabulary, so few are enough).
const ROWS_PER_TASK: usize = 8;

/// Per-row log-sum-exp, and the summed NLL over rows with a target (`target < 0` = ignored).
fn forward(logits: &[f32], v: usize, targets: &[i64]) -> (Vec<f32>, f64) {
    let mut lse = vec![0f32; targets.len()];
    let nll: f64 = lse
        .par_chunks_mut(ROWS_PER_TASK)
        .enumerate()
        .map(|(c, out)| {
            let mut buf = vec![0f32; v];
            let mut s = 0f64;
            for (j, o) in out.iter_mut().enumerate() {
                let r = c * ROWS_PER_TASK + j;
                let row = &logits[r * v..(r + 1) * v];
                let m = btx_kernels::reduce::max(row);
                buf.copy_from_slice(row);
                let z = exp_sub_sum(&mut buf, m);
                *o = m + z.ln();
                let t = targets[r];
                if t >= 0 {
                    s += (*o - row[t as usize]) as f64;
                }
            }
            s
        })
        .sum();
    (lse, nll)
}

#[derive(Debug)]
struct CeBackward;

impl Backward<Flex, 1> for CeBackward {
    /// (logits, per-row lse, targets, number of counted rows)
    type State = (FlexTensor, Vec<f32>, Vec<i64>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (logits, lse, targets, count) = ops.state;
        let g = grads.consume::<Flex>(&ops.node);
        let g = g.to_contiguous().as_slice::<f32>().expect("f32 loss grad")[0];
        let [parent] = ops.parents;
        let Some(node) = parent else {
            return;
        };
        let shape = logits.layout().shape().clone();
        let v = shape[shape.num_dims() - 1];
        let x = logits.as_slice::<f32>().expect("contiguous f32 logits");
        let scale = g / count.max(1) as f32;
        let mut out = super::zeroed(x.len());
        out.par_chunks_mut(v * ROWS_PER_TASK)
            .enumerate()
            .for_each(|(c, block)| {
                for (j, row) in block.chunks_mut(v).enumerate() {
                    let r = c * ROWS_PER_TASK + j;
                    let t = targets[r];
                    if t < 0 {
                        continue;
                    }
                    row.copy_from_slice(&x[r * v..(r + 1) * v]);
                    exp_sub_sum(row, lse[r]);
                    for p in row.iter_mut() {
                        *p *= scale;
                    }
                    row[t as usize] -= scale;
                }
            });
        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(out, shape)));
    }
}

/// Mean cross-entropy of `logits: [M, V]` against `targets` (one per row; negative = ignore).
pub fn mean_cross_entropy(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let [m, v] = logits.dims();
    assert_eq!(m, targets.len(), "one target per row");
    let count = targets.iter().filter(|t| **t >= 0).count();
    if logits.is_autodiff() {
        let p = logits
            .try_into_primitive::<Autodiff<Flex>>()
            .expect("flex autodiff tensor");
        let x = contiguous(p.primitive());
        let (lse, nll) = forward(x.as_slice::<f32>().expect("f32 logits"), v, targets);
        let out = FlexTensor::from_data(TensorData::new(
            vec![(nll / count.max(1) as f64) as f32],
            [1],
        ));
        let t = match CeBackward
            .prepare::<NoCheckpointing>([p.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, lse, targets.to_vec(), count), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let p = logits.try_into_primitive::<Flex>().expect("flex tensor");
        let x = contiguous(&p);
        let (_, nll) = forward(x.as_slice::<f32>().expect("f32 logits"), v, targets);
        let out = FlexTensor::from_data(TensorData::new(
            vec![(nll / count.max(1) as f64) as f32],
            [1],
        ));
        Tensor::from_primitive::<Flex>(out)
    }
}
