//! The experiment recipe: one TOML file that describes a whole BTX run — seed, data, experts,
//! mix, finetune variants, baselines. See examples/quick.toml for a complete one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use btx_model::{ModelSpec, Routing};
use btx_train::{LoopConfig, MoeLossConfig, OptimConfig, TrainerConfig};
use serde::{Deserialize, Serialize};

use crate::sections::DataSection;

/// `[seed]`: where the seed model comes from (exactly one).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSection {
    /// A Hugging Face Llama directory (config.json, safetensors, tokenizer.json).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A llama.cpp GGUF file to import.
    #[serde(default)]
    pub gguf: Option<PathBuf>,
    /// Pretrain a small seed on the recipe's data.
    #[serde(default)]
    pub pretrain: Option<TrainSpec>,
}

/// A training job's settings: model shape (for new models), data mixture, optimizer, loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Shape of a new model (only for pretraining).
    #[serde(default)]
    pub init: Option<ModelSpec>,
    /// Domain weights; empty = all domains equally.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
    #[serde(default)]
    pub moe: MoeLossConfig,
}

impl TrainSpec {
    pub fn trainer(&self) -> TrainerConfig {
        TrainerConfig {
            optim: self.optim.clone(),
            train: self.train.clone(),
            moe: self.moe.clone(),
        }
    }

    /// Tokens one run of this spec trains on.
    pub fn tokens(&self) -> u64 {
        let t = &self.train;
        (t.steps * t.batch_size * t.seq_len * t.grad_accum) as u64
    }

    pub fn tokens_per_step(&self) -> u64 {
        let t = &self.train;
        (t.batch_size * t.seq_len * t.grad_accum) as u64
    }
}

/// `[experts]`: one expert per domain, branched from the seed and trained on that domain alone.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsSection {
    /// Domains to train experts on (names in the data directory).
    pub domains: Vec<String>,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
    /// Per-domain overrides of optim/train, e.g. `[experts.override.math.train] steps = 400`.
    #[serde(default, rename = "override")]
    pub overrides: BTreeMap<String, toml::Value>,
}

pub use btx_mix::MixSpec;

/// How the experts a variant mixes were trained.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ExpertTraining {
    /// Every weight trains (the paper).
    #[default]
    Full,
    /// Only the FFNs train; attention, norms and embeddings stay the seed's. The MiX then
    /// averages identical non-FFN weights (the coordination FlexOlmo relies on). These experts
    /// are trained once per replica (stages `expert-ffn:<domain>`) and shared by every variant
    /// that asks for them.
    FfnOnly,
    /// A chosen set of weights stays the seed's (the variant's `anchor`; default attention,
    /// embeddings and LM head: FlexOlmo's shared anchor); the rest trains. Averaged, anchored
    /// weights are exactly the seed's. Stages `expert-anchored:<domain>` (default anchor) or
    /// `expert-anchored-<groups>:<domain>`.
    Anchored,
}

/// The weight groups an anchored expert may keep frozen, in the order of [`Anchor`]'s bits.
pub const ANCHOR_GROUPS: [&str; 4] = ["attention", "embeddings", "head", "norms"];

/// A set of [`ANCHOR_GROUPS`] as a bit mask (bit i = group i).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Anchor(pub u8);

impl Anchor {
    /// FlexOlmo's: attention, embeddings and head.
    pub const DEFAULT: Anchor = Anchor(0b0111);

    pub fn parse(groups: &[String]) -> Result<Self, String> {
        let mut m = 0u8;
        for g in groups {
            let i = ANCHOR_GROUPS
                .iter()
                .position(|x| x == g)
                .ok_or_else(|| format!("anchor group {g:?}: one of {ANCHOR_GROUPS:?}"))?;
            m |= 1 << i;
        }
        if m == 0 {
            return Err("anchor must name at least one group (or use experts = \"full\")".into());
        }
        Ok(Anchor(m))
    }

