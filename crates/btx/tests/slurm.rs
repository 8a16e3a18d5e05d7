//! A real Slurm: examples/quick.toml (shrunk with --set) through `btx run --executor slurm`
//! end to end, with an expert requeued mid-training (it resumes from its checkpoint), compared
//! with the local executor; `btx status` and `btx cancel`. Ignored by a plain `cargo test`; run with `--ignored`
//! where a Slurm cluster answers (start one with `scripts/slurm-local.sh up`): CI does.

use btx_testkit::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHRINK: [&str; 8] = [
    "seed.pretrain.train.steps=60",
    "experts.train.steps=30",
    "experts.train.checkpoint_every=3",
    "finetune.train.steps=20",
    "eval.tasks=8",
    "eval.windows=4",
    "data.prepare.tokenizer.vocab_size=512",
    "experts.override.math.train.steps=80",
];

fn slurm_available() -> bool {
    std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo")
            .arg("-h")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// These tests are `#[ignore]`d (run with `--ignored`); asked to run, they fail without Slurm
/// rather than pass without testing anything.
fn require_slurm() {
    assert!(
        slurm_available(),
        "no Slurm cluster answers\nhint: run `eval \"$(scripts/slurm-local.sh up)\"` (as root) to start one and export SLURM_CONF"
    );
}

fn recipe() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/quick.toml")
}

fn tmp(tag: &str) -> Scratch {
    Scratch::absent(&format!("slurm-{tag}"))
}

fn btx(args: &[&str], run: &Path, sets: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.args(args).arg("--out").arg(run).env("BTX_LOG", "info");
    for s in SHRINK.iter().chain(sets) {
        c.args(["--set", s]);
    }
    c
}

