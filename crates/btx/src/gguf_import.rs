//! GGUF Llama → Hugging Face checkpoint: dequantised f32 weights under HF names (with the Q/K
//! row permutation that llama.cpp's converter applies for its RoPE undone), `config.json`, and a
//! `tokenizer.json` rebuilt from the GGUF vocabulary and merges.

use std::path::Path;

use btx_core::outdir::{Existing, OutDir};
use btx_model::io::write_checkpoint;
use btx_model::names::param_specs;
use btx_model::ModelConfig;
use serde_json::{json, Value as Json};

use btx_data::error::{file_err, DataError, Result};
use btx_data::gguf::{GgufFile, Value};
use btx_data::Tok;

/// The GGUF tensor that holds an HF parameter.
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let g = match rest {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{l}.{g}.weight"))
}

/// Undoes llama.cpp's `permute(w, n_head)`: within each head, GGUF row 2i is HF row i and GGUF
/// row 2i + 1 is HF row hd/2 + i.
pub fn unpermute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for (src, dst) in [(2 * i, i), (2 * i + 1, half + i)] {
                let s = (h * hd + src) * cols;
                let d = (h * hd + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// The inverse of [`unpermute_rows`] (what llama.cpp's converter does), for writing GGUF files.
pub fn permute_rows(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for (dst, src) in [(2 * i, i), (2 * i + 1, half + i)] {
                let s = (h * hd + src) * cols;
                let d = (h * hd + dst) * cols;
                out[d..d + cols].copy_from_slice(&w[s..s + cols]);
            }
        }
    }
    out
}

/// The model shape from GGUF metadata (architecture `llama`).
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.meta_str("general.architecture").unwrap_or("");
    if arch != "llama" {
        return Err(file_err(
            &g.path,
            format!("general.architecture is {arch:?}; btx imports llama GGUF files"),
        ));
    }
    let need = |k: &str| {
        g.meta_u64(&format!("llama.{k}"))
            .map(|x| x as usize)
            .ok_or_else(|| file_err(&g.path, format!("metadata llama.{k} is missing")))
    };
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    let emb = g
        .tensor("token_embd.weight")
        .ok_or_else(|| file_err(&g.path, "no token_embd.weight tensor"))?;
    let vocab = emb.shape()[0];
    let mut c = ModelConfig::llama(
        vocab,
        hidden,
        need("feed_forward_length")?,
        need("block_count")?,
        heads,
        g.meta_u64("llama.attention.head_count_kv")
            .map_or(heads, |x| x as usize),
        g.meta_u64("llama.context_length")
            .map_or(2048, |x| x as usize),
    );
    if let Some(k) = g.meta_u64("llama.attention.key_length") {
        c.head_dim = k as usize;
    }
    c.rms_norm_eps = g
        .meta_f64("llama.attention.layer_norm_rms_epsilon")
        .unwrap_or(1e-5);
    // GGUF stores f32 metadata; round through f32 text so 1e-5 stays 1e-5, not 9.99999974e-6.
    c.rms_norm_eps = format!("{}", c.rms_norm_eps as f32)
        .parse()
        .unwrap_or(c.rms_norm_eps);
    c.rope_theta = g.meta_f64("llama.rope.freq_base").unwrap_or(10000.0);
    c.tie_word_embeddings = g.tensor("output.weight").is_none();
    c.bos_token_id = g.meta_u64("tokenizer.ggml.bos_token_id").map(|x| x as u32);
    c.eos_token_id = g.meta_u64("tokenizer.ggml.eos_token_id").map(|x| x as u32);
    c.validate().map_err(|e| file_err(&g.path, e.to_string()))?;
    Ok(c)
}

/// `tokenizer.json` for a GGUF `gpt2`-type (byte-level BPE) vocabulary.
pub fn tokenizer_from_gguf(g: &GgufFile) -> Result<Tok> {
    let model = g.meta_str("tokenizer.ggml.model").unwrap_or("");
    if model != "gpt2" {
        return Err(file_err(
            &g.path,
            format!("tokenizer.ggml.model is {model:?}; btx rebuilds byte-level BPE (\"gpt2\") tokenizers only"),
        ));
    }
    let strs = |key: &str| -> Result<Vec<String>> {
        g.meta
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| file_err(&g.path, format!("metadata {key} is missing")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| file_err(&g.path, format!("{key} holds a non-string")))
            })
            .collect()
    };
    let tokens = strs("tokenizer.ggml.tokens")?;
    let merges = strs("tokenizer.ggml.merges")?;
    let types: Vec<u64> = g
        .meta
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_else(|| vec![1; tokens.len()]);
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), json!(i));
        // 3 = control, 4 = user-defined: matched as whole special tokens.
        if matches!(types.get(i), Some(3) | Some(4)) {
            added.push(
                json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            json!([a, b])
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // llama.cpp's pre-tokenizer names; "smollm" (and the like) split digits one by one first.
    let pre = match g.meta_str("tokenizer.ggml.pre").unwrap_or("default") {
        "smollm" | "starcoder" | "refact" | "deepseek-coder" => json!({"type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
        _ => byte_level,
    };
    let j = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre, "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    Tok::from_json(&j.to_string())
}

/// Writes `out/{config.json, model.safetensors, tokenizer.json}` from a llama GGUF file. Every
/// tensor is checked (present, shape, a type btx can dequantise, inside the file) before anything
/// is written, and the output appears whole or not at all (see [`OutDir`]).
pub fn import_gguf(path: &Path, out: &Path, existing: Existing) -> Result<ModelConfig> {
    let g = GgufFile::open(path)?;
    let cfg = config_from_gguf(&g)?;
    let tok = tokenizer_from_gguf(&g)?;
    let specs: Vec<(String, Vec<usize>)> = param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let tensor_of = |name: &str, shape: &[usize]| -> Result<&btx_data::gguf::TensorInfo> {
        let gname = gguf_name(name).expect("every llama parameter has a GGUF name");
        let t = g.tensor(&gname).ok_or_else(|| {
            file_err(
                path,
                format!("tensor {gname:?} is missing (needed for {name})\nhint: is this a complete Llama GGUF?"),
            )
        })?;
        if t.shape() != shape {
            return Err(file_err(
                path,
                format!(
                    "tensor {gname:?} has shape {:?}, expected {shape:?} from the file's metadata",
                    t.shape()
                ),
            ));
        }
        Ok(t)
    };
    for (name, shape) in &specs {
        g.check_readable(tensor_of(name, shape)?)?;
    }
    let staged = OutDir::create(out, &[path], existing)?;
    let dir = staged.path();
    let q_suffix = ".self_attn.q_proj.weight";
    let k_suffix = ".self_attn.k_proj.weight";
    write_checkpoint(dir, &specs, 4 << 30, |i| {
        let (name, shape) = &specs[i];
        let read = || -> Result<Vec<f32>> { g.dequantize(tensor_of(name, shape)?) };
        let w = read().map_err(|e| btx_model::ModelError::Invalid { msg: e.to_string() })?;
        Ok(if name.ends_with(q_suffix) {
            unpermute_rows(&w, shape[0], shape[1], cfg.num_heads)
        } else if name.ends_with(k_suffix) {
            unpermute_rows(&w, shape[0], shape[1], cfg.num_kv_heads)
        } else {
            w
        })
    })
    .map_err(|e| DataError::Invalid(e.to_string()))?;
    cfg.save(&dir.join("config.json"))
        .map_err(|e| DataError::Invalid(e.to_string()))?;
    tok.save(&dir.join("tokenizer.json"))?;
    staged.commit()?;
    Ok(cfg)
}
