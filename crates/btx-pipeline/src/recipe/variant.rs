//! Finetune variants (`[[finetune.variants]]`): which experts a variant mixes, how (overrides of
//! `[mix]`), and how its finetune differs from `[finetune]`.

use btx_mix::MixSpec;
use btx_model::Routing;
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
    /// With `router_init = "fit"`: `domain` or `advantage` (see [`btx_mix::FitTarget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit_target: Option<btx_mix::FitTarget>,
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
    /// A domain whose expert trains like the others but is left out of this variant's MiX and
    /// finetune (whose mixture drops the domain), then added to the finetuned model with no
    /// retraining (`btx add-expert`, stage `add-expert:<variant>`): method
    /// `btx:<variant>+<domain>` beside `btx:<variant>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_expert: Option<String>,
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
        if let Some(t) = self.fit_target {
            m.fit_target = t;
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
        if let Some(d) = &self.add_expert {
            // The domain comes later, with its expert: the finetune never sees it.
            f.weights.remove(d);
        }
        if self.freeze_experts {
            f.train
                .freeze
                .push("model.layers.*.block_sparse_moe.experts.*".into());
        }
        f
    }
}
