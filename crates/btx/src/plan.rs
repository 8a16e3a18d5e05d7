//! A recipe compiled into stages: a DAG of commands (`btx stage NAME --run DIR`), each with the
//! complete configuration it runs with and a fingerprint over that configuration and its
//! upstream fingerprints. Executors (local processes, Slurm) only ever see this plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_model::ModelConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::recipe::{Anchor, ExpertTraining, MixSpec, Recipe, TrainSpec};
use crate::sections::DataSection;
use btx_eval::Weighting;

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
        tokenizer_from: Option<String>,
    },
    /// Adopt a Hugging Face seed directory.
    SeedCopy { path: PathBuf },
    /// Import a GGUF seed.
    SeedGguf { path: PathBuf },
    /// Train a model: from another stage's `model/`, or a new one (`spec.init`).
    Train {
        from: Option<String>,
        spec: TrainSpec,
        data: String,
    },
    /// BTX MiX of the experts (+ the seed as generalist).
    Mix {
        seed: String,
        experts: Vec<String>,
        domains: Vec<String>,
        spec: MixSpec,
        data: String,
        router_seed: u64,
    },
    /// Sparse upcycling of the seed.
    Upcycle {
        seed: String,
        num_experts: usize,
        spec: MixSpec,
        router_seed: u64,
    },
    /// Weight average of dense models.
    Average { models: Vec<String> },
    /// Evaluate one method: a model, or an ensemble of models (BTM).
    Eval {
        method: String,
        models: Vec<String>,
        ensemble: Option<Weighting>,
        data: String,
        spec: btx_eval::EvalSpec,
        routing: bool,
    },
    /// The opt-out cost of a BTX model: its held-out loss with each expert removed
    /// (`optout.json`; loss only, no tasks).
    OptOut {
        method: String,
        model: String,
        data: String,
        spec: btx_eval::EvalSpec,
    },
    /// `report.md`, `results.json` and `plots/` at the top of the run directory.
    Report,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage {
    /// `data`, `seed`, `expert:<domain>`, `mix:<variant>`, `finetune:<variant>`,
    /// `upcycle`, `baseline:<name>`.
    pub name: String,
    /// Directory relative to the run directory.
    pub dir: String,
    pub deps: Vec<String>,
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

/// A family of expert stages: how they train, and the factor on their step count (for a
/// variant that gives the finetune another share of the budget), in thousandths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Family {
    training: ExpertTraining,
    /// The anchored groups (anchored experts only).
    anchor: Option<Anchor>,
    factor_permille: u32,
}

impl Family {
    fn new(training: ExpertTraining, factor: f64) -> Self {
        Self {
            training,
            anchor: (training == ExpertTraining::Anchored).then_some(Anchor::DEFAULT),
            factor_permille: (factor * 1000.0).round().max(1.0) as u32,
        }
    }

    fn of(v: &crate::recipe::Variant, factor: f64) -> Self {
        Self {
            anchor: v.anchor(),
            ..Self::new(v.experts, factor)
        }
    }

    /// `-<groups>` for anchored experts with other than the default anchor, else empty.
    fn anchor_tag(&self) -> String {
        match self.anchor {
            Some(a) if a != Anchor::DEFAULT => format!("-{}", a.groups().join("-")),
            _ => String::new(),
        }
    }

    /// `expert`, `expert-ffn`, `expert-anchored` or `expert-anchored-<groups>`.
    fn base(&self) -> String {
        format!("{}{}", self.training.stage_prefix(), self.anchor_tag())
    }

    fn factor(&self) -> f64 {
        self.factor_permille as f64 / 1000.0
    }

    /// Stage (and method) prefix: `expert`, `expert-ffn`, `expert-x0.620`, ...
    fn prefix(&self) -> String {
        let base = self.base();
        if self.factor_permille == 1000 {
            base
        } else {
            format!("{base}-x{:.3}", self.factor())
        }
    }

    /// Directory: `experts`, `expert-ffns`, `expert-anchoreds[-<groups>]`, `experts-x0.620`, ...
    fn dir(&self) -> String {
        let base = format!("{}s{}", self.training.stage_prefix(), self.anchor_tag());
        if self.factor_permille == 1000 {
            base
        } else {
            format!("{base}-x{:.3}", self.factor())
        }
    }
}

