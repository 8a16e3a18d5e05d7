//! `btx export`: a model in the format a user asks for (transformers' classes, llama.cpp's
//! GGUF, btx's own layout), refused where that format cannot hold it exactly.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_core::outdir::{Existing, OutDir};
use btx_gguf::export::{export_gguf, Quant};
use btx_model::burn::prelude::Device;
use btx_model::io::OutDtype;
use btx_model::Model;

use super::experts::copy_tokenizer;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model directory to export.
    #[arg(long)]
    model: PathBuf,
    /// `hf` (also `hf-mixtral`): what transformers loads, as the family's class (Llama,
    /// Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE); `gguf`: one file llama.cpp runs
    /// (architectures llama, qwen2, qwen3, qwen3moe); `btx`: btx's own layout, which also holds
    /// attention experts.
    #[arg(long, default_value = "hf")]
    format: String,
    /// Output model directory, or with --format gguf the .gguf file (written beside it and
    /// renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
    /// With hf-mixtral: export a switch or sample-top1 model as plain Mixtral top-1 even though
    /// transformers then computes other logits (the gate is 1 instead of p_i, no capacity
    /// limit; sample-top1's soft first layer becomes top-1). Without it such a model is refused.
    #[arg(long)]
    allow_routing_change: bool,
    /// Float type of the written weights: f32, bf16 or f16, and with --format gguf also q8_0
    /// (blocks of 32 with an f16 scale, as llama.cpp quantises). Default: the model's.
    #[arg(long, value_parser = Quant::parse)]
    dtype: Option<Quant>,
    /// Largest safetensors shard (hf and btx formats), as transformers spells it (5GB, 2GiB).
    #[arg(long, default_value = "5GB", value_parser = btx_model::io::parse_size)]
    max_shard_size: usize,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    if !["hf", "hf-mixtral", "btx", "gguf"].contains(&a.format.as_str()) {
        bail!(
            "--format {:?}: hf (or its old name hf-mixtral), gguf or btx\nhint: hf is what transformers loads, gguf what llama.cpp runs",
            a.format
        );
    }
    if a.format == "gguf" {
        return run_gguf(&a);
    }
    let dtype = match a.dtype {
        Some(Quant::Q8_0) => bail!(
            "--dtype q8_0 with --format {}: q8_0 is a GGUF type\nhint: --format gguf --dtype q8_0, or f32, bf16 or f16 here",
            a.format
        ),
        Some(Quant::F32) => Some(OutDtype::F32),
        Some(Quant::F16) => Some(OutDtype::F16),
        Some(Quant::Bf16) => Some(OutDtype::BF16),
        None => None,
    };
    let save = super::SaveArgs {
        dtype,
        max_shard_size: a.max_shard_size,
    }
    .resolve(Some(&a.model))?;
    let m = Model::load(&a.model, &Device::flex())
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    let hf = a.format != "btx";
    if hf {
        if let Some(att) = &m.cfg.attn_experts {
            bail!(
                "{} has {} attention experts{} (BAM), which a Mixtral cannot hold: transformers has no attention experts\nhint: the nearest exportable model mixes the same experts with attention = \"average\" (the paper's MiX: `btx mix --attention average`, or the run's `btx` variant); or keep this one in btx's layout with --format btx (btx eval and generate read it)",
                a.model.display(),
                att.num_experts,
                if att.shared_kv { " sharing keys and values" } else { "" }
            );
        }
    }
    if hf && !a.allow_routing_change {
        if let Some(moe) = &m.cfg.moe {
            use btx_model::Routing;
            if matches!(
                moe.routing,
                Routing::Switch { .. } | Routing::SampleTop1 { .. }
            ) {
                bail!(
                    "{} routes with {}, which transformers' Mixtral does not compute: it would run the export as plain top-1 and give other logits\nhint: the exact export is a top-k model (mix or finetune with routing = \"top-k\"); --allow-routing-change exports this one anyway as Mixtral top-1 (see the README's routing table for what differs)",
                    a.model.display(),
                    moe.routing.name()
                );
            }
        }
    }
    let staged = OutDir::create(&a.out, &[&a.model], Existing::replace_if(a.force))?;
    m.save_as(staged.path(), &save)?;
    copy_tokenizer(&a.model, staged.path())?;
    staged.commit()?;
    outln!(
        "exported {} as {} ({}, {}): {}",
        a.model.display(),
        a.format,
        save.dtype.torch_name(),
        m.cfg.to_hf_json()["architectures"][0]
            .as_str()
            .unwrap_or("?"),
        a.out.display()
    );
    Ok(())
}

/// `--format gguf`: streamed from the checkpoint, never loaded as a model.
fn run_gguf(a: &ExportArgs) -> Result<()> {
    let quant = match a.dtype {
        Some(q) => q,
        None => match btx_model::io::stored_dtype(&a.model)? {
            OutDtype::BF16 => Quant::Bf16,
            OutDtype::F16 => Quant::F16,
            _ => Quant::F32,
        },
    };
    let t0 = std::time::Instant::now();
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("exporting {bytes}/{total_bytes} {wide_bar} {eta}")
            .expect("a valid template"),
    );
    let done = export_gguf(&a.model, &a.out, quant, a.force, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("exporting {} as GGUF", a.model.display()))?;
    bar.finish_and_clear();
    for n in &done.notes {
        outln!("note: {n}");
    }
    outln!(
        "exported {} as gguf ({}, architecture {}, {} tensors, {:.1} MB) in {:.1}s: {}",
        a.model.display(),
        quant.name(),
        done.arch,
        done.tensors,
        done.bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
