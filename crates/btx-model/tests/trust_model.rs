//! Issue 28 (trust, second pass): config.json fields that change the math are read as
//! transformers reads them or refused by name; a stored head under a tied config is refused
//! unless it is the embeddings; sequences past a sliding window are refused, never a panic;
//! expert names are names, never positions.

use btx_model::burn::prelude::*;
use btx_model::config::{MoeConfig, Routing};
use btx_model::generate::{generate, Sampling};
use btx_model::io::write_tensors;
use btx_model::{Model, ModelConfig, ModelError, ModelSpec};
use btx_testkit::Scratch;

fn llama_json(extra: &str) -> String {
    format!(
        r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","vocab_size":10,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2{extra}}}"#
    )
}

fn err(text: &str) -> String {
    ModelConfig::from_hf_json(text).unwrap_err().to_string()
}

/// A stored lm_head.weight under tie_word_embeddings = true: transformers uses it, btx used the
/// embeddings, and the logits differed. Identical to the embeddings (many checkpoints save
/// both) it loads; different, it is refused by name with the difference and what to do.
#[test]
fn a_tied_config_over_a_different_stored_head_is_refused() {
    let mut c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    let untied = Model::init(&c, 3, &Device::flex()).unwrap();
    let d = Scratch::new("trust-tied");
    untied.save(&d, usize::MAX).unwrap();
    c.tie_word_embeddings = true;
    c.save(&d.join("config.json")).unwrap();
    let e = Model::load(&d, &Device::flex()).unwrap_err();
    assert!(matches!(e, ModelError::Refused { .. }), "{e:?}");
    let e = e.to_string();
    for needle in [
        "model.safetensors",
        "lm_head.weight",
        "tie_word_embeddings",
        "max abs difference",
        "\nhint: set tie_word_embeddings to false",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }

    // The same file with the head equal to the embeddings: accepted, and tied.
    let tied = Model::init(&c, 3, &Device::flex()).unwrap();
    let mut params = tied.host_params();
    let embed = params[0].1.clone();
    params.push(("lm_head.weight".into(), embed));
    write_tensors(&d.join("model.safetensors"), &params).unwrap();
    let back = Model::load(&d, &Device::flex()).unwrap();
    assert!(back.lm_head.is_none());

    // One value off is enough to refuse.
    let n = params.len() - 1;
    params[n].1.data[5] += 1e-3;
    write_tensors(&d.join("model.safetensors"), &params).unwrap();
    let e = Model::load(&d, &Device::flex()).unwrap_err().to_string();
    assert!(e.contains("1 of 512 values"), "{e}");
}

/// Missing keys take the architecture's own default in transformers: Mixtral's RoPE base is
/// 1e6 and its eps 1e-5, Mistral and Mixtral have 8 KV heads, Mistral's window is 4096 (null:
/// none). btx read 10000, 1e-6, all heads and no window: silently wrong logits.
#[test]
fn missing_keys_take_the_architectures_transformers_defaults() {
    let mixtral = ModelConfig::from_hf_json(
        r#"{"architectures":["MixtralForCausalLM"],"vocab_size":10,"hidden_size":64,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":16,
        "num_local_experts":2,"num_experts_per_tok":1}"#,
    )
    .unwrap();
    assert_eq!(mixtral.rope_theta, 1e6);
    assert_eq!(mixtral.rms_norm_eps, 1e-5);
    assert_eq!(mixtral.num_kv_heads, 8);
    assert_eq!(mixtral.sliding_window, None);
    let mistral = r#"{"architectures":["MistralForCausalLM"],"vocab_size":10,"hidden_size":64,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":16"#;
    let m = ModelConfig::from_hf_json(&format!("{mistral}}}")).unwrap();
    assert_eq!(
        (m.sliding_window, m.num_kv_heads, m.rope_theta),
        (Some(4096), 8, 1e4)
    );
    let m = ModelConfig::from_hf_json(&format!("{mistral},\"sliding_window\":null}}")).unwrap();
    assert_eq!(m.sliding_window, None);
    // transformers' Llama does not read sliding_window: neither does btx.
    let l = ModelConfig::from_hf_json(&llama_json(",\"sliding_window\":4")).unwrap();
    assert_eq!(
        (l.sliding_window, l.num_kv_heads, l.rms_norm_eps),
        (None, 2, 1e-6)
    );
    // Keys transformers ignores for an architecture are ignored: Mistral has no biases.
    assert!(ModelConfig::from_hf_json(&format!("{mistral},\"attention_bias\":true}}")).is_ok());
    assert!(err(&llama_json(",\"attention_bias\":true")).contains("attention_bias"));
    // ACT2FN maps swish to SiLU too.
    assert!(ModelConfig::from_hf_json(&llama_json(",\"hidden_act\":\"swish\"")).is_ok());
}

