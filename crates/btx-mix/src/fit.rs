//! Routers fitted in closed form on the MiX itself (DUME-style; beyond the paper).
//!
//! The MiX, built first with zero routers, runs over a sample of every expert's domain one
//! layer at a time: layer l's router inputs are captured with the routers of the layers below
//! already fitted, so each router is solved on the hidden states it will see in the MiX (not on
//! the dense experts', whose residual streams the averaged weights no longer reproduce). Each
//! router is the ridge regression
//!
//!   W = argmin ||X W - Y||² + λ||W||²,   λ = ridge × mean diagonal of XᵀX
//!
//! from those inputs (rows of X) to every token's target row (Y, over the mixed models: one-hot
//! on its domain's expert, or each model's measured loss advantage on it), solved exactly
//! (Cholesky of XᵀX + λI in f64) and scaled by `scale`. A split FFN's chunks share their
//! model's row. Attention experts' routers (BAM) are fitted the same way, before their layer's
//! FFN router. Deterministic; no gradient steps.

use btx_model::io::HostTensor;
use btx_model::loss::token_nll;
use btx_model::names::{attn_router_name, router_name};
use btx_model::{to_vec, ForwardOpts, Model};

use crate::error::{MixError, Result};
use crate::router::check_windows;

/// The tokens a router is fitted on, and what each should route to.
pub struct FitSample {
    pub windows: Vec<Vec<i64>>,
    /// Per window, per token: the target over the mixed models (experts in order, then the
    /// generalist), or `None` for a token that takes no part.
    pub targets: Vec<Vec<Option<Vec<f32>>>>,
}

impl FitSample {
    /// One-hot targets: every token of `windows[i]`'s window to model `models[i]` (of `n`).
    pub fn domain(windows: Vec<Vec<i64>>, models: &[usize], n: usize) -> Self {
        let targets = windows
            .iter()
            .zip(models)
            .map(|(w, &m)| {
                let mut y = vec![0f32; n];
                y[m] = 1.0;
                vec![Some(y); w.len()]
            })
            .collect();
        Self { windows, targets }
    }

    /// Loss-advantage targets: `losses[m][i][t]` is model m's next-token loss at position t of
    /// window i (one per position but the last, which predicts nothing and takes no part).
    /// Token t's target for model m is the mean over the models of their loss minus m's.
    pub fn advantage(windows: Vec<Vec<i64>>, losses: &[Vec<Vec<f32>>]) -> Self {
        let n = losses.len();
        let targets = windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (0..w.len())
                    .map(|t| {
                        (t + 1 < w.len()).then(|| {
                            let l: Vec<f32> = (0..n).map(|m| losses[m][i][t]).collect();
                            let mean = l.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
                            l.iter().map(|&x| (mean - x as f64) as f32).collect()
                        })
                    })
                    .collect()
            })
            .collect();
        Self { windows, targets }
    }

    fn models(&self) -> Option<usize> {
        self.targets.iter().flatten().flatten().map(Vec::len).next()
    }
}

/// `model`'s next-token loss at every position of `window` but the last (nats).
pub fn token_losses(model: &Model, window: &[i64]) -> Vec<f32> {
    let t = window.len();
    let logits = model
        .forward(window, 1, t, &ForwardOpts::default(), None)
        .logits;
    let v = model.cfg.vocab_size;
    let flat = logits.reshape([t, v]).slice([0..t - 1, 0..v]);
    to_vec(token_nll(flat, &window[1..]))
}

/// A new expert's router rows per layer (`[d]` each), from [`fit_new_expert`].
#[derive(Clone, Debug, Default)]
pub struct NewRows {
    pub ffn: Vec<Vec<f32>>,
    /// The attention experts' router's (empty without attention experts).
    pub attn: Vec<Vec<f32>>,
}

/// How one router's fit went.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerFit {
    pub layer: usize,
    /// `ffn` (the MoE router) or `attention` (an attention experts' router).
    pub router: String,
    pub tokens: usize,
    /// Share of the tokens whose largest fitted logit is their target's largest entry (the
    /// domain's expert; the model with the smallest loss).
    pub agree: f64,
}

/// The fitted rows: per layer the MoE router's (`[experts, d]`) and, for attention experts,
/// their router's (`[models, d]`; empty otherwise).
pub struct Fitted {
    pub ffn: Vec<HostTensor>,
    pub attn: Vec<HostTensor>,
    pub layers: Vec<LayerFit>,
}

