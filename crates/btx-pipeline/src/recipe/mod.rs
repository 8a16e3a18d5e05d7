//! The experiment recipe: one TOML file that describes a whole BTX run — seed, data, experts,
//! mix, finetune variants, baselines. See examples/quick.toml for a complete one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use btx_train::TrainerConfig;
use serde::{Deserialize, Serialize};

use crate::recipe::sections::DataSection;

pub mod overrides;
pub mod sections;
mod train;
mod validate;
mod variant;

pub use btx_mix::MixSpec;
pub use train::TrainSpec;
pub use variant::{Anchor, ExpertTraining, Variant, ANCHOR_GROUPS};

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

/// `[experts]`: one expert per domain, branched from the seed and trained on that domain alone.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpertsSection {
    /// Domains to train experts on (names in the data directory).
    pub domains: Vec<String>,
    /// `[experts.optim]`, `[experts.train]`.
    #[serde(flatten)]
    pub trainer: TrainerConfig,
    /// `[experts.moe]`, read only to refuse it by name (experts are dense models): taken here
    /// before `trainer` sees it.
    #[serde(default, skip_serializing)]
    pub moe: Option<toml::Value>,
    /// Per-domain overrides of optim/train, e.g. `[experts.override.math.train] steps = 400`.
    #[serde(default, rename = "override")]
    pub overrides: BTreeMap<String, toml::Value>,
}

/// `[finetune]`: MoE-finetune of the mixed model on the union of the domains.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSection {
    /// Domain weights of the finetune mixture (the paper: math 30.16, code 40.31, wikipedia
    /// 10.30, generalist 19.23 %).
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// `[finetune.optim]`, `[finetune.train]`, `[finetune.moe]`.
    #[serde(flatten)]
    pub trainer: TrainerConfig,
    /// Variants to run; default one, `btx` (the paper's top-2 with load balancing).
    #[serde(default)]
    pub variants: Vec<Variant>,
}

impl FinetuneSection {
    pub fn spec(&self) -> TrainSpec {
        TrainSpec {
            init: None,
            weights: self.weights.clone(),
            trainer: self.trainer.clone(),
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
    /// Oracle routing at the main budget (a diagnostic): each variant's MiX and finetuned BTX
    /// model evaluated with every token of a domain sent to that domain's expert alone (a
    /// domain without one to the generalist), as methods `oracle:mix:<variant>` and
    /// `oracle:btx[:<variant>]`: what the experts keep when the router is not the problem.
    /// Default true.
    #[serde(default = "d_true")]
    pub oracle: bool,
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
    pub slurm: crate::recipe::sections::SlurmSection,
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
        let (r, raw): (Recipe, toml::Value) = crate::recipe::overrides::load(Some(path), sets)?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        r.validate(base)?;
        Ok((r, raw))
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
            trainer: self.experts.trainer.clone(),
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

    const QUICK: &str = include_str!("../../../../examples/quick.toml");

    fn quick(sets: &[&str]) -> Result<Recipe> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let (r, _): (Recipe, _) = overrides::load_str(QUICK, "quick.toml", &sets)?;
        Ok(r)
    }

    #[test]
    fn a_variant_lays_any_mix_key_over_the_recipes_mix_and_refuses_other_keys() {
        let r = quick(&[
            "mix.router_scale=3.0",
            "finetune.variants=[{name=\"a\", top_k=1, router_scale=8, routing={mode=\"switch\", capacity_factor=2.0}, lb_coef=0.0}]",
        ])
        .unwrap();
        let v = &r.variants()[0];
        let m = v.mix(&r.mix);
        assert_eq!((m.top_k, m.router_scale), (1, 8.0));
        assert_eq!(
            m.routing,
            btx_model::Routing::Switch {
                capacity_factor: 2.0
            }
        );
        // Keys the variant leaves alone are `[mix]`'s; its own keys are not MiX keys.
        assert_eq!(
            (m.router_std, m.generalist),
            (r.mix.router_std, r.mix.generalist)
        );
        assert_eq!(v.finetune(&r.finetune.spec()).trainer.moe.lb_coef, 0.0);
        for (set, needle) in [
            ("finetune.variants=[{name=\"a\", lb_coeff=0.1}]", "lb_coeff"),
            (
                "finetune.variants=[{name=\"a\", top_k=\"two\"}]",
                "expected usize",
            ),
        ] {
            let e = format!("{:#}", quick(&[set]).unwrap_err());
            assert!(
                e.contains(needle) && e.contains("the keys of [mix]") && e.contains("lb_coef"),
                "{e}"
            );
        }
    }

    /// The variant's own keys that its `[mix]` refusal names are the variant's fields.
    #[test]
    fn variant_keys_are_the_variants_fields() {
        let v = Variant {
            name: "v".into(),
            experts: ExpertTraining::Anchored,
            anchor: Some(vec!["head".into()]),
            lb_coef: Some(0.0),
            z_loss_coef: Some(0.0),
            freeze_experts: true,
            steps: Some(1),
            finetune_share: Some(0.5),
            compute_matched: true,
            add_expert: Some("math".into()),
            ..Default::default()
        };
        let t = toml::Value::try_from(&v).unwrap();
        let mut keys: Vec<&str> = t.as_table().unwrap().keys().map(String::as_str).collect();
        let mut want = variant::VARIANT_KEYS.to_vec();
        keys.sort();
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn keys_nothing_would_honour_are_refused_by_name() {
        let base = Path::new(".");
        assert!(quick(&[]).unwrap().validate(base).is_ok());
        for (set, needle) in [
            // Presence, not value: a default value is read by nothing either.
            ("experts.moe.lb_coef=0.01", "[experts.moe] sets MoE losses"),
            (
                "experts.override.math.moe.z_loss_coef=0.1",
                "[experts.override.math.moe] sets MoE losses",
            ),
            // The generalist is the plan's, not a variant's.
            (
                "finetune.variants=[{name=\"btx\"}, {name=\"a\", generalist=false}]",
                "generalist is recipe-wide",
            ),
            // A name that would break the stage names' format.
            (
                "experts.domains=[\"ma@th\", \"code\"]",
                "without spaces, slashes",
            ),
        ] {
            let e = quick(&[set])
                .unwrap()
                .validate(base)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{set}: {e}");
        }
    }
}
