//! Removing experts (FlexOlmo's opt-out): `btx prune-experts` writes a model without them,
//! `--without-expert` (eval, generate) drops them in memory. Either way the experts' FFNs,
//! attention experts and router rows go; every other weight stays, so the experts left compute
//! what they did and the routers renormalise over them. And `btx export`: a model in the
//! format a user asks for, refused where that format cannot hold it.

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
    #[arg(long, default_value_t = crate::jobs::add::DEFAULT_MARGIN)]
    router_margin: f64,
    /// Largest relative distance ||expert - model|| / ||model|| of the shared weights
    /// (embeddings, norms, non-expert attention) accepted.
    #[arg(long, default_value_t = crate::jobs::add::DEFAULT_MAX_DISTANCE)]
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

/// `btx add-expert`: see [`crate::jobs::add`].
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
    let s = crate::jobs::add::add_expert(&crate::jobs::add::AddJob {
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

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The model directory to export.
    #[arg(long)]
    model: PathBuf,
    /// `hf` (also `hf-mixtral`): what transformers loads, as the family's class (Llama,
    /// Mistral, Mixtral, Qwen2, Qwen2-MoE, Qwen3, Qwen3-MoE); `btx`: btx's own layout, which
    /// also holds attention experts.
    #[arg(long, default_value = "hf")]
    format: String,
    /// Output model directory (written beside it and renamed into place when complete).
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
    #[command(flatten)]
    save: super::SaveArgs,
}

pub fn run_export(a: ExportArgs) -> Result<()> {
    if !["hf", "hf-mixtral", "btx"].contains(&a.format.as_str()) {
        bail!(
            "--format {:?}: hf (or its old name hf-mixtral) or btx\nhint: hf is what transformers loads",
            a.format
        );
    }
    let save = a.save.resolve(Some(&a.model))?;
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

fn copy_tokenizer(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let t = from.join("tokenizer.json");
    if t.exists() {
        std::fs::copy(&t, to.join("tokenizer.json"))
            .with_context(|| format!("copying {}", t.display()))?;
    }
    Ok(())
}