/// Fits every router of the MiX `model` (its routers' current values are replaced layer by
/// layer) on `sample`, as the module comment says. `split`: experts per mixed model.
pub fn fit_layerwise(
    mut model: Model,
    sample: &FitSample,
    split: usize,
    ridge: f64,
    scale: f64,
) -> Result<Fitted> {
    check_windows(&model, &sample.windows)?;
    let cfg = model.cfg.clone();
    let n = sample
        .models()
        .ok_or_else(|| MixError::Options("a router fit needs at least one target token".into()))?;
    let split = split.max(1);
    if cfg.moe.is_none() || cfg.num_experts() != n * split {
        return Err(MixError::Options(format!(
            "a router fit over {n} mixed models (split {split}) needs a MoE of {} experts; the model has {}",
            n * split,
            cfg.num_experts()
        )));
    }
    let attn_experts = cfg.attn_experts.as_ref().map(|a| a.num_experts);
    if attn_experts.is_some_and(|a| a != n) {
        return Err(MixError::Options(format!(
            "a router fit over {n} mixed models needs as many attention experts; the model has {attn_experts:?}"
        )));
    }
    let d = cfg.hidden_size;
    let mut out = Fitted {
        ffn: vec![],
        attn: vec![],
        layers: vec![],
    };
    for l in 0..cfg.num_layers {
        for router in ["attention", "ffn"] {
            if router == "attention" && attn_experts.is_none() {
                continue;
            }
            let (x, y) = gather(&model, sample, l, router == "attention", d, n);
            let w = solve(&x, &y, d, n, ridge);
            let rows_m = rows(&w, d, n, 1, scale);
            out.layers.push(LayerFit {
                layer: l,
                router: router.into(),
                tokens: y.len() / n,
                agree: agreement(&x, &y, &rows_m, d, n),
            });
            if router == "attention" {
                model = model.with_param(&attn_router_name(l), &rows_m)?;
                out.attn.push(rows_m);
            } else {
                let rows_e = rows(&w, d, n, split, scale);
                model = model.with_param(&router_name(l), &rows_e)?;
                out.ffn.push(rows_e);
            }
        }
    }
    Ok(out)
}

