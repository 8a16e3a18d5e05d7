//! Command-line behaviour: config errors name the key, `btx forward` writes exactly the
//! reference tensor names, `btx generate` runs on a trained model.

use btx_testkit::Scratch;
use std::path::PathBuf;
use std::process::Command;

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn");
    c
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(tag: &str) -> Scratch {
    Scratch::new(&format!("cli-{tag}"))
}

#[test]
fn unknown_config_keys_are_rejected_by_name() {
    let d = tmp("keys");
    for (set, key) in [
        ("optim.lrate=1", "lrate"),
        ("train.stepz=3", "stepz"),
        ("model.init.hidden=8", "hidden"),
        ("data.prepare.domains.0.bultin=\"x\"", "bultin"),
    ] {
        let out = btx()
            .args(["train", "--config"])
            .arg(repo().join("examples/tiny-train.toml"))
            .args(["--set", set, "--out"])
            .arg(d.join("o"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key) && err.contains("unknown field"),
            "{set}: {err}"
        );
    }
}

#[test]
fn forward_writes_the_reference_tensor_names() {
    let d = tmp("fwd");
    let fx = repo().join("testdata/hf-tiny/mixtral");
    let out = d.join("out.safetensors");
    let st = btx()
        .args(["forward", "--model"])
        .arg(fx.join("model"))
        .arg("--input")
        .arg(fx.join("reference.safetensors"))
        .arg("--out")
        .arg(&out)
        .arg("--backward")
        .status()
        .unwrap();
    assert!(st.success());
    let names = |p: &PathBuf| {
        let r = btx_model::TensorReader::open(p).unwrap();
        let mut v: Vec<String> = r.names().map(str::to_string).collect();
        v.retain(|n| n != "input_ids");
        v.sort();
        v
    };
    assert_eq!(names(&out), names(&fx.join("reference.safetensors")));
}

#[test]
fn generate_runs_on_a_freshly_trained_model() {
    let d = tmp("gen");
    let st = btx()
        .args(["train", "--config"])
        .arg(repo().join("examples/tiny-train.toml"))
        .args(["--set", "train.steps=5", "--out"])
        .arg(&d)
        .status()
        .unwrap();
    assert!(st.success());
    let out = btx()
        .args(["generate", "--model"])
        .arg(d.join("model"))
        .args([
            "--prompt",
            "Question: Tom has",
            "--prompt",
            "Ben",
            "--max-tokens",
            "5",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("Question: Tom has") && text.contains("---\nBen"),
        "{text}"
    );
}
