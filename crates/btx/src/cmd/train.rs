//! `btx train --config FILE.toml [--set k=v ...] [--resume] --out DIR`.

use btx_pipeline::recipe::sections::DataSection;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::{prepare, DataDir, MixConfig};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelSpec};
use btx_train::{TrainOpts, TrainerConfig};
use serde::{Deserialize, Serialize};

use btx_pipeline::jobs;
use btx_pipeline::recipe::overrides;
use btx_pipeline::runtime::EXIT_STOPPED;

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
    #[arg(long, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    max_steps_this_run: Option<u64>,
    /// How the final model is written (checkpoints stay f32); the default dtype is
    /// [model] path's, f32 for a new model.
    #[command(flatten)]
    save: super::SaveArgs,
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

/// `btx train`'s config file: the model, the data, and the training loop's settings
/// (`[optim]`, `[train]`, `[moe]`: [`TrainerConfig`], the same type the recipe's stages use).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub model: ModelSource,
    #[serde(default)]
    pub data: DataSection,
    #[serde(flatten)]
    pub trainer: TrainerConfig,
}

/// Where a `btx train` gets its data: a prepared directory (`[data] dir`, or `OUT/data` already
/// prepared from this very `[data.prepare]`), or a prepare still to run.
enum DataSource {
    Ready(DataDir),
    Prepare(btx_data::PrepareConfig),
}

