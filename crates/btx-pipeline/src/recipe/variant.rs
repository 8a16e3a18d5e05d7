//! Finetune variants (`[[finetune.variants]]`): which experts a variant mixes, how (overrides of
//! `[mix]`), and how its finetune differs from `[finetune]`.

use btx_mix::{MixPatch, MixSpec};
use serde::{Deserialize, Serialize};

use super::train::TrainSpec;

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
// No `deny_unknown_fields`: every key that is not the variant's own goes to `mix`, which
// refuses what is not a `[mix]` key either.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    /// Name (directory `finetune/<name>`, method `btx` or `btx:<name>` in the report).
    pub name: String,
    /// What this variant's MiX changes of the recipe's `[mix]`: any of its keys (`routing`,
    /// `top_k`, `router_init`, `fit_target`, `split`, `blend`, `non_ffn`, `attention`, ...),
    /// written beside the variant's own keys.
    #[serde(flatten)]
    pub mix: VariantMix,
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
    /// A domain whose expert trains like the others but is left out of this variant's MiX and
    /// finetune (whose mixture drops the domain), then added to the finetuned model with no
    /// retraining (`btx add-expert`, stage `add-expert:<variant>`): method
    /// `btx:<variant>+<domain>` beside `btx:<variant>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_expert: Option<String>,
}

/// A variant's own keys (every other key of a variant is a `[mix]` key).
pub const VARIANT_KEYS: &[&str] = &[
    "name",
    "experts",
    "anchor",
    "lb_coef",
    "z_loss_coef",
    "freeze_experts",
    "steps",
    "finetune_share",
    "compute_matched",
    "add_expert",
];

/// The `[mix]` keys of a variant: a [`MixPatch`] whose refusal also names the variant's own
/// keys (a typo in `lb_coef` is not a `[mix]` key either).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct VariantMix(pub MixPatch);

impl<'de> Deserialize<'de> for VariantMix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        MixPatch::deserialize(d).map(VariantMix).map_err(|e| {
            serde::de::Error::custom(format!(
                "{}; nor a finetune variant's own ({})",
                e.to_string().trim(),
                VARIANT_KEYS.join(", ")
            ))
        })
    }
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

    /// The domains this variant mixes from `all` (the experts' domains): all but the one it
    /// adds later.
    pub fn mixed_domains(&self, all: &[String]) -> Vec<String> {
        all.iter()
            .filter(|d| Some(*d) != self.add_expert.as_ref())
            .cloned()
            .collect()
    }

    /// This variant's MiX: `[mix]` with the variant's keys laid over it (checked when the
    /// recipe was read).
    pub fn mix(&self, base: &MixSpec) -> MixSpec {
        self.mix
            .0
            .apply(base)
            .expect("a variant's MiX keys are checked when the recipe is read")
    }

    pub fn finetune(&self, base: &TrainSpec) -> TrainSpec {
        let mut f = base.clone();
        if let Some(c) = self.lb_coef {
            f.trainer.moe.lb_coef = c;
        }
        if let Some(c) = self.z_loss_coef {
            f.trainer.moe.z_loss_coef = c;
        }
        if let Some(s) = self.steps {
            f.trainer.train.steps = s;
        }
        if let Some(d) = &self.add_expert {
            // The domain comes later, with its expert: the finetune never sees it.
            f.weights.remove(d);
        }
        if self.freeze_experts {
            f.trainer
                .train
                .freeze
                .push("model.layers.*.block_sparse_moe.experts.*".into());
        }
        f
    }
}
