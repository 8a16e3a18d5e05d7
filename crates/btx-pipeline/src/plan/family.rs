//! Expert families: how a set of experts trains (fully, FFN-only, anchored) and the factor on
//! their steps; their stage prefix and directory.

use btx_model::ModelConfig;

use crate::recipe::{Anchor, ExpertTraining};

/// A family of expert stages: how they train, and the factor on their step count (for a
/// variant that gives the finetune another share of the budget), in thousandths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Family {
    pub(super) training: ExpertTraining,
    /// The anchored groups (anchored experts only).
    pub(super) anchor: Option<Anchor>,
    pub(super) factor_permille: u32,
}

impl Family {
    pub(super) fn new(training: ExpertTraining, factor: f64) -> Self {
        Self {
            training,
            anchor: (training == ExpertTraining::Anchored).then_some(Anchor::DEFAULT),
            factor_permille: (factor * 1000.0).round().max(1.0) as u32,
        }
    }

    pub(super) fn of(v: &crate::recipe::Variant, factor: f64) -> Self {
        Self {
            anchor: v.anchor(),
            ..Self::new(v.experts, factor)
        }
    }

    /// `-<groups>` for anchored experts with other than the default anchor, else empty.
    pub(super) fn anchor_tag(&self) -> String {
        match self.anchor {
            Some(a) if a != Anchor::DEFAULT => format!("-{}", a.groups().join("-")),
            _ => String::new(),
        }
    }

    /// `expert`, `expert-ffn`, `expert-anchored` or `expert-anchored-<groups>`.
    pub(super) fn base(&self) -> String {
        format!("{}{}", self.training.stage_prefix(), self.anchor_tag())
    }

    pub(super) fn factor(&self) -> f64 {
        self.factor_permille as f64 / 1000.0
    }

    /// Stage (and method) prefix: `expert`, `expert-ffn`, `expert-x0.620`, ...
    pub(super) fn prefix(&self) -> String {
        let base = self.base();
        if self.factor_permille == 1000 {
            base
        } else {
            format!("{base}-x{:.3}", self.factor())
        }
    }

    /// Directory: `experts`, `expert-ffns`, `expert-anchoreds[-<groups>]`, `experts-x0.620`, ...
    pub(super) fn dir(&self) -> String {
        let base = format!("{}s{}", self.training.stage_prefix(), self.anchor_tag());
        if self.factor_permille == 1000 {
            base
        } else {
            format!("{base}-x{:.3}", self.factor())
        }
    }
}

/// What an expert of this family keeps frozen at the seed's, by exact name: everything outside
/// the FFNs (FFN-only), or its anchored groups.
pub(super) fn frozen_params(cfg: &ModelConfig, fam: &Family) -> Vec<String> {
    btx_model::names::param_specs(cfg)
        .into_iter()
        .map(|s| s.name)
        .filter(|n| match (fam.training, fam.anchor) {
            (ExpertTraining::FfnOnly, _) => !n.contains(".mlp."),
            (ExpertTraining::Anchored, Some(a)) => a.holds(n),
            _ => false,
        })
        .collect()
}
