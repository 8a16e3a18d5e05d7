//! Reading the families' config.json as transformers does: every default of each config class
//! against what transformers 5.25 builds (testdata/hf-defaults, from scripts/hf_families.py),
//! the refusals of what btx does not compute, and the round trip of each family's config.

use std::path::PathBuf;

use btx_model::config::{Family, RopeScaling};
use btx_model::ModelConfig;
use serde_json::{json, Value};

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

/// For each config class: a config.json with only the keys btx requires (sizes, from
/// transformers' own defaults) must give every other value as transformers' default.
#[test]
fn defaults_are_transformers_defaults_per_class() {
    let dir = testdata().join("hf-defaults");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let model_type = d["model_type"].as_str().unwrap();
        let moe = ["mixtral", "qwen2_moe", "qwen3_moe"].contains(&model_type);
        let mut minimal = json!({ "model_type": model_type });
        for key in [
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        ] {
            minimal[key] = d[key].clone();
        }
        // What btx computes of a Qwen MoE: renormalised top-k, no shared expert (refused
        // otherwise, tested below); the experts' width is moe_intermediate_size.
        if model_type.starts_with("qwen") && moe {
            minimal["norm_topk_prob"] = json!(true);
            minimal["moe_intermediate_size"] = d["moe_intermediate_size"].clone();
        }
        if model_type == "qwen2_moe" {
            minimal["shared_expert_intermediate_size"] = json!(0);
        }
        let c = ModelConfig::from_hf_json(&minimal.to_string())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let want_f = |k: &str| d[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let want_u = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("{name}: {k}")) as usize;
        assert_eq!(c.rms_norm_eps, want_f("rms_norm_eps"), "{name}");
        assert_eq!(
            c.rope_theta,
            d["rope_parameters"]["rope_theta"].as_f64().unwrap(),
            "{name}"
        );
        assert_eq!(d["rope_parameters"]["rope_type"], "default", "{name}");
        assert_eq!(c.rope_scaling, RopeScaling::Default, "{name}");
        assert_eq!(
            c.max_position_embeddings,
            want_u("max_position_embeddings"),
            "{name}"
        );
        assert_eq!(c.num_kv_heads, want_u("num_key_value_heads"), "{name}");
        // Classes without a head_dim field compute hidden / heads in their attention.
        let head_dim = d
            .get("head_dim")
            .and_then(Value::as_u64)
            .map_or(c.hidden_size / c.num_heads, |h| h as usize);
        assert_eq!(c.head_dim, head_dim, "{name}");
        assert_eq!(
            c.tie_word_embeddings,
            d["tie_word_embeddings"].as_bool().unwrap(),
            "{name}"
        );
        // Qwen2-MoE writes 0 for "no window".
        let window = d["sliding_window"].as_u64().filter(|&w| w > 0);
        assert_eq!(c.sliding_window, window.map(|w| w as usize), "{name}");
        assert_eq!(c.attention_dropout, want_f("attention_dropout"), "{name}");
        match model_type {
            "qwen2" | "qwen2_moe" => {
                assert_eq!(c.family, Family::Qwen2);
                assert!(c.qkv_bias && !c.qk_norm, "{name}");
            }
            "qwen3" | "qwen3_moe" => {
                assert_eq!(c.family, Family::Qwen3);
                assert!(c.qk_norm && !c.qkv_bias, "{name}");
            }
            _ => {
                assert_eq!(c.family, Family::Llama);
                assert!(!c.qk_norm && !c.qkv_bias, "{name}");
            }
        }
        assert_eq!(c.is_moe(), moe, "{name}");
        if let Some(m) = &c.moe {
            let experts = d
                .get("num_local_experts")
                .or_else(|| d.get("num_experts"))
                .and_then(Value::as_u64)
                .unwrap() as usize;
            assert_eq!(m.num_experts, experts, "{name}");
            assert_eq!(m.top_k, want_u("num_experts_per_tok"), "{name}");
            let width = d
                .get("moe_intermediate_size")
                .and_then(Value::as_u64)
                .map_or(want_u("intermediate_size"), |w| w as usize);
            assert_eq!(c.intermediate_size, width, "{name}");
        }
        n += 1;
    }
    assert_eq!(n, 7, "one file per class in {}", dir.display());
}

fn base(model_type: &str, extra: &str) -> String {
    format!(
        r#"{{"model_type":"{model_type}","vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":2,"head_dim":4{extra}}}"#
    )
}

fn refused(json: &str) -> String {
    ModelConfig::from_hf_json(json)
        .map(|c| format!("ACCEPTED {c:?}"))
        .unwrap_or_else(|e| e.to_string())
}

