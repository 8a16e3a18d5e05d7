//! The plan's building blocks: stages pushed with their fingerprints, step counts scaled by a
//! budget, and the seed's shape known before anything runs.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_model::ModelConfig;

use super::{fingerprint, Stage, StageId, StageKind};
use crate::recipe::{Recipe, TrainSpec};

/// `spec` with its step count multiplied by `f` (at least one step; warmup at most half).
pub(super) fn scaled(mut spec: TrainSpec, f: f64) -> TrainSpec {
    if f != 1.0 {
        spec.trainer.train.steps = ((spec.trainer.train.steps as f64 * f).round() as usize).max(1);
        spec.trainer.optim.warmup_steps = spec
            .trainer
            .optim
            .warmup_steps
            .min(spec.trainer.train.steps / 2);
    }
    spec
}

/// The seed's shape, known before anything runs (for matching baseline budgets).
pub(super) fn seed_config(r: &Recipe, base: &Path) -> Result<ModelConfig> {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if let Some(p) = &r.seed.path {
        return ModelConfig::load(&abs(p).join("config.json"))
            .with_context(|| format!("reading the seed's config in {}", p.display()));
    }
    if let Some(g) = &r.seed.gguf {
        let f = btx_data::gguf::GgufFile::open(&abs(g))?;
        return Ok(btx_gguf::import::config_from_gguf(&f)?);
    }
    let spec = r
        .seed
        .pretrain
        .as_ref()
        .and_then(|p| p.init.clone())
        .context("seed pretrain needs init")?;
    // The vocabulary comes from the tokenizer the data stage trains (or the data directory).
    let vocab = match (&r.data.prepare, &r.data.dir) {
        (Some(p), _) => p.tokenizer.vocab_size,
        (None, Some(d)) => btx_data::DataDir::open(&abs(d))?.manifest.vocab_size,
        _ => bail!("[data] needs dir or prepare"),
    };
    Ok(spec.to_config(vocab, None)?)
}

/// Adds stages, computing each fingerprint from its kind and its dependencies'.
pub(super) struct Builder {
    pub(super) stages: Vec<Stage>,
}

impl Builder {
    /// A training stage that continues `from` on the prepared data (experts, finetunes,
    /// baselines).
    pub(super) fn train_from(
        &mut self,
        name: StageId,
        dir: String,
        from: StageId,
        spec: TrainSpec,
    ) {
        self.push(
            name,
            dir,
            vec![from.clone(), StageId::data()],
            StageKind::Train {
                from: Some(from),
                spec,
                data: StageId::data(),
            },
            true,
        );
    }

    pub(super) fn push(
        &mut self,
        name: StageId,
        dir: String,
        deps: Vec<StageId>,
        kind: StageKind,
        heavy: bool,
    ) {
        let fps: Vec<String> = deps
            .iter()
            .map(|d| {
                self.stages
                    .iter()
                    .find(|s| &s.name == d)
                    .map(|s| s.fingerprint.clone())
                    .expect("dependencies are planned first")
            })
            .collect();
        let fp = fingerprint(&kind, &fps.iter().map(String::as_str).collect::<Vec<_>>());
        self.stages.push(Stage {
            name,
            dir,
            deps,
            kind,
            fingerprint: fp,
            heavy,
        });
    }
}
