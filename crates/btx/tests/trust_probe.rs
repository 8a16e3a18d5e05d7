//! What an adversarial probe found: `btx run` and `btx demo` writing a whole run into a user's
//! directory or another run's model; panics on a data shard with token ids outside the
//! vocabulary and on zero counts; requests that grew until the machine ran out of memory; and
//! flags that took meaningless values. Every one is now a one-line error with a hint, exit code
//! 1, and nothing written.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use btx_testkit::Scratch;

mod common;
use common::{btx, ok, refused, TINY};

fn recipe(d: &Path, text: &str) -> PathBuf {
    let p = d.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn run_cmd(recipe: &Path, out: &Path) -> Command {
    let mut c = btx();
    c.arg("run").arg(recipe).arg("--out").arg(out);
    c
}

/// Every entry under `dir` (directories included) with a hash of its bytes and its
/// modification time: a refused command must leave all of it as it was.
fn snapshot(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    use std::hash::{Hash, Hasher};
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let q = e.path();
            let m = std::fs::symlink_metadata(&q).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            if m.is_dir() {
                stack.push(q.clone());
            } else {
                std::fs::read(&q).unwrap().hash(&mut h);
            }
            out.push((
                q.strip_prefix(dir).unwrap().to_path_buf(),
                h.finish(),
                m.modified().unwrap(),
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A finished tiny run (~3 s) in `d/run1`.
fn finished_run(d: &Path) -> (PathBuf, PathBuf) {
    let r = recipe(d, TINY);
    let run = d.join("run1");
    ok(&mut run_cmd(&r, &run));
    assert!(run.join("seed/model/model.safetensors").is_file());
    (r, run)
}

/// Regression (probe item 1): `btx run` and `btx demo` wrote a whole run into any existing
/// directory: beside a user's notes, into another run's finished model, into a corpus
/// directory the recipe reads.
#[test]
fn run_and_demo_refuse_an_out_that_is_not_theirs_before_writing() {
    let d = Scratch::new("probe-out");
    let (r, run1) = finished_run(&d);

    // A user's directory: refused, by run (dry or not) and demo alike, and left as it was.
    let ur = d.join("ur");
    std::fs::create_dir(&ur).unwrap();
    std::fs::write(ur.join("notes.txt"), "precious\n").unwrap();
    let before = snapshot(&ur);
    refused(&mut run_cmd(&r, &ur), "not a btx run directory");
    refused(run_cmd(&r, &ur).arg("--dry-run"), "not a btx run directory");
    refused(
        btx().args(["demo", "--quick", "--out"]).arg(&ur),
        "not a btx run directory",
    );
    assert_eq!(snapshot(&ur), before);

    // Another run's finished model directories: refused, and left byte for byte as they were.
    for (cmd, target) in [("run", "experts/math/model"), ("demo", "seed/model")] {
        let before = snapshot(&run1);
        let out = run1.join(target);
        let mut c = if cmd == "run" {
            run_cmd(&r, &out)
        } else {
            let mut c = btx();
            c.args(["demo", "--quick", "--out"]).arg(&out);
            c
        };
        refused(&mut c, "not a btx run directory");
        assert_eq!(snapshot(&run1), before, "{cmd} --out {target}");
    }

    // The run directory itself is continued (it has plan.json): nothing left to run.
    let t = ok(&mut run_cmd(&r, &run1));
    assert!(t.contains("0 to run"), "{t}");

    // A directory holding only what a refused or killed `btx run` leaves (its lock) is
    // continued, not refused.
    let fresh = d.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join(".lock"), "").unwrap();
    ok(run_cmd(&r, &fresh).arg("--dry-run"));

    // An --out inside a corpus directory the recipe reads: refused, nothing created there.
    let corpus = d.join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    for i in 0..20 {
        std::fs::write(
            corpus.join(format!("{i}.txt")),
            format!("def f{i}(x):\n    return x + {i}\n"),
        )
        .unwrap();
    }
    let files = TINY.replace(
        "builtin = \"code\"\ndocs = 100\ntasks = 4",
        "paths = [\"corpus\"]",
    );
    assert_ne!(files, TINY);
    let r2 = d.join("files.toml");
    std::fs::write(&r2, files).unwrap();
    let before = snapshot(&corpus);
    refused(
        &mut run_cmd(&r2, &corpus.join("run")),
        "lies inside the input",
    );
    refused(&mut run_cmd(&r2, &corpus), "is the input");
    // An --out above the corpus (here: the scratch directory itself) contains it.
    refused(&mut run_cmd(&r2, &d), "contains the input");
    assert_eq!(snapshot(&corpus), before);
}

/// Regression (probe item 4): `--jobs 0` was taken (a run of no stage at a time).
#[test]
fn jobs_0_is_refused_before_writing() {
    let d = Scratch::new("probe-jobs");
    let r = recipe(&d, TINY);
    let out = d.join("run");
    refused(run_cmd(&r, &out).args(["--jobs", "0"]), "--jobs 0");
    assert!(!out.exists());
    refused(
        btx()
            .args(["demo", "--quick", "--jobs", "0", "--out"])
            .arg(&out),
        "--jobs 0",
    );
    assert!(!out.exists());
}

/// Regression (probe item 2a): a validation shard with a token id outside the vocabulary made
/// `btx eval` panic in the forward pass; it is now an error naming the shard.
#[test]
fn eval_names_a_shard_with_a_token_outside_the_vocabulary() {
    let d = Scratch::new("probe-eval");
    let (_, run) = finished_run(&d);
    let model = run.join("seed/model");
    // A copy of the run's data with one token of math's validation split past the vocabulary.
    let bad = d.join("bad-data");
    let mut stack = vec![(run.join("data/tokens"), bad.clone())];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), to.join(e.file_name())));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let eval = |data: &Path| {
        let mut c = btx();
        c.arg("eval")
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(data)
            .args(["--seq-len", "32", "--tasks", "0"]);
        c
    };
    ok(&mut eval(&bad));
    let shard = bad.join("math/val.tok");
    let mut bytes = std::fs::read(&shard).unwrap();
    // Header of 128 bytes, then 2-byte ids (a vocabulary of 300): the 5th token.
    bytes[128 + 8] = 0xff;
    bytes[128 + 9] = 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let t = refused(&mut eval(&bad), "token id 65535");
    assert!(t.contains("val.tok") && t.contains("outside"), "{t}");
    // One line of error, one of hint.
    assert!(t.trim().lines().count() <= 3, "{t}");
}

