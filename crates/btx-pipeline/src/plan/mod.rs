//! A recipe compiled into stages: a DAG of commands (`btx stage NAME --run DIR`), each with the
//! complete configuration it runs with and a fingerprint over that configuration and its
//! upstream fingerprints. Executors (local processes, Slurm) only ever see this plan.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::recipe::sections::DataSection;
use crate::recipe::{MixSpec, TrainSpec};
use btx_eval::Weighting;

mod build;
mod builder;
mod family;
mod id;
pub mod names;

pub use id::{BadStageId, Kind, StageId};
pub use names::{budget_tags, primary_budget};

pub const PLAN_FILE: &str = "plan.json";
/// Bumped when a stage's behaviour changes in a way old outputs should not survive.
const PLAN_VERSION: &str = "btx-plan-1";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StageKind {
    /// Prepare (or adopt) the token data; `tokenizer_from` names a stage whose
    /// `model/tokenizer.json` the data must use (an imported seed).
    Data {
        section: DataSection,
        base: PathBuf,
        tokenizer_from: Option<StageId>,
    },
    /// Adopt a Hugging Face seed directory.
    SeedCopy { path: PathBuf },
    /// Import a GGUF seed.
    SeedGguf { path: PathBuf },
    /// Train a model: from another stage's `model/`, or a new one (`spec.init`).
    Train {
        from: Option<StageId>,
        spec: TrainSpec,
        data: StageId,
    },
    /// BTX MiX of the experts (+ the seed as generalist).
    Mix {
        seed: StageId,
        experts: Vec<StageId>,
        domains: Vec<String>,
        spec: MixSpec,
        data: StageId,
        router_seed: u64,
    },
    /// Sparse upcycling of the seed.
    Upcycle {
        seed: StageId,
        num_experts: usize,
        spec: MixSpec,
        router_seed: u64,
    },
    /// Weight average of dense models.
    Average { models: Vec<StageId> },
    /// A dense expert added to a BTX model (`btx add-expert`), its router rows fitted on the
    /// data of its domain and the model's other experts'.
    AddExpert {
        model: StageId,
        expert: StageId,
        domain: String,
        data: StageId,
    },
    /// Evaluate one method: a model, or an ensemble of models (BTM).
    Eval {
        method: String,
        models: Vec<StageId>,
        ensemble: Option<Weighting>,
        data: StageId,
        spec: btx_eval::EvalSpec,
        routing: bool,
        /// Oracle routing (`btx eval --route-by-domain`) instead of the model's router.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        oracle: bool,
    },
    /// The opt-out cost of a BTX model: its held-out loss with each expert removed
    /// (`optout.json`; loss only, no tasks).
    OptOut {
        method: String,
        model: StageId,
        data: StageId,
        spec: btx_eval::EvalSpec,
    },
    /// `report.md`, `results.json` and `plots/` at the top of the run directory.
    Report,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage {
    /// `data`, `seed`, `expert:<domain>`, `mix:<variant>`, `finetune:<variant>`,
    /// `upcycle`, `baseline:<name>`, … (see [`StageId`]).
    pub name: StageId,
    /// Directory relative to the run directory.
    pub dir: String,
    pub deps: Vec<StageId>,
    pub kind: StageKind,
    pub fingerprint: String,
    /// Trains a model (long, wants cores); the rest are quick.
    pub heavy: bool,
}

/// What BTX spends, from the recipe; baselines are matched to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Budget {
    /// The factor on every step count after the seed (recipe `budgets`).
    #[serde(default = "one")]
    pub scale: f64,
    pub btx_tokens: u64,
    pub btx_flops: f64,
    pub expert_tokens: u64,
    #[serde(default)]
    pub expert_flops: f64,
    pub finetune_tokens: u64,
}

fn one() -> f64 {
    1.0
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    pub stages: Vec<Stage>,
    pub budget: Budget,
    /// Domains with experts, in expert order.
    pub domains: Vec<String>,
    /// Every budget of the recipe (the primary one is `budget`).
    #[serde(default)]
    pub budgets: Vec<Budget>,
    /// Finetune variants, the first is "the" BTX model.
    pub variants: Vec<String>,
    pub generalist: bool,
    pub replicas: usize,
}

impl Plan {
    /// The labels of a MiX's `n` experts in this plan (the domains, then `generalist`, each
    /// repeated for a split FFN); empty when `n` does not fit that layout (blended experts).
    pub fn expert_labels(&self, n: usize) -> Vec<String> {
        let mut models = self.domains.clone();
        if self.generalist {
            models.push("generalist".into());
        }
        if models.is_empty() || !n.is_multiple_of(models.len()) {
            return vec![];
        }
        let split = n / models.len();
        models
            .iter()
            .flat_map(|m| std::iter::repeat_n(m.clone(), split))
            .collect()
    }
}

