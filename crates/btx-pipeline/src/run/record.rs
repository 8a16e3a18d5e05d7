//! What a pipeline stage promises, and what it read: the output files each stage kind records
//! in its `manifest.json` (a [`OutputRecord`], checked before DONE is believed; see
//! `manifest::check`) and, for each stage whose outputs it read, a digest of that part.

use crate::plan::{Plan, Stage, StageId, StageKind};
pub use btx_core::record::OutputRecord;

/// A stage's outputs, relative to the run directory: everything it promises (checked before
/// DONE is believed), and the part its dependents read (what their record of it covers, so a
/// redone stage whose model came out bit-identical does not force its dependents to redo).
pub fn outputs(stage: &Stage) -> (Vec<String>, Vec<String>) {
    let at = |f: &str| format!("{}/{f}", stage.dir);
    match &stage.kind {
        StageKind::Data { .. } => (vec![at("tokens")], vec![at("tokens")]),
        StageKind::SeedCopy { .. }
        | StageKind::SeedGguf { .. }
        | StageKind::Mix { .. }
        | StageKind::Upcycle { .. }
        | StageKind::Average { .. }
        | StageKind::AddExpert { .. } => (vec![at("model")], vec![at("model")]),
        // The loss curve is the report's; a redone trainer's timings differ, its model need not.
        StageKind::Train { .. } => (vec![at("model"), at("metrics.jsonl")], vec![at("model")]),
        StageKind::Eval { .. } => (vec![at("eval.json")], vec![at("eval.json")]),
        StageKind::OptOut { .. } => (vec![at("optout.json")], vec![at("optout.json")]),
        StageKind::Report => (REPORT_FILES.iter().map(|s| s.to_string()).collect(), vec![]),
    }
}

/// Files a finished stage cannot be without, relative to the run directory: each entry lists
/// alternatives (a model's weights whole or sharded). A record that leaves one out, or a
/// manifest from before records whose stage lacks one, is not believed either.
pub fn required(stage: &Stage) -> Vec<Vec<String>> {
    let at = |f: &str| format!("{}/{f}", stage.dir);
    match &stage.kind {
        StageKind::Data { .. } => vec![
            vec![at("tokens/manifest.json")],
            vec![at("tokens/tokenizer.json")],
        ],
        StageKind::SeedCopy { .. }
        | StageKind::SeedGguf { .. }
        | StageKind::Mix { .. }
        | StageKind::Upcycle { .. }
        | StageKind::Average { .. }
        | StageKind::AddExpert { .. }
        | StageKind::Train { .. } => vec![
            vec![at("model/config.json")],
            vec![
                at("model/model.safetensors"),
                at("model/model.safetensors.index.json"),
            ],
        ],
        StageKind::Eval { .. } => vec![vec![at("eval.json")]],
        StageKind::OptOut { .. } => vec![vec![at("optout.json")]],
        StageKind::Report => vec![vec!["report.md".into()], vec!["results.json".into()]],
    }
}

/// The first required file (see [`required`]) that `has` says is absent, if any.
pub fn missing_required(stage: &Stage, has: impl Fn(&str) -> bool) -> Option<String> {
    required(stage)
        .into_iter()
        .find(|alts| !alts.iter().any(|f| has(f)))
        .map(|alts| alts[0].clone())
}

/// What the report stage writes at the top of the run directory.
pub const REPORT_FILES: [&str; 3] = ["report.md", "results.json", "plots"];

/// The stages whose outputs `stage` reads, and whether it reads all of them (`true`: the
/// report, which also reads the manifests and loss curves of every stage upstream of it) or
/// only what they hand on (its direct dependencies).
pub fn reads<'a>(plan: &'a Plan, stage: &Stage) -> Vec<(&'a Stage, bool)> {
    let find = |n: &StageId| plan.stages.iter().find(|s| s.name == *n);
    match stage.kind {
        StageKind::Report => {
            // Everything upstream, in plan order: never a stage that may still be running
            // beside it.
            let mut seen = std::collections::BTreeSet::new();
            let mut todo: Vec<&StageId> = stage.deps.iter().collect();
            while let Some(n) = todo.pop() {
                if seen.insert(n) {
                    if let Some(s) = find(n) {
                        todo.extend(s.deps.iter());
                    }
                }
            }
            plan.stages
                .iter()
                .filter(|s| seen.contains(&s.name))
                .map(|s| (s, true))
                .collect()
        }
        _ => stage
            .deps
            .iter()
            .filter_map(&find)
            .map(|s| (s, false))
            .collect(),
    }
}

/// What `stage` records of `upstream`'s outputs, from `upstream`'s manifest.
pub fn digest_of(upstream: &Stage, record: Option<&OutputRecord>, full: bool) -> String {
    match record {
        // Finished by a btx that kept no record: nothing to compare but the fingerprint.
        None => format!("unrecorded:{}", upstream.fingerprint),
        Some(r) if full => r.digest(&[]),
        Some(r) => r.digest(&outputs(upstream).1),
    }
}
