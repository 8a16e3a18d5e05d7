//! The Slurm executor: every stage of the plan becomes a batch job that runs
//! `btx stage NAME --run DIR` on the shared run directory. The experts of a replica form one job
//! array; everything else is a job of its own, chained with `afterok` dependencies and
//! `--kill-on-invalid-dep=yes`, so a failure cancels what depends on it instead of leaving it
//! pending forever. Jobs are requeueable and get a warning signal before their time limit; the
//! job script forwards it to btx, which checkpoints and exits 75, and the script requeues the
//! job, which then resumes from the checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::exec::{Executor, Outcome, State};
use crate::plan::{Plan, Stage, StageId};
use crate::recipe::sections::{Resources, SlurmSection};

/// `DIR/slurm/jobs.json`: the job (or array task) of each stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobTable {
    pub jobs: BTreeMap<String, JobRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRef {
    pub job_id: String,
    /// Index within a job array.
    pub array_index: Option<usize>,
    pub submitted_unix: u64,
}

impl JobRef {
    /// The id Slurm commands take: `123` or `123_4`.
    pub fn id(&self) -> String {
        match self.array_index {
            Some(i) => format!("{}_{i}", self.job_id),
            None => self.job_id.clone(),
        }
    }
}

pub fn jobs_path(run: &Path) -> PathBuf {
    run.join("slurm").join("jobs.json")
}

