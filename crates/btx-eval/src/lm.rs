//! What evaluation needs from a language model — scored next tokens and greedy continuations —
//! for a single model and for a Branch-Train-Merge ensemble of several.
//!
//! BTM ensemble: the next-token distribution is a weighted mixture of the experts'
//! distributions. With `Weighting::Posterior` the weights are the domain posterior given the
//! context so far, as in BTM: w_e ∝ prior_e · p_e(context), computed from each expert's
//! log-likelihood of the prefix; only the `top_k` largest are kept (renormalised). With
//! `Weighting::Uniform` every expert weighs 1/N. Either way it costs N forward passes per token.

use btx_model::burn::prelude::*;
use btx_model::burn::tensor::activation::log_softmax;
use btx_model::generate::{generate, left_pad, Active, Rows};
use btx_model::{to_vec, ForwardOpts, KvCache, Model, ModelConfig};

/// A model (or ensemble) evaluation can query.
pub trait Lm {
    /// For each `[T]` window, log p(x_{t+1} | x_<=t) for t = 0..T-1 (T - 1 values).
    fn target_logprobs(&self, windows: &[Vec<i64>]) -> Vec<Vec<f32>>;
    /// Greedy continuation of each prompt (left-padded batch), stopping a row at `eos` or
    /// when `stop(row, generated)` says so.
    fn greedy(
        &self,
        prompts: &[Vec<i64>],
        max_new: usize,
        eos: Option<i64>,
        stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    ) -> Vec<Vec<i64>>;
    /// Forward passes of a model this size per generated token (1, or N for an ensemble).
    fn forward_passes(&self) -> usize;
    /// Parameters active per token (summed over an ensemble's members).
    fn active_params(&self) -> usize;
    fn total_params(&self) -> usize;
    /// Positions the model computes as transformers does (the smallest over an ensemble's
    /// members; see `ModelConfig::max_positions`).
    fn max_positions(&self) -> usize;
    /// The configs of the model or of every member of an ensemble, for the checks evaluation
    /// makes before its first forward pass.
    fn configs(&self) -> Vec<&ModelConfig>;
}

/// `[B*T, V]` logits → per-window target log-probs.
fn window_logprobs(model: &Model, windows: &[Vec<i64>]) -> Vec<Vec<f32>> {
    let b = windows.len();
    if b == 0 {
        return vec![];
    }
    let t = windows[0].len();
    let ids: Vec<i64> = windows.iter().flatten().copied().collect();
    let out = model.forward(&ids, b, t, &ForwardOpts::default(), None);
    let v = model.cfg.vocab_size;
    let lp = log_softmax(out.logits.reshape([b * t, v]), 1);
    // Targets: the next token; the last position of each row has none (gather a dummy 0).
    let tgt: Vec<i64> = (0..b * t)
        .map(|i| if i % t == t - 1 { 0 } else { ids[i + 1] })
        .collect();
    let dev = model.device();
    let g = lp.gather(
        1,
        Tensor::<2, Int>::from_data(TensorData::new(tgt, [b * t, 1]), &dev),
    );
    let flat = to_vec(g);
    flat.chunks_exact(t).map(|r| r[..t - 1].to_vec()).collect()
}

impl Lm for Model {
    fn target_logprobs(&self, windows: &[Vec<i64>]) -> Vec<Vec<f32>> {
        window_logprobs(self, windows)
    }

    fn greedy(
        &self,
        prompts: &[Vec<i64>],
        max_new: usize,
        eos: Option<i64>,
        stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    ) -> Vec<Vec<i64>> {
        generate(self, prompts, max_new, &Default::default(), eos, stop)
    }

    fn forward_passes(&self) -> usize {
        1
    }

    fn active_params(&self) -> usize {
        self.cfg.active_params()
    }

    fn total_params(&self) -> usize {
        self.cfg.total_params()
    }

    fn max_positions(&self) -> usize {
        self.cfg.max_positions()
    }

