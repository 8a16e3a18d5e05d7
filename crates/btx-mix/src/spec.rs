//! The one owner of how dense models become a MoE: which experts (split, blend, generalist),
//! how they route (top-k, routing mode), how the routers start, and what becomes of the weights
//! outside the FFNs. The recipe's `[mix]` table *is* a [`MixSpec`]; a finetune variant overrides
//! some of its fields; `btx mix`/`btx upcycle` build one from their flags; the plan's budget and
//! the merge both get the MoE shape from [`MixSpec::resolve`], so they cannot disagree.

use std::fmt;
use std::str::FromStr;

use btx_core::outdir::Existing;
use btx_model::io::HostTensor;
use btx_model::{AttnExpertsConfig, ModelConfig, MoeConfig, Routing, DEFAULT_TOP_K};
use serde::{Deserialize, Serialize};

use crate::error::{MixError, Result};

/// A kebab-case enum with its names in one table: `name`, `FromStr` (what clap and `--set`
/// parse) and `Display` (clap's shown default) all read it.
macro_rules! named_enum {
    ($t:ident, $what:literal, $($v:ident => $n:literal),+ $(,)?) => {
        impl $t {
            pub const NAMES: &'static [&'static str] = &[$($n),+];

            pub fn name(self) -> &'static str {
                match self { $($t::$v => $n),+ }
            }

            pub fn parse(s: &str) -> Result<Self> {
                s.parse()
            }
        }

        impl FromStr for $t {
            type Err = MixError;

            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($n => Ok($t::$v),)+
                    o => Err(MixError::Options(format!(
                        "{} {o:?}: one of {}", $what, Self::NAMES.join(", ")
                    ))),
                }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

/// How a MiX starts its routers (the recipe's `router_init`, `--router-init`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum RouterInitKind {
    /// Normal(0, `router_std`).
    #[default]
    Random,
    /// All zeros: uniform routing until the router learns.
    Zero,
    /// Each expert's row is its domain's mean FFN input, scaled to `router_scale` logits
    /// (measured on domain data: see `btx_mix::router`).
    DomainMean,
    /// Rows fitted in closed form on the MiX itself, layer by layer (ridge regression from each
    /// layer's router inputs over a sample of every expert's domain to `fit_target`), scaled
    /// by `router_scale` (see `btx_mix::fit`).
    Fit,
}
named_enum!(RouterInitKind, "router_init", Random => "random", Zero => "zero", DomainMean => "domain-mean", Fit => "fit");

/// What a fitted router (`router_init = "fit"`) is regressed onto, per token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum FitTarget {
    /// One-hot: the expert of the token's document's domain (the generalist is nobody's: it
    /// gets a zero row).
    #[default]
    Domain,
    /// Each mixed model's measured advantage on the token: the mean over the models of their
    /// next-token loss minus its own (nats; the generalist, the seed, included), so that the
    /// router ranks experts by how well each predicts this token.
    Advantage,
}
named_enum!(FitTarget, "fit_target", Domain => "domain", Advantage => "advantage");

impl FitTarget {
    pub fn is_domain(&self) -> bool {
        *self == FitTarget::Domain
    }
}

/// What a MiX does with the mixed models' attention.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum AttnMix {
    /// Averaged like every other non-FFN weight (the paper).
    #[default]
    Average,
    /// Each model's attention becomes an attention expert, mixed softly by a new router per
    /// layer (BAM). Not a Mixtral: written in btx's own layout.
    Experts,
    /// Attention experts with their keys and values averaged and shared (per-expert queries and
    /// outputs; one model's KV cache).
    ExpertsSharedKv,
}
named_enum!(AttnMix, "attention", Average => "average", Experts => "experts", ExpertsSharedKv => "experts-shared-kv");

impl AttnMix {
    pub fn is_average(&self) -> bool {
        *self == AttnMix::Average
    }
}

/// Where a MiX takes the weights outside the FFNs (attention, norms, embeddings) from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum NonFfn {
    /// The (weighted) mean over the mixed models: the paper's MiX.
    #[default]
    Average,
    /// The seed's, as they were before branching (an ablation: do averaged attention weights of
    /// experts that drifted apart cost more than the experts' own attention gained?).
    Seed,
}
named_enum!(NonFfn, "non-FFN source", Average => "average", Seed => "seed");