/// Router rows for a new expert, the last of `model` (and its last attention expert), which
/// `model` holds with zero rows (`btx_mix::add` builds it): layer by layer as [`fit_layerwise`], only
/// the new row is solved, every other row stays as it is. Its target on a token of `own` (the
/// new expert's domain) is the largest of the other rows' logits plus `margin`, so that it
/// takes the token first; on a token of `others` (every other domain: the other experts' and general text) the k-th largest
/// minus `margin` (k = top-k; for the soft attention mixture the smallest), so that top-k
/// leaves those tokens exactly as they were.
pub fn fit_new_expert(
    mut model: Model,
    own: &[Vec<i64>],
    others: &[Vec<i64>],
    ridge: f64,
    margin: f64,
) -> Result<(NewRows, Vec<LayerFit>)> {
    let windows: Vec<Vec<i64>> = own.iter().chain(others).cloned().collect();
    check_windows(&model, &windows)?;
    let cfg = model.cfg.clone();
    let Some(moe) = &cfg.moe else {
        return Err(MixError::Options("fitting a new expert needs a MoE".into()));
    };
    let d = cfg.hidden_size;
    let own_tokens: usize = own.iter().map(Vec::len).sum();
    let mut rows = NewRows::default();
    let mut fits = vec![];
    let sample = FitSample {
        windows,
        targets: vec![],
    };
    for l in 0..cfg.num_layers {
        for router in ["attention", "ffn"] {
            let attention = router == "attention";
            if attention && cfg.attn_experts.is_none() {
                continue;
            }
            let name = if attention {
                attn_router_name(l)
            } else {
                router_name(l)
            };
            let mut r = param(&model, &name)?;
            let e = r.shape[0] - 1;
            let k = if attention { e } else { moe.top_k.min(e) };
            let x = inputs(&model, &sample, l, attention, d);
            let (mut y, mut bounds) = (vec![], vec![]);
            for (i, xr) in x.chunks_exact(d).enumerate() {
                let mut z: Vec<f32> = (0..e)
                    .map(|j| dot(&r.data[j * d..(j + 1) * d], xr))
                    .collect();
                z.sort_by(|a, b| b.total_cmp(a));
                let is_own = i < own_tokens;
                let bound = if is_own { z[0] } else { z[k - 1] };
                y.push(if is_own {
                    bound + margin as f32
                } else {
                    bound - margin as f32
                });
                bounds.push((is_own, bound));
            }
            let w = solve(&x, &y, d, 1, ridge);
            let row: Vec<f32> = w.iter().map(|&v| v as f32).collect();
            let right = x
                .chunks_exact(d)
                .zip(&bounds)
                .filter(|(xr, (is_own, bound))| {
                    let z = dot(&row, xr);
                    if *is_own {
                        z > *bound
                    } else {
                        z < *bound
                    }
                })
                .count();
            fits.push(LayerFit {
                layer: l,
                router: router.into(),
                tokens: bounds.len(),
                agree: right as f64 / bounds.len().max(1) as f64,
            });
            r.data[e * d..].copy_from_slice(&row);
            model = model.with_param(&name, &r)?;
            if attention {
                rows.attn.push(row);
            } else {
                rows.ffn.push(row);
            }
        }
    }
    Ok((rows, fits))
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The parameter `name` of `model`, on the host.
fn param(model: &Model, name: &str) -> Result<HostTensor> {
    let mut found = None;
    model.visit(|n, t| {
        if n == name {
            found = Some(HostTensor::new(t.dims().to_vec(), to_vec(t.clone())));
        }
    });
    found.ok_or_else(|| MixError::Options(format!("the model has no parameter {name}")))
}

/// Layer `l`'s router inputs (attention or FFN) of every token of `sample`'s windows, `[N, d]`.
fn inputs(model: &Model, sample: &FitSample, l: usize, attention: bool, d: usize) -> Vec<f32> {
    let opts = ForwardOpts {
        capture_inputs: true,
        ..Default::default()
    };
    let mut x = Vec::with_capacity(sample.windows.iter().map(Vec::len).sum::<usize>() * d);
    for w in &sample.windows {
        let mut out = model.forward(w, 1, w.len(), &opts, None);
        let h = if attention {
            out.attn_inputs.swap_remove(l)
        } else {
            out.ffn_inputs.swap_remove(l)
        };
        x.extend(to_vec(h));
    }
    x
}

/// Layer `l`'s router inputs (attention or FFN) of every token with a target, `[N, d]`, and
/// their targets, `[N, n]`.
fn gather(
    model: &Model,
    sample: &FitSample,
    l: usize,
    attention: bool,
    d: usize,
    n: usize,
) -> (Vec<f32>, Vec<f32>) {
    let all = inputs(model, sample, l, attention, d);
    let (mut x, mut y) = (vec![], vec![]);
    for (row, t) in all.chunks_exact(d).zip(sample.targets.iter().flatten()) {
        if let Some(t) = t {
            debug_assert_eq!(t.len(), n);
            x.extend_from_slice(row);
            y.extend_from_slice(t);
        }
    }
    (x, y)
}

/// The ridge solution W (`[d, n]`, row-major) of X (`[N, d]`) onto Y (`[N, n]`).
pub fn solve(x: &[f32], y: &[f32], d: usize, n: usize, ridge: f64) -> Vec<f64> {
    // Normal equations: A = XᵀX + λI (d x d), B = XᵀY (d x n); A is symmetric, so only its
    // lower triangle is accumulated.
    let mut a = vec![0f64; d * d];
    let mut b = vec![0f64; d * n];
    let mut xr64 = vec![0f64; d];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact(n)) {
        for (o, &v) in xr64.iter_mut().zip(xr) {
            *o = v as f64;
        }
        for r in 0..d {
            let v = xr64[r];
            for (bb, &t) in b[r * n..(r + 1) * n].iter_mut().zip(yr) {
                *bb += v * t as f64;
            }
            for (aa, &c) in a[r * d..r * d + r + 1].iter_mut().zip(&xr64[..=r]) {
                *aa += v * c;
            }
        }
    }
    for r in 0..d {
        for c in 0..r {
            a[c * d + r] = a[r * d + c];
        }
    }
    let mean_diag = (0..d).map(|r| a[r * d + r]).sum::<f64>() / d.max(1) as f64;
    let lambda = (ridge * mean_diag).max(1e-12);
    for r in 0..d {
        a[r * d + r] += lambda;
    }
    cholesky_solve(&mut a, &b, d, n)
}

/// Router rows `[n * split, d]` from W (`[d, n]`): model m's row `scale * W[:, m]`, repeated
/// for each of its `split` experts.
fn rows(w: &[f64], d: usize, n: usize, split: usize, scale: f64) -> HostTensor {
    let mut data = Vec::with_capacity(n * split * d);
    for m in 0..n {
        for _ in 0..split {
            data.extend((0..d).map(|r| (scale * w[r * n + m]) as f32));
        }
    }
    HostTensor::new(vec![n * split, d], data)
}

/// Share of the rows of X whose largest logit under `rows` (`[n, d]`) is their target's
/// largest entry.
fn agreement(x: &[f32], y: &[f32], rows: &HostTensor, d: usize, n: usize) -> f64 {
    let argmax = |v: &mut dyn Iterator<Item = f32>| {
        v.enumerate()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    };
    let (mut hit, mut total) = (0usize, 0usize);
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact(n)) {
        let got = argmax(&mut (0..n).map(|m| {
            let row = &rows.data[m * d..(m + 1) * d];
            row.iter().zip(xr).map(|(a, b)| a * b).sum::<f32>()
        }));
        let want = argmax(&mut yr.iter().copied());
        hit += (got == want) as usize;
        total += 1;
    }
    hit as f64 / total.max(1) as f64
}

