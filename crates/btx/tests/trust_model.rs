//! Issue 28 (trust, second pass) on the command line: a sequence past the sliding window, a
//! stored head under a tied config, and expert names that are numbers are one-line refusals
//! with a hint and exit code 1, never a panic, and nothing is written.

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

fn run(c: &mut Command) -> (i32, String) {
    let Output { status, stderr, .. } = c.output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).to_string(),
    )
}

fn assert_refused((code, err): (i32, String), needle: &str) -> String {
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    assert!(err.contains("hint"), "no hint in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
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

/// A dense model with an 8-token sliding window, and a tokenizer.
fn windowed(dir: &Path) -> PathBuf {
    let docs = btx_data::builtin::docs("general", 0, 100).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 16, 32, 1, 2, 2, 64);
    cfg.sliding_window = Some(8);
    Model::init(&cfg, 0, &Device::flex())
        .unwrap()
        .save(dir, usize::MAX)
        .unwrap();
    tok.save(&dir.join("tokenizer.json")).unwrap();
    dir.to_path_buf()
}

/// `btx forward` and `btx generate` panicked in the forward pass past the window.
#[test]
fn forward_and_generate_refuse_sequences_past_the_sliding_window() {
    let d = Scratch::new("trust-model-window");
    let model = windowed(&d.join("model"));
    let input = d.join("ids.safetensors");
    write_ids(&input, [1, 12]);
    let out = d.join("out.safetensors");
    assert_refused(
        run(btx()
            .args(["forward", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)),
        "sliding_window of 8",
    );
    assert!(!out.exists());
    let err = assert_refused(
        run(btx().args(["generate", "--model"]).arg(&model).args([
            "--prompt",
            "a b",
            "--max-tokens",
            "40",
        ])),
        "sliding_window of 8",
    );
    assert!(err.contains("--max-tokens"), "{err}");
}

/// After `btx mix --domains 1 0`, `--drop 1` removed the expert named "0". Numbers are refused
/// as names where they enter, in words that do not blame the model's config.
#[test]
fn numeric_and_duplicate_expert_names_are_refused_where_they_enter() {
    let d = Scratch::new("trust-model-names");
    let cfg = ModelConfig::llama(50, 16, 24, 1, 2, 2, 64);
    for (name, seed) in [("seed", 0), ("a", 1), ("b", 2)] {
        Model::init(&cfg, seed, &Device::flex())
            .unwrap()
            .save(&d.join(name), usize::MAX)
            .unwrap();
    }
    let out = d.join("mixed");
    let mix = |domains: &[&str], extra: &[&str]| {
        run(btx()
            .arg("mix")
            .arg("--seed")
            .arg(d.join("seed"))
            .arg("--experts")
            .arg(d.join("a"))
            .arg(d.join("b"))
            .arg("--domains")
            .args(domains)
            .args(extra)
            .arg("--out")
            .arg(&out))
    };
    for (domains, extra, needle) in [
        (&["1", "0"][..], &[][..], "must not be a number"),
        (&["math", "math"][..], &[][..], "given twice"),
        (
            &["math", "generalist"][..],
            &["--generalist"][..],
            "generalist",
        ),
    ] {
        let err = assert_refused(mix(domains, extra), needle);
        assert!(!err.contains("invalid model config"), "{err}");
        assert!(!out.exists());
    }
    assert_eq!(mix(&["math", "code"], &[]).0, 0);
    // The mixed model is addressed by name: a number is refused, not taken as a position.
    let err = assert_refused(
        run(btx()
            .args(["prune-experts", "--model"])
            .arg(&out)
            .args(["--drop", "1", "--out"])
            .arg(d.join("pruned"))),
        "no expert \"1\"",
    );
    assert!(!err.contains("invalid model config"), "{err}");
    assert!(!d.join("pruned").exists());
}
