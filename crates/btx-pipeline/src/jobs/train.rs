//! Training a model on a prepared data mixture: `btx train` and the pipeline's seed, expert,
//! finetune and baseline stages.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_data::{DataDir, MixConfig, Mixture};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelSpec};
use btx_train::{TrainOpts, TrainOutcome, TrainerConfig};
use serde_json::json;

use super::{params_compute, JobOutcome, StageCtx};
use crate::plan::StageId;
use crate::recipe::TrainSpec;

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

/// The training stages (seed pretraining, experts, finetunes, dense and upcycled baselines):
/// from stage `from`'s model, or a new one of `spec.init`'s shape, on stage `data`'s tokens.
/// Resumes from the stage's checkpoint; a signal stops it with a checkpoint written
/// ([`JobOutcome::Stopped`]).
pub(super) fn stage(
    ctx: &StageCtx,
    from: Option<&StageId>,
    spec: &TrainSpec,
    data: &StageId,
) -> Result<JobOutcome> {
    let data_dir = DataDir::open(&ctx.data_of(data)?)?;
    let from_dir = from.map(|f| ctx.model_of(f)).transpose()?;
    if from_dir.is_none() && spec.init.is_none() {
        bail!("a new model needs an init shape");
    }
    let init = initial_model(
        from_dir.as_deref(),
        spec.init.as_ref(),
        &data_dir,
        spec.trainer.train.seed,
    )?;
    let cfg = init.cfg.clone();
    let tc = &spec.trainer;
    let mix = MixConfig {
        weights: spec.weights.clone(),
        split: None,
    };
    let opts = TrainOpts {
        device: ctx.dev.clone(),
        resume: true,
        progress: true,
        label: ctx.stage.name.to_string(),
        max_steps_this_run: None,
        // The final model in its starting point's dtype (f32 from scratch).
        save: btx_model::io::SaveOpts {
            dtype: match from_dir.as_deref() {
                Some(d) => btx_model::io::stored_dtype(d)?,
                None => btx_model::io::OutDtype::F32,
            },
            ..Default::default()
        },
    };
    let out = train(init, &data_dir, &mix, tc, ctx.dir, &opts)?;
    if out.stopped_early {
        return Ok(JobOutcome::Stopped { steps: out.steps });
    }
    let mut c = params_compute(&cfg);
    c.train_tokens = out.tokens;
    c.train_flops = out.tokens as f64 * cfg.train_flops_per_token(tc.train.seq_len);
    c.wall_seconds = out.wall_s;
    c.tokens_per_s = out.tokens as f64 / out.wall_s.max(1e-9);
    JobOutcome::done(c, json!({"final_loss": out.final_loss, "steps": out.steps}))
}
