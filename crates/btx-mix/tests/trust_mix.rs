//! Issue 28 (trust, second pass): what a MiX or an average compares instead of copying from the
//! first model, the expert names it accepts, and what it refuses before writing anything.

use std::path::{Path, PathBuf};

use btx_mix::router::mean_inputs;
use btx_mix::{average, mix, MixOptions, MixSpec, RouterInitKind};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;

fn cfg() -> ModelConfig {
    ModelConfig::llama(50, 16, 24, 1, 4, 2, 64)
}

fn make(dir: &Path, seed: u64, cfg: &ModelConfig) -> PathBuf {
    Model::init(cfg, seed, &Device::flex())
        .unwrap()
        .save(dir, usize::MAX)
        .unwrap();
    dir.to_path_buf()
}

fn opts(labels: Option<&[&str]>, generalist: bool) -> MixOptions {
    MixOptions {
        spec: MixSpec {
            generalist,
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        labels: labels.map(|l| l.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

/// The output took the first model's max_position_embeddings, special tokens and window
/// whatever the others said. Each is now compared, named with both values and both paths,
/// for a MiX and for an average; and nothing is written.
#[test]
fn every_config_field_that_must_agree_is_compared() {
    let d = Scratch::new("trust-mix-fields");
    let seed = make(&d.join("seed"), 0, &cfg());
    type Change = fn(&mut ModelConfig);
    let cases: [(&str, Change, &str, &str); 5] = [
        (
            "max_position_embeddings",
            |c| c.max_position_embeddings = 32,
            "32",
            "64",
        ),
        ("eos_token_id", |c| c.eos_token_id = Some(3), "3", "null"),
        ("bos_token_id", |c| c.bos_token_id = Some(1), "1", "null"),
        (
            "sliding_window",
            |c| c.sliding_window = Some(16),
            "16",
            "null",
        ),
        (
            "attention_dropout",
            |c| c.attention_dropout = 0.1,
            "0.1",
            "0.0",
        ),
    ];
    for (key, change, theirs, ours) in cases {
        let mut c = cfg();
        change(&mut c);
        let other = make(&d.join(key), 1, &c);
        let out = d.join(format!("out-{key}"));
        let e = mix(
            &seed,
            std::slice::from_ref(&other),
            &opts(None, false),
            &out,
        )
        .unwrap_err()
        .to_string();
        let want = format!(
            "{} has {key} = {theirs}, but {} has {key} = {ours}",
            other.display(),
            seed.display()
        );
        assert!(e.contains(&want), "{want:?} not in {e}");
        assert!(e.contains("\nhint: "), "{e}");
        let e = average(&[seed.clone(), other], None, &out, Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{key} not in {e}");
        assert!(
            !out.exists(),
            "{key}: a refused merge wrote {}",
            out.display()
        );
        // Nothing beside it either (no staging directory left behind).
        let left: Vec<_> = std::fs::read_dir(&*d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// `--domains 1 0` made experts named "1" and "0" that `--drop 1` then confused with
/// positions; `--domains math math` and a domain called generalist beside the generalist were
/// accepted. All are refused by name, with a wording that does not blame the config.
#[test]
fn expert_names_are_unique_and_never_numbers() {
    let d = Scratch::new("trust-mix-names");
    let seed = make(&d.join("seed"), 0, &cfg());
    let a = make(&d.join("a"), 1, &cfg());
    let b = make(&d.join("b"), 2, &cfg());
    let experts = [a, b];
    let out = d.join("out");
    for (labels, generalist, needle) in [
        (&["1", "0"][..], false, "must not be a number"),
        (&["math", "math"][..], false, "given twice"),
        (
            &["math", "generalist"][..],
            true,
            "reserved for the generalist",
        ),
        // Reserved without the generalist too: prune-experts would take it for the seed's FFN.
        (
            &["math", "generalist"][..],
            false,
            "reserved for the generalist",
        ),
        (&["math", ""][..], false, "must not be empty"),
    ] {
        let e = mix(&seed, &experts, &opts(Some(labels), generalist), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{labels:?}: {needle:?} not in {e}");
        assert!(e.contains("\nhint: "), "{e}");
        assert!(!e.contains("invalid model config"), "{e}");
        assert!(!out.exists());
    }
    // Directory names that are numbers do not become names: numbered names instead.
    let one = make(&d.join("1"), 3, &cfg());
    let zero = make(&d.join("0"), 4, &cfg());
    let out2 = d.join("out2");
    let s = mix(&seed, &[one, zero], &opts(None, false), &out2).unwrap();
    assert_eq!(s.labels, ["expert-0", "expert-1"]);
    assert_eq!(
        ModelConfig::load(&out2.join("config.json"))
            .unwrap()
            .expert_labels,
        ["expert-0", "expert-1"]
    );
}

/// Infinite weights made every averaged tensor inf / inf = NaN; a NaN router scale made NaN
/// routers.
#[test]
fn weights_and_router_scales_must_be_finite() {
    let d = Scratch::new("trust-mix-weights");
    let seed = make(&d.join("seed"), 0, &cfg());
    let a = make(&d.join("a"), 1, &cfg());
    let out = d.join("out");
    let e = average(
        &[seed.clone(), a.clone()],
        Some(&vec![f64::INFINITY, 1.0]),
        &out,
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("finite"), "{e}");
    let mut o = opts(None, true);
    o.spec.weights = vec![1.0, f64::INFINITY];
    assert!(mix(&seed, std::slice::from_ref(&a), &o, &out)
        .unwrap_err()
        .to_string()
        .contains("finite"));
    for (std, scale) in [(f64::NAN, 4.0), (0.02, f64::INFINITY), (-1.0, 4.0)] {
        let spec = MixSpec {
            router_std: std,
            router_scale: scale,
            ..MixSpec::default()
        };
        let p = spec.problems(2, Some(24)).join("; ");
        assert!(p.contains("must be a finite number >= 0"), "{p}");
    }
    assert!(!out.exists());
}

/// A tied seed whose file also holds a different lm_head.weight: loading refuses it, so the
/// merge (which streams tensors without loading) must too.
#[test]
fn a_merge_refuses_what_loading_refuses() {
    let d = Scratch::new("trust-mix-tied");
    let seed = make(&d.join("seed"), 0, &cfg());
    let mut c = cfg();
    c.tie_word_embeddings = true;
    let a = make(&d.join("a"), 1, &cfg());
    c.save(&seed.join("config.json")).unwrap();
    c.save(&a.join("config.json")).unwrap();
    let out = d.join("out");
    let e = mix(&seed, &[a], &opts(None, false), &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm_head.weight") && e.contains("tie_word_embeddings"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Router initialisation ran forward passes that panicked on a window past the model's
/// sliding window; now it refuses before the first.
#[test]
fn router_initialisation_refuses_windows_past_the_sliding_window() {
    let mut c = cfg();
    c.sliding_window = Some(8);
    let m = Model::init(&c, 0, &Device::flex()).unwrap();
    let e = match mean_inputs(&m, &[vec![1; 12]]) {
        Ok(_) => panic!("a 12-token window past an 8-token sliding window was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("sliding_window of 8") && e.contains("\nhint: "),
        "{e}"
    );
    assert!(mean_inputs(&m, &[vec![1; 8]]).is_ok());
    assert!(mean_inputs(&m, &[vec![50; 4]])
        .err()
        .unwrap()
        .to_string()
        .contains("vocabulary"));
}

/// A NaN in one expert's weights went into the merged model unnoticed.
#[test]
fn a_source_with_a_non_finite_weight_is_refused() {
    let d = Scratch::new("trust-mix-nan");
    let seed = make(&d.join("seed"), 0, &cfg());
    let a = make(&d.join("a"), 1, &cfg());
    let mut params = Model::init(&cfg(), 1, &Device::flex())
        .unwrap()
        .host_params();
    for (name, t) in &mut params {
        if name.ends_with("mlp.up_proj.weight") || name.ends_with("self_attn.q_proj.weight") {
            t.data[7] = f32::INFINITY;
        }
    }
    let raw: Vec<(&str, Vec<usize>, Vec<f32>)> = params
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape.clone(), t.data.clone()))
        .collect();
    btx_testkit::write_raw_f32_safetensors(&a.join("model.safetensors"), &raw);
    for generalist in [false, true] {
        let out = d.join("out");
        let mut o = opts(None, generalist);
        o.spec.top_k = 1;
        let e = mix(&seed, std::slice::from_ref(&a), &o, &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("non-finite") && e.contains("\nhint: "), "{e}");
        assert!(!out.exists());
    }
}
