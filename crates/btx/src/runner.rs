//! `btx run RECIPE --out DIR [--jobs N]`: compile the recipe into a plan, decide which stages
//! are finished, stale or half-done, and hand the rest to an executor. The local executor runs
//! each stage as a child process (`btx stage NAME --run DIR`) with its own log, up to `--jobs`
//! at once with the cores split between them; a failed stage blocks only its dependents.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::executor::{Executor, Outcome, State};
use crate::manifest;
use crate::plan::{Plan, Stage};
use crate::recipe::Recipe;
use crate::runtime::EXIT_STOPPED;

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

pub struct LocalExecutor {
    pub jobs: usize,
    pub total_threads: usize,
    /// `--device` of `btx run`, passed on to every stage process.
    pub device: String,
    /// GPU ids to spread stages over (empty on the CPU).
    pub gpus: Vec<String>,
}

struct Running {
    name: String,
    child: Child,
    start: Instant,
    /// Index into `LocalExecutor::gpus`.
    gpu: Option<usize>,
}

/// The GPUs of `--gpus` (a count or a list of ids), else of CUDA_VISIBLE_DEVICES, else every GPU
/// `nvidia-smi -L` lists, else GPU 0.
pub fn gpu_ids(arg: Option<&str>) -> Result<Vec<String>> {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES")
        .map(|v| id_list(&v))
        .unwrap_or_default();
    if let Some(ids) = gpus_given(arg, &visible)? {
        return Ok(ids);
    }
    if !visible.is_empty() {
        return Ok(visible);
    }
    let listed = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with("GPU "))
                .count()
        })
        .unwrap_or(0);
    Ok((0..listed.max(1)).map(|i| i.to_string()).collect())
}

fn id_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|x| x.trim().to_string())
        .filter(|x| !x.is_empty())
        .collect()
}

/// The GPUs `--gpus` names, given the outer CUDA_VISIBLE_DEVICES (`visible`, maybe empty): a
/// count within it takes its first entries (ids or UUIDs: GPU 0 of this process is its first
/// entry, not physical GPU 0); otherwise a count means GPUs 0..N, a list is taken as written.
fn gpus_given(arg: Option<&str>, visible: &[String]) -> Result<Option<Vec<String>>> {
    let Some(a) = arg else {
        return Ok(None);
    };
    let ids = match a.trim().parse::<usize>() {
        Ok(0) => {
            bail!("--gpus 0: give at least one GPU\nhint: --gpus 2 (GPUs 0 and 1) or --gpus 0,3")
        }
        Ok(n) if !a.contains(',') && n <= visible.len() => visible[..n].to_vec(),
        Ok(n) if !a.contains(',') => (0..n).map(|i| i.to_string()).collect(),
        _ => id_list(a),
    };
    if ids.is_empty() {
        bail!("--gpus {a:?} names no GPU\nhint: --gpus 2 (GPUs 0 and 1) or --gpus 0,3");
    }
    Ok(Some(ids))
}

/// The GPU (index into the list) a new stage goes to: the one running the fewest stages, the
/// lowest index among equals.
fn least_busy(gpus: usize, running: &[Running]) -> Option<usize> {
    (0..gpus).min_by_key(|&g| running.iter().filter(|r| r.gpu == Some(g)).count())
}

fn spawn_stage(
    run: &Path,
    stage: &Stage,
    threads: usize,
    device: &str,
    gpu: Option<&str>,
) -> Result<Child> {
    let dir = run.join(&stage.dir);
    std::fs::create_dir_all(&dir)?;
    let log_path = dir.join("log.txt");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    // A stage dies with the `btx run` that started it (SIGTERM: a trainer checkpoints first),
    // so killing the parent never leaves a trainer behind that the next run would duplicate.
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if let Some(g) = gpu {
        cmd.env("CUDA_VISIBLE_DEVICES", g);
    }
    cmd.arg("--threads")
        .arg(threads.to_string())
        .arg("--device")
        .arg(device)
        .arg("stage")
        .arg(&stage.name)
        .arg("--run")
        .arg(run)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting stage {}", stage.name))
}

/// `step/total loss` of a training stage, from its metrics.jsonl.
pub fn progress_of(run: &Path, stage: &Stage) -> Option<String> {
    let text = std::fs::read_to_string(run.join(&stage.dir).join("metrics.jsonl")).ok()?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let total = match &stage.kind {
        crate::plan::StageKind::Train { spec, .. } => spec.train.steps,
        _ => 0,
    };
    Some(format!(
        "step {}/{} loss {:.3}",
        last["step"].as_u64()?,
        total,
        last["loss"].as_f64()?
    ))
}