    fn configs(&self) -> Vec<&ModelConfig> {
        vec![&self.cfg]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Weighting {
    Uniform,
    /// Domain posterior from the context, keeping the `top_k` experts.
    Posterior {
        top_k: usize,
    },
}

/// A Branch-Train-Merge ensemble.
pub struct Ensemble {
    pub models: Vec<Model>,
    pub weighting: Weighting,
    /// Log prior of each expert (uniform by default).
    pub log_prior: Vec<f64>,
}

impl Ensemble {
    pub fn new(models: Vec<Model>, weighting: Weighting) -> Self {
        let n = models.len();
        Self {
            models,
            weighting,
            log_prior: vec![-(n as f64).ln(); n],
        }
    }

    /// Mixture weights from each expert's log-likelihood of the context so far; they sum to 1
    /// and, for `Posterior { top_k }`, at most `top_k` are non-zero.
    pub fn weights(&self, loglik: &[f64]) -> Vec<f64> {
        let n = loglik.len();
        match self.weighting {
            Weighting::Uniform => vec![1.0 / n as f64; n],
            Weighting::Posterior { top_k } => {
                let score: Vec<f64> = loglik
                    .iter()
                    .zip(&self.log_prior)
                    .map(|(l, p)| l + p)
                    .collect();
                let mut order: Vec<usize> = (0..n).collect();
                // total_cmp: a NaN score (NaN logits) must reach the loss check, not panic.
                order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
                let keep = &order[..top_k.clamp(1, n)];
                let m = keep
                    .iter()
                    .map(|&i| score[i])
                    .fold(f64::NEG_INFINITY, f64::max);
                let mut w = vec![0.0; n];
                let mut z = 0.0;
                for &i in keep {
                    w[i] = (score[i] - m).exp();
                    z += w[i];
                }
                w.iter_mut().for_each(|x| *x /= z);
                w
            }
        }
    }
}

fn logsumexp_weighted(w: &[f64], lp: &[f64]) -> f64 {
    let m = lp
        .iter()
        .zip(w)
        .filter(|(_, w)| **w > 0.0)
        .map(|(l, _)| *l)
        .fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = lp
        .iter()
        .zip(w)
        .filter(|(_, w)| **w > 0.0)
        .map(|(l, w)| w * (l - m).exp())
        .sum();
    m + s.ln()
}

impl Lm for Ensemble {
    fn target_logprobs(&self, windows: &[Vec<i64>]) -> Vec<Vec<f32>> {
        let per: Vec<Vec<Vec<f32>>> = self
            .models
            .iter()
            .map(|m| window_logprobs(m, windows))
            .collect();
        let n = self.models.len();
        (0..windows.len())
            .map(|b| {
                let t = per[0][b].len();
                let mut loglik = vec![0f64; n];
                (0..t)
                    .map(|i| {
                        let w = self.weights(&loglik);
                        let lp: Vec<f64> = (0..n).map(|e| per[e][b][i] as f64).collect();
                        for e in 0..n {
                            loglik[e] += lp[e];
                        }
                        logsumexp_weighted(&w, &lp) as f32
                    })
                    .collect()
            })
            .collect()
    }

    fn greedy(
        &self,
        prompts: &[Vec<i64>],
        max_new: usize,
        eos: Option<i64>,
        stop: &mut dyn FnMut(usize, &[i64]) -> bool,
    ) -> Vec<Vec<i64>> {
        let b = prompts.len();
        let n = self.models.len();
        if b == 0 || max_new == 0 {
            return vec![vec![]; b];
        }
        let (ids, pads, len) = left_pad(prompts);
        // Never past the positions any of the models has (as `generate` does for one model).
        let max_new = self
            .models
            .iter()
            .map(|m| btx_model::generate::room(m, len))
            .fold(max_new, usize::min);
        let v = self.models[0].cfg.vocab_size;
        let mut caches: Vec<KvCache> = self
            .models
            .iter()
            .map(|m| KvCache::new(m.cfg.num_layers))
            .collect();
        // loglik[row][expert]: log-likelihood of the context so far.
        let mut loglik = vec![vec![0f64; n]; b];
        let mut rows = Rows::new(b);
        let mut active = Active::new(pads.clone());
        let mut input = ids.clone();
        let mut t = len;
        let mut lp = vec![0f64; n];
        for step in 0..max_new {
            let nb = active.rows.len();
            let opts = active.opts();
            // Per expert, the log-softmax of the last position of each row.
            let mut last: Vec<Vec<f32>> = Vec::with_capacity(n);
            for (e, m) in self.models.iter().enumerate() {
                if step == 0 {
                    let o = m.forward(&input, nb, t, &opts, Some(&mut caches[e]));
                    let all_lp = log_softmax(o.logits, 2);
                    // The prompt's own likelihood under this expert (pads excluded).
                    let all = to_vec(all_lp.clone());
                    for r in 0..nb {
                        for i in pads[r]..len - 1 {
                            let tok = ids[r * len + i + 1] as usize;
                            loglik[r][e] += all[(r * len + i) * v + tok] as f64;
                        }
                    }
                    last.push(to_vec(all_lp.narrow(1, t - 1, 1).reshape([nb, v])));
                } else {
                    let logits = m.next_logits(&input, nb, t, &opts, Some(&mut caches[e]));
                    last.push(to_vec(log_softmax(logits, 1)));
                }
            }
            let mut next = Vec::with_capacity(nb);
            for (i, &r) in active.rows.iter().enumerate() {
                let w = self.weights(&loglik[r]);
                let mut best = (0usize, f64::NEG_INFINITY);
                for tok in 0..v {
                    for (e, x) in lp.iter_mut().enumerate() {
                        *x = last[e][i * v + tok] as f64;
                    }
                    let s = logsumexp_weighted(&w, &lp);
                    if s > best.1 {
                        best = (tok, s);
                    }
                }
                let tok = best.0 as i64;
                for (e, ll) in loglik[r].iter_mut().enumerate() {
                    *ll += last[e][i * v + best.0] as f64;
                }
                rows.push(r, tok, eos, stop);
                next.push(tok);
            }
            if rows.all_done() {
                break;
            }
            input = active.retain(&rows.done, next, &mut caches);
            t = 1;
        }
        rows.out
    }

    fn forward_passes(&self) -> usize {
        self.models.len()
    }

    fn active_params(&self) -> usize {
        self.models.iter().map(|m| m.cfg.active_params()).sum()
    }

    fn total_params(&self) -> usize {
        self.models.iter().map(|m| m.cfg.total_params()).sum()
    }

    fn max_positions(&self) -> usize {
        self.models
            .iter()
            .map(|m| m.cfg.max_positions())
            .min()
            .unwrap_or(0)
    }

    fn configs(&self) -> Vec<&ModelConfig> {
        self.models.iter().map(|m| &m.cfg).collect()
    }
}
