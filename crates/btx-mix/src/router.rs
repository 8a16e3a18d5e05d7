//! Router initialisation from domain statistics (beyond the paper, which does not say how BTX
//! routers start).
//!
//! For each expert i with domain text, run that expert's own model over a sample of its domain
//! and take h_i^l, the mean over tokens of the input of layer l's FFN (the post-attention RMSNorm
//! output; for attention experts' routers, of layer l's attention). With h̄^l the mean of the h_i^l over domain experts and r^l the mean of ||h_i^l||:
//!
//!   W^l[i] = scale * (h_i^l - h̄^l) / (||h_i^l - h̄^l|| * r^l)
//!
//! so a token whose FFN input looks like domain i's mean gets the logit
//! `scale * cos(x, h_i - h̄) * ||x|| / r`, largest for expert i. Experts without domain text (the
//! generalist seed) get a zero row: centred, the generalist is "no domain in particular".

use btx_model::io::HostTensor;
use btx_model::{to_vec, ForwardOpts, Model};

/// Per-layer mean inputs of a model's routers over a sample of text.
pub struct BlockInputs {
    /// `[layer][d]`: mean attention input (the input RMSNorm output; an attention router's).
    pub attn: Vec<Vec<f64>>,
    /// `[layer][d]`: mean FFN input (the post-attention RMSNorm output; the MoE router's).
    pub ffn: Vec<Vec<f64>>,
}

/// Refuses, before any forward pass, a window `model` cannot compute as transformers does
/// (past its sliding window or its positions) or holding a token id outside its vocabulary.
fn check_windows(model: &Model, windows: &[Vec<i64>]) -> crate::Result<()> {
    let v = model.cfg.vocab_size;
    for w in windows {
        model.cfg.check_positions(
            w.len(),
            &format!("a router-initialisation window of {} tokens", w.len()),
            "use shorter windows",
        )?;
        if let Some(bad) = w.iter().find(|&&i| i < 0 || i as usize >= v) {
            return Err(crate::MixError::Options(format!(
                "router initialisation: token id {bad} is outside the model's vocabulary of {v} (the domain data was tokenized with another tokenizer)"
            )));
        }
    }
    Ok(())
}

/// Every token's attention and FFN inputs, per layer (`[layer]` → `[N * d]`, row-major), of
/// `model` over `windows` (checked as [`mean_inputs`] checks them): the features a fitted
/// router is solved from.
pub struct TokenInputs {
    pub attn: Vec<Vec<f32>>,
    pub ffn: Vec<Vec<f32>>,
}

pub fn token_inputs(model: &Model, windows: &[Vec<i64>]) -> crate::Result<TokenInputs> {
    check_windows(model, windows)?;
    let l = model.cfg.num_layers;
    let (mut attn, mut ffn) = (vec![vec![]; l], vec![vec![]; l]);
    let opts = ForwardOpts {
        capture_inputs: true,
        ..Default::default()
    };
    for w in windows {
        let out = model.forward(w, 1, w.len(), &opts, None);
        for (layer, h) in out.attn_inputs.into_iter().enumerate() {
            attn[layer].extend(to_vec(h));
        }
        for (layer, h) in out.ffn_inputs.into_iter().enumerate() {
            ffn[layer].extend(to_vec(h));
        }
    }
    Ok(TokenInputs { attn, ffn })
}

