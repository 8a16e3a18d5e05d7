//! Perplexity of a text file as llama.cpp's `llama-perplexity` computes it, so that the two
//! runtimes can be compared on the same model and text: the text tokenised as a whole, cut into
//! `ctx`-token chunks (the remainder dropped), the first token of each chunk replaced by BOS when
//! the tokenizer adds one, and only the second half of each chunk scored (every scored token
//! then has at least `ctx / 2` tokens of context).

use serde::Serialize;

use crate::lm::Lm;

#[derive(Clone, Debug, Serialize)]
pub struct TextPerplexity {
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens whose next-token loss is averaged.
    pub scored: usize,
    /// Mean next-token loss (nats).
    pub loss: f64,
    pub perplexity: f64,
}

/// `ids` scored in chunks of `ctx` (at most `max_chunks`, `batch` chunks per forward pass).
/// Errors as llama-perplexity refuses: a text shorter than two chunks.
pub fn text_perplexity(
    lm: &dyn Lm,
    ids: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    batch: usize,
) -> Result<TextPerplexity, String> {
    if ctx < 4 || ids.len() < 2 * ctx {
        return Err(format!(
            "the text has {} tokens; a context of {ctx} needs at least {} (and a context of at least 4)",
            ids.len(),
            2 * ctx.max(4)
        ));
    }
    let mut chunks = ids.len() / ctx;
    if let Some(m) = max_chunks {
        chunks = chunks.min(m.max(1));
    }
    let windows: Vec<Vec<i64>> = (0..chunks)
        .map(|c| {
            let mut w: Vec<i64> = ids[c * ctx..(c + 1) * ctx]
                .iter()
                .map(|&x| x as i64)
                .collect();
            if let Some(b) = bos {
                w[0] = b as i64;
            }
            w
        })
        .collect();
    // llama.cpp scores the logits of positions ctx/2 .. ctx-2, each predicting the next token:
    // target log-probabilities ctx/2 .. ctx-2 of each window (entry j predicts token j + 1).
    let first = ctx / 2;
    let (mut nll, mut scored) = (0f64, 0usize);
    for group in windows.chunks(batch.max(1)) {
        for lp in lm.target_logprobs(group) {
            nll -= lp[first..].iter().map(|&x| x as f64).sum::<f64>();
            scored += lp.len() - first;
        }
    }
    let loss = nll / scored as f64;
    Ok(TextPerplexity {
        ctx,
        chunks,
        scored,
        loss,
        perplexity: loss.exp(),
    })
}
