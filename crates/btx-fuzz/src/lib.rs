//! One function per parser that takes arbitrary bytes and must never panic, hang or abort: it
//! feeds them to the parser the way btx does (through a file where btx reads files) and walks
//! whatever parses. Errors are the expected outcome for most inputs; only a panic is a finding.
//! `fuzz/` (cargo-fuzz) drives these with coverage guidance; `tests/corpus.rs` runs them over
//! the seed corpus and deterministic mutations of it in every `cargo test`.

use std::path::{Path, PathBuf};

/// A harness: arbitrary bytes in, nothing out; only a panic is a finding.
pub type Harness = fn(&[u8]);

/// The parsers, by the names of their fuzz targets and corpus directories.
pub const TARGETS: [(&str, Harness); 5] = [
    ("safetensors", safetensors),
    ("gguf", gguf),
    ("shard", shard),
    ("hf_config", hf_config),
    ("recipe", recipe),
];

/// A scratch directory of this process and thread (the readers take paths; fuzzers may run
/// several threads).
fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "btx-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn file_with(name: &str, data: &[u8]) -> PathBuf {
    let p = scratch().join(name);
    std::fs::write(&p, data).expect("write scratch file");
    p
}

/// `model.safetensors`: the memory-mapped reader, every tensor read as f32 and as i64.
pub fn safetensors(data: &[u8]) {
    let p = file_with("model.safetensors", data);
    if let Ok(r) = btx_model::TensorReader::open(&p) {
        let names: Vec<String> = r.names().map(str::to_string).collect();
        for n in names {
            let _ = r.shape(&n);
            let _ = r.read(&n);
            let _ = r.read_i64(&n);
            let _ = r.f32_bytes(&n);
            r.release(&n);
        }
    }
}

/// A llama.cpp GGUF file: metadata, the model config and tokenizer btx derives from it, and
/// every (not too large) tensor dequantised.
pub fn gguf(data: &[u8]) {
    let p = file_with("model.gguf", data);
    let Ok(g) = btx_data::gguf::GgufFile::open(&p) else {
        return;
    };
    let _ = btx_gguf::import::config_from_gguf(&g);
    let _ = btx_gguf::import::tokenizer_from_gguf(&g);
    for t in &g.tensors {
        let _ = t.shape();
        if t.dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_some_and(|n| n <= 1 << 20)
        {
            let _ = g.dequantize(t);
        }
    }
}

/// A token shard: header, bounds, every token.
pub fn shard(data: &[u8]) {
    let p = file_with("train.tok", data);
    if let Ok(s) = btx_data::shard::Shard::open(&p) {
        let _ = s.check_tokenizer("0123456789abcdef");
        let _ = s.max_id();
        let _ = (s.len(), s.docs(), s.tokenizer_hash());
    }
}

/// A Hugging Face `config.json`: parsed, validated, sized, written back and parsed again.
pub fn hf_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = btx_model::ModelConfig::from_hf_json(text) {
        let _ = c.total_params();
        let _ = c.active_params();
        let _ = c.train_flops_per_token(64);
        let p = scratch().join("config.json");
        if c.save(&p).is_ok() {
            let back = btx_model::ModelConfig::load(&p).expect("a saved config loads again");
            assert_eq!(back.total_params(), c.total_params());
        }
    }
}

/// A `btx run` recipe: parsed, validated against its (absent) files, and compiled into a plan.
pub fn recipe(data: &[u8]) {
    let p = file_with("recipe.toml", data);
    if let Ok((r, _)) = btx_pipeline::recipe::Recipe::load(&p, &[]) {
        let _ = btx_pipeline::plan::Plan::from_recipe(&r, p.parent().unwrap_or(Path::new(".")));
    }
}