/// Router rows per layer (`[E, d]`) fitted in closed form (DUME-style; beyond the paper): for
/// each layer, the ridge regression W = argmin ||X Wᵀ - Y||² + λ||W||² from every token's FFN
/// input x (rows of X, gathered from each expert's own model on its own domain) to the one-hot
/// row y of the expert that should take it, solved exactly (Cholesky of XᵀX + λI, in f64);
/// λ = `ridge` × mean diagonal of XᵀX. The rows are scaled by `scale` (a token of expert i's
/// domain then gets a logit near `scale` from row i, near 0 from the others). `None` marks an
/// expert without domain text (the generalist): it gets no target and a zero row.
/// `features[e][layer]` holds expert e's tokens, `[n_e * d]`.
pub fn fit_rows(
    features: &[Option<Vec<Vec<f32>>>],
    d: usize,
    ridge: f64,
    scale: f64,
) -> Vec<HostTensor> {
    let e = features.len();
    let layers = features.iter().flatten().next().map_or(0, Vec::len);
    (0..layers)
        .map(|l| {
            // Normal equations: A = XᵀX + λI (d x d), B = XᵀY (d x E).
            let mut a = vec![0f64; d * d];
            let mut b = vec![0f64; d * e];
            for (i, f) in features.iter().enumerate() {
                let Some(f) = f else { continue };
                for x in f[l].chunks_exact(d) {
                    for (r, &xr) in x.iter().enumerate() {
                        let xr = xr as f64;
                        b[r * e + i] += xr;
                        let row = &mut a[r * d..(r + 1) * d];
                        for (c, &xc) in x.iter().enumerate() {
                            row[c] += xr * xc as f64;
                        }
                    }
                }
            }
            let mean_diag = (0..d).map(|r| a[r * d + r]).sum::<f64>() / d.max(1) as f64;
            let lambda = (ridge * mean_diag).max(1e-12);
            for r in 0..d {
                a[r * d + r] += lambda;
            }
            let w = cholesky_solve(&mut a, &b, d, e);
            // W is d x E; the router holds its transpose, E x d.
            let mut data = vec![0f32; e * d];
            for r in 0..d {
                for i in 0..e {
                    data[i * d + r] = (scale * w[r * e + i]) as f32;
                }
            }
            HostTensor::new(vec![e, d], data)
        })
        .collect()
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

/// Per-layer mean attention and FFN inputs of `model` over `windows` (token windows of equal
/// length). Refuses, before the first forward pass, a window the model cannot compute as
/// transformers does (past its sliding window or its positions) and token ids outside its
/// vocabulary.
pub fn mean_inputs(model: &Model, windows: &[Vec<i64>]) -> crate::Result<BlockInputs> {
    check_windows(model, windows)?;
    let l = model.cfg.num_layers;
    let d = model.cfg.hidden_size;
    let mut attn = vec![vec![0f64; d]; l];
    let mut ffn = vec![vec![0f64; d]; l];
    let mut n = 0usize;
    let opts = ForwardOpts {
        capture_inputs: true,
        ..Default::default()
    };
    let add = |sums: &mut Vec<Vec<f64>>, hs: Vec<btx_model::burn::prelude::Tensor<2>>| {
        for (layer, h) in hs.into_iter().enumerate() {
            let v = to_vec(h);
            for row in v.chunks_exact(d) {
                for (s, x) in sums[layer].iter_mut().zip(row) {
                    *s += *x as f64;
                }
            }
        }
    };
    for w in windows {
        let out = model.forward(w, 1, w.len(), &opts, None);
        add(&mut attn, out.attn_inputs);
        add(&mut ffn, out.ffn_inputs);
        n += w.len();
    }
    for s in attn.iter_mut().chain(ffn.iter_mut()) {
        s.iter_mut().for_each(|x| *x /= n.max(1) as f64);
    }
    Ok(BlockInputs { attn, ffn })
}

/// Router rows per layer (`[E, d]`) from per-expert mean FFN inputs; `None` marks an expert
/// without domain text (zero row).
pub fn domain_mean_rows(means: &[Option<Vec<Vec<f64>>>], scale: f64) -> Vec<HostTensor> {
    let e = means.len();
    let have: Vec<&Vec<Vec<f64>>> = means.iter().flatten().collect();
    let layers = have.first().map_or(0, |m| m.len());
    let d = have.first().and_then(|m| m.first()).map_or(0, |v| v.len());
    (0..layers)
        .map(|l| {
            let mut centre = vec![0f64; d];
            for m in &have {
                for (c, x) in centre.iter_mut().zip(&m[l]) {
                    *c += x / have.len() as f64;
                }
            }
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let r = have.iter().map(|m| norm(&m[l])).sum::<f64>() / have.len().max(1) as f64;
            let mut data = Vec::with_capacity(e * d);
            for m in means {
                match m {
                    Some(m) => {
                        let diff: Vec<f64> = m[l].iter().zip(&centre).map(|(a, b)| a - b).collect();
                        let dn = norm(&diff);
                        let k = if dn > 0.0 && r > 0.0 {
                            scale / (dn * r)
                        } else {
                            0.0
                        };
                        data.extend(diff.iter().map(|x| (x * k) as f32));
                    }
                    None => data.extend(std::iter::repeat_n(0f32, d)),
                }
            }
            HostTensor::new(vec![e, d], data)
        })
        .collect()
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    /// Tokens of three "domains" scattered around three directions (plus a shared offset, as
    /// RMSNorm outputs have): the fitted rows send each token to its own domain's expert, and
    /// the generalist (no data) gets a zero row.
    #[test]
    fn a_fitted_router_sends_each_domains_tokens_to_its_expert() {
        let d = 8;
        let mut rng = btx_core::rng::Rng::derive(3, "fit-test");
        let make = |k: usize, rng: &mut btx_core::rng::Rng| -> Vec<f32> {
            let mut v = vec![];
            for _ in 0..200 {
                for c in 0..d {
                    let centre = if c == k { 1.5 } else { 0.0 } + 0.7;
                    v.push((centre + 0.5 * rng.normal()) as f32);
                }
            }
            v
        };
        let feats: Vec<Option<Vec<Vec<f32>>>> = (0..3)
            .map(|k| Some(vec![make(k, &mut rng)]))
            .chain(std::iter::once(None))
            .collect();
        let rows = fit_rows(&feats, d, 1e-3, 5.0);
        assert_eq!(rows.len(), 1);
        let w = &rows[0];
        assert_eq!(w.shape, vec![4, d]);
        assert!(w.data[3 * d..].iter().all(|&x| x == 0.0));
        let mut right = 0;
        let mut total = 0;
        for (k, f) in feats.iter().enumerate().take(3) {
            for x in f.as_ref().unwrap()[0].chunks_exact(d) {
                let logits: Vec<f32> = (0..3)
                    .map(|i| (0..d).map(|c| w.data[i * d + c] * x[c]).sum())
                    .collect();
                let best = (0..3)
                    .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                    .unwrap();
                right += (best == k) as usize;
                total += 1;
            }
        }
        assert!(right as f64 / total as f64 > 0.95, "{right}/{total}");
    }

    #[test]
    fn cholesky_solves_a_small_system() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let x = cholesky_solve(&mut a, &[2.0, 1.0], 2, 1);
        // [4 2; 2 3] x = [2; 1] -> x = [0.5, 0]
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
    }
}
