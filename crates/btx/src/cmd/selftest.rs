//! `btx selftest`: does this build, on this device, compute what transformers computes? Runs
//! every reference fixture under `--testdata` (a model/ and the outputs transformers gave:
//! logits, losses, router logits, every gradient) and the golden PyTorch training trajectory,
//! against the tolerances the CPU tests hold (`Diff::within_parity`, `btx_train::golden`). What
//! `scripts/gpu-check.sh` runs first on a GPU.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use btx_model::burn::prelude::Device;
use btx_model::compare::compare_all;
use btx_model::io::read_all;
use btx_model::probe::probe;
use btx_model::{Model, TensorReader};

#[derive(clap::Args)]
pub struct Args {
    /// The fixtures: every directory below holding model/ and reference.safetensors (parity),
    /// or trajectory.safetensors (the golden training run).
    #[arg(long, default_value = "testdata")]
    testdata: PathBuf,
}

/// Directories below `root` (itself included) holding `file`, sorted.
fn fixtures(root: &Path, file: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        if d.join(file).is_file() && d.join("model").is_dir() {
            out.push(d.clone());
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name() != "model" {
                    todo.push(e.path());
                }
            }
        }
    }
    out.sort();
    out
}

/// Forward + backward of one fixture; the failures (empty = parity).
fn parity(dir: &Path, dev: &Device, name: &str) -> Result<Vec<String>> {
    let refp = dir.join("reference.safetensors");
    let reference = read_all(&refp).with_context(|| format!("reading {}", refp.display()))?;
    let (shape, ids) = TensorReader::open(&refp)?.read_i64("input_ids")?;
    let [b, t] = shape[..] else {
        bail!(
            "{}: input_ids has shape {shape:?}, not [B, T]",
            refp.display()
        );
    };
    let ad = dev.clone().autodiff();
    let model = Model::load(&dir.join("model"), dev)?.to_device(&ad);
    let ours = probe(&model, &ids, b, t, true, 0.01);
    let (diffs, mut failures) = compare_all(&ours, &reference);
    let worst = |p: &dyn Fn(&str) -> bool, f: &dyn Fn(&btx_model::compare::Diff) -> f64| {
        diffs
            .iter()
            .filter(|d| p(&d.name))
            .map(|d| (f(d), d.name.as_str()))
            .fold((0.0, ""), |a, b| if b.0 > a.0 { b } else { a })
    };
    let logits = worst(&|n| n == "logits", &|d| d.max_abs);
    let grad = worst(&|n| n.starts_with("grad."), &|d| d.rel_norm);
    let loss = worst(&|n| n.ends_with("loss"), &|d| d.rel_max);
    outln!(
        "{name:<44} logits {:.1e}  loss {:.1e}  worst gradient {:.1e} ({})",
        logits.0,
        loss.0,
        grad.0,
        grad.1.trim_start_matches("grad.")
    );
    failures.extend(diffs.iter().filter(|d| !d.within_parity()).map(|d| {
        format!(
            "{name}: {} max-abs {:.2e}, relative to its norm {:.2e}",
            d.name, d.max_abs, d.rel_norm
        )
    }));
    Ok(failures)
}

pub fn run(a: Args, dev: &Device, device: &str) -> Result<()> {
    let parity_dirs = fixtures(&a.testdata, "reference.safetensors");
    let golden_dirs = fixtures(&a.testdata, "trajectory.safetensors");
    if parity_dirs.is_empty() && golden_dirs.is_empty() {
        bail!(
            "{} holds no fixtures (directories with model/ and reference.safetensors or trajectory.safetensors)\nhint: pass the repository's testdata/ with --testdata",
            a.testdata.display()
        );
    }
    outln!(
        "btx selftest on {device}: {} parity fixtures, {} golden trajectories (tolerances: logits 1e-4 max-abs, gradients 1e-3 of their norm, losses 1e-5 relative)",
        parity_dirs.len(),
        golden_dirs.len()
    );
    let name_of = |d: &Path| {
        d.strip_prefix(&a.testdata)
            .unwrap_or(d)
            .display()
            .to_string()
    };
    let mut failures = vec![];
    for d in &parity_dirs {
        failures.extend(parity(d, dev, &name_of(d))?);
    }
    for d in &golden_dirs {
        let name = name_of(d);
        let r = btx_train::golden::replay(d, dev)
            .with_context(|| format!("replaying the golden run in {}", d.display()))?;
        let worst = |f: &dyn Fn(&btx_train::golden::GoldenStep) -> f64| {
            r.steps.iter().map(f).fold(0.0, f64::max)
        };
        outln!(
            "{:<44} {} steps: loss {:.1e}, lr {:.1e}, grad norm {:.1e} relative; final weights {:.1e} max-abs ({})",
            format!("{name} (golden training run)"),
            r.steps.len(),
            worst(&|s| s.rel_loss),
            worst(&|s| s.rel_lr),
            worst(&|s| s.rel_grad_norm),
            r.worst_weight.as_ref().map_or(0.0, |w| w.max_abs),
            r.worst_weight.as_ref().map_or("", |w| w.name.as_str())
        );
        failures.extend(r.failures.iter().map(|f| format!("{name}: {f}")));
    }
    if !failures.is_empty() {
        for f in &failures {
            outln!("FAIL {f}");
        }
        bail!(
            "{} value(s) outside the tolerances on {device}\nhint: the CPU build passes these (cargo test --release); on a GPU, compare with `btx --device cpu selftest`",
            failures.len()
        );
    }
    outln!("PASS: every fixture within the CPU tolerances on {device}");
    Ok(())
}
