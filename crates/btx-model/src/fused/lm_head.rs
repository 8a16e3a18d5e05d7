//! The output head and the mean next-token cross-entropy as one op: `loss = CE(H Wᵀ, targets)`
//! for `H: [N, d]`, `W: [V, d]`.
//!
//! Separately, the `[N, V]` logits and their gradient are whole tensors kept from the forward to
//! the backward: 32 MB each for preset S, 2 GB each for a 32k vocabulary at 16k tokens per
//! micro-batch. Here rows go through in blocks: a block's logits, their log-sum-exp and NLL, the
//! block's logit gradient `dZ = (softmax - onehot) / count` written over them, then `dH = dZ W`
//! for those rows and `dW += dZᵀ H` while the block is still cached; only one block of logits
//! exists at a time. (For preset S the step time is the same as the separate ops'; the gain is
//! memory.) The gradients are formed in the forward because the loss ends the graph: backward
//! only scales them by the incoming scalar. Blocks run in order (each gemm uses all threads) and
//! per-row losses are summed serially, so results are bit-identical on any number of threads.

use super::linear::{write_product, Dst};
use super::vexp::exp_sub_sum;
use super::{autodiff_flex, contiguous, f32_slice, plain_flex};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;

/// Rows per block. Each block's gemms repack W (`V x d`), a cost that only more rows per block
/// amortise, whatever V is: 128 rows made the head 8% slower than 256 for preset S, 512 no
/// faster. 256 rows of a 4096-word vocabulary (4 MB) stay in L3.
const BLOCK_ROWS: usize = 256;

/// Shapes and inputs of one call.
struct Head<'a> {
    h: &'a [f32],
    w: &'a [f32],
    targets: &'a [i64],
    d: usize,
    v: usize,
    /// 1 / (rows with a target), the mean's weight.
    inv_count: f32,
}

impl<'a> Head<'a> {
    fn new(h: &'a FlexTensor, w: &'a FlexTensor, targets: &'a [i64], d: usize, v: usize) -> Self {
        let count = targets.iter().filter(|t| **t >= 0).count();
        Head {
            h: f32_slice(h),
            w: f32_slice(w),
            targets,
            d,
            v,
            inv_count: 1.0 / count.max(1) as f32,
        }
    }

    /// Logits of `rows` rows from `r0` into `z` (reused across blocks), every element written.
    fn logits<'z>(
        &self,
        r0: usize,
        rows: usize,
        z: &'z mut Vec<f32>,
        parallel: bool,
    ) -> &'z mut [f32] {
        let (d, v) = (self.d, self.v);
        z.clear();
        z.reserve(rows * v);
        // SAFETY: the capacity holds `rows * v` elements and `write_product` initialises all.
        unsafe {
            write_product(
                z.as_mut_ptr(),
                [rows, v, d],
                (&self.h[r0 * d..(r0 + rows) * d], d, 1),
                (self.w, 1, d),
                1.0,
                Dst::Write,
                parallel,
            );
            z.set_len(rows * v);
        }
        z
    }

    /// NLL of one row of logits with target `t` (negative: none, NLL 0); with `grad`, the row
    /// is replaced by its share of the mean loss's gradient (zero without a target).
    fn loss_row(&self, row: &mut [f32], t: i64, grad: bool) -> f64 {
        if t < 0 {
            if grad {
                row.fill(0.0);
            }
            return 0.0;
        }
        let t = t as usize;
        let zt = row[t];
        let m = super::reduce::max(row);
        let s = exp_sub_sum(row, m);
        if grad {
            let k = self.inv_count / s;
            for p in row.iter_mut() {
                *p *= k;
            }
            row[t] -= self.inv_count;
        }
        (m + s.ln() - zt) as f64
    }

    /// Summed NLL over all rows, nothing else kept.
    fn loss_only(&self) -> f64 {
        let n = self.targets.len();
        let nll: Vec<f64> = (0..n.div_ceil(BLOCK_ROWS))
            .into_par_iter()
            .map_init(Vec::new, |z: &mut Vec<f32>, blk| {
                let r0 = blk * BLOCK_ROWS;
                let rows = BLOCK_ROWS.min(n - r0);
                let z = self.logits(r0, rows, z, false);
                z.chunks_mut(self.v)
                    .zip(&self.targets[r0..r0 + rows])
                    .map(|(row, &t)| self.loss_row(row, t, false))
                    .sum()
            })
            .collect();
        nll.iter().sum()
    }

    /// Summed NLL, `dH = dZ W: [N, d]` and (with `want_dw`) `dW = dZᵀ H: [V, d]`.
    fn loss_and_grads(&self, want_dw: bool) -> (f64, Vec<f32>, Option<Vec<f32>>) {
        let (d, v) = (self.d, self.v);
        let n = self.targets.len();
        let mut dh: Vec<f32> = Vec::with_capacity(n * d);
        let mut dw: Option<Vec<f32>> = want_dw.then(|| Vec::with_capacity(v * d));
        let mut nll = vec![0f64; n];
        let mut z = Vec::new();
        for r0 in (0..n).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(n - r0);
            let z = self.logits(r0, rows, &mut z, true);
            z.par_chunks_mut(v)
                .zip(&mut nll[r0..r0 + rows])
                .zip(&self.targets[r0..r0 + rows])
                .for_each(|((row, l), &t)| *l = self.loss_row(row, t, true));
            let hb = &self.h[r0 * d..(r0 + rows) * d];
            // SAFETY: `dh` has capacity for all `n * d` elements; this block's `rows * d` are
            // written here, and the blocks cover all rows before `set_len`. `dw` is written
            // whole by the first block and accumulated into by the others.
            unsafe {
                write_product(
                    dh.as_mut_ptr().add(r0 * d),
                    [rows, d, v],
                    (z, v, 1),
                    (self.w, d, 1),
                    1.0,
                    Dst::Write,
                    true,
                );
                if let Some(dw) = dw.as_mut() {
                    let mode = if r0 == 0 { Dst::Write } else { Dst::Accumulate };
                    write_product(
                        dw.as_mut_ptr(),
                        [v, d, rows],
                        (z, 1, v),
                        (hb, d, 1),
                        1.0,
                        mode,
                        true,
                    );
                }
            }
        }
        // SAFETY: see above; with no rows at all nothing was written and nothing is claimed
        // except for dW, which is then zero-filled.
        unsafe {
            dh.set_len(n * d);
            if let Some(dw) = dw.as_mut() {
                if n == 0 {
                    dw.resize(v * d, 0.0);
                } else {
                    dw.set_len(v * d);
                }
            }
        }
        (nll.iter().sum(), dh, dw)
    }
}

