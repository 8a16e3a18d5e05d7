//! Text generation with a KV cache: batched (left-padded) prompts, greedy or temperature +
//! nucleus (top-p) sampling, per-row stopping.

use crate::error::ModelError;
use crate::model::forward::{ForwardOpts, KvCache};
use crate::model::Model;
use crate::to_vec;
use btx_core::rng::Rng;

#[derive(Clone, Debug)]
pub struct Sampling {
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    /// Refuses settings that would sample garbage or nothing: a temperature that is not a finite
    /// number ≥ 0, a top_p outside (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature {} must be a finite number >= 0 (0 = greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!(
                "top_p {} must be in (0, 1] (1 = off; 0.9 keeps the tokens that make up 90% of the probability)",
                self.top_p
            ));
        }
        Ok(())
    }
}

/// How many new tokens fit after a prompt of `prompt_len` tokens within the positions btx
/// computes as transformers does ([`crate::ModelConfig::max_positions`]: the model's
/// `max_position_embeddings`, and its `sliding_window`, which btx does not implement):
/// generation never runs past them. The last new token is sampled and never fed back, so
/// `max_new` tokens use `prompt_len + max_new - 1` positions ([`positions_used`]): a prompt
/// that fills every position still has room for one.
pub fn room(model: &Model, prompt_len: usize) -> usize {
    (model.cfg.max_positions() + 1).saturating_sub(prompt_len.max(1))
}

/// Positions the forward passes of a generation use: the prompt, then each new token but the
/// last (which is sampled, never fed back).
pub fn positions_used(prompt_len: usize, max_new: usize) -> usize {
    prompt_len + max_new.saturating_sub(1)
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Picks the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> i64 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] {
                best = i;
            }
        }
        return best as i64;
    }
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - m) / s.temperature).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.iter_mut().for_each(|x| x.1 /= z);
    if s.top_p < 1.0 {
        // total_cmp: NaN logits (a broken model) must not panic the sort.
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut acc = 0.0;
        let mut keep = 0;
        for (i, x) in p.iter().enumerate() {
            acc += x.1;
            keep = i + 1;
            if acc >= s.top_p {
                break;
            }
        }
        p.truncate(keep);
        let z: f64 = p.iter().map(|x| x.1).sum();
        p.iter_mut().for_each(|x| x.1 /= z);
    }
    let u = rng.uniform();
    let mut acc = 0.0;
    for &(i, q) in &p {
        acc += q;
        if u < acc {
            return i as i64;
        }
    }
    p.last().map_or(0, |x| x.0 as i64)
}

/// Left-pads prompts to a common length: (row-major ids `[B, L]` with 0 as padding, the padding
/// of each row, L).
pub fn left_pad(prompts: &[Vec<i64>]) -> (Vec<i64>, Vec<usize>, usize) {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let pads: Vec<usize> = prompts.iter().map(|p| len - p.len()).collect();
    let mut ids = Vec::with_capacity(prompts.len() * len);
    for p in prompts {
        ids.extend(std::iter::repeat_n(0i64, len - p.len()));
        ids.extend_from_slice(p);
    }
    (ids, pads, len)
}

/// The generated tokens of each row and which rows have stopped.
pub struct Rows {
    pub out: Vec<Vec<i64>>,
    pub done: Vec<bool>,
}

impl Rows {
    pub fn new(b: usize) -> Self {
        Self {
            out: vec![vec![]; b],
            done: vec![false; b],
        }
    }

    /// Records row `r`'s next token: EOS or `stop(r, generated)` ends the row.
    pub fn push(
        &mut self,
        r: usize,
        tok: i64,
        eos: Option<i64>,
        stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    ) {
        if self.done[r] {
            return;
        }
        if Some(tok) == eos {
            self.done[r] = true;
        } else {
            self.out[r].push(tok);
            if stop(r, &self.out[r]) {
                self.done[r] = true;
            }
        }
    }

    pub fn all_done(&self) -> bool {
        self.done.iter().all(|&d| d)
    }
}

/// The rows of a batched generation still running: their indices into the prompts and their
/// left padding. Stopped rows leave the batch and every KV cache, so the rest do not pay for
/// them (a task set's short answers would otherwise wait on its longest).
pub struct Active {
    pub rows: Vec<usize>,
    pub pads: Vec<usize>,
}

impl Active {
    pub fn new(pads: Vec<usize>) -> Self {
        Self {
            rows: (0..pads.len()).collect(),
            pads,
        }
    }