/// `[mix]`: how experts become one MoE. Serialised into stage fingerprints: a new field must be
/// skipped when at its default, so that earlier runs keep their fingerprints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MixSpec {
    /// Add the seed as the last expert (the paper's "generalist"). Default true.
    pub generalist: bool,
    /// `random` (default), `zero`, `domain-mean` or `fit`.
    pub router_init: RouterInitKind,
    /// With `router_init = "fit"`: `domain` (default) or `advantage` (see [`FitTarget`]).
    #[serde(skip_serializing_if = "FitTarget::is_domain")]
    pub fit_target: FitTarget,
    /// Std of a random router. Default 0.02.
    pub router_std: f64,
    /// Logit scale of a domain-mean or fitted router. Default 4.
    pub router_scale: f64,
    /// Cut each FFN into this many experts. Default 1.
    pub split: usize,
    /// Build expert n from the n-th chunk of every FFN. Default false.
    pub blend: bool,
    /// Experts per token. Default 2.
    pub top_k: usize,
    /// Routing (`{mode = "top-k"}` default; switch, soft, sample-top1).
    pub routing: Routing,
    /// Averaging weights (experts in order, then the seed); empty = uniform.
    pub weights: Vec<f64>,
    /// Weights outside the FFNs: `average` (default, the paper) or `seed` (the seed's own).
    pub non_ffn: NonFfn,
    /// The experts' attention: `average` (default, the paper), `experts` (BAM's attention
    /// experts) or `experts-shared-kv` (attention experts sharing averaged keys and values).
    #[serde(skip_serializing_if = "AttnMix::is_average")]
    pub attention: AttnMix,
}

impl Default for MixSpec {
    fn default() -> Self {
        Self {
            generalist: true,
            router_init: RouterInitKind::Random,
            fit_target: FitTarget::Domain,
            router_std: 0.02,
            router_scale: 4.0,
            split: 1,
            blend: false,
            top_k: DEFAULT_TOP_K,
            routing: Routing::TopK,
            weights: vec![],
            non_ffn: NonFfn::Average,
            attention: AttnMix::Average,
        }
    }
}

/// Some of a [`MixSpec`]'s keys, laid over another spec: a finetune variant's MiX over the
/// recipe's `[mix]`. Written as `[mix]` writes them (any of its keys; a value replaces the
/// base's whole, `routing` included) and checked against [`MixSpec`]'s keys and types when
/// read, so a variant can override exactly what `[mix]` can set, with no list of its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct MixPatch(serde_json::Map<String, serde_json::Value>);

impl MixPatch {
    /// `base` with this patch's keys replaced.
    pub fn apply(&self, base: &MixSpec) -> Result<MixSpec> {
        let mut v = serde_json::to_value(base).map_err(|e| MixError::Options(e.to_string()))?;
        let m = v.as_object_mut().expect("a MixSpec serialises as a map");
        for (k, x) in &self.0 {
            m.insert(k.clone(), x.clone());
        }
        serde_json::from_value(v).map_err(|e| MixError::Options(e.to_string()))
    }

    /// Whether the patch sets `key`.
    pub fn sets(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }
}

impl<'de> Deserialize<'de> for MixPatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let p = MixPatch(serde_json::Map::deserialize(d)?);
        // Checked now, where the file is read: a key that is not a MixSpec key, or a value of
        // the wrong type, is refused with the file's location.
        p.apply(&MixSpec::default())
            .map_err(|e| serde::de::Error::custom(format!("{e} (the keys of [mix])")))?;
        Ok(p)
    }
}

/// The routing a CLI flag names (`--routing`), with the paper's settings for what the name
/// leaves open: a switch capacity factor given apart, sample-top1 annealing at 1e-4 down to a
/// temperature of 0.5. A recipe writes the whole [`Routing`] (`{mode = "switch", ...}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RoutingMode {
    /// Mixtral's: softmax over the top-k router logits.
    #[default]
    #[cfg_attr(feature = "clap", value(alias = "topk"))]
    TopK,
    /// Top-1 with a per-expert capacity.
    Switch,
    /// Every expert, weighted by the softmax.
    Soft,
    /// A Gumbel-softmax sample (argmax at inference).
    SampleTop1,
}
named_enum!(RoutingMode, "routing", TopK => "top-k", Switch => "switch", Soft => "soft", SampleTop1 => "sample-top1");

