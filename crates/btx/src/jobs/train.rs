//! Training a model on a prepared data mixture: `btx train` and the pipeline's seed, expert,
//! finetune and baseline stages.

use std::path::Path;

use anyhow::{Context, Result};
use btx_data::{DataDir, MixConfig, Mixture};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelSpec};
use btx_train::{TrainOpts, TrainOutcome, TrainerConfig};

/// The model a run starts from: the checkpoint in `from` (whose tokenizer must be the data's),
/// or a new model shaped as `init` says (the default shape when `None`), its vocabulary the
/// data's tokenizer's, initialised from `seed`.
pub fn initial_model(
    from: Option<&Path>,
    init: Option<&ModelSpec>,
    data: &DataDir,
    seed: u64,
) -> Result<Model> {
    match from {
        Some(p) => {
            let model = Model::load(p, &Device::flex())
                .with_context(|| format!("loading {}", p.display()))?;
            data.check_model(p, model.cfg.vocab_size)?;
            Ok(model)
        }
        None => {
            let tok = data.tokenizer()?;
            let spec = init.cloned().unwrap_or_default();
            let cfg = spec.to_config(tok.vocab_size(), Some(tok.eos_id()))?;
            Ok(Model::init(&cfg, seed, &Device::flex())?)
        }
    }
}

/// Trains `model` on `data` mixed as `mix` says into `out` (checkpoints, metrics, `model/`),
/// resuming when `opts` asks. A finished model gets the data's tokenizer beside it; a run
/// stopped early (a signal, `max_steps_this_run`) comes back with `stopped_early` set and its
/// checkpoint written.
pub fn train(
    model: Model,
    data: &DataDir,
    mix: &MixConfig,
    cfg: &TrainerConfig,
    out: &Path,
    opts: &TrainOpts,
) -> Result<TrainOutcome> {
    let tok = data.tokenizer()?;
    let mut source = Mixture::new(
        data,
        mix,
        cfg.train.batch_size,
        cfg.train.seq_len,
        cfg.train.seed,
    )?;
    tracing::info!(
        "{}: training {} ({:.2}M params, {:.2}M active) on {:?} for {} steps of {} tokens",
        opts.label,
        model.cfg.to_hf_json()["architectures"][0]
            .as_str()
            .unwrap_or("a model"),
        model.cfg.total_params() as f64 / 1e6,
        model.cfg.active_params() as f64 / 1e6,
        source.domain_names(),
        cfg.train.steps,
        cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum
    );
    let outcome = btx_train::train(model, &mut source, cfg, out, opts)?;
    if !outcome.stopped_early {
        tok.save(&outcome.model_dir.join("tokenizer.json"))?;
        // The tokenizer's chat template goes with it (`data prepare` keeps it beside it).
        if let Some(d) = data.tokenizer_path().parent() {
            btx_data::copy_tokenizer_config(d, &outcome.model_dir)?;
        }
    }
    Ok(outcome)
}