pub fn load_jobs(run: &Path) -> JobTable {
    std::fs::read_to_string(jobs_path(run))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn save_jobs(run: &Path, t: &JobTable) -> Result<()> {
    let dir = run.join("slurm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    btx_core::atomic::write_file(&jobs_path(run), serde_json::to_string_pretty(t)?.as_bytes())?;
    Ok(())
}

/// Slurm's view of a job: state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...),
/// elapsed time, exit code, reason. `None` when Slurm no longer knows the job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobInfo {
    pub state: String,
    pub elapsed: String,
    pub exit_code: String,
    pub reason: String,
}

/// Asks `scontrol show job` (no accounting database needed).
///
/// An array task that never started has no record of its own: Slurm keeps it folded into the
/// array's meta record (`ArrayTaskId=1-2`), and `scontrol show job 12_1` answers "not found".
/// Such a task has the meta record's state, also after the meta record was cancelled (then its
/// task list is gone, `ArrayTaskId=4294967294`).
pub fn job_info(id: &str) -> Option<JobInfo> {
    let show = |id: &str| -> Option<String> {
        let out = Command::new("scontrol")
            .args(["show", "job", "-o", id])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match show(id) {
        // For an array id like 12_3, scontrol prints the matching task only.
        Some(text) => text.lines().next().map(parse_job_line),
        None => {
            let (base, task) = id.split_once('_')?;
            let task: u64 = task.parse().ok()?;
            array_task_from_records(&show(base)?, task)
        }
    }
}

fn job_field<'a>(line: &'a str, k: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        .unwrap_or("")
}

fn parse_job_line(line: &str) -> JobInfo {
    JobInfo {
        state: job_field(line, "JobState").to_string(),
        elapsed: job_field(line, "RunTime").to_string(),
        exit_code: job_field(line, "ExitCode").to_string(),
        reason: job_field(line, "Reason").to_string(),
    }
}

/// Task `task`'s state from every record of its array (`scontrol show job -o BASE`).
fn array_task_from_records(text: &str, task: u64) -> Option<JobInfo> {
    // "1-5%2" or "1,3,7-9": the tasks a pending meta record still holds.
    let holds = |spec: &str| {
        let spec = spec.split('%').next().unwrap_or("");
        spec.split(',').any(|r| match r.split_once('-') {
            Some((a, b)) => a
                .parse::<u64>()
                .ok()
                .zip(b.parse::<u64>().ok())
                .is_some_and(|(a, b)| (a..=b).contains(&task)),
            None => r.parse::<u64>().ok() == Some(task),
        })
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .iter()
        .find(|l| holds(job_field(l, "ArrayTaskId")))
        .or_else(|| {
            // A meta record emptied by scancel no longer lists its tasks (NO_VAL).
            lines
                .iter()
                .find(|l| job_field(l, "ArrayTaskId") == "4294967294")
        })
        .map(|l| parse_job_line(l))
}

pub fn is_live(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "REQUEUED"
            | "RESIZING"
            | "SUSPENDED"
    )
}

pub struct SlurmExecutor {
    pub section: SlurmSection,
    /// Wait until every submitted job has ended.
    pub wait: bool,
    /// `--device` of `btx run`, passed on to every stage job.
    pub device: String,
}

/// Refuses a Slurm run where `sbatch` cannot be run, before anything is written.
pub fn check_installed() -> Result<()> {
    match Command::new("sbatch").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => bail!(
            "`sbatch --version` failed: {}\nhint: check that Slurm is installed and SLURM_CONF points at its config",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => bail!(
            "--executor slurm needs sbatch, which cannot be run here ({e})\nhint: run on a Slurm login node, or use --executor local"
        ),
    }
}

/// sbatch's job script: runs the stage (picked by the array index), forwards the warning
/// signal and SIGTERM to btx, and requeues the job when btx stopped with a checkpoint on the
/// warning.
fn job_script(btx: &Path, run: &Path, device: &str, stages: &[(&str, PathBuf)]) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let names = stages
        .iter()
        .map(|(n, _)| q(n))
        .collect::<Vec<_>>()
        .join(" ");
    let dirs = stages
        .iter()
        .map(|(_, d)| q(&d.display().to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let (btx, run) = (q(&btx.display().to_string()), q(&run.display().to_string()));
    let device = q(device);
    format!(
        r#"#!/bin/bash
# Written by `btx run --executor slurm`: one stage of a btx run directory per (array) task.
STAGES=({names})
DIRS=({dirs})
I=${{SLURM_ARRAY_TASK_ID:-0}}
STAGE=${{STAGES[$I]}}
DIR=${{DIRS[$I]}}
mkdir -p "$DIR"
echo "[slurm job ${{SLURM_JOB_ID}} task ${{SLURM_ARRAY_TASK_ID:-none}} on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}] $STAGE" >> "$DIR/log.txt"
{btx} --threads "${{SLURM_CPUS_PER_TASK:-1}}" --device {device} stage "$STAGE" --run {run} >> "$DIR/log.txt" 2>&1 &
PID=$!
WARNED=0
trap 'WARNED=1; kill -USR1 $PID 2>/dev/null' USR1
trap 'kill -TERM $PID 2>/dev/null' TERM
while true; do
  wait $PID
  RC=$?
  # A trapped signal interrupts `wait`; keep waiting while btx writes its checkpoint.
  kill -0 $PID 2>/dev/null || break
done
if [ "$RC" = 75 ] && [ "$WARNED" = 1 ]; then
  echo "[slurm] $STAGE stopped at the time-limit warning with a checkpoint; requeueing" >> "$DIR/log.txt"
  scontrol requeue "${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}"
fi
exit $RC
"#
    )
}

impl SlurmExecutor {
    fn resources(&self, stage: &Stage) -> &Resources {
        if stage.name.expert_group().is_some() {
            self.section.experts.as_ref().unwrap_or(&self.section.train)
        } else if stage.heavy {
            &self.section.train
        } else {
            &self.section.light
        }
    }

    fn sbatch(
        &self,
        run: &Path,
        label: &str,
        script: &str,
        res: &Resources,
        deps: &[String],
        array: Option<usize>,
    ) -> Result<String> {
        let dir = run.join("slurm");
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.join("logs").display()))?;
        let path = dir.join(format!("{}.sh", label.replace([':', '@', '#'], "-")));
        btx_core::atomic::write_file(&path, script.as_bytes())?;
        let mut c = Command::new("sbatch");
        c.arg("--parsable")
            .arg(format!("--job-name=btx-{label}"))
            .arg(format!("--chdir={}", run.display()))
            .arg(format!(
                "--output={}/logs/{}-%j.out",
                dir.display(),
                label.replace([':', '@', '#'], "-")
            ))
            .arg("--requeue")
            .arg(format!(
                "--signal=B:USR1@{}",
                self.section.signal_seconds.unwrap_or(120)
            ))
            .arg("--kill-on-invalid-dep=yes")
            .arg(format!("--cpus-per-task={}", res.cpus))
            .arg(format!("--mem={}", res.mem))
            .arg(format!("--nodes={}", res.nodes));
        if let Some(g) = &res.gres {
            c.arg(format!("--gres={g}"));
        }
        if let Some(t) = res.time.as_ref().or(self.section.time.as_ref()) {
            c.arg(format!("--time={t}"));
        }
        if let Some(p) = &self.section.partition {
            c.arg(format!("--partition={p}"));
        }
        if let Some(a) = &self.section.account {
            c.arg(format!("--account={a}"));
        }
        if let Some(n) = array {
            c.arg(format!("--array=0-{}", n - 1));
        }
        if !deps.is_empty() {
            c.arg(format!("--dependency=afterok:{}", deps.join(":")));
        }
        c.args(&self.section.extra).args(&res.extra).arg(&path);
        let out = c
            .output()
            .context("running sbatch (is Slurm installed and SLURM_CONF set?)")?;
        if !out.status.success() {
            bail!(
                "sbatch failed for {label}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .split(';')
            .next()
            .unwrap_or("")
            .to_string();
        if id.is_empty() {
            bail!("sbatch printed no job id for {label}");
        }
        Ok(id)
    }
}

impl Executor for SlurmExecutor {
    fn execute(
        &mut self,
        plan: &Plan,
        run: &Path,
        states: &BTreeMap<StageId, State>,
    ) -> Result<BTreeMap<StageId, Outcome>> {
        let btx = match &self.section.btx {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let mut table = load_jobs(run);
        let mut outcomes = BTreeMap::new();
        // Stages with a job that is still pending or running keep it.
        let mut live: BTreeMap<StageId, String> = BTreeMap::new();
        for s in &plan.stages {
            if states.get(&s.name) == Some(&State::Done) {
                outcomes.insert(s.name.clone(), Outcome::AlreadyDone);
                continue;
            }
            if let Some(j) = table.jobs.get(s.name.as_str()) {
                if job_info(&j.id()).is_some_and(|i| is_live(&i.state)) {
                    live.insert(s.name.clone(), j.id());
                }
            }
        }
        let already = live.len();
        let dep_ids = |s: &Stage, live: &BTreeMap<StageId, String>| -> Vec<String> {
            s.deps
                .iter()
                .filter(|d| states.get(*d) != Some(&State::Done))
                .filter_map(|d| live.get(d).cloned())
                .collect()
        };
        let now = crate::run::manifest::now_unix();
        let mut submitted = vec![];
        let mut i = 0;
        while i < plan.stages.len() {
            let s = &plan.stages[i];
            let todo = |s: &Stage| {
                states.get(&s.name) != Some(&State::Done) && !live.contains_key(&s.name)
            };
            if !todo(s) {
                i += 1;
                continue;
            }
            if let Some(key) = s.name.expert_group() {
                // All pending experts of this family, budget and replica in one array.
                let sfx = format!("{}{}", &key.0["expert".len()..], key.1);
                let group: Vec<&Stage> = plan
                    .stages
                    .iter()
                    .filter(|x| x.name.expert_group().as_ref() == Some(&key) && todo(x))
                    .collect();
                let names: Vec<StageId> = group.iter().map(|x| x.name.clone()).collect();
                let mut deps: Vec<String> = group.iter().flat_map(|x| dep_ids(x, &live)).collect();
                deps.sort();
                deps.dedup();
                let res = self.resources(s).clone();
                let pairs: Vec<(&str, PathBuf)> = group
                    .iter()
                    .map(|x| (x.name.as_str(), run.join(&x.dir)))
                    .collect();
                let script = job_script(&btx, run, &self.device, &pairs);
                let label = format!("experts{sfx}");
                let id = self.sbatch(run, &label, &script, &res, &deps, Some(names.len()))?;
                for (k, n) in names.iter().enumerate() {
                    let r = JobRef {
                        job_id: id.clone(),
                        array_index: Some(k),
                        submitted_unix: now,
                    };
                    live.insert(n.clone(), r.id());
                    table.jobs.insert(n.to_string(), r);
                }
                submitted.push(format!("{label} (array of {}) -> job {id}", names.len()));
            } else {
                let deps = dep_ids(s, &live);
                let res = self.resources(s).clone();
                let script = job_script(
                    &btx,
                    run,
                    &self.device,
                    &[(s.name.as_str(), run.join(&s.dir))],
                );
                let id = self.sbatch(run, s.name.as_str(), &script, &res, &deps, None)?;
                let r = JobRef {
                    job_id: id.clone(),
                    array_index: None,
                    submitted_unix: now,
                };
                live.insert(s.name.clone(), r.id());
                table.jobs.insert(s.name.to_string(), r);
                submitted.push(format!("{} -> job {id}", s.name));
            }
            save_jobs(run, &table)?;
            i += 1;
        }
        for l in &submitted {
            errln!("submitted {l}");
        }
        if already > 0 {
            errln!("{already} stage(s) already queued or running (kept)");
        }
        if submitted.is_empty() && live.is_empty() {
            errln!("nothing to submit");
        }
        if !self.wait {
            errln!("follow with `btx status {}`", run.display());
            for name in live.keys() {
                outcomes.insert(name.clone(), Outcome::Submitted);
            }
            return Ok(outcomes);
        }
        // Wait for every job to leave the queue, then read the outcome from the run directory.
        loop {
            let pending: Vec<&StageId> = live
                .iter()
                .filter(|(_, id)| job_info(id).is_some_and(|i| is_live(&i.state)))
                .map(|(n, _)| n)
                .collect();
            if pending.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        for name in live.keys() {
            let s = plan.stage(name)?;
            let done = crate::run::manifest::check(plan, run, s).is_done();
            let o = if done {
                Outcome::Done { seconds: 0.0 }
            } else {
                let info = table
                    .jobs
                    .get(name.as_str())
                    .and_then(|j| job_info(&j.id()));
                match info.as_ref().map(|i| i.state.as_str()) {
                    Some("CANCELLED") => Outcome::Blocked {
                        by: info.map(|i| i.reason).unwrap_or_default(),
                    },
                    _ => Outcome::Failed { code: None },
                }
            };
            outcomes.insert(name.clone(), o);
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPLIT: &str = "JobId=303 ArrayJobId=282 ArrayTaskId=0 JobName=btx-experts JobState=RUNNING Reason=None ExitCode=0:0 RunTime=00:00:09";

    #[test]
    fn a_pending_array_task_takes_its_meta_records_state() {
        let text = format!("{SPLIT}\nJobId=282 ArrayJobId=282 ArrayTaskId=1-2%4 JobState=PENDING Reason=Resources ExitCode=0:0 RunTime=00:00:00");
        let i = array_task_from_records(&text, 2).unwrap();
        assert_eq!(
            (i.state.as_str(), i.reason.as_str()),
            ("PENDING", "Resources")
        );
        assert_eq!(array_task_from_records(&text, 0).unwrap().state, "RUNNING");
        assert_eq!(array_task_from_records(&text, 3), None);
    }

    #[test]
    fn a_cancelled_meta_record_cancels_its_unsplit_tasks() {
        let text = format!("JobId=282 ArrayJobId=282 ArrayTaskId=4294967294 JobState=CANCELLED Reason=Resources ExitCode=0:0 RunTime=00:00:00\n{SPLIT}");
        assert_eq!(
            array_task_from_records(&text, 1).unwrap().state,
            "CANCELLED"
        );
        assert_eq!(array_task_from_records(&text, 0).unwrap().state, "RUNNING");
    }

    #[test]
    fn task_lists_with_commas_are_understood() {
        let text = "JobId=9 ArrayJobId=9 ArrayTaskId=1,3,7-9 JobState=PENDING Reason=Dependency";
        for (t, held) in [(1, true), (2, false), (3, true), (8, true), (10, false)] {
            assert_eq!(array_task_from_records(text, t).is_some(), held, "task {t}");
        }
    }

    #[test]
    fn the_job_script_passes_the_device_on() {
        let s = job_script(
            Path::new("/opt/btx"),
            Path::new("/runs/r"),
            "cuda",
            &[("seed", PathBuf::from("/runs/r/seed"))],
        );
        assert!(s.contains("--device 'cuda' stage \"$STAGE\""), "{s}");
    }
}