    pub fn groups(self) -> Vec<&'static str> {
        (0..ANCHOR_GROUPS.len())
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| ANCHOR_GROUPS[i])
            .collect()
    }

    /// Whether the parameter `name` is in one of the anchored groups.
    pub fn holds(self, name: &str) -> bool {
        let is = |g: &str| self.groups().contains(&g);
        (is("attention") && name.contains(".self_attn."))
            || (is("embeddings") && name == "model.embed_tokens.weight")
            || (is("head") && name == "lm_head.weight")
            || (is("norms") && name.ends_with("norm.weight"))
    }
}

impl ExpertTraining {
    /// The stage (and method) prefix of these experts.
    pub fn stage_prefix(self) -> &'static str {
        match self {
            ExpertTraining::Full => "expert",
            ExpertTraining::FfnOnly => "expert-ffn",
            ExpertTraining::Anchored => "expert-anchored",
        }
    }
}

/// One MoE-finetune run: overrides of the mix and of the finetune settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// Name (directory `finetune/<name>`, method `btx` or `btx:<name>` in the report).
    pub name: String,
    #[serde(default)]
    pub routing: Option<Routing>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub router_init: Option<btx_mix::RouterInitKind>,
    #[serde(default)]
    pub split: Option<usize>,
    #[serde(default)]
    pub blend: Option<bool>,
    /// `average` or `seed`: where the MiX takes the non-FFN weights from.
    #[serde(default)]
    pub non_ffn: Option<btx_mix::NonFfn>,
    /// `average`, `experts` or `experts-shared-kv`: the MiX's attention (see [`MixSpec`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention: Option<btx_mix::AttnMix>,
    /// `full` (default), `ffn-only` or `anchored`: which experts this variant mixes (see
    /// [`ExpertTraining`]).
    #[serde(default)]
    pub experts: ExpertTraining,
    /// With `experts = "anchored"`: the groups frozen at the seed's while the experts train,
    /// from `attention`, `embeddings`, `head`, `norms` (default the first three).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Vec<String>>,
    #[serde(default)]
    pub lb_coef: Option<f64>,
    #[serde(default)]
    pub z_loss_coef: Option<f64>,
    /// Train only the routers and the non-FFN weights.
    #[serde(default)]
    pub freeze_experts: bool,
    #[serde(default)]
    pub steps: Option<usize>,
    /// The share of BTX's training FLOPs (the first variant's: experts + finetune) this
    /// variant spends on the MoE-finetune; its experts get the rest (their steps rescaled,
    /// stages `expert-x<factor>:<domain>`). Sweeping it asks how to split a fixed budget.
    #[serde(default)]
    pub finetune_share: Option<f64>,
    /// Finetune for as many steps as spend the first variant's training FLOPs (experts +
    /// finetune): for a variant whose MoE costs more per token (attention experts), so that it
    /// is compared at equal compute rather than equal steps.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compute_matched: bool,
}

impl Variant {
    /// The anchored groups of this variant's experts (None unless `experts = "anchored"`).
    pub fn anchor(&self) -> Option<Anchor> {
        (self.experts == ExpertTraining::Anchored).then(|| {
            self.anchor
                .as_ref()
                .and_then(|a| Anchor::parse(a).ok())
                .unwrap_or(Anchor::DEFAULT)
        })
    }

    pub fn mix(&self, base: &MixSpec) -> MixSpec {
        let mut m = base.clone();
        if let Some(r) = &self.routing {
            m.routing = r.clone();
        }
        if let Some(k) = self.top_k {
            m.top_k = k;
        }
        if let Some(r) = self.router_init {
            m.router_init = r;
        }
        if let Some(s) = self.split {
            m.split = s;
        }
        if let Some(b) = self.blend {
            m.blend = b;
        }
        if let Some(n) = self.non_ffn {
            m.non_ffn = n;
        }
        if let Some(a) = self.attention {
            m.attention = a;
        }
        m
    }

    pub fn finetune(&self, base: &TrainSpec) -> TrainSpec {
        let mut f = base.clone();
        if let Some(c) = self.lb_coef {
            f.moe.lb_coef = c;
        }
        if let Some(c) = self.z_loss_coef {
            f.moe.z_loss_coef = c;
        }
        if let Some(s) = self.steps {
            f.train.steps = s;
        }
        if self.freeze_experts {
            f.train
                .freeze
                .push("model.layers.*.block_sparse_moe.experts.*".into());
        }
        f
    }
}

