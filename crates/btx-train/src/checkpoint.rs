//! Checkpoints that never lie: each is written into a temporary directory, `DONE` is written
//! last (a record of every file beside it: size and edge hash), everything is fsynced, and only
//! then is the directory renamed to `step-<8 digits>`. A resume only ever reads a directory that
//! has `DONE` and still holds what it records.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use btx_core::outdir::{Existing, OutDir};
use btx_core::record::OutputRecord;
use btx_model::io::{read_all, write_tensors};
use btx_model::Model;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{TrainerConfig, RESUME_MAY_CHANGE};
use crate::error::{io_err, TrainError};
use crate::optim::AdamW;

pub const DONE: &str = "DONE";

/// What a checkpoint stores besides weights and optimizer moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Completed optimizer steps.
    pub step: usize,
    /// AdamW's bias-correction step.
    pub optimizer_t: u64,
    /// The data source's cursor.
    pub data_cursor: Value,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Training wall time so far (seconds, summed over resumes).
    pub elapsed_s: f64,
    /// The trainer config the run was started with (a resume checks it is unchanged).
    pub config: Value,
}

pub fn step_dir_name(step: usize) -> String {
    format!("step-{step:08}")
}

/// What a checkpoint's `DONE` records: every file beside it (size and edge hash).
const PARTS: [&str; 3] = ["model", "optimizer.safetensors", "state.json"];
/// Files a checkpoint cannot be without (besides the model's weights, whole or sharded).
const REQUIRED: [&str; 3] = ["model/config.json", "optimizer.safetensors", "state.json"];

/// Whether the checkpoint in `dir` holds what its `DONE` promises: `None` when it does, else
/// what is wrong. A `DONE` that records its files has each of them checked, and must record
/// every file a checkpoint needs; an older `ok` is taken as far as the files are there.
pub fn problem(dir: &Path) -> Option<String> {
    let text = match fs::read_to_string(dir.join(DONE)) {
        Ok(t) => t,
        Err(e) => return Some(format!("{DONE}: {e}")),
    };
    let weights = [
        "model/model.safetensors",
        "model/model.safetensors.index.json",
    ];
    if text.trim() == "ok" {
        if let Some(f) = REQUIRED.iter().find(|f| !dir.join(f).is_file()) {
            return Some(format!("{f} is missing"));
        }
        if !weights.iter().any(|f| dir.join(f).is_file()) {
            return Some("model/model.safetensors is missing".into());
        }
        return None;
    }
    let record = match serde_json::from_str::<OutputRecord>(&text) {
        Ok(r) => r,
        Err(e) => return Some(format!("{DONE} is not a record of its files ({e})")),
    };
    if let Some(f) = REQUIRED.iter().find(|f| !record.files.contains_key(**f)) {
        return Some(format!("{DONE} does not record {f}"));
    }
    if !weights.iter().any(|f| record.files.contains_key(*f)) {
        return Some(format!("{DONE} does not record the model's weights"));
    }
    record.verify(dir)
}

/// The `step-*` directories under `dir` that have `DONE`, newest first.
fn finished(dir: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut done: Vec<(usize, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            let p = e.path();
            p.join(DONE).is_file().then_some((step, p))
        })
        .collect();
    done.sort_by_key(|d| std::cmp::Reverse(d.0));
    done
}

fn pass_over(p: &Path, why: &str) {
    tracing::warn!(
        "checkpoint {} is broken ({why}); passing over it",
        p.display()
    );
}

/// Newest `step-*` directory under `dir` that has `DONE` and holds what it promises; a newer
/// one that does not (a file truncated or removed since) is passed over with a warning, so a
/// resume falls back to the checkpoint before it instead of failing on it forever.
pub fn find_latest(dir: &Path) -> Option<(usize, PathBuf)> {
    finished(dir).into_iter().find(|(_, p)| match problem(p) {
        None => true,
        Some(why) => {
            pass_over(p, &why);
            false
        }
    })
}

