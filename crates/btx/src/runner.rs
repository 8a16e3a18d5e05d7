//! `btx run RECIPE --out DIR [--jobs N]`: compile the recipe into a plan, decide which stages
//! are finished, stale or half-done, and hand the rest to an executor (`local.rs`, `slurm.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::executor::{Executor, Outcome, State};
use crate::local::{gpu_ids, LocalExecutor};
use crate::manifest;
use crate::plan::Plan;
use crate::recipe::Recipe;

#[derive(clap::Args)]
pub struct Args {
    /// The experiment recipe (TOML); see examples/quick.toml.
    pub recipe: PathBuf,
    /// Run directory (created; re-running continues it).
    #[arg(long)]
    pub out: PathBuf,
    /// Stages to run at once (training stages share the cores).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Override a recipe value, e.g. --set experts.train.steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Only plan: print the stages and their states; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `local` (child processes, default) or `slurm` (batch jobs; see the README).
    #[arg(long, default_value = "local")]
    pub executor: String,
    /// With `--executor slurm`: wait until every job has ended.
    #[arg(long)]
    pub wait: bool,
    /// With `--device cuda` and the local executor: the GPUs to spread stages over, as a count
    /// (`4` = GPUs 0-3) or a list of ids (`0,2,5`). Each stage process sees one GPU
    /// (`CUDA_VISIBLE_DEVICES`), the least busy; with `--jobs` = the GPU count the experts
    /// train at once, one GPU each. Default: CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi
    /// lists, else GPU 0.
    #[arg(long, value_name = "N|IDS")]
    pub gpus: Option<String>,
}

/// Classifies every stage; with `wipe`, clears directories whose configuration changed.
pub fn prepare_states(plan: &Plan, run: &Path, wipe: bool) -> Result<BTreeMap<String, State>> {
    let mut states = BTreeMap::new();
    for s in &plan.stages {
        let dir = run.join(&s.dir);
        let st = if manifest::is_done(&dir, &s.fingerprint) {
            State::Done
        } else {
            let same = manifest::read_started(&dir).is_some_and(|x| x.fingerprint == s.fingerprint);
            if wipe && dir.exists() && !same {
                if let Some(h) = crate::lock::holder(&dir) {
                    bail!(
                        "stage {} changed configuration but {} is still in use by {}\nhint: stop it first (`btx cancel {}`), then run again",
                        s.name,
                        dir.display(),
                        h.describe(),
                        run.display()
                    );
                }
                // Finished or started with another configuration: its outputs are stale.
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("clearing stale stage {}", dir.display()))?;
                tracing::info!("{}: configuration changed, redoing", s.name);
            }
            if same {
                State::Partial
            } else {
                State::Pending
            }
        };
        states.insert(s.name.clone(), st);
    }
    Ok(states)
}

pub fn run(a: Args, device: &str) -> Result<()> {
    // Local stages run here: open the device now, so that a missing GPU is one error up front.
    // Slurm stages run elsewhere: this node may have none.
    if a.executor == "local" {
        crate::runtime::device(device)?;
    } else {
        crate::runtime::check_device_name(device)?;
    }
    if a.gpus.is_some() && (device != "cuda" || a.executor != "local") {
        bail!(
            "--gpus spreads local stages over GPUs: it needs --device cuda and the local executor\nhint: on Slurm, ask for GPUs per stage in the recipe ([slurm.experts] / [slurm.train] gres = \"gpu:1\")"
        );
    }
    let (recipe, raw) = Recipe::load(&a.recipe, &a.sets)?;
    let base = a
        .recipe
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .canonicalize()?;
    let plan = Plan::from_recipe(&recipe, &base)?;
    std::fs::create_dir_all(&a.out)?;
    let out = a.out.canonicalize()?;
    // One `btx run` per run directory, for as long as it runs (a dry run writes nothing but
    // still must not read a plan half-written by another).
    let _lock = crate::lock::DirLock::acquire(&out, "btx run")?;
    if !a.dry_run {
        std::fs::copy(&a.recipe, out.join("recipe.toml"))?;
        std::fs::write(
            out.join("recipe.resolved.toml"),
            toml::to_string_pretty(&raw)?,
        )?;
    }
    if !a.dry_run {
        plan.save(&out)?;
    }
    let states = prepare_states(&plan, &out, !a.dry_run)?;
    let todo: Vec<&String> = states
        .iter()
        .filter(|(_, s)| **s != State::Done)
        .map(|(n, _)| n)
        .collect();
    errln!(
        "btx run {}: {} stages, {} to run ({} done){}",
        a.recipe.display(),
        plan.stages.len(),
        todo.len(),
        plan.stages.len() - todo.len(),
        if a.dry_run { " [dry run]" } else { "" }
    );
    if a.dry_run {
        for s in &plan.stages {
            outln!(
                "{:<28} {:<10} {:?} deps {:?}",
                s.name,
                s.fingerprint,
                states[&s.name],
                s.deps
            );
        }
        return Ok(());
    }
    let mut exec: Box<dyn Executor> = match a.executor.as_str() {
        "local" => Box::new(LocalExecutor {
            jobs: a.jobs,
            total_threads: rayon::current_num_threads(),
            device: device.into(),
            gpus: if device == "cuda" {
                gpu_ids(a.gpus.as_deref())?
            } else {
                vec![]
            },
        }),
        "slurm" => Box::new(crate::slurm::SlurmExecutor {
            section: recipe.slurm.clone(),
            wait: a.wait,
            device: device.into(),
        }),
        other => bail!("--executor {other:?}: local or slurm"),
    };
    let outcomes = exec.execute(&plan, &out, &states)?;
    if outcomes.values().any(|o| *o == Outcome::Submitted) {
        return Ok(());
    }
    print_summary(&plan, &out, &outcomes);
    let failed: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| !matches!(o, Outcome::Done { .. } | Outcome::AlreadyDone))
        .map(|(n, _)| n)
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} stage(s) did not finish: {}\nhint: see each stage's log.txt; `btx run` again resumes and runs only what is missing",
            failed.len(),
            failed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    errln!("all stages done: {}", out.display());
    Ok(())
}

fn print_summary(plan: &Plan, run: &Path, outcomes: &BTreeMap<String, Outcome>) {
    outln!(
        "{:<26} {:<16} {:>9} {:>12} {:>10}",
        "stage",
        "state",
        "wall s",
        "tokens",
        "GFLOP"
    );
    for s in &plan.stages {
        let m = manifest::read_manifest(&run.join(&s.dir));
        let state = match outcomes.get(&s.name) {
            Some(Outcome::AlreadyDone) => "done (skipped)".to_string(),
            Some(Outcome::Done { .. }) => "done".to_string(),
            Some(Outcome::Failed { code }) => format!(
                "failed ({})",
                code.map_or("signal".into(), |c| c.to_string())
            ),
            Some(Outcome::Stopped) => "stopped".to_string(),
            Some(Outcome::Blocked { by }) => format!("blocked by {by}"),
            Some(Outcome::Submitted) => "submitted".to_string(),
            None => "-".to_string(),
        };
        let (w, t, f) = m.map_or((0.0, 0, 0.0), |m| {
            (
                m.compute.wall_seconds,
                m.compute.train_tokens,
                m.compute.train_flops / 1e9,
            )
        });
        outln!(
            "{:<26} {:<16} {:>9.1} {:>12} {:>10.1}",
            s.name,
            state,
            w,
            t,
            f
        );
    }
}