fn job_of(run: &Path, stage: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("slurm/jobs.json")).unwrap())
            .unwrap();
    let j = &v["jobs"][stage];
    match j["array_index"].as_u64() {
        Some(i) => format!("{}_{i}", j["job_id"].as_str().unwrap()),
        None => j["job_id"].as_str().unwrap().to_string(),
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Slurm's state of one job (`squeue -h -o %T`), None once it has left the queue.
fn job_state(job: &str) -> Option<String> {
    let out = Command::new("squeue")
        .args(["-h", "-o", "%T", "-j", job])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Waits for the run's report; fails at once, saying what broke, when a stage failed or was
/// cancelled (the report would never come).
fn wait_for_report(run: &Path, secs: u64) {
    let t0 = Instant::now();
    let mut last_check = Instant::now();
    while !run.join("report/DONE").is_file() {
        let timed_out = t0.elapsed() > Duration::from_secs(secs);
        if timed_out || last_check.elapsed() > Duration::from_secs(2) {
            last_check = Instant::now();
            let st = status(run);
            let broken: Vec<_> = st
                .iter()
                .filter(|s| s["state"] == "failed" || s["state"] == "cancelled")
                .collect();
            if timed_out || !broken.is_empty() {
                let math =
                    std::fs::read_to_string(run.join("experts/math/log.txt")).unwrap_or_default();
                let squeue = Command::new("squeue").arg("-a").output().unwrap().stdout;
                panic!(
                    "{} waiting for the report\nstatus: {st:#?}\nsqueue: {}\nmath log:\n{math}",
                    if timed_out {
                        "timed out"
                    } else {
                        "a stage broke"
                    },
                    String::from_utf8_lossy(&squeue)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

fn results(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap()
}

fn status(run: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["status", "--json"])
        .arg(run)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
#[ignore = "needs a Slurm cluster: `scripts/slurm-local.sh up`, then `cargo test --release --test slurm -- --ignored` (CI does)"]
fn quick_recipe_through_slurm_with_a_requeued_expert_matches_the_local_run() {
    require_slurm();
    let local = tmp("local");
    let st = btx(&["run"], &local, &[])
        .arg(recipe())
        .args(["--jobs", "2"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let run = tmp("slurm");
    let out = btx(&["run"], &run, &[])
        .arg(recipe())
        .args(["--executor", "slurm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Requeue the math expert in the middle of its training, as a preemption would.
    let metrics = run.join("experts/math/metrics.jsonl");
    wait_for("the math expert to train", 300, || lines(&metrics) >= 12);
    let job = job_of(&run, "expert:math");
    assert!(Command::new("scontrol")
        .args(["requeue", &job])
        .status()
        .unwrap()
        .success());
    // Slurm holds a requeued job for ~2 minutes; let it go sooner. Not at once: slurmd rejects
    // a launch whose credential is from the same second as the requeue's revocation ("Job
    // credential revoked"), which fails the job and, through kill_invalid_depend, the pipeline.
    wait_for("the requeued job to be pending", 60, || {
        job_state(&job).as_deref() == Some("PENDING")
    });
    std::thread::sleep(Duration::from_millis(2500));
    let _ = Command::new("scontrol")
        .args(["update", &format!("JobId={job}"), "StartTime=now"])
        .status();
    wait_for_report(&run, 600);
    let log = std::fs::read_to_string(run.join("experts/math/log.txt")).unwrap();
    assert!(
        log.contains("restart 1") && log.contains("resuming from"),
        "{log}"
    );
    // Every stage done, each with its Slurm job id; the report equals the local executor's.
    for s in status(&run) {
        assert_eq!(s["state"], "done", "{s}");
        assert!(s["job"].is_string(), "{s}");
    }
    // The device reached the jobs (issue 17: it did not) and each stage recorded it.
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("experts/math/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["device"], "cpu", "{m}");
    let script = std::fs::read_dir(run.join("slurm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .next()
        .expect("a job script in DIR/slurm");
    assert!(script.contains("--device 'cpu'"), "{script}");
    let (a, b) = (results(&local), results(&run));
    assert_eq!(a["methods"], b["methods"], "Slurm and local results differ");
    assert_eq!(a["routing"], b["routing"]);
    // Re-running submits nothing.
    let out = btx(&["run"], &run, &[])
        .arg(recipe())
        .args(["--executor", "slurm"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to submit"));
}

#[test]
#[ignore = "needs a Slurm cluster: `scripts/slurm-local.sh up`, then `cargo test --release --test slurm -- --ignored` (CI does)"]
fn status_shows_running_jobs_and_cancel_stops_them() {
    require_slurm();
    let run = tmp("cancel");
    let out = btx(
        &["run"],
        &run,
        &["experts.override.math.train.steps=100000"],
    )
    .arg(recipe())
    .args(["--executor", "slurm"])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the math expert to run", 300, || {
        lines(&run.join("experts/math/metrics.jsonl")) >= 2
    });
    let st = status(&run);
    let math = st.iter().find(|s| s["stage"] == "expert:math").unwrap();
    assert_eq!(math["state"], "running", "{math}");
    assert!(math["progress"].as_str().unwrap().contains("/100000"));
    let mix = st.iter().find(|s| s["stage"] == "mix:btx").unwrap();
    assert_eq!(mix["state"], "pending");
    let c = Command::new(env!("CARGO_BIN_EXE_btx"))
        .arg("cancel")
        .arg(&run)
        .output()
        .unwrap();
    assert!(c.status.success());
    let t0 = Instant::now();
    loop {
        let st = status(&run);
        let live: Vec<_> = st
            .iter()
            .filter(|s| s["state"] == "running" || s["state"] == "pending")
            .collect();
        if live.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "timed out waiting for the jobs to end; still live: {live:?}\nsqueue: {}",
            String::from_utf8_lossy(&Command::new("squeue").arg("-a").output().unwrap().stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = status(&run);
    let state = |n: &str| st.iter().find(|s| s["stage"] == n).unwrap()["state"].clone();
    assert_eq!(state("expert:math"), "cancelled");
    assert_eq!(state("mix:btx"), "cancelled");
    assert_eq!(state("data"), "done");
}

#[test]
#[ignore = "needs a Slurm cluster: `scripts/slurm-local.sh up`, then `cargo test --release --test slurm -- --ignored` (CI does)"]
fn a_failed_expert_task_leaves_its_siblings_and_status_says_why() {
    require_slurm();
    let run = tmp("fail");
    // A learning rate that diverges: valid as configuration, the math expert fails in training
    // (after one non-finite step).
    let out = btx(
        &["run"],
        &run,
        &[
            "experts.override.math.optim.lr=1e6",
            "experts.override.math.train.max_nonfinite_steps=1",
        ],
    )
    .arg(recipe())
    .args(["--executor", "slurm", "--wait"])
    .output()
    .unwrap();
    assert!(!out.status.success(), "a failed stage must fail the run");
    let st = status(&run);
    let get = |n: &str| st.iter().find(|s| s["stage"] == n).unwrap().clone();
    assert_eq!(get("expert:math")["state"], "failed");
    let why = get("expert:math")["detail"].to_string();
    assert!(
        why.contains("diverged"),
        "status should show the failure: {why}"
    );
    assert_eq!(
        get("expert:code")["state"],
        "done",
        "a sibling was affected"
    );
    assert_eq!(get("expert:knowledge")["state"], "done");
    assert_eq!(
        get("mix:btx")["state"],
        "cancelled",
        "a dependent must not stay pending"
    );
    assert_eq!(
        get("baseline:dense-compute")["state"],
        "done",
        "independent stages still run"
    );
}
