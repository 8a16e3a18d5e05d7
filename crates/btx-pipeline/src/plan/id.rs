//! Stage identity: [`StageId`] is the one type that builds, parses and reads stage names. A name
//! is `<kind>[:<what>]<suffix>`: `data`, `seed`, `report`, `upcycle`, `expert[-ffn|-anchored…]
//! [-x<f>]:<domain>`, `mix:<variant>`, `finetune:<variant>`, `add-expert:<variant>`,
//! `baseline:<tag>`, `eval:<method>`, `opt-out:<method>`; the suffix is a budget tag (`#x0.5`,
//! none for the primary budget) and a replica tag (`@2`, none for replica 0). Names are the keys
//! of plan.json and of every run directory's state, so their spelling is a format: a StageId
//! serialises as its name, and a name that does not parse is refused when a plan is read.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a stage is, as its name says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    Data,
    Seed,
    Report,
    Upcycle,
    /// An expert of a family (`expert`, `expert-ffn`, `expert-anchored-ffn-x2`, …).
    Expert {
        family: &'a str,
    },
    Mix,
    Finetune,
    AddExpert,
    Baseline,
    Eval,
    OptOut,
}

impl<'a> Kind<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        Some(match s {
            "data" => Kind::Data,
            "seed" => Kind::Seed,
            "report" => Kind::Report,
            "upcycle" => Kind::Upcycle,
            "mix" => Kind::Mix,
            "finetune" => Kind::Finetune,
            "add-expert" => Kind::AddExpert,
            "baseline" => Kind::Baseline,
            "eval" => Kind::Eval,
            "opt-out" => Kind::OptOut,
            f if f.starts_with("expert") => Kind::Expert { family: f },
            _ => return None,
        })
    }

    /// Whether a name of this kind has a `:<what>` part.
    fn has_what(self) -> bool {
        !matches!(self, Kind::Data | Kind::Seed | Kind::Report | Kind::Upcycle)
    }
}

/// A stage's name (see the module docs), checked to parse.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StageId(String);

impl StageId {
    fn build(kind: &str, what: Option<&str>, sfx: &str) -> Self {
        let name = match what {
            Some(w) => format!("{kind}:{w}{sfx}"),
            None => format!("{kind}{sfx}"),
        };
        debug_assert!(name.parse::<StageId>().is_ok(), "{name}");
        StageId(name)
    }

    pub fn data() -> Self {
        Self::build("data", None, "")
    }

    pub fn seed() -> Self {
        Self::build("seed", None, "")
    }

    pub fn report() -> Self {
        Self::build("report", None, "")
    }

    pub fn upcycle(sfx: &str) -> Self {
        Self::build("upcycle", None, sfx)
    }

    /// An expert stage: `<family>:<domain><sfx>` (`family` from the expert family).
    pub fn expert(family: &str, domain: &str, sfx: &str) -> Self {
        Self::build(family, Some(domain), sfx)
    }

    pub fn mix(variant: &str, sfx: &str) -> Self {
        Self::build("mix", Some(variant), sfx)
    }

    pub fn finetune(variant: &str, sfx: &str) -> Self {
        Self::build("finetune", Some(variant), sfx)
    }

    /// A variant's finetuned model with its `add_expert` domain's expert added.
    pub fn add_expert(variant: &str, sfx: &str) -> Self {
        Self::build("add-expert", Some(variant), sfx)
    }

    pub fn baseline(tag: &str, sfx: &str) -> Self {
        Self::build("baseline", Some(tag), sfx)
    }

    pub fn eval(method: &str, sfx: &str) -> Self {
        Self::build("eval", Some(method), sfx)
    }

    pub fn opt_out(method: &str, sfx: &str) -> Self {
        Self::build("opt-out", Some(method), sfx)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its budget-and-replica suffix.
    fn base(&self) -> &str {
        &self.0[..self.0.len() - self.suffix().len()]
    }

    pub fn kind(&self) -> Kind<'_> {
        let base = self.base();
        let k = base.split_once(':').map_or(base, |(k, _)| k);
        Kind::parse(k).expect("a StageId parses")
    }

    /// The `<what>` of `<kind>:<what>`: a domain, variant, tag or method.
    pub fn what(&self) -> Option<&str> {
        self.base().split_once(':').map(|(_, w)| w)
    }

    /// The budget-and-replica suffix (`#x0.5@1`, `@2`, or "").
    pub fn suffix(&self) -> &str {
        self.0.find(['#', '@']).map_or("", |i| &self.0[i..])
    }

    /// The budget tag (`#x0.5`, or "" for the primary budget) and the replica.
    pub fn tags(&self) -> (String, usize) {
        let sfx = self.suffix();
        let (budget, rep) = match sfx.split_once('@') {
            Some((b, r)) => (b, r.parse().unwrap_or(0)),
            None => (sfx, 0),
        };
        (budget.to_string(), rep)
    }

    /// The domain of an expert stage.
    pub fn expert_domain(&self) -> Option<&str> {
        matches!(self.kind(), Kind::Expert { .. })
            .then(|| self.what())
            .flatten()
    }

    /// The family and the budget-and-replica suffix of an expert stage
    /// (`expert-ffn:math#x0.5@1` → (`expert-ffn`, `#x0.5@1`)): the experts that train together
    /// (one Slurm array).
    pub fn expert_group(&self) -> Option<(String, String)> {
        match self.kind() {
            Kind::Expert { family } => Some((family.to_string(), self.suffix().to_string())),
            _ => None,
        }
    }

