//! What the CLI test binaries share: the btx binary with quiet logs, its output as text, and
//! the two outcomes a test asserts (success, or a clear refusal). Each test binary uses part
//! of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The smallest whole BTX experiment (~3 s): `testdata/recipes/tiny.toml`.
pub const TINY: &str = include_str!("../../../../testdata/recipes/tiny.toml");

/// The pipeline tests' base recipe: `testdata/recipes/small.toml`.
pub const SMALL: &str = include_str!("../../../../testdata/recipes/small.toml");

/// [`SMALL`] with `sets` laid over it as `btx run --set` lays them (each replaces the value at
/// its dotted path), as TOML text.
pub fn small_recipe(sets: &[&str]) -> String {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let (v, _): (toml::Value, _) =
        btx_pipeline::recipe::overrides::load_str(SMALL, "small.toml", &sets).unwrap();
    toml::to_string(&v).unwrap()
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `btx --threads 2`, logging warnings only.
pub fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn").args(["--threads", "2"]);
    c
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `c`, which must succeed; returns its output.
pub fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "btx failed:\n{t}");
    t
}

/// A clear refusal: exit code 1, a message holding `needle`, a hint, no panic.
pub fn refused(c: &mut Command, needle: &str) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(needle), "wanted {needle:?} in:\n{t}");
    assert!(t.contains("hint"), "no hint in:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}

/// The tiny BTX run (seed, experts, MiX, finetuned MoE), once per test that needs it.
pub fn tiny_run(s: &btx_testkit::Scratch) -> PathBuf {
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let run = s.path().join("run");
    ok(btx().args([
        "run",
        recipe.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]));
    run
}

/// A byte-level BPE tokenizer.json of `n` tokens (the last `<|endoftext|>`), for the family
/// fixtures, which have none.
pub fn tokenizer(n: usize) -> String {
    let mut vocab = serde_json::Map::new();
    let mut c = 0x21u32;
    for i in 0..n - 1 {
        while char::from_u32(c).is_none_or(|ch| ch.is_whitespace() || ch.is_control()) {
            c += 1;
        }
        vocab.insert(char::from_u32(c).unwrap().to_string(), serde_json::json!(i));
        c += 1;
    }
    vocab.insert("<|endoftext|>".into(), serde_json::json!(n - 1));
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": n - 1, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []}
    })
    .to_string()
}

/// A copy of a testdata fixture's model with a tokenizer.json of its vocabulary size.
pub fn fixture(s: &btx_testkit::Scratch, rel: &str) -> PathBuf {
    let src = repo().join("testdata").join(rel).join("model");
    let dst = s.path().join(rel.replace('/', "-"));
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let cfg = btx_model::ModelConfig::load(&dst.join("config.json")).unwrap();
    std::fs::write(dst.join("tokenizer.json"), tokenizer(cfg.vocab_size)).unwrap();
    dst
}
