//! `btx run`: the whole pipeline on a tiny recipe; finished stages are skipped, changed ones
//! (and only those and their dependents) are redone, a killed expert does not stop its siblings
//! and resumes from its checkpoint on the next run with the same final weights.

use btx_testkit::Scratch;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

fn tmp(tag: &str) -> Scratch {
    let d = Scratch::new(&format!("run-{tag}"));
    std::fs::write(d.join("recipe.toml"), common::small_recipe(&[])).unwrap();
    d
}

fn btx_run(dir: &Path, out: &str, sets: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.args(["--threads", "2", "run"])
        .arg(dir.join("recipe.toml"))
        .arg("--out")
        .arg(dir.join(out))
        .args(["--jobs", "2"])
        .env("BTX_LOG", "warn");
    for s in sets {
        c.args(["--set", s]);
    }
    c
}

fn ok(o: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "btx run failed:\n{text}");
    text
}

/// When a stage last finished (its manifest's modification time).
fn finished_at(run: &Path, stage_dir: &str) -> std::time::SystemTime {
    std::fs::metadata(run.join(stage_dir).join("manifest.json"))
        .and_then(|m| m.modified())
        .expect("stage finished")
}

const STAGES: [(&str, &str); 11] = [
    ("data", "data"),
    ("seed", "seed"),
    ("expert:math", "experts/math"),
    ("expert:code", "experts/code"),
    ("mix:btx", "mix/btx"),
    ("finetune:btx", "finetune/btx"),
    ("baseline:dense", "baselines/dense"),
    ("upcycle", "upcycle"),
    ("baseline:upcycle-data", "baselines/upcycle-data"),
    ("baseline:merge-avg", "baselines/merge-avg"),
    ("report", "report"),
];

#[test]
fn runs_skips_finished_stages_and_redoes_only_what_changed() {
    let d = tmp("skip");
    let run = d.join("run");
    ok(btx_run(&d, "run", &[]).output().unwrap());
    for (name, dir) in STAGES {
        assert!(run.join(dir).join("DONE").is_file(), "{name} has no DONE");
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(dir).join("manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(m["stage"], name);
    }
    // The finetuned model is a Mixtral with 3 experts (2 domains + generalist), top-2.
    let cfg = btx_model::ModelConfig::load(&run.join("finetune/btx/model/config.json")).unwrap();
    assert_eq!(
        cfg.moe.as_ref().map(|m| (m.num_experts, m.top_k)),
        Some((3, 2))
    );
    // Compute accounting: the data-matched dense baseline trains on as many tokens as BTX.
    let tokens = |dir: &str| -> u64 {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(dir).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["compute"]["train_tokens"].as_u64().unwrap()
    };
    let btx = tokens("experts/math") + tokens("experts/code") + tokens("finetune/btx");
    assert_eq!(tokens("baselines/dense"), btx);
    assert_eq!(tokens("baselines/upcycle-data"), btx);

    // The report: every method row filled, the schema, plots that are PNG files.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let methods = [
        "seed",
        "expert:math",
        "expert:code",
        "btx",
        "dense",
        "upcycle-data",
        "merge-avg",
        "btm-top1",
        "btm-top2",
    ];
    for m in methods {
        for d in ["math", "code", "general", "average"] {
            assert!(
                results["methods"][m][d]["loss"]
                    .as_f64()
                    .is_some_and(f64::is_finite),
                "{m} {d}"
            );
            // The average accuracy leaves out task sets no method beats chance on (none here
            // may be solvable at this size: then there is no average).
            let solvable = ["math", "code", "general"]
                .iter()
                .any(|x| results["tasks"][x]["solvable"] == true);
            assert!(
                results["methods"][m][d]["accuracy"].is_number() || (d == "average" && !solvable),
                "{m} {d} accuracy"
            );
        }
        assert!(
            results["compute"][m]["active_params"].as_u64().unwrap() > 0,
            "{m}"
        );
    }
    assert_eq!(
        results["compute"]["btm-top1"]["inference_forward_passes"],
        3
    );
    assert_eq!(
        results["compute"]["btx"]["train_tokens"].as_u64().unwrap(),
        btx
    );
    assert!(results["routing"]["btx"]["domains"]["math"]["topk_share"].is_array());
    assert_eq!(results["verdict"].as_array().unwrap().len(), 5);
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains("| btx |") && report.contains("## Verdict"),
        "{report}"
    );
    if btx_eval::plots::font_available() {
        for p in [
            "accuracy.png",
            "loss.png",
            "loss_finetune.png",
            "routing_btx.png",
            "forest.png",
            "gain_kept.png",
        ] {
            let bytes = std::fs::read(run.join("plots").join(p)).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{p}");
            assert!(report.contains(&format!("plots/{p}")));
        }
    }

    let before: Vec<_> = STAGES
        .iter()
        .map(|(_, dir)| finished_at(&run, dir))
        .collect();
    let text = ok(btx_run(&d, "run", &[]).output().unwrap());
    assert!(text.contains("0 to run"), "{text}");
    let after: Vec<_> = STAGES
        .iter()
        .map(|(_, dir)| finished_at(&run, dir))
        .collect();
    assert_eq!(before, after, "a finished stage ran again");

    // Change one expert: it and everything downstream of it (or of the BTX budget) redo.
    ok(btx_run(&d, "run", &["experts.override.math.train.steps=6"])
        .output()
        .unwrap());
    let redone: Vec<&str> = STAGES
        .iter()
        .zip(&before)
        .filter(|((_, dir), b)| finished_at(&run, dir) != **b)
        .map(|((n, _), _)| *n)
        .collect();
    assert_eq!(
        redone,
        vec![
            "expert:math",
            "mix:btx",
            "finetune:btx",
            "baseline:dense",
            "baseline:upcycle-data",
            "baseline:merge-avg",
            "report"
        ]
    );
}

