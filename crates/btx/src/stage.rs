//! `btx stage NAME --run DIR`: run one stage of a plan in this process. This is the unit every
//! executor schedules: it reads only its upstream stages' outputs and writes only its own
//! directory, finishing with `manifest.json` and `DONE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::{DataDir, MixConfig};
use btx_mix::average;
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use btx_train::TrainOpts;
use serde_json::json;

use crate::jobs;
use crate::jobs::mix::MixJob;
use crate::manifest::{self, Compute, Manifest, Started};
use crate::plan::{model_dir, Plan, Stage, StageKind};
use crate::runtime::EXIT_STOPPED;

#[derive(clap::Args)]
pub struct Args {
    /// Stage name, e.g. `expert:math` (see plan.json in the run directory).
    pub name: String,
    /// The run directory (made by `btx run`).
    #[arg(long)]
    pub run: PathBuf,
}

/// Root of the prepared data a data stage produced.
pub fn data_root(run: &Path, data_stage: &Stage) -> PathBuf {
    run.join(&data_stage.dir).join("tokens")
}

fn copy_dir_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let keep = name == "config.json"
            || name == "tokenizer.json"
            || name == btx_data::TOKENIZER_CONFIG
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if keep && e.path().is_file() {
            std::fs::copy(e.path(), to.join(&name))
                .with_context(|| format!("copying {} to {}", e.path().display(), to.display()))?;
        }
    }
    Ok(())
}