    /// Whether the report reads this stage's output (evaluations and opt-out costs).
    pub fn feeds_report(&self) -> bool {
        matches!(self.kind(), Kind::Eval | Kind::OptOut)
    }

    /// Whether this is the seed or one of the experts.
    pub fn is_seed_or_expert(&self) -> bool {
        matches!(self.kind(), Kind::Seed | Kind::Expert { .. })
    }

    /// The method name this stage's model is reported under: `btx` for the primary variant's
    /// finetune, `btx:<v>` for another's, a baseline's tag, else the name without its suffix.
    pub fn method(&self, primary_variant: &str) -> String {
        let base = self.base();
        match (self.kind(), self.what()) {
            (Kind::Finetune, Some(v)) if v == primary_variant => "btx".into(),
            (Kind::Finetune, Some(v)) => format!("btx:{v}"),
            (Kind::Baseline, Some(tag)) => tag.to_string(),
            _ => base.to_string(),
        }
    }
}

/// Why a name is not a stage name.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a stage name: {1}")]
pub struct BadStageId(String, &'static str);

impl FromStr for StageId {
    type Err = BadStageId;
    fn from_str(s: &str) -> Result<Self, BadStageId> {
        let bad = |why| Err(BadStageId(s.to_string(), why));
        let (base, sfx) = s.split_at(s.find(['#', '@']).unwrap_or(s.len()));
        let (budget, replica) = sfx.split_at(sfx.find('@').unwrap_or(sfx.len()));
        if !budget.is_empty()
            && !budget
                .strip_prefix("#x")
                .is_some_and(|f| f.parse::<f64>().is_ok_and(|f| f > 0.0))
        {
            return bad("a budget tag is #x<factor>");
        }
        if !replica.is_empty()
            && !replica
                .strip_prefix('@')
                .is_some_and(|r| r.parse::<usize>().is_ok_and(|r| r > 0))
        {
            return bad("a replica tag is @<n>, n ≥ 1");
        }
        let (kind, what) = match base.split_once(':') {
            Some((k, w)) => (k, Some(w)),
            None => (base, None),
        };
        let Some(kind) = Kind::parse(kind) else {
            return bad("unknown kind");
        };
        match (kind.has_what(), what) {
            (true, Some(w)) if !w.is_empty() => Ok(StageId(s.to_string())),
            (true, _) => bad("this kind names what it is for (<kind>:<what>)"),
            (false, None) => Ok(StageId(s.to_string())),
            (false, Some(_)) => bad("this kind has no :<what>"),
        }
    }
}

impl TryFrom<String> for StageId {
    type Error = BadStageId;
    fn try_from(s: String) -> Result<Self, BadStageId> {
        s.parse()
    }
}

impl From<StageId> for String {
    fn from(id: StageId) -> String {
        id.0
    }
}

/// Padded as a string is (`{:<28}` lines up a table of names).
impl fmt::Display for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// A stage id reads as its name (the dry run prints the dependency lists this way).
impl fmt::Debug for StageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for StageId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StageId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl AsRef<str> for StageId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_read() {
        for (name, kind) in [
            ("data", Kind::Data),
            ("seed", Kind::Seed),
            ("report", Kind::Report),
            ("upcycle#x0.5@2", Kind::Upcycle),
            (
                "expert-ffn:math#x0.5@1",
                Kind::Expert {
                    family: "expert-ffn",
                },
            ),
            ("eval:mix:btx@1", Kind::Eval),
            ("eval:btx:ffn-only+knowledge", Kind::Eval),
            ("opt-out:btx", Kind::OptOut),
            ("baseline:dense-compute#x2", Kind::Baseline),
        ] {
            let id: StageId = name.parse().unwrap();
            assert_eq!(id.to_string(), name);
            assert_eq!(id.kind(), kind, "{name}");
        }
        let e: StageId = "expert-ffn:math#x0.5@1".parse().unwrap();
        assert_eq!(e.expert_domain(), Some("math"));
        assert_eq!(e.tags(), ("#x0.5".to_string(), 1));
        assert_eq!(
            e.expert_group(),
            Some(("expert-ffn".into(), "#x0.5@1".into()))
        );
        let ev: StageId = "eval:mix:btx@1".parse().unwrap();
        assert_eq!(ev.what(), Some("mix:btx"));
        assert_eq!(ev.suffix(), "@1");
        assert!(ev.feeds_report() && ev.expert_domain().is_none());
        assert_eq!(StageId::finetune("btx", "@2").method("btx"), "btx");
        assert_eq!(StageId::finetune("no-lb", "").method("btx"), "btx:no-lb");
        assert_eq!(
            StageId::baseline("dense-data", "#x2").method("btx"),
            "dense-data"
        );
        assert_eq!(StageId::mix("btx", "@1").method("btx"), "mix:btx");
        assert_eq!(
            StageId::expert("expert", "code", "@1").to_string(),
            "expert:code@1"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "bogus",
            "mix",
            "mix:",
            "seed:x",
            "data@0",
            "eval:x#0.5",
            "eval:x@y",
            "expert",
            "report#x",
        ] {
            assert!(bad.parse::<StageId>().is_err(), "{bad:?} parsed");
        }
        let r: Result<StageId, _> = serde_json::from_str("\"finetune\"");
        assert!(r.is_err());
    }
}
