//! `btx status DIR` and `btx cancel DIR`: what every stage of a run is doing, from the run
//! directory (stage.json, manifest.json, DONE, metrics.jsonl, log.txt) and, for Slurm runs,
//! `scontrol` (no accounting database needed).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::exec::slurm::{is_live, job_info, load_jobs, JobInfo};
use crate::plan::{Plan, Stage};
use crate::run::manifest;

/// One stage as `btx status` sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageStatus {
    pub stage: String,
    /// pending, running, suspended (SIGSTOP), done, broken (DONE but an output is missing or
    /// changed), stale (DONE but an input changed since), failed, cancelled, stopped
    /// (checkpointed, will resume).
    pub state: String,
    pub job: Option<String>,
    pub elapsed: String,
    /// Where it ran or runs (`cpu`, `cuda:3`), from stage.json / manifest.json.
    pub device: Option<String>,
    pub progress: Option<String>,
    /// Why it is pending or failed (Slurm reason, last log lines).
    pub detail: Vec<String>,
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// The state letter of a process of this host (`R`, `S`, `T` stopped, `Z` zombie, ...), from
/// /proc/PID/stat; `None` when there is no such process.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": comm may hold spaces and parentheses, so read after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn fmt_secs(s: f64) -> String {
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub fn stage_status(
    plan: &Plan,
    run: &std::path::Path,
    s: &Stage,
    jobs: &crate::exec::slurm::JobTable,
) -> StageStatus {
    let dir = run.join(&s.dir);
    let job = jobs.jobs.get(s.name.as_str());
    let info: Option<JobInfo> = job.and_then(|j| job_info(&j.id()));
    let progress = progress_of(run, s);
    let mut st = StageStatus {
        stage: s.name.to_string(),
        state: "pending".into(),
        job: job.map(|j| j.id()),
        elapsed: String::new(),
        device: None,
        progress,
        detail: vec![],
    };
    let verdict = manifest::check(plan, run, s);
    if verdict.is_done() || verdict.redo_reason().is_some() {
        let m = manifest::read_manifest(&dir);
        st.elapsed = m
            .as_ref()
            .map(|m| fmt_secs(m.compute.wall_seconds))
            .unwrap_or_default();
        st.device = m.map(|m| m.device).filter(|d| !d.is_empty());
        st.state = match &verdict {
            manifest::Verdict::Broken(w) => {
                st.detail
                    .push(format!("{w}; `btx run` redoes it (and what depends on it)"));
                "broken".into()
            }
            manifest::Verdict::Stale(w) => {
                st.detail.push(format!("{w}; `btx run` redoes it"));
                "stale".into()
            }
            manifest::Verdict::Unrecorded => {
                st.detail.push(
                    "finished by an older btx that kept no record of its files: not checked".into(),
                );
                "done".into()
            }
            _ => "done".into(),
        };
        return st;
    }
    let started = manifest::read_started(&dir).filter(|x| x.fingerprint == s.fingerprint);
    st.device = started
        .as_ref()
        .map(|x| x.device.clone())
        .filter(|d| !d.is_empty());
    if let Some(i) = &info {
        st.elapsed = i.elapsed.clone();
        st.state = match i.state.as_str() {
            "PENDING" | "REQUEUED" => {
                if !i.reason.is_empty() && i.reason != "None" {
                    st.detail.push(format!("reason: {}", i.reason));
                }
                "pending".into()
            }
            x if is_live(x) => "running".into(),
            "CANCELLED" => {
                st.detail.push(format!("reason: {}", i.reason));
                "cancelled".into()
            }
            "COMPLETED" => "failed".into(), // completed without DONE
            other => {
                st.detail
                    .push(format!("Slurm state {other}, exit code {}", i.exit_code));
                "failed".into()
            }
        };
    } else if let Some(sj) = &started {
        // Local run, or a Slurm job Slurm has forgotten.
        // Running means a live process holds the stage's lock; a pid alone can be reused.
        let holder = crate::run::lock::holder(&dir);
        st.state = if let Some(h) = &holder {
            if h.host == crate::run::lock::hostname() && proc_state(h.pid) == Some('T') {
                st.detail.push(format!(
                    "pid {} is suspended (SIGSTOP or Ctrl-Z): `kill -CONT {}` lets it go on, `btx cancel {}` ends it",
                    h.pid,
                    h.pid,
                    run.display()
                ));
                "suspended".into()
            } else {
                "running".into()
            }
        } else if dir.join("checkpoints").exists() {
            "stopped".into()
        } else {
            "failed".into()
        };
        st.elapsed = fmt_secs(manifest::now_unix().saturating_sub(sj.started_unix) as f64);
    } else if let Some(j) = job {
        // Slurm purges ended jobs after MinJobAge; this one ended before it ever started.
        st.state = "failed".into();
        st.detail.push(format!(
            "Slurm no longer knows job {} and the stage never started (cancelled, or a \
             dependency failed); `btx run` submits it again",
            j.id()
        ));
    }
    if st.state == "failed" || st.state == "stopped" {
        st.detail.extend(
            tail(&dir.join("log.txt"), 3)
                .into_iter()
                .map(|l| format!("log: {l}")),
        );
    }
    st
}

