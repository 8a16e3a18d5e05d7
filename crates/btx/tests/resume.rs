//! Checkpoints never lie: a run killed with SIGKILL at arbitrary moments (including while a
//! checkpoint is being written) and resumed ends with weights bit-identical to an
//! uninterrupted run; SIGTERM stops cleanly with a checkpoint and exit code 75.

use btx_testkit::Scratch;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn btx() -> Command {
    Command::new(env!("CARGO_BIN_EXE_btx"))
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/tiny-train.toml")
}

fn tmp(tag: &str) -> Scratch {
    Scratch::absent(&format!("resume-{tag}"))
}

const SETS: [&str; 4] = [
    "train.steps=30",
    "train.checkpoint_every=3",
    "train.keep_checkpoints=2",
    "data.prepare.domains.0.docs=300",
];

fn train_cmd(out: &Path, threads: &str, resume: bool) -> Command {
    let mut c = btx();
    c.args(["--threads", threads, "train", "--config"])
        .arg(example())
        .arg("--out")
        .arg(out)
        .env("BTX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for s in SETS {
        c.args(["--set", s]);
    }
    if resume {
        c.arg("--resume");
    }
    c
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model/model.safetensors")).expect("final model written")
}

#[test]
fn sigkill_at_any_moment_then_resume_is_bit_identical() {
    let a = tmp("a");
    assert!(train_cmd(&a, "1", false).status().unwrap().success());
    let reference = weights(&a);

    let b = tmp("b");
    // Kill points: after N metric lines, plus a delay that lands at varied places in a step
    // or in a checkpoint write. Alternate thread counts between the pieces as well.
    let plan: [(usize, u64); 5] = [(2, 0), (7, 3), (11, 17), (16, 1), (23, 9)];
    let mut kills = 0;
    for (i, (lines, delay_ms)) in plan.iter().enumerate() {
        let threads = if i % 2 == 0 { "2" } else { "1" };
        let mut child = train_cmd(&b, threads, i > 0).spawn().unwrap();
        let t0 = Instant::now();
        while metrics_lines(&b) < *lines && t0.elapsed() < Duration::from_secs(60) {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(*delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 3,
        "the run finished before it could be killed enough"
    );
    let st = train_cmd(&b, "2", true).status().unwrap();
    assert!(st.success());
    assert!(
        weights(&b) == reference,
        "resumed weights differ from the uninterrupted run"
    );
    // metrics.jsonl has every step exactly once despite the restarts.
    let steps: Vec<u64> = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
}

#[test]
fn sigterm_checkpoints_and_exits_75_then_resumes() {
    let a = tmp("ta");
    assert!(train_cmd(&a, "1", false).status().unwrap().success());
    let b = tmp("tb");
    let mut child = train_cmd(&b, "1", false).spawn().unwrap();
    while metrics_lines(&b) < 5 {
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(1));
    }
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(75), "graceful stop exits with 75");
    assert!(
        !b.join("model").exists(),
        "a stopped run must not look finished"
    );
    assert!(train_cmd(&b, "1", true).status().unwrap().success());
    assert!(weights(&b) == weights(&a));
}

#[test]
fn a_second_run_without_resume_is_refused() {
    let a = tmp("twice");
    assert!(train_cmd(&a, "1", false).status().unwrap().success());
    let out = train_cmd(&a, "1", false)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--resume"), "{err}");
}
