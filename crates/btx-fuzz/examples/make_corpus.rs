//! Writes the seed corpus of the fuzz targets into `fuzz/corpus/<target>/` (small valid files of
//! each format, made with btx's own writers, plus the repository's configs and recipes).
//! `cargo run --release -p btx-fuzz --example make_corpus`; the files are committed.

use std::path::{Path, PathBuf};

use btx_data::gguf::{self, GgmlType, Value};
use btx_data::shard::ShardWriter;
use btx_model::io::{write_tensors, HostTensor, OutDtype, StreamWriter};

fn main() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let c = repo.join("fuzz/corpus");
    let dir = |t: &str| {
        let d = c.join(t);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // safetensors: f32 tensors of a few shapes, and an i64 one.
    let d = dir("safetensors");
    write_tensors(
        &d.join("f32.safetensors"),
        &[
            (
                "a".into(),
                HostTensor::new(vec![2, 3], (0..6).map(|x| x as f32).collect()),
            ),
            (
                "b.weight".into(),
                HostTensor::new(vec![4], vec![1.0, -2.0, 0.5, 3.0]),
            ),
        ],
    )
    .unwrap();
    let mut w = StreamWriter::create(
        &d.join("ids.safetensors"),
        vec![("input_ids".into(), OutDtype::I64, vec![2, 3])],
    )
    .unwrap();
    w.write_i64("input_ids", &[1, 2, 3, 4, 5, 6]).unwrap();
    w.finish().unwrap();
    // gguf: a tiny llama with F32, F16, Q8_0, Q4_0 and Q4_1 tensors and a tokenizer.
    let d = dir("gguf");
    let s = |x: &str| Value::Str(x.into());
    let tokens: Vec<Value> = ["a", "b", "ab", "<|endoftext|>"]
        .iter()
        .map(|t| s(t))
        .collect();
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("llama.context_length".into(), Value::U32(16)),
        ("llama.embedding_length".into(), Value::U32(32)),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.feed_forward_length".into(), Value::U32(32)),
        ("llama.attention.head_count".into(), Value::U32(2)),
        ("llama.attention.head_count_kv".into(), Value::U32(1)),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        // (The importer refuses a pre-tokenizer it does not reproduce, and a missing one.)
        ("tokenizer.ggml.pre".into(), s("gpt-2")),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(3)),
    ];
    let t = |n: &str, shape: Vec<usize>, ty| {
        let k: usize = shape.iter().product();
        (
            n.to_string(),
            shape,
            ty,
            (0..k).map(|i| (i % 7) as f32 * 0.1).collect::<Vec<f32>>(),
        )
    };
    let tensors = vec![
        t("token_embd.weight", vec![4, 32], GgmlType::Q8_0),
        t("output_norm.weight", vec![32], GgmlType::F32),
        t("blk.0.attn_norm.weight", vec![32], GgmlType::F32),
        t("blk.0.ffn_norm.weight", vec![32], GgmlType::F16),
        t("blk.0.attn_q.weight", vec![32, 32], GgmlType::Q4_0),
        t("blk.0.attn_k.weight", vec![16, 32], GgmlType::Q4_1),
        t("blk.0.attn_v.weight", vec![16, 32], GgmlType::Q8_0),
        t("blk.0.attn_output.weight", vec![32, 32], GgmlType::F16),
        t("blk.0.ffn_gate.weight", vec![32, 32], GgmlType::Q4_1),
        t("blk.0.ffn_up.weight", vec![32, 32], GgmlType::Q4_0),
        t("blk.0.ffn_down.weight", vec![32, 32], GgmlType::Q8_0),
    ];
    gguf::write(&d.join("tiny-llama.gguf"), &meta, &tensors).unwrap();
    gguf::write(&d.join("meta-only.gguf"), &meta[..3], &[]).unwrap();
    // shard: 2- and 4-byte tokens.
    let d = dir("shard");
    for (name, vocab) in [("u16.tok", 300usize), ("u32.tok", 70_000)] {
        let mut w = ShardWriter::create(&d.join(name), vocab, &"ab".repeat(32), 0).unwrap();
        w.push_doc(&[1, 2, 3, 299]).unwrap();
        w.push_doc(&[5, 6]).unwrap();
        w.finish().unwrap();
    }
    // hf_config: the test fixtures' config.json files.
    let d = dir("hf_config");
    for e in walk(&repo.join("testdata")) {
        if e.file_name().is_some_and(|n| n == "config.json") {
            let name = e
                .strip_prefix(repo.join("testdata"))
                .unwrap()
                .to_string_lossy()
                .replace('/', "_");
            std::fs::copy(&e, d.join(name)).unwrap();
        }
    }
    // recipe: the example recipes.
    let d = dir("recipe");
    for r in ["quick.toml", "demo.toml"] {
        std::fs::copy(repo.join("examples").join(r), d.join(r)).unwrap();
    }
    eprintln!("corpus written to {}", c.display());
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