/// What btx does not compute is refused by name, never computed some other way.
#[test]
fn what_btx_does_not_compute_is_refused_by_name() {
    for (json, needle) in [
        (
            base(
                "llama",
                r#","rope_parameters":{"rope_type":"longrope","factor":2.0}"#,
            ),
            "rope type \"longrope\" is not supported",
        ),
        (
            base(
                "llama",
                r#","rope_parameters":{"rope_type":"llama3","factor":8.0}"#,
            ),
            "needs low_freq_factor",
        ),
        // transformers 4.x scales a YaRN by max_position_embeddings / original when
        // rope_scaling gives the original length; 5 by factor.
        (
            base(
                "qwen2",
                r#","max_position_embeddings":32768,"rope_scaling":{"type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"#,
            ),
            "transformers 4.x scales by the latter",
        ),
        (
            base(
                "llama",
                r#","original_max_position_embeddings":64,"rope_parameters":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":32}"#,
            ),
            "original_max_position_embeddings = 64 at the top level but 32",
        ),
        (
            base(
                "qwen2",
                r#","use_sliding_window":true,"sliding_window":8,"max_window_layers":1"#,
            ),
            "is on 1 of the 2 layers",
        ),
        (
            base(
                "qwen3",
                r#","use_sliding_window":false,"layer_types":["full_attention","sliding_attention"]"#,
            ),
            "use_sliding_window is false",
        ),
        (
            base("qwen3", r#","attention_bias":true"#),
            "attention_bias = true",
        ),
        (
            base("qwen3_moe", r#","num_experts":4,"num_experts_per_tok":2"#),
            "norm_topk_prob is false",
        ),
        (
            base(
                "qwen2_moe",
                r#","num_experts":4,"num_experts_per_tok":2,"norm_topk_prob":true"#,
            ),
            "shared expert is not supported",
        ),
        (
            base(
                "qwen3_moe",
                r#","num_experts":4,"num_experts_per_tok":2,"norm_topk_prob":true,"decoder_sparse_step":2"#,
            ),
            "decoder_sparse_step = 2",
        ),
        (
            base(
                "qwen3_moe",
                r#","num_experts":4,"num_experts_per_tok":2,"norm_topk_prob":true,"mlp_only_layers":[0]"#,
            ),
            "mlp_only_layers",
        ),
        (base("qwen3", r#","head_dim":null"#), "head_dim is null"),
        (
            base(
                "llama",
                r#","rope_parameters":{"rope_type":"yarn","factor":-2.0}"#,
            ),
            "factor > 0",
        ),
    ] {
        let e = refused(&json);
        assert!(e.contains(needle), "{json}:\n{needle:?} not in {e}");
    }
    // A window on every layer is the model's window; on none, no window.
    let all = ModelConfig::from_hf_json(&base(
        "qwen2",
        r#","use_sliding_window":true,"sliding_window":8,"max_window_layers":0"#,
    ))
    .unwrap();
    assert_eq!(all.sliding_window, Some(8));
    let none = ModelConfig::from_hf_json(&base(
        "qwen2",
        r#","use_sliding_window":false,"sliding_window":8,"max_window_layers":0"#,
    ))
    .unwrap();
    assert_eq!(none.sliding_window, None);
}

/// Each family's config survives btx's writer: what transformers reads from the file btx
/// writes is what btx read (RoPE scaling, biases, norms, window), as a dense model and as its
/// family's MoE.
#[test]
fn family_configs_round_trip_dense_and_moe() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(testdata().join("hf-family"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty());
    for d in dirs {
        let c = ModelConfig::load(&d.join("model/config.json")).unwrap();
        let back = ModelConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap();
        assert_eq!(back, c, "{}", d.display());
        let mut moe = c.clone();
        moe.moe = Some(btx_model::config::MoeConfig {
            num_experts: 3,
            top_k: 2,
            routing: btx_model::config::Routing::TopK,
        });
        let j = moe.to_hf_json();
        let arch = j["architectures"][0].as_str().unwrap();
        let want = match c.family {
            Family::Llama => "MixtralForCausalLM",
            Family::Qwen2 => "Qwen2MoeForCausalLM",
            Family::Qwen3 => "Qwen3MoeForCausalLM",
        };
        assert_eq!(arch, want, "{}", d.display());
        assert_eq!(
            ModelConfig::from_hf_json(&j.to_string()).unwrap(),
            moe,
            "{}",
            d.display()
        );
    }
}
