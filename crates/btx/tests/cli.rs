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

/// `btx selftest` (what scripts/gpu-check.sh runs on a GPU): the repository's fixtures pass on
/// the CPU, and a model that computes something else (RoPE at another base) fails by name.
#[test]
fn selftest_passes_the_fixtures_and_fails_a_model_that_differs() {
    let out = btx()
        .args(["selftest", "--testdata"])
        .arg(repo().join("testdata"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every fixture directory the repository holds (model/ beside reference.safetensors).
    let mut fixtures = 0;
    for set in std::fs::read_dir(repo().join("testdata")).unwrap() {
        let set = set.unwrap().path();
        for case in std::fs::read_dir(&set).into_iter().flatten() {
            let case = case.unwrap().path();
            fixtures += (case.join("model").is_dir()
                && case.join("reference.safetensors").is_file()) as usize;
        }
    }
    assert!(fixtures >= 21, "{fixtures}");
    assert!(
        text.contains(&format!("{fixtures} parity fixtures, 1 golden")),
        "{text}"
    );
    assert!(
        text.contains("hf-tiny/mixtral") && text.contains("PASS"),
        "{text}"
    );

    let d = tmp("selftest");
    let src = repo().join("testdata/hf-tiny/llama");
    let fx = d.join("llama-rope");
    std::fs::create_dir_all(fx.join("model")).unwrap();
    std::fs::copy(
        src.join("reference.safetensors"),
        fx.join("reference.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        src.join("model/model.safetensors"),
        fx.join("model/model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("model/config.json")).unwrap();
    assert!(cfg.contains("\"rope_theta\": 10000.0"));
    std::fs::write(
        fx.join("model/config.json"),
        cfg.replace("\"rope_theta\": 10000.0", "\"rope_theta\": 500.0"),
    )
    .unwrap();
    let out = btx()
        .args(["selftest", "--testdata"])
        .arg(d.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(text.contains("FAIL llama-rope: logits"), "{text}");
    assert!(err.contains("outside the tolerances on cpu"), "{err}");
}
