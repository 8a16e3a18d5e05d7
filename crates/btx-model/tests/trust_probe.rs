//! Found by probing the trust fixes: config.json values that exhausted the memory, changed the
//! routing transformers computes, or wrapped shapes, and expert names that are paths.

use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;
use serde_json::Value;

fn mixtral_json(extra: &[(&str, Value)]) -> String {
    let mut j = serde_json::json!({
        "architectures": ["MixtralForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2
    });
    for (k, v) in extra {
        j[*k] = v.clone();
    }
    j.to_string()
}

fn refused(json: &str) -> String {
    ModelConfig::from_hf_json(json)
        .map(|c| format!("ACCEPTED {c:?}"))
        .unwrap_or_else(|e| e.to_string())
}

/// A config claiming 1e8 experts over files holding 2 is refused by counting, before the
/// 3e8 names of their parameters are listed (which took the machine's memory).
#[test]
fn a_config_with_far_more_experts_than_the_files_is_refused_by_counting() {
    let s = Scratch::new("probe-experts");
    let mut c = ModelConfig::llama(10, 8, 16, 1, 2, 2, 32);
    c.moe = Some(btx_model::config::MoeConfig {
        num_experts: 2,
        top_k: 1,
        routing: btx_model::Routing::TopK,
    });
    Model::init(&c, 0, &Device::flex())
        .unwrap()
        .save(s.path(), usize::MAX)
        .unwrap();
    let p = s.path().join("config.json");
    let mut j: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    j["num_local_experts"] = 100_000_000.into();
    std::fs::write(&p, j.to_string()).unwrap();
    let e = Model::load(s.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("describes 100000000 FFN experts per layer, but the weights files hold 2"),
        "{e}"
    );
}

/// btx's routing modes go with the top-k btx writes for them (what transformers then
/// computes); a file whose top-k says otherwise, or whose routing has unknown keys, is refused.
#[test]
fn routing_modes_and_their_top_k_agree() {
    for (routing, k, needle) in [
        (
            serde_json::json!({"mode": "soft"}),
            1,
            "goes with num_experts_per_tok = 4",
        ),
        (
            serde_json::json!({"mode": "switch", "capacity_factor": 1.5}),
            2,
            "goes with num_experts_per_tok = 1",
        ),
        (
            serde_json::json!({"mode": "top-k", "bogus": 1}),
            2,
            "unknown key \"bogus\"",
        ),
        (
            serde_json::json!({"mode": "soft", "k": 4}),
            4,
            "unknown key \"k\"",
        ),
    ] {
        let j = mixtral_json(&[
            ("btx_routing", routing.clone()),
            ("num_experts_per_tok", k.into()),
        ]);
        let e = refused(&j);
        assert!(e.contains(needle), "{routing}: {needle:?} not in {e}");
    }
    // As btx writes them: accepted.
    let soft = mixtral_json(&[
        ("btx_routing", serde_json::json!({"mode": "soft"})),
        ("num_experts_per_tok", 4.into()),
    ]);
    assert!(ModelConfig::from_hf_json(&soft).is_ok());
}

#[test]
fn sizes_that_overflow_into_shapes_are_refused() {
    let huge = 1u64 << 62;
    let j = mixtral_json(&[
        ("num_attention_heads", huge.into()),
        ("num_key_value_heads", huge.into()),
        ("head_dim", huge.into()),
    ]);
    let e = refused(&j);
    assert!(e.contains("overflow"), "{e}");
}

#[test]
fn expert_names_are_never_paths() {
    for name in ["a/b", "..", "a\\\\b"] {
        let j = mixtral_json(&[("btx_experts", serde_json::json!([name, "x", "y", "z"]))]);
        let e = refused(&j);
        assert!(e.contains("path separator"), "{name}: {e}");
    }
}
