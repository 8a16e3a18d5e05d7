//! Issue 28 (trust, second pass), the run directory: a DONE is believed only after its files
//! are looked at; a broken stage is redone and what read it re-checked; a refused command leaves
//! its `--out` as it was; `btx cancel` ends what it says it ended; the report is replaced whole
//! or not at all; a dry run writes nothing and takes no lock.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use btx_testkit::Scratch;

const TINY: &str = include_str!("../../../testdata/recipes/tiny.toml");

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn").args(["--threads", "2"]);
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "btx failed:\n{t}");
    t
}

/// A clear refusal: exit code 1, a message holding `needle`, a hint, no panic.
fn refused(c: &mut Command, needle: &str) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(needle), "wanted {needle:?} in:\n{t}");
    assert!(t.contains("hint"), "no hint in:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

fn recipe(d: &Path, extra: &str) -> PathBuf {
    let p = d.join("recipe.toml");
    std::fs::write(&p, format!("{TINY}\n{extra}")).unwrap();
    p
}

fn run_cmd(recipe: &Path, out: &Path) -> Command {
    let mut c = btx();
    c.arg("run").arg(recipe).arg("--out").arg(out);
    c
}

fn finished_at(run: &Path, dir: &str) -> SystemTime {
    std::fs::metadata(run.join(dir).join("manifest.json"))
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn status(run: &Path) -> Vec<serde_json::Value> {
    let o = btx().args(["status", "--json"]).arg(run).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn state_of(run: &Path, stage: &str) -> serde_json::Value {
    status(run)
        .into_iter()
        .find(|s| s["stage"] == stage)
        .unwrap_or_else(|| panic!("no stage {stage}"))
}

/// Every file under `dir` with a hash of its bytes and its modification time (to show that a
/// refused command changed nothing). The lock file is left out: taking the lock records who
/// holds it, which is how a second writer learns whom to wait for.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    use std::hash::{Hash, Hasher};
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let q = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(q);
            } else if e.file_name() != ".lock" {
                let m = std::fs::metadata(&q).unwrap().modified().unwrap();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&q).unwrap().hash(&mut h);
                out.push((q.strip_prefix(dir).unwrap().to_path_buf(), h.finish(), m));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Regression (issue 28, item 1): a removed or truncated output of a finished stage was
/// believed (`btx status` said done, `btx run` "all stages done"), later stages failed on it,
/// and no re-run repaired it.
#[test]
fn a_broken_stage_is_seen_redone_and_only_what_changed_downstream_redoes() {
    let d = Scratch::new("trust-done");
    let r = recipe(&d, "");
    let run = d.join("run");
    ok(&mut run_cmd(&r, &run));
    let model = run.join("experts/math/model/model.safetensors");
    let good = std::fs::read(&model).unwrap();
    let mix_done = finished_at(&run, "mix/btx");
    let report_done = finished_at(&run, "report");

    // Truncated: status names the file and the sizes; a stage that reads it refuses by name.
    std::fs::write(&model, &good[..100]).unwrap();
    let s = state_of(&run, "expert:math");
    assert_eq!(s["state"], "broken", "{s}");
    let detail = s["detail"].to_string();
    assert!(
        detail.contains("model.safetensors has 100 bytes") && detail.contains("btx run"),
        "{detail}"
    );
    refused(
        btx().args(["stage", "mix:btx", "--run"]).arg(&run),
        "model.safetensors has 100 bytes",
    );
    // `btx run` redoes it; the retrained expert is bit-identical, so the MiX that read it is
    // checked and kept, while the report (which reads the expert's loss curve and timings,
    // which a retrain changes) is redone.
    let t = ok(&mut run_cmd(&r, &run));
    assert!(t.contains("all stages done"), "{t}");
    assert_eq!(std::fs::read(&model).unwrap(), good);
    assert_eq!(finished_at(&run, "mix/btx"), mix_done, "the MiX was redone");
    assert_ne!(
        finished_at(&run, "report"),
        report_done,
        "the report is stale"
    );
    assert!(status(&run).iter().all(|s| s["state"] == "done"));

    // Removed, in the seed and in the data: the same repair, nothing else changes.
    std::fs::remove_file(run.join("seed/model/model.safetensors")).unwrap();
    let shard = run.join("data/tokens/math/val.tok");
    let mut bytes = std::fs::read(&shard).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&shard, &bytes).unwrap();
    assert!(state_of(&run, "seed")["detail"]
        .to_string()
        .contains("seed/model/model.safetensors is missing"));
    assert!(state_of(&run, "data")["detail"]
        .to_string()
        .contains("differs from what DONE recorded"));
    let t = ok(&mut run_cmd(&r, &run));
    assert!(t.contains("redoing"), "{t}");
    assert_eq!(finished_at(&run, "mix/btx"), mix_done);
    assert!(status(&run).iter().all(|s| s["state"] == "done"));
    let t = ok(run_cmd(&r, &run).arg("--dry-run"));
    assert!(t.contains(" 0 to run"), "{t}");

    // A DONE without its manifest is not believed either.
    std::fs::remove_file(run.join("eval/btx/manifest.json")).unwrap();
    assert_eq!(state_of(&run, "eval:btx")["state"], "broken");
    ok(&mut run_cmd(&r, &run));
    assert_eq!(state_of(&run, "eval:btx")["state"], "done");
}

/// Found by probing in the spirit of issue 28: a `btx run` refused for its executor cleared the
/// stages whose configuration changed first; a manifest whose record was cut down was believed;
/// a stage directory replaced by a file could not be cleared; `--dry-run` planned onto a file.
#[test]
fn odd_states_are_repaired_and_refusals_come_before_any_write() {
    let d = Scratch::new("trust-odd");
    let r = recipe(&d, "");
    let run = d.join("run");
    ok(&mut run_cmd(&r, &run));
    let before = snapshot(&run);
    refused(
        run_cmd(&r, &run).args(["--executor", "bogus", "--set", "experts.train.steps=5"]),
        "not an executor",
    );
    assert_eq!(
        snapshot(&run),
        before,
        "a refused run changed its directory"
    );
    // Values that would make NaN, or a mixture that cannot be drawn, are refused up front.
    for (set, want) in [
        (
            "finetune.weights.math=nan",
            "finetune.weights.math is not a finite number",
        ),
        ("finetune.weights.math=-1", "weights must be >= 0"),
        (
            "mix.router_std=inf",
            "mix.router_std is not a finite number",
        ),
    ] {
        refused(run_cmd(&r, &run).args(["--set", set]), want);
        assert_eq!(snapshot(&run), before, "{set}");
    }
    refused(
        run_cmd(&r, &d.join("recipe.toml")).arg("--dry-run"),
        "exists and is not a directory",
    );

    // A record with the model left out, and the model gone: not believed.
    let m = run.join("seed/manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
    v["files"]["files"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.ends_with("model.safetensors"));
    std::fs::write(&m, v.to_string()).unwrap();
    std::fs::remove_file(run.join("seed/model/model.safetensors")).unwrap();
    let s = state_of(&run, "seed");
    assert_eq!(s["state"], "broken", "{s}");
    assert!(s["detail"].to_string().contains("does not record"), "{s}");
    // Without any record (a manifest from before them), a missing model is seen as well.
    v.as_object_mut().unwrap().remove("files");
    std::fs::write(&m, v.to_string()).unwrap();
    assert_eq!(state_of(&run, "seed")["state"], "broken");
    // A stage directory that became a file.
    std::fs::remove_dir_all(run.join("experts/math")).unwrap();
    std::fs::write(run.join("experts/math"), b"x").unwrap();
    let t = ok(&mut run_cmd(&r, &run));
    assert!(t.contains("all stages done"), "{t}");
    assert!(status(&run).iter().all(|s| s["state"] == "done"));
    assert!(run.join("experts/math/DONE").is_file());
}

/// Regression (issue 28, items 7 and 3): the report was written in place (a full disk left
/// results.json empty and the plots cut off, plot write errors were warnings), and a failing
/// re-run destroyed the previous good report.
#[test]
fn a_report_that_cannot_be_written_fails_and_keeps_the_last_good_one() {
    let d = Scratch::new("trust-report");
    let r = recipe(&d, "");
    let run = d.join("run");
    ok(&mut run_cmd(&r, &run));
    let keep = |run: &Path| {
        ["report.md", "results.json"]
            .iter()
            .map(|f| std::fs::read(run.join(f)).unwrap())
            .collect::<Vec<_>>()
    };
    let before = keep(&run);
    let plots_before = std::fs::read_dir(run.join("plots")).unwrap().count();
    // Writes over 4 KiB fail (EFBIG, as on a full disk): results.json and every plot are larger.
    let mut c = btx();
    c.args(["stage", "report", "--run"]).arg(&run);
    // SAFETY: setrlimit and signal are async-signal-safe and only touch the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 4 << 10,
                rlim_max: 4 << 10,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    std::fs::remove_file(run.join("report/DONE")).unwrap();
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        keep(&run),
        before,
        "a failing report changed the last good one"
    );
    assert_eq!(
        std::fs::read_dir(run.join("plots")).unwrap().count(),
        plots_before
    );
    let leftovers: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The report owns `plots`: a file, or a link planted in its place, is replaced (the link
    // itself, never what it points to), and the stage can always be redone.
    std::fs::remove_dir_all(run.join("plots")).unwrap();
    std::fs::write(run.join("plots"), b"not a directory").unwrap();
    // (The failed attempt above left the report without its DONE: it is redone.)
    assert!(!run.join("report/DONE").exists());
    ok(&mut run_cmd(&r, &run));
    assert!(run.join("plots").is_dir() && run.join("report/DONE").is_file());
    let outside = d.join("mine");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep.txt"), b"mine").unwrap();
    std::fs::remove_dir_all(run.join("plots")).unwrap();
    std::os::unix::fs::symlink(&outside, run.join("plots")).unwrap();
    std::fs::remove_file(run.join("results.json")).unwrap();
    std::fs::create_dir_all(run.join("results.json")).unwrap();
    ok(&mut run_cmd(&r, &run));
    assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!std::fs::symlink_metadata(run.join("plots"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(run.join("results.json").is_file());
}

fn train_config(d: &Path, steps: usize, batch: usize) -> PathBuf {
    let p = d.join("train.toml");
    std::fs::write(
        &p,
        format!(
            r#"
[model.init]
hidden_size = 16
intermediate_size = 32
num_layers = 1
num_heads = 2
max_position_embeddings = 64
[data.prepare]
[data.prepare.tokenizer]
vocab_size = 300
[[data.prepare.domains]]
name = "math"
builtin = "math"
docs = 100
[optim]
warmup_steps = 1
[train]
steps = {steps}
batch_size = {batch}
seq_len = 16
checkpoint_every = 2
"#
        ),
    )
    .unwrap();
    p
}

/// `btx train --config CFG --out OUT EXTRA...`.
fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = btx();
    c.args(["train", "--config"])
        .arg(cfg)
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// Regression (issue 28, items 3 and 12): `btx train` into a directory holding checkpoints,
/// without `--resume` and with another config, refused only after rewriting OUT/data and
/// config.resolved.toml; a missing corpus was found only when the data was prepared.
#[test]
fn a_refused_train_leaves_its_out_as_it_was() {
    let d = Scratch::new("trust-train");
    let out = d.join("out");
    let cfg = train_config(&d, 4, 2);
    // Stopped after 2 of 4 steps, with a checkpoint (exit 75: "resume me").
    let o = train(&cfg, &out, &["--max-steps-this-run", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    assert!(out.join("checkpoints").is_dir());
    let before = snapshot(&out);
    // Another data config, no --resume: refused, nothing touched.
    let other = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("vocab_size = 300", "vocab_size = 280");
    std::fs::write(&cfg, other).unwrap();
    refused(&mut train(&cfg, &out, &[]), "already holds checkpoints");
    assert_eq!(snapshot(&out), before);
    // --resume with a changed data prepare: its checkpoints' data position belongs to the old.
    refused(
        &mut train(&cfg, &out, &["--resume"]),
        "another [data.prepare]",
    );
    assert_eq!(snapshot(&out), before);
    // --resume with a changed batch size: refused by the checkpoint's config.
    let cfg = train_config(&d, 4, 3);
    refused(
        &mut train(&cfg, &out, &["--resume"]),
        "train.batch_size: 2 -> 3",
    );
    assert_eq!(snapshot(&out), before);
    // A bad value: refused before the output directory is even made.
    let fresh = d.join("fresh");
    refused(&mut train(&cfg, &fresh, &["--set", "optim.lr=-1"]), "lr");
    // A missing corpus, likewise.
    let bad = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("builtin = \"math\"", "paths = [\"corpus/missing.txt\"]");
    std::fs::write(&cfg, bad).unwrap();
    refused(&mut train(&cfg, &fresh, &[]), "corpus/missing.txt");
    assert!(!fresh.exists(), "a refused train made {fresh:?}");
    // A checkpoint beyond train.steps, or a model other than the checkpoint's, is refused.
    let cfg = train_config(&d, 4, 2);
    refused(
        &mut train(&cfg, &out, &["--resume", "--set", "train.steps=1"]),
        "beyond train.steps 1",
    );
    refused(
        &mut train(
            &cfg,
            &out,
            &["--resume", "--set", "model.init.num_layers=2"],
        ),
        "num_hidden_layers: 1 -> 2",
    );
    // (A command-line value out of range is clap's usage error: exit code 2.)
    let o = train(&cfg, &out, &["--max-steps-this-run", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("0 is not in 1"), "{}", text(&o));
    assert_eq!(snapshot(&out), before);
    // A directory no trainer wrote (here: a run directory) is not trained into.
    let foreign = d.join("foreign");
    std::fs::create_dir_all(foreign.join("model")).unwrap();
    std::fs::write(foreign.join("model/notes.txt"), b"mine").unwrap();
    refused(&mut train(&cfg, &foreign, &[]), "no `btx train` wrote it");
    assert_eq!(
        std::fs::read(foreign.join("model/notes.txt")).unwrap(),
        b"mine"
    );
    // The original config resumes and finishes.
    ok(&mut train(&cfg, &out, &["--resume"]));
    assert!(out.join("model/model.safetensors").is_file());
}

/// Regression (issue 28, item 12): a recipe naming a missing corpus file or task file was
/// refused only when its data stage ran; `--dry-run` took the run lock and made `--out`.
#[test]
fn recipe_inputs_are_checked_up_front_and_a_dry_run_writes_nothing() {
    let d = Scratch::new("trust-recipe");
    std::fs::create_dir_all(d.join("corpus")).unwrap();
    std::fs::write(d.join("corpus/a.txt"), "one two three\n\nfour five\n").unwrap();
    let r = recipe(
        &d,
        r#"
[[data.prepare.domains]]
name = "prose"
paths = ["corpus/a.txt", "corpus/missing/*.txt"]
tasks_file = "tasks/prose.jsonl"
"#,
    );
    let out = d.join("run");
    let t = refused(run_cmd(&r, &out).arg("--dry-run"), "corpus/missing");
    assert!(!out.exists(), "{t}");
    refused(&mut run_cmd(&r, &out), "corpus/missing");
    assert!(!out.exists());
    // A dry run of a valid recipe on a run directory someone else holds: it reads, it does not
    // wait for or take the lock, and it writes nothing.
    let r = recipe(&d, "");
    ok(&mut run_cmd(&r, &out));
    let before = snapshot(&out);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(out.join(".lock"))
        .unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
    assert_eq!(rc, 0);
    let t = ok(run_cmd(&r, &out).arg("--dry-run"));
    assert!(t.contains(" 0 to run"), "{t}");
    assert_eq!(snapshot(&out), before);
    let fresh = d.join("never");
    ok(run_cmd(&r, &fresh).arg("--dry-run"));
    assert!(!fresh.exists());
}

/// Regression (issue 28, item 6, and "a stopped stage shown as running"): `btx cancel` on a
/// suspended (SIGSTOP) stage printed "1 cancelled" and exited 0 while the process kept the lock.
#[test]
fn cancel_ends_a_suspended_stage_and_says_so_only_when_it_is_gone() {
    let d = Scratch::new("trust-cancel");
    let r = recipe(&d, "");
    let out = d.join("run");
    let mut parent = run_cmd(&r, &out)
        .args(["--set", "seed.pretrain.train.steps=1000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_to_string(out.join("seed/metrics.jsonl")).map_or(0, |s| s.lines().count())
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "seed never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let sj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("seed/stage.json")).unwrap())
            .unwrap();
    let pid = sj["pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the stage process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    std::thread::sleep(Duration::from_millis(200));
    let s = state_of(&out, "seed");
    assert_eq!(s["state"], "suspended", "{s}");
    assert!(s["detail"].to_string().contains("kill -CONT"), "{s}");
    let t = ok(btx().arg("cancel").arg(&out));
    assert!(t.contains("stopped seed") && t.contains("cancelled"), "{t}");
    // Gone, both of them, and the locks are free: a new run may start at once. (Reaped only
    // once its parent waits: a zombie is gone too.)
    // SAFETY: signal 0 only asks whether the pid exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'));
    assert!(!exists || zombie, "the stage process survived cancel");
    let st = parent.wait().unwrap();
    assert!(!st.success());
    assert_eq!(state_of(&out, "seed")["state"], "stopped");
}

/// Issue 28 in the same spirit: a checkpoint's DONE was believed without looking, so a newest
/// checkpoint whose model was truncated since failed every resume, for ever. Its DONE now
/// records its files; a broken one is passed over and the run resumes from the one before,
/// ending bit-identical to an uninterrupted run.
#[test]
fn a_broken_newest_checkpoint_is_passed_over_on_resume() {
    let d = Scratch::new("trust-ckpt");
    let cfg = train_config(&d, 6, 2);
    let run = |out: &Path, extra: &[&str]| train(&cfg, out, extra).output().unwrap();
    let reference = d.join("ref");
    assert!(run(&reference, &[]).status.success());
    let out = d.join("out");
    let o = run(&out, &["--max-steps-this-run", "4"]);
    assert_eq!(o.status.code(), Some(75), "{}", text(&o));
    let newest = out.join("checkpoints/step-00000004/model/model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(&out, &["--resume"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("step-00000004") && t.contains("passing over it"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(out.join("model/model.safetensors")).unwrap(),
        std::fs::read(reference.join("model/model.safetensors")).unwrap(),
        "resumed from step 2, the run should end where an uninterrupted one does"
    );
}

/// Found by probing in the spirit of issue 28: settings that overflow (a router std of 1e300,
/// mixing weights whose sum is past f32's range, a finite weight so large that the logits
/// overflow) wrote models or outputs holding Inf/NaN with exit 0. Nothing non-finite is
/// written, and the `--out` does not appear.
#[test]
fn nothing_non_finite_is_written_whatever_the_settings() {
    let d = Scratch::new("trust-finite");
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/hf-tiny/llama/model");
    let out = d.join("o");
    for args in [
        vec!["mix", "--router-std", "1e300"],
        vec!["upcycle", "--num-experts", "2", "--router-std", "1e300"],
    ] {
        let mut c = btx();
        c.args(&args).arg("--seed").arg(&model);
        if args[0] == "mix" {
            c.arg("--experts").arg(&model).arg(&model);
        }
        let t = refused(c.arg("--out").arg(&out), "non-finite");
        assert!(!out.exists(), "{args:?}: {t}");
    }
    // Weights whose sum is past f64's range (each weight / inf = 0).
    let t = refused(
        btx()
            .args(["average", "--weights", "1e308,1e308", "--models"])
            .arg(&model)
            .arg(&model)
            .arg("--out")
            .arg(&out),
        "finite non-negative values",
    );
    assert!(!out.exists(), "{t}");

    // A finite weight of 3e38 overflows the logits: `btx forward` writes none of them.
    let big = d.join("big");
    std::fs::create_dir_all(&big).unwrap();
    std::fs::copy(model.join("config.json"), big.join("config.json")).unwrap();
    let m = btx_model::Model::load(&model, &btx_model::burn::prelude::Device::flex()).unwrap();
    let mut params = m.host_params();
    for (name, t) in &mut params {
        if name.ends_with("mlp.up_proj.weight") {
            t.data.iter_mut().for_each(|x| *x = 3e38 * x.signum());
        }
    }
    let raw: Vec<(&str, Vec<usize>, Vec<f32>)> = params
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape.clone(), t.data.clone()))
        .collect();
    btx_testkit::write_raw_f32_safetensors(&big.join("model.safetensors"), &raw);
    let ids = d.join("ids.safetensors");
    let mut w = btx_model::io::StreamWriter::create(
        &ids,
        vec![("input_ids".into(), btx_model::io::OutDtype::I64, vec![1, 4])],
    )
    .unwrap();
    w.write_i64("input_ids", &[1, 2, 3, 4]).unwrap();
    w.finish().unwrap();
    let fwd = d.join("fwd.safetensors");
    refused(
        btx()
            .args(["forward", "--model"])
            .arg(&big)
            .arg("--input")
            .arg(&ids)
            .arg("--out")
            .arg(&fwd),
        "non-finite",
    );
    assert!(!fwd.exists());
}

/// Found by probing: `btx export --format hf-mixtral` of a switch (or sample-top1) model wrote a
/// Mixtral that transformers runs as plain top-1, with other logits, and said nothing.
#[test]
fn an_export_transformers_would_compute_differently_is_refused_unless_accepted() {
    let d = Scratch::new("trust-export");
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/hf-tiny/llama/model");
    let sw = d.join("switch");
    ok(btx()
        .args(["mix", "--routing", "switch", "--seed"])
        .arg(&model)
        .arg("--experts")
        .arg(&model)
        .arg(&model)
        .arg("--out")
        .arg(&sw));
    let out = d.join("hf");
    refused(
        btx()
            .args(["export", "--model"])
            .arg(&sw)
            .arg("--out")
            .arg(&out),
        "transformers' Mixtral does not compute",
    );
    assert!(!out.exists());
    ok(btx()
        .args(["export", "--allow-routing-change", "--model"])
        .arg(&sw)
        .arg("--out")
        .arg(&out));
    assert!(out.join("config.json").is_file());
}