impl RoutingMode {
    pub fn routing(self, capacity_factor: f64) -> Routing {
        match self {
            RoutingMode::TopK => Routing::TopK,
            RoutingMode::Switch => Routing::Switch { capacity_factor },
            RoutingMode::Soft => Routing::Soft,
            RoutingMode::SampleTop1 => Routing::SampleTop1 {
                anneal_rate: 1e-4,
                min_tau: 0.5,
            },
        }
    }
}

/// The experts a spec cuts from `n_models` mixed models of inner width `d_ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertShape {
    pub num_experts: usize,
    pub expert_intermediate_size: usize,
    /// Chunks each FFN is cut into (`split`, or one per model when blending).
    pub chunks: usize,
}

impl MixSpec {
    /// Every reason this spec cannot mix `n_models` models (the experts, then the seed with
    /// `generalist`), and with `d_ff` (the seed's inner width, when known) every reason its
    /// FFNs cannot be cut. Empty when it can. The recipe lists them all at once; the merge
    /// refuses with them.
    pub fn problems(&self, n_models: usize, d_ff: Option<usize>) -> Vec<String> {
        let mut p = vec![];
        if self.split == 0 {
            p.push("split must be >= 1".to_string());
        }
        if self.blend && self.split > 1 {
            p.push("use either split or blend, not both".into());
        }
        let s = self.experts(n_models, d_ff.unwrap_or(0));
        if let Some(f) = d_ff {
            if s.chunks > 0 && f % s.chunks != 0 {
                p.push(format!(
                    "the seed's intermediate_size {f} cannot be cut into {} equal experts",
                    s.chunks
                ));
            }
        }
        if self.top_k == 0 || self.top_k > s.num_experts {
            p.push(format!(
                "top_k {} must be in 1..={} ({n_models} mixed models{})",
                self.top_k,
                s.num_experts,
                if self.split > 1 {
                    format!(", each split in {}", self.split)
                } else {
                    String::new()
                }
            ));
        }
        if let Err(e) = self.routing.validate() {
            p.push(e);
        }
        // A NaN or infinite scale makes every router weight NaN; a negative one points a
        // domain-mean router away from its domain.
        for (key, v) in [
            ("router_std", self.router_std),
            ("router_scale", self.router_scale),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(format!("{key} must be a finite number >= 0, got {v}"));
            }
        }
        if !self.fit_target.is_domain() && self.router_init != RouterInitKind::Fit {
            p.push(format!(
                "fit_target = {:?} applies to a fitted router only: set router_init = \"fit\" too",
                self.fit_target.name()
            ));
        }
        if self.blend
            && matches!(
                self.router_init,
                RouterInitKind::Fit | RouterInitKind::DomainMean
            )
        {
            p.push(format!(
                "router_init = {:?} gives each mixed model's experts its domain's row; blend builds every expert from every model: use split, or a random router",
                self.router_init.name()
            ));
        }
        if !self.attention.is_average() {
            if self.split != 1 || self.blend {
                p.push(format!(
                    "attention = {:?} pairs one attention expert with each mixed model's FFN: it cannot go with split or blend",
                    self.attention.name()
                ));
            }
            if self.non_ffn == NonFfn::Seed {
                p.push(format!(
                    "attention = {:?} takes each expert's own attention, non_ffn = \"seed\" the seed's: choose one",
                    self.attention.name()
                ));
            }
        }
        if !self.weights.is_empty()
            && (self.weights.len() != n_models
                || self.weights.iter().any(|w| !w.is_finite() || *w < 0.0)
                || !self.weights.iter().sum::<f64>().is_finite()
                || self.weights.iter().sum::<f64>() <= 0.0)
        {
            p.push(format!(
                "weights {:?}: need {n_models} finite non-negative values with a positive sum (experts in order, then the seed)",
                self.weights
            ));
        }
        p
    }

    /// The experts cut from `n_models` models of inner width `d_ff` (unchecked: see
    /// [`MixSpec::problems`]).
    pub fn experts(&self, n_models: usize, d_ff: usize) -> ExpertShape {
        let split = self.split.max(1);
        if self.blend {
            ExpertShape {
                num_experts: n_models,
                expert_intermediate_size: d_ff,
                chunks: n_models,
            }
        } else {
            ExpertShape {
                num_experts: n_models * split,
                expert_intermediate_size: d_ff / split,
                chunks: split,
            }
        }
    }

    /// The model this spec makes from `n_models` models shaped like `seed`: the one rule for
    /// the MoE's shape, used by the plan's budget and by the merge. Refuses a spec with
    /// problems (all of them, in one message).
    pub fn resolve(&self, seed: &ModelConfig, n_models: usize) -> Result<ModelConfig> {
        let p = self.problems(n_models, Some(seed.intermediate_size));
        if !p.is_empty() {
            return Err(MixError::Options(p.join("; ")));
        }
        let s = self.experts(n_models, seed.intermediate_size);
        let mut c = seed.clone();
        c.intermediate_size = s.expert_intermediate_size;
        c.moe = Some(MoeConfig {
            num_experts: s.num_experts,
            top_k: self.top_k,
            routing: self.routing.clone(),
        });
        c.attn_experts = (!self.attention.is_average()).then_some(AttnExpertsConfig {
            num_experts: n_models,
            shared_kv: self.attention == AttnMix::ExpertsSharedKv,
        });
        Ok(c)
    }

    /// The averaging weights over `n` models (uniform when none are given).
    pub fn weights_for(&self, n: usize) -> Vec<f64> {
        if self.weights.is_empty() {
            vec![1.0; n]
        } else {
            self.weights.clone()
        }
    }

    /// Whether this spec's routers start from rows measured or fitted on data
    /// (`domain-mean`, `fit`), which the merge's caller must give it ([`MixOptions::router_rows`]).
    pub fn needs_router_rows(&self) -> bool {
        matches!(
            self.router_init,
            RouterInitKind::DomainMean | RouterInitKind::Fit
        )
    }
}

