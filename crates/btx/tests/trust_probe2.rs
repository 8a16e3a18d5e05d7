//! Found by probing the trust fixes: refusals of `btx train` and `btx forward` that came after
//! a write to --out, and models written in another dtype by `btx export`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use btx_testkit::Scratch;

mod common;
use common::{btx, refused, repo, text};

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, SystemTime)> {
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
                out.push((
                    q.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&q).unwrap(),
                    m,
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn train(cfg: &Path, out: &Path, sets: &[&str]) -> Command {
    let mut c = btx();
    c.arg("train")
        .arg("--config")
        .arg(cfg)
        .arg("--out")
        .arg(out);
    for s in sets {
        c.args(["--set", s]);
    }
    c
}

const SMALL: [&str; 5] = [
    "train.steps=4",
    "train.batch_size=2",
    "train.seq_len=32",
    "data.prepare.domains.0.docs=60",
    "data.prepare.domains.1.docs=60",
];

/// A data weight naming no domain, or a freeze pattern matching no parameter, refuses
/// `btx train` before it writes: a fresh --out is not created, a resumed one keeps its
/// config.resolved.toml and data.
#[test]
fn train_refusals_leave_out_as_it_was() {
    let s = Scratch::new("probe-train");
    let cfg = repo().join("examples/tiny-train.toml");
    for bad in ["data.weights.bogus=1", "train.freeze=[\"zzz\"]"] {
        let fresh = s.path().join(format!("fresh-{}", bad.len()));
        let mut sets = SMALL.to_vec();
        sets.push(bad);
        refused(
            &mut train(&cfg, &fresh, &sets),
            if bad.starts_with("data") {
                "bogus"
            } else {
                "zzz"
            },
        );
        assert!(
            !fresh.exists(),
            "{bad}: a refused train created {}",
            fresh.display()
        );
    }
    // A run stopped after 2 steps, resumed with a bad weight.
    let out = s.path().join("resumed");
    let mut first = train(&cfg, &out, &SMALL);
    first.args(["--max-steps-this-run", "2"]);
    let o = first.output().unwrap();
    assert!(out.join("checkpoints").is_dir(), "{}", text(&o));
    let before = snapshot(&out);
    let mut sets = SMALL.to_vec();
    sets.push("data.weights.bogus=1");
    let mut again = train(&cfg, &out, &sets);
    again.arg("--resume");
    refused(&mut again, "bogus");
    assert!(
        snapshot(&out) == before,
        "a refused --resume changed {}",
        out.display()
    );
}

/// `--compare` is read before --out is written: a missing reference leaves no output.
#[test]
fn forward_reads_its_reference_before_writing() {
    let s = Scratch::new("probe-forward");
    let fx = repo().join("testdata/hf-tiny/llama");
    let out = s.path().join("out.safetensors");
    refused(
        btx()
            .args(["forward", "--model"])
            .arg(fx.join("model"))
            .arg("--input")
            .arg(fx.join("reference.safetensors"))
            .arg("--out")
            .arg(&out)
            .arg("--compare")
            .arg(s.path().join("missing.safetensors")),
        "--compare reference",
    );
    assert!(!out.exists());
}

/// `btx export --dtype bf16` writes bf16 weights (config.json saying so) that load back as
/// the f32 values rounded once; without --dtype it keeps the model's own (bf16 here).
#[test]
fn export_writes_the_dtype_asked_for_and_keeps_the_inputs_by_default() {
    let s = Scratch::new("probe-export");
    let src = repo().join("testdata/hf-tiny/llama/model");
    let bf = s.path().join("bf16");
    let o = btx()
        .args(["export", "--model"])
        .arg(&src)
        .arg("--out")
        .arg(&bf)
        .args(["--dtype", "bf16", "--max-shard-size", "20KB"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let r = btx_model::TensorReader::open(&bf).unwrap();
    assert_eq!(r.weights_dtype(), btx_model::io::OutDtype::BF16);
    assert!(bf.join("model.safetensors.index.json").is_file());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
    let dev = btx_model::burn::prelude::Device::flex();
    let a = btx_model::Model::load(&src, &dev).unwrap().host_params();
    let b = btx_model::Model::load(&bf, &dev).unwrap().host_params();
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        for (u, v) in x.data.iter().zip(&y.data) {
            assert_eq!(
                half::bf16::from_f32(*u).to_f32().to_bits(),
                v.to_bits(),
                "{n}"
            );
        }
    }
    // Default: the input's dtype (bf16 again), whole.
    let again = s.path().join("again");
    let o = btx()
        .args(["export", "--model"])
        .arg(&bf)
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        btx_model::TensorReader::open(&again)
            .unwrap()
            .weights_dtype(),
        btx_model::io::OutDtype::BF16
    );
    // A dtype btx does not write: refused by the argument parser (usage error, exit 2).
    let o = btx()
        .args(["export", "--model"])
        .arg(&src)
        .arg("--out")
        .arg(s.path().join("x"))
        .args(["--dtype", "fp8"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("unknown dtype \"fp8\" (f32, bf16, f16; q8_0 for gguf)"));
    assert!(!s.path().join("x").exists());
}
