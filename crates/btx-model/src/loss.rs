//! Losses: next-token cross-entropy, the BTX paper's load balancing, Hugging Face's Mixtral
//! auxiliary loss (hard counts) and the router z-loss.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::moe::RouterAux;

/// Per-token negative log-likelihood of `targets` under `logits: [N, V]`, shape `[N]`.
pub fn token_nll(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let dev = logits.device();
    let n = targets.len();
    let t = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &dev);
    log_softmax(logits, 1).gather(1, t).reshape([n]).neg()
}

/// Mean cross-entropy of `logits[:, :-1]` against `ids[:, 1:]` — transformers' `loss`.
/// On the flex backend a fused kernel does it in one pass; elsewhere (and with
/// `BTX_COMPOSITE=1`) the composite ops ([`crate::ops::cross_entropy`]).
pub fn lm_loss(logits: Tensor<3>, ids: &[i64]) -> Tensor<1> {
    let [b, t, v] = logits.dims();
    assert!(
        t >= 2,
        "a sequence needs at least 2 tokens for a next-token loss"
    );
    crate::ops::cross_entropy(logits.reshape([b * t, v]), &row_targets(ids, b, t))
}

/// [`lm_loss`] of the output head applied to `hidden: [B*T, d]` (the final norm's output),
/// `head: [V, d]`. On flex one fused kernel computes head, loss and their gradients block by
/// block, so training never holds the `[B*T, V]` logits; elsewhere `lm_loss(linear(..))`
/// ([`crate::ops::head_cross_entropy`]).
pub fn lm_head_loss(
    hidden: Tensor<2>,
    head: &Tensor<2>,
    ids: &[i64],
    b: usize,
    t: usize,
) -> Tensor<1> {
    assert!(
        t >= 2,
        "a sequence needs at least 2 tokens for a next-token loss"
    );
    crate::ops::head_cross_entropy(hidden, head, &row_targets(ids, b, t))
}

/// One target per row of a `[B*T, ..]` flattening: the next id, or -1 (ignored) for the last
/// position of each sequence.
fn row_targets(ids: &[i64], b: usize, t: usize) -> Vec<i64> {
    (0..b * t)
        .map(|i| if i % t == t - 1 { -1 } else { ids[i + 1] })
        .collect()
}

/// The composite reference of [`lm_loss`] over `[B*T, V]` logits (what runs off flex).
pub fn lm_loss_composite(flat: Tensor<2>, ids: &[i64], b: usize, t: usize) -> Tensor<1> {
    crate::ops::cross_entropy_composite(flat, &row_targets(ids, b, t))
}

/// The paper's load balancing for one layer, without alpha: `E * sum_i u_i p_i`, with `u_i` the
/// token-mean of the sparse gate values and `p_i` the token-mean of the full softmax.
pub fn lb_paper(aux: &RouterAux) -> Tensor<1> {
    let e = aux.num_experts() as f64;
    let u = aux.sparse_gates.clone().mean_dim(0);
    let p = aux.probs.clone().mean_dim(0);
    (u * p).sum() * e
}

/// Hugging Face's `load_balancing_loss_func` over all layers at once (their router logits are
/// concatenated): `E * sum_i f_i P_i`, where `f_i` = (times expert i is in a token's top-k) /
/// (tokens x layers) and `P_i` = mean full softmax over tokens x layers. Unscaled.
pub fn hf_aux_loss(auxes: &[RouterAux]) -> Option<Tensor<1>> {
    let first = auxes.first()?;
    let e = first.num_experts();
    let dev = first.logits.device();
    let mut counts = vec![0f32; e];
    let mut rows = 0usize;
    let mut psum: Option<Tensor<2>> = None;
    for a in auxes {
        rows += a.topk_ids.len();
        for r in &a.topk_ids {
            for &x in r {
                counts[x as usize] += 1.0;
            }
        }
        let s = a.probs.clone().sum_dim(0);
        psum = Some(match psum {
            None => s,
            Some(p) => p + s,
        });
    }
    let f: Vec<f32> = counts.iter().map(|c| c / rows as f32).collect();
    let f = Tensor::<2>::from_data(TensorData::new(f, [1, e]), &dev);
    let p = psum.expect("at least one layer") / rows as f64;
    Some((f * p).sum() * e as f64)
}

/// Router z-loss (ST-MoE): mean over tokens of `logsumexp(logits)^2`.
pub fn z_loss(aux: &RouterAux) -> Tensor<1> {
    let l = aux.logits.clone();
    let m = l.clone().detach().max_dim(1);
    let lse = (l - m.clone()).exp().sum_dim(1).log() + m;
    lse.square().mean()
}
