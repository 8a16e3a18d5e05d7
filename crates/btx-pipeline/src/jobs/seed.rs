//! The seed stages: adopt a Hugging Face checkpoint, or import a GGUF one.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use serde_json::json;

use super::{params_compute, JobOutcome, StageCtx};

/// Copies a Hugging Face seed directory (config, weights, tokenizer and its config) into the
/// stage's `model/`, and loads it once: a seed that does not load fails here, not in every
/// expert.
pub(super) fn copy(ctx: &StageCtx, path: &Path) -> Result<JobOutcome> {
    let cfg = ModelConfig::load(&path.join("config.json"))?;
    if !path.join("tokenizer.json").exists() {
        bail!(
            "{} has no tokenizer.json\nhint: BTX needs the seed's tokenizer to prepare data",
            path.display()
        );
    }
    let staged = btx_core::outdir::OutDir::create(&ctx.model_out(), &[path], Existing::Replace)?;
    copy_model_files(path, staged.path())?;
    Model::load(staged.path(), &Device::flex())
        .with_context(|| format!("the seed in {} does not load", path.display()))?;
    staged.commit()?;
    JobOutcome::done(params_compute(&cfg), json!({"source": path}))
}

/// Imports a GGUF seed as a Hugging Face checkpoint.
pub(super) fn gguf(ctx: &StageCtx, path: &Path) -> Result<JobOutcome> {
    let cfg = btx_gguf::import::import_gguf(path, &ctx.model_out(), Existing::Replace)?;
    JobOutcome::done(params_compute(&cfg), json!({"source": path}))
}

/// The files of a checkpoint a model needs (config, weights and their index, tokenizer and its
/// config); anything else in a user's directory stays there.
fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let keep = name == "config.json"
            || name == "tokenizer.json"
            || name == btx_data::TOKENIZER_CONFIG
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if keep && e.path().is_file() {
            std::fs::copy(e.path(), to.join(&name))
                .with_context(|| format!("copying {} to {}", e.path().display(), to.display()))?;
        }
    }
    Ok(())
}
