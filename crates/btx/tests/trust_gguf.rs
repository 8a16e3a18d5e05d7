//! `btx import-gguf` imports exactly what llama.cpp computes from the same file, or refuses by
//! name: tensors and metadata btx does not implement, NaN/Inf weights, tokenizers it cannot
//! reproduce, and damaged files, each before anything is written and with a hint. The GGUF files
//! are written here (a tiny two-layer Llama with every tensor type btx reads, and a byte-level
//! vocabulary whose merges tell the pre-tokenizers apart).

use std::path::{Path, PathBuf};
use std::process::Command;

use btx_core::outdir::Existing;
use btx_data::gguf::{self, GgmlType, GgufFile, Value};
use btx_data::Tok;
use btx_gguf::import::import_gguf;
use btx_testkit::Scratch;

const HIDDEN: usize = 64;
const FF: usize = 96;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;

type Tensor = (String, Vec<usize>, GgmlType, Vec<f32>);

struct Spec {
    meta: Vec<(String, Value)>,
    tensors: Vec<Tensor>,
}

impl Spec {
    fn set(mut self, key: &str, v: Value) -> Self {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.into(), v));
        self
    }

    fn without(mut self, key: &str) -> Self {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    fn tensor(mut self, name: &str, shape: Vec<usize>, ty: GgmlType, v: Vec<f32>) -> Self {
        self.tensors.retain(|t| t.0 != name);
        self.tensors.push((name.into(), shape, ty, v));
        self
    }

    /// Sets value `i` of tensor `name` (before quantisation).
    fn poke(mut self, name: &str, i: usize, x: f32) -> Self {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).unwrap();
        t.3[i] = x;
        self
    }

    fn write(&self, path: &Path) -> PathBuf {
        gguf::write(path, &self.meta, &self.tensors).unwrap();
        path.to_path_buf()
    }
}

/// GPT-2's byte → printable character map (what byte-level BPE vocabularies hold).
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![' '; 256];
    for (b, c) in bs.iter().zip(&cs) {
        out[*b as usize] = char::from_u32(*c).unwrap();
    }
    out
}

/// 256 byte tokens, then "12", "123", "1234", "12345" (made by merges), "ab" (in the vocabulary
/// with no merge that makes it) and the end-of-text token.
fn vocab() -> Vec<String> {
    let mut t: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    for x in ["12", "123", "1234", "12345", "ab", "<|endoftext|>"] {
        t.push(x.into());
    }
    t
}

fn id(t: &str) -> u32 {
    vocab().iter().position(|x| x == t).unwrap() as u32
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2)
        .collect()
}

/// A valid tiny Llama GGUF (untied, GQA) with F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors.
fn base() -> Spec {
    let s = |x: &str| Value::Str(x.into());
    let tokens = vocab();
    let v = tokens.len();
    let mut types = vec![Value::I32(1); v];
    types[v - 1] = Value::I32(3);
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.name".into(), s("tiny")),
        ("llama.context_length".into(), Value::U32(128)),
        ("llama.embedding_length".into(), Value::U32(HIDDEN as u32)),
        ("llama.block_count".into(), Value::U32(LAYERS as u32)),
        ("llama.feed_forward_length".into(), Value::U32(FF as u32)),
        (
            "llama.attention.head_count".into(),
            Value::U32(HEADS as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            Value::U32(KV_HEADS as u32),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10000.0)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("general.file_type".into(), Value::U32(7)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("gpt-2")),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| s(t)).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                ["1 2", "12 3", "123 4", "1234 5"]
                    .iter()
                    .map(|m| s(m))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(v as u32 - 1),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(v as u32 - 1),
        ),
    ];
    let kv = KV_HEADS * HEAD_DIM;
    let mut tensors: Vec<Tensor> = vec![
        (
            "token_embd.weight".into(),
            vec![v, HIDDEN],
            GgmlType::F32,
            values(v * HIDDEN, 1),
        ),
        (
            "output_norm.weight".into(),
            vec![HIDDEN],
            GgmlType::F32,
            vec![1.0; HIDDEN],
        ),
        (
            "output.weight".into(),
            vec![v, HIDDEN],
            GgmlType::Q8_0,
            values(v * HIDDEN, 2),
        ),
    ];
    for l in 0..LAYERS {
        let mut t = |name: &str, shape: Vec<usize>, ty: GgmlType| {
            let n = shape.iter().product();
            let vals = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                values(n, 10 + tensors.len())
            };
            tensors.push((format!("blk.{l}.{name}.weight"), shape, ty, vals));
        };
        t("attn_norm", vec![HIDDEN], GgmlType::F32);
        t("attn_q", vec![HIDDEN, HIDDEN], GgmlType::Q4_1);
        t("attn_k", vec![kv, HIDDEN], GgmlType::F16);
        t("attn_v", vec![kv, HIDDEN], GgmlType::Q8_0);
        t("attn_output", vec![HIDDEN, HIDDEN], GgmlType::Q4_0);
        t("ffn_norm", vec![HIDDEN], GgmlType::F32);
        t("ffn_gate", vec![FF, HIDDEN], GgmlType::Bf16);
        t("ffn_up", vec![FF, HIDDEN], GgmlType::F32);
        t("ffn_down", vec![HIDDEN, FF], GgmlType::Q8_0);
    }
    Spec { meta, tensors }
}

