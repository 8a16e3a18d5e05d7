//! A whole training run: resume from the newest good checkpoint (refusing a changed config),
//! steps with metrics and progress, checkpoints, signals, and the final model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use btx_data::BatchSource;
use btx_model::burn::prelude::*;
use btx_model::Model;
use serde_json::json;

use crate::checkpoint::{self, CheckpointState};
use crate::config::TrainerConfig;
use crate::error::{io_err, TrainError};
use crate::metrics::{MetricsLog, Progress};
use crate::signal;
use crate::trainer::{StepStats, Trainer};

/// How to run (not what to learn: that is [`TrainerConfig`]).
#[derive(Clone, Debug)]
pub struct TrainOpts {
    /// Device to train on; autodiff is enabled on it if it is not already.
    pub device: Device,
    /// Continue from the newest complete checkpoint in `OUT/checkpoints`.
    pub resume: bool,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
    /// Label for logs and the progress bar (e.g. the stage name).
    pub label: String,
    /// Stop (with a checkpoint) after this many steps in this process; for tests of resume.
    pub max_steps_this_run: Option<usize>,
    /// How the final model is written (dtype, shards); checkpoints stay f32, whole.
    pub save: btx_model::io::SaveOpts,
}

impl Default for TrainOpts {
    fn default() -> Self {
        Self {
            device: Device::flex(),
            resume: false,
            progress: true,
            label: "train".into(),
            max_steps_this_run: None,
            save: Default::default(),
        }
    }
}

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub tokens: u64,
    pub wall_s: f64,
    pub final_loss: f64,
    /// True when a signal or `max_steps_this_run` stopped the run before its last step.
    pub stopped_early: bool,
    pub model_dir: PathBuf,
}

/// Trains `init` on `data` into `out`: `out/metrics.jsonl`, `out/checkpoints/step-*`,
/// and finally `out/model/` (HF layout). With `opts.resume`, continues from the newest complete
/// checkpoint (then `init` is only used if there is none).
pub fn train(
    init: Model,
    data: &mut dyn BatchSource,
    cfg: &TrainerConfig,
    out: &Path,
    opts: &TrainOpts,
) -> Result<TrainOutcome, TrainError> {
    // Everything that can refuse the run refuses it before anything is written.
    cfg.preflight(&init.cfg)?;
    std::fs::create_dir_all(out).map_err(|e| io_err(out, e))?;
    signal::install();
    let ckpt_root = out.join("checkpoints");
    let total_steps = cfg.train.steps;
    let (mut trainer, mut tokens, mut elapsed) = start(init, data, cfg, out, opts, &ckpt_root)?;
    let mut log = StepLog {
        metrics: MetricsLog::open(&out.join("metrics.jsonl"), trainer.step)?,
        progress: Progress::new(&opts.label, total_steps, trainer.step, opts.progress),
        cfg,
        label: &opts.label,
    };
    let save = |tr: &Trainer, data: &dyn BatchSource, tokens: u64, elapsed: f64| {
        save_checkpoint(&ckpt_root, cfg, tr, data, tokens, elapsed)
    };
    // A resume that has no step left to take (a finished run resumed) reports the loss its log
    // recorded for the last step, not NaN.
    let mut last_loss = log.metrics.resumed_loss().unwrap_or(f64::NAN);
    let mut last_saved = trainer.step;
    let mut steps_here = 0;
    let mut stopped_early = false;
    let mut nonfinite_run = 0;
    while trainer.step < total_steps {
        let t0 = Instant::now();
        let st = trainer.step(data)?;
        if st.interrupted {
            save(&trainer, &*data, tokens, elapsed)?;
            stopped_early = true;
            tracing::warn!(
                "{}: stopping within step {} (abandoned; checkpoint of step {} written)",
                opts.label,
                trainer.step + 1,
                trainer.step
            );
            break;
        }
        if st.skipped {
            nonfinite_run += 1;
            let what = log.skipped(&st, trainer.step, nonfinite_run)?;
            if nonfinite_run >= cfg.train.max_nonfinite_steps {
                log.progress.finish();
                return Err(diverged(&ckpt_root, trainer.step, nonfinite_run, what));
            }
            continue;
        }
        nonfinite_run = 0;
        let dt = t0.elapsed().as_secs_f64();
        elapsed += dt;
        let step_tokens = (cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum) as u64;
        tokens += step_tokens;
        last_loss = st.loss;
        steps_here += 1;
        let s = trainer.step;
        let tok_s = step_tokens as f64 / dt.max(1e-9);
        let moe = trainer.model.cfg.is_moe();
        let rec = step_record(&st, s, tokens, tok_s, dt, elapsed, moe);
        log.completed(&st, rec, s, tok_s)?;
        let every = cfg.train.checkpoint_every;
        let stop =
            signal::stop_requested() || opts.max_steps_this_run.is_some_and(|m| steps_here >= m);
        if (every > 0 && s % every == 0) || s == total_steps || stop {
            save(&trainer, &*data, tokens, elapsed)?;
            last_saved = s;
        }
        if stop && s < total_steps {
            stopped_early = true;
            tracing::warn!("{}: stopping at step {s} (checkpoint written)", opts.label);
            break;
        }
    }
    log.progress.finish();
    if nonfinite_run > 0 && !stopped_early {
        // The run ended on skipped steps (fewer than max_nonfinite_steps of them): what it
        // would call its final model is not what its last steps trained.
        let what = "loss or gradient norm".into();
        return Err(diverged(&ckpt_root, trainer.step, nonfinite_run, what));
    }
    let model_dir = out.join("model");
    if !stopped_early {
        if last_saved != trainer.step {
            save(&trainer, &*data, tokens, elapsed)?;
        }
        write_final_model(&trainer.model, &model_dir, &opts.save)?;
    }
    Ok(TrainOutcome {
        steps: trainer.step,
        tokens,
        wall_s: elapsed,
        final_loss: last_loss,
        stopped_early,
        model_dir,
    })
}