/// Solves A X = B for a symmetric positive definite `a` (n x n, overwritten by its Cholesky
/// factor) and `b` (n x m); returns X (n x m).
fn cholesky_solve(a: &mut [f64], b: &[f64], n: usize, m: usize) -> Vec<f64> {
    for j in 0..n {
        let mut s = a[j * n + j];
        for k in 0..j {
            s -= a[j * n + k] * a[j * n + k];
        }
        // A + λI with λ > 0 is positive definite; the floor only guards rounding.
        let djj = s.max(1e-300).sqrt();
        a[j * n + j] = djj;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / djj;
        }
    }
    let mut x = b.to_vec();
    for c in 0..m {
        // L y = b, then Lᵀ x = y.
        for i in 0..n {
            let mut s = x[i * m + c];
            for k in 0..i {
                s -= a[i * n + k] * x[k * m + c];
            }
            x[i * m + c] = s / a[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = x[i * m + c];
            for k in i + 1..n {
                s -= a[k * n + i] * x[k * m + c];
            }
            x[i * m + c] = s / a[i * n + i];
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens of three "domains" scattered around three directions (plus a shared offset, as
    /// RMSNorm outputs have): the fitted rows send each token to its own domain's model, and a
    /// fourth model that is nobody's target (the generalist) gets a zero row.
    #[test]
    fn a_ridge_fit_sends_each_domains_tokens_to_its_model() {
        let d = 8;
        let mut rng = btx_core::rng::Rng::derive(3, "fit-test");
        let (mut x, mut y) = (vec![], vec![]);
        for k in 0..3 {
            for _ in 0..200 {
                for c in 0..d {
                    let centre = if c == k { 1.5 } else { 0.0 } + 0.7;
                    x.push((centre + 0.5 * rng.normal()) as f32);
                }
                y.extend((0..4).map(|m| (m == k) as u8 as f32));
            }
        }
        let w = solve(&x, &y, d, 4, 1e-3);
        let r = rows(&w, d, 4, 1, 5.0);
        assert_eq!(r.shape, vec![4, d]);
        assert!(r.data[3 * d..].iter().all(|&v| v == 0.0));
        let agree = agreement(&x, &y, &r, d, 4);
        assert!(agree > 0.95, "{agree}");
        // Split: each model's row repeated for its chunks.
        let r2 = rows(&w, d, 4, 2, 5.0);
        assert_eq!(r2.shape, vec![8, d]);
        assert_eq!(r2.data[..d], r2.data[d..2 * d]);
        assert_eq!(r2.data[..d], r.data[..d]);
    }

    /// Without noise and with a tiny ridge, the regression recovers a linear map exactly.
    #[test]
    fn ridge_recovers_a_linear_map() {
        let (d, n) = (3, 2);
        let truth = [0.5, -1.0, 2.0, 0.25, -0.75, 1.5]; // [d, n]
        let mut rng = btx_core::rng::Rng::derive(5, "ridge-test");
        let (mut x, mut y) = (vec![], vec![]);
        for _ in 0..50 {
            let xr: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            x.extend(xr.iter().map(|&v| v as f32));
            for m in 0..n {
                let v: f64 = (0..d).map(|r| xr[r] * truth[r * n + m]).sum();
                y.push(v as f32);
            }
        }
        let w = solve(&x, &y, d, n, 1e-12);
        for (a, b) in w.iter().zip(truth) {
            assert!((a - b).abs() < 1e-5, "{w:?}");
        }
    }

    #[test]
    fn advantage_targets_are_the_mean_loss_minus_each_models() {
        let windows = vec![vec![1, 2, 3]];
        // Two models, two positions with a next token.
        let losses = vec![vec![vec![1.0, 3.0]], vec![vec![2.0, 1.0]]];
        let s = FitSample::advantage(windows, &losses);
        assert_eq!(s.targets[0][0], Some(vec![0.5, -0.5]));
        assert_eq!(s.targets[0][1], Some(vec![-1.0, 1.0]));
        assert_eq!(s.targets[0][2], None);
        let s = FitSample::domain(vec![vec![1, 2], vec![3]], &[1, 0], 3);
        assert_eq!(s.targets[0][1], Some(vec![0.0, 1.0, 0.0]));
        assert_eq!(s.targets[1][0], Some(vec![1.0, 0.0, 0.0]));
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, &[2.0, 1.0], 2, 1);
        // [4 2; 2 3] x = [2; 1] -> x = [0.5, 0]
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }
}