pub fn run(a: Args, dev: &Device, device_name: &str) -> Result<()> {
    let plan = Plan::load(&a.run)?;
    let stage = plan.stage(&a.name)?.clone();
    let dir = a.run.join(&stage.dir);
    for d in &stage.deps {
        let ds = plan.stage(d)?;
        let why = match manifest::check(&plan, &a.run, ds) {
            v if v.is_done() => continue,
            manifest::Verdict::Broken(w) | manifest::Verdict::Stale(w) => {
                format!("whose DONE no longer holds: {w}")
            }
            _ => "which has not finished".to_string(),
        };
        bail!(
            "stage {:?} needs {d:?}, {why}\nhint: run `btx run` on the recipe (it redoes what is missing), or `btx stage {d} --run {}` first",
            stage.name,
            a.run.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // One process per stage directory: a second trainer in the same checkpoints is refused.
    let _lock = crate::lock::DirLock::acquire(&dir, &format!("stage {}", stage.name))?;
    match manifest::check(&plan, &a.run, &stage) {
        v if v.is_done() => {
            // Scheduled because something upstream was redone; it came out the same.
            errln!(
                "stage {} is already done (its outputs and what it read are unchanged)",
                stage.name
            );
            return Ok(());
        }
        v => {
            if let Some(why) = v.redo_reason() {
                tracing::warn!("stage {}: {why}; redoing it", stage.name);
                clear_stage_dir(&dir)?;
            }
        }
    }
    if let Some(s) = manifest::read_started(&dir) {
        if s.fingerprint != stage.fingerprint {
            bail!(
                "{} holds a stage with another configuration (fingerprint {} vs {})\nhint: `btx run` clears stale stages; do not run `btx stage` on them by hand",
                dir.display(),
                s.fingerprint,
                stage.fingerprint
            );
        }
    }
    let started = Started {
        stage: stage.name.clone(),
        fingerprint: stage.fingerprint.clone(),
        started_unix: manifest::now_unix(),
        host: crate::lock::hostname(),
        pid: std::process::id(),
        device: crate::runtime::device_label(device_name),
        threads: rayon::current_num_threads(),
    };
    manifest::start(&dir, &started)?;
    tracing::info!(
        "stage {} ({}) in {}",
        stage.name,
        stage.fingerprint,
        dir.display()
    );
    // What this stage reads, as it is now (its dependencies are checked above).
    let reads = manifest::reads_now(&plan, &a.run, &stage);
    let t0 = std::time::Instant::now();
    let (mut compute, outputs) = execute(&plan, &stage, &a.run, &dir, dev)?;
    compute.wall_seconds = compute.wall_seconds.max(t0.elapsed().as_secs_f64());
    let inputs: BTreeMap<String, String> = stage
        .deps
        .iter()
        .map(|d| {
            (
                d.clone(),
                plan.stage(d)
                    .map(|s| s.fingerprint.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let files = crate::record::OutputRecord::of(&a.run, &crate::record::outputs(&stage).0)?;
    let m = Manifest {
        stage: stage.name.clone(),
        fingerprint: stage.fingerprint.clone(),
        inputs,
        config: serde_json::to_value(&stage.kind)?,
        compute,
        outputs,
        btx_version: env!("CARGO_PKG_VERSION").into(),
        finished_unix: manifest::now_unix(),
        device: crate::runtime::device_label(device_name),
        threads: rayon::current_num_threads(),
        files: Some(files),
        reads,
    };
    manifest::finish(&dir, &m)?;
    tracing::info!(
        "stage {} done in {:.1}s",
        stage.name,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Empties a stage directory whose DONE no longer holds, except its lock (held by this
/// process) and its log (which keeps the history, this redo included).
fn clear_stage_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        if name == crate::lock::LOCK || name == "log.txt" {
            continue;
        }
        let p = e.path();
        let r = if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("clearing {}", p.display()))?;
    }
    Ok(())
}

fn params_compute(cfg: &ModelConfig) -> Compute {
    Compute {
        total_params: cfg.total_params() as u64,
        active_params: cfg.active_params() as u64,
        ..Default::default()
    }
}

fn execute(
    plan: &Plan,
    stage: &Stage,
    run: &Path,
    dir: &Path,
    dev: &Device,
) -> Result<(Compute, serde_json::Value)> {
    let model_out = dir.join("model");
    let model_of = |name: &str| -> Result<PathBuf> { Ok(model_dir(run, plan.stage(name)?)) };
    match &stage.kind {
        StageKind::Data {
            section,
            base,
            tokenizer_from,
        } => {
            let root = data_root(run, stage);
            match (&section.dir, &section.prepare) {
                (Some(d), None) => {
                    let d = if d.is_absolute() {
                        d.clone()
                    } else {
                        base.join(d)
                    };
                    // Adopted as it is: every shard is read and checked against its manifest
                    // once here, since the stages after this one trust it.
                    DataDir::open(&d)?
                        .verify()
                        .with_context(|| format!("[data] dir {}", d.display()))?;
                    let _ = std::fs::remove_file(&root);
                    std::os::unix::fs::symlink(&d, &root).with_context(|| {
                        format!("linking {} to {}", root.display(), d.display())
                    })?;
                }
                (None, Some(p)) => {
                    let mut p = p.clone();
                    if let Some(from) = tokenizer_from {
                        p.tokenizer.path = Some(model_of(from)?.join("tokenizer.json"));
                    }
                    btx_data::prepare_verified(&p, base, &root, Existing::Replace)
                        .context("preparing data")?;
                }
                _ => bail!("[data] needs exactly one of dir or prepare"),
            }
            let m = DataDir::open(&root)?.manifest;
            Ok((Compute::default(), serde_json::to_value(&m.domains)?))
        }
        StageKind::SeedCopy { path } => {
            let cfg = ModelConfig::load(&path.join("config.json"))?;
            if !path.join("tokenizer.json").exists() {
                bail!(
                    "{} has no tokenizer.json\nhint: BTX needs the seed's tokenizer to prepare data",
                    path.display()
                );
            }
            let staged = btx_core::outdir::OutDir::create(&model_out, &[path], Existing::Replace)?;
            copy_dir_files(path, staged.path())?;
            Model::load(staged.path(), &Device::flex())
                .with_context(|| format!("the seed in {} does not load", path.display()))?;
            staged.commit()?;
            Ok((params_compute(&cfg), json!({"source": path})))
        }
        StageKind::SeedGguf { path } => {
            let cfg = btx_gguf::import::import_gguf(path, &model_out, Existing::Replace)?;
            Ok((params_compute(&cfg), json!({"source": path})))
        }
        StageKind::Train { from, spec, data } => {
            let data_dir = DataDir::open(&data_root(run, plan.stage(data)?))?;
            let from_dir = from.as_deref().map(&model_of).transpose()?;
            if from_dir.is_none() && spec.init.is_none() {
                bail!("a new model needs an init shape");
            }
            let init = jobs::train::initial_model(
                from_dir.as_deref(),
                spec.init.as_ref(),
                &data_dir,
                spec.train.seed,
            )?;
            let cfg = init.cfg.clone();
            let tc = spec.trainer();
            let mix = MixConfig {
                weights: spec.weights.clone(),
                split: None,
            };
            let opts = TrainOpts {
                device: dev.clone(),
                resume: true,
                progress: true,
                label: stage.name.clone(),
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
            let out = jobs::train::train(init, &data_dir, &mix, &tc, dir, &opts)?;
            if out.stopped_early {
                errln!(
                    "{}: stopped at step {} with a checkpoint",
                    stage.name,
                    out.steps
                );
                std::process::exit(EXIT_STOPPED);
            }
            let mut c = params_compute(&cfg);
            c.train_tokens = out.tokens;
            c.train_flops = out.tokens as f64 * cfg.train_flops_per_token(tc.train.seq_len);
            c.wall_seconds = out.wall_s;
            c.tokens_per_s = out.tokens as f64 / out.wall_s.max(1e-9);
            Ok((c, json!({"final_loss": out.final_loss, "steps": out.steps})))
        }
        StageKind::Mix {
            seed,
            experts,
            domains,
            spec,
            data,
            router_seed,
        } => {
            let expert_dirs = experts
                .iter()
                .map(|e| model_of(e))
                .collect::<Result<Vec<_>>>()?;
            let t0 = std::time::Instant::now();
            let s = jobs::mix::mix(&MixJob {
                seed: &model_of(seed)?,
                experts: &expert_dirs,
                spec,
                domains: Some(domains),
                domain_data: Some(&data_root(run, plan.stage(data)?)),
                router_seed: *router_seed,
                // A stage owns its directory; a retried stage replaces its own earlier output.
                existing: Existing::Replace,
                out: &model_out,
                dtype: None,
                max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
            })?;
            let cfg = ModelConfig::load(&model_out.join("config.json"))?;
            let mut c = params_compute(&cfg);
            // The whole stage: a measured or fitted router start is part of what the MiX costs.
            c.wall_seconds = t0.elapsed().as_secs_f64();
            Ok((c, serde_json::to_value(&s)?))
        }
        StageKind::Upcycle {
            seed,
            num_experts,
            spec,
            router_seed,
        } => {
            let s = jobs::mix::upcycle(
                &model_of(seed)?,
                *num_experts,
                spec,
                1000 + router_seed,
                Existing::Replace,
                &model_out,
            )?;
            let cfg = ModelConfig::load(&model_out.join("config.json"))?;
            let mut c = params_compute(&cfg);
            c.wall_seconds = s.seconds;
            Ok((c, serde_json::to_value(&s)?))
        }
        StageKind::Eval {
            method,
            models,
            ensemble,
            data,
            spec,
            routing,
            oracle,
        } => {
            let data_dir = DataDir::open(&data_root(run, plan.stage(data)?))?;
            let loaded = models
                .iter()
                .map(|m| jobs::eval::load(&model_of(m)?, &data_dir, dev))
                .collect::<Result<Vec<_>>>()?;
            let me = if *oracle {
                let mut m = loaded
                    .into_iter()
                    .next()
                    .context("an oracle evaluates one model")?;
                if m.cfg.expert_labels.is_empty() {
                    // A MiX from before btx_experts: the plan knows the expert order.
                    m.cfg.expert_labels = plan.expert_labels(m.cfg.num_experts());
                }
                jobs::eval::oracle(method, &m, &data_dir, &data_dir.domains(), spec)?
            } else {
                jobs::eval::eval(
                    method,
                    loaded,
                    *ensemble,
                    &data_dir,
                    &data_dir.domains(),
                    spec,
                    *routing,
                )?
            };
            btx_core::atomic::write_file(
                &dir.join("eval.json"),
                serde_json::to_string_pretty(&me)?.as_bytes(),
            )?;
            Ok((
                Compute::default(),
                json!({"method": method, "average": me.result.average}),
            ))
        }
        StageKind::OptOut {
            method,
            model,
            data,
            spec,
        } => {
            let data_dir = DataDir::open(&data_root(run, plan.stage(data)?))?;
            let domains = data_dir.domains();
            let d = model_of(model)?;
            let mut m = Model::load(&d, dev).with_context(|| format!("loading {}", d.display()))?;
            if m.cfg.expert_labels.is_empty() {
                // A MiX from before btx_experts: the plan knows the expert order.
                m.cfg.expert_labels = plan.expert_labels(m.cfg.num_experts());
            }
            let o = jobs::eval::opt_out(method, &m, &data_dir, &domains, spec)?;
            btx_core::atomic::write_file(
                &dir.join("optout.json"),
                serde_json::to_string_pretty(&o)?.as_bytes(),
            )?;
            let cost: serde_json::Map<String, serde_json::Value> = o
                .removed
                .iter()
                .map(|(l, r)| (l.clone(), json!(r.average.loss - o.full.average.loss)))
                .collect();
            Ok((
                Compute::default(),
                json!({"method": method, "average_loss_increase": cost}),
            ))
        }
        StageKind::Report => {
            crate::report::build(plan, run)?;
            Ok((Compute::default(), json!({"report": run.join("report.md")})))
        }
        StageKind::Average { models } => {
            let dirs = models
                .iter()
                .map(|m| model_of(m))
                .collect::<Result<Vec<_>>>()?;
            let s = average(&dirs, None, &model_out, Existing::Replace)?;
            let cfg = ModelConfig::load(&model_out.join("config.json"))?;
            let mut c = params_compute(&cfg);
            c.wall_seconds = s.seconds;
            Ok((c, serde_json::to_value(&s)?))
        }
        StageKind::AddExpert {
            model,
            expert,
            domain,
            data,
        } => {
            let t0 = std::time::Instant::now();
            let (moe, dense) = (model_of(model)?, model_of(expert)?);
            let data = data_root(run, plan.stage(data)?);
            let s = jobs::add::add_expert(&jobs::add::AddJob {
                moe: &moe,
                dense: &dense,
                name: domain,
                data: &data,
                margin: jobs::add::DEFAULT_MARGIN,
                max_distance: jobs::add::DEFAULT_MAX_DISTANCE,
                // A stage owns its directory; a retried stage replaces its own earlier output.
                existing: Existing::Replace,
                dtype: None,
                max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
                out: &model_out,
            })?;
            let cfg = ModelConfig::load(&model_out.join("config.json"))?;
            let mut c = params_compute(&cfg);
            c.wall_seconds = t0.elapsed().as_secs_f64();
            Ok((c, serde_json::to_value(&s)?))
        }
    }
}