/// The trainer to run, with the tokens and seconds the run has spent: with `opts.resume`
/// from the newest complete checkpoint if there is one, else new from `init`. Without
/// `opts.resume`, an existing checkpoint refuses the run.
fn start(
    init: Model,
    data: &mut dyn BatchSource,
    cfg: &TrainerConfig,
    out: &Path,
    opts: &TrainOpts,
    ckpt_root: &Path,
) -> Result<(Trainer, u64, f64), TrainError> {
    let latest = if opts.resume {
        checkpoint::load_latest(ckpt_root, &Device::flex()).map(Some)
    } else {
        checkpoint::find_latest(ckpt_root).map(|_| None)
    };
    match latest {
        Some(Some((dir, loaded))) => resume(&dir, loaded, data, cfg, opts),
        Some(None) => Err(TrainError::AlreadyStarted {
            dir: out.to_path_buf(),
        }),
        None => Ok((Trainer::new(init, cfg.clone(), &opts.device)?, 0, 0.0)),
    }
}

/// The trainer, tokens and seconds of the checkpoint `loaded` (read from `dir`), with its
/// optimizer state and the data source's cursor restored.
fn resume(
    dir: &Path,
    loaded: checkpoint::Loaded,
    data: &mut dyn BatchSource,
    cfg: &TrainerConfig,
    opts: &TrainOpts,
) -> Result<(Trainer, u64, f64), TrainError> {
    let total_steps = cfg.train.steps;
    let changes = checkpoint::resume_changes(dir, &loaded.state, cfg)?;
    for (key, old, new) in &changes {
        tracing::warn!(
            "{}: resuming with {key} changed: {old} -> {new}",
            opts.label
        );
    }
    if loaded.state.step > total_steps {
        return Err(TrainError::ConfigChanged {
            dir: dir.to_path_buf(),
            what: format!(
                "the checkpoint is at step {}, beyond train.steps {total_steps}; resume with train.steps >= {}",
                loaded.state.step, loaded.state.step
            ),
        });
    }
    let mut trainer = Trainer::new(loaded.model, cfg.clone(), &opts.device)?;
    let shapes: BTreeMap<String, [usize; 2]> = {
        let mut m = BTreeMap::new();
        trainer.model.visit(|n, t| {
            m.insert(n.to_string(), t.dims());
        });
        m
    };
    let dev = trainer.device().inner();
    trainer
        .opt
        .import(loaded.state.optimizer_t, &loaded.moments, &shapes, &dev)
        .map_err(|msg| TrainError::Corrupt {
            path: dir.join("optimizer.safetensors"),
            msg,
        })?;
    data.restore(&loaded.state.data_cursor)
        .map_err(|msg| TrainError::Corrupt {
            path: dir.join("state.json"),
            msg,
        })?;
    trainer.step = loaded.state.step;
    tracing::info!(
        "{}: resuming from {} (step {}/{})",
        opts.label,
        dir.display(),
        trainer.step,
        total_steps
    );
    Ok((trainer, loaded.state.tokens, loaded.state.elapsed_s))
}

/// Where a run reports its steps: `metrics.jsonl`, the progress bar and the log.
struct StepLog<'a> {
    metrics: MetricsLog,
    progress: Progress,
    cfg: &'a TrainerConfig,
    label: &'a str,
}

