//! Per-stage bookkeeping in the run directory: `stage.json` (written when a stage starts: its
//! fingerprint), `manifest.json` (written when it finishes: config, inputs, compute, and the
//! record of its output files and of what it read; see `record.rs`) and `DONE` (written last).
//! A stage without `DONE` is not finished; a stage with `DONE` is finished only if [`check`]
//! says so: its files are what DONE recorded, and what it read is still upstream.

use std::path::Path;

use anyhow::{Context, Result};

use crate::plan::{Plan, Stage};
use crate::run::record::{self, OutputRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const DONE: &str = "DONE";
pub const STARTED: &str = "stage.json";
pub const MANIFEST: &str = "manifest.json";

/// What a stage spent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Compute {
    /// Tokens trained on (0 for stages that do not train).
    pub train_tokens: u64,
    /// Training FLOPs: tokens x (6 x active matmul params + causal attention).
    pub train_flops: f64,
    pub wall_seconds: f64,
    pub tokens_per_s: f64,
    pub total_params: u64,
    pub active_params: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub fingerprint: String,
    /// Upstream stage -> its fingerprint.
    pub inputs: std::collections::BTreeMap<String, String>,
    /// The stage's full configuration.
    pub config: Value,
    pub compute: Compute,
    /// Stage-specific results (final loss, mix summary, ...).
    pub outputs: Value,
    pub btx_version: String,
    pub finished_unix: u64,
    /// Where it ran: `--device` and worker threads.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub threads: usize,
    /// Every output file (size and edge hash); `None` in manifests of btx versions before
    /// output records, whose files cannot be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<OutputRecord>,
    /// Stage name -> digest of what this stage read of it (see `record::reads`).
    #[serde(default)]
    pub reads: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Started {
    pub stage: String,
    pub fingerprint: String,
    pub started_unix: u64,
    pub host: String,
    pub pid: u32,
    /// `--device` and worker threads the stage process runs with.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub threads: usize,
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn read_started(dir: &Path) -> Option<Started> {
    let text = std::fs::read_to_string(dir.join(STARTED)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether a stage is finished, after looking.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// DONE, this fingerprint, every output as recorded, every input as read.
    Done,
    /// DONE from a btx that kept no output record: the files cannot be checked.
    Unrecorded,
    /// No DONE, or DONE for another configuration.
    NotDone,
    /// DONE, but an output is missing or changed (what, in words).
    Broken(String),
    /// DONE, but an upstream stage's outputs changed since this stage read them.
    Stale(String),
}

impl Verdict {
    /// Finished as far as anyone can tell: checked, or from before records existed.
    pub fn is_done(&self) -> bool {
        matches!(self, Verdict::Done | Verdict::Unrecorded)
    }

    /// Why a stage that has DONE must be redone, if it must.
    pub fn redo_reason(&self) -> Option<&str> {
        match self {
            Verdict::Broken(w) | Verdict::Stale(w) => Some(w),
            _ => None,
        }
    }
}

/// Checks a stage's DONE against its files and its inputs (see the module's doc).
pub fn check(plan: &Plan, run: &Path, stage: &Stage) -> Verdict {
    let dir = run.join(&stage.dir);
    if !dir.join(DONE).is_file() {
        return Verdict::NotDone;
    }
    let Some(m) = read_manifest(&dir) else {
        return Verdict::Broken(format!("{}/{MANIFEST} is missing or unreadable", stage.dir));
    };
    if m.fingerprint != stage.fingerprint {
        return Verdict::NotDone;
    }
    let Some(files) = &m.files else {
        // No record to check against: at least what the stage cannot be without must be there.
        return match record::missing_required(stage, |f| run.join(f).is_file()) {
            Some(f) => Verdict::Broken(format!("{f} is missing")),
            None => Verdict::Unrecorded,
        };
    };
    if let Some(f) = record::missing_required(stage, |f| files.files.contains_key(f)) {
        return Verdict::Broken(format!("DONE does not record {f}, which the stage writes"));
    }
    if let Some(problem) = files.verify(run) {
        return Verdict::Broken(problem);
    }
    for (up, full) in record::reads(plan, stage) {
        let now = read_manifest(&run.join(&up.dir))
            .filter(|u| u.fingerprint == up.fingerprint)
            .map(|u| record::digest_of(up, u.files.as_ref(), full));
        if now.is_some() && m.reads.get(up.name.as_str()) != now.as_ref() {
            return Verdict::Stale(format!("{} changed since this stage read it", up.name));
        }
    }
    Verdict::Done
}

/// What `stage` reads of its upstream stages now: recorded in its manifest when it finishes.
pub fn reads_now(
    plan: &Plan,
    run: &Path,
    stage: &Stage,
) -> std::collections::BTreeMap<String, String> {
    record::reads(plan, stage)
        .into_iter()
        .filter_map(|(up, full)| {
            let m = read_manifest(&run.join(&up.dir))?;
            Some((
                up.name.to_string(),
                record::digest_of(up, m.files.as_ref(), full),
            ))
        })
        .collect()
}

/// Writes `stage.json` (atomically).
pub fn start(dir: &Path, s: &Started) -> Result<()> {
    let p = dir.join(STARTED);
    btx_core::atomic::write_file(&p, serde_json::to_string_pretty(s)?.as_bytes())?;
    Ok(())
}

/// Writes `manifest.json`, then `DONE`, each atomically.
pub fn finish(dir: &Path, m: &Manifest) -> Result<()> {
    let p = dir.join(MANIFEST);
    btx_core::atomic::write_file(&p, serde_json::to_string_pretty(m)?.as_bytes())
        .with_context(|| format!("writing {}", p.display()))?;
    let d = dir.join(DONE);
    btx_core::atomic::write_file(&d, b"ok\n")
        .with_context(|| format!("writing {}", d.display()))?;
    Ok(())
}
