//! The golden 6-step PyTorch run (testdata/hf-tiny/llama/trajectory.*: AdamW, warmup + cosine,
//! global-norm clipping), replayed by our trainer on any device and compared step by step and
//! weight by weight. The trajectory tests hold the CPU to it; `btx selftest` holds a GPU build
//! to the same numbers.

use std::path::Path;

use btx_data::{Batch, FixedBatches};
use btx_model::burn::prelude::Device;
use btx_model::compare::Diff;
use btx_model::io::read_all;
use btx_model::{Model, TensorReader};

use crate::{OptimConfig, TrainError, Trainer, TrainerConfig};

/// One step of the replay against the golden one.
#[derive(Clone, Debug)]
pub struct GoldenStep {
    pub loss: f64,
    pub golden_loss: f64,
    /// Relative differences of the loss, learning rate and gradient norm.
    pub rel_loss: f64,
    pub rel_lr: f64,
    pub rel_grad_norm: f64,
}

#[derive(Clone, Debug)]
pub struct GoldenReport {
    pub steps: Vec<GoldenStep>,
    /// The final weight furthest from the golden one (by max-abs).
    pub worst_weight: Option<Diff>,
    /// What exceeded its tolerance; empty = the replay matches.
    pub failures: Vec<String>,
}

/// Tolerances: loss 1e-5 and gradient norm 1e-4 relative, learning rate 1e-6 relative; final
/// weights 5e-5 max-abs and 1e-5 relative to their norm. (PyTorch itself, rerun in f64 or at
/// another thread count, lands 0.6-1e-5 from the golden weights. Adam divides by sqrt(v):
/// where a gradient entry is ~0 its float noise is amplified up to ~lr per step, so the element
/// error is bounded by a fraction of one step and the tensor error relative to its norm.)
const LOSS: f64 = 1e-5;
const LR: f64 = 1e-6;
const GRAD_NORM: f64 = 1e-4;
const WEIGHT_ABS: f64 = 5e-5;
const WEIGHT_REL: f64 = 1e-5;

fn rel(a: f64, b: f32) -> f64 {
    (a - b as f64).abs() / (b as f64).abs()
}

/// Replays the golden run in `dir` (model/, trajectory.safetensors) on `dev`.
pub fn replay(dir: &Path, dev: &Device) -> Result<GoldenReport, TrainError> {
    let tp = dir.join("trajectory.safetensors");
    let corrupt = |msg: String| TrainError::Corrupt {
        path: tp.clone(),
        msg,
    };
    let golden = read_all(&tp)?;
    let (shape, ids) = TensorReader::open(&tp)?.read_i64("batches")?;
    let [steps, b, t] = shape[..] else {
        return Err(corrupt(format!(
            "batches has shape {shape:?}, not [steps, B, T]"
        )));
    };
    let series = |n: &str| {
        golden
            .get(n)
            .map(|x| x.data.clone())
            .filter(|x| x.len() >= steps)
            .ok_or_else(|| corrupt(format!("no {n} tensor of {steps} steps")))
    };
    let (gl, glr, gn) = (series("losses")?, series("lrs")?, series("grad_norms")?);
    let batches = (0..steps)
        .map(|s| Batch {
            ids: ids[s * b * t..(s + 1) * b * t].to_vec(),
            batch: b,
            seq: t,
            domains: vec![],
        })
        .collect();
    let mut data = FixedBatches::new(batches);
    let mut cfg = TrainerConfig {
        optim: OptimConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
            clip_norm: 1.0,
        },
        ..Default::default()
    };
    cfg.train.steps = steps;
    cfg.train.batch_size = b;
    cfg.train.seq_len = t;
    let model = Model::load(&dir.join("model"), dev)?;
    let mut tr = Trainer::new(model, cfg, dev)?;
    let mut report = GoldenReport {
        steps: vec![],
        worst_weight: None,
        failures: vec![],
    };
    for s in 0..steps {
        let st = tr.step(&mut data)?;
        let step = GoldenStep {
            loss: st.loss,
            golden_loss: gl[s] as f64,
            rel_loss: rel(st.loss, gl[s]),
            rel_lr: rel(st.lr, glr[s]),
            rel_grad_norm: rel(st.grad_norm, gn[s]),
        };
        for (what, v, tol) in [
            ("loss", step.rel_loss, LOSS),
            ("lr", step.rel_lr, LR),
            ("grad norm", step.rel_grad_norm, GRAD_NORM),
        ] {
            // NaN fails too.
            if v.is_nan() || v > tol {
                report.failures.push(format!(
                    "step {s}: {what} off by {v:.2e} relative (tolerance {tol:.0e})"
                ));
            }
        }
        report.steps.push(step);
    }
    for (name, t) in tr.model.host_params() {
        let key = format!("final.{name}");
        let g = golden
            .get(&key)
            .ok_or_else(|| corrupt(format!("no {key} tensor")))?;
        let d = Diff::of(&name, &t, g).map_err(corrupt)?;
        let within = d.max_abs < WEIGHT_ABS && d.rel_norm < WEIGHT_REL;
        if !within {
            report.failures.push(format!(
                "final weight {name}: max-abs {:.2e} (tolerance {WEIGHT_ABS:.0e}), relative to its norm {:.2e} ({WEIGHT_REL:.0e})",
                d.max_abs, d.rel_norm
            ));
        }
        if report
            .worst_weight
            .as_ref()
            .is_none_or(|w| d.max_abs.is_nan() || d.max_abs > w.max_abs)
        {
            report.worst_weight = Some(d);
        }
    }
    Ok(report)
}