/// `[finetune]`: MoE-finetune of the mixed model on the union of the domains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// Domain weights of the finetune mixture (the paper: math 30.16, code 40.31, wikipedia
    /// 10.30, generalist 19.23 %).
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub train: LoopConfig,
    #[serde(default)]
    pub moe: MoeLossConfig,
    /// Variants to run; default one, `btx` (the paper's top-2 with load balancing).
    #[serde(default)]
    pub variants: Vec<Variant>,
}

impl FinetuneSection {
    pub fn spec(&self) -> TrainSpec {
        TrainSpec {
            init: None,
            weights: self.weights.clone(),
            optim: self.optim.clone(),
            train: self.train.clone(),
            moe: self.moe.clone(),
        }
    }
}

/// How a baseline's training budget is matched to BTX's. Written as a string; `false` means
/// "none" (so that `upcycle = false` reads as it looks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", try_from = "MatchingRaw")]
pub enum Matching {
    None,
    /// The same number of training tokens as BTX (experts + finetune).
    #[default]
    DataMatched,
    /// The same training FLOPs as BTX.
    ComputeMatched,
    Both,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum MatchingRaw {
    Flag(bool),
    Name(String),
}

impl TryFrom<MatchingRaw> for Matching {
    type Error = String;
    fn try_from(r: MatchingRaw) -> Result<Self, String> {
        const NAMES: &str = "\"none\", \"data-matched\", \"compute-matched\" or \"both\"";
        match r {
            MatchingRaw::Flag(false) => Ok(Matching::None),
            MatchingRaw::Flag(true) => Err(format!(
                "true does not say how to match the budget: use {NAMES}"
            )),
            MatchingRaw::Name(n) => match n.as_str() {
                "none" => Ok(Matching::None),
                "data-matched" => Ok(Matching::DataMatched),
                "compute-matched" => Ok(Matching::ComputeMatched),
                "both" => Ok(Matching::Both),
                other => Err(format!("unknown matching {other:?}: use {NAMES}")),
            },
        }
    }
}

impl Matching {
    pub fn list(self) -> Vec<&'static str> {
        match self {
            Matching::None => vec![],
            Matching::DataMatched => vec!["data"],
            Matching::ComputeMatched => vec!["compute"],
            Matching::Both => vec!["data", "compute"],
        }
    }
}

/// `[baselines]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselinesSection {
    /// Dense continued training of the seed on the union mixture. Default data-matched.
    pub dense: Matching,
    /// Sparse upcycling (copies of the seed FFN, random router) trained on the union mixture.
    /// Default both.
    pub upcycle: Matching,
    /// Weight average of the experts (and the seed, with a generalist). Default true.
    pub merge_avg: bool,
}

impl Default for BaselinesSection {
    fn default() -> Self {
        Self {
            dense: Matching::DataMatched,
            upcycle: Matching::Both,
            merge_avg: true,
        }
    }
}

fn d_true() -> bool {
    true
}

/// `[eval]`: what every method is evaluated on (see btx_eval::EvalSpec for the fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    #[serde(default = "EvalSection::d_seq")]
    pub seq_len: usize,
    #[serde(default = "EvalSection::d_windows")]
    pub windows: usize,
    #[serde(default = "EvalSection::d_batch")]
    pub batch: usize,
    #[serde(default = "EvalSection::d_tasks")]
    pub tasks: usize,
    #[serde(default = "EvalSection::d_task_batch")]
    pub task_batch: usize,
    #[serde(default)]
    pub shots: usize,
    /// Evaluate Branch-Train-Merge ensembles (top-1 and top-2). Default true.
    #[serde(default = "d_true")]
    pub btm: bool,
    /// Evaluate each variant's MiX before finetuning (method `mix:<variant>`). Default true.
    #[serde(default = "d_true")]
    pub mix: bool,
    /// Routing analysis of MoE models. Default true.
    #[serde(default = "d_true")]
    pub routing: bool,
    /// The opt-out cost of every finetuned BTX model: held-out loss with each expert removed
    /// (`btx prune-experts`), at the main budget. Default true.
    #[serde(default = "d_true")]
    pub opt_out: bool,
}