#[derive(Debug)]
struct HeadLossBackward;

impl Backward<Flex, 2> for HeadLossBackward {
    /// (dH `[N, d]`, dW `[V, d]` when W is tracked), both of the mean loss.
    type State = ((Vec<f32>, [usize; 2]), Option<(Vec<f32>, [usize; 2])>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (dh, dw) = ops.state;
        let g = grads.consume::<Flex>(&ops.node);
        let g = g.to_contiguous().as_slice::<f32>().expect("f32 loss grad")[0];
        let scaled = |(mut x, shape): (Vec<f32>, [usize; 2])| {
            if g != 1.0 {
                x.par_iter_mut().for_each(|e| *e *= g);
            }
            FlexTensor::from_data(TensorData::new(x, shape))
        };
        let [ph, pw] = ops.parents;
        if let Some(node) = ph {
            grads.register::<Flex>(node.id, scaled(dh));
        }
        if let (Some(node), Some(dw)) = (pw, dw) {
            grads.register::<Flex>(node.id, scaled(dw));
        }
    }
}

/// Mean cross-entropy of `h [N, d] · wᵀ` (`w: [V, d]`, the head in Hugging Face's layout)
/// against `targets` (one per row; negative = ignored). `None` off the flex device.
pub fn head_cross_entropy(h: Tensor<2>, w: Tensor<2>, targets: &[i64]) -> Option<Tensor<1>> {
    if !super::on_flex(&h) {
        return None;
    }
    let ([n, d], [v, dw]) = (h.dims(), w.dims());
    assert_eq!(
        d, dw,
        "head: hidden is [{n}, {d}] but the weight is [{v}, {dw}]"
    );
    assert_eq!(n, targets.len(), "one target per row");
    let count = targets.iter().filter(|t| **t >= 0).count();
    let scalar = |nll: f64| {
        FlexTensor::from_data(TensorData::new(
            vec![(nll / count.max(1) as f64) as f32],
            [1],
        ))
    };
    if h.is_autodiff() || w.is_autodiff() {
        let (h, w) = (autodiff_flex(h), autodiff_flex(w));
        let (hc, wc) = (contiguous(h.primitive()), contiguous(w.primitive()));
        let t = match HeadLossBackward
            .prepare::<NoCheckpointing>([h.node(), w.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let head = Head::new(&hc, &wc, targets, d, v);
                let (nll, dh, dw) = head.loss_and_grads(w.is_tracked());
                prep.finish(((dh, [n, d]), dw.map(|g| (g, [v, d]))), scalar(nll))
            }
            OpsKind::UnTracked(prep) => {
                let nll = Head::new(&hc, &wc, targets, d, v).loss_only();
                prep.finish(scalar(nll))
            }
        };
        Some(Tensor::from_primitive::<Autodiff<Flex>>(t))
    } else {
        let (h, w) = (plain_flex(h), plain_flex(w));
        let nll = Head::new(&h, &w, targets, d, v).loss_only();
        Some(Tensor::from_primitive::<Flex>(scalar(nll)))
    }
}
