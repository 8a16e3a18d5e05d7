//! GGUF import on a tiny file the test writes itself: a random Llama quantised (Q8_0
//! embeddings, Q4_1 matrices, F32 norms) with llama.cpp's Q/K permutation, and a BPE vocabulary.

use btx_core::outdir::Existing;
use btx_data::gguf::{self, GgmlType, Value};
use btx_data::Tok;
use btx_gguf::import::{import_gguf, permute_rows, unpermute_rows};
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

/// llama.cpp's names for a parameter of a dense llama / qwen2 / qwen3 model (what its
/// converter writes), for the files these tests make.
fn llama_cpp_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (l, r) = rest.split_once('.').unwrap();
    let g = match r {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        other => panic!("{other}"),
    };
    format!("blk.{l}.{g}")
}

/// A GGUF of `model` (F32 tensors) under architecture `arch`, as llama.cpp's converter lays it
/// out (Q/K rows permuted for llama only), with `extra` metadata and tensors; and the tokenizer.
fn write_family_gguf(
    path: &std::path::Path,
    arch: &str,
    model: &Model,
    tok: &Tok,
    pre: &str,
    extra_meta: Vec<(String, Value)>,
    extra_tensors: Vec<(String, Vec<usize>, GgmlType, Vec<f32>)>,
) {
    let cfg = &model.cfg;
    let mut tensors = vec![];
    for (name, t) in model.host_params() {
        let data = if arch == "llama" && name.ends_with("q_proj.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], cfg.num_heads)
        } else if arch == "llama" && name.ends_with("k_proj.weight") {
            permute_rows(&t.data, t.shape[0], t.shape[1], cfg.num_kv_heads)
        } else {
            t.data.clone()
        };
        tensors.push((llama_cpp_name(&name), t.shape.clone(), GgmlType::F32, data));
    }
    tensors.extend(extra_tensors);
    let (tokens, merges) = vocab_and_merges(tok);
    let s = |x: &str| Value::Str(x.into());
    let k = |key: &str| format!("{arch}.{key}");
    let mut meta = vec![
        ("general.architecture".to_string(), s(arch)),
        (
            k("context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (k("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (k("block_count"), Value::U32(cfg.num_layers as u32)),
        (
            k("feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (k("attention.head_count"), Value::U32(cfg.num_heads as u32)),
        (
            k("attention.head_count_kv"),
            Value::U32(cfg.num_kv_heads as u32),
        ),
        (k("attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (k("attention.value_length"), Value::U32(cfg.head_dim as u32)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s(pre)),
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
    ];
    meta.extend(extra_meta);
    gguf::write(path, &meta, &tensors).unwrap();
}

fn family_model(tok: &Tok, family: btx_model::config::Family) -> Model {
    let mut cfg = ModelConfig::llama(tok.vocab_size(), 32, 48, 2, 4, 2, 128);
    cfg.head_dim = 16; // q_dim 64 != hidden 32, as Qwen3 allows
    cfg.family = family;
    cfg.qkv_bias = family == btx_model::config::Family::Qwen2;
    cfg.qk_norm = family == btx_model::config::Family::Qwen3;
    cfg.rms_norm_eps = 1e-6;
    cfg.rope_theta = 1e6;
    cfg.tie_word_embeddings = true;
    cfg.eos_token_id = Some(tok.eos_id());
    // Random norms and biases: an import that dropped or swapped them would show.
    Model::init(&cfg, 9, &Device::flex()).unwrap().map(|n, t| {
        let dims = t.dims();
        if dims[0] == 1 {
            let v: Vec<f32> = (0..dims[1])
                .map(|i| 0.9 + 0.05 * ((i * 7 + n.len()) % 5) as f32)
                .collect();
            btx_model::burn::prelude::Tensor::from_data(
                btx_model::burn::prelude::TensorData::new(v, dims),
                &Device::flex(),
            )
        } else {
            t * 3.0
        }
    })
}

/// Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, head_dim of its own) GGUFs import as
/// their families, unpermuted (llama.cpp runs them with rotate-half RoPE), bit for bit, with
/// the same logits; the qwen2 pre-tokenizer splits digits one by one, as llama.cpp's.
#[test]
fn imports_qwen2_and_qwen3() {
    use btx_model::config::Family;
    let dir = tmp("qwen");
    let docs = btx_data::builtin::docs("general", 0, 200).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
    for (arch, family) in [("qwen2", Family::Qwen2), ("qwen3", Family::Qwen3)] {
        let model = family_model(&tok, family);
        let p = dir.join(format!("{arch}.gguf"));
        write_family_gguf(&p, arch, &model, &tok, "qwen2", vec![], vec![]);
        let out = dir.join(arch);
        let got = import_gguf(&p, &out, Existing::Refuse).unwrap();
        assert_eq!(got, model.cfg, "{arch}");
        let back = Model::load(&out, &Device::flex()).unwrap();
        for ((n, a), (_, b)) in model.host_params().iter().zip(back.host_params()) {
            assert!(a.data == b.data, "{arch}: {n} differs");
        }
        let ids: Vec<i64> = (0..20).map(|i| (i * 13 % 300) as i64).collect();
        let logits =
            |m: &Model| to_vec(m.forward(&ids, 1, 20, &ForwardOpts::default(), None).logits);
        assert_eq!(logits(&model), logits(&back), "{arch}");
        let t = Tok::load(&out.join("tokenizer.json")).unwrap();
        let pieces = t.inner().encode("x 2024", false).unwrap();
        let digits: Vec<&str> = pieces
            .get_tokens()
            .iter()
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .map(String::as_str)
            .collect();
        assert_eq!(
            digits,
            ["2", "0", "2", "4"],
            "{arch}: {:?}",
            pieces.get_tokens()
        );
    }
}

/// Llama 3.1's RoPE scaling reaches GGUF only as llama.cpp's per-frequency divisors
/// (`rope_freqs.weight`); btx finds the parameters that give them and writes a llama3
/// config, whose frequencies are llama.cpp's divided ones.
#[test]
fn llama3_rope_freqs_become_a_llama3_rope_scaling() {
    use btx_model::config::{Family, RopeScaling};
    let dir = tmp("llama3");
    let docs = btx_data::builtin::docs("general", 0, 200).unwrap();
    let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
    let model = family_model(&tok, Family::Llama);
    let hd = model.cfg.head_dim;
    let (factor, low, high, old) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    // The divisors as llama.cpp's converter computes them (in f64, stored as f32), with a
    // theta that puts frequencies in all three bands for head_dim 16.
    let theta = 5e5f64;
    let divisors: Vec<f32> = (0..hd / 2)
        .map(|j| {
            let freq = 1.0 / theta.powf((2 * j) as f64 / hd as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let (lw, hw) = (old / low, old / high);
            (if wavelen < hw {
                1.0
            } else if wavelen > lw {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }) as f32
        })
        .collect();
    assert!(divisors.contains(&1.0) && divisors.contains(&8.0));
    assert!(divisors.iter().any(|&d| d > 1.0 && d < 8.0), "{divisors:?}");
    let mut model = model;
    model.cfg.rope_theta = theta;
    let p = dir.join("llama3.gguf");
    write_family_gguf(
        &p,
        "llama",
        &model,
        &tok,
        "gpt-2",
        vec![],
        vec![(
            "rope_freqs.weight".into(),
            vec![hd / 2],
            GgmlType::F32,
            divisors.clone(),
        )],
    );
    let got = import_gguf(&p, &dir.join("out"), Existing::Refuse).unwrap();
    let want = RopeScaling::Llama3 {
        factor,
        low_freq_factor: low,
        high_freq_factor: high,
        original_max_position_embeddings: old as usize,
    };
    assert_eq!(got.rope_scaling, want);
    // transformers' llama3 frequencies are llama.cpp's divided ones, to f32 rounding.
    let plain = RopeScaling::Default.inv_freq(theta, hd);
    for ((p, s), d) in plain.iter().zip(want.inv_freq(theta, hd)).zip(&divisors) {
        assert!((p / d - s).abs() <= 1e-6 * s, "{p} / {d} vs {s}");
    }
    // Divisors no Llama 3 setting gives are refused by name.
    let odd: Vec<f32> = divisors.iter().map(|d| d * 1.5).collect();
    let p2 = dir.join("odd.gguf");
    write_family_gguf(
        &p2,
        "llama",
        &model,
        &tok,
        "gpt-2",
        vec![],
        vec![("rope_freqs.weight".into(), vec![hd / 2], GgmlType::F32, odd)],
    );
    let e = import_gguf(&p2, &dir.join("out2"), Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("rope_freqs.weight") && e.contains("hint"), "{e}");
}
