//! `btx run RECIPE --out DIR [--jobs N]`: compile the recipe into a plan, decide which stages
//! are finished, stale or half-done, and hand the rest to an executor (`local.rs`, `slurm.rs`).

pub mod lock;
pub mod manifest;
pub mod record;
pub mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::exec::local::{gpu_ids, LocalExecutor};
use crate::exec::{Executor, Outcome, State};
use crate::plan::{Plan, StageId};
use crate::recipe::Recipe;

/// What `btx run` was asked to do (the command line's flags, parsed).
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The experiment recipe (TOML).
    pub recipe: PathBuf,
    /// Run directory (created; re-running continues it).
    pub out: PathBuf,
    /// Stages to run at once.
    pub jobs: usize,
    /// Recipe overrides, `KEY=VALUE`.
    pub sets: Vec<String>,
    /// Only plan: print the stages and their states; run nothing.
    pub dry_run: bool,
    pub executor: ExecutorKind,
    /// With the Slurm executor: wait until every job has ended.
    pub wait: bool,
    /// With `--device cuda` and the local executor: the GPUs to spread stages over, as a count
    /// or a list of ids (see [`gpu_ids`]).
    pub gpus: Option<String>,
}

/// Which executor runs the stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorKind {
    /// Child processes on this machine.
    Local,
    /// Slurm batch jobs.
    Slurm,
}

impl std::str::FromStr for ExecutorKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            "slurm" => Ok(Self::Slurm),
            other => bail!(
                "--executor {other:?} is not an executor\nhint: --executor local (child processes, the default) or slurm (batch jobs)"
            ),
        }
    }
}

/// A stage whose configuration changed (its name, its directory), cleared before the run.
pub type Stale = (StageId, PathBuf);

/// Classifies every stage, after checking each DONE (see `manifest::check`). Stages come in
/// dependency order. Also returns the directories of stages whose configuration changed (to
/// clear before running); refuses, before anything is written, when one is in use.
pub fn prepare_states(plan: &Plan, run: &Path) -> Result<(BTreeMap<StageId, State>, Vec<Stale>)> {
    let mut states: BTreeMap<StageId, State> = BTreeMap::new();
    let mut stale = vec![];
    for s in &plan.stages {
        let dir = run.join(&s.dir);
        let verdict = manifest::check(plan, run, s);
        let upstream = crate::run::record::reads(plan, s)
            .into_iter()
            .find(|(up, _)| states.get(&up.name).is_some_and(|st| *st != State::Done))
            .map(|(up, _)| up.name.clone());
        let st = match (&verdict, upstream) {
            (v, None) if v.is_done() => State::Done,
            (v, Some(up)) if v.is_done() => State::Recheck(format!("{up} runs first")),
            (v, _) if v.redo_reason().is_some() => {
                State::Redo(v.redo_reason().unwrap_or_default().to_string())
            }
            _ => {
                let same =
                    manifest::read_started(&dir).is_some_and(|x| x.fingerprint == s.fingerprint);
                if std::fs::symlink_metadata(&dir).is_ok() && !same {
                    if let Some(h) = crate::run::lock::holder(&dir) {
                        bail!(
                            "stage {} changed configuration but {} is still in use by {}\nhint: stop it first (`btx cancel {}`), then run again",
                            s.name,
                            dir.display(),
                            h.describe(),
                            run.display()
                        );
                    }
                    // Finished or started with another configuration: its outputs are stale.
                    stale.push((s.name.clone(), dir));
                }
                if same {
                    State::Partial
                } else {
                    State::Pending
                }
            }
        };
        states.insert(s.name.clone(), st);
    }
    Ok((states, stale))
}

