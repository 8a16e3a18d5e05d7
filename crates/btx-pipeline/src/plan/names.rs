//! Stage identity: every stage name is built and read here, nowhere else. A name is
//! `<kind>[:<what>]<suffix>`: `data`, `seed`, `report`, `expert[-ffn|-anchored…][-x<f>]:<domain>`,
//! `mix:<variant>`, `finetune:<variant>`, `add-expert:<variant>`, `baseline:<tag>`, `upcycle`,
//! `eval:<method>`, `opt-out:<method>`; the suffix is a budget tag (`#x0.5`, none for the primary budget) and a
//! replica tag (`@2`, none for replica 0). Names are the keys of plan.json and of every run
//! directory's state, so their spelling is a format.

pub const DATA: &str = "data";
pub const SEED: &str = "seed";
pub const REPORT: &str = "report";

/// An expert stage: `<prefix>:<domain><sfx>` (`prefix` from the expert family).
pub fn expert(prefix: &str, domain: &str, sfx: &str) -> String {
    format!("{prefix}:{domain}{sfx}")
}

pub fn mix(variant: &str, sfx: &str) -> String {
    format!("mix:{variant}{sfx}")
}

pub fn finetune(variant: &str, sfx: &str) -> String {
    format!("finetune:{variant}{sfx}")
}

/// A variant's finetuned model with its `add_expert` domain's expert added.
pub fn add_expert(variant: &str, sfx: &str) -> String {
    format!("add-expert:{variant}{sfx}")
}

/// The method of a finetuned variant (`btx:<v>`) with `domain`'s expert added after.
pub fn added_method(method: &str, domain: &str) -> String {
    format!("{method}+{domain}")
}

/// The finetuned method and the added domain of an [`added_method`] name.
pub fn split_added(method: &str) -> Option<(&str, &str)> {
    method.rsplit_once('+')
}

pub fn baseline(tag: &str, sfx: &str) -> String {
    format!("baseline:{tag}{sfx}")
}

pub fn upcycle(sfx: &str) -> String {
    format!("upcycle{sfx}")
}

pub fn eval(method: &str, sfx: &str) -> String {
    format!("eval:{method}{sfx}")
}

pub fn opt_out(method: &str, sfx: &str) -> String {
    format!("opt-out:{method}{sfx}")
}

/// A stage name's budget-and-replica suffix (`#x0.5@1`, `@2`, or "").
pub fn suffix(stage: &str) -> &str {
    stage.find(['#', '@']).map_or("", |i| &stage[i..])
}

/// Whether the report reads this stage's output (evaluations and opt-out costs).
pub fn feeds_report(name: &str) -> bool {
    name.starts_with("eval:") || name.starts_with("opt-out:")
}

/// Whether a method (or stage) name is the seed or one of the experts.
pub fn is_seed_or_expert(name: &str) -> bool {
    name == SEED || name.starts_with("expert")
}

/// The variant of a `mix:<variant>` method, if it is one.
pub fn mix_variant(method: &str) -> Option<&str> {
    method.strip_prefix("mix:")
}

/// The finetune variant a BTX method names: `btx` is the primary variant, `btx:<v>` is `v`.
pub fn btx_variant<'a>(method: &'a str, primary: &'a str) -> Option<&'a str> {
    match method {
        "btx" => Some(primary),
        m => m.strip_prefix("btx:"),
    }
}

/// The domain of an expert method (`expert:<domain>`, `expert-ffn:<domain>`, …).
pub fn expert_domain(method: &str) -> Option<&str> {
    method
        .split_once(':')
        .filter(|(k, _)| k.starts_with("expert"))
        .map(|(_, d)| d)
}

/// A stage name's replica suffix and directory prefix.
pub fn replica_tags(r: usize) -> (String, String) {
    if r == 0 {
        (String::new(), String::new())
    } else {
        (format!("@{r}"), format!("replicas/{r}/"))
    }
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
    let (budget, rep) = match suffix(stage).split_once('@') {
        Some((b, r)) => (b, r.parse().unwrap_or(0)),
        None => (suffix(stage), 0),
    };
    (budget.to_string(), rep)
}

/// The family and the budget-and-replica suffix of an expert stage (`expert-ffn:math#x0.5@1`
/// → (`expert-ffn`, `#x0.5@1`)); None for other stages.
pub fn expert_group(stage: &str) -> Option<(String, String)> {
    let (family, rest) = stage.split_once(':')?;
    if !family.starts_with("expert") {
        return None;
    }
    Some((family.to_string(), suffix(rest).to_string()))
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
