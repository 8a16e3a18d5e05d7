//! The local executor: each stage a child process (`btx stage NAME --run DIR`) with its own
//! log, up to `--jobs` at once with the cores split between them, each on the least busy GPU
//! when there are GPUs; a failed stage blocks only its dependents.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::exec::status::{progress_of, tail};
use crate::exec::{Executor, Outcome, State};
use crate::plan::{Plan, Stage, StageId};
use crate::run::manifest;
use crate::runtime::EXIT_STOPPED;

pub struct LocalExecutor {
    pub jobs: usize,
    pub total_threads: usize,
    /// `--device` of `btx run`, passed on to every stage process.
    pub device: String,
    /// GPU ids to spread stages over (empty on the CPU).
    pub gpus: Vec<String>,
}

struct Running {
    name: StageId,
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
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
        .arg(stage.name.as_str())
        .arg("--run")
        .arg(run)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting stage {}", stage.name))
}

/// How a stage process that exited with `status` ended, said on stderr (a failure with the
/// end of its log): done only when its DONE holds.
fn ended(
    plan: &Plan,
    run: &Path,
    r: &Running,
    status: std::process::ExitStatus,
    t0: Instant,
) -> Result<Outcome> {
    let stage = plan.stage(&r.name)?;
    let secs = r.start.elapsed().as_secs_f64();
    let ok = status.success() && manifest::check(plan, run, stage).is_done();
    let outcome = if ok {
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
    Ok(outcome)
}

impl Executor for LocalExecutor {
    fn execute(
        &mut self,
        plan: &Plan,
        run: &Path,
        states: &BTreeMap<StageId, State>,
    ) -> Result<BTreeMap<StageId, Outcome>> {
        let jobs = self.jobs.max(1);
        let mut outcomes: BTreeMap<StageId, Outcome> = BTreeMap::new();
        let mut done: HashSet<StageId> = HashSet::new();
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
                    outcomes.insert(s.name.clone(), Outcome::Blocked { by: b.to_string() });
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
                let resume = match states.get(&s.name) {
                    Some(State::Partial) => " (resuming)".to_string(),
                    Some(State::Redo(why)) => format!(" (redoing: {why})"),
                    Some(State::Recheck(_)) => {
                        " (re-checking: something upstream was redone)".into()
                    }
                    _ => String::new(),
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
                    let outcome = ended(plan, run, &r, status, t0)?;
                    if matches!(outcome, Outcome::Done { .. }) {
                        done.insert(r.name.clone());
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
                            None => r.name.to_string(),
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
            name: StageId::data(),
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
