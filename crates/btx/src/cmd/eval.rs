//! `btx eval --model DIR [--model DIR ...] --data DIR --out eval.json`: held-out loss and
//! perplexity per domain, task accuracy by greedy generation, routing analysis for MoE models,
//! and Branch-Train-Merge ensembles of several models.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_data::DataDir;
use btx_eval::{EvalSpec, Weighting};
use btx_model::burn::prelude::Device;

use btx_pipeline::jobs;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory; several with --ensemble.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Prepared data directory (validation splits and task sets).
    #[arg(long, required_unless_present = "text")]
    data: Option<PathBuf>,
    /// Instead of --data: the perplexity of this text file as llama.cpp's llama-perplexity
    /// computes it (the whole text tokenised with the model's tokenizer.json, chunks of
    /// --seq-len tokens, the second half of each chunk scored), to compare the two runtimes.
    #[arg(long, conflicts_with_all = ["data", "ensemble", "domains", "route_by_domain"])]
    text: Option<PathBuf>,
    /// With --text: chunks to score at most (llama-perplexity's --chunks; default all).
    #[arg(long, requires = "text")]
    chunks: Option<usize>,
    /// Ensemble the models (BTM): posterior-top1, posterior-top2, ... or uniform.
    #[arg(long)]
    ensemble: Option<String>,
    /// Domains to evaluate (default: all in the data directory).
    #[arg(long)]
    domains: Vec<String>,
    /// Tokens per loss window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Loss windows per domain at most.
    #[arg(long, default_value_t = 32)]
    windows: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tasks per domain at most (0: loss only).
    #[arg(long, default_value_t = 100)]
    tasks: usize,
    /// Prompts generated together.
    #[arg(long, default_value_t = 32)]
    task_batch: usize,
    /// k-shot: prepend k training documents of the domain to each prompt.
    #[arg(long, default_value_t = 0)]
    shots: usize,
    /// Name of the method in the output.
    #[arg(long, default_value = "model")]
    name: String,
    /// Write the results here (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    without: super::experts::Without,
    /// Oracle routing (a diagnostic): every token of a domain goes to that domain's expert
    /// alone, with its whole weight (a domain without an expert to the generalist).
    #[arg(long, conflicts_with_all = ["ensemble", "names"])]
    route_by_domain: bool,
}

fn weighting(s: &str) -> Result<Weighting> {
    if s == "uniform" {
        return Ok(Weighting::Uniform);
    }
    if let Some(k) = s.strip_prefix("posterior-top") {
        let top_k: usize = k.parse().context("posterior-topK needs a number")?;
        if top_k == 0 {
            bail!("--ensemble {s}: K must be >= 1\nhint: posterior-top1 or posterior-top2");
        }
        return Ok(Weighting::Posterior { top_k });
    }
    bail!("--ensemble {s:?}: uniform or posterior-topK (e.g. posterior-top1)")
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    // The output is written last: refuse one that cannot be written before evaluating.
    if let Some(out) = &a.out {
        let mut inputs: Vec<&std::path::Path> = a.model.iter().map(PathBuf::as_path).collect();
        inputs.extend(a.data.as_deref());
        inputs.extend(a.text.as_deref());
        btx_core::outdir::check_not_an_input(out, &inputs)?;
        if out.is_dir() {
            bail!(
                "--out {} is a directory\nhint: name a file, e.g. --out eval.json",
                out.display()
            );
        }
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(p) = parent.filter(|p| !p.is_dir()) {
            bail!(
                "--out {}: the directory {} does not exist\nhint: create it first, or write elsewhere",
                out.display(),
                p.display()
            );
        }
    }
    if let Some(text) = &a.text {
        return run_text(&a, text, dev);
    }
    let data = DataDir::open(
        a.data
            .as_deref()
            .expect("clap requires --data without --text"),
    )?;
    let models = a
        .model
        .iter()
        .map(|m| a.without.apply(jobs::eval::load(m, &data, dev)?))
        .collect::<Result<Vec<_>>>()?;
    let domains = if a.domains.is_empty() {
        data.domains()
    } else {
        a.domains.clone()
    };
    let spec = EvalSpec {
        seq_len: a.seq_len,
        windows: a.windows,
        batch: a.batch,
        tasks: a.tasks,
        task_batch: a.task_batch,
        shots: a.shots,
    };
    if a.ensemble.is_none() && models.len() > 1 {
        bail!("several --model need --ensemble");
    }
    let ensemble = a.ensemble.as_deref().map(weighting).transpose()?;
    let me = if a.route_by_domain {
        jobs::eval::oracle(&a.name, &models[0], &data, &domains, &spec)?
    } else {
        jobs::eval::eval(&a.name, models, ensemble, &data, &domains, &spec, true)?
    };
    let result = &me.result;
    outln!(
        "{:<14} {:>8} {:>10} {:>9}",
        "domain",
        "loss",
        "ppl",
        "acc %"
    );
    for (d, e) in &result.domains {
        outln!(
            "{:<14} {:>8.4} {:>10.2} {:>9}",
            d,
            e.loss,
            e.perplexity,
            e.accuracy
                .map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
        );
    }
    outln!(
        "{:<14} {:>8.4} {:>10} {:>9}",
        "average",
        result.average.loss,
        "",
        result
            .average
            .accuracy
            .map_or("-".into(), |x| format!("{:.1}", 100.0 * x))
    );
    if let Some(out) = a.out {
        btx_core::atomic::write_file(&out, serde_json::to_string_pretty(&me)?.as_bytes())?;
    }
    Ok(())
}

/// `--text`: llama-perplexity's protocol on one model (see [`btx_eval::text`]).
fn run_text(a: &Args, text: &std::path::Path, dev: &Device) -> Result<()> {
    if a.model.len() != 1 {
        bail!("--text evaluates one --model");
    }
    let dir = &a.model[0];
    let tok = btx_data::Tok::load(&dir.join("tokenizer.json"))
        .with_context(|| format!("the tokenizer of {}", dir.display()))?;
    let body =
        std::fs::read_to_string(text).with_context(|| format!("reading {}", text.display()))?;
    let model = a.without.apply(
        btx_model::Model::load(dir, dev).with_context(|| format!("loading {}", dir.display()))?,
    )?;
    model.cfg.check_positions(
        a.seq_len,
        &format!("--seq-len {}", a.seq_len),
        "a smaller --seq-len (llama-perplexity's -c)",
    )?;
    if tok.vocab_size() > model.cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model {} embedding rows\nhint: use the model's own tokenizer.json",
            dir.display(),
            tok.vocab_size(),
            model.cfg.vocab_size
        );
    }
    let ids = tok.encode(&body)?;
    let r = btx_eval::text::text_perplexity(
        &model,
        &ids,
        a.seq_len,
        a.chunks,
        tok.added_bos(),
        a.batch,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}\nhint: a longer text, or a smaller --seq-len",
            text.display()
        )
    })?;
    outln!(
        "{}: perplexity {:.4} (loss {:.5}) over {} tokens: {} chunks of {}, second halves scored",
        text.display(),
        r.perplexity,
        r.loss,
        r.scored,
        r.chunks,
        r.ctx
    );
    if let Some(out) = &a.out {
        btx_core::atomic::write_file(out, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(())
}