/// A dense model with a window saves as a Mistral (a Llama would drop the window) and reads
/// back equal.
#[test]
fn a_window_survives_the_round_trip() {
    let mut c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    c.sliding_window = Some(8);
    let j = c.to_hf_json();
    assert_eq!(j["architectures"][0], "MistralForCausalLM");
    assert_eq!(ModelConfig::from_hf_json(&j.to_string()).unwrap(), c);
    // No window: a Mistral written with null, not without the key (4096 by default).
    let mut c = c.clone();
    c.moe = Some(MoeConfig {
        num_experts: 2,
        top_k: 1,
        routing: Routing::TopK,
    });
    c.sliding_window = None;
    let j = c.to_hf_json();
    assert!(j.as_object().unwrap().contains_key("sliding_window"));
    assert_eq!(ModelConfig::from_hf_json(&j.to_string()).unwrap(), c);
}

/// Keys that change the logits in ways btx does not implement, values of the wrong type and
/// values that make NaN are refused by name; before, each was read as a default or as given.
#[test]
fn fields_that_change_the_math_are_refused_by_name() {
    for (extra, needle) in [
        (",\"partial_rotary_factor\":0.5", "partial_rotary_factor"),
        (
            ",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e4,\"partial_rotary_factor\":0.5}",
            "rope_parameters.partial_rotary_factor",
        ),
        (",\"rope_scaling\":{\"type\":\"longrope\",\"factor\":2.0}", "rope type \"longrope\" is not supported"),
        (
            ",\"rope_theta\":5e5,\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e4}",
            "rope_theta",
        ),
        (",\"quantization_config\":{\"quant_method\":\"gptq\"}", "quantization_config"),
        (",\"rms_norm_eps\":\"1e-5\"", "rms_norm_eps must be a number"),
        (",\"rms_norm_eps\":-1e-5", "rms_norm_eps must be a finite number > 0"),
        (",\"rope_theta\":0", "rope_theta must be a finite number > 0"),
        (",\"tie_word_embeddings\":\"true\"", "tie_word_embeddings must be true or false"),
        (",\"eos_token_id\":10", "eos_token_id 10 is outside the vocabulary"),
        (",\"eos_token_id\":\"2\"", "eos_token_id must be a token id"),
        (",\"max_position_embeddings\":0", "max_position_embeddings must be > 0"),
        (",\"attention_dropout\":1.5", "attention_dropout must be in [0, 1]"),
        (",\"hidden_act\":\"gelu\"", "hidden_act"),
        (",\"model_type\":\"mixtral\"", "model_type"),
    ] {
        let json = llama_json(extra).replace(",\"model_type\":\"llama\"", "");
        let e = err(&json);
        assert!(e.contains(needle), "{extra}: {needle:?} not in {e}");
    }
    let e = ModelConfig::from_hf_json(
        r#"{"architectures":["MistralForCausalLM"],"vocab_size":10,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"sliding_window":0}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sliding_window must be > 0"), "{e}");
}

/// Training-time noise btx's trainer does not implement is kept (evaluation is exact without
/// it) and refused for training by name.
#[test]
fn training_noise_is_kept_and_refused_for_training() {
    let c = ModelConfig::from_hf_json(&llama_json(",\"attention_dropout\":0.1")).unwrap();
    assert_eq!(c.attention_dropout, 0.1);
    assert_eq!(
        ModelConfig::from_hf_json(&c.to_hf_json().to_string())
            .unwrap()
            .attention_dropout,
        0.1
    );
    let e = c.check_trainable().unwrap_err().to_string();
    assert!(
        e.contains("attention_dropout = 0.1") && e.contains("\nhint: "),
        "{e}"
    );
    assert!(ModelConfig::llama(8, 8, 8, 1, 2, 2, 8)
        .check_trainable()
        .is_ok());
}

/// A sequence past the sliding window panicked in forward; now the entry points refuse it by
/// name, and generation stops at the window instead of running past it.
#[test]
fn sequences_past_the_window_are_refused_or_stopped() {
    let mut c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    c.sliding_window = Some(6);
    let e = c
        .check_positions(7, "train.seq_len", "lower train.seq_len")
        .unwrap_err()
        .to_string();
    for needle in [
        "train.seq_len",
        "7 positions",
        "sliding_window of 6",
        "\nhint: lower",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    assert!(c.check_positions(6, "x", "y").is_ok());
    let e = c.check_positions(65, "x", "y").unwrap_err().to_string();
    assert!(e.contains("sliding_window"), "{e}");
    c.sliding_window = None;
    let e = c.check_positions(65, "x", "y").unwrap_err().to_string();
    assert!(e.contains("max_position_embeddings of 64"), "{e}");

    c.sliding_window = Some(6);
    let m = Model::init(&c, 1, &Device::flex()).unwrap();
    let out = generate(
        &m,
        &[vec![1, 2, 3, 4]],
        20,
        &Sampling::default(),
        None,
        |_, _| false,
    );
    // 4 prompt positions + 2 fed-back tokens fill the window of 6; the third new token is
    // sampled from the last of them and never fed back.
    assert_eq!(out[0].len(), 3, "generation stops at the window");
}

/// `btx mix --domains 1 0` then `--drop 1` removed the expert named "0": numbers were tried
/// as positions first. Labels that are numbers or name two experts are refused in config.json;
/// a model with names is addressed by name only, with an error that is not "invalid config".
#[test]
fn expert_names_are_names_never_positions() {
    let mut c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    c.moe = Some(MoeConfig {
        num_experts: 4,
        top_k: 1,
        routing: Routing::TopK,
    });
    c.expert_labels = vec!["1".into(), "1".into(), "0".into(), "0".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("btx_experts[0] \"1\"") && e.contains("number"),
        "{e}"
    );
    c.expert_labels = vec!["math".into(), "code".into(), "math".into(), "x".into()];
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("\"math\" for two different experts"), "{e}");
    // Chunks of one split FFN share their name.
    c.expert_labels = vec!["math".into(), "math".into(), "code".into(), "code".into()];
    c.validate().unwrap();
    assert_eq!(c.expert_indices(&["code".into()]).unwrap(), vec![2, 3]);
    let e = c.expert_indices(&["1".into()]).unwrap_err();
    assert!(matches!(e, ModelError::ExpertName { .. }), "{e:?}");
    let e = e.to_string();
    assert!(!e.contains("invalid model config"), "{e}");
    assert!(
        e.contains("[\"math\", \"code\"]") && e.contains("by name"),
        "{e}"
    );
    // Without names, numbers are positions.
    c.expert_labels.clear();
    assert_eq!(c.expert_indices(&["3".into()]).unwrap(), vec![3]);
    let e = c.expert_indices(&["math".into()]).unwrap_err().to_string();
    assert!(e.contains("0 to 3"), "{e}");
}

/// `[model.init]` values that make NaN or are ignored are refused with the key.
#[test]
fn model_init_values_are_checked_by_key() {
    for (spec, needle) in [
        (
            ModelSpec {
                rms_norm_eps: -1e-5,
                ..Default::default()
            },
            "[model.init] rms_norm_eps",
        ),
        (
            ModelSpec {
                rope_theta: f64::NAN,
                ..Default::default()
            },
            "[model.init] rope_theta",
        ),
        (
            ModelSpec {
                routing: Some(Routing::Soft),
                ..Default::default()
            },
            "routing is set but num_experts is 0",
        ),
        (
            ModelSpec {
                num_experts: 2,
                top_k: 3,
                ..Default::default()
            },
            "top_k 3",
        ),
    ] {
        let e = spec.to_config(64, Some(0)).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
}

/// A checkpoint holding a NaN weight loaded, and every evaluation of it reported NaN (or
/// generated from NaN logits) with exit 0. Refused at load, naming the tensor.
#[test]
fn a_checkpoint_with_a_non_finite_weight_is_refused_at_load() {
    let c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    let m = Model::init(&c, 3, &Device::flex()).unwrap();
    let d = Scratch::new("trust-nan");
    let mut params = m.host_params();
    params[3].1.data[2] = f32::NAN;
    let name = params[3].0.clone();
    let raw: Vec<(&str, Vec<usize>, Vec<f32>)> = params
        .iter()
        .map(|(n, t)| (n.as_str(), t.shape.clone(), t.data.clone()))
        .collect();
    btx_testkit::write_raw_f32_safetensors(&d.join("model.safetensors"), &raw);
    c.save(&d.join("config.json")).unwrap();
    let e = Model::load(&d, &Device::flex()).unwrap_err().to_string();
    assert!(
        e.contains(&name) && e.contains("non-finite") && e.contains("\nhint: "),
        "{e}"
    );
}

/// Found by probing: generation from a model whose logits overflow to NaN (finite weights,
/// so loading accepts it) printed tokens sampled from NaN (argmax of NaN is token 0) with exit
/// 0. `generate_checked`, what `btx generate` calls, refuses them.
#[test]
fn generation_from_non_finite_logits_is_refused() {
    let c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    let m = Model::init(&c, 3, &Device::flex()).unwrap();
    let m = m.map(|name, t| {
        if name.ends_with("mlp.up_proj.weight") {
            t.sign() * 3e38
        } else {
            t
        }
    });
    let s = btx_model::generate::Sampling::default();
    let e = btx_model::generate::generate_checked(&m, &[vec![1, 2, 3]], 4, &s, None, |_, _| false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite") && e.contains("\nhint: "), "{e}");
    let sound = Model::init(&c, 3, &Device::flex()).unwrap();
    let out =
        btx_model::generate::generate_checked(&sound, &[vec![1, 2, 3]], 4, &s, None, |_, _| false)
            .unwrap();
    assert_eq!(out[0].len(), 4);
}

/// Found by probing: a config.json claiming 1e8 layers over a small checkpoint listed its
/// parameters (gigabytes) before naming the first missing tensor, and aborted on allocation.
/// The count is compared by arithmetic first.
#[test]
fn a_config_describing_more_than_the_files_hold_is_refused_at_once() {
    let c = ModelConfig::llama(32, 16, 24, 1, 2, 2, 64);
    let d = Scratch::new("trust-layers");
    Model::init(&c, 3, &Device::flex())
        .unwrap()
        .save(&d, usize::MAX)
        .unwrap();
    let mut big = c.clone();
    big.num_layers = 100_000_000;
    big.save(&d.join("config.json")).unwrap();
    let t0 = std::time::Instant::now();
    let e = Model::load(&d, &Device::flex()).unwrap_err().to_string();
    assert!(t0.elapsed().as_secs_f64() < 1.0, "{:?}", t0.elapsed());
    assert!(
        e.contains("describes 100000000 layers") && e.contains("hold 1") && e.contains("\nhint: "),
        "{e}"
    );
}