fn tmp(tag: &str) -> Scratch {
    Scratch::new(&format!("trust-gguf-{tag}"))
}

/// Imports `spec`, expecting a refusal: the output must not exist, the message must name the
/// file and end with a hint line. Returns the message.
fn refused(dir: &Path, spec: &Spec, tag: &str) -> String {
    let p = spec.write(&dir.join(format!("{tag}.gguf")));
    let out = dir.join(format!("out-{tag}"));
    let e = import_gguf(&p, &out, Existing::Refuse)
        .err()
        .unwrap_or_else(|| panic!("{tag}: imported, expected a refusal"))
        .to_string();
    assert!(!out.exists(), "{tag}: refused but wrote {}", out.display());
    assert!(e.contains(&p.display().to_string()), "{tag}: {e}");
    let last = e.lines().last().unwrap();
    assert!(
        last.starts_with("hint: ") && e.lines().count() == 2,
        "{tag}: not one line and a hint: {e}"
    );
    e
}

/// Imports `spec` and returns (config.json, every weight file's bytes, tokenizer.json).
fn imported(dir: &Path, spec: &Spec, tag: &str) -> (String, Vec<u8>, String) {
    let p = spec.write(&dir.join(format!("{tag}.gguf")));
    let out = dir.join(format!("out-{tag}"));
    import_gguf(&p, &out, Existing::Refuse).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    (
        read("config.json"),
        std::fs::read(out.join("model.safetensors")).unwrap(),
        read("tokenizer.json"),
    )
}