/// Clears the directories of stages whose configuration changed.
fn clear_stale(stale: &[Stale]) -> Result<()> {
    for (name, dir) in stale {
        // A directory is cleared; a file or a link in its place is removed (never followed).
        let is_dir = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
        if is_dir {
            std::fs::remove_dir_all(dir)
        } else {
            std::fs::remove_file(dir)
        }
        .with_context(|| format!("clearing stale stage {}", dir.display()))?;
        tracing::info!("{name}: configuration changed, redoing");
    }
    Ok(())
}

/// The files and directories a recipe reads from outside its run directory: the seed
/// (`[seed] path` or `gguf`), the data directory, and what `[data.prepare]` reads (corpora,
/// task files, the tokenizer). Relative paths start at `base`, the recipe's directory.
pub fn recipe_inputs(r: &Recipe, base: &Path) -> Vec<PathBuf> {
    let at = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let mut v: Vec<PathBuf> = [&r.seed.path, &r.seed.gguf, &r.data.dir]
        .into_iter()
        .flatten()
        .map(|p| at(p))
        .collect();
    if let Some(prep) = &r.data.prepare {
        v.extend(prep.tokenizer.path.iter().map(|p| at(p)));
        for d in &prep.domains {
            for pat in &d.paths {
                if pat.contains(['*', '?', '[']) {
                    // A glob: the files it matches (validation made sure there are some).
                    v.extend(
                        btx_data::corpus::expand_paths(std::slice::from_ref(pat), base)
                            .unwrap_or_default(),
                    );
                } else {
                    v.push(at(Path::new(pat)));
                }
            }
            v.extend(d.tasks_file.iter().map(|p| at(p)));
        }
    }
    v
}

/// Entries a run directory may hold before its plan.json is written: the lock, a writer's
/// leftovers (`.NAME.tmp-HOST-PID`, `.NAME.partial-HOST-PID`), and the recipe itself when it
/// lies there (`btx demo` writes its recipe into the run directory first).
fn is_own_entry(entry: &Path, recipe: &Path) -> bool {
    let name = entry
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name == ".lock"
        || (name.starts_with('.') && (name.contains(".tmp-") || name.contains(".partial-")))
        || btx_core::outdir::resolve(entry) == btx_core::outdir::resolve(recipe)
}

/// Refuses a `--out` that a run must not write into, before anything is written: something
/// other than a directory; a non-empty directory that is not a btx run directory (no
/// plan.json: a user's directory, another run's model); one that is, contains or lies inside
/// an input of the recipe (see [`recipe_inputs`]).
pub fn check_out(out: &Path, recipe: &Recipe, base: &Path, recipe_file: &Path) -> Result<()> {
    if std::fs::symlink_metadata(out).is_ok() && !out.is_dir() {
        bail!(
            "{} exists and is not a directory\nhint: choose another --out",
            out.display()
        );
    }
    let inputs = recipe_inputs(recipe, base);
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    btx_core::outdir::check_not_an_input(out, &inputs)?;
    if out.is_dir() && !out.join(crate::plan::PLAN_FILE).is_file() {
        let entries = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", out.display()))?;
        if let Some(e) = entries
            .iter()
            .find(|e| !is_own_entry(&e.path(), recipe_file))
        {
            bail!(
                "{}: exists, is not empty (it holds {}) and is not a btx run directory (no {})\nhint: choose a new --out (a run writes a whole directory tree); an existing run directory is continued",
                out.display(),
                e.path().display(),
                crate::plan::PLAN_FILE
            );
        }
    }
    Ok(())
}

