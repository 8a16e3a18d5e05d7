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
use crate::trainer::Trainer;

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
    let latest = if opts.resume {
        checkpoint::load_latest(&ckpt_root, &Device::flex()).map(Some)
    } else {
        checkpoint::find_latest(&ckpt_root).map(|_| None)
    };
    let mut trainer;
    let (mut tokens, mut elapsed) = (0u64, 0f64);
    match latest {
        Some(Some((dir, loaded))) => {
            let changes = checkpoint::resume_changes(&dir, &loaded.state, cfg)?;
            for (key, old, new) in &changes {
                tracing::warn!(
                    "{}: resuming with {key} changed: {old} -> {new}",
                    opts.label
                );
            }
            if loaded.state.step > total_steps {
                return Err(TrainError::ConfigChanged {
                    dir: dir.clone(),
                    what: format!(
                        "the checkpoint is at step {}, beyond train.steps {total_steps}; resume with train.steps >= {}",
                        loaded.state.step, loaded.state.step
                    ),
                });
            }
            trainer = Trainer::new(loaded.model, cfg.clone(), &opts.device)?;
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
            tokens = loaded.state.tokens;
            elapsed = loaded.state.elapsed_s;
            tracing::info!(
                "{}: resuming from {} (step {}/{})",
                opts.label,
                dir.display(),
                trainer.step,
                total_steps
            );
        }
        Some(None) => {
            return Err(TrainError::AlreadyStarted {
                dir: out.to_path_buf(),
            })
        }
        None => {
            trainer = Trainer::new(init, cfg.clone(), &opts.device)?;
        }
    }
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"), trainer.step)?;
    let progress = Progress::new(&opts.label, total_steps, trainer.step, opts.progress);
    let log_every = cfg.train.log_every.max(1);
    let save = |tr: &Trainer, data: &dyn BatchSource, tokens: u64, elapsed: f64| {
        let state = CheckpointState {
            step: tr.step,
            optimizer_t: tr.opt.t,
            data_cursor: data.cursor(),
            tokens,
            elapsed_s: elapsed,
            config: checkpoint::config_json(cfg),
        };
        checkpoint::save(
            &ckpt_root,
            &tr.model,
            &tr.opt,
            &state,
            cfg.train.keep_checkpoints,
        )
    };
    // A resume that has no step left to take (a finished run resumed) reports the loss its log
    // recorded for the last step, not NaN.
    let mut last_loss = metrics.resumed_loss().unwrap_or(f64::NAN);
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
            let what = if st.total_loss.is_finite() {
                format!("gradient norm ({})", st.grad_norm)
            } else {
                format!("loss ({})", st.total_loss)
            };
            tracing::warn!(
                "{} step {}: non-finite {what}; update skipped ({nonfinite_run} of at most {} in a row)",
                opts.label,
                trainer.step,
                cfg.train.max_nonfinite_steps
            );
            metrics.write(&json!({"step": trainer.step, "skipped": true, "loss": st.loss, "grad_norm": st.grad_norm}))?;
            if nonfinite_run >= cfg.train.max_nonfinite_steps {
                progress.finish();
                return Err(TrainError::Diverged {
                    step: trainer.step,
                    steps: nonfinite_run,
                    what,
                    last_good: checkpoint::find_latest(&ckpt_root)
                        .map_or("none (no checkpoint was written yet)".into(), |(_, p)| {
                            p.display().to_string()
                        }),
                });
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
        let mut rec = json!({
            "step": s, "loss": st.loss, "lr": st.lr, "grad_norm": st.grad_norm,
            "tokens": tokens, "tokens_per_s": tok_s, "step_s": dt, "elapsed_s": elapsed,
        });
        if trainer.model.cfg.is_moe() {
            rec["lb_loss"] = json!(st.lb_loss);
            rec["z_loss"] = json!(st.z_loss);
            rec["total_loss"] = json!(st.total_loss);
            if st.dropped_tokens > 0 {
                rec["dropped_tokens"] = json!(st.dropped_tokens);
            }
        }
        let log_now = s % log_every == 0 || s == total_steps;
        if log_now && !st.expert_load.is_empty() {
            rec["expert_load"] = json!(st.expert_load);
            warn_dead_experts(
                &opts.label,
                s,
                &st.expert_load,
                cfg.moe.dead_expert_threshold,
            );
        }
        metrics.write(&rec)?;
        progress.update(s, st.loss, tok_s);
        if log_now && !progress.is_bar() {
            tracing::info!(
                "{} step {s}/{total_steps} loss {:.4} lr {:.2e} gnorm {:.3} {:.0} tok/s",
                opts.label,
                st.loss,
                st.lr,
                st.grad_norm,
                tok_s
            );
        }
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
    progress.finish();
    if nonfinite_run > 0 && !stopped_early {
        // The run ended on skipped steps (fewer than max_nonfinite_steps of them): what it
        // would call its final model is not what its last steps trained.
        return Err(TrainError::Diverged {
            step: trainer.step,
            steps: nonfinite_run,
            what: "loss or gradient norm".into(),
            last_good: checkpoint::find_latest(&ckpt_root)
                .map_or("none (no checkpoint was written yet)".into(), |(_, p)| {
                    p.display().to_string()
                }),
        });
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