/// How the new routers start, resolved from a [`MixOptions`] (see [`MixOptions::router_init`]).
#[derive(Clone, Debug, PartialEq)]
pub enum RouterInit {
    /// Normal(0, std), deterministic in `seed`.
    Random { std: f64, seed: u64 },
    /// All zeros: uniform routing until the router learns.
    Zero,
    /// Rows measured or fitted on data.
    Rows(RouterRows),
}

/// Router rows per layer (`[E, hidden]` each), e.g. from [`crate::router::domain_mean_rows`] or
/// a fit: for the MoE routers, and for attention experts' routers (`[models, hidden]`; empty:
/// they start at zero, a uniform mixture).
#[derive(Clone, Debug, PartialEq)]
pub struct RouterRows {
    pub ffn: Vec<HostTensor>,
    pub attn: Vec<HostTensor>,
}

/// A merge's inputs besides the models: the spec (the one truth of how the routers start:
/// `spec.router_init`, with `router_std` for a random start), what the spec cannot hold (a
/// random router's seed, rows measured on data), the experts' names and what to do with an
/// existing output.
#[derive(Clone, Debug)]
pub struct MixOptions {
    pub spec: MixSpec,
    /// Seed of a random router (`spec.router_init = "random"`).
    pub router_seed: u64,
    /// The rows of a `domain-mean` or `fit` router (`spec.router_init` says which), and only
    /// of those.
    pub router_rows: Option<RouterRows>,
    /// A name per expert model (in order), recorded as `btx_experts`; `None` takes the
    /// directories' names. The seed as generalist is always `generalist`.
    pub labels: Option<Vec<String>>,
    /// What to do when `out` exists and is not empty.
    pub existing: Existing,
    /// The output's float dtype; `None`: the seed's (its embeddings' stored dtype). The
    /// merge computes in f32 and rounds once.
    pub dtype: Option<btx_model::io::OutDtype>,
    /// Largest shard of the output (transformers' default, 5 GB).
    pub max_shard_bytes: usize,
    /// How each router's fit went, with `router_init = "fit"` (recorded in `mix.json`).
    pub router_fit: Vec<crate::fit::LayerFit>,
}

