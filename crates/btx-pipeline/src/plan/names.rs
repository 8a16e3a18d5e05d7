//! Method names: what the report calls a model (`seed`, `expert:<domain>`, `mix:<variant>`,
//! `btx`, `btx:<variant>`, a baseline's tag, `<method>+<domain>` for an added expert), and the
//! budget and replica tags stage names and directories carry. Stage names themselves are
//! [`super::StageId`]'s.

/// The seed's method name (and stage name).
pub const SEED: &str = "seed";

/// The method of a finetuned variant (`btx:<v>`) with `domain`'s expert added after.
pub fn added_method(method: &str, domain: &str) -> String {
    format!("{method}+{domain}")
}

/// The finetuned method and the added domain of an [`added_method`] name.
pub fn split_added(method: &str) -> Option<(&str, &str)> {
    method.rsplit_once('+')
}

/// Whether a method name is the seed or one of the experts.
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
