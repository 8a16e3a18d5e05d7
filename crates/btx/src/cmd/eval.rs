//! `btx eval --model DIR --data DIR --out eval.json`: held-out loss and perplexity per domain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use btx_data::DataDir;
use btx_eval::domain_loss;
use btx_model::burn::prelude::Device;
use btx_model::Model;
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Prepared data directory (its validation splits are used).
    #[arg(long)]
    data: PathBuf,
    /// Domains to evaluate (default: all in the data directory).
    #[arg(long)]
    domains: Vec<String>,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Windows per domain at most.
    #[arg(long, default_value_t = 64)]
    windows: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Write the results here (JSON).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    let data = DataDir::open(&a.data)?;
    let model = Model::load(&a.model, dev)
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    let domains = if a.domains.is_empty() {
        data.domains()
    } else {
        a.domains.clone()
    };
    let mut res = BTreeMap::new();
    println!(
        "{:<14} {:>8} {:>10} {:>9}",
        "domain", "loss", "ppl", "tokens"
    );
    for d in &domains {
        let shard = data.shard(d, "val")?;
        let r = domain_loss(&model, &shard, a.seq_len, a.windows, a.batch);
        println!(
            "{:<14} {:>8.4} {:>10.2} {:>9}",
            d, r.loss, r.perplexity, r.tokens
        );
        res.insert(d.clone(), r);
    }
    if let Some(out) = a.out {
        let v = json!({"model": a.model, "data": a.data, "domains": res});
        std::fs::write(&out, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