impl Executor for LocalExecutor {
    fn execute(
        &mut self,
        plan: &Plan,
        run: &Path,
        states: &BTreeMap<String, State>,
    ) -> Result<BTreeMap<String, Outcome>> {
        let jobs = self.jobs.max(1);
        let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
        let mut done: HashSet<String> = HashSet::new();
        let mut pending: Vec<&Stage> = vec![];
        for s in &plan.stages {
            if states.get(&s.name) == Some(&State::Done) {
                done.insert(s.name.clone());
                outcomes.insert(s.name.clone(), Outcome::AlreadyDone);
            } else {
                pending.push(s);
            }
        }
        let t0 = Instant::now();
        let mut running: Vec<Running> = vec![];
        let mut last_status = Instant::now();
        let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
        loop {
            // Stages whose dependency failed can never run.
            let mut i = 0;
            while i < pending.len() {
                let bad = pending[i].deps.iter().find(|d| {
                    matches!(
                        outcomes.get(*d),
                        Some(Outcome::Failed { .. } | Outcome::Blocked { .. } | Outcome::Stopped)
                    )
                });
                if let Some(b) = bad {
                    let s = pending.remove(i);
                    errln!(
                        "[{:>7.1}s] skipped {} (needs {b})",
                        t0.elapsed().as_secs_f64(),
                        s.name
                    );
                    outcomes.insert(s.name.clone(), Outcome::Blocked { by: b.clone() });
                } else {
                    i += 1;
                }
            }
            while running.len() < jobs {
                let Some(pos) = pending
                    .iter()
                    .position(|s| s.deps.iter().all(|d| done.contains(d)))
                else {
                    break;
                };
                let s = pending.remove(pos);
                // Split the cores between what runs now: a stage that starts alone (the seed)
                // gets them all; stages that start side by side share them.
                let ready = pending
                    .iter()
                    .filter(|p| p.deps.iter().all(|d| done.contains(d)))
                    .count();
                let sharing = (running.len() + 1 + ready).min(jobs).max(1);
                let threads = (self.total_threads / sharing).max(1);
                let resume = if states.get(&s.name) == Some(&State::Partial) {
                    " (resuming)"
                } else {
                    ""
                };
                let gpu = least_busy(self.gpus.len(), &running);
                let on = gpu
                    .map(|g| format!(" on GPU {}", self.gpus[g]))
                    .unwrap_or_default();
                errln!(
                    "[{:>7.1}s] started {}{resume}{on} ({} thread{}, log {}/log.txt)",
                    t0.elapsed().as_secs_f64(),
                    s.name,
                    threads,
                    if threads == 1 { "" } else { "s" },
                    run.join(&s.dir).display()
                );
                let child = spawn_stage(
                    run,
                    s,
                    threads,
                    &self.device,
                    gpu.map(|g| self.gpus[g].as_str()),
                )?;
                running.push(Running {
                    name: s.name.clone(),
                    child,
                    start: Instant::now(),
                    gpu,
                });
            }
            if running.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            let mut i = 0;
            while i < running.len() {
                if let Some(status) = running[i].child.try_wait()? {
                    let r = running.remove(i);
                    let stage = plan.stage(&r.name)?;
                    let secs = r.start.elapsed().as_secs_f64();
                    let ok = status.success()
                        && manifest::is_done(&run.join(&stage.dir), &stage.fingerprint);
                    let outcome = if ok {
                        done.insert(r.name.clone());
                        Outcome::Done { seconds: secs }
                    } else if status.code() == Some(EXIT_STOPPED) {
                        Outcome::Stopped
                    } else {
                        Outcome::Failed {
                            code: status.code(),
                        }
                    };
                    let what = match &outcome {
                        Outcome::Done { .. } => "finished".to_string(),
                        Outcome::Stopped => "stopped with a checkpoint".to_string(),
                        _ => format!("FAILED ({})", status),
                    };
                    errln!(
                        "[{:>7.1}s] {what} {} in {secs:.1}s",
                        t0.elapsed().as_secs_f64(),
                        r.name
                    );
                    if matches!(outcome, Outcome::Failed { .. }) {
                        for l in tail(&run.join(&stage.dir).join("log.txt"), 5) {
                            errln!("           | {l}");
                        }
                    }
                    outcomes.insert(r.name.clone(), outcome);
                } else {
                    i += 1;
                }
            }
            let every = if interactive { 5 } else { 30 };
            if last_status.elapsed() > Duration::from_secs(every) && !running.is_empty() {
                last_status = Instant::now();
                let parts: Vec<String> = running
                    .iter()
                    .map(|r| {
                        let s = plan.stage(&r.name).expect("planned");
                        match progress_of(run, s) {
                            Some(p) => format!("{} {p}", r.name),
                            None => r.name.clone(),
                        }
                    })
                    .collect();
                errln!(
                    "[{:>7.1}s] running: {}",
                    t0.elapsed().as_secs_f64(),
                    parts.join("; ")
                );
            }
        }
        Ok(outcomes)
    }
}

/// Last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_a_count_or_a_list_and_stages_go_to_the_least_busy() {
        let given = |a, v: &[&str]| {
            let v: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            gpus_given(Some(a), &v).map(|x| x.unwrap())
        };
        assert_eq!(given("3", &[]).unwrap(), ["0", "1", "2"]);
        assert_eq!(given("0,5", &[]).unwrap(), ["0", "5"]);
        assert_eq!(given("7,", &[]).unwrap(), ["7"]);
        // Inside an outer CUDA_VISIBLE_DEVICES a count takes its first entries.
        assert_eq!(given("2", &["4", "6", "7"]).unwrap(), ["4", "6"]);
        assert_eq!(given("1", &["GPU-ab12"]).unwrap(), ["GPU-ab12"]);
        assert!(given("0", &[]).is_err());
        assert!(given(",", &[]).is_err());
        assert_eq!(gpus_given(None, &[]).unwrap(), None);
        let child = || Command::new("true").spawn().unwrap();
        let on = |gpu| Running {
            name: String::new(),
            child: child(),
            start: Instant::now(),
            gpu,
        };
        assert_eq!(least_busy(0, &[]), None);
        assert_eq!(least_busy(2, &[]), Some(0));
        let mut r = vec![on(Some(0))];
        assert_eq!(least_busy(2, &r), Some(1));
        r.push(on(Some(1)));
        r.push(on(Some(0)));
        assert_eq!(least_busy(2, &r), Some(1));
        for mut x in r {
            x.child.wait().unwrap();
        }
    }
}
