//! A btx model directory → one GGUF file llama.cpp runs: `general.architecture` `llama` (dense
//! Llama/Mistral and Mixtral), `qwen2`, `qwen3` or `qwen3moe`, with the metadata and tensor
//! names llama.cpp's `convert_hf_to_gguf.py` writes for the same model (Q/K rows permuted for
//! the llama architecture's interleaved RoPE, experts stacked into `ffn_*_exps`, the router as
//! `ffn_gate_inp` in f32, Llama 3.1 RoPE scaling as `rope_freqs.weight`).
//!
//! The export is exact or refused, like the import: a model llama.cpp would compute otherwise
//! (attention experts, routing other than top-k, Qwen2-MoE, RoPE scaling llama.cpp does not
//! run as transformers does, a tokenizer llama.cpp cannot be told to reproduce) is refused by
//! name with the nearest exportable variant, before the output is touched. Tensors are streamed
//! from the memory-mapped checkpoint in pieces of bounded size straight into a temporary file
//! beside the output, renamed into place when complete.

use std::path::Path;

use btx_core::atomic::AtomicFile;
use btx_core::outdir::check_not_an_input;
use btx_data::error::{file_err, DataError, Result};
use btx_data::gguf::{encode_header, quantize, GgmlType, TensorHeader, Value, ALIGN};
use btx_model::config::{Family, RopeScaling, Routing};
use btx_model::io::TensorReader;
use btx_model::names::param_specs;
use btx_model::ModelConfig;

use crate::import::{gguf_source, permute_rows};
use crate::vocab::Meta;

/// The element type of an export's weight matrices (`--dtype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quant {
    F32,
    F16,
    Bf16,
    Q8_0,
}