/// `btx status`: a table (or, with `json`, one JSON object per line) of every stage of `run`.
pub fn print_status(run: &Path, json: bool) -> Result<()> {
    let plan = Plan::load(run)?;
    let jobs = load_jobs(run);
    let all: Vec<StageStatus> = plan
        .stages
        .iter()
        .map(|s| stage_status(&plan, run, s, &jobs))
        .collect();
    if json {
        for s in &all {
            outln!("{}", serde_json::to_string(s)?);
        }
        return Ok(());
    }
    outln!(
        "{:<26} {:<10} {:<12} {:<8} {:>10}  progress",
        "stage",
        "state",
        "job",
        "device",
        "elapsed"
    );
    for s in &all {
        outln!(
            "{:<26} {:<10} {:<12} {:<8} {:>10}  {}",
            s.stage,
            s.state,
            s.job.clone().unwrap_or_else(|| "-".into()),
            s.device.clone().unwrap_or_else(|| "-".into()),
            s.elapsed,
            s.progress.clone().unwrap_or_default()
        );
        for d in &s.detail {
            outln!("{:>28} {d}", "");
        }
    }
    let count = |x: &str| all.iter().filter(|s| s.state == x).count();
    let mut summary = format!(
        "{} stages: {} done, {} running, {} pending, {} failed, {} cancelled, {} stopped",
        all.len(),
        count("done"),
        count("running"),
        count("pending"),
        count("failed"),
        count("cancelled"),
        count("stopped")
    );
    for extra in ["suspended", "broken", "stale"] {
        if count(extra) > 0 {
            summary.push_str(&format!(", {} {extra}", count(extra)));
        }
    }
    outln!("{summary}");
    Ok(())
}

/// A local process `btx cancel` stops: what it is, its pid, and the directory whose lock it
/// holds (it is gone when the lock is free).
struct Target {
    what: String,
    pid: u32,
    dir: PathBuf,
}

/// `btx cancel`: stops what is queued or running in `run`, waiting up to `wait_s` seconds for
/// each stopped process to exit.
pub fn cancel(run: &Path, wait_s: u64) -> Result<()> {
    let plan = Plan::load(run)?;
    let jobs = load_jobs(run);
    let mut n = 0;
    for (stage, j) in &jobs.jobs {
        if job_info(&j.id()).is_some_and(|i| is_live(&i.state)) {
            let ok = std::process::Command::new("scancel")
                .arg(j.id())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                n += 1;
                errln!("cancelled {stage} (job {})", j.id());
            }
        }
    }
    let me = crate::run::lock::hostname();
    let mut targets: Vec<Target> = vec![];
    let mut left: Vec<String> = vec![];
    // The `btx run` (or `btx demo`) driving a local run first, so that it starts nothing new.
    if let Some(h) = crate::run::lock::holder(run) {
        if h.host != me {
            left.push(format!(
                "{} runs on {} (pid {}): run `btx cancel` there",
                h.what, h.host, h.pid
            ));
        } else if h.pid != std::process::id() && pid_alive(h.pid) {
            targets.push(Target {
                what: h.what.clone(),
                pid: h.pid,
                dir: run.to_path_buf(),
            });
        }
    }
    // Local stage processes (a trainer writes a checkpoint and exits).
    for s in &plan.stages {
        if jobs.jobs.contains_key(s.name.as_str()) {
            continue;
        }
        let dir = run.join(&s.dir);
        // Signal only a process verified to be this stage: it holds the stage's lock, on this
        // host, under the pid stage.json names (a stale pid may belong to anyone by now).
        let (Some(h), Some(sj)) = (crate::run::lock::holder(&dir), manifest::read_started(&dir))
        else {
            continue;
        };
        if h.host != me {
            left.push(format!(
                "{} runs on {} (pid {}): run `btx cancel` there",
                s.name, h.host, h.pid
            ));
            continue;
        }
        if h.pid != sj.pid || !pid_alive(h.pid) {
            left.push(format!(
                "{}: the lock holder ({}) is not the process stage.json names (pid {}); not signalled",
                s.name,
                h.describe(),
                sj.pid
            ));
            continue;
        }
        targets.push(Target {
            what: s.name.to_string(),
            pid: h.pid,
            dir,
        });
    }
    for t in &targets {
        // SAFETY: signals a process verified above. SIGCONT after SIGTERM: a suspended
        // (SIGSTOP, Ctrl-Z) process only acts on the SIGTERM once it runs again.
        unsafe {
            libc::kill(t.pid as i32, libc::SIGTERM);
            libc::kill(t.pid as i32, libc::SIGCONT);
        }
    }
    // Gone means the lock it held is free: checked, not assumed.
    let alive = |t: &Target| crate::run::lock::holder(&t.dir).is_some_and(|h| h.pid == t.pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
    while targets.iter().any(alive) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for t in &targets {
        if alive(t) {
            left.push(format!(
                "{} (pid {}) is still running {}s after SIGTERM{}",
                t.what,
                t.pid,
                wait_s,
                match proc_state(t.pid) {
                    Some('T') => " and is suspended again",
                    Some('D') => " in uninterruptible I/O",
                    _ => "",
                }
            ));
        } else {
            n += 1;
            errln!("stopped {} (pid {})", t.what, t.pid);
        }
    }
    errln!("{n} cancelled");
    if !left.is_empty() {
        bail!(
            "not everything was stopped:\n  - {}\nhint: a trainer writes its checkpoint before it exits: wait and run `btx cancel` again (`--wait SECS` waits longer), or `kill -9 PID` (it loses the steps since its last checkpoint)",
            left.join("\n  - ")
        );
    }
    Ok(())
}

/// `step/total loss` of a training stage, from its metrics.jsonl.
pub fn progress_of(run: &Path, stage: &Stage) -> Option<String> {
    let text = std::fs::read_to_string(run.join(&stage.dir).join("metrics.jsonl")).ok()?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let total = match &stage.kind {
        crate::plan::StageKind::Train { spec, .. } => spec.trainer.train.steps,
        _ => 0,
    };
    Some(format!(
        "step {}/{} loss {:.3}",
        last["step"].as_u64()?,
        total,
        last["loss"].as_f64()?
    ))
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