fn abs(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Decides where the data comes from, refusing what cannot work before anything is written.
/// `resuming`: OUT holds checkpoints that will be continued, so `OUT/data` must stay theirs.
fn data_source(d: &DataSection, base: &Path, out: &Path, resuming: bool) -> Result<DataSource> {
    match (&d.dir, &d.prepare) {
        (Some(_), Some(_)) => bail!("[data]: give either dir or prepare, not both"),
        (Some(dir), None) => Ok(DataSource::Ready(DataDir::open(&abs(base, dir))?)),
        (None, Some(p)) => {
            p.validate().context("[data.prepare]")?;
            p.check_inputs(base).context("[data.prepare]")?;
            let dir = out.join("data");
            if let Ok(dd) = DataDir::open(&dir) {
                if dd.manifest.fingerprint == p.fingerprint() {
                    // Its manifest is believed once its shards are read back and match it;
                    // damaged data is prepared again (the same config makes the same data).
                    match dd.verify() {
                        Ok(_) => return Ok(DataSource::Ready(dd)),
                        Err(e) => {
                            tracing::warn!(
                                "{} is damaged ({e}); preparing it again",
                                dir.display()
                            );
                            return Ok(DataSource::Prepare(p.clone()));
                        }
                    }
                }
                if resuming {
                    bail!(
                        "{} was prepared from another [data.prepare] than this config's, and the checkpoints' data position belongs to it\nhint: resume with the original [data.prepare], or start a fresh --out",
                        dir.display()
                    );
                }
            }
            Ok(DataSource::Prepare(p.clone()))
        }
        (None, None) => {
            bail!("[data] needs dir = \"...\" (from `btx data prepare`) or a [data.prepare] table")
        }
    }
}

/// The config of the model a run starts from, without loading or initialising its weights.
fn model_shape(m: &ModelSource, base: &Path, data: &DataDir) -> Result<btx_model::ModelConfig> {
    match &m.path {
        Some(p) => {
            let p = abs(base, p);
            Ok(btx_model::ModelConfig::load(&p.join("config.json"))?)
        }
        None => {
            let tok = data.tokenizer()?;
            let spec = m.init.clone().unwrap_or_default();
            Ok(spec.to_config(tok.vocab_size(), Some(tok.eos_id()))?)
        }
    }
}

/// Refuses an `--out` that holds files no `btx train` wrote: a trainer replaces its own
/// `data/`, `model/` and `metrics.jsonl`, and must not replace anyone else's.
fn check_out_is_a_trainers(out: &Path) -> Result<()> {
    if out.join("config.resolved.toml").is_file() {
        return Ok(());
    }
    let foreign: Vec<String> = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        // (the lock, and what a killed trainer may have left while writing)
        .filter(|n| {
            n != btx_pipeline::run::lock::LOCK
                && !(n.starts_with('.')
                    && [".partial-", ".tmp-", ".old-"]
                        .iter()
                        .any(|k| n.contains(k)))
        })
        .collect();
    if !foreign.is_empty() {
        bail!(
            "{} is not empty and no `btx train` wrote it (it holds {}): training would replace what is there\nhint: choose a new or empty --out",
            out.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// The first `config.json` keys in which two models differ, as `key: a -> b`.
fn config_difference(a: &btx_model::ModelConfig, b: &btx_model::ModelConfig) -> Option<String> {
    let (x, y) = (a.to_hf_json(), b.to_hf_json());
    let (Some(x), Some(y)) = (x.as_object(), y.as_object()) else {
        return (a != b).then(|| "config.json".to_string());
    };
    let diffs: Vec<String> = x
        .keys()
        .chain(y.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| x.get(*k) != y.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("-".to_string(), |v| v.to_string());
            format!("{k}: {} -> {}", show(x.get(k)), show(y.get(k)))
        })
        .collect();
    if diffs.is_empty() {
        (a != b).then(|| "config.json".to_string())
    } else {
        Some(diffs.join(", "))
    }
}

/// A directory this command made or staged, removed again unless kept: a refused command
/// leaves `--out` as it found it.
struct Undo {
    path: Option<PathBuf>,
}

impl Undo {
    /// Keeps the directory: the command went ahead.
    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// The initial model: loaded from `path` (its tokenizer must be the data's), or initialised.
pub fn resolve_model(m: &ModelSource, base: &Path, data: &DataDir, seed: u64) -> Result<Model> {
    if m.path.is_some() && m.init.is_some() {
        bail!("[model]: give either path or init, not both");
    }
    let path = m.path.as_ref().map(|p| abs(base, p));
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
    let cfg = file.trainer.clone();
    // Every check that can refuse runs before the first write to --out.
    cfg.validate().map_err(|e| {
        anyhow!("invalid training config: {e}\nhint: fix it in the config file or with --set")
    })?;
    if file.model.path.is_some() && file.model.init.is_some() {
        bail!("[model]: give either path or init, not both");
    }
    // The final model's dtype defaults to [model] path's (read before any write).
    let save = a
        .save
        .resolve(file.model.path.as_ref().map(|p| abs(&base, p)).as_deref())?;
    if std::fs::symlink_metadata(&a.out).is_ok() && !a.out.is_dir() {
        bail!(
            "{} exists and is not a directory\nhint: choose another --out",
            a.out.display()
        );
    }
    let made_out = Undo {
        path: (!a.out.exists()).then(|| a.out.clone()),
    };
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // One trainer per output directory (its checkpoints, metrics and model).
    let lock = btx_pipeline::run::lock::DirLock::acquire(&a.out, "btx train")?;
    check_out_is_a_trainers(&a.out)?;
    let latest = btx_train::checkpoint::find_latest(&a.out.join("checkpoints"));
    let resumed_from = match (&latest, a.resume) {
        (Some(_), false) => {
            return Err(btx_train::error::TrainError::AlreadyStarted { dir: a.out.clone() }.into())
        }
        (Some((step, dir)), true) => {
            let state = btx_train::checkpoint::read_state(dir)?;
            btx_train::checkpoint::resume_changes(dir, &state, &cfg)?;
            if *step > cfg.train.steps {
                bail!(
                    "{}: the newest checkpoint is at step {step}, beyond train.steps {}\nhint: resume with train.steps >= {step}",
                    dir.display(),
                    cfg.train.steps
                );
            }
            Some(dir.clone())
        }
        (None, _) => None,
    };
    let (data, staged) = match data_source(&file.data, &base, &a.out, latest.is_some())? {
        DataSource::Ready(d) => (d, None),
        DataSource::Prepare(p) => {
            // Prepared into a hidden directory beside OUT/data (named as a leftover of it, so
            // that a killed train's is swept by the next) and moved to OUT/data only once
            // everything else checks.
            btx_core::outdir::sweep_leftovers(&a.out.join("data"));
            let next = a
                .out
                .join(btx_core::outdir::leftover_name("data", "partial"));
            let undo = Undo {
                path: Some(next.clone()),
            };
            let staged = next.join("data");
            prepare(&p, &base, &staged, Existing::Replace).context("preparing data")?;
            (DataDir::open(&staged)?, Some(undo))
        }
    };
    // The model's shape, checked against the run (positions, training settings it cannot
    // honour, the memory of a step) before a weight is allocated.
    let shape = model_shape(&file.model, &base, &data)?;
    cfg.preflight(&shape)?;
    btx_train::config::check_freeze(&cfg.train.freeze, &shape)?;
    // The data mixture's weights name the data's domains: checked on the (staged) data
    // before it moves into --out and before config.resolved.toml is written.
    let mix = MixConfig {
        weights: file.data.weights.clone(),
        split: file.data.split.clone(),
    };
    btx_data::mixture::Mixture::new(
        &data,
        &mix,
        cfg.train.batch_size,
        cfg.train.seq_len,
        cfg.train.seed,
    )?;
    let model = resolve_model(&file.model, &base, &data, file.trainer.train.seed)?;
    if let Some(dir) = &resumed_from {
        // The checkpoint's weights are what a resume trains: a config that describes another
        // model is another run, not this one continued.
        let saved = btx_model::ModelConfig::load(&dir.join("model/config.json"))?;
        if let Some(diff) = config_difference(&saved, &model.cfg) {
            bail!(
                "{}: the checkpoint holds another model than [model] describes ({diff})\nhint: resume with the original [model], or start a fresh --out",
                dir.display()
            );
        }
    }
    let data = match staged {
        Some(undo) => {
            let dir = a.out.join("data");
            btx_core::outdir::move_into_place(&data.root, &dir)?;
            // (the now empty staging directory goes with `undo`)
            drop(undo);
            DataDir::open(&dir)?
        }
        None => data,
    };
    made_out.keep();
    btx_core::atomic::write_file(
        &a.out.join("config.resolved.toml"),
        toml::to_string_pretty(&raw).unwrap_or_default().as_bytes(),
    )?;
    let opts = TrainOpts {
        device: dev.clone(),
        resume: a.resume,
        progress: true,
        label: "train".into(),
        max_steps_this_run: a.max_steps_this_run.map(|n| n as usize),
        save,
    };
    let outcome = jobs::train::train(model, &data, &mix, &cfg, &a.out, &opts)?;
    drop(lock);
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