impl Quant {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Quant::F32,
            "f16" | "float16" => Quant::F16,
            "bf16" | "bfloat16" => Quant::Bf16,
            "q8_0" | "q8" => Quant::Q8_0,
            _ => {
                return Err(format!(
                    "unknown dtype {s:?} (f32, bf16, f16; q8_0 for gguf)"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::F32 => "f32",
            Quant::F16 => "f16",
            Quant::Bf16 => "bf16",
            Quant::Q8_0 => "q8_0",
        }
    }

    fn ggml(self) -> GgmlType {
        match self {
            Quant::F32 => GgmlType::F32,
            Quant::F16 => GgmlType::F16,
            Quant::Bf16 => GgmlType::Bf16,
            Quant::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_ALL_F32`, `MOSTLY_F16`, `MOSTLY_BF16`,
    /// `MOSTLY_Q8_0`).
    fn file_type(self) -> u32 {
        match self {
            Quant::F32 => 0,
            Quant::F16 => 1,
            Quant::Bf16 => 32,
            Quant::Q8_0 => 7,
        }
    }
}

/// Where a GGUF tensor's values come from.
enum Src {
    /// One of the model's tensors as it is.
    Param(String),
    /// A q or k projection with the rows of each of its `heads` heads interleaved
    /// (llama.cpp's `permute`).
    Permuted { name: String, heads: usize },
    /// Expert matrices stacked along a new first dimension (`ffn_*_exps`).
    Stacked(Vec<String>),
    /// Values made here (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// One tensor of the output: GGUF name, row-major shape, type, source.
struct Planned {
    name: String,
    shape: Vec<usize>,
    ty: GgmlType,
    src: Src,
}

impl Planned {
    fn bytes(&self) -> usize {
        self.ty
            .byte_size(self.shape.iter().product())
            .expect("planned shapes are whole blocks")
    }
}

/// What an export wrote.
pub struct Exported {
    pub arch: &'static str,
    pub tensors: usize,
    pub bytes: u64,
    /// Notes for the user (a context length cut to the sliding window, ...).
    pub notes: Vec<String>,
}

/// `hint:` naming what can be exported instead.
const HINT_HF: &str = "btx eval and generate run the model as it is; `btx export --format hf` writes what transformers loads";

fn refuse(model: &Path, msg: impl std::fmt::Display, hint: &str) -> DataError {
    file_err(model, format!("{msg}\nhint: {hint}"))
}

/// The llama.cpp architecture a model is written as, or the refusal that says why none
/// computes what btx computes.
fn architecture(cfg: &ModelConfig, model: &Path) -> Result<&'static str> {
    if let Some(a) = &cfg.attn_experts {
        return Err(refuse(
            model,
            format!("the model has {} attention experts (BAM), which no llama.cpp architecture computes", a.num_experts),
            "the nearest exportable model mixes the same experts with attention = \"average\" (the paper's MiX: `btx mix --attention average`, or the run's `btx` variant)",
        ));
    }
    if let Some(moe) = &cfg.moe {
        if moe.routing != Routing::TopK {
            return Err(refuse(
                model,
                format!("the model routes with {}, but llama.cpp's MoE layers route top-k (softmax over the top-k router logits)", moe.routing.name()),
                "the nearest exportable model is a top-k one: mix or finetune with routing = \"top-k\"",
            ));
        }
    }
    Ok(match (cfg.family, cfg.is_moe()) {
        (Family::Llama, _) => "llama",
        (Family::Qwen2, false) => "qwen2",
        (Family::Qwen2, true) => {
            return Err(refuse(
                model,
                "a Qwen2-MoE: llama.cpp's qwen2moe weighs the top-k experts by their softmax over all experts (no renormalisation) and always adds a shared expert, while btx renormalises the top-k weights and has no shared expert",
                "a Qwen2-family MoE has no exact llama.cpp architecture; `btx export --format hf` writes it for transformers",
            ))
        }
        (Family::Qwen3, false) => "qwen3",
        (Family::Qwen3, true) => "qwen3moe",
    })
}

/// The RoPE metadata and `rope_freqs.weight` values for the config's scaling, or the refusal.
fn rope(cfg: &ModelConfig, arch: &str, model: &Path) -> Result<(Meta, Option<Vec<f32>>)> {
    let k = |key: &str| format!("{arch}.{key}");
    match &cfg.rope_scaling {
        RopeScaling::Default => Ok((vec![], None)),
        // llama.cpp divides every frequency by the factor, as transformers' linear scaling.
        RopeScaling::Linear { factor } => Ok((
            vec![
                (k("rope.scaling.type"), Value::Str("linear".into())),
                (k("rope.scaling.factor"), Value::F32(*factor as f32)),
            ],
            None,
        )),
        // llama.cpp divides each frequency by its stored factor (what the converter writes).
        RopeScaling::Llama3 {
            original_max_position_embeddings,
            ..
        } if cfg.family == Family::Llama => {
            let plain = RopeScaling::Default.inv_freq(cfg.rope_theta, cfg.head_dim);
            let scaled = cfg.rope_scaling.inv_freq(cfg.rope_theta, cfg.head_dim);
            let f = plain
                .iter()
                .zip(&scaled)
                .map(|(p, s)| (*p as f64 / *s as f64) as f32)
                .collect();
            // Read back by btx's import (llama.cpp reads this key only for YaRN).
            let original = (
                k("rope.scaling.original_context_length"),
                Value::U32(*original_max_position_embeddings as u32),
            );
            Ok((vec![original], Some(f)))
        }
        other => Err(refuse(
            model,
            format!("RoPE scaling {:?} is not exported: llama.cpp computes it differently from transformers (or not at all for {arch})", other.name()),
            HINT_HF,
        )),
    }
}

/// The architecture's metadata (`{arch}.*`).
fn arch_meta(cfg: &ModelConfig, arch: &str, context: usize) -> Meta {
    let k = |key: &str| format!("{arch}.{key}");
    let u = |x: usize| Value::U32(x as u32);
    let mut m = vec![
        (k("context_length"), u(context)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.num_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.num_heads)),
        (k("attention.head_count_kv"), u(cfg.num_kv_heads)),
        (k("attention.key_length"), u(cfg.head_dim)),
        (k("attention.value_length"), u(cfg.head_dim)),
        (k("rope.dimension_count"), u(cfg.head_dim)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (k("vocab_size"), u(cfg.vocab_size)),
    ];
    if let Some(moe) = &cfg.moe {
        m.push((k("expert_count"), u(moe.num_experts)));
        m.push((k("expert_used_count"), u(moe.top_k)));
        if arch == "qwen3moe" {
            m.push((k("expert_feed_forward_length"), u(cfg.intermediate_size)));
        }
    }
    m
}

/// The GGUF tensors of the model, in the order btx names its parameters.
fn plan(
    cfg: &ModelConfig,
    quant: Quant,
    rope_freqs: Option<Vec<f32>>,
    model: &Path,
) -> Result<Vec<Planned>> {
    // The matrix type: q8_0 needs rows of whole 32-value blocks (llama.cpp's converter falls
    // back to f16 for the others, and so does btx).
    let matrix = |cols: usize| match quant {
        Quant::Q8_0 if !cols.is_multiple_of(32) => GgmlType::F16,
        q => q.ggml(),
    };
    let permute = cfg.family == Family::Llama;
    let mut out = vec![];
    if let Some(f) = rope_freqs {
        out.push(Planned {
            name: "rope_freqs.weight".into(),
            shape: vec![f.len()],
            ty: GgmlType::F32,
            src: Src::Values(f),
        });
    }
    // Where each parameter goes is the import's map (one source of truth for both ways); the
    // experts of a layer share one stacked tensor, [experts, rows, cols], in expert order.
    for spec in param_specs(cfg) {
        let (name, shape) = (spec.name, spec.shape);
        let (g, expert) = gguf_source(&name)
            .ok_or_else(|| refuse(model, format!("tensor {name} has no GGUF name"), HINT_HF))?;
        if expert.is_some() {
            match out.iter_mut().find(|p: &&mut Planned| p.name == g) {
                Some(Planned {
                    src: Src::Stacked(names),
                    shape: stacked,
                    ..
                }) => {
                    names.push(name);
                    stacked[0] += 1;
                }
                _ => out.push(Planned {
                    name: g,
                    shape: vec![1, shape[0], shape[1]],
                    ty: matrix(shape[1]),
                    src: Src::Stacked(vec![name]),
                }),
            }
            continue;
        }
        // Vectors (norms, biases) and the router stay f32, as the converter keeps them.
        let ty = if shape.len() == 1 || g.ends_with("ffn_gate_inp.weight") {
            GgmlType::F32
        } else {
            matrix(shape[1])
        };
        let src = if permute && name.ends_with(".self_attn.q_proj.weight") {
            Src::Permuted {
                name,
                heads: cfg.num_heads,
            }
        } else if permute && name.ends_with(".self_attn.k_proj.weight") {
            Src::Permuted {
                name,
                heads: cfg.num_kv_heads,
            }
        } else {
            Src::Param(name)
        };
        out.push(Planned {
            name: g,
            shape,
            ty,
            src,
        });
    }
    Ok(out)
}

/// Values of a tensor in pieces of whole rows, at most about `PIECE` bytes of f32 each, so a
/// multi-gigabyte embedding never sits in memory whole.
const PIECE: usize = 64 << 20;

fn stream_param(
    reader: &TensorReader,
    name: &str,
    cols: usize,
    mut emit: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let n: usize = reader.shape(name).map_or(0, |s| s.iter().product());
    let step = (PIECE / 4 / cols.max(1)).max(1) * cols.max(1);
    let mut from = 0;
    while from < n {
        let to = (from + step).min(n);
        let v = reader.read_f32_range(name, from, to).map_err(model_err)?;
        emit(&v)?;
        reader.release_elems(name, from, to);
        from = to;
    }
    Ok(())
}

fn model_err(e: btx_model::ModelError) -> DataError {
    DataError::Invalid(e.to_string())
}

/// Writes `out` (a `.gguf` file) from the btx model directory `model`. Every refusal comes
/// before the output is created; the file appears whole or not at all.
pub fn export_gguf(
    model: &Path,
    out: &Path,
    quant: Quant,
    force: bool,
    mut progress: impl FnMut(u64, u64),
) -> Result<Exported> {
    let cfg = ModelConfig::load(&model.join("config.json")).map_err(model_err)?;
    let arch = architecture(&cfg, model)?;
    let (rope_meta, rope_freqs) = rope(&cfg, arch, model)?;
    let reader = TensorReader::open_for(model, &cfg).map_err(model_err)?;
    btx_model::model::check_tensors(&cfg, &reader).map_err(model_err)?;
    let tok_path = model.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(refuse(
            model,
            "no tokenizer.json: llama.cpp needs the vocabulary inside the GGUF",
            "put the seed's tokenizer.json beside config.json (btx's own outputs carry it)",
        ));
    }
    let (tok_meta, mut notes) = crate::vocab::tokenizer_meta(&tok_path, &cfg)?;
    // btx refuses positions past a sliding window (it does not mask); llama.cpp's llama graph
    // attends to every position. Within the window the two agree, so the file says the window
    // is as far as the model was made to see.
    let mut context = cfg.max_position_embeddings;
    if let Some(w) = cfg.sliding_window.filter(|&w| w < context) {
        notes.push(format!("context_length {w}: the sliding window (llama.cpp's {arch} graph attends to all positions, which equals the window's attention only within it)"));
        context = w;
    }
    let plan = plan(&cfg, quant, rope_freqs, model)?;
    check_output(out, model, force)?;
    let name = model
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| "btx-model".into());
    let mut meta: Meta = vec![
        ("general.architecture".into(), Value::Str(arch.into())),
        ("general.type".into(), Value::Str("model".into())),
        ("general.name".into(), Value::Str(name)),
        ("general.file_type".into(), Value::U32(quant.file_type())),
        ("general.quantization_version".into(), Value::U32(2)),
    ];
    meta.extend(arch_meta(&cfg, arch, context));
    meta.extend(rope_meta);
    if !cfg.expert_labels.is_empty() {
        let labels = cfg
            .expert_labels
            .iter()
            .map(|l| Value::Str(l.clone()))
            .collect();
        meta.push(("btx.expert_labels".into(), Value::Array(labels)));
    }
    meta.extend(tok_meta);
    let mut offsets = vec![];
    let mut at = 0u64;
    for p in &plan {
        offsets.push(at);
        at += (p.bytes().div_ceil(ALIGN) * ALIGN) as u64;
    }
    let headers: Vec<TensorHeader> = plan
        .iter()
        .zip(&offsets)
        .map(|(p, &offset)| TensorHeader {
            name: &p.name,
            shape: &p.shape,
            ty: p.ty,
            offset,
        })
        .collect();
    let head = encode_header(&meta, &headers);
    let total = head.len() as u64 + at;
    let mut f = AtomicFile::create(out)?;
    f.write_all(&head)?;
    let mut done = head.len() as u64;
    for p in &plan {
        let cols = *p.shape.last().unwrap_or(&1);
        let mut written = 0usize;
        let mut emit = |v: &[f32]| -> Result<()> {
            // btx never writes a model it would refuse to run (the import refuses the same).
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(refuse(
                    model,
                    format!("tensor {} holds a non-finite value (NaN or infinity) at element {} of its piece", p.name, i),
                    "the model itself is broken (a diverged training run); export an earlier checkpoint",
                ));
            }
            let b = quantize(p.ty, v);
            // A finite f32 past the type's range (|x| > 65504 in f16, a q8_0 block scale past
            // it) would be written as infinity.
            if let Some(i) = btx_data::gguf::first_non_finite(p.ty, &b) {
                return Err(refuse(
                    model,
                    format!(
                        "tensor {} has values (near element {i} of a piece) past what {} can hold",
                        p.name,
                        quant.name()
                    ),
                    "export with --dtype bf16 (f32's range) or f32",
                ));
            }
            written += b.len();
            f.write_all(&b)?;
            Ok(())
        };
        match &p.src {
            Src::Param(n) => stream_param(&reader, n, cols, &mut emit)?,
            Src::Stacked(names) => {
                for n in names {
                    stream_param(&reader, n, cols, &mut emit)?;
                }
            }
            Src::Permuted { name, heads } => {
                let w = reader.read(name).map_err(model_err)?;
                emit(&permute_rows(&w.data, p.shape[0], cols, *heads))?;
                reader.release(name);
            }
            Src::Values(v) => emit(v)?,
        }
        assert_eq!(
            written,
            p.bytes(),
            "{}: bytes written differ from the header's",
            p.name
        );
        let pad = written.div_ceil(ALIGN) * ALIGN - written;
        f.write_all(&vec![0u8; pad])?;
        done += (written + pad) as u64;
        progress(done, total);
    }
    f.commit()?;
    Ok(Exported {
        arch,
        tensors: plan.len(),
        bytes: total,
        notes,
    })
}

/// Refuses an output that is a directory, an input, or an existing file without `force`.
fn check_output(out: &Path, model: &Path, force: bool) -> Result<()> {
    check_not_an_input(out, &[model])?;
    if out.is_dir() {
        return Err(file_err(out, "is a directory; the GGUF export is one file\nhint: name the file, e.g. --out model.gguf"));
    }
    if out.exists() && !force {
        return Err(file_err(out, "exists\nhint: choose a new --out, or pass --force to replace it (the old file stays until the new one is complete)"));
    }
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() && !p.is_dir() => {
            std::fs::create_dir_all(p).map_err(|e| btx_data::error::io_err(p, e))
        }
        _ => Ok(()),
    }
}
