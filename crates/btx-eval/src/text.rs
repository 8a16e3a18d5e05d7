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

/// The text's `ids` (without special tokens) scored in chunks of `ctx` (at most `max_chunks`,
/// `batch` chunks per forward pass). With `bos`, the text is first given BOS in front, as
/// llama.cpp tokenises it, and each chunk's first token is then BOS. Errors as llama-perplexity
/// refuses: a text shorter than two chunks.
pub fn text_perplexity(
    lm: &dyn Lm,
    text_ids: &[u32],
    ctx: usize,
    max_chunks: Option<usize>,
    bos: Option<u32>,
    batch: usize,
) -> Result<TextPerplexity, String> {
    let ids: Vec<u32> = bos.into_iter().chain(text_ids.iter().copied()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use btx_model::ModelConfig;

    /// A model whose log-probability of each target is minus the target's id.
    struct Ids;

    impl Lm for Ids {
        fn target_logprobs(&self, windows: &[Vec<i64>]) -> Vec<Vec<f32>> {
            windows
                .iter()
                .map(|w| w[1..].iter().map(|&t| -(t as f32)).collect())
                .collect()
        }
        fn greedy(
            &self,
            _: &[Vec<i64>],
            _: usize,
            _: Option<i64>,
            _: &mut dyn FnMut(usize, &[i64]) -> bool,
        ) -> Vec<Vec<i64>> {
            unreachable!("perplexity never generates")
        }
        fn forward_passes(&self) -> usize {
            1
        }
        fn active_params(&self) -> usize {
            0
        }
        fn total_params(&self) -> usize {
            0
        }
        fn max_positions(&self) -> usize {
            1 << 20
        }
        fn configs(&self) -> Vec<&ModelConfig> {
            vec![]
        }
    }

    /// llama-perplexity's chunks: with BOS the text is shifted by one (BOS first, then each
    /// chunk's first token replaced by BOS), and only the tokens after the first half are
    /// scored (as targets of positions ctx/2 .. ctx-2).
    #[test]
    fn chunks_and_scored_tokens_are_llama_perplexitys() {
        let text: Vec<u32> = (10..30).collect();
        // No BOS: chunks [10..18) and [18..26); targets at positions 5, 6, 7.
        let r = text_perplexity(&Ids, &text, 8, None, None, 4).unwrap();
        assert_eq!((r.chunks, r.scored), (2, 6));
        let want = (15 + 16 + 17 + 23 + 24 + 25) as f64 / 6.0;
        assert!((r.loss - want).abs() < 1e-9, "{} vs {want}", r.loss);
        // BOS 1: [1, 10..17) and [17..25) with its first token replaced by 1.
        let r = text_perplexity(&Ids, &text, 8, None, Some(1), 4).unwrap();
        let want = (14 + 15 + 16 + 22 + 23 + 24) as f64 / 6.0;
        assert!((r.loss - want).abs() < 1e-9, "{} vs {want}", r.loss);
        assert!(
            text_perplexity(&Ids, &text, 16, None, None, 4).is_err(),
            "one chunk only"
        );
    }
}
