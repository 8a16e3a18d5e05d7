//! Weight averaging ("model soup"): every tensor, FFNs included, the weighted mean over the
//! models.

use std::path::{Path, PathBuf};

use btx_core::outdir::{Existing, OutDir};
use btx_model::io::write_model_checkpoint;
use btx_model::names::param_specs;

use crate::error::{MixError, Result};
use crate::merge::MixSummary;
use crate::source::{
    check_compatible, copy_tokenizer, into_model_err, mean_into, write_json, Source,
};
use crate::spec::{AttnMix, NonFfn};

fn normalise_weights(w: Option<&Vec<f64>>, n: usize) -> Result<Vec<f64>> {
    match w {
        None => Ok(vec![1.0; n]),
        // Finite: an infinite weight makes every mean inf / inf = NaN.
        Some(w)
            if w.len() == n
                && w.iter().all(|x| x.is_finite() && *x >= 0.0)
                // (The sum too: 1e308 + 1e308 is inf, and every weight / inf is 0.)
                && w.iter().sum::<f64>().is_finite()
                && w.iter().sum::<f64>() > 0.0 =>
        {
            Ok(w.clone())
        }
        Some(w) => Err(MixError::Options(format!(
            "weights {w:?}: need {n} finite non-negative values with a positive sum (one per mixed model)"
        ))),
    }
}

/// Weight averaging ("model soup"): every tensor, FFNs included, is the weighted mean over the
/// models. The result is a dense model like its inputs.
pub fn average(
    models: &[PathBuf],
    weights: Option<&Vec<f64>>,
    out: &Path,
    existing: Existing,
) -> Result<MixSummary> {
    let t0 = std::time::Instant::now();
    if models.is_empty() {
        return Err(MixError::Options("no models to average".into()));
    }
    let inputs: Vec<&Path> = models.iter().map(PathBuf::as_path).collect();
    btx_core::outdir::check_not_an_input(out, &inputs)?;
    let w = normalise_weights(weights, models.len())?;
    let sources = models
        .iter()
        .map(|d| Source::open(d))
        .collect::<Result<Vec<_>>>()?;
    check_compatible(&sources.iter().collect::<Vec<_>>())?;
    // Every check above refuses before anything is written.
    let staged = OutDir::create(out, &inputs, existing)?;
    let dir = staged.path();
    let cfg = sources[0].cfg.clone();
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    // In the first model's dtype (the mean is taken in f32 and rounded once).
    let save = btx_model::io::SaveOpts {
        dtype: sources[0].reader.weights_dtype(),
        ..Default::default()
    };
    write_model_checkpoint(dir, &cfg, &specs, &save, |i, sink| {
        let (name, shape) = &specs[i];
        mean_into(&sources, name, shape, &w, sink).map_err(into_model_err)
    })?;
    cfg.save_as(&dir.join("config.json"), save.dtype)?;
    copy_tokenizer(&sources[0].dir, dir)?;
    let summary = MixSummary {
        models: models.to_vec(),
        weights: w,
        num_experts: 1,
        expert_intermediate_size: cfg.intermediate_size,
        top_k: 1,
        routing: "dense".into(),
        split: 1,
        blend: false,
        generalist: false,
        non_ffn: NonFfn::Average,
        attention: AttnMix::Average,
        labels: vec![],
        router_fit: vec![],
        seconds: t0.elapsed().as_secs_f64(),
    };
    write_json(&dir.join("mix.json"), &summary)?;
    drop(sources);
    staged.commit()?;
    Ok(summary)
}