impl EvalSection {
    // Defaults come from btx-eval's EvalSpec, the one place they are written.
    fn d_seq() -> usize {
        btx_eval::EvalSpec::default().seq_len
    }
    fn d_windows() -> usize {
        btx_eval::EvalSpec::default().windows
    }
    fn d_batch() -> usize {
        btx_eval::EvalSpec::default().batch
    }
    fn d_tasks() -> usize {
        btx_eval::EvalSpec::default().tasks
    }
    fn d_task_batch() -> usize {
        btx_eval::EvalSpec::default().task_batch
    }

    pub fn spec(&self) -> btx_eval::EvalSpec {
        btx_eval::EvalSpec {
            seq_len: self.seq_len,
            windows: self.windows,
            batch: self.batch,
            tasks: self.tasks,
            task_batch: self.task_batch,
            shots: self.shots,
        }
    }
}

impl Default for EvalSection {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// A label for reports.
    #[serde(default)]
    pub name: String,
    pub data: DataSection,
    pub seed: SeedSection,
    pub experts: ExpertsSection,
    #[serde(default)]
    pub mix: MixSpec,
    pub finetune: FinetuneSection,
    #[serde(default)]
    pub baselines: BaselinesSection,
    #[serde(default)]
    pub eval: EvalSection,
    /// Repeat everything after the seed with this many training seeds (the report shows the
    /// spread). Default 1.
    #[serde(default = "Recipe::d_replicas")]
    pub replicas: usize,
    /// Total budgets: everything after the seed runs once per factor, with every expert and
    /// finetune step count multiplied by it (baselines matched per budget); the report draws
    /// loss against training FLOPs across them. 1.0 (or else the largest) is the main table.
    /// Default [1.0].
    #[serde(default = "Recipe::d_budgets")]
    pub budgets: Vec<f64>,
    /// Resources of the Slurm executor (`btx run --executor slurm`).
    #[serde(default)]
    pub slurm: crate::sections::SlurmSection,
}

