//! Issue 17 regressions, as a user meets them on the command line: no command destroys an
//! input, bad input is a one-line error with a hint and exit code 1 (never a panic's 101 or a
//! signal), sampling and decoding are bounded.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use btx_data::Tok;
use btx_model::burn::prelude::Device;
use btx_model::io::{OutDtype, StreamWriter};
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(c: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = c.output().unwrap();
    let err = String::from_utf8_lossy(&stderr).to_string();
    // None: killed by a signal (the SIGBUS of writing over a mapped input).
    (status.code().unwrap_or(-1), err)
}

/// A clear refusal: exit code 1, a message with `needle`, and a hint.
fn assert_refused((code, err): (i32, String), needle: &str) {
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    assert!(err.contains("hint"), "no hint in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn copy_model(to: &Path) -> PathBuf {
    let from = repo().join("testdata/hf-tiny/llama/model");
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.to_path_buf()
}

/// A small model with its own tokenizer (vocabulary from the tokenizer, 16 positions).
fn model_with_tokenizer(dir: &Path) -> PathBuf {
    let docs = btx_data::builtin::docs("general", 0, 200).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
    let cfg = ModelConfig::llama(tok.vocab_size(), 16, 32, 1, 2, 2, 16);
    Model::init(&cfg, 0, &Device::flex())
        .unwrap()
        .save(dir, usize::MAX)
        .unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

#[test]
fn merges_onto_an_input_are_refused_and_the_input_survives() {
    let d = Scratch::new("trust-merge");
    let seed = copy_model(&d.join("seed"));
    let weights = || std::fs::read(seed.join("model.safetensors")).unwrap();
    let before = weights();
    for out in [seed.clone(), seed.join("inner"), d.to_path_buf()] {
        assert_refused(
            run(btx()
                .args(["mix", "--top-k", "1", "--seed"])
                .arg(&seed)
                .arg("--experts")
                .arg(&seed)
                .arg("--out")
                .arg(&out)),
            "input",
        );
        assert_refused(
            run(btx()
                .args(["upcycle", "--num-experts", "2", "--top-k", "1", "--seed"])
                .arg(&seed)
                .arg("--out")
                .arg(&out)
                .arg("--force")),
            "input",
        );
        assert_refused(
            run(btx()
                .arg("average")
                .arg("--models")
                .arg(&seed)
                .arg(&seed)
                .arg("--out")
                .arg(&out)
                .arg("--force")),
            "input",
        );
    }
    assert_eq!(weights(), before);

    // An existing output is kept unless --force; with it, replaced whole.
    let out = d.join("moe");
    let mix = |force: bool| {
        let mut c = btx();
        c.args(["mix", "--top-k", "1", "--seed"])
            .arg(&seed)
            .arg("--experts")
            .arg(&seed)
            .arg("--out")
            .arg(&out);
        if force {
            c.arg("--force");
        }
        run(&mut c)
    };
    assert_eq!(mix(false).0, 0);
    assert_refused(mix(false), "--force");
    assert_eq!(mix(true).0, 0, "{}", mix(true).1);
    Model::load(&out, &Device::flex()).unwrap();
}

fn write_ids(path: &Path, shape: [usize; 2]) {
    let mut w = StreamWriter::create(
        path,
        vec![("input_ids".into(), OutDtype::I64, shape.to_vec())],
    )
    .unwrap();
    w.write_i64("input_ids", &vec![1; shape[0] * shape[1]])
        .unwrap();
    w.finish().unwrap();
}

#[test]
fn forward_refuses_rows_too_short_for_a_loss_and_outputs_over_inputs() {
    let d = Scratch::new("trust-forward");
    let model = repo().join("testdata/hf-tiny/llama/model");
    for shape in [[1, 0], [1, 1], [0, 4]] {
        let input = d.join(format!("ids-{}x{}.safetensors", shape[0], shape[1]));
        write_ids(&input, shape);
        assert_refused(
            run(btx()
                .args(["forward", "--model"])
                .arg(&model)
                .arg("--input")
                .arg(&input)
                .arg("--out")
                .arg(d.join("o.safetensors"))),
            "T >= 2",
        );
    }
    let input = d.join("ids.safetensors");
    write_ids(&input, [1, 4]);
    let before = std::fs::read(&input).unwrap();
    assert_refused(
        run(btx()
            .args(["forward", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&input)),
        "input",
    );
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn generate_validates_sampling_caps_decoding_and_checks_the_tokenizer() {
    let d = Scratch::new("trust-generate");
    let model = model_with_tokenizer(&d.join("m"));
    let gen = |extra: &[&str]| {
        let mut c = btx();
        c.args(["generate", "--prompt", "Tom has", "--model"])
            .arg(&model)
            .args(extra);
        c
    };
    for (args, needle) in [
        (&["--temperature", "nan"][..], "temperature"),
        (&["--temperature=-1"][..], "temperature"),
        (&["--temperature", "1", "--top-p", "0"][..], "top_p"),
        (&["--temperature", "1", "--top-p", "2"][..], "top_p"),
    ] {
        assert_refused(run(&mut gen(args)), needle);
    }
    // A trillion tokens asked: capped at the 16 positions the model has, with a warning.
    let out = gen(&["--max-tokens", "1000000000000", "--temperature", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("capped"), "{err}");

    // A tokenizer larger than the model's vocabulary used to panic inside the embedding.
    let tiny = repo().join("testdata/hf-tiny/llama/model");
    assert_refused(
        run(btx()
            .args(["generate", "--prompt", "hi", "--model"])
            .arg(&tiny)
            .arg("--tokenizer")
            .arg(model.join("tokenizer.json"))),
        "vocabulary",
    );
}

/// Regression (issue 17): a log on a full disk turned any error into a panic ("failed printing
/// to stderr", exit 101) that hid it.
#[test]
fn a_full_disk_under_the_log_is_an_error_not_a_panic() {
    let d = Scratch::new("trust-full");
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let st = btx()
        .env("BTX_LOG", "info")
        .args(["mix", "--seed"])
        .arg(d.join("missing"))
        .arg("--experts")
        .arg(d.join("missing"))
        .arg("--out")
        .arg(d.join("o"))
        .stdout(full.try_clone().unwrap())
        .stderr(full)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(1));
}

/// Regression (issue 17): a write that fails half-way (ENOSPC then; here a file-size limit,
/// which fails writes the same way) left a partial model.safetensors without config.json.
#[test]
fn a_write_that_fails_half_way_leaves_no_output_behind() {
    use std::os::unix::process::CommandExt;
    let d = Scratch::new("trust-efbig");
    let seed = copy_model(&d.join("seed"));
    let out = d.join("moe");
    let mut c = btx();
    c.args(["mix", "--top-k", "1", "--seed"])
        .arg(&seed)
        .arg("--experts")
        .arg(&seed)
        .arg(&seed)
        .arg("--out")
        .arg(&out);
    // SAFETY: setrlimit and signal are async-signal-safe; they only touch the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let (code, err) = run(&mut c);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(!out.exists(), "a partial output was left at {out:?}");
    let left: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