#[test]
fn tensors_btx_does_not_map_are_refused_by_name() {
    let dir = tmp("tensors");
    let ramp = |n: usize| (0..n).map(|i| 1.0 + i as f32 * 0.25).collect::<Vec<f32>>();
    let f32t = GgmlType::F32;
    for (name, shape, v) in [
        // Llama 3.1 rope scaling factors.
        ("rope_freqs.weight", vec![HEAD_DIM / 2], ramp(HEAD_DIM / 2)),
        ("blk.0.attn_q.bias", vec![HIDDEN], vec![0.1; HIDDEN]),
        (
            "blk.1.attn_k.bias",
            vec![KV_HEADS * HEAD_DIM],
            vec![-0.5; 32],
        ),
        ("blk.1.ffn_down.bias", vec![HIDDEN], values(HIDDEN, 3)),
        ("blk.0.attn_output.bias", vec![HIDDEN], values(HIDDEN, 4)),
        // An all-zero bias of the wrong shape is not llama.cpp's bias.
        ("blk.0.attn_v.bias", vec![HIDDEN], vec![0.0; HIDDEN]),
        // Rope factors of the wrong length.
        ("rope_freqs.weight", vec![HEAD_DIM], vec![1.0; HEAD_DIM]),
        (
            "blk.0.attn_qkv.weight",
            vec![128, HIDDEN],
            values(128 * HIDDEN, 5),
        ),
        (
            "blk.0.ffn_gate_inp.weight",
            vec![4, HIDDEN],
            values(4 * HIDDEN, 6),
        ),
        (
            "blk.0.attn_q_norm.weight",
            vec![HEAD_DIM],
            vec![1.0; HEAD_DIM],
        ),
        // A layer past llama.block_count, and a zero-bias of that layer.
        (
            "blk.2.attn_q.weight",
            vec![HIDDEN, HIDDEN],
            values(64 * 64, 7),
        ),
        ("blk.2.attn_q.bias", vec![HIDDEN], vec![0.0; HIDDEN]),
        ("blk.01.attn_q.bias", vec![HIDDEN], vec![0.0; HIDDEN]),
        ("rope_factors_long.weight", vec![HEAD_DIM / 2], vec![1.0; 8]),
        ("whatever.weight", vec![3], vec![1.0; 3]),
    ] {
        let spec = base().tensor(name, shape, f32t, v);
        let e = refused(&dir, &spec, name);
        assert!(
            e.contains(&format!("{name:?}")) && e.contains("not supported") || e.contains("shape"),
            "{name}: {e}"
        );
    }

    // Provably inert: rope factors of all ones, all-zero biases (any layer, any quant type).
    // The result is the plain model, byte for byte.
    let plain = imported(&dir, &base(), "plain");
    let inert = base()
        .tensor(
            "rope_freqs.weight",
            vec![HEAD_DIM / 2],
            GgmlType::F32,
            vec![1.0; HEAD_DIM / 2],
        )
        .tensor("blk.0.attn_q.bias", vec![HIDDEN], f32t, vec![0.0; HIDDEN])
        .tensor("blk.1.attn_k.bias", vec![32], GgmlType::F16, vec![0.0; 32])
        .tensor("blk.1.ffn_up.bias", vec![FF], GgmlType::Q8_0, vec![0.0; FF])
        .tensor(
            "blk.0.ffn_down.bias",
            vec![HIDDEN],
            f32t,
            vec![-0.0; HIDDEN],
        );
    assert_eq!(imported(&dir, &inert, "inert"), plain);
}