/// `spec` with its step count multiplied by `f` (at least one step; warmup at most half).
fn scaled(mut spec: TrainSpec, f: f64) -> TrainSpec {
    if f != 1.0 {
        spec.train.steps = ((spec.train.steps as f64 * f).round() as usize).max(1);
        spec.optim.warmup_steps = spec.optim.warmup_steps.min(spec.train.steps / 2);
    }
    spec
}

/// The budget whose results are the report's main tables: 1.0 when listed, else the largest.
pub fn primary_budget(budgets: &[f64]) -> f64 {
    if budgets.contains(&1.0) {
        1.0
    } else {
        budgets.iter().copied().fold(f64::NAN, f64::max)
    }
}

/// A budget's stage-name tag and directory prefix (none for the primary budget).
pub fn budget_tags(scale: f64, primary: f64) -> (String, String) {
    if scale == primary {
        (String::new(), String::new())
    } else {
        (format!("#x{scale}"), format!("budgets/x{scale}/"))
    }
}

/// The budget tag (`#x0.5`, or "" for the primary budget) and replica of a stage name.
pub fn tags_of(stage: &str) -> (String, usize) {
    let (head, rep) = match stage.split_once('@') {
        Some((h, r)) => (h, r.parse().unwrap_or(0)),
        None => (stage, 0),
    };
    let budget = head
        .find('#')
        .map_or(String::new(), |i| head[i..].to_string());
    (budget, rep)
}