/// The newest checkpoint under `dir` that holds what its `DONE` promises and loads, read back;
/// newer ones that do not are passed over with a warning.
pub fn load_latest(
    dir: &Path,
    dev: &btx_model::burn::prelude::Device,
) -> Option<(PathBuf, Loaded)> {
    for (_, p) in finished(dir) {
        if let Some(why) = problem(&p) {
            pass_over(&p, &why);
            continue;
        }
        match load(&p, dev) {
            Ok(l) => return Some((p, l)),
            Err(e) => pass_over(&p, &e.to_string()),
        }
    }
    None
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    use std::io::Write;
    let mut f = fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// Refuses a model holding NaN or Inf (nothing non-finite is ever written as a checkpoint or a
/// model: resuming from it could only fail again).
pub fn check_finite(model: &Model, dest: &Path) -> Result<(), TrainError> {
    let mut bad = None;
    model.visit(|name, t| {
        if bad.is_none() && btx_model::to_vec(t.clone()).iter().any(|x| !x.is_finite()) {
            bad = Some(name.to_string());
        }
    });
    match bad {
        Some(name) => Err(TrainError::NonFinite {
            path: dest.to_path_buf(),
            name,
        }),
        None => Ok(()),
    }
}

/// Writes `dir/checkpoints/step-N` atomically and prunes all but the newest `keep`.
pub fn save(
    ckpt_root: &Path,
    model: &Model,
    opt: &AdamW,
    state: &CheckpointState,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    let name = step_dir_name(state.step);
    check_finite(model, &ckpt_root.join(&name))?;
    // Written beside its final name and renamed into place whole (DONE last inside it).
    let staged = OutDir::create(&ckpt_root.join(&name), &[], Existing::Replace)?;
    let tmp = staged.path();
    model.save(&tmp.join("model"), usize::MAX)?;
    let shapes: BTreeMap<String, Vec<usize>> = btx_model::names::param_specs(&model.cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    write_tensors(&tmp.join("optimizer.safetensors"), &opt.export(&shapes))?;
    write_synced(
        &tmp.join("state.json"),
        serde_json::to_string_pretty(state)
            .expect("json")
            .as_bytes(),
    )?;
    let record = OutputRecord::of(tmp, &PARTS.map(String::from))?;
    write_synced(
        &tmp.join(DONE),
        serde_json::to_string_pretty(&record)
            .expect("json")
            .as_bytes(),
    )?;
    let fin = staged.commit()?;
    prune(ckpt_root, keep.max(1));
    Ok(fin)
}

/// Removes older complete checkpoints beyond `keep`, and leftovers of interrupted writes.
fn prune(root: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut done = vec![];
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            // Another live process never writes here (one trainer per run directory).
            let _ = fs::remove_dir_all(e.path());
        } else if let Some(s) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            // A checkpoint that no longer holds what its DONE records is no checkpoint.
            if e.path().join(DONE).is_file() && problem(&e.path()).is_none() {
                done.push((s, e.path()));
            } else {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    done.sort();
    let n = done.len();
    for (_, p) in done.into_iter().take(n.saturating_sub(keep)) {
        let _ = fs::remove_dir_all(p);
    }
}

/// Everything read back from a checkpoint.
pub struct Loaded {
    pub model: Model,
    pub state: CheckpointState,
    pub moments: std::collections::HashMap<String, btx_model::HostTensor>,
}

pub fn load(dir: &Path, dev: &btx_model::burn::prelude::Device) -> Result<Loaded, TrainError> {
    let model = Model::load(&dir.join("model"), dev)?;
    let sp = dir.join("state.json");
    let text = fs::read_to_string(&sp).map_err(|e| io_err(&sp, e))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path: sp.clone(),
        msg: e.to_string(),
    })?;
    let moments = read_all(&dir.join("optimizer.safetensors"))?;
    Ok(Loaded {
        model,
        state,
        moments,
    })
}

/// The run state of the checkpoint in `dir` (its `state.json`), without reading its tensors:
/// what a command checks before it writes anything.
pub fn read_state(dir: &Path) -> Result<CheckpointState, TrainError> {
    let sp = dir.join("state.json");
    let text = fs::read_to_string(&sp).map_err(|e| io_err(&sp, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Corrupt {
        path: sp,
        msg: e.to_string(),
    })
}

/// A trainer config as a checkpoint records it.
pub fn config_json(cfg: &TrainerConfig) -> Value {
    serde_json::to_value(cfg).expect("config serialises")
}

/// The settings that differ between the checkpoint in `dir` (its `state`) and `cfg`, as
/// (dotted key, old, new); refused when one of them is outside [`RESUME_MAY_CHANGE`].
pub fn resume_changes(
    dir: &Path,
    state: &CheckpointState,
    cfg: &TrainerConfig,
) -> Result<Vec<(String, String, String)>, TrainError> {
    let changes = config_changes(&state.config, &config_json(cfg));
    if let Some((key, old, new)) = changes
        .iter()
        .find(|(k, ..)| !RESUME_MAY_CHANGE.contains(&k.as_str()))
    {
        return Err(TrainError::ConfigChanged {
            dir: dir.to_path_buf(),
            what: format!(
                "{key}: {old} -> {new}; on resume only {} may change",
                RESUME_MAY_CHANGE.join(", ")
            ),
        });
    }
    Ok(changes)
}

/// Every leaf that differs between two configs, as (dotted key, old, new).
fn config_changes(a: &Value, b: &Value) -> Vec<(String, String, String)> {
    fn walk(prefix: &str, a: &Value, b: &Value, out: &mut Vec<(String, String, String)>) {
        match (a.as_object(), b.as_object()) {
            (Some(x), Some(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    let null = Value::Null;
                    walk(
                        &key,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push((prefix.to_string(), a.to_string(), b.to_string())),
            _ => {}
        }
    }
    let mut out = vec![];
    walk("", a, b, &mut out);
    out
}