/// Regression (probe items 2b, 2c, 3, 4): zero counts made `bench` index an empty list; a NaN
/// or negative peak printed "MFU NaN%"; `--batch 0` was blamed on --tokens; `--batch 1e11`
/// ran out of memory drawing its prompts.
#[test]
fn bench_refuses_zero_and_meaningless_counts_by_name() {
    let d = Scratch::new("probe-zero");
    refused(
        btx().args(["bench", "train", "--preset", "S", "--steps", "0"]),
        "--steps 0",
    );
    for p in ["nan", "-1", "0", "inf"] {
        refused(
            btx().args([
                "bench",
                "train",
                "--preset",
                "S",
                &format!("--peak-tflops={p}"),
            ]),
            "--peak-tflops",
        );
    }
    refused(
        btx().args(["bench", "compare", "--peak-tflops=nan"]),
        "--peak-tflops",
    );
    let dir = d.join("mix-bench");
    refused(
        btx()
            .args(["bench", "mix", "--experts", "0", "--dir"])
            .arg(&dir),
        "--experts 0",
    );
    assert!(!dir.exists());
    let t = refused(
        btx().args(["bench", "generate", "--batch", "0"]),
        "--batch 0",
    );
    assert!(!t.contains("--tokens"), "{t}");
    refused(
        btx().args(["bench", "generate", "--tokens", "0"]),
        "--tokens 0",
    );

    // More rows than the machine holds: refused with the estimate, before any is drawn.
    let t = refused(
        btx().args([
            "bench",
            "generate",
            "--tokens",
            "5",
            "--batch",
            "100000000000",
        ]),
        "of memory",
    );
    assert!(t.contains("--batch") && t.contains("GiB"), "{t}");
}

/// Regression (probe item 3): upcycling into 1e8 experts and generating 1e11 documents grew
/// until the machine ran out of memory; each is refused up front with the estimate, writing
/// nothing.
#[test]
fn requests_that_cannot_fit_are_refused_with_an_estimate() {
    let d = Scratch::new("probe-memory");
    let (r, run) = finished_run(&d);
    let seed = run.join("seed/model");

    let out = d.join("up");
    let t = refused(
        btx()
            .args(["upcycle", "--seed"])
            .arg(&seed)
            .args(["--num-experts", "1000000000000", "--out"])
            .arg(&out),
        "of memory",
    );
    assert!(t.contains("--num-experts") && t.contains("GiB"), "{t}");
    assert!(!out.exists());
    refused(
        btx()
            .args(["upcycle", "--seed"])
            .arg(&seed)
            .args(["--num-experts", "0", "--out"])
            .arg(&out),
        "0 experts",
    );
    assert!(!out.exists());
    // A sane count still upcycles.
    ok(btx()
        .args(["upcycle", "--seed"])
        .arg(&seed)
        .args(["--num-experts", "3", "--out"])
        .arg(&out));

    let cfg = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/data-builtin.toml"
    );
    let data = d.join("data");
    let t = refused(
        btx()
            .args(["data", "prepare", "--config", cfg])
            .args(["--set", "domains.1.docs=100000000000", "--out"])
            .arg(&data),
        "of memory",
    );
    assert!(t.contains("\"code\""), "{t}");
    assert!(!data.exists());
    let t = refused(
        btx()
            .args(["data", "prepare", "--config", cfg])
            .args(["--set", "domains.0.tasks=100000000000", "--out"])
            .arg(&data),
        "of memory",
    );
    assert!(t.contains("\"math\""), "{t}");
    assert!(!data.exists());
    let dry = d.join("dry");
    refused(
        run_cmd(&r, &dry).args([
            "--dry-run",
            "--set",
            "data.prepare.domains.0.docs=100000000000",
        ]),
        "of memory",
    );
    assert!(!dry.exists());
}

/// Regression (probe item 4): `btx data prepare --help` named an example that does not exist.
#[test]
fn the_examples_help_names_exist() {
    let t = ok(btx().args(["data", "prepare", "--help"]));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let named: Vec<&str> = t
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .filter(|w| w.starts_with("examples/"))
        .map(|w| w.trim_end_matches('.'))
        .collect();
    assert!(!named.is_empty(), "{t}");
    for n in named {
        assert!(
            root.join(n).is_file(),
            "--help names {n}, which does not exist"
        );
    }
}
