//! Configuration sections shared by recipes and commands — `[data]` (recipes and `btx train`),
//! `[slurm]` (recipes and the Slurm executor): plain types that import nothing of btx's own, so
//! that the recipe, the plan and the executors can all read them without a circle.

use std::path::PathBuf;

use btx_data::PrepareConfig;

use serde::{Deserialize, Serialize};

/// Resources of one class of job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `--cpus-per-task` (btx uses them as its thread count).
    #[serde(default = "Resources::d_cpus")]
    pub cpus: usize,
    /// `--mem`, e.g. "8G".
    #[serde(default = "Resources::d_mem")]
    pub mem: String,
    /// `--nodes`.
    #[serde(default = "Resources::d_nodes")]
    pub nodes: usize,
    /// `--gres`, e.g. "gpu:1".
    #[serde(default)]
    pub gres: Option<String>,
    /// `--time`, e.g. "04:00:00" (overrides `[slurm] time`).
    #[serde(default)]
    pub time: Option<String>,
    /// Extra sbatch flags for these jobs.
    #[serde(default)]
    pub extra: Vec<String>,
}

impl Resources {
    fn d_cpus() -> usize {
        1
    }
    fn d_mem() -> String {
        "4G".into()
    }
    fn d_nodes() -> usize {
        1
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1,
            mem: "4G".into(),
            nodes: 1,
            gres: None,
            time: None,
            extra: vec![],
        }
    }
}

/// `[slurm]` of a recipe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSection {
    /// `--partition`.
    #[serde(default)]
    pub partition: Option<String>,
    /// `--account`.
    #[serde(default)]
    pub account: Option<String>,
    /// Default `--time` of every job.
    #[serde(default)]
    pub time: Option<String>,
    /// Extra sbatch flags for every job (e.g. "--qos=normal").
    #[serde(default)]
    pub extra: Vec<String>,
    /// Seconds before the time limit at which the warning signal (USR1) arrives. Default 120.
    #[serde(default)]
    pub signal_seconds: Option<u64>,
    /// The btx binary on the cluster (default: the one submitting).
    #[serde(default)]
    pub btx: Option<PathBuf>,
    /// Expert tasks (the job array).
    #[serde(default)]
    pub experts: Option<Resources>,
    /// Other training stages: seed pretraining, MoE-finetune, dense and upcycled baselines.
    #[serde(default)]
    pub train: Resources,
    /// Everything else: data, mix, upcycle, average, eval, report.
    #[serde(default)]
    pub light: Resources,
}

/// `[data]`: a prepared data directory (or a prepare to run first) and the mixture.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A directory written by `btx data prepare`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Or: a prepare config, run into OUT/data before training (skipped when up to date).
    #[serde(default)]
    pub prepare: Option<PrepareConfig>,
    /// Domain sampling weights (normalised); empty = all domains equally.
    #[serde(default)]
    pub weights: std::collections::BTreeMap<String, f64>,
    /// `train` (default) or `val`.
    #[serde(default)]
    pub split: Option<String>,
}
