//! `btx stage NAME --run DIR`: run one stage of a plan in this process. This is the unit every
//! executor schedules: it reads only its upstream stages' outputs and writes only its own
//! directory, finishing with `manifest.json` and `DONE`. What the stage computes is its kind's
//! job (`crate::jobs`); this is the bookkeeping around it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_model::burn::prelude::Device;

use crate::jobs::{self, JobOutcome, StageCtx};
use crate::plan::Plan;
use crate::run::manifest::{self, Manifest, Started};

/// How a stage ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StageEnd {
    /// Ran and wrote its DONE.
    Done,
    /// Its DONE held (scheduled because something upstream was redone; it came out the same).
    AlreadyDone,
    /// Stopped on a signal with a checkpoint at `steps` (no DONE; the next run resumes it).
    Stopped { steps: usize },
}

/// Runs stage `name` of the run directory `run`: its upstream DONEs checked, its directory
/// locked, `stage.json` at the start and `manifest.json` + `DONE` at the end.
pub fn run_stage(run: &Path, name: &str, dev: &Device, device_name: &str) -> Result<StageEnd> {
    let plan = Plan::load(run)?;
    let stage = plan.stage(name)?.clone();
    let dir = run.join(&stage.dir);
    for d in &stage.deps {
        let ds = plan.stage(d)?;
        let why = match manifest::check(&plan, run, ds) {
            v if v.is_done() => continue,
            manifest::Verdict::Broken(w) | manifest::Verdict::Stale(w) => {
                format!("whose DONE no longer holds: {w}")
            }
            _ => "which has not finished".to_string(),
        };
        bail!(
            "stage {:?} needs {d:?}, {why}\nhint: run `btx run` on the recipe (it redoes what is missing), or `btx stage {d} --run {}` first",
            stage.name,
            run.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // One process per stage directory: a second trainer in the same checkpoints is refused.
    let _lock = crate::run::lock::DirLock::acquire(&dir, &format!("stage {}", stage.name))?;
    match manifest::check(&plan, run, &stage) {
        v if v.is_done() => {
            // Scheduled because something upstream was redone; it came out the same.
            errln!(
                "stage {} is already done (its outputs and what it read are unchanged)",
                stage.name
            );
            return Ok(StageEnd::AlreadyDone);
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
        stage: stage.name.to_string(),
        fingerprint: stage.fingerprint.clone(),
        started_unix: manifest::now_unix(),
        host: crate::run::lock::hostname(),
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
    let reads = manifest::reads_now(&plan, run, &stage);
    let t0 = std::time::Instant::now();
    let ctx = StageCtx {
        plan: &plan,
        stage: &stage,
        run,
        dir: &dir,
        dev,
    };
    let (mut compute, outputs) = match jobs::run(&ctx)? {
        JobOutcome::Done { compute, outputs } => (compute, outputs),
        JobOutcome::Stopped { steps } => return Ok(StageEnd::Stopped { steps }),
    };
    compute.wall_seconds = compute.wall_seconds.max(t0.elapsed().as_secs_f64());
    let inputs: BTreeMap<String, String> = stage
        .deps
        .iter()
        .map(|d| {
            (
                d.to_string(),
                plan.stage(d)
                    .map(|s| s.fingerprint.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let files = crate::run::record::OutputRecord::of(run, &crate::run::record::outputs(&stage).0)?;
    let m = Manifest {
        stage: stage.name.to_string(),
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
    Ok(StageEnd::Done)
}

/// Empties a stage directory whose DONE no longer holds, except its lock (held by this
/// process) and its log (which keeps the history, this redo included).
fn clear_stage_dir(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        if name == crate::run::lock::LOCK || name == "log.txt" {
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
