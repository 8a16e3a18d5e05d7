//! `btx status DIR` and `btx cancel DIR`: what every stage of a run is doing, from the run
//! directory (stage.json, manifest.json, DONE, metrics.jsonl, log.txt) and, for Slurm runs,
//! `scontrol` (no accounting database needed).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::manifest;
use crate::plan::{Plan, Stage};
use crate::slurm::{is_live, job_info, load_jobs, JobInfo};

#[derive(clap::Args)]
pub struct Args {
    /// The run directory.
    pub run: PathBuf,
    /// Print one JSON object per stage instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CancelArgs {
    /// The run directory.
    pub run: PathBuf,
}

/// One stage as `btx status` sees it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct StageStatus {
    pub stage: String,
    /// pending, running, done, failed, cancelled, stopped (checkpointed, will resume).
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
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn fmt_secs(s: f64) -> String {
    let s = s as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub fn stage_status(
    plan: &Plan,
    run: &std::path::Path,
    s: &Stage,
    jobs: &crate::slurm::JobTable,
) -> StageStatus {
    let dir = run.join(&s.dir);
    let job = jobs.jobs.get(&s.name);
    let info: Option<JobInfo> = job.and_then(|j| job_info(&j.id()));
    let progress = progress_of(run, s);
    let mut st = StageStatus {
        stage: s.name.clone(),
        state: "pending".into(),
        job: job.map(|j| j.id()),
        elapsed: String::new(),
        device: None,
        progress,
        detail: vec![],
    };
    let _ = plan;
    if manifest::is_done(&dir, &s.fingerprint) {
        st.state = "done".into();
        let m = manifest::read_manifest(&dir);
        st.elapsed = m
            .as_ref()
            .map(|m| fmt_secs(m.compute.wall_seconds))
            .unwrap_or_default();
        st.device = m.map(|m| m.device).filter(|d| !d.is_empty());
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
        st.state = if crate::lock::holder(&dir).is_some() {
            "running".into()
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

pub fn run(a: Args) -> Result<()> {
    let plan = Plan::load(&a.run)?;
    let jobs = load_jobs(&a.run);
    let all: Vec<StageStatus> = plan
        .stages
        .iter()
        .map(|s| stage_status(&plan, &a.run, s, &jobs))
        .collect();
    if a.json {
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
    outln!(
        "{} stages: {} done, {} running, {} pending, {} failed, {} cancelled, {} stopped",
        all.len(),
        count("done"),
        count("running"),
        count("pending"),
        count("failed"),
        count("cancelled"),
        count("stopped")
    );
    Ok(())
}

pub fn cancel(a: CancelArgs) -> Result<()> {
    let plan = Plan::load(&a.run)?;
    let jobs = load_jobs(&a.run);
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
    // Local runs: stop running stage processes (they checkpoint and exit).
    for s in &plan.stages {
        if jobs.jobs.contains_key(&s.name) {
            continue;
        }
        let dir = a.run.join(&s.dir);
        if manifest::is_done(&dir, &s.fingerprint) {
            continue;
        }
        // Signal only a process verified to be this stage: it holds the stage's lock, on this
        // host, under the pid stage.json names (a stale pid may belong to anyone by now).
        let (Some(h), Some(sj)) = (crate::lock::holder(&dir), manifest::read_started(&dir)) else {
            continue;
        };
        if h.host != crate::lock::hostname() {
            errln!(
                "not stopping {}: it runs on {} (pid {}); run `btx cancel` there",
                s.name,
                h.host,
                h.pid
            );
            continue;
        }
        if h.pid != sj.pid || !pid_alive(h.pid) {
            errln!(
                "not stopping {}: the lock holder ({}) is not the process stage.json names (pid {})",
                s.name,
                h.describe(),
                sj.pid
            );
            continue;
        }
        // SAFETY: sends SIGTERM to the verified stage process.
        unsafe {
            libc::kill(h.pid as i32, libc::SIGTERM);
        }
        n += 1;
        errln!("stopped {} (pid {})", s.name, h.pid);
    }
    errln!("{n} cancelled");
    Ok(())
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

/// Last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
