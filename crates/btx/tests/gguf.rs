//! GGUF import on a tiny file the test writes itself: a random Llama quantised (Q8_0
//! embeddings, Q4_1 matrices, F32 norms) with llama.cpp's Q/K permutation, and a BPE vocabulary.

use btx::gguf_import::{import_gguf, permute_rows, unpermute_rows};
use btx_core::outdir::Existing;
use btx_data::gguf::{self, GgmlType, Value};
use btx_data::Tok;
use btx_model::burn::prelude::Device;
use btx_model::{to_vec, ForwardOpts, Model, ModelConfig};
use btx_testkit::Scratch;

fn tmp(tag: &str) -> Scratch {
    Scratch::new(&format!("gguf-{tag}"))
}

/// Vocabulary (by id) and merges of a btx-trained tokenizer, as GGUF stores them.
fn vocab_and_merges(tok: &Tok) -> (Vec<String>, Vec<String>) {
    let j: serde_json::Value = serde_json::from_str(tok.json()).unwrap();
    let mut vocab: Vec<(String, u64)> = j["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    for a in j["added_tokens"].as_array().unwrap() {
        vocab.push((
            a["content"].as_str().unwrap().into(),
            a["id"].as_u64().unwrap(),
        ));
    }
    vocab.sort_by_key(|x| x.1);
    vocab.dedup_by_key(|x| x.1);
    let merges = j["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(p) => {
                format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap())
            }
            _ => panic!("merge format"),
        })
        .collect();
    (vocab.into_iter().map(|x| x.0).collect(), merges)
}

#[test]
fn permutation_round_trips() {
    let w: Vec<f32> = (0..8 * 3).map(|x| x as f32).collect();
    let p = permute_rows(&w, 8, 3, 2);
    assert_ne!(p, w);
    assert_eq!(unpermute_rows(&p, 8, 3, 2), w);
    // Head 0, rows 0..4: HF rows [0, 1 | 2, 3] interleave to [0, 2, 1, 3].
    assert_eq!(&p[3..6], &w[6..9]);
}

