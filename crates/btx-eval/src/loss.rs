//! Held-out next-token loss of a model on a domain's validation windows.

use btx_data::mixture::eval_windows;
use btx_data::shard::Shard;
use btx_model::loss::lm_loss;
use btx_model::{to_vec, ForwardOpts, Model};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossResult {
    /// Mean cross-entropy per predicted token (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Predicted tokens the mean is over.
    pub tokens: usize,
}

/// Mean loss over up to `max_windows` windows of `seq` tokens spread over `shard`, evaluated
/// `batch` windows at a time (no gradients).
pub fn domain_loss(
    model: &Model,
    shard: &Shard,
    seq: usize,
    max_windows: usize,
    batch: usize,
) -> LossResult {
    let windows = eval_windows(shard, seq, max_windows);
    let mut total = 0f64;
    let mut n = 0usize;
    for chunk in windows.chunks(batch.max(1)) {
        let b = chunk.len();
        let ids: Vec<i64> = chunk.iter().flatten().copied().collect();
        let out = model.forward(&ids, b, seq, &ForwardOpts::default(), None);
        let l = to_vec(lm_loss(out.logits, &ids))[0] as f64;
        let toks = b * (seq - 1);
        total += l * toks as f64;
        n += toks;
    }
    let loss = if n > 0 { total / n as f64 } else { f64::NAN };
    LossResult {
        loss,
        perplexity: loss.exp(),
        tokens: n,
    }
}