/// The family and the budget-and-replica suffix of an expert stage (`expert-ffn:math#x0.5@1`
/// → (`expert-ffn`, `#x0.5@1`)); None for other stages.
pub fn expert_group(stage: &str) -> Option<(String, String)> {
    let (family, rest) = stage.split_once(':')?;
    if !family.starts_with("expert") {
        return None;
    }
    let cut = rest.find(['#', '@']).unwrap_or(rest.len());
    Some((family.to_string(), rest[cut..].to_string()))
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

fn fingerprint(kind: &StageKind, dep_fps: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(PLAN_VERSION);
    h.update(serde_json::to_string(kind).expect("json"));
    for d in dep_fps {
        h.update(d);
    }
    format!("{:x}", h.finalize())[..16].to_string()
}

/// The seed's shape, known before anything runs (for matching baseline budgets).
fn seed_config(r: &Recipe, base: &Path) -> Result<ModelConfig> {
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    if let Some(p) = &r.seed.path {
        return ModelConfig::load(&abs(p).join("config.json"))
            .with_context(|| format!("reading the seed's config in {}", p.display()));
    }
    if let Some(g) = &r.seed.gguf {
        let f = btx_data::gguf::GgufFile::open(&abs(g))?;
        return Ok(crate::gguf_import::config_from_gguf(&f)?);
    }
    let spec = r
        .seed
        .pretrain
        .as_ref()
        .and_then(|p| p.init.clone())
        .context("seed pretrain needs init")?;
    // The vocabulary comes from the tokenizer the data stage trains (or the data directory).
    let vocab = match (&r.data.prepare, &r.data.dir) {
        (Some(p), _) => p.tokenizer.vocab_size,
        (None, Some(d)) => btx_data::DataDir::open(&abs(d))?.manifest.vocab_size,
        _ => bail!("[data] needs dir or prepare"),
    };
    Ok(spec.to_config(vocab, None)?)
}

/// What an expert of this family keeps frozen at the seed's, by exact name: everything outside
/// the FFNs (FFN-only), or its anchored groups.
fn frozen_params(cfg: &ModelConfig, fam: &Family) -> Vec<String> {
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

/// The method name a stage's model is reported under.
pub fn method_of(stage: &str, primary_variant: &str) -> String {
    let base = stage.split(['@', '#']).next().unwrap_or(stage);
    if let Some(v) = base.strip_prefix("finetune:") {
        return if v == primary_variant {
            "btx".into()
        } else {
            format!("btx:{v}")
        };
    }
    base.strip_prefix("baseline:").unwrap_or(base).to_string()
}

/// Adds stages, computing each fingerprint from its kind and its dependencies'.
struct Builder {
    stages: Vec<Stage>,
}

impl Builder {
    /// A training stage that continues `from` on the prepared data (experts, finetunes,
    /// baselines).
    fn train_from(&mut self, name: String, dir: String, from: String, spec: TrainSpec) {
        self.push(
            name,
            dir,
            vec![from.clone(), "data".into()],
            StageKind::Train {
                from: Some(from),
                spec,
                data: "data".into(),
            },
            true,
        );
    }

    fn push(&mut self, name: String, dir: String, deps: Vec<String>, kind: StageKind, heavy: bool) {
        let fps: Vec<String> = deps
            .iter()
            .map(|d| {
                self.stages
                    .iter()
                    .find(|s| &s.name == d)
                    .map(|s| s.fingerprint.clone())
                    .expect("dependencies are planned first")
            })
            .collect();
        let fp = fingerprint(&kind, &fps.iter().map(String::as_str).collect::<Vec<_>>());
        self.stages.push(Stage {
            name,
            dir,
            deps,
            kind,
            fingerprint: fp,
            heavy,
        });
    }
}

/// A stage name's replica suffix and directory prefix.
fn replica_tags(r: usize) -> (String, String) {
    if r == 0 {
        (String::new(), String::new())
    } else {
        (format!("@{r}"), format!("replicas/{r}/"))
    }
}

impl Plan {
    pub fn from_recipe(r: &Recipe, base: &Path) -> Result<Self> {
        let mut b = Builder { stages: vec![] };
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        // Seed and data: an imported seed brings its tokenizer, so it goes first; a pretrained
        // seed needs the data (and its trained tokenizer) first.
        if r.seed.pretrain.is_none() {
            let kind = match (&r.seed.path, &r.seed.gguf) {
                (Some(p), _) => StageKind::SeedCopy { path: abs(p) },
                (_, Some(g)) => StageKind::SeedGguf { path: abs(g) },
                _ => unreachable!("validated"),
            };
            b.push("seed".into(), "seed".into(), vec![], kind, false);
            let uses_seed_tok = r
                .data
                .prepare
                .as_ref()
                .is_some_and(|p| p.tokenizer.path.is_none());
            b.push(
                "data".into(),
                "data".into(),
                if uses_seed_tok {
                    vec!["seed".into()]
                } else {
                    vec![]
                },
                StageKind::Data {
                    section: r.data.clone(),
                    base: base.to_path_buf(),
                    tokenizer_from: uses_seed_tok.then(|| "seed".into()),
                },
                false,
            );
        } else {
            b.push(
                "data".into(),
                "data".into(),
                vec![],
                StageKind::Data {
                    section: r.data.clone(),
                    base: base.to_path_buf(),
                    tokenizer_from: None,
                },
                false,
            );
            b.push(
                "seed".into(),
                "seed".into(),
                vec!["data".into()],
                StageKind::Train {
                    from: None,
                    spec: r.seed.pretrain.clone().expect("validated"),
                    data: "data".into(),
                },
                true,
            );
        }

        // Budgets of the primary variant, for matched baselines.
        let domains = r.experts.domains.clone();
        let ft = r.finetune.spec();
        let variants = r.variants();
        let primary = &variants[0];
        let seed_cfg = seed_config(r, base)?;
        let n_models = domains.len() + r.mix.generalist as usize;
        // Each variant's MoE, resolved by the same rule the merge uses (names are unique).
        let moe_of = variants
            .iter()
            .map(|v| Ok((v.name.clone(), v.mix(&r.mix).resolve(&seed_cfg, n_models)?)))
            .collect::<Result<std::collections::HashMap<String, ModelConfig>>>()?;
        let moe_cfg = moe_of[&primary.name].clone();
        let ft_spec = primary.finetune(&ft);
        // What BTX spends at a budget scale (the primary variant), for matched baselines.
        let budget_at = |scale: f64| -> Result<Budget> {
            let mut budget = Budget {
                scale,
                ..Budget::default()
            };
            for d in &domains {
                let s = scaled(r.expert_spec(d)?, scale);
                budget.expert_tokens += s.tokens();
                budget.expert_flops +=
                    s.tokens() as f64 * seed_cfg.train_flops_per_token(s.train.seq_len);
            }
            let f = scaled(ft_spec.clone(), scale);
            budget.finetune_tokens = f.tokens();
            budget.btx_flops = budget.expert_flops
                + f.tokens() as f64 * moe_cfg.train_flops_per_token(f.train.seq_len);
            budget.btx_tokens = budget.expert_tokens + budget.finetune_tokens;
            Ok(budget)
        };
        let tps = ft.tokens_per_step().max(1);
        let steps_for = |tokens: f64| ((tokens / tps as f64).ceil() as usize).max(1);
        let seq = ft.train.seq_len;
        let matched = |budget: &Budget, m: &str, cfg: &ModelConfig| match m {
            "data" => steps_for(budget.btx_tokens as f64),
            _ => steps_for(budget.btx_flops / cfg.train_flops_per_token(seq)),
        };
        // Sparse upcycling: as many copies of the seed's FFN as the primary MoE has experts,
        // routed like it, with a fresh random router.
        // (The stage records the spec with the primary's generalist and weights, which upcycling
        // ignores: kept so that earlier runs' upcycle stages keep their fingerprints.)
        let up_spec = MixSpec {
            router_init: btx_mix::RouterInitKind::Random,
            split: 1,
            blend: false,
            ..primary.mix(&r.mix)
        };
        let up_cfg = MixSpec {
            generalist: false,
            weights: vec![],
            ..up_spec.clone()
        }
        .resolve(&seed_cfg, moe_cfg.num_experts())?;

        let eval = |b: &mut Builder,
                    method: &str,
                    sfx: &str,
                    models: Vec<String>,
                    ensemble: Option<Weighting>| {
            let mut deps = models.clone();
            deps.push("data".into());
            b.push(
                format!("eval:{method}{sfx}"),
                format!(
                    "eval/{}{}",
                    method.replace(':', "-"),
                    sfx.replace(['@', '#'], "-")
                ),
                deps,
                StageKind::Eval {
                    method: method.into(),
                    models,
                    ensemble,
                    data: "data".into(),
                    spec: r.eval.spec(),
                    routing: r.eval.routing,
                },
                false,
            );
        };
        eval(&mut b, "seed", "", vec!["seed".into()], None);

        // A variant's finetune at a budget scale: its steps scaled, or, with a finetune share,
        // the steps that spend that share of the primary variant's budget.
        let finetune_spec = |v: &crate::recipe::Variant, scale: f64| -> TrainSpec {
            let mut f = scaled(v.finetune(&ft), scale);
            if v.compute_matched {
                // The same experts as the primary variant; the finetune gets what is left.
                let cfg = &moe_of[&v.name];
                let per_step =
                    f.tokens_per_step() as f64 * cfg.train_flops_per_token(f.train.seq_len);
                let left = budget_at(scale).map_or(0.0, |b| b.btx_flops - b.expert_flops);
                f.train.steps = ((left / per_step).round() as usize).max(1);
                f.optim.warmup_steps = f.optim.warmup_steps.min(f.train.steps / 2);
            }
            if let Some(share) = v.finetune_share {
                let cfg = &moe_of[&v.name];
                let per_step =
                    f.tokens_per_step() as f64 * cfg.train_flops_per_token(f.train.seq_len);
                let total = budget_at(scale).map_or(0.0, |b| b.btx_flops);
                f.train.steps = ((share * total / per_step).round() as usize).max(1);
                f.optim.warmup_steps = f.optim.warmup_steps.min(f.train.steps / 2);
            }
            f
        };
        let primary_scale = primary_budget(&r.budgets);
        let mut budgets = vec![];
        for &scale in &r.budgets {
            let budget = budget_at(scale)?;
            budgets.push(budget.clone());
            let (btag, bdir) = budget_tags(scale, primary_scale);
            for rep in 0..r.replicas {
                let (rsfx, rpre) = replica_tags(rep);
                let (sfx, pre) = (format!("{btag}{rsfx}"), format!("{bdir}{rpre}"));
                let reseed = |mut s: TrainSpec| {
                    s.train.seed += 1000 * rep as u64;
                    s
                };
                // The experts: fully trained ones always (BTM, merge-avg and most variants use
                // them), FFN-only ones when a variant asks for them, and ones with fewer or more
                // steps for a variant that gives the finetune another share of the budget.
                // The variants beyond the first are ablations: they run at the primary budget
                // only (the budget sweep is for BTX against its baselines).
                let variants: &[crate::recipe::Variant] = if scale == primary_scale {
                    &variants
                } else {
                    &variants[..1]
                };
                let family = |v: &crate::recipe::Variant| -> Result<Family> {
                    let factor = match v.finetune_share {
                        None => 1.0,
                        Some(share) => (1.0 - share) * budget.btx_flops / budget.expert_flops,
                    };
                    Ok(Family::of(v, factor))
                };
                let mut families = vec![Family::new(ExpertTraining::Full, 1.0)];
                for v in variants {
                    let f = family(v)?;
                    if !families.contains(&f) {
                        families.push(f);
                    }
                }
                let mut experts_of: BTreeMap<Family, Vec<String>> = BTreeMap::new();
                for fam in families {
                    let prefix = fam.prefix();
                    let mut names = vec![];
                    for d in &domains {
                        let name = format!("{prefix}:{d}{sfx}");
                        let mut spec = scaled(r.expert_spec(d)?, scale * fam.factor());
                        spec.train.freeze.extend(frozen_params(&seed_cfg, &fam));
                        b.train_from(
                            name.clone(),
                            format!("{pre}{}/{d}", fam.dir()),
                            "seed".into(),
                            reseed(spec),
                        );
                        // Rescaled experts only serve their variant's MiX: not evaluated alone.
                        if fam.factor_permille == 1000 {
                            eval(
                                &mut b,
                                &format!("{prefix}:{d}"),
                                &sfx,
                                vec![name.clone()],
                                None,
                            );
                        }
                        names.push(name);
                    }
                    experts_of.insert(fam, names);
                }
                let expert_stages = experts_of[&Family::new(ExpertTraining::Full, 1.0)].clone();
                // Variants that differ only in their finetune share one MiX (and its evaluation).
                let mut mixes: Vec<(Family, MixSpec, String)> = vec![];
                for v in variants {
                    let spec = v.mix(&r.mix);
                    let fam = family(v)?;
                    let shared = mixes
                        .iter()
                        .find(|(k, m, _)| *k == fam && *m == spec)
                        .map(|x| x.2.clone());
                    let mix_name = match shared {
                        Some(name) => name,
                        None => {
                            let mix_name = format!("mix:{}{sfx}", v.name);
                            let mixed = experts_of[&fam].clone();
                            let mut deps = vec!["seed".to_string(), "data".to_string()];
                            deps.extend(mixed.iter().cloned());
                            b.push(
                                mix_name.clone(),
                                format!("{pre}mix/{}", v.name),
                                deps,
                                StageKind::Mix {
                                    seed: "seed".into(),
                                    experts: mixed,
                                    domains: domains.clone(),
                                    spec: spec.clone(),
                                    data: "data".into(),
                                    router_seed: rep as u64,
                                },
                                false,
                            );
                            if r.eval.mix {
                                // The MiX before any finetuning: what the finetune starts from.
                                eval(
                                    &mut b,
                                    &format!("mix:{}", v.name),
                                    &sfx,
                                    vec![mix_name.clone()],
                                    None,
                                );
                            }
                            mixes.push((fam, spec, mix_name.clone()));
                            mix_name
                        }
                    };
                    let ft_name = format!("finetune:{}{sfx}", v.name);
                    b.train_from(
                        ft_name.clone(),
                        format!("{pre}finetune/{}", v.name),
                        mix_name,
                        reseed(finetune_spec(v, scale)),
                    );
                    let method = method_of(&ft_name, &primary.name);
                    eval(&mut b, &method, &sfx, vec![ft_name.clone()], None);
                    if scale == primary_scale && r.eval.opt_out {
                        let spec = btx_eval::EvalSpec {
                            tasks: 0,
                            ..r.eval.spec()
                        };
                        b.push(
                            format!("opt-out:{method}{sfx}"),
                            format!("{pre}opt-out/{}", v.name),
                            vec![ft_name.clone(), "data".into()],
                            StageKind::OptOut {
                                method,
                                model: ft_name.clone(),
                                data: "data".into(),
                                spec,
                            },
                            false,
                        );
                    }
                }
                let dense_list = r.baselines.dense.list();
                for m in &dense_list {
                    let mut spec = ft.clone();
                    spec.moe = Default::default();
                    spec.train.steps = matched(&budget, m, &seed_cfg);
                    // A lone data-matched run is plain `dense`; a compute-matched one always says so.
                    let tag = if dense_list.len() == 1 && *m == "data" {
                        "dense".to_string()
                    } else {
                        format!("dense-{m}")
                    };
                    let name = format!("baseline:{tag}{sfx}");
                    b.train_from(
                        name.clone(),
                        format!("{pre}baselines/{tag}"),
                        "seed".into(),
                        reseed(spec),
                    );
                    eval(&mut b, &tag, &sfx, vec![name], None);
                }
                let up_list = r.baselines.upcycle.list();
                if !up_list.is_empty() {
                    let up_name = format!("upcycle{sfx}");
                    b.push(
                        up_name.clone(),
                        format!("{pre}upcycle"),
                        vec!["seed".into()],
                        StageKind::Upcycle {
                            seed: "seed".into(),
                            num_experts: moe_cfg.num_experts(),
                            spec: up_spec.clone(),
                            router_seed: rep as u64,
                        },
                        false,
                    );
                    for m in &up_list {
                        let mut spec = ft_spec.clone();
                        spec.train.freeze.clear();
                        spec.train.steps = matched(&budget, m, &up_cfg);
                        let tag = format!("upcycle-{m}");
                        let name = format!("baseline:{tag}{sfx}");
                        b.train_from(
                            name.clone(),
                            format!("{pre}baselines/{tag}"),
                            up_name.clone(),
                            reseed(spec),
                        );
                        eval(&mut b, &tag, &sfx, vec![name], None);
                    }
                }
                let mut members = expert_stages.clone();
                if r.mix.generalist {
                    members.push("seed".into());
                }
                if r.baselines.merge_avg {
                    let name = format!("baseline:merge-avg{sfx}");
                    b.push(
                        name.clone(),
                        format!("{pre}baselines/merge-avg"),
                        members.clone(),
                        StageKind::Average {
                            models: members.clone(),
                        },
                        false,
                    );
                    eval(&mut b, "merge-avg", &sfx, vec![name], None);
                }
                if r.eval.btm {
                    for k in [1usize, 2] {
                        eval(
                            &mut b,
                            &format!("btm-top{k}"),
                            &sfx,
                            members.clone(),
                            Some(Weighting::Posterior { top_k: k }),
                        );
                    }
                }
            }
        }
        let evals: Vec<String> = b
            .stages
            .iter()
            .filter(|s| s.name.starts_with("eval:") || s.name.starts_with("opt-out:"))
            .map(|s| s.name.clone())
            .collect();
        b.push(
            "report".into(),
            "report".into(),
            evals,
            StageKind::Report,
            false,
        );
        let budget = budgets
            .iter()
            .find(|x| x.scale == primary_scale)
            .cloned()
            .unwrap_or_default();
        Ok(Plan {
            name: r.name.clone(),
            stages: b.stages,
            budget,
            budgets,
            domains,
            variants: variants.iter().map(|v| v.name.clone()).collect(),
            generalist: r.mix.generalist,
            replicas: r.replicas,
        })
    }

    /// The MiX stage a finetune variant starts from (variants with the same MiX share one).
    pub fn mix_of(&self, variant: &str, sfx: &str) -> Option<&Stage> {
        let ft = self
            .stages
            .iter()
            .find(|s| s.name == format!("finetune:{variant}{sfx}"))?;
        match &ft.kind {
            StageKind::Train {
                from: Some(from), ..
            } => self.stages.iter().find(|s| &s.name == from),
            _ => None,
        }
    }

    pub fn stage(&self, name: &str) -> Result<&Stage> {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .with_context(|| {
                format!(
                    "no stage {name:?} in the plan (stages: {})",
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
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("reading {} (is this a btx run directory?)", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    pub fn save(&self, run: &Path) -> Result<()> {
        let p = run.join(PLAN_FILE);
        std::fs::write(&p, serde_json::to_string_pretty(self)?)?;
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

    /// examples/study.toml compiles into the study it promises: three budgets of three
    /// replicas, the ablations at the base budget only, one family of experts per kind of
    /// variant, and baselines matched to each budget.
    #[test]
    fn the_study_recipe_plans_budgets_replicas_and_ablations() {
        let r: Recipe = toml::from_str(include_str!("../../../examples/study.toml")).unwrap();
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
            StageKind::Train { spec, .. } => spec.train.steps,
            _ => unreachable!(),
        };
        let fam = |v: &str| match &plan.mix_of(v, "").unwrap().kind {
            StageKind::Mix { experts, .. } => experts[0].clone(),
            _ => unreachable!(),
        };
        assert!(steps(&fam("ft10")) > steps("expert:code"));
        assert!(steps(&fam("ft50")) < steps("expert:code"));
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
            StageKind::Train { spec, .. } => spec.train.freeze.clone(),
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
            toml::from_str(include_str!("../../../examples/quick.toml")).unwrap();
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
        let f = &spec.train.freeze;
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