#[test]
fn metadata_that_changes_the_math_is_refused_by_key() {
    let dir = tmp("meta");
    let f = Value::F32;
    let u = Value::U32;
    let s = |x: &str| Value::Str(x.into());
    let cases: Vec<(&str, Vec<(&str, Value)>)> = vec![
        (
            "llama.rope.scaling.type",
            vec![("llama.rope.scaling.type", s("yarn"))],
        ),
        (
            "llama.rope.scaling.type",
            vec![("llama.rope.scaling.type", s("longrope"))],
        ),
        // Linear scaling is imported (see linear_rope_scaling_is_imported); a factor that
        // cannot scale is not.
        (
            "llama.rope.scaling.factor",
            vec![("llama.rope.scaling.factor", f(-4.0))],
        ),
        (
            "llama.rope.dimension_count",
            vec![("llama.rope.dimension_count", u(8))],
        ),
        (
            "llama.attention.sliding_window",
            vec![("llama.attention.sliding_window", u(4096))],
        ),
        // Experts are imported (a Mixtral); counts that cannot route are not.
        (
            "llama.expert_used_count",
            vec![
                ("llama.expert_count", u(2)),
                ("llama.expert_used_count", u(3)),
            ],
        ),
        (
            "llama.expert_used_count",
            vec![("llama.expert_used_count", u(2))],
        ),
        (
            "llama.rope.scaling.attn_factor",
            vec![("llama.rope.scaling.attn_factor", f(0.5))],
        ),
        (
            "llama.attention.clamp_kqv",
            vec![("llama.attention.clamp_kqv", f(8.0))],
        ),
        ("llama.logit_scale", vec![("llama.logit_scale", f(0.5))]),
        (
            "llama.embedding_scale",
            vec![("llama.embedding_scale", f(12.0))],
        ),
        (
            "llama.residual_scale",
            vec![("llama.residual_scale", f(0.22))],
        ),
        (
            "llama.attention.scale",
            vec![("llama.attention.scale", f(0.125))],
        ),
        (
            "llama.attention.causal",
            vec![("llama.attention.causal", Value::Bool(false))],
        ),
        (
            "llama.final_logit_softcapping",
            vec![("llama.final_logit_softcapping", f(30.0))],
        ),
        (
            "llama.attn_logit_softcapping",
            vec![("llama.attn_logit_softcapping", f(50.0))],
        ),
        (
            "llama.attention.max_alibi_bias",
            vec![("llama.attention.max_alibi_bias", f(8.0))],
        ),
        (
            "llama.use_parallel_residual",
            vec![("llama.use_parallel_residual", Value::Bool(true))],
        ),
        // Value heads other than key heads (llama.cpp's default for value_length is
        // embedding_length / head_count, not key_length).
        (
            "llama.attention.value_length",
            vec![("llama.attention.value_length", u(8))],
        ),
        (
            "llama.attention.head_count",
            vec![("llama.attention.head_count", Value::Array(vec![u(4), u(2)]))],
        ),
        (
            "llama.feed_forward_length",
            vec![("llama.feed_forward_length", Value::Array(vec![u(96)]))],
        ),
        // A key btx has never heard of: it cannot know it is harmless.
        (
            "llama.rope.dimension_sections",
            vec![("llama.rope.dimension_sections", u(3))],
        ),
        (
            "llama.some_future_key",
            vec![("llama.some_future_key", f(1.0))],
        ),
        // Wrong types are not read as absent (which would take the default).
        (
            "llama.rope.freq_base",
            vec![("llama.rope.freq_base", s("500000"))],
        ),
        (
            "llama.block_count",
            vec![("llama.block_count", Value::I32(-2))],
        ),
        // Believed, this made btx list 4 billion layers' tensors before checking any.
        (
            "llama.block_count",
            vec![("llama.block_count", u(4_000_000_000))],
        ),
        ("llama.block_count", vec![("llama.block_count", u(0))]),
        (
            "llama.attention.head_count_kv",
            vec![("llama.attention.head_count_kv", f(2.0))],
        ),
        (
            "tokenizer.ggml.eos_token_id",
            vec![("tokenizer.ggml.eos_token_id", s("2"))],
        ),
        // Nothing non-finite or meaningless reaches config.json.
        (
            "llama.rope.freq_base",
            vec![("llama.rope.freq_base", f(f32::NAN))],
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            vec![("llama.attention.layer_norm_rms_epsilon", f(-1e-5))],
        ),
        ("general.type", vec![("general.type", s("adapter"))]),
        ("split.count", vec![("split.count", Value::U16(3))]),
        (
            "general.architecture",
            vec![("general.architecture", s("gemma2"))],
        ),
    ];
    for (i, (key, kvs)) in cases.into_iter().enumerate() {
        let mut spec = base();
        for (k, v) in kvs {
            spec = spec.set(k, v);
        }
        let e = refused(&dir, &spec, &format!("case{i}"));
        assert!(e.contains(key), "{key}: {e}");
    }

    // llama.cpp refuses a file without these, and btx does not guess them.
    for key in [
        "llama.attention.layer_norm_rms_epsilon",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "general.architecture",
    ] {
        let e = refused(&dir, &base().without(key), key);
        assert!(e.contains(key) && e.contains("missing"), "{key}: {e}");
    }
}

/// llama.cpp's linear scaling (type linear or none given, factor f; or the old
/// rope.scale_linear) divides every frequency by f: transformers' linear rope scaling.
#[test]
fn linear_rope_scaling_is_imported() {
    let dir = tmp("linear");
    let f = Value::F32;
    let s = |x: &str| Value::Str(x.into());
    for (i, kvs) in [
        vec![("llama.rope.scaling.factor", f(4.0))],
        vec![
            ("llama.rope.scaling.type", s("linear")),
            ("llama.rope.scaling.factor", f(4.0)),
        ],
        vec![("llama.rope.scale_linear", f(4.0))],
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = base();
        for (k, v) in kvs {
            spec = spec.set(k, v);
        }
        let p = spec.write(&dir.join(format!("lin{i}.gguf")));
        let c = import_gguf(&p, &dir.join(format!("out{i}")), Existing::Refuse).unwrap();
        assert_eq!(
            c.rope_scaling,
            btx_model::config::RopeScaling::Linear { factor: 4.0 }
        );
    }
}

