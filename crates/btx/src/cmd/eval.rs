//! `btx eval --model DIR [--model DIR ...] --data DIR --out eval.json`: held-out loss and
//! perplexity per domain, task accuracy by greedy generation, routing analysis for MoE models,
//! and Branch-Train-Merge ensembles of several models.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_data::DataDir;
use btx_eval::{EvalSpec, Weighting};
use btx_model::burn::prelude::Device;

use crate::jobs;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory; several with --ensemble.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Prepared data directory (validation splits and task sets).
    #[arg(long)]
    data: PathBuf,
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
        inputs.push(&a.data);
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
    let data = DataDir::open(&a.data)?;
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
