//! The output head and the mean next-token cross-entropy as one op: `loss = CE(H Wᵀ, targets)`
//! for `H: [N, d]`, `W: [V, d]`.
//!
//! Separately, the `[N, V]` logits and their gradient are whole tensors kept from the forward to
//! the backward: 32 MB each for preset S, 2 GB each for a 32k vocabulary at 16k tokens per
//! micro-batch. Here rows go through in blocks: a block's logits, their log-sum-exp and NLL, the
//! block's logit gradient `dZ = (softmax - onehot) / count` written over them, then `dH = dZ W`
//! for those rows and `dW += dZᵀ H` while the block is still cached; only one block of logits
//! exists at a time (at most about 16 MB). The gradients are formed in the forward because the loss ends the graph: backward
//! only scales them by the incoming scalar. Blocks run in order (each gemm uses all threads) and
//! per-row losses are summed serially, so results are bit-identical on any number of threads.

use super::{autodiff_flex, contiguous, f32_slice, plain_flex};
use btx_kernels::gemm::{spread_product, Dst};
use btx_kernels::simd::simd_fn;
use btx_kernels::vexp::exp_sub_sum;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use rayon::prelude::*;

/// Bytes of logits per block. Each block's products repack W (`V x d`) and its dW product
/// reads and writes all of dW, costs that only more rows per block amortise: for preset S
/// (V = 4096, 2048 rows) three blocks of 688 rows made the step 3-4% faster at 1 thread than
/// eight of 256 (two of 1024 were in between). A budget rather than a row count keeps the
/// block's memory bounded for large vocabularies (a 32k vocabulary gets 128 rows, 16 MB).
const BLOCK_BYTES: usize = 16 << 20;

/// Row stride of a block's logits. With a power-of-two stride (V = 4096) the dW product, which
/// reads the block column-wise, hits the same cache sets row after row: 16 floats of padding
/// made that product 12-15% faster on its own.
fn row_stride(v: usize) -> usize {
    if v.is_multiple_of(128) {
        v + 16
    } else {
        v
    }
}

/// Rows per block for `n` rows of logits with row stride `ld`: blocks of equal size (a multiple
/// of 8), each within about [`BLOCK_BYTES`] and at most 1024 rows, but never under 64 rows.
fn block_rows(n: usize, ld: usize) -> usize {
    let max = (BLOCK_BYTES / (4 * ld.max(1))).clamp(64, 1024);
    let blocks = n.div_ceil(max).max(1);
    n.div_ceil(blocks).next_multiple_of(8).max(1)
}

/// Shapes and inputs of one call.
struct Head<'a> {
    h: &'a [f32],
    w: &'a [f32],
    targets: &'a [i64],
    d: usize,
    v: usize,
    /// Row stride of the logits (`v` or a little more).
    ld: usize,
    /// Rows per block.
    block: usize,
    /// 1 / (rows with a target), the mean's weight.
    inv_count: f32,
}

simd_fn! {
/// [`Head::loss_row`] with the count's inverse passed in.
fn loss_row(row: &mut [f32], t: i64, grad: bool, inv_count: f32) -> f64 {
    if t < 0 {
        if grad {
            row.fill(0.0);
        }
        return 0.0;
    }
    let t = t as usize;
    let zt = row[t];
    let m = btx_kernels::reduce::max(row);
    let s = exp_sub_sum(row, m);
    if grad {
        let k = inv_count / s;
        for p in row.iter_mut() {
            *p *= k;
        }
        row[t] -= inv_count;
    }
    (m + s.ln() - zt) as f64
}
}

impl<'a> Head<'a> {
    fn new(h: &'a FlexTensor, w: &'a FlexTensor, targets: &'a [i64], d: usize, v: usize) -> Self {
        let count = targets.iter().filter(|t| **t >= 0).count();
        let ld = row_stride(v);
        Head {
            h: f32_slice(h),
            w: f32_slice(w),
            targets,
            d,
            v,
            ld,
            block: block_rows(targets.len(), ld),
            inv_count: 1.0 / count.max(1) as f32,
        }
    }

    /// A buffer for one block of logits (padding included; zeroed once, then only the logits
    /// are rewritten).
    fn block_buffer(&self) -> Vec<f32> {
        vec![0.0; self.block.min(self.targets.len()) * self.ld]
    }

