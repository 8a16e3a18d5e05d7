//! Parity with Hugging Face transformers on the hf-tiny fixtures (made by transformers 5.23):
//! logits, losses, router logits and every parameter's gradient.

use std::path::PathBuf;

use btx_model::burn::prelude::*;
use btx_model::compare::compare_all;
use btx_model::io::read_all;
use btx_model::probe::probe;
use btx_model::{Model, TensorReader};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/hf-tiny")
        .join(name)
}

fn run(name: &str) {
    let dir = fixture(name);
    let refp = dir.join("reference.safetensors");
    let reference = read_all(&refp).unwrap();
    let (shape, ids) = TensorReader::open(&refp)
        .unwrap()
        .read_i64("input_ids")
        .unwrap();
    let (b, t) = (shape[0], shape[1]);
    let dev = Device::flex().autodiff();
    let model = Model::load(&dir.join("model"), &Device::flex())
        .unwrap()
        .to_device(&dev);
    let ours = probe(&model, &ids, b, t, true, 0.01);
    let (diffs, errors) = compare_all(&ours, &reference);
    assert!(errors.is_empty(), "{errors:?}");
    let mut failures = vec![];
    let mut worst_grad = (0.0, String::new());
    for d in &diffs {
        let ok = match d.name.as_str() {
            "logits" => d.max_abs <= 1e-4,
            n if n.starts_with("router_logits.") => d.max_abs <= 1e-4,
            n if n.starts_with("grad.") => {
                if d.rel_norm > worst_grad.0 {
                    worst_grad = (d.rel_norm, d.name.clone());
                }
                d.rel_norm <= 1e-3
            }
            // lm_loss, total_loss, hf_aux_loss, lb_paper_per_layer
            _ => d.rel_max <= 1e-5,
        };
        if !d.name.starts_with("grad.") {
            println!(
                "{name} {:<22} max_abs {:.3e} rel {:.3e}",
                d.name, d.max_abs, d.rel_max
            );
        }
        if !ok {
            failures.push(format!("{d:?}"));
        }
    }
    println!(
        "{name} gradients: {} compared, worst rel-to-norm {:.3e} ({})",
        diffs.iter().filter(|d| d.name.starts_with("grad.")).count(),
        worst_grad.0,
        worst_grad.1
    );
    assert!(failures.is_empty(), "{failures:#?}");
    // Every parameter receives a non-zero gradient.
    for (n, g) in &ours {
        if n.starts_with("grad.") {
            assert!(
                g.data.iter().any(|x| *x != 0.0),
                "{n} has an all-zero gradient"
            );
        }
    }
}

#[test]
fn llama_matches_transformers() {
    run("llama");
}

#[test]
fn mixtral_matches_transformers() {
    run("mixtral");
}
