//! `btx import-gguf FILE --out DIR`: a llama.cpp GGUF (Llama architecture) → Hugging Face
//! checkpoint (f32 safetensors, config.json, tokenizer.json).

use std::path::PathBuf;

use anyhow::{Context, Result};
use btx_core::outdir::Existing;
use btx_gguf::import::import_gguf;

#[derive(clap::Args)]
pub struct Args {
    /// The .gguf file.
    file: PathBuf,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let t0 = std::time::Instant::now();
    let cfg = import_gguf(&a.file, &a.out, Existing::replace_if(a.force))
        .with_context(|| format!("importing {}", a.file.display()))?;
    outln!(
        "imported {} ({:.1}M parameters: {} layers, d {}, {} heads / {} KV heads, vocab {}, tied {}) into {} in {:.1}s",
        a.file.display(),
        cfg.total_params() as f64 / 1e6,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.vocab_size,
        cfg.tie_word_embeddings,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