pub fn run(a: RunOptions, device: &str) -> Result<()> {
    // Local stages run here: open the device now, so that a missing GPU is one error up front.
    // Slurm stages run elsewhere: this node may have none.
    if a.executor == ExecutorKind::Local {
        crate::runtime::device(device)?;
    } else {
        crate::runtime::check_device_name(device)?;
    }
    if a.gpus.is_some() && (device != "cuda" || a.executor != ExecutorKind::Local) {
        bail!(
            "--gpus spreads local stages over GPUs: it needs --device cuda and the local executor\nhint: on Slurm, ask for GPUs per stage in the recipe ([slurm.experts] / [slurm.train] gres = \"gpu:1\")"
        );
    }
    if a.jobs == 0 {
        bail!("--jobs 0 would run no stage\nhint: --jobs 1 (the default) or more: stages at once");
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
    // Everything that can refuse is checked before the first write (the executor and what it
    // needs included: a refused run must not have cleared a stage).
    let mut exec: Box<dyn Executor> = match a.executor {
        ExecutorKind::Local => Box::new(LocalExecutor {
            jobs: a.jobs,
            total_threads: rayon::current_num_threads(),
            device: device.into(),
            gpus: if device == "cuda" {
                gpu_ids(a.gpus.as_deref())?
            } else {
                vec![]
            },
        }),
        ExecutorKind::Slurm => {
            if !a.dry_run {
                crate::exec::slurm::check_installed()?;
            }
            Box::new(crate::exec::slurm::SlurmExecutor {
                section: recipe.slurm.clone(),
                wait: a.wait,
                device: device.into(),
            })
        }
    };
    check_out(&a.out, &recipe, &base, &a.recipe)?;
    if a.dry_run {
        // A dry run writes nothing and takes no lock: it reads what is there (plan.json and
        // every manifest are replaced atomically, so it never sees one half-written).
        let states = if a.out.is_dir() {
            prepare_states(&plan, &a.out)?.0
        } else {
            plan.stages
                .iter()
                .map(|s| (s.name.clone(), State::Pending))
                .collect()
        };
        return print_dry_run(&a, &plan, &states);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = a
        .out
        .canonicalize()
        .with_context(|| format!("resolving {}", a.out.display()))?;
    // One `btx run` per run directory, for as long as it runs.
    let _lock = crate::run::lock::DirLock::acquire(&out, "btx run")?;
    let (states, stale) = prepare_states(&plan, &out)?;
    let recipe_text =
        std::fs::read(&a.recipe).with_context(|| format!("reading {}", a.recipe.display()))?;
    // plan.json first: it is what makes the directory a run directory (see `check_out`), so a
    // run killed right after it is continued, not refused, by the next `btx run`.
    plan.save(&out)?;
    btx_core::atomic::write_file(&out.join("recipe.toml"), &recipe_text)?;
    btx_core::atomic::write_file(
        &out.join("recipe.resolved.toml"),
        toml::to_string_pretty(&raw)?.as_bytes(),
    )?;
    clear_stale(&stale)?;
    for (name, st) in &states {
        if let State::Redo(why) = st {
            tracing::warn!("{name}: {why}; redoing it");
        }
    }
    let todo = states.values().filter(|s| **s != State::Done).count();
    errln!(
        "btx run {}: {} stages, {} to run ({} done)",
        a.recipe.display(),
        plan.stages.len(),
        todo,
        plan.stages.len() - todo,
    );
    let outcomes = exec.execute(&plan, &out, &states)?;
    if outcomes.values().any(|o| *o == Outcome::Submitted) {
        return Ok(());
    }
    print_summary(&plan, &out, &outcomes);
    let failed: Vec<&StageId> = outcomes
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

fn print_dry_run(a: &RunOptions, plan: &Plan, states: &BTreeMap<StageId, State>) -> Result<()> {
    let todo = states.values().filter(|s| **s != State::Done).count();
    errln!(
        "btx run {}: {} stages, {} to run ({} done) [dry run]",
        a.recipe.display(),
        plan.stages.len(),
        todo,
        plan.stages.len() - todo,
    );
    for s in &plan.stages {
        outln!(
            "{:<28} {:<10} {:?} deps {:?}",
            s.name,
            s.fingerprint,
            states[&s.name],
            s.deps
        );
    }
    Ok(())
}

fn print_summary(plan: &Plan, run: &Path, outcomes: &BTreeMap<StageId, Outcome>) {
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
