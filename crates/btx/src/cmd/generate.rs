//! `btx generate --model DIR --prompt TEXT`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_data::Tok;
use btx_model::burn::prelude::Device;
use btx_model::generate::{generate_checked, room, Sampling};
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
    /// Also print the generated token ids (`ids: 1 2 3`), e.g. to compare with another
    /// runtime token for token.
    #[arg(long)]
    show_ids: bool,
    #[command(flatten)]
    without: super::experts::Without,
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    let s = Sampling {
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
    };
    s.validate()
        .map_err(|e| anyhow::anyhow!("{e}\nhint: e.g. --temperature 0.8 --top-p 0.95"))?;
    let tp = a
        .tokenizer
        .clone()
        .unwrap_or_else(|| a.model.join("tokenizer.json"));
    // A missing file is the usual mistake (a typo, a model directory without one): said with
    // what to do, rather than as a bare "No such file" from deep in the loader.
    if !tp.is_file() {
        let hint = if a.tokenizer.is_some() {
            "--tokenizer must name a tokenizer.json file"
        } else {
            "the model directory has no tokenizer.json: pass the one the model was trained with as --tokenizer PATH"
        };
        bail!("{}: no tokenizer file there\nhint: {hint}", tp.display());
    }
    let tok = Tok::load(&tp).with_context(|| {
        format!(
            "loading tokenizer {} (use --tokenizer to point at one)",
            tp.display()
        )
    })?;
    let model = Model::load(&a.model, dev)
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    let model = a.without.apply(model)?;
    check_vocab(&tok, &tp, &model)?;
    let prompts: Vec<Vec<i64>> = a
        .prompt
        .iter()
        .map(|p| {
            tok.encode(p)
                .map(|v| v.into_iter().map(i64::from).collect())
        })
        .collect::<Result<_, _>>()?;
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        bail!(
            "--prompt {:?} encodes to no tokens: there is nothing to continue\nhint: give a prompt with some text",
            a.prompt[i]
        );
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let room = room(&model, longest);
    let limit = model.cfg.max_positions();
    // The binding limit: a sliding window btx does not implement refuses what would pass it;
    // max_position_embeddings caps the generation (as it always has).
    let window = model
        .cfg
        .sliding_window
        .filter(|&w| w < model.cfg.max_position_embeddings);
    let which = match window {
        Some(w) => format!("sliding_window of {w}, which btx does not implement"),
        None => format!("max_position_embeddings of {limit}"),
    };
    if room == 0 {
        bail!(
            "the longest prompt is {longest} tokens; the model computes at most {limit} positions ({which})\nhint: shorten the prompt"
        );
    }
    if a.max_tokens > room {
        if window.is_some() {
            bail!(
                "--max-tokens {} after a prompt of {longest} tokens runs past the model's {which}\nhint: --max-tokens {room} or fewer, or a shorter prompt",
                a.max_tokens
            );
        }
        tracing::warn!(
            "--max-tokens {} capped at {room}: the model attends to {} positions, the longest prompt takes {longest}, and the last new token takes none (it is never fed back)",
            a.max_tokens,
            model.cfg.max_position_embeddings
        );
    }
    // A row ends at the model's end-of-sequence token (an instruct model's `<|im_end|>`, where
    // transformers' generate stops) and at the tokenizer's end of text.
    let eos = model
        .cfg
        .eos_token_id
        .map_or(tok.eos_id() as i64, i64::from);
    let end_of_text = Some(tok.eos_id() as i64).filter(|&e| e != eos);
    let t0 = std::time::Instant::now();
    let outs = generate_checked(&model, &prompts, a.max_tokens, &s, Some(eos), |_, out| {
        out.last() == end_of_text.as_ref()
    })?;
    // The tokenizer's end of text ends a row as the model's EOS does, and is not printed either.
    let outs: Vec<Vec<i64>> = outs
        .into_iter()
        .map(|mut o| {
            if o.last() == end_of_text.as_ref() {
                o.pop();
            }
            o
        })
        .collect();
    let n: usize = outs.iter().map(Vec::len).sum();
    for (i, (p, o)) in a.prompt.iter().zip(&outs).enumerate() {
        if i > 0 {
            outln!("---");
        }
        let ids: Vec<u32> = o.iter().map(|&x| x as u32).collect();
        outln!("{p}{}", tok.decode(&ids)?);
        if a.show_ids {
            let list: Vec<String> = ids.iter().map(u32::to_string).collect();
            outln!("ids: {}", list.join(" "));
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    errln!("{n} tokens in {dt:.2}s ({:.1} tok/s)", n as f64 / dt);
    Ok(())
}

/// A tokenizer whose ids reach past the model's embedding table would index out of it.
pub fn check_vocab(tok: &Tok, tok_path: &std::path::Path, model: &Model) -> Result<()> {
    if tok.vocab_size() > model.cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {} entries, the model's vocabulary only {}\nhint: use the tokenizer the model was trained with (--tokenizer)",
            tok_path.display(),
            tok.vocab_size(),
            model.cfg.vocab_size
        );
    }
    Ok(())
}