/// Overlays `over` onto `base` (tables merge key by key, other values replace).
pub fn deep_merge(base: &mut toml::Value, over: &toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => deep_merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

impl Recipe {
    fn d_replicas() -> usize {
        1
    }

    fn d_budgets() -> Vec<f64> {
        vec![1.0]
    }

    pub fn load(path: &Path, sets: &[String]) -> Result<(Self, toml::Value)> {
        let (r, raw): (Recipe, toml::Value) = crate::overrides::load(Some(path), sets)?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        r.validate(base)?;
        Ok((r, raw))
    }

    /// Checks the whole recipe before anything runs, and reports every problem at once: a
    /// mistake found after the seed trained costs hours. `base` resolves relative paths.
    pub fn validate(&self, base: &Path) -> Result<()> {
        let problems = self.problems(base);
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "the recipe has {} problem{}:\n  - {}\nhint: fix them and run again (nothing was run)",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  - ")
        )
    }

    fn problems(&self, base: &Path) -> Vec<String> {
        let mut p: Vec<String> = vec![];
        let path_of = |x: &Path| {
            if x.is_absolute() {
                x.to_path_buf()
            } else {
                base.join(x)
            }
        };
        // The data: which domains exist, how large the vocabulary is.
        if !self.data.weights.is_empty() || self.data.split.is_some() {
            p.push("[data] weights and split are `btx train` settings; a recipe sets weights per stage ([seed.pretrain] weights, [finetune] weights) and always trains on the train split".into());
        }
        let (domains, vocab): (Option<Vec<String>>, usize) =
            match (&self.data.dir, &self.data.prepare) {
                (Some(d), None) => match btx_data::DataDir::open(&path_of(d)) {
                    Ok(dd) => (Some(dd.domains()), dd.manifest.vocab_size),
                    Err(e) => {
                        p.push(format!("[data] dir: {e}"));
                        (None, 256)
                    }
                },
                (None, Some(prep)) => {
                    if let Err(e) = prep.validate() {
                        p.push(format!("[data.prepare]: {e}"));
                    }
                    (
                        Some(prep.domains.iter().map(|d| d.name.clone()).collect()),
                        prep.tokenizer.vocab_size.max(1),
                    )
                }
                _ => {
                    p.push("[data] needs exactly one of dir or [data.prepare]".into());
                    (None, 256)
                }
            };
        let mut check_domains = |what: &str, names: &mut dyn Iterator<Item = &String>| {
            if let Some(known) = &domains {
                for n in names {
                    if !known.contains(n) {
                        p.push(format!(
                            "{what}: domain {n:?} is not in the data (it has {known:?})"
                        ));
                    }
                }
            }
        };
        check_domains("experts.domains", &mut self.experts.domains.iter());
        check_domains("finetune.weights", &mut self.finetune.weights.keys());
        if let Some(sp) = &self.seed.pretrain {
            check_domains("seed.pretrain.weights", &mut sp.weights.keys());
        }
        // The seed.
        let s = &self.seed;
        let n = s.path.is_some() as u8 + s.gguf.is_some() as u8 + s.pretrain.is_some() as u8;
        if n != 1 {
            p.push("[seed] needs exactly one of path, gguf or [seed.pretrain]".into());
        }
        let mut seed_cfg = None;
        if let Some(sp) = &s.pretrain {
            match &sp.init {
                None => p.push("[seed.pretrain] needs an [seed.pretrain.init] model shape".into()),
                Some(init) => match init.to_config(vocab, None) {
                    Ok(c) => {
                        p.extend(freeze_problems("seed.pretrain", &sp.train.freeze, &c));
                        seed_cfg = Some(c);
                    }
                    Err(e) => p.push(format!("[seed.pretrain.init]: {e}")),
                },
            }
            if let Err(e) = sp.trainer().validate() {
                p.push(format!("[seed.pretrain]: {e}"));
            }
        }
        if let Some(path) = &s.path {
            match btx_model::ModelConfig::load(&path_of(path).join("config.json")) {
                Ok(c) => seed_cfg = Some(c),
                Err(e) => p.push(format!("[seed] path: {e}")),
            }
        }
        if let Some(g) = &s.gguf {
            if !path_of(g).is_file() {
                p.push(format!(
                    "[seed] gguf: {} is not a file",
                    path_of(g).display()
                ));
            }
        }
        if self.replicas == 0 {
            p.push("replicas must be >= 1".into());
        }
        if self.budgets.is_empty() || self.budgets.iter().any(|b| !(b.is_finite() && *b > 0.0)) {
            p.push(format!(
                "budgets {:?} must be a non-empty list of factors > 0",
                self.budgets
            ));
        }
        let mut sorted = self.budgets.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.dedup();
        if sorted.len() != self.budgets.len() {
            p.push(format!("budgets {:?} lists a factor twice", self.budgets));
        }
        // The experts.
        if self.experts.domains.is_empty() {
            p.push("[experts] domains is empty".into());
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.experts.domains {
            if !seen.insert(d) {
                p.push(format!("experts.domains lists {d:?} twice"));
            }
            match self.expert_spec(d) {
                Ok(spec) => {
                    if let Err(e) = spec.trainer().validate() {
                        p.push(format!("expert {d}: {e}"));
                    }
                    if let Some(c) = &seed_cfg {
                        p.extend(freeze_problems(
                            &format!("expert {d}"),
                            &spec.train.freeze,
                            c,
                        ));
                    }
                }
                Err(e) => p.push(e.to_string()),
            }
        }
        for d in self.experts.overrides.keys() {
            if !self.experts.domains.contains(d) {
                p.push(format!(
                    "[experts.override.{d}]: {d:?} is not one of experts.domains"
                ));
            }
        }
        // Mix and finetune, per variant.
        let models = self.experts.domains.len() + self.mix.generalist as usize;
        let mut names = std::collections::HashSet::new();
        for v in self.variants() {
            let at = format!("finetune variant {:?}", v.name);
            // (`#` and `@` start a stage name's budget and replica tags: see plan::names.)
            if v.name.is_empty() || v.name.contains(['/', ' ', ':', '#', '@']) {
                p.push(format!(
                    "{at}: the name must be non-empty, without spaces, slashes, colons, # or @"
                ));
            }
            if !names.insert(v.name.clone()) {
                p.push(format!("{at} is listed twice"));
            }
            if let Some(share) = v.finetune_share {
                if !(share > 0.0 && share < 1.0) {
                    p.push(format!("{at}: finetune_share {share} must be in (0, 1)"));
                }
                if v.steps.is_some() {
                    p.push(format!(
                        "{at}: set either steps or finetune_share, not both"
                    ));
                }
            }
            if let Some(a) = &v.anchor {
                if v.experts != ExpertTraining::Anchored {
                    p.push(format!("{at}: anchor goes with experts = \"anchored\""));
                } else if let Err(e) = Anchor::parse(a) {
                    p.push(format!("{at}: {e}"));
                }
            }
            if v.compute_matched && (v.steps.is_some() || v.finetune_share.is_some()) {
                p.push(format!(
                    "{at}: compute_matched chooses the finetune's steps: drop steps and finetune_share"
                ));
            }
            let m = v.mix(&self.mix);
            let mix_problems = m.problems(models, seed_cfg.as_ref().map(|c| c.intermediate_size));
            p.extend(mix_problems.iter().map(|e| format!("{at}: {e}")));
            let ft = v.finetune(&self.finetune.spec());
            // (resolve refuses a spec with problems: those are listed above.)
            if let Some(Ok(moe)) = seed_cfg.as_ref().map(|c| m.resolve(c, models)) {
                p.extend(freeze_problems(&at, &ft.train.freeze, &moe));
            }
            if let Err(e) = ft.trainer().validate() {
                p.push(format!("{at}: {e}"));
            }
        }
        let positions = seed_cfg
            .as_ref()
            .map_or(usize::MAX, |c| c.max_position_embeddings);
        if let Err(e) = self.eval.spec().validate(positions) {
            p.push(format!("[eval]: {e}"));
        }
        p
    }

    /// The finetune variants (default: one named `btx`).
    pub fn variants(&self) -> Vec<Variant> {
        if self.finetune.variants.is_empty() {
            vec![Variant {
                name: "btx".into(),
                ..Default::default()
            }]
        } else {
            self.finetune.variants.clone()
        }
    }

    /// The training spec of one expert: the shared `[experts]` settings with its override.
    pub fn expert_spec(&self, domain: &str) -> Result<TrainSpec> {
        let base = TrainSpec {
            init: None,
            weights: [(domain.to_string(), 1.0)].into(),
            optim: self.experts.optim.clone(),
            train: self.experts.train.clone(),
            moe: MoeLossConfig::default(),
        };
        let Some(over) = self.experts.overrides.get(domain) else {
            return Ok(base);
        };
        let mut v = toml::Value::try_from(&base)?;
        deep_merge(&mut v, over);
        v.try_into::<TrainSpec>()
            .map_err(|e| anyhow!("[experts.override.{domain}]: {e}"))
    }
}

/// Freeze patterns that match no parameter of the model they will train (the trainer refuses
/// them, but only once the stage starts).
fn freeze_problems(at: &str, freeze: &[String], cfg: &btx_model::ModelConfig) -> Vec<String> {
    let names: Vec<String> = btx_model::names::param_specs(cfg)
        .into_iter()
        .map(|s| s.name)
        .collect();
    freeze
        .iter()
        .filter(|pat| !names.iter().any(|n| btx_train::config::glob_match(pat, n)))
        .map(|pat| {
            format!(
                "{at}: freeze pattern {pat:?} matches no parameter (names are Hugging Face's, e.g. {:?})",
                names.last().map(String::as_str).unwrap_or("")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_baseline_can_be_switched_off_with_false_and_bad_matchings_are_named() {
        let b: BaselinesSection =
            toml::from_str("upcycle = false\ndense = \"compute-matched\"").unwrap();
        assert_eq!(
            (b.upcycle, b.dense),
            (Matching::None, Matching::ComputeMatched)
        );
        let e = toml::from_str::<BaselinesSection>("dense = true")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("true does not say how") && e.contains("both"),
            "{e}"
        );
        let e = toml::from_str::<BaselinesSection>("dense = \"compute\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown matching \"compute\""), "{e}");
    }
}