fn read_pid(run: &Path, dir: &str) -> Option<i32> {
    let text = std::fs::read_to_string(run.join(dir).join("stage.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

#[test]
fn a_killed_expert_does_not_stop_its_siblings_and_resumes_next_run() {
    let d = tmp("kill");
    let sets = ["experts.override.math.train.steps=40"];
    // Reference: an uninterrupted run.
    ok(btx_run(&d, "ref", &sets).output().unwrap());
    let run = d.join("run");
    let child = btx_run(&d, "run", &sets)
        .env("BTX_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let metrics = run.join("experts/math/metrics.jsonl");
    loop {
        let lines = std::fs::read_to_string(&metrics).map_or(0, |s| s.lines().count());
        if lines >= 9 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "expert:math never got going"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = read_pid(&run, "experts/math").expect("stage.json has the pid");
    // SAFETY: kill(2) on the stage process's pid; no memory is involved.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("expert:math"),
        "{text}"
    );
    // The sibling finished; what needs the killed expert did not run.
    assert!(run.join("experts/code/DONE").is_file(), "{text}");
    assert!(!run.join("mix/btx/DONE").exists());
    assert!(
        run.join("baselines/dense/DONE").is_file(),
        "independent stages still ran:\n{text}"
    );
    // Next run: the expert resumes from its newest checkpoint and everything completes.
    ok(btx_run(&d, "run", &sets)
        .env("BTX_LOG", "info")
        .output()
        .unwrap());
    let log = std::fs::read_to_string(run.join("experts/math/log.txt")).unwrap();
    assert!(log.contains("resuming from"), "{log}");
    for dir in ["experts/math", "finetune/btx"] {
        let a = std::fs::read(d.join("ref").join(dir).join("model/model.safetensors")).unwrap();
        let b = std::fs::read(run.join(dir).join("model/model.safetensors")).unwrap();
        assert!(
            a == b,
            "{dir}: interrupted run differs from the uninterrupted one"
        );
    }
}

fn status_json(run: &Path, stage: &str) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["status", "--json"])
        .arg(run)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["stage"] == stage)
        .unwrap()
}

fn status_of(run: &Path, stage: &str) -> String {
    status_json(run, stage)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Regression (issue 17): a second `btx run` on the same directory redid the data stage under
/// the first; killing only the parent left its trainer running, and the next run started a
/// second one in the same directory; `btx status` called dead stages running; `btx cancel`
/// signalled whatever process had the pid in stage.json.
#[test]
fn one_writer_per_run_stages_die_with_their_parent_and_cancel_checks_whom_it_signals() {
    let d = tmp("lock");
    let run = d.join("run");
    let sets = ["seed.pretrain.train.steps=100000"];
    let mut parent = btx_run(&d, "run", &sets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(run.join("seed/metrics.jsonl")).map_or(0, |s| s.lines().count())
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "seed never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = btx_run(&d, "run", &sets).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("in use by btx run") && err.contains("hint"),
        "{err}"
    );
    let by_hand = Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["stage", "seed", "--run"])
        .arg(&run)
        .env("BTX_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&by_hand.stderr);
    assert_eq!(by_hand.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by stage seed"), "{err}");
    assert!(run.join("data/DONE").is_file());
    assert_eq!(status_of(&run, "seed"), "running");
    // The device travels to the stage processes and is recorded.
    let started: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("seed/stage.json")).unwrap())
            .unwrap();
    assert_eq!(started["device"], "cpu");
    assert_eq!(started["threads"], 2);
    // `btx status` says where each stage runs (on a GPU: `cuda:<id>`).
    assert_eq!(status_json(&run, "seed")["device"], "cpu");
    assert_eq!(status_json(&run, "data")["device"], "cpu");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("data/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["device"], "cpu");

    // Kill only the parent: the stage goes with it (after writing its checkpoint).
    let seed_pid = read_pid(&run, "seed").unwrap();
    parent.kill().unwrap();
    parent.wait().unwrap();
    let t0 = Instant::now();
    // SAFETY: kill(2) with signal 0 only asks whether the pid exists.
    while unsafe { libc::kill(seed_pid, 0) } == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the seed stage outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status_of(&run, "seed"), "stopped");

    // stage.json naming a live process that is not the stage: status does not call it running
    // and cancel does not signal it.
    let mut bystander = Command::new("sleep").arg("30").spawn().unwrap();
    let sj = run.join("seed/stage.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sj).unwrap()).unwrap();
    v["pid"] = serde_json::json!(bystander.id());
    std::fs::write(&sj, v.to_string()).unwrap();
    assert_eq!(status_of(&run, "seed"), "stopped");
    let c = Command::new(env!("CARGO_BIN_EXE_btx"))
        .arg("cancel")
        .arg(&run)
        .output()
        .unwrap();
    assert!(c.status.success());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "cancel killed a process that was not a stage"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// Regression (issue 17): unknown domains, shapes that do not divide, top_k beyond the experts,
/// bad routing options and ignored keys passed `--dry-run` and failed hours later (or never).
#[test]
fn every_recipe_problem_is_reported_before_anything_runs() {
    let d = tmp("validate");
    let out = btx_run(
        &d,
        "run",
        &[
            "experts.domains=[\"math\", \"poetry\"]",
            "seed.pretrain.init.hidden_size=30",
            "seed.pretrain.init.num_heads=4",
            "mix.top_k=9",
            "mix.routing={mode=\"sample-top1\", anneal_rate=1e-4, min_tau=0}",
            "data.weights={math=1.0}",
        ],
    )
    .arg("--dry-run")
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "5 problems",
        "\"poetry\" is not in the data",
        "hidden_size 30 is not a multiple of num_heads 4",
        "top_k 9 must be in 1..=3",
        "min_tau > 0",
        "[data] weights and split",
        "hint",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    assert!(!d.join("run/plan.json").exists());

    // A freeze pattern that matches no parameter, caught before the seed trains.
    let out = btx_run(&d, "run", &["experts.train.freeze=[\"model.nothing.*\"]"])
        .arg("--dry-run")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 problems") && err.contains("expert math: freeze pattern"),
        "{err}"
    );
}