/// What a stage kind computes beyond what its serialised config shows, where that changed:
/// outputs made under an earlier rule get another fingerprint and are redone. Empty for every
/// stage whose rule never changed (their fingerprints stay as they were).
fn rule(kind: &StageKind) -> &'static str {
    match kind {
        // Until 2026-12-06 an oracle also gave top-2 models the generalist as second choice.
        StageKind::Eval { oracle: true, .. } => "oracle: the domain's expert alone",
        // Until 2026-12-06 a fitted router was solved on each dense expert's own inputs.
        StageKind::Mix { spec, .. } if spec.router_init == btx_mix::RouterInitKind::Fit => {
            "fit: on the MiX, layer by layer"
        }
        _ => "",
    }
}

fn fingerprint(kind: &StageKind, dep_fps: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(PLAN_VERSION);
    h.update(serde_json::to_string(kind).expect("json"));
    h.update(rule(kind));
    for d in dep_fps {
        h.update(d);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

impl Plan {
    /// The MiX stage a finetune variant starts from (variants with the same MiX share one).
    pub fn mix_of(&self, variant: &str, sfx: &str) -> Option<&Stage> {
        let ft = self
            .stages
            .iter()
            .find(|s| s.name == StageId::finetune(variant, sfx))?;
        match &ft.kind {
            StageKind::Train {
                from: Some(from), ..
            } => self.stages.iter().find(|s| &s.name == from),
            _ => None,
        }
    }

    pub fn stage<N: AsRef<str> + ?Sized>(&self, name: &N) -> Result<&Stage> {
        let name = name.as_ref();
        self.stages
            .iter()
            .find(|s| s.name == name)
            .with_context(|| {
                format!(
                    "no stage {name:?} in the plan (stages: {})\nhint: `btx status` on the run directory lists them",
                    self.stages
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
    }

    pub fn load(run: &Path) -> Result<Self> {
        let p = run.join(PLAN_FILE);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {}\nhint: is {} a run directory made by `btx run`?",
                p.display(),
                run.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a plan this btx can read\nhint: `btx run` on the recipe writes it again",
                p.display()
            )
        })
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        let p = run.join(PLAN_FILE);
        btx_core::atomic::write_file(&p, serde_json::to_string_pretty(self)?.as_bytes())?;
        Ok(())
    }
}

/// Where a stage's model lives.
pub fn model_dir(run: &Path, stage: &Stage) -> PathBuf {
    run.join(&stage.dir).join("model")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Recipe;

    /// Stages whose rule changed (oracle evaluations, fitted MiXes) get new fingerprints, so
    /// outputs made under the old rule are redone; every other stage keeps its fingerprint.
    #[test]
    fn a_changed_rule_changes_only_its_stages_fingerprints() {
        let r: Recipe = toml::from_str(include_str!("../../../../examples/demo.toml")).unwrap();
        let plan = Plan::from_recipe(&r, Path::new("examples")).unwrap();
        let plain = |k: &StageKind| {
            let mut h = Sha256::new();
            h.update(PLAN_VERSION);
            h.update(serde_json::to_string(k).expect("json"));
            format!("{:x}", h.finalize())[..16].to_string()
        };
        let (mut ruled, mut kept) = (0, 0);
        for s in plan
            .stages
            .iter()
            .filter(|s| s.deps.is_empty() || s.name == "seed")
        {
            assert_eq!(rule(&s.kind), "", "{}", s.name);
        }
        for s in &plan.stages {
            let r = rule(&s.kind);
            let fp = fingerprint(&s.kind, &[]);
            if r.is_empty() {
                assert_eq!(fp, plain(&s.kind), "{}", s.name);
                kept += 1;
            } else {
                assert_ne!(fp, plain(&s.kind), "{}", s.name);
                assert!(
                    s.name.as_str().starts_with("eval:oracle:") || s.name.kind() == Kind::Mix,
                    "{}",
                    s.name
                );
                ruled += 1;
            }
        }
        assert!(ruled > 0 && kept > ruled, "{ruled} {kept}");
        assert!(plan
            .stages
            .iter()
            .any(|s| s.name == "mix:fit" && !rule(&s.kind).is_empty()));
        assert!(plan
            .stages
            .iter()
            .any(|s| s.name == "mix:btx" && rule(&s.kind).is_empty()));
    }

    /// examples/study.toml compiles into the study it promises: three budgets of three
    /// replicas, the ablations at the base budget only, one family of experts per kind of
    /// variant, and baselines matched to each budget.
    #[test]
    fn the_study_recipe_plans_budgets_replicas_and_ablations() {
        let r: Recipe = toml::from_str(include_str!("../../../../examples/study.toml")).unwrap();
        let plan = Plan::from_recipe(&r, Path::new("examples")).unwrap();
        let names: Vec<&str> = plan.stages.iter().map(|s| s.name.as_str()).collect();
        let has = |n: &str| names.contains(&n);
        assert_eq!(plan.budgets.len(), 3);
        assert_eq!(plan.budget.scale, 1.0);
        for sfx in ["", "@1", "@2", "#x0.5", "#x2@2"] {
            for s in [
                "expert:code",
                "finetune:btx",
                "baseline:dense-compute",
                "eval:btm-top1",
            ] {
                assert!(has(&format!("{s}{sfx}")), "{s}{sfx}");
            }
        }
        for v in [
            "no-lb",
            "domain-mean",
            "seed-non-ffn",
            "ffn-only",
            "ft10",
            "ft50",
        ] {
            assert!(has(&format!("finetune:{v}@2")), "{v}");
            assert!(
                !has(&format!("finetune:{v}#x2")),
                "{v} runs at the base budget only"
            );
        }
        assert!(has("expert-ffn:math@1") && !has("expert-ffn:math#x0.5"));
        // no-lb shares btx's MiX; seed-non-ffn and domain-mean have their own.
        assert!(!has("mix:no-lb") && has("mix:seed-non-ffn") && has("mix:domain-mean"));
        assert!(has("eval:mix:btx@1"));
        // The finetune-share variants train rescaled experts: more for ft10, fewer for ft50.
        let steps = |n: &str| match &plan.stage(n).unwrap().kind {
            StageKind::Train { spec, .. } => spec.trainer.train.steps,
            _ => unreachable!(),
        };
        let fam = |v: &str| match &plan.mix_of(v, "").unwrap().kind {
            StageKind::Mix { experts, .. } => experts[0].clone(),
            _ => unreachable!(),
        };
        assert!(steps(fam("ft10").as_str()) > steps("expert:code"));
        assert!(steps(fam("ft50").as_str()) < steps("expert:code"));
        assert!(steps("finetune:ft10") < steps("finetune:btx"));
        assert!(steps("finetune:ft50") > steps("finetune:btx"));
        // Budgets scale every step count after the seed, baselines included.
        assert_eq!(steps("expert:code#x2"), 2 * steps("expert:code"));
        assert_eq!(steps("finetune:btx#x0.5"), steps("finetune:btx") / 2);
        let dense = steps("baseline:dense-compute");
        assert!((steps("baseline:dense-compute#x2") as f64 / dense as f64 - 2.0).abs() < 0.02);
        // The stage directories of the three budgets do not collide.
        let mut dirs: Vec<&str> = plan.stages.iter().map(|s| s.dir.as_str()).collect();
        dirs.sort();
        let n = dirs.len();
        dirs.dedup();
        assert_eq!(dirs.len(), n);
        // Beyond the paper: BAM at BTX's FLOPs runs fewer finetune steps; anchored experts
        // freeze FlexOlmo's anchor; every finetuned model has an opt-out stage at the base
        // budget only.
        assert!(steps("finetune:bam") < steps("finetune:btx"));
        assert!(has("opt-out:btx@2") && has("opt-out:btx:anchored") && !has("opt-out:btx#x2"));
        let frozen = |n: &str| match &plan.stage(n).unwrap().kind {
            StageKind::Train { spec, .. } => spec.trainer.train.freeze.clone(),
            _ => unreachable!(),
        };
        let f = frozen("expert-anchored:math");
        assert!(f.contains(&"model.layers.0.self_attn.q_proj.weight".to_string()));
        assert!(f.contains(&"model.embed_tokens.weight".to_string()));
        assert!(
            !f.iter().any(|n| n.contains("norm") || n.contains(".mlp.")),
            "{f:?}"
        );
    }

    /// A variant chooses what its anchored experts freeze; bad choices are refused up front.
    #[test]
    fn anchored_experts_freeze_the_chosen_groups() {
        let base: toml::Value =
            toml::from_str(include_str!("../../../../examples/quick.toml")).unwrap();
        let with = |variant: &str| -> Recipe {
            let mut v = base.clone();
            let extra: toml::Value = toml::from_str(&format!(
                "[[finetune.variants]]\nname = \"btx\"\n[[finetune.variants]]\nname = \"a\"\n{variant}"
            ))
            .unwrap();
            crate::recipe::deep_merge(&mut v, &extra);
            v.try_into().unwrap()
        };
        let r = with("experts = \"anchored\"\nanchor = [\"attention\", \"norms\"]");
        r.validate(Path::new("examples")).unwrap();
        let plan = Plan::from_recipe(&r, Path::new("examples")).unwrap();
        let s = plan.stage("expert-anchored-attention-norms:math").unwrap();
        assert_eq!(s.dir, "expert-anchoreds-attention-norms/math");
        let StageKind::Train { spec, .. } = &s.kind else {
            unreachable!()
        };
        let f = &spec.trainer.train.freeze;
        assert!(f.iter().any(|n| n.ends_with("input_layernorm.weight")));
        assert!(f.iter().any(|n| n.contains(".self_attn.")));
        assert!(
            !f.iter().any(|n| n.contains("embed") || n.contains(".mlp.")),
            "{f:?}"
        );
        for (variant, want) in [
            (
                "experts = \"anchored\"\nanchor = [\"ffn\"]",
                "anchor group \"ffn\"",
            ),
            ("experts = \"anchored\"\nanchor = []", "at least one group"),
            (
                "anchor = [\"attention\"]",
                "anchor goes with experts = \"anchored\"",
            ),
        ] {
            let e = with(variant)
                .validate(Path::new("examples"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{variant}: {e}");
        }
    }
}