#[test]
fn imports_a_quantised_llama_with_its_tokenizer() {
    let dir = tmp("import");
    let docs = btx_data::builtin::docs("general", 0, 300).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 320, 2).unwrap();
    let (tokens, merges) = vocab_and_merges(&tok);
    let mut cfg = ModelConfig::llama(tokens.len(), 64, 96, 2, 4, 2, 256);
    cfg.tie_word_embeddings = true;
    cfg.rope_theta = 100000.0;
    let model = Model::init(&cfg, 4, &Device::flex()).unwrap();
    // Bigger weights than init so quantisation error stays small relative to the signal.
    let model = model.map(|_, t| t * 3.0);
    let mut tensors = vec![];
    for (name, t) in model.host_params() {
        let (gname, ty) = match name.as_str() {
            "model.embed_tokens.weight" => ("token_embd.weight".to_string(), GgmlType::Q8_0),
            "model.norm.weight" => ("output_norm.weight".to_string(), GgmlType::F32),
            n => {
                let rest = n.strip_prefix("model.layers.").unwrap();
                let (l, r) = rest.split_once('.').unwrap();
                let (g, ty) = match r {
                    "input_layernorm.weight" => ("attn_norm", GgmlType::F32),
                    "post_attention_layernorm.weight" => ("ffn_norm", GgmlType::F32),
                    "self_attn.q_proj.weight" => ("attn_q", GgmlType::Q4_1),
                    "self_attn.k_proj.weight" => ("attn_k", GgmlType::Q4_1),
                    "self_attn.v_proj.weight" => ("attn_v", GgmlType::Q4_1),
                    "self_attn.o_proj.weight" => ("attn_output", GgmlType::Q4_1),
                    "mlp.gate_proj.weight" => ("ffn_gate", GgmlType::Q4_1),
                    "mlp.up_proj.weight" => ("ffn_up", GgmlType::Q4_1),
                    "mlp.down_proj.weight" => ("ffn_down", GgmlType::Q8_0),
                    other => panic!("{other}"),
                };
                (format!("blk.{l}.{g}.weight"), ty)
            }
        };
        let data = if name.ends_with("q_proj.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], cfg.num_heads)
        } else if name.ends_with("k_proj.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], cfg.num_kv_heads)
        } else {
            t.data.clone()
        };
        tensors.push((gname, t.shape.clone(), ty, data));
    }
    let s = |x: &str| Value::Str(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("llama.context_length".into(), Value::U32(256)),
        ("llama.embedding_length".into(), Value::U32(64)),
        ("llama.block_count".into(), Value::U32(2)),
        ("llama.feed_forward_length".into(), Value::U32(96)),
        ("llama.attention.head_count".into(), Value::U32(4)),
        ("llama.attention.head_count_kv".into(), Value::U32(2)),
        ("llama.rope.freq_base".into(), Value::F32(100000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        // btx's trained tokenizers split with GPT-2's regex: llama.cpp's "gpt-2".
        ("tokenizer.ggml.pre".into(), s("gpt-2")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                tokens
                    .iter()
                    .map(|t| Value::I32(if t == "<|endoftext|>" { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(merges.iter().map(|m| s(m)).collect()),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(tok.eos_id()),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(tok.eos_id()),
        ),
    ];
    let gpath = dir.join("tiny.gguf");
    gguf::write(&gpath, &meta, &tensors).unwrap();

    let out = dir.join("hf");
    let got = import_gguf(&gpath, &out, Existing::Refuse).unwrap();
    assert!(got.tie_word_embeddings);
    assert_eq!(got.rope_theta, 100000.0);
    assert_eq!(got.rms_norm_eps, 1e-5);
    assert_eq!(
        (got.num_heads, got.num_kv_heads, got.vocab_size),
        (4, 2, tokens.len())
    );
    let imported = Model::load(&out, &Device::flex()).unwrap();
    // Row permutations commute with row-blockwise quantisation, so with the permutation undone
    // correctly every imported weight equals dequantise(quantise(original)) exactly.
    let types: std::collections::HashMap<String, GgmlType> = model
        .host_params()
        .iter()
        .zip(&tensors)
        .map(|((n, _), t)| (n.clone(), t.2))
        .collect();
    for ((name, orig), (_, back)) in model.host_params().iter().zip(imported.host_params()) {
        let ty = types[name];
        let want = gguf::dequantize(ty, &gguf::quantize(ty, &orig.data), orig.data.len());
        assert!(
            want == back.data,
            "{name}: imported weights are not the dequantised originals"
        );
        let err = orig
            .data
            .iter()
            .zip(&back.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let amax = orig.data.iter().fold(0f32, |a, b| a.max(b.abs()));
        assert!(
            err <= amax / 14.0,
            "{name}: quantisation error {err} vs range {amax}"
        );
    }
    // Same logits as the original model with its weights rounded the same way.
    let rounded = model.clone().map(|name, t| {
        let ty = types[name];
        let dims = t.dims();
        let v = gguf::dequantize(ty, &gguf::quantize(ty, &to_vec(t)), dims[0] * dims[1]);
        btx_model::burn::prelude::Tensor::from_data(
            btx_model::burn::prelude::TensorData::new(v, dims),
            &Device::flex(),
        )
    });
    let ids: Vec<i64> = tok
        .encode(&docs[0])
        .unwrap()
        .iter()
        .take(32)
        .map(|&x| x as i64)
        .collect();
    let n = ids.len();
    let a = to_vec(
        rounded
            .forward(&ids, 1, n, &ForwardOpts::default(), None)
            .logits,
    );
    let b = to_vec(
        imported
            .forward(&ids, 1, n, &ForwardOpts::default(), None)
            .logits,
    );
    assert_eq!(a, b);
    // The rebuilt tokenizer encodes exactly like the original.
    let back_tok = Tok::load(&out.join("tokenizer.json")).unwrap();
    for d in docs.iter().take(20) {
        assert_eq!(back_tok.encode(d).unwrap(), tok.encode(d).unwrap());
    }
    assert_eq!(back_tok.eos_id(), tok.eos_id());

    // Regression (issue 17): a GGUF holding a tensor type btx cannot read, imported over an
    // existing model, failed half-way and left that model's weights at 2 KB.
    let mut bytes = std::fs::read(&gpath).unwrap();
    let name = b"blk.1.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    bytes[ty_at..ty_at + 4].copy_from_slice(&12u32.to_le_bytes()); // Q4_K
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, &bytes).unwrap();
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    let e = import_gguf(&bad, &out, Existing::Replace)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.1.ffn_down.weight") && e.contains("hint"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(import_gguf(&bad, &dir.join("new"), Existing::Refuse).is_err());
    assert!(!dir.join("new").exists());
    // An existing model is replaced only when asked; the output is never the input's place.
    let e = import_gguf(&gpath, &out, Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    for o in [gpath.clone(), dir.to_path_buf()] {
        let e = import_gguf(&gpath, &o, Existing::Replace)
            .unwrap_err()
            .to_string();
        assert!(e.contains("input"), "{e}");
    }
    assert!(gpath.is_file());
    let leftovers = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn unsupported_files_are_clear_errors() {
    let dir = tmp("bad");
    let p = dir.join("x.gguf");
    std::fs::write(&p, b"not a gguf").unwrap();
    let e = import_gguf(&p, &dir.join("o"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.gguf") && e.contains("magic"), "{e}");
    gguf::write(
        &p,
        &[("general.architecture".into(), Value::Str("gpt2".into()))],
        &[],
    )
    .unwrap();
    let e = import_gguf(&p, &dir.join("o"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("llama"), "{e}");
}
