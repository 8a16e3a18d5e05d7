//! `Plan::from_recipe`: the recipe compiled into stages, in the order they can run — seed and
//! data, then per budget and replica the experts, the MiXes and finetunes of each variant, the
//! baselines matched to BTX's budget, and the evaluations; the report last.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use btx_eval::Weighting;
use btx_model::ModelConfig;

use super::builder::{scaled, seed_config, Builder};
use super::family::{frozen_params, Family};
use super::names::{self, budget_tags, primary_budget, replica_tags};
use super::{Budget, Plan, StageId, StageKind};
use crate::recipe::{ExpertTraining, MixSpec, Recipe, TrainSpec, Variant};

/// One budget scale and replica: the suffix of its stage names, the prefix of its directories.
struct At {
    scale: f64,
    budget: Budget,
    rep: usize,
    sfx: String,
    pre: String,
}

impl At {
    /// `s` with this replica's training seed (replica 0 keeps the recipe's).
    fn reseed(&self, mut s: TrainSpec) -> TrainSpec {
        s.trainer.train.seed += 1000 * self.rep as u64;
        s
    }
}

/// What every part of the plan needs from the recipe, resolved once.
struct Planner<'a> {
    r: &'a Recipe,
    b: Builder,
    domains: Vec<String>,
    /// The finetune's settings before any variant's overrides.
    ft: TrainSpec,
    variants: Vec<Variant>,
    seed_cfg: ModelConfig,
    /// Each variant's MoE, resolved by the same rule the merge uses (names are unique).
    moe_of: HashMap<String, ModelConfig>,
    /// Sparse upcycling: as many copies of the seed's FFN as the primary MoE has experts,
    /// routed like it, with a fresh random router. (The stage records the spec with the
    /// primary's generalist and weights, which upcycling ignores: kept so that earlier runs'
    /// upcycle stages keep their fingerprints.)
    up_spec: MixSpec,
    up_cfg: ModelConfig,
    primary_scale: f64,
}

impl Plan {
    pub fn from_recipe(r: &Recipe, base: &Path) -> Result<Self> {
        let mut p = Planner::new(r, base)?;
        p.seed_and_data(base);
        p.eval("seed", "", vec![StageId::seed()], None);
        let mut budgets = vec![];
        for &scale in &r.budgets {
            let budget = p.budget_at(scale)?;
            budgets.push(budget.clone());
            let (btag, bdir) = budget_tags(scale, p.primary_scale);
            for rep in 0..r.replicas {
                let (rsfx, rpre) = replica_tags(rep);
                let at = At {
                    scale,
                    budget: budget.clone(),
                    rep,
                    sfx: format!("{btag}{rsfx}"),
                    pre: format!("{bdir}{rpre}"),
                };
                p.replica(&at)?;
            }
        }
        let plan = p.finish(budgets);
        // Every name must read back as it was built (plan.json is read by name): a name made
        // of a part that breaks the format (a domain of an adopted data directory named with
        // `#` or `@`) is refused now, not when `btx stage` reads the plan.
        for s in &plan.stages {
            if let Err(e) = s.name.as_str().parse::<StageId>() {
                anyhow::bail!(
                    "{e}\nhint: domain and variant names must not contain '#', '@' or ':' (they mark a stage name's parts)"
                );
            }
        }
        Ok(plan)
    }
}

impl<'a> Planner<'a> {
    fn new(r: &'a Recipe, base: &Path) -> Result<Self> {
        let variants = r.variants();
        let seed_cfg = seed_config(r, base)?;
        let n_models = r.experts.domains.len() + r.mix.generalist as usize;
        let moe_of = variants
            .iter()
            .map(|v| {
                let n = n_models - v.add_expert.is_some() as usize;
                Ok((v.name.clone(), v.mix(&r.mix).resolve(&seed_cfg, n)?))
            })
            .collect::<Result<HashMap<String, ModelConfig>>>()?;
        let primary = &variants[0];
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
        .resolve(&seed_cfg, moe_of[&primary.name].num_experts())?;
        Ok(Self {
            r,
            b: Builder { stages: vec![] },
            domains: r.experts.domains.clone(),
            ft: r.finetune.spec(),
            primary_scale: primary_budget(&r.budgets),
            variants,
            seed_cfg,
            moe_of,
            up_spec,
            up_cfg,
        })
    }

