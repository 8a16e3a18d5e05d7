//! `btx bench generate`: KV-cache decoding speed of a preset or a model directory.

use anyhow::{bail, Context, Result};
use btx_model::burn::prelude::Device;
use btx_model::generate::{generate, Sampling};
use btx_model::{Model, ModelConfig};
use serde_json::json;

use super::{at_least_one, peak_rss_mb, preset, random_batches};

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long, default_value = "S")]
    pub preset: String,
    /// Decode with this model directory instead of a random preset (prints its costs:
    /// parameters, FLOPs and KV cache per token).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs, dev: &Device) -> Result<()> {
    let threads = rayon::current_num_threads();
    let GenerateArgs {
        preset: name,
        model: dir,
        tokens,
        batch,
        json,
    } = a;
    at_least_one(
        batch,
        "--batch",
        "no row would be decoded",
        "--batch 1 (the default) or more: rows decoded together",
    )?;
    at_least_one(
        tokens,
        "--tokens",
        "no token would be decoded",
        "--tokens 128 (the default): tokens decoded per row",
    )?;
    // The shape first: every check below runs before the model's weights exist.
    let cfg = match &dir {
        Some(d) => ModelConfig::load(&d.join("config.json"))
            .with_context(|| format!("loading {}", d.display()))?,
        None => preset(&name)?.0,
    };
    if tokens.saturating_add(16) > cfg.max_position_embeddings {
        bail!(
            "--tokens {tokens} after a 16-token prompt exceeds the model's {} positions\nhint: fewer --tokens",
            cfg.max_position_embeddings
        );
    }
    if let Some(total) = btx_model::budget::machine_memory() {
        btx_model::budget::check_fits(
            btx_model::budget::generate_bytes(&cfg, batch, 16 + tokens),
            total,
            &format!(
                "decoding {batch} row(s) of {} tokens (the KV cache and logits of every row)",
                16 + tokens
            ),
            "a smaller --batch",
        )?;
    }
    let (model, name) = match &dir {
        Some(d) => (
            Model::load(d, dev).with_context(|| format!("loading {}", d.display()))?,
            d.display().to_string(),
        ),
        None => (Model::init(&cfg, 0, dev)?, name),
    };
    let cfg = model.cfg.clone();
    let prompts: Vec<Vec<i64>> = random_batches(cfg.vocab_size, batch, 16, 1)[0]
        .ids
        .chunks(16)
        .map(|c| c.to_vec())
        .collect();
    let s = Sampling::default();
    let _ = generate(&model, &prompts, 8, &s, None, |_, _| false);
    let t0 = std::time::Instant::now();
    let out = generate(&model, &prompts, tokens, &s, None, |_, _| false);
    let dt = t0.elapsed().as_secs_f64();
    let n: usize = out.iter().map(Vec::len).sum();
    let ctx = 16 + tokens / 2;
    let r = json!({"preset": name, "threads": threads, "batch": batch,
        "tokens": n, "seconds": dt, "tokens_per_s": n as f64 / dt, "peak_rss_mb": peak_rss_mb(),
        "total_params": cfg.total_params(), "active_params": cfg.active_params(),
        "flops_per_token": cfg.infer_flops_per_token(ctx), "mean_context": ctx,
        "kv_cache_bytes_per_token": 4 * cfg.kv_cache_floats_per_token()});
    if json {
        outln!("{r}");
    } else {
        outln!(
            "generate {name}: batch {batch}, {threads} thread(s): {n} tokens in {dt:.2}s = {:.1} tokens/s",
            n as f64 / dt
        );
        outln!(
            "  {:.3}M parameters ({:.3}M active), {:.2} MFLOPs per token at context {ctx}, KV cache {} bytes per token",
            cfg.total_params() as f64 / 1e6,
            cfg.active_params() as f64 / 1e6,
            cfg.infer_flops_per_token(ctx) / 1e6,
            4 * cfg.kv_cache_floats_per_token()
        );
    }
    Ok(())
}
