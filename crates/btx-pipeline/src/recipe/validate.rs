//! Every problem of a recipe, found before anything runs and reported at once.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::variant::{Anchor, ExpertTraining, Variant};
use super::Recipe;

impl Recipe {
    /// Checks the whole recipe before anything runs, and reports every problem at once: a
    /// mistake found after the seed trained costs hours. `base` resolves relative paths.
    pub fn validate(&self, base: &Path) -> Result<()> {
        let problems = self.problems(base);
        if problems.is_empty() {
            return Ok(());
        }
        // (A problem's own hint stays on its line; the list ends with one for all.)
        let problems: Vec<String> = problems
            .iter()
            .map(|p| p.replace("\nhint: ", "; "))
            .collect();
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
        let (domains, vocab) = self.data_problems(base, &path_of, &mut p);
        self.weight_problems(domains.as_deref(), &mut p);
        let seed_cfg = self.seed_problems(vocab, &path_of, &mut p);
        self.budget_problems(&mut p);
        self.expert_problems(seed_cfg.as_ref(), &mut p);
        // Mix and finetune, per variant.
        let models = self.experts.domains.len() + self.mix.generalist as usize;
        let mut names = HashSet::new();
        for v in self.variants() {
            let seed = seed_cfg.as_ref();
            self.variant_problems(&v, models, domains.as_deref(), seed, &mut names, &mut p);
        }
        let positions = seed_cfg.as_ref().map_or(usize::MAX, |c| c.max_positions());
        if let Err(e) = self.eval.spec().validate(positions) {
            p.push(format!("[eval]: {e}"));
        }
        p
    }

    /// `[data]`: which domains exist and how large the vocabulary is (None and 256 when the
    /// data cannot be read).
    fn data_problems(
        &self,
        base: &Path,
        path_of: &dyn Fn(&Path) -> PathBuf,
        p: &mut Vec<String>,
    ) -> (Option<Vec<String>>, usize) {
        // The data: which domains exist, how large the vocabulary is.
        if !self.data.weights.is_empty() || self.data.split.is_some() {
            p.push("[data] weights and split are `btx train` settings; a recipe sets weights per stage ([seed.pretrain] weights, [finetune] weights) and always trains on the train split".into());
        }
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
                if let Err(e) = prep.check_inputs(base) {
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
        }
    }

    /// The mixture weights, and that every domain a section names is in the data.
    fn weight_problems(&self, domains: Option<&[String]>, p: &mut Vec<String>) {
        // Mixture weights: finite (the config reader refuses nan and inf), >= 0, some > 0.
        let mut weights: Vec<(&str, &BTreeMap<String, f64>)> =
            vec![("finetune.weights", &self.finetune.weights)];
        if let Some(sp) = &self.seed.pretrain {
            weights.push(("seed.pretrain.weights", &sp.weights));
        }
        for (what, w) in weights {
            if let Some((d, x)) = w.iter().find(|(_, x)| **x < 0.0) {
                p.push(format!("{what}: {d} = {x}; weights must be >= 0"));
            } else if !w.is_empty() && w.values().sum::<f64>() <= 0.0 {
                p.push(format!(
                    "{what}: the weights sum to 0; give some domain a weight > 0"
                ));
            }
        }
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
    }