    fn primary(&self) -> &Variant {
        &self.variants[0]
    }

    /// What BTX spends at a budget scale (the primary variant), for matched baselines.
    fn budget_at(&self, scale: f64) -> Result<Budget> {
        let mut budget = Budget {
            scale,
            ..Budget::default()
        };
        for d in &self.domains {
            let s = scaled(self.r.expert_spec(d)?, scale);
            budget.expert_tokens += s.tokens();
            budget.expert_flops +=
                s.tokens() as f64 * self.seed_cfg.train_flops_per_token(s.trainer.train.seq_len);
        }
        let f = scaled(self.primary().finetune(&self.ft), scale);
        let moe = &self.moe_of[&self.primary().name];
        budget.finetune_tokens = f.tokens();
        budget.btx_flops = budget.expert_flops
            + f.tokens() as f64 * moe.train_flops_per_token(f.trainer.train.seq_len);
        budget.btx_tokens = budget.expert_tokens + budget.finetune_tokens;
        Ok(budget)
    }

    /// Finetune-sized steps that spend BTX's tokens (`data`) or FLOPs (else) on `cfg`.
    fn matched_steps(&self, budget: &Budget, m: &str, cfg: &ModelConfig) -> usize {
        let tps = self.ft.tokens_per_step().max(1);
        let steps_for = |tokens: f64| ((tokens / tps as f64).ceil() as usize).max(1);
        match m {
            "data" => steps_for(budget.btx_tokens as f64),
            _ => steps_for(
                budget.btx_flops / cfg.train_flops_per_token(self.ft.trainer.train.seq_len),
            ),
        }
    }

    /// A variant's finetune at a budget: its steps scaled, or, with a finetune share, the
    /// steps that spend that share of the primary variant's budget.
    fn finetune_spec(&self, v: &Variant, budget: &Budget) -> TrainSpec {
        let mut f = scaled(v.finetune(&self.ft), budget.scale);
        let cfg = &self.moe_of[&v.name];
        let per_step =
            f.tokens_per_step() as f64 * cfg.train_flops_per_token(f.trainer.train.seq_len);
        if v.compute_matched {
            // The same experts as the primary variant; the finetune gets what is left.
            let left = budget.btx_flops - budget.expert_flops;
            f.trainer.train.steps = ((left / per_step).round() as usize).max(1);
            f.trainer.optim.warmup_steps =
                f.trainer.optim.warmup_steps.min(f.trainer.train.steps / 2);
        }
        if let Some(share) = v.finetune_share {
            f.trainer.train.steps = ((share * budget.btx_flops / per_step).round() as usize).max(1);
            f.trainer.optim.warmup_steps =
                f.trainer.optim.warmup_steps.min(f.trainer.train.steps / 2);
        }
        f
    }

    /// The expert family a variant mixes at a budget (a finetune share rescales its experts).
    fn family(&self, v: &Variant, budget: &Budget) -> Family {
        let factor = match v.finetune_share {
            None => 1.0,
            Some(share) => (1.0 - share) * budget.btx_flops / budget.expert_flops,
        };
        Family::of(v, factor)
    }

    /// An evaluation of `method` (one model, or an ensemble of several).
    fn eval(&mut self, method: &str, sfx: &str, models: Vec<StageId>, ensemble: Option<Weighting>) {
        self.eval_as(method, sfx, models, ensemble, false);
    }

    /// The oracle-routing evaluation of a MoE `model` (method `oracle:<method>`), at the main
    /// budget when `[eval] oracle` asks for it.
    fn oracle(&mut self, at: &At, method: &str, model: &StageId) {
        if self.r.eval.oracle && at.scale == self.primary_scale {
            let name = format!("oracle:{method}");
            self.eval_as(&name, &at.sfx, vec![model.clone()], None, true);
        }
    }

