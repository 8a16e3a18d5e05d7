//! The GGUF export checked by llama.cpp's own Python package (`gguf`: its reader, its name map
//! and its converter's layout rules, in scripts/llama-cpp/check_gguf.py) rather than by btx's
//! reader. Needs a Python with `gguf`, `numpy` and `safetensors`, named by BTX_GGUF_PYTHON;
//! `.ci/run` makes one and runs these. The whole llama.cpp check (generation, tokenisation,
//! perplexity in llama.cpp itself) is scripts/llama-cpp-check.sh.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use btx_model::{ModelConfig, TensorReader};
use btx_testkit::Scratch;
use common::{btx, fixture, ok, repo, tiny_run};

fn python() -> PathBuf {
    PathBuf::from(std::env::var("BTX_GGUF_PYTHON").expect(
        "BTX_GGUF_PYTHON must name a Python with gguf, numpy and safetensors (see .ci/run)",
    ))
}

/// check_gguf.py's verdict on `gguf` against `model`: (passed, its output).
fn check(gguf: &Path, model: &Path, dtype: &str) -> (bool, String) {
    let o = Command::new(python())
        .arg(repo().join("scripts/llama-cpp/check_gguf.py"))
        .arg(gguf)
        .arg(model)
        .args(["--dtype", dtype])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn export(model: &Path, out: &Path, dtype: &str) {
    ok(btx()
        .args(["export", "--format", "gguf", "--dtype", dtype, "--model"])
        .arg(model)
        .arg("--out")
        .arg(out));
}

#[test]
#[ignore = "needs BTX_GGUF_PYTHON, a Python with llama.cpp's gguf package (.ci/run sets it up)"]
fn llama_cpp_gguf_package_reads_the_exports_as_its_converter_would_write_them() {
    let s = Scratch::new("gguf-python");
    let run = tiny_run(&s);
    let mut models = vec![
        ("seed".to_string(), run.join("seed/model")),
        ("moe".to_string(), run.join("finetune/btx/model")),
    ];
    for rel in [
        "hf-family/qwen2-tied",
        "hf-family/qwen3",
        "hf-moe/qwen3",
        "hf-family/llama3-rope",
    ] {
        models.push((rel.replace('/', "-"), fixture(&s, rel)));
    }
    for (tag, model) in &models {
        for dtype in ["f32", "f16", "bf16", "q8_0"] {
            let gguf = s.path().join(format!("{tag}-{dtype}.gguf"));
            export(model, &gguf, dtype);
            let (passed, text) = check(&gguf, model, dtype);
            assert!(passed && text.starts_with("ok: "), "{tag} {dtype}:\n{text}");
        }
    }
    // The check can fail: against a checkpoint whose q rows are in llama.cpp's order already
    // (what a double permutation would export), it names the tensor.
    let seed = run.join("seed/model");
    let twisted = s.path().join("twisted");
    std::fs::create_dir_all(&twisted).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(seed.join(f), twisted.join(f)).unwrap();
    }
    let cfg = ModelConfig::load(&seed.join("config.json")).unwrap();
    let r = TensorReader::open_for(&seed, &cfg).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = r
        .names()
        .map(|n| {
            let t = r.read(n).unwrap();
            let data = if n.ends_with("q_proj.weight") {
                btx_gguf::import::permute_rows(&t.data, t.shape[0], t.shape[1], cfg.num_heads)
            } else {
                t.data
            };
            (n.to_string(), t.shape, data)
        })
        .collect();
    let refs: Vec<(&str, Vec<usize>, Vec<f32>)> = tensors
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.clone()))
        .collect();
    btx_testkit::write_raw_f32_safetensors(&twisted.join("model.safetensors"), &refs);
    let (passed, text) = check(&s.path().join("seed-f32.gguf"), &twisted, "f32");
    assert!(
        !passed && text.contains("blk.0.attn_q.weight: values differ"),
        "{text}"
    );
}