#[test]
fn neutral_metadata_imports_the_plain_model() {
    let dir = tmp("neutral");
    let plain = imported(&dir, &base(), "plain");
    let f = Value::F32;
    let u = Value::U32;
    let s = |x: &str| Value::Str(x.into());
    let cases: Vec<Vec<(&str, Value)>> = vec![
        // Type none never scales in llama.cpp, whatever the factor says.
        vec![
            ("llama.rope.scaling.type", s("none")),
            ("llama.rope.scaling.factor", f(8.0)),
        ],
        vec![
            ("llama.rope.scaling.type", s("linear")),
            ("llama.rope.scaling.factor", f(1.0)),
        ],
        // 0 means no scaling; the old key is read only when the new one is absent.
        vec![
            ("llama.rope.scaling.factor", f(0.0)),
            ("llama.rope.scale_linear", f(4.0)),
        ],
        vec![
            ("llama.expert_count", u(0)),
            ("llama.expert_used_count", u(0)),
            ("llama.attention.sliding_window", u(0)),
            ("llama.rope.scaling.attn_factor", f(1.0)),
            ("llama.logit_scale", f(1.0)),
            ("llama.attention.causal", Value::Bool(true)),
            ("llama.rope.dimension_count", u(HEAD_DIM as u32)),
            ("llama.attention.key_length", u(HEAD_DIM as u32)),
            ("llama.attention.value_length", u(HEAD_DIM as u32)),
            ("llama.vocab_size", u(vocab().len() as u32)),
            ("llama.rope.scaling.original_context_length", u(8192)),
            ("llama.rope.scaling.finetuned", Value::Bool(false)),
            ("llama.attention.head_count", Value::Array(vec![u(4), u(4)])),
            (
                "llama.feed_forward_length",
                Value::Array(vec![u(96), u(96)]),
            ),
            ("split.count", Value::U16(0)),
            ("general.type", s("model")),
            ("quantize.imatrix.file", s("x.dat")),
            ("tokenizer.chat_template", s("{{ x }}")),
        ],
    ];
    for (i, kvs) in cases.into_iter().enumerate() {
        let mut spec = base();
        for (k, v) in kvs {
            spec = spec.set(k, v);
        }
        assert_eq!(
            imported(&dir, &spec, &format!("case{i}")),
            plain,
            "case {i}"
        );
    }
}