    fn eval_as(
        &mut self,
        method: &str,
        sfx: &str,
        models: Vec<StageId>,
        ensemble: Option<Weighting>,
        oracle: bool,
    ) {
        let mut deps = models.clone();
        deps.push(StageId::data());
        self.b.push(
            StageId::eval(method, sfx),
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
                data: StageId::data(),
                // The oracle bounds the share of the experts' loss gains a router can keep:
                // loss only (task generation would double the demo's time).
                spec: btx_eval::EvalSpec {
                    tasks: if oracle { 0 } else { self.r.eval.spec().tasks },
                    ..self.r.eval.spec()
                },
                // The oracle's routing is set by the domains, not the router.
                routing: self.r.eval.routing && !oracle,
                oracle,
            },
            false,
        );
    }

    /// Seed and data: an imported seed brings its tokenizer, so it goes first; a pretrained
    /// seed needs the data (and its trained tokenizer) first.
    fn seed_and_data(&mut self, base: &Path) {
        let r = self.r;
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let data = |tokenizer_from: Option<StageId>| StageKind::Data {
            section: r.data.clone(),
            base: base.to_path_buf(),
            tokenizer_from,
        };
        let (seed, data_stage) = (StageId::seed(), StageId::data());
        match &r.seed.pretrain {
            None => {
                let kind = match (&r.seed.path, &r.seed.gguf) {
                    (Some(p), _) => StageKind::SeedCopy { path: abs(p) },
                    (_, Some(g)) => StageKind::SeedGguf { path: abs(g) },
                    _ => unreachable!("validated"),
                };
                self.b
                    .push(seed.clone(), seed.to_string(), vec![], kind, false);
                let uses_seed_tok = r
                    .data
                    .prepare
                    .as_ref()
                    .is_some_and(|p| p.tokenizer.path.is_none());
                self.b.push(
                    data_stage.clone(),
                    data_stage.to_string(),
                    if uses_seed_tok {
                        vec![seed.clone()]
                    } else {
                        vec![]
                    },
                    data(uses_seed_tok.then_some(seed)),
                    false,
                );
            }
            Some(pretrain) => {
                self.b.push(
                    data_stage.clone(),
                    data_stage.to_string(),
                    vec![],
                    data(None),
                    false,
                );
                self.b.push(
                    seed.clone(),
                    seed.to_string(),
                    vec![data_stage.clone()],
                    StageKind::Train {
                        from: None,
                        spec: pretrain.clone(),
                        data: data_stage,
                    },
                    true,
                );
            }
        }
    }

    /// Every stage of one budget scale and replica.
    fn replica(&mut self, at: &At) -> Result<()> {
        // The variants beyond the first are ablations: they run at the primary budget only
        // (the budget sweep is for BTX against its baselines).
        let variants: Vec<Variant> = if at.scale == self.primary_scale {
            self.variants.clone()
        } else {
            self.variants[..1].to_vec()
        };
        let experts_of = self.experts(at, &variants)?;
        self.variants_of(at, &variants, &experts_of);
        self.baselines(at);
        let mut members = experts_of[&Family::new(ExpertTraining::Full, 1.0)].clone();
        if self.r.mix.generalist {
            members.push(StageId::seed());
        }
        self.ensembles(at, members);
        Ok(())
    }

    /// The experts: fully trained ones always (BTM, merge-avg and most variants use them),
    /// FFN-only or anchored ones when a variant asks for them, and ones with fewer or more
    /// steps for a variant that gives the finetune another share of the budget.
    fn experts(&mut self, at: &At, variants: &[Variant]) -> Result<BTreeMap<Family, Vec<StageId>>> {
        let mut families = vec![Family::new(ExpertTraining::Full, 1.0)];
        for v in variants {
            let f = self.family(v, &at.budget);
            if !families.contains(&f) {
                families.push(f);
            }
        }
        let mut experts_of = BTreeMap::new();
        for fam in families {
            let prefix = fam.prefix();
            let mut stages = vec![];
            for d in &self.domains.clone() {
                let name = StageId::expert(&prefix, d, &at.sfx);
                let mut spec = scaled(self.r.expert_spec(d)?, at.scale * fam.factor());
                spec.trainer
                    .train
                    .freeze
                    .extend(frozen_params(&self.seed_cfg, &fam));
                self.b.train_from(
                    name.clone(),
                    format!("{}{}/{d}", at.pre, fam.dir()),
                    StageId::seed(),
                    at.reseed(spec),
                );
                // Rescaled experts only serve their variant's MiX: not evaluated alone.
                if fam.factor_permille == 1000 {
                    self.eval(&format!("{prefix}:{d}"), &at.sfx, vec![name.clone()], None);
                }
                stages.push(name);
            }
            experts_of.insert(fam, stages);
        }
        Ok(experts_of)
    }

    /// Each variant's MiX (variants that differ only in their finetune share one, and its
    /// evaluation), its finetune, their evaluations and the finetune's opt-out cost.
    fn variants_of(
        &mut self,
        at: &At,
        variants: &[Variant],
        experts_of: &BTreeMap<Family, Vec<StageId>>,
    ) {
        let r = self.r;
        let sfx = &at.sfx;
        // A MiX is shared by the variants that mix the same experts the same way.
        type MixKey = (Family, MixSpec, Option<String>);
        let mut mixes: Vec<(MixKey, StageId)> = vec![];
        for v in variants {
            let spec = v.mix(&r.mix);
            let fam = self.family(v, &at.budget);
            let key = (fam, spec.clone(), v.add_expert.clone());
            let shared = mixes.iter().find(|(k, _)| *k == key).map(|x| x.1.clone());
            // The experts this variant mixes: all but the one it adds after its finetune.
            let domains = v.mixed_domains(&self.domains);
            let mixed: Vec<StageId> = self
                .domains
                .iter()
                .zip(&experts_of[&fam])
                .filter(|(d, _)| domains.contains(d))
                .map(|(_, e)| e.clone())
                .collect();
            let mix_name = match shared {
                Some(name) => name,
                None => {
                    let mix_name = StageId::mix(&v.name, sfx);
                    let mut deps = vec![StageId::seed(), StageId::data()];
                    deps.extend(mixed.iter().cloned());
                    self.b.push(
                        mix_name.clone(),
                        format!("{}mix/{}", at.pre, v.name),
                        deps,
                        StageKind::Mix {
                            seed: StageId::seed(),
                            experts: mixed,
                            domains,
                            spec: spec.clone(),
                            data: StageId::data(),
                            router_seed: at.rep as u64,
                        },
                        false,
                    );
                    if r.eval.mix {
                        // The MiX before any finetuning: what the finetune starts from.
                        self.eval(
                            &format!("mix:{}", v.name),
                            sfx,
                            vec![mix_name.clone()],
                            None,
                        );
                        self.oracle(at, &format!("mix:{}", v.name), &mix_name);
                    }
                    mixes.push((key, mix_name.clone()));
                    mix_name
                }
            };
            let ft_name = StageId::finetune(&v.name, sfx);
            let ft_spec = at.reseed(self.finetune_spec(v, &at.budget));
            self.b.train_from(
                ft_name.clone(),
                format!("{}finetune/{}", at.pre, v.name),
                mix_name,
                ft_spec,
            );
            let method = ft_name.method(&self.primary().name);
            self.eval(&method, sfx, vec![ft_name.clone()], None);
            self.oracle(at, &method, &ft_name);
            // (A domain that is not an expert's is refused by the recipe's validation.)
            let added = v
                .add_expert
                .as_ref()
                .and_then(|d| Some((d, self.domains.iter().position(|x| x == d)?)));
            if let Some((d, i)) = added {
                // The expert of d, trained with the others, added to the finetuned model.
                let expert = experts_of[&fam][i].clone();
                let name = StageId::add_expert(&v.name, sfx);
                self.b.push(
                    name.clone(),
                    format!("{}added/{}", at.pre, v.name),
                    vec![ft_name.clone(), expert.clone(), StageId::data()],
                    StageKind::AddExpert {
                        model: ft_name.clone(),
                        expert,
                        domain: d.clone(),
                        data: StageId::data(),
                    },
                    false,
                );
                self.eval(&names::added_method(&method, d), sfx, vec![name], None);
            }
            if at.scale == self.primary_scale && r.eval.opt_out {
                let spec = btx_eval::EvalSpec {
                    tasks: 0,
                    ..r.eval.spec()
                };
                self.b.push(
                    StageId::opt_out(&method, sfx),
                    format!("{}opt-out/{}", at.pre, v.name),
                    vec![ft_name.clone(), StageId::data()],
                    StageKind::OptOut {
                        method,
                        model: ft_name,
                        data: StageId::data(),
                        spec,
                    },
                    false,
                );
            }
        }
    }

    /// Dense and sparse-upcycling baselines, each matched to BTX's data or compute.
    fn baselines(&mut self, at: &At) {
        let r = self.r;
        let sfx = &at.sfx;
        let dense_list = r.baselines.dense.list();
        for m in &dense_list {
            let mut spec = self.ft.clone();
            spec.trainer.moe = Default::default();
            spec.trainer.train.steps = self.matched_steps(&at.budget, m, &self.seed_cfg);
            // A lone data-matched run is plain `dense`; a compute-matched one always says so.
            let tag = if dense_list.len() == 1 && *m == "data" {
                "dense".to_string()
            } else {
                format!("dense-{m}")
            };
            let name = StageId::baseline(&tag, sfx);
            self.b.train_from(
                name.clone(),
                format!("{}baselines/{tag}", at.pre),
                StageId::seed(),
                at.reseed(spec),
            );
            self.eval(&tag, sfx, vec![name], None);
        }
        let up_list = r.baselines.upcycle.list();
        if up_list.is_empty() {
            return;
        }
        let up_name = StageId::upcycle(sfx);
        self.b.push(
            up_name.clone(),
            format!("{}upcycle", at.pre),
            vec![StageId::seed()],
            StageKind::Upcycle {
                seed: StageId::seed(),
                num_experts: self.moe_of[&self.primary().name].num_experts(),
                spec: self.up_spec.clone(),
                router_seed: at.rep as u64,
            },
            false,
        );
        for m in &up_list {
            let mut spec = self.primary().finetune(&self.ft);
            spec.trainer.train.freeze.clear();
            spec.trainer.train.steps = self.matched_steps(&at.budget, m, &self.up_cfg);
            let tag = format!("upcycle-{m}");
            let name = StageId::baseline(&tag, sfx);
            self.b.train_from(
                name.clone(),
                format!("{}baselines/{tag}", at.pre),
                up_name.clone(),
                at.reseed(spec),
            );
            self.eval(&tag, sfx, vec![name], None);
        }
    }

    /// What needs no training beyond the experts: their weight average and the BTM ensembles.
    fn ensembles(&mut self, at: &At, members: Vec<StageId>) {
        let sfx = &at.sfx;
        if self.r.baselines.merge_avg {
            let name = StageId::baseline("merge-avg", sfx);
            self.b.push(
                name.clone(),
                format!("{}baselines/merge-avg", at.pre),
                members.clone(),
                StageKind::Average {
                    models: members.clone(),
                },
                false,
            );
            self.eval("merge-avg", sfx, vec![name], None);
        }
        if self.r.eval.btm {
            for k in [1usize, 2] {
                self.eval(
                    &format!("btm-top{k}"),
                    sfx,
                    members.clone(),
                    Some(Weighting::Posterior { top_k: k }),
                );
            }
        }
    }

    /// The report, after every evaluation.
    fn finish(mut self, budgets: Vec<Budget>) -> Plan {
        let evals: Vec<StageId> = self
            .b
            .stages
            .iter()
            .filter(|s| s.name.feeds_report())
            .map(|s| s.name.clone())
            .collect();
        self.b.push(
            StageId::report(),
            StageId::report().to_string(),
            evals,
            StageKind::Report,
            false,
        );
        let budget = budgets
            .iter()
            .find(|x| x.scale == self.primary_scale)
            .cloned()
            .unwrap_or_default();
        Plan {
            name: self.r.name.clone(),
            stages: self.b.stages,
            budget,
            budgets,
            domains: self.domains,
            variants: self.variants.iter().map(|v| v.name.clone()).collect(),
            generalist: self.r.mix.generalist,
            replicas: self.r.replicas,
        }
    }
}
