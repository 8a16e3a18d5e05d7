//! Parity with Hugging Face transformers on the hf-tiny fixtures (made by transformers 5.23):
//! logits, losses, router logits and every parameter's gradient; plus checkpoints made by
//! scripts/hf_parity.py (testdata/hf-extra).

use std::path::PathBuf;

use btx_model::burn::prelude::*;
use btx_model::compare::compare_all;
use btx_model::io::read_all;
use btx_model::probe::probe;
use btx_model::{Model, TensorReader};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// Returns how many parameters had an all-zero reference gradient.
fn run(dir: &std::path::Path) -> usize {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
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
        if d.name.starts_with("grad.") && d.rel_norm > worst_grad.0 {
            worst_grad = (d.rel_norm, d.name.clone());
        }
        let ok = d.within_parity();
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
    // Every parameter receives a non-zero gradient (except an expert no token was routed to,
    // which transformers leaves at zero too).
    let mut unrouted = 0;
    for (n, g) in &ours {
        if n.starts_with("grad.") {
            let ours_zero = g.data.iter().all(|x| *x == 0.0);
            let ref_zero = reference[n].data.iter().all(|x| *x == 0.0);
            assert!(!ours_zero || ref_zero, "{n} has an all-zero gradient");
            unrouted += ref_zero as usize;
        }
    }
    unrouted
}

#[test]
fn llama_matches_transformers() {
    assert_eq!(run(&testdata().join("hf-tiny/llama")), 0);
}

#[test]
fn mixtral_matches_transformers() {
    assert_eq!(run(&testdata().join("hf-tiny/mixtral")), 0);
}

/// Checkpoints made by scripts/hf_parity.py with shapes the code was not written against:
/// head_dim != hidden / heads, GQA 4:1, tied embeddings, bf16 weights, sharded files, 8 experts
/// with top-3.
#[test]
fn unseen_checkpoints_match_transformers() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("hf-extra"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4);
    for d in dirs {
        run(&d);
    }
}

/// The families btx reads beyond Llama and Mixtral, made by scripts/hf_families.py with
/// transformers 5.25: Llama 3 RoPE (both bands and the smoothing between them), linear
/// (written in transformers 4.x's spelling), dynamic (within max_position_embeddings), YaRN
/// (derived and given attention factors, truncated and not), Mistral's window, Qwen2's q/k/v
/// biases (tied and untied, bf16, sharded) and Qwen3's per-head q/k norms with a head_dim of its
/// own. Logits, loss and every gradient as above, and greedy cached generation token for token.
#[test]
fn families_match_transformers() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("hf-family"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 11, "{dirs:?}");
    for d in dirs {
        assert_eq!(run(&d), 0, "{}", d.display());
        generates_as_transformers(&d);
    }
}

fn generates_as_transformers(dir: &std::path::Path) {
    let refp = dir.join("reference.safetensors");
    let r = TensorReader::open(&refp).unwrap();
    let (_, prompt) = r.read_i64("gen.prompt").unwrap();
    let (_, want) = r.read_i64("gen.tokens").unwrap();
    let model = Model::load(&dir.join("model"), &Device::flex()).unwrap();
    let greedy = btx_model::generate::Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };
    let got = btx_model::generate::generate_checked(
        &model,
        &[prompt],
        want.len(),
        &greedy,
        None,
        |_, _| false,
    )
    .unwrap();
    assert_eq!(got[0], want, "{}: greedy cached generation", dir.display());
}

/// btx's own MiX of each family (made by scripts/hf_moe_check.py with `btx mix`: two perturbed
/// experts and the seed), loaded by transformers 5.25 as MixtralForCausalLM,
/// Qwen2MoeForCausalLM or Qwen3MoeForCausalLM without remote code: its logits, losses, router
/// logits, every gradient and greedy cached generation are btx's.
#[test]
fn family_moes_written_by_btx_match_transformers() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("hf-moe"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "{dirs:?}");
    for d in dirs {
        run(&d);
        generates_as_transformers(&d);
    }
}