    /// Logits of `rows` rows from `r0` into `z` (row stride `ld`), every logit written.
    fn logits<'z>(&self, r0: usize, rows: usize, z: &'z mut [f32]) -> &'z mut [f32] {
        let (d, v, ld) = (self.d, self.v, self.ld);
        let z = &mut z[..rows * ld];
        // SAFETY: `z` holds `rows` rows of stride `ld` >= `v`.
        unsafe {
            spread_product(
                z.as_mut_ptr(),
                ld,
                [rows, v, d],
                (&self.h[r0 * d..(r0 + rows) * d], d, 1),
                (self.w, 1, d),
                1.0,
                Dst::Write,
            );
        }
        z
    }

    /// NLL of one row of logits with target `t` (negative: none, NLL 0); with `grad`, the row
    /// is replaced by its share of the mean loss's gradient (zero without a target).
    fn loss_row(&self, row: &mut [f32], t: i64, grad: bool) -> f64 {
        loss_row(row, t, grad, self.inv_count)
    }

    /// Summed NLL over all rows, nothing else kept.
    fn loss_only(&self) -> f64 {
        let (v, ld) = (self.v, self.ld);
        let n = self.targets.len();
        let mut nll = vec![0f64; n];
        let mut z = self.block_buffer();
        for r0 in (0..n).step_by(self.block) {
            let rows = self.block.min(n - r0);
            self.logits(r0, rows, &mut z)
                .par_chunks_mut(ld)
                .zip(&mut nll[r0..r0 + rows])
                .zip(&self.targets[r0..r0 + rows])
                .for_each(|((row, l), &t)| *l = self.loss_row(&mut row[..v], t, false));
        }
        nll.iter().sum()
    }

    /// Summed NLL, `dH = dZ W: [N, d]` and (with `want_dw`) `dW = dZᵀ H: [V, d]`.
    fn loss_and_grads(&self, want_dw: bool) -> (f64, Vec<f32>, Option<Vec<f32>>) {
        let (d, v, ld) = (self.d, self.v, self.ld);
        let n = self.targets.len();
        let mut dh: Vec<f32> = Vec::with_capacity(n * d);
        let mut dw: Option<Vec<f32>> = want_dw.then(|| Vec::with_capacity(v * d));
        let mut nll = vec![0f64; n];
        let mut z = self.block_buffer();
        for r0 in (0..n).step_by(self.block) {
            let rows = self.block.min(n - r0);
            let z = self.logits(r0, rows, &mut z);
            z.par_chunks_mut(ld)
                .zip(&mut nll[r0..r0 + rows])
                .zip(&self.targets[r0..r0 + rows])
                .for_each(|((row, l), &t)| *l = self.loss_row(&mut row[..v], t, true));
            let hb = &self.h[r0 * d..(r0 + rows) * d];
            // SAFETY: `dh` has capacity for all `n * d` elements; this block's `rows * d` are
            // written here, and the blocks cover all rows before `set_len`. `dw` is written
            // whole by the first block and accumulated into by the others.
            unsafe {
                spread_product(
                    dh.as_mut_ptr().add(r0 * d),
                    d,
                    [rows, d, v],
                    (z, ld, 1),
                    (self.w, d, 1),
                    1.0,
                    Dst::Write,
                );
                if let Some(dw) = dw.as_mut() {
                    let mode = if r0 == 0 { Dst::Write } else { Dst::Accumulate };
                    spread_product(
                        dw.as_mut_ptr(),
                        d,
                        [v, d, rows],
                        (z, 1, ld),
                        (hb, d, 1),
                        1.0,
                        mode,
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
/// against `targets` (one per row; negative = ignored).
pub fn head_cross_entropy(h: Tensor<2>, w: Tensor<2>, targets: &[i64]) -> Tensor<1> {
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
        Tensor::from_primitive::<Autodiff<Flex>>(t)
    } else {
        let (h, w) = (plain_flex(h), plain_flex(w));
        let nll = Head::new(&h, &w, targets, d, v).loss_only();
        Tensor::from_primitive::<Flex>(scalar(nll))
    }
}
