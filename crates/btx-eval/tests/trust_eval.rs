//! Issue 28 (trust, second pass): an evaluation that would report NaN, panic in the forward
//! pass, or score prompts that leave no room for an answer is an error naming the domain,
//! raised before the first forward pass where it can be.

use std::path::{Path, PathBuf};

use btx_core::outdir::Existing;
use btx_data::{prepare, DataDir, PrepareConfig};
use btx_eval::lm::{Ensemble, Weighting};
use btx_eval::{evaluate, EvalSpec};
use btx_model::burn::prelude::*;
use btx_model::{Model, ModelConfig};

/// A scratch directory removed on drop (btx-testkit is not a dependency of this crate).
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("btx-trust-eval-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One built-in domain (math, with tasks), a small BPE.
fn data(dir: &Path) -> DataDir {
    let mut c = PrepareConfig::builtin(80, 6, 300, 1);
    c.domains.truncate(1);
    c.val_fraction = 0.2;
    prepare(&c, dir, &dir.join("data"), Existing::Refuse).unwrap();
    DataDir::open(&dir.join("data")).unwrap()
}

fn model(vocab: usize, max_pos: usize) -> Model {
    Model::init(
        &ModelConfig::llama(vocab, 16, 24, 1, 2, 1, max_pos),
        1,
        &Device::flex(),
    )
    .unwrap()
}

fn spec(seq_len: usize, tasks: usize) -> EvalSpec {
    EvalSpec {
        seq_len,
        windows: 4,
        batch: 2,
        tasks,
        task_batch: 4,
        shots: 0,
    }
}

#[test]
fn evaluations_that_cannot_be_right_are_errors_naming_the_domain() {
    let t = Tmp::new("errors");
    let data = data(&t.0);
    let domains = data.domains();
    let v = data.manifest.vocab_size;

    // NaN logits reported "loss NaN" with exit 0.
    let nan = model(v, 64).map(|n, t| {
        if n == "model.norm.weight" {
            t * f32::NAN
        } else {
            t
        }
    });
    let e = evaluate(&nan, &data, &domains, &spec(16, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("domain \"math\"") && e.contains("NaN") && e.contains("\nhint: "),
        "{e}"
    );

    // A window past the sliding window panicked in the forward pass.
    let mut c = model(v, 64).cfg.clone();
    c.sliding_window = Some(8);
    let windowed = Model::init(&c, 1, &Device::flex()).unwrap();
    let e = evaluate(&windowed, &data, &domains, &spec(16, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("eval seq_len 16") && e.contains("sliding_window of 8"),
        "{e}"
    );

    // An ensemble of different vocabularies mixed distributions of different lengths.
    let ens = Ensemble::new(vec![model(v, 64), model(v + 1, 64)], Weighting::Uniform);
    let e = evaluate(&ens, &data, &domains, &spec(16, 0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("different vocabularies"), "{e}");

    // Task prompts with no room for an answer were scored on empty generations: they are left
    // out of the accuracy now, and counted.
    let tok = data.tokenizer().unwrap();
    let tasks = data.tasks("math").unwrap();
    let longest = tasks
        .iter()
        .map(|t| tok.encode(&t.prompt).unwrap().len())
        .max()
        .unwrap();
    // (A prompt of as many tokens as there are positions still has room for one answer token.)
    let short = model(v, longest - 1);
    let r = evaluate(&short, &data, &domains, &spec(2, 6)).unwrap();
    let m = &r.domains["math"];
    assert!(m.tasks_unfit >= 1, "{m:?}");
    assert_eq!(m.tasks + m.tasks_unfit, tasks.len().min(6));
    assert_eq!(m.task_correct.len(), m.tasks);
    // With room, the same evaluation runs.
    let r = evaluate(&model(v, longest + 16), &data, &domains, &spec(2, 6)).unwrap();
    assert!(r.domains["math"].loss.is_finite());
}