    /// The forward options of the batch as it is now.
    pub fn opts(&self) -> ForwardOpts {
        ForwardOpts {
            pads: self.pads.iter().any(|&p| p > 0).then(|| self.pads.clone()),
            ..Default::default()
        }
    }

    /// Removes the rows that `done` (indexed by prompt) says have stopped, from the batch, from
    /// `caches` and from `next` (this step's tokens, one per active row); returns what is left
    /// of `next`.
    pub fn retain(&mut self, done: &[bool], next: Vec<i64>, caches: &mut [KvCache]) -> Vec<i64> {
        let keep: Vec<usize> = (0..self.rows.len())
            .filter(|&i| !done[self.rows[i]])
            .collect();
        if keep.len() == self.rows.len() {
            return next;
        }
        for c in caches {
            c.keep_rows(&keep);
        }
        self.pads = keep.iter().map(|&i| self.pads[i]).collect();
        self.rows = keep.iter().map(|&i| self.rows[i]).collect();
        keep.iter().map(|&i| next[i]).collect()
    }
}

/// Continues each prompt by up to `max_new` tokens, and never past the model's
/// `max_position_embeddings` (see [`room`]). A row stops when it produces `eos` or when
/// `stop(row, generated_so_far)` says so. Returns only the generated ids of each row.
pub fn generate(
    model: &Model,
    prompts: &[Vec<i64>],
    max_new: usize,
    sampling: &Sampling,
    eos: Option<i64>,
    stop: impl FnMut(usize, &[i64]) -> bool,
) -> Vec<Vec<i64>> {
    generate_inner(model, prompts, max_new, sampling, eos, stop).0
}

/// [`generate`], refusing logits that are not finite: a token sampled from NaN (argmax of NaN
/// is token 0; top-p over NaN is anything) would be printed as the model's answer.
pub fn generate_checked(
    model: &Model,
    prompts: &[Vec<i64>],
    max_new: usize,
    sampling: &Sampling,
    eos: Option<i64>,
    stop: impl FnMut(usize, &[i64]) -> bool,
) -> crate::error::Result<Vec<Vec<i64>>> {
    let (out, bad) = generate_inner(model, prompts, max_new, sampling, eos, stop);
    match bad {
        None => Ok(out),
        Some(k) => Err(ModelError::refused(
            format!(
                "the model's logits are not finite at generated token {} (NaN or overflowing weights, or a config value that makes them so)",
                k + 1
            ),
            "check the model with `btx eval` or `btx forward`; nothing was generated from them",
        )),
    }
}

/// The generation; the index of the first step whose logits were not finite, if one was (the
/// generation stops there).
fn generate_inner(
    model: &Model,
    prompts: &[Vec<i64>],
    max_new: usize,
    sampling: &Sampling,
    eos: Option<i64>,
    mut stop: impl FnMut(usize, &[i64]) -> bool,
) -> (Vec<Vec<i64>>, Option<usize>) {
    let b = prompts.len();
    if b == 0 || max_new == 0 {
        return (vec![vec![]; b], None);
    }
    let (ids, pads, len) = left_pad(prompts);
    let max_new = max_new.min(room(model, len));
    let v = model.cfg.vocab_size;
    let mut cache = KvCache::new(model.cfg.num_layers);
    let mut rows = Rows::new(b);
    let mut rng = Rng::derive(sampling.seed, "generate");
    let mut active = Active::new(pads);
    let mut input = ids;
    let mut t = len;
    // Decoding is hundreds of short parallel products per token with serial work between them
    // (sampling, the cache's bookkeeping): the pool's other workers poll instead of sleeping
    // (see `awake`), as they do through a train step.
    btx_kernels::awake::awake(|| {
        for step in 0..max_new {
            let n = active.rows.len();
            let host = to_vec(model.next_logits(&input, n, t, &active.opts(), Some(&mut cache)));
            if host.iter().any(|x| !x.is_finite()) {
                return (std::mem::take(&mut rows.out), Some(step));
            }
            let mut next = Vec::with_capacity(n);
            for (i, &r) in active.rows.iter().enumerate() {
                let tok = sample(&host[i * v..(i + 1) * v], sampling, &mut rng);
                rows.push(r, tok, eos, &mut stop);
                next.push(tok);
            }
            if rows.all_done() {
                break;
            }
            input = active.retain(&rows.done, next, std::slice::from_mut(&mut cache));
            t = 1;
        }
        (rows.out, None)
    })
}