impl MixOptions {
    /// How the routers start: the spec's `router_init`, with this seed or these rows. Refuses
    /// rows the spec does not ask for, and a measured start without its rows.
    pub fn router_init(&self) -> Result<RouterInit> {
        let kind = self.spec.router_init;
        match (kind, &self.router_rows) {
            (RouterInitKind::Random, None) => Ok(RouterInit::Random {
                std: self.spec.router_std,
                seed: self.router_seed,
            }),
            (RouterInitKind::Zero, None) => Ok(RouterInit::Zero),
            (RouterInitKind::DomainMean | RouterInitKind::Fit, Some(r)) => {
                Ok(RouterInit::Rows(r.clone()))
            }
            (RouterInitKind::DomainMean | RouterInitKind::Fit, None) => {
                Err(MixError::Options(format!(
                    "router_init {:?} starts the routers from rows measured on data, and none were given",
                    kind.name()
                )))
            }
            (RouterInitKind::Random | RouterInitKind::Zero, Some(_)) => {
                Err(MixError::Options(format!(
                    "router rows were given, but router_init is {:?}: rows go with domain-mean or fit",
                    kind.name()
                )))
            }
        }
    }
}

impl Default for MixOptions {
    /// `btx mix`'s defaults: the models it is given and no generalist (a recipe's `[mix]`
    /// adds the seed unless told not to), a random router (seed 0), and an existing output
    /// refused.
    fn default() -> Self {
        Self {
            spec: MixSpec {
                generalist: false,
                ..MixSpec::default()
            },
            router_seed: 0,
            router_rows: None,
            labels: None,
            existing: Existing::Refuse,
            dtype: None,
            max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
            router_fit: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> ModelConfig {
        ModelConfig::llama(32, 16, 24, 2, 2, 2, 64)
    }

    /// Stage fingerprints hash the serialised spec: the default must serialise as runs made
    /// before the spec had one owner recorded it (router_init was a string then).
    #[test]
    fn serialises_as_earlier_runs_recorded_it() {
        let j = serde_json::to_string(&MixSpec::default()).unwrap();
        assert_eq!(
            j,
            r#"{"generalist":true,"router_init":"random","router_std":0.02,"router_scale":4.0,"split":1,"blend":false,"top_k":2,"routing":{"mode":"top-k"},"weights":[],"non_ffn":"average"}"#
        );
        let back: MixSpec = serde_json::from_str(&j).unwrap();
        assert_eq!(back, MixSpec::default());
    }

    #[test]
    fn resolve_is_the_one_shape_rule() {
        let s = |split, blend, top_k| MixSpec {
            split,
            blend,
            top_k,
            ..MixSpec::default()
        };
        let c = s(2, false, 4).resolve(&seed(), 3).unwrap();
        let m = c.moe.as_ref().unwrap();
        assert_eq!((m.num_experts, m.top_k, c.intermediate_size), (6, 4, 12));
        let c = s(1, true, 2).resolve(&seed(), 3).unwrap();
        assert_eq!((c.num_experts(), c.intermediate_size), (3, 24));
        // top_k beyond the experts, a width that does not divide, split with blend: all named.
        let e = s(5, true, 9).resolve(&seed(), 3).unwrap_err().to_string();
        for needle in ["either split or blend", "top_k 9 must be in 1..=3"] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        let p = s(5, false, 2).problems(3, Some(24));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("cannot be cut into 5"), "{p:?}");
        // Without the seed's width the FFN cut is not judged.
        assert!(s(5, false, 2).problems(3, None).is_empty());
        let bam = MixSpec {
            attention: AttnMix::ExpertsSharedKv,
            ..MixSpec::default()
        }
        .resolve(&seed(), 3)
        .unwrap();
        assert_eq!(
            bam.attn_experts,
            Some(AttnExpertsConfig {
                num_experts: 3,
                shared_kv: true
            })
        );
    }

    #[test]
    fn names_parse_back_and_refuse_with_the_choices() {
        for k in [
            RouterInitKind::Random,
            RouterInitKind::Zero,
            RouterInitKind::DomainMean,
            RouterInitKind::Fit,
        ] {
            assert_eq!(k.name().parse::<RouterInitKind>().unwrap(), k);
        }
        let e = "experts-shared".parse::<AttnMix>().unwrap_err().to_string();
        assert!(e.contains("average, experts, experts-shared-kv"), "{e}");
        assert_eq!("seed".parse::<NonFfn>().unwrap(), NonFfn::Seed);
    }
}