    /// `[seed]`: exactly one source, and the seed's shape when it can be known before anything
    /// runs.
    fn seed_problems(
        &self,
        vocab: usize,
        path_of: &dyn Fn(&Path) -> PathBuf,
        p: &mut Vec<String>,
    ) -> Option<btx_model::ModelConfig> {
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
                        p.extend(freeze_problems(
                            "seed.pretrain",
                            &sp.trainer.train.freeze,
                            &c,
                        ));
                        seed_cfg = Some(c);
                    }
                    Err(e) => p.push(format!("[seed.pretrain.init]: {e}")),
                },
            }
            if let Err(e) = preflight(&sp.trainer, seed_cfg.as_ref()) {
                p.push(format!("[seed.pretrain]: {e}"));
            }
        }
        if let Some(path) = &s.path {
            let dir = path_of(path);
            match btx_model::ModelConfig::load(&dir.join("config.json")) {
                Ok(c) => {
                    if let Err(e) = check_weights(&dir, &c) {
                        p.push(format!("[seed] path: {e}"));
                    }
                    if !dir.join("tokenizer.json").is_file() {
                        p.push(format!(
                            "[seed] path: {} has no tokenizer.json (BTX prepares the data with the seed's tokenizer)",
                            dir.display()
                        ));
                    }
                    seed_cfg = Some(c);
                }
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
        seed_cfg
    }

    /// `replicas` and `budgets`.
    fn budget_problems(&self, p: &mut Vec<String>) {
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
    }

    /// `[experts]`: the domains, each expert's training spec (with its override).
    fn expert_problems(&self, seed_cfg: Option<&btx_model::ModelConfig>, p: &mut Vec<String>) {
        // The experts.
        if self.experts.domains.is_empty() {
            p.push("[experts] domains is empty".into());
        }
        // BTX mixes dense experts (a MoE expert is refused by the MiX): an `[moe]` table for
        // them would be read by nothing.
        if self.experts.moe.is_some() {
            p.push(
                "[experts.moe] sets MoE losses, but experts are dense models; MoE losses belong in [finetune.moe]"
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for d in &self.experts.domains {
            // (Also an adopted [data] dir's: its names become stage names and directories.)
            if let Some(problem) = btx_data::domain_name_problem(d) {
                p.push(format!("experts.domains: {problem}"));
            }
            if !seen.insert(d) {
                p.push(format!("experts.domains lists {d:?} twice"));
            }
            match self.expert_spec(d) {
                Ok(spec) => {
                    let over = self.experts.overrides.get(d.as_str());
                    if over.is_some_and(|o| o.get("moe").is_some()) {
                        p.push(format!(
                            "[experts.override.{d}.moe] sets MoE losses, but experts are dense models; MoE losses belong in [finetune.moe]"
                        ));
                    }
                    if let Err(e) = preflight(&spec.trainer, seed_cfg) {
                        p.push(format!("expert {d}: {e}"));
                    }
                    if let Some(c) = seed_cfg {
                        p.extend(freeze_problems(
                            &format!("expert {d}"),
                            &spec.trainer.train.freeze,
                            c,
                        ));
                    }
                }
                Err(e) => p.push(e.to_string()),
            }
        }
        if let Err(e) = btx_mix::check_expert_names(&self.experts.domains, self.mix.generalist) {
            p.push(format!("experts.domains: {e}"));
        }
        for d in self.experts.overrides.keys() {
            if !self.experts.domains.contains(d) {
                p.push(format!(
                    "[experts.override.{d}]: {d:?} is not one of experts.domains"
                ));
            }
        }
    }

    /// One finetune variant: its name and keys, its MiX and its finetune.
    fn variant_problems(
        &self,
        v: &Variant,
        models: usize,
        domains: Option<&[String]>,
        seed_cfg: Option<&btx_model::ModelConfig>,
        names: &mut HashSet<String>,
        p: &mut Vec<String>,
    ) {
        let at = format!("finetune variant {:?}", v.name);
        // The plan, the oracle and the report count the generalist for every variant alike.
        if v.mix.0.sets("generalist") {
            p.push(format!(
                "{at}: generalist is recipe-wide; set it in [mix] (every variant mixes the seed, or none does)"
            ));
        }
        if let Err(e) = v.mix.0.apply(&self.mix) {
            p.push(format!("{at}: {e}"));
            return;
        }
        // (`#` and `@` start a stage name's budget and replica tags: see plan::StageId.)
        // (`+` joins a variant's method and the domain it adds: `btx:<v>+<domain>`.)
        if v.name.is_empty() || v.name.contains(['/', ' ', ':', '#', '@', '+']) {
            p.push(format!(
                "{at}: the name must be non-empty, without spaces, slashes, colons, #, @ or +"
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
        let mut models = models;
        if let Some(d) = &v.add_expert {
            models -= 1;
            if !self.experts.domains.contains(d) {
                p.push(format!(
                    "{at}: add_expert {d:?} is not one of experts.domains {:?} (its expert trains with them)",
                    self.experts.domains
                ));
            }
            if self.experts.domains.len() < 2 {
                p.push(format!(
                    "{at}: add_expert needs at least two expert domains (one to add, one to mix)"
                ));
            }
            if self.variants().first().map(|f| &f.name) == Some(&v.name) {
                p.push(format!(
                    "{at}: the first variant is btx itself; add an expert in a later variant"
                ));
            }
            if v.finetune_share.is_some() || v.compute_matched {
                p.push(format!(
                    "{at}: add_expert cannot go with finetune_share or compute_matched"
                ));
            }
            if self.finetune.weights.is_empty() {
                p.push(format!("{at}: add_expert needs [finetune] weights, so that this variant's finetune mixture can leave {d:?} out"));
            } else if self
                .finetune
                .weights
                .iter()
                .filter(|(k, _)| *k != d)
                .map(|(_, w)| w)
                .sum::<f64>()
                <= 0.0
            {
                p.push(format!("{at}: without {d:?} the finetune weights sum to 0"));
            }
            let m = v.mix(&self.mix);
            if m.routing != btx_model::Routing::TopK || m.split > 1 || m.blend {
                p.push(format!("{at}: add_expert needs top-k routing without split or blend (one more expert would change every token's routing, or would not be one of the MoE's experts)"));
            }
        }
        // Oracle routing sends a domain without an expert to the generalist; without one it
        // has nowhere to send it.
        if self.eval.oracle && !self.mix.generalist {
            if let Some(known) = &domains {
                let mixed = v.mixed_domains(&self.experts.domains);
                let orphans: Vec<&String> = known.iter().filter(|d| !mixed.contains(d)).collect();
                if !orphans.is_empty() {
                    p.push(format!(
                        "{at}: [eval] oracle routes {orphans:?} (no expert of theirs in this MiX) to the generalist, and [mix] generalist = false; keep the generalist or set [eval] oracle = false"
                    ));
                }
            }
        }
        let m = v.mix(&self.mix);
        let mix_problems = m.problems(models, seed_cfg.map(|c| c.intermediate_size));
        p.extend(mix_problems.iter().map(|e| format!("{at}: {e}")));
        let ft = v.finetune(&self.finetune.spec());
        // (resolve refuses a spec with problems: those are listed above.)
        let moe = seed_cfg.and_then(|c| m.resolve(c, models).ok());
        if let Some(moe) = &moe {
            p.extend(freeze_problems(&at, &ft.trainer.train.freeze, moe));
        }
        if let Err(e) = preflight(&ft.trainer, moe.as_ref()) {
            p.push(format!("{at}: {e}"));
        }
    }
}

/// A training spec's checks: everything the trainer refuses before it starts (positions,
/// settings it cannot honour, the memory of a step) when the model's shape is known, else the
/// settings alone.
fn preflight(
    t: &btx_train::TrainerConfig,
    model: Option<&btx_model::ModelConfig>,
) -> std::result::Result<(), String> {
    match model {
        Some(m) => t.preflight(m).map_err(|e| e.to_string()),
        None => t.validate(),
    }
}

/// The seed's safetensors, from their headers only: readable, whole (a truncated file's
/// header no longer matches its length), and holding every tensor config.json implies with its
/// shape. Loading the weights themselves is the seed stage's work.
fn check_weights(dir: &Path, cfg: &btx_model::ModelConfig) -> Result<()> {
    let reader = btx_model::io::TensorReader::open_for(dir, cfg)?;
    for spec in btx_model::names::param_specs(cfg) {
        match reader.shape(&spec.name) {
            None => bail!(
                "{}: tensor {:?} is missing (config.json implies it)",
                dir.display(),
                spec.name
            ),
            Some(s) if s != spec.shape.as_slice() => bail!(
                "{}: tensor {:?} has shape {s:?}, config.json implies {:?}",
                reader.file_of(&spec.name).display(),
                spec.name,
                spec.shape
            ),
            Some(_) => {}
        }
    }
    Ok(())
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