impl StepLog<'_> {
    /// A step skipped for a non-finite loss or gradient norm (the `nonfinite_run`th in a
    /// row), and what was not finite.
    fn skipped(
        &mut self,
        st: &StepStats,
        step: usize,
        nonfinite_run: usize,
    ) -> Result<String, TrainError> {
        let what = if st.total_loss.is_finite() {
            format!("gradient norm ({})", st.grad_norm)
        } else {
            format!("loss ({})", st.total_loss)
        };
        tracing::warn!(
            "{} step {}: non-finite {what}; update skipped ({nonfinite_run} of at most {} in a row)",
            self.label,
            step,
            self.cfg.train.max_nonfinite_steps
        );
        self.metrics.write(
            &json!({"step": step, "skipped": true, "loss": st.loss, "grad_norm": st.grad_norm}),
        )?;
        Ok(what)
    }

    /// Step `s` done, with its record `rec`: the expert load (and dead experts) every
    /// `log_every` steps and at the last, the record, the progress bar, and a log line where
    /// there is no bar.
    fn completed(
        &mut self,
        st: &StepStats,
        mut rec: serde_json::Value,
        s: usize,
        tok_s: f64,
    ) -> Result<(), TrainError> {
        let total_steps = self.cfg.train.steps;
        let log_every = self.cfg.train.log_every.max(1);
        let log_now = s.is_multiple_of(log_every) || s == total_steps;
        if log_now && !st.expert_load.is_empty() {
            rec["expert_load"] = json!(st.expert_load);
            warn_dead_experts(
                self.label,
                s,
                &st.expert_load,
                self.cfg.moe.dead_expert_threshold,
            );
        }
        self.metrics.write(&rec)?;
        self.progress.update(s, st.loss, tok_s);
        if log_now && !self.progress.is_bar() {
            tracing::info!(
                "{} step {s}/{total_steps} loss {:.4} lr {:.2e} gnorm {:.3} {:.0} tok/s",
                self.label,
                st.loss,
                st.lr,
                st.grad_norm,
                tok_s
            );
        }
        Ok(())
    }
}

/// A checkpoint of the trainer at its current step, with the data cursor and the run's totals.
fn save_checkpoint(
    ckpt_root: &Path,
    cfg: &TrainerConfig,
    tr: &Trainer,
    data: &dyn BatchSource,
    tokens: u64,
    elapsed: f64,
) -> Result<PathBuf, TrainError> {
    let state = CheckpointState {
        step: tr.step,
        optimizer_t: tr.opt.t,
        data_cursor: data.cursor(),
        tokens,
        elapsed_s: elapsed,
        config: checkpoint::config_json(cfg),
    };
    checkpoint::save(
        ckpt_root,
        &tr.model,
        &tr.opt,
        &state,
        cfg.train.keep_checkpoints,
    )
}

/// The run diverged: `steps` non-finite steps in a row up to `step`, of `what`.
fn diverged(ckpt_root: &Path, step: usize, steps: usize, what: String) -> TrainError {
    TrainError::Diverged {
        step,
        steps,
        what,
        last_good: checkpoint::find_latest(ckpt_root)
            .map_or("none (no checkpoint was written yet)".into(), |(_, p)| {
                p.display().to_string()
            }),
    }
}

/// A step's `metrics.jsonl` record (without the expert load, which is logged every
/// `log_every` steps only).
fn step_record(
    st: &StepStats,
    step: usize,
    tokens: u64,
    tok_s: f64,
    dt: f64,
    elapsed: f64,
    moe: bool,
) -> serde_json::Value {
    let mut rec = json!({
        "step": step, "loss": st.loss, "lr": st.lr, "grad_norm": st.grad_norm,
        "tokens": tokens, "tokens_per_s": tok_s, "step_s": dt, "elapsed_s": elapsed,
    });
    if moe {
        rec["lb_loss"] = json!(st.lb_loss);
        rec["z_loss"] = json!(st.z_loss);
        rec["total_loss"] = json!(st.total_loss);
        if st.dropped_tokens > 0 {
            rec["dropped_tokens"] = json!(st.dropped_tokens);
        }
    }
    rec
}

/// `out/model/` via a staging directory and a rename, so it is complete or absent (a trainer
/// owns its output directory, so an older export is replaced).
fn write_final_model(
    model: &Model,
    dir: &Path,
    save: &btx_model::io::SaveOpts,
) -> Result<(), TrainError> {
    checkpoint::check_finite(model, dir)?;
    let staged = btx_core::outdir::OutDir::create(dir, &[], btx_core::outdir::Existing::Replace)?;
    model.save_as(staged.path(), save)?;
    staged.commit()?;
    Ok(())
}

fn warn_dead_experts(label: &str, step: usize, load: &[Vec<f64>], threshold: f64) {
    for (l, row) in load.iter().enumerate() {
        for (e, &f) in row.iter().enumerate() {
            if f < threshold {
                tracing::warn!(
                    "{label} step {step}: expert {e} of layer {l} received {:.2}% of tokens (dead expert?)",
                    f * 100.0
                );
            }
        }
    }
}
