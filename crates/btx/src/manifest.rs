//! Per-stage bookkeeping in the run directory: `stage.json` (written when a stage starts: its
//! fingerprint), `manifest.json` (written when it finishes: config, inputs, compute) and `DONE`
//! (written last). A stage without `DONE` is not finished.

use std::path::Path;

use anyhow::{Context, Result};
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

/// Finished with exactly this fingerprint.
pub fn is_done(dir: &Path, fingerprint: &str) -> bool {
    dir.join(DONE).is_file() && read_manifest(dir).is_some_and(|m| m.fingerprint == fingerprint)
}

/// Writes `manifest.json`, then `DONE`.
pub fn finish(dir: &Path, m: &Manifest) -> Result<()> {
    let p = dir.join(MANIFEST);
    std::fs::write(&p, serde_json::to_string_pretty(m)?)
        .with_context(|| format!("writing {}", p.display()))?;
    let d = dir.join(DONE);
    std::fs::write(&d, b"ok\n").with_context(|| format!("writing {}", d.display()))?;
    Ok(())
}
