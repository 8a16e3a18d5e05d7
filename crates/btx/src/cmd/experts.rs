//! Removing experts (FlexOlmo's opt-out): `btx prune-experts` writes a model without them,
//! `--without-expert` (eval, generate) drops them in memory. Either way the experts' FFNs,
//! attention experts and router rows go; every other weight stays, so the experts left compute
//! what they did and the routers renormalise over them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_core::outdir::{Existing, OutDir};
use btx_model::burn::prelude::Device;
use btx_model::Model;
use serde_json::json;

use btx_model::GENERALIST;

/// `--without-expert NAME ...` for commands that load a model.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Without {
    /// Run without this expert: a name from the model's `btx_experts` (e.g. math) or an expert
    /// number; repeat for several. Its FFN expert, attention expert and router rows are removed.
    #[arg(long = "without-expert")]
    pub names: Vec<String>,
    /// Allow removing the generalist (the seed's FFN, what the model falls back on for text
    /// outside every expert's domain).
    #[arg(long)]
    pub allow_generalist: bool,
}

impl Without {
    pub fn apply(&self, m: Model) -> Result<Model> {
        if self.names.is_empty() {
            return Ok(m);
        }
        remove(m, &self.names, self.allow_generalist)
    }
}

/// `m` without the experts `names`; the generalist only with `allow_generalist`.
pub fn remove(m: Model, names: &[String], allow_generalist: bool) -> Result<Model> {
    let idx = m.cfg.expert_indices(names)?;
    let label = |i: usize| m.cfg.expert_labels.get(i).cloned().unwrap_or(i.to_string());
    if !allow_generalist && idx.iter().any(|&i| label(i) == GENERALIST) {
        bail!(
            "refusing to remove the generalist: it is the seed's FFN, what the model falls back on for text outside every expert's domain\nhint: pass --allow-generalist if that is what you want"
        );
    }
    let dropped: Vec<String> = idx.iter().map(|&i| label(i)).collect();
    let out = m.without_experts(&idx)?;
    tracing::info!(
        "removed expert(s) {:?}; left: {:?} (top-{})",
        dropped,
        out.cfg.expert_labels,
        out.cfg.moe.as_ref().map_or(0, |x| x.top_k)
    );
    Ok(out)
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// A BTX model directory (a MiX or a finetuned one).
    #[arg(long)]
    model: PathBuf,
    /// Experts to remove: names from the model's `btx_experts` or expert numbers.
    #[arg(long, num_args = 1.., required = true)]
    drop: Vec<String>,
    /// Allow removing the generalist.
    #[arg(long)]
    allow_generalist: bool,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
}

pub fn run_prune(a: PruneArgs) -> Result<()> {
    let m = Model::load(&a.model, &Device::flex())
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    let before = m.cfg.expert_labels.clone();
    let pruned = remove(m, &a.drop, a.allow_generalist)?;
    let staged = OutDir::create(&a.out, &[&a.model], Existing::replace_if(a.force))?;
    pruned.save(staged.path(), 4 << 30)?;
    copy_tokenizer(&a.model, staged.path())?;
    let summary = json!({
        "source": a.model,
        "dropped": a.drop,
        "experts_before": before,
        "experts_after": pruned.cfg.expert_labels,
    });
    std::fs::write(
        staged.path().join("prune.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    staged.commit()?;
    outln!(
        "removed {:?}: {} experts left {:?}: {}",
        a.drop,
        pruned.cfg.num_experts(),
        pruned.cfg.expert_labels,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// A BTX model directory (a MiX or a finetuned one, top-k routing, without split/blend).
    #[arg(long)]
    model: PathBuf,
    /// The dense model whose FFN (and, for attention-expert models, attention) becomes the new
    /// expert: a branch of the MoE's seed (same config and tokenizer, shared weights close to
    /// the MoE's).
    #[arg(long)]
    expert: PathBuf,
    /// The new expert's name (in `btx_experts`): its domain in --data.
    #[arg(long)]
    domain: String,
    /// Prepared data holding the new domain and others (the MoE's experts', general text): the
    /// new router rows are fitted to take the first and leave the rest alone.
    #[arg(long)]
    data: PathBuf,
    /// Logit margin of the new expert's fitted rows above the best other expert on its domain
    /// and below the top-k's last elsewhere.
    #[arg(long, default_value_t = btx_pipeline::jobs::add::DEFAULT_MARGIN)]
    router_margin: f64,
    /// Largest relative distance ||expert - model|| / ||model|| of the shared weights
    /// (embeddings, norms, non-expert attention) accepted.
    #[arg(long, default_value_t = btx_pipeline::jobs::add::DEFAULT_MAX_DISTANCE)]
    max_distance: f64,
    /// Output model directory (written beside it and renamed into place when complete).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (atomically).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    save: super::SaveArgs,
}

/// `btx add-expert`: see [`btx_pipeline::jobs::add`].
pub fn run_add(a: AddArgs) -> Result<()> {
    // Every weight the model had is kept bit for bit: in its own dtype, never re-rounded.
    let stored = btx_model::io::stored_dtype(&a.model)?;
    if let Some(d) = a.save.dtype.filter(|d| *d != stored) {
        bail!(
            "--dtype {} would re-round every weight of {}, which is stored as {}; add-expert keeps them bit for bit\nhint: add the expert in the model's dtype, then `btx export --dtype {}`",
            d.torch_name(),
            a.model.display(),
            stored.torch_name(),
            d.torch_name()
        );
    }
    let dtype = Some(stored);
    let s = btx_pipeline::jobs::add::add_expert(&btx_pipeline::jobs::add::AddJob {
        moe: &a.model,
        dense: &a.expert,
        name: &a.domain,
        data: &a.data,
        margin: a.router_margin,
        max_distance: a.max_distance,
        existing: Existing::replace_if(a.force),
        dtype,
        max_shard_bytes: a.save.max_shard_size,
        out: &a.out,
    })?;
    outln!(
        "added {} as expert {} of {} (shared weights {:.3} from the model's, relative): {}",
        s.name,
        s.index,
        s.num_experts,
        s.distance,
        a.out.display()
    );
    Ok(())
}

pub(crate) fn copy_tokenizer(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let t = from.join("tokenizer.json");
    if t.exists() {
        std::fs::copy(&t, to.join("tokenizer.json"))
            .with_context(|| format!("copying {}", t.display()))?;
    }
    btx_data::copy_tokenizer_config(from, to)?;
    Ok(())
}