#[test]
fn non_finite_weights_are_refused_before_anything_is_written() {
    let dir = tmp("nan");
    for (name, i, x) in [
        ("blk.1.ffn_norm.weight", 5, f32::NAN),
        ("token_embd.weight", 300, f32::INFINITY),
        ("blk.0.attn_k.weight", 17, f32::NAN),
        ("blk.0.ffn_gate.weight", 1000, f32::NEG_INFINITY),
        // Block types: an infinite value makes an infinite scale.
        ("blk.1.attn_v.weight", 40, f32::INFINITY),
        ("blk.0.attn_q.weight", 3, f32::NEG_INFINITY),
        ("blk.1.attn_output.weight", 99, f32::INFINITY),
        ("output.weight", 64, f32::INFINITY),
    ] {
        let e = refused(&dir, &base().poke(name, i, x), name);
        assert!(
            e.contains(&format!("{name:?}")) && e.contains("non-finite"),
            "{name}: {e}"
        );
    }
    // Over an existing model (--force): the refusal leaves it as it was, and nothing beside it.
    let good = base().write(&dir.join("good.gguf"));
    let out = dir.join("model");
    import_gguf(&good, &out, Existing::Refuse).unwrap();
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let bad = base()
        .poke("blk.1.ffn_down.weight", 7, f32::INFINITY)
        .write(&dir.join("bad.gguf"));
    let e = import_gguf(&bad, &out, Existing::Replace)
        .unwrap_err()
        .to_string();
    assert!(e.contains("blk.1.ffn_down.weight"), "{e}");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn encode(dir: &Path, spec: &Spec, tag: &str, text: &str) -> Vec<u32> {
    imported(dir, spec, tag);
    let tok = Tok::load(&dir.join(format!("out-{tag}/tokenizer.json"))).unwrap();
    tok.encode(text).unwrap()
}

#[test]
fn the_tokenizer_splits_text_as_llama_cpp_does() {
    let dir = tmp("tok");
    let s = |x: &str| Value::Str(x.into());
    let with_pre = |p: &str| base().set("tokenizer.ggml.pre", s(p));
    let digits = ["1", "2", "3", "4", "5"].map(id).to_vec();
    // gpt-2: "12345" is one word, merged whole; "ab" has no merge, so two tokens.
    assert_eq!(
        encode(&dir, &with_pre("gpt-2"), "gpt2", "12345"),
        [id("12345")]
    );
    assert_eq!(
        encode(&dir, &with_pre("gpt-2"), "gpt2b", "ab"),
        [id("a"), id("b")]
    );
    // llama3: digits go in threes, and a word found in the vocabulary is taken whole
    // (llama.cpp's ignore_merges).
    for pre in ["llama-bpe", "llama3"] {
        assert_eq!(
            encode(&dir, &with_pre(pre), pre, "12345"),
            [id("123"), id("4"), id("5")],
            "{pre}"
        );
        assert_eq!(
            encode(&dir, &with_pre(pre), &format!("{pre}b"), "ab"),
            [id("ab")],
            "{pre}"
        );
    }
    // smaug-bpe: llama3's split without ignore_merges.
    assert_eq!(
        encode(&dir, &with_pre("smaug-bpe"), "smaug", "ab"),
        [id("a"), id("b")]
    );
    // smollm / starcoder: every digit on its own.
    assert_eq!(encode(&dir, &with_pre("smollm"), "smollm", "12345"), digits);
    assert_eq!(
        encode(&dir, &with_pre("starcoder"), "starcoder", "12345"),
        digits
    );

    // add_bos_token: tokenizer.json adds BOS as llama.cpp does for a prompt, while btx's own
    // encoding (documents separated by EOS) adds nothing, as for every tokenizer.
    let bos = with_pre("llama-bpe");
    encode(&dir, &bos, "bos", "");
    let tok = Tok::load(&dir.join("out-bos/tokenizer.json")).unwrap();
    let eot = id("<|endoftext|>");
    assert_eq!(tok.encode("12").unwrap(), [id("12")]);
    let with_special = tok.inner().encode("12", true).unwrap();
    assert_eq!(with_special.get_ids(), [eot, id("12")]);
    let no_bos = bos.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
    encode(&dir, &no_bos, "nobos", "");
    let tok = Tok::load(&dir.join("out-nobos/tokenizer.json")).unwrap();
    assert_eq!(
        tok.inner().encode("12", true).unwrap().get_ids(),
        [id("12")]
    );

    let n = vocab().len();
    let mut types = vec![Value::I32(1); n];
    types[n - 1] = Value::I32(3);
    let mut byte_type = types.clone();
    byte_type[10] = Value::I32(6);
    let mut dup = vocab();
    dup[n - 2] = "a".into();
    for (key, spec) in [
        ("tokenizer.ggml.pre", base().without("tokenizer.ggml.pre")),
        ("tokenizer.ggml.pre", with_pre("default")),
        ("tokenizer.ggml.pre", with_pre("deepseek-coder")),
        ("tokenizer.ggml.pre", with_pre("tekken")),
        (
            "tokenizer.ggml.model",
            base().set("tokenizer.ggml.model", s("llama")),
        ),
        (
            "tokenizer.ggml.bos_token_id",
            with_pre("llama-bpe").without("tokenizer.ggml.bos_token_id"),
        ),
        (
            "tokenizer.ggml.eos_token_id",
            base()
                .set("tokenizer.ggml.add_eos_token", Value::Bool(true))
                .set("tokenizer.ggml.eos_token_id", Value::U32(10_000)),
        ),
        (
            "tokenizer.ggml.add_sep_token",
            base().set("tokenizer.ggml.add_sep_token", Value::Bool(true)),
        ),
        (
            "tokenizer.ggml.add_bos_token",
            base().set("tokenizer.ggml.add_bos_token", s("yes")),
        ),
        (
            "tokenizer.ggml.token_type",
            base().set(
                "tokenizer.ggml.token_type",
                Value::Array(types[..3].to_vec()),
            ),
        ),
        (
            "tokenizer.ggml.token_type[10]",
            base().set("tokenizer.ggml.token_type", Value::Array(byte_type)),
        ),
        (
            "tokenizer.ggml.tokens",
            base().set(
                "tokenizer.ggml.tokens",
                Value::Array(dup.iter().map(|t| s(t)).collect()),
            ),
        ),
        (
            "tokenizer.ggml.merges[1]",
            base().set(
                "tokenizer.ggml.merges",
                Value::Array(vec![s("1 2"), s("123")]),
            ),
        ),
        (
            "tokenizer.ggml.tokens",
            base().set(
                "tokenizer.ggml.tokens",
                Value::Array(vocab()[..n - 1].iter().map(|t| s(t)).collect()),
            ),
        ),
    ] {
        let e = refused(&dir, &spec, &format!("t-{key}-{}", e_tag(&spec)));
        assert!(e.contains(key), "{key}: {e}");
    }
}

/// A short distinct tag per spec, for file names.
fn e_tag(spec: &Spec) -> String {
    format!("{:x}", {
        let mut h = 0u64;
        for (k, v) in &spec.meta {
            for b in format!("{k}{v:?}").bytes() {
                h = h.wrapping_mul(31).wrapping_add(b as u64);
            }
        }
        h
    })
}

#[test]
fn damaged_files_are_one_line_errors_with_a_hint() {
    let dir = tmp("damaged");
    let good = base().write(&dir.join("good.gguf"));
    let bytes = std::fs::read(&good).unwrap();
    let g = GgufFile::open(&good).unwrap();
    // Every third cut through the header (metadata and tensor records, under 8 KiB here), then
    // every 997th byte of the data, short of the padding after the last tensor: an error that
    // names the file and ends with a hint, never a panic, never an output.
    let header_end = 8192;
    assert!(g.tensors.len() > 20 && bytes.len() > 4 * header_end);
    let cut = dir.join("cut.gguf");
    let out = dir.join("o");
    let cuts: Vec<usize> = (0..header_end)
        .step_by(3)
        .chain((header_end..bytes.len() - 32).step_by(997))
        .collect();
    for n in cuts {
        std::fs::write(&cut, &bytes[..n]).unwrap();
        let e = import_gguf(&cut, &out, Existing::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cut.gguf") && e.lines().last().unwrap().starts_with("hint: "),
            "cut at {n}: {e}"
        );
        assert!(!out.exists());
    }
    // Not a GGUF (whatever the name), an empty file, a directory.
    let bin = dir.join("model.bin");
    std::fs::write(&bin, b"PK\x03\x04 a zip, say").unwrap();
    let e = import_gguf(&bin, &out, Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.bin") && e.contains("not a GGUF") && e.contains("convert_hf_to_gguf"),
        "{e}"
    );
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = import_gguf(&empty, &out, Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated") && e.contains("hint: "), "{e}");
    let e = import_gguf(dir.path(), &out, Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(e.contains("directory") && e.contains("hint: "), "{e}");

    // A token that is not UTF-8 is refused, not turned into replacement characters (which
    // would be another token).
    let mut b = bytes.clone();
    let needle = [&2u64.to_le_bytes()[..], b"ab"].concat();
    let at = b.windows(10).position(|w| w == needle).unwrap() + 8;
    b[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    let bad = dir.join("utf8.gguf");
    std::fs::write(&bad, &b).unwrap();
    let e = import_gguf(&bad, &out, Existing::Refuse)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("UTF-8") && e.contains("tokenizer.ggml.tokens"),
        "{e}"
    );

    // A key given twice (llama.cpp refuses it): neither value is taken.
    let mut spec = base();
    spec.meta
        .push(("llama.rope.freq_base".into(), Value::F32(500000.0)));
    let e = refused(&dir, &spec, "twice");
    assert!(
        e.contains("llama.rope.freq_base") && e.contains("twice"),
        "{e}"
    );
    // A tensor given twice.
    let mut spec = base();
    let t = spec.tensors[1].clone();
    spec.tensors.push(t);
    let e = refused(&dir, &spec, "twice-tensor");
    assert!(
        e.contains("output_norm.weight") && e.contains("twice"),
        "{e}"
    );
    // Rows that are not whole blocks (ggml stores a row as whole blocks).
    let rows = dir.join("rows.gguf");
    gguf::write(
        &rows,
        &[],
        &[("x".into(), vec![2, 48], GgmlType::Q8_0, vec![0.5; 96])],
    )
    .unwrap();
    let e = GgufFile::open(&rows).err().unwrap().to_string();
    assert!(
        e.contains("\"x\"") && e.contains("blocks") && e.contains("hint: "),
        "{e}"
    );
}

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn");
    c
}

#[test]
fn the_cli_exits_1_with_the_reason_and_a_hint() {
    let dir = tmp("cli");
    let good = base().write(&dir.join("good.gguf"));
    let out = dir.join("model");
    let ok = btx()
        .arg("import-gguf")
        .arg(&good)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(dir.join("cut.gguf"), &bytes[..bytes.len() / 3]).unwrap();
    for (file, spec, want) in [
        (
            "rope.gguf",
            Some(base().set("llama.rope.scaling.type", Value::Str("yarn".into()))),
            "llama.rope.scaling.type",
        ),
        (
            "nan.gguf",
            Some(base().poke("blk.0.ffn_up.weight", 0, f32::NAN)),
            "blk.0.ffn_up.weight",
        ),
        (
            "bias.gguf",
            Some(base().tensor(
                "blk.0.attn_q.bias",
                vec![HIDDEN],
                GgmlType::F32,
                vec![1.0; 64],
            )),
            "blk.0.attn_q.bias",
        ),
        ("cut.gguf", None, "cut.gguf"),
    ] {
        let p = dir.join(file);
        if let Some(spec) = spec {
            spec.write(&p);
        }
        let r = btx()
            .arg("import-gguf")
            .arg(&p)
            .arg("--out")
            .arg(&out)
            .arg("--force")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "{file}: {err}");
        assert!(!err.contains("panicked"), "{file}: {err}");
        assert!(err.contains(want), "{file}: {err}");
        let last = err.trim_end().lines().last().unwrap();
        assert!(
            last.starts_with("hint: ") && !last.contains("--help"),
            "{file}: {err}"
        );
    }
    // The model imported first is still there, whole.
    Tok::load(&out.join("tokenizer.json")).unwrap();
    assert!(out.join("model.safetensors").is_file());
}

/// Bytes of a valid file changed at random, in the header and the data: every result is an
/// import or an error with a hint, never a panic (or an allocation the file cannot back).
#[test]
fn mutated_files_never_panic() {
    let dir = tmp("mutate");
    let good = base().write(&dir.join("good.gguf"));
    let bytes = std::fs::read(&good).unwrap();
    let mut state = 0x2545f4914f6cdd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let p = dir.join("m.gguf");
    let (mut ok, mut refused) = (0, 0);
    for round in 0..1500 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 3 {
            // Mostly the header (sizes, counts, types, names), sometimes the data.
            let at = if next() % 4 == 0 {
                next() as usize % b.len()
            } else {
                next() as usize % 8192
            };
            b[at] = match next() % 4 {
                0 => 0xff,
                1 => 0,
                _ => next() as u8,
            };
        }
        std::fs::write(&p, &b).unwrap();
        let out = dir.join(format!("o{round}"));
        match import_gguf(&p, &out, Existing::Refuse) {
            Ok(_) => {
                ok += 1;
                std::fs::remove_dir_all(&out).unwrap();
            }
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("hint: "), "round {round}: {e}");
                assert!(!out.exists(), "round {round}: {e}");
                refused += 1;
            }
        }
    }
    assert!(ok > 50 && refused > 500, "ok {ok}, refused {refused}");
}
