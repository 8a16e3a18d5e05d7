//! `btx train --config FILE.toml [--set k=v ...] [--resume] --out DIR`.

use crate::sections::DataSection;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::{prepare, DataDir, MixConfig};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelSpec};
use btx_train::{LoopConfig, MoeLossConfig, OptimConfig, TrainOpts, TrainerConfig};
use serde::{Deserialize, Serialize};

use crate::jobs;
use crate::overrides;
use crate::runtime::EXIT_STOPPED;

#[derive(clap::Args)]
pub struct Args {
    /// Training config (TOML). See examples/tiny-train.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config value, e.g. --set train.steps=200 --set optim.lr=3e-4.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Continue from the newest complete checkpoint in OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Output directory: metrics.jsonl, checkpoints/, model/.
    #[arg(long)]
    out: PathBuf,
    /// Stop (with a checkpoint) after this many steps in this process.
    #[arg(long, hide = true)]
    max_steps_this_run: Option<usize>,
}

/// `[model]`: start from a checkpoint, or initialise a new model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// A Hugging Face model directory to continue training.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Shape of a new model (vocabulary from the tokenizer).
    #[serde(default)]
    pub init: Option<ModelSpec>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub model: ModelSource,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
    #[serde(default)]
    pub moe: MoeLossConfig,
}

impl TrainFile {
    pub fn trainer(&self) -> TrainerConfig {
        TrainerConfig {
            optim: self.optim.clone(),
            train: self.train.clone(),
            moe: self.moe.clone(),
        }
    }
}

/// Opens (or first prepares) the data a config names.
pub fn resolve_data(d: &DataSection, base: &Path, out: &Path) -> Result<DataDir> {
    let dir = match (&d.dir, &d.prepare) {
        (Some(_), Some(_)) => bail!("[data]: give either dir or prepare, not both"),
        (Some(dir), None) => {
            if dir.is_absolute() {
                dir.clone()
            } else {
                base.join(dir)
            }
        }
        (None, Some(p)) => {
            let dir = out.join("data");
            // The run directory owns its data dir: a changed [data.prepare] replaces it.
            prepare(p, base, &dir, Existing::Replace).context("preparing data")?;
            dir
        }
        (None, None) => {
            bail!("[data] needs dir = \"...\" (from `btx data prepare`) or a [data.prepare] table")
        }
    };
    DataDir::open(&dir).map_err(Into::into)
}

/// The initial model: loaded from `path` (its tokenizer must be the data's), or initialised.
pub fn resolve_model(m: &ModelSource, base: &Path, data: &DataDir, seed: u64) -> Result<Model> {
    if m.path.is_some() && m.init.is_some() {
        bail!("[model]: give either path or init, not both");
    }
    let path = m.path.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        }
    });
    jobs::train::initial_model(path.as_deref(), m.init.as_ref(), data, seed)
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    let (file, raw): (TrainFile, _) = overrides::load(a.config.as_deref(), &a.sets)?;
    let base = a
        .config
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&a.out)?;
    // One trainer per output directory (its checkpoints, metrics and model).
    let _lock = crate::lock::DirLock::acquire(&a.out, "btx train")?;
    std::fs::write(
        a.out.join("config.resolved.toml"),
        toml::to_string_pretty(&raw).unwrap_or_default(),
    )?;
    let data = resolve_data(&file.data, &base, &a.out)?;
    let model = resolve_model(&file.model, &base, &data, file.train.seed)?;
    let cfg = file.trainer();
    let mix = MixConfig {
        weights: file.data.weights.clone(),
        split: file.data.split.clone(),
    };
    let opts = TrainOpts {
        device: dev.clone(),
        resume: a.resume,
        progress: true,
        label: "train".into(),
        max_steps_this_run: a.max_steps_this_run,
    };
    let outcome = jobs::train::train(model, &data, &mix, &cfg, &a.out, &opts)?;
    if outcome.stopped_early {
        errln!(
            "stopped at step {}/{} with a checkpoint; continue with --resume",
            outcome.steps,
            cfg.train.steps
        );
        std::process::exit(EXIT_STOPPED);
    }
    outln!(
        "done: {} steps, {} tokens, final loss {:.4}, {:.1}s; model in {}",
        outcome.steps,
        outcome.tokens,
        outcome.final_loss,
        outcome.wall_s,
        outcome.model_dir.display()
    );
    Ok(())
}
