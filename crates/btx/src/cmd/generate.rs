//! `btx generate --model DIR --prompt TEXT`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use btx_data::Tok;
use btx_model::burn::prelude::Device;
use btx_model::generate::{generate, Sampling};
use btx_model::Model;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Prompt text; repeat for a batch.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// tokenizer.json to use (default: the model directory's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    let tp = a
        .tokenizer
        .clone()
        .unwrap_or_else(|| a.model.join("tokenizer.json"));
    let tok = Tok::load(&tp).with_context(|| {
        format!(
            "loading tokenizer {} (use --tokenizer to point at one)",
            tp.display()
        )
    })?;
    let model = Model::load(&a.model, dev)
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    let prompts: Vec<Vec<i64>> = a
        .prompt
        .iter()
        .map(|p| {
            tok.encode(p)
                .map(|v| v.into_iter().map(i64::from).collect())
        })
        .collect::<Result<_, _>>()?;
    let s = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    let t0 = std::time::Instant::now();
    let outs = generate(
        &model,
        &prompts,
        a.max_tokens,
        &s,
        Some(tok.eos_id() as i64),
        |_, _| false,
    );
    let n: usize = outs.iter().map(Vec::len).sum();
    for (i, (p, o)) in a.prompt.iter().zip(&outs).enumerate() {
        if i > 0 {
            println!("---");
        }
        let ids: Vec<u32> = o.iter().map(|&x| x as u32).collect();
        println!("{p}{}", tok.decode(&ids)?);
    }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("{n} tokens in {dt:.2}s ({:.1} tok/s)", n as f64 / dt);
    Ok(())
}
