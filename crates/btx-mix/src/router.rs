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
pub(crate) fn check_windows(model: &Model, windows: &[Vec<i64>]) -> crate::Result<()> {
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
