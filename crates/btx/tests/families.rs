//! BTX end to end from a seed of each family beyond Llama (whose runs every other test covers):
//! a seed of the family pretrained by btx, then a second run that takes that checkpoint as its
//! `[seed] path`, as a user brings theirs (bf16, sharded). The MiX, the finetuned BTX model and the upcycled
//! baseline come out as the family's own MoE class, with its tensor names.

use std::path::Path;

use btx_testkit::Scratch;

mod common;
use common::{btx, ok, TINY};
use serde_json::Value;

fn run(args: &[&str]) {
    ok(btx().args(args));
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

fn arch(dir: &Path) -> String {
    config(dir)["architectures"][0]
        .as_str()
        .unwrap()
        .to_string()
}

/// TINY with its pretrained seed replaced by `[seed] path = seed`.
fn with_seed_path(seed: &Path) -> String {
    let start = TINY.find("[seed.pretrain.init]").unwrap();
    let end = TINY.find("[experts]").unwrap();
    format!(
        "{}[seed]\npath = {:?}\n\n{}",
        &TINY[..start],
        seed.display().to_string(),
        &TINY[end..]
    )
}

#[test]
fn btx_runs_from_qwen2_and_qwen3_seeds_into_their_moe_classes() {
    for (family, dense, moe) in [
        ("qwen2", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
    ] {
        let s = Scratch::new(&format!("families-{family}"));
        let recipe = s.path().join("tiny.toml");
        std::fs::write(&recipe, TINY).unwrap();
        let first = s.path().join("first");
        run(&[
            "run",
            recipe.to_str().unwrap(),
            "--out",
            first.to_str().unwrap(),
            "--set",
            &format!("seed.pretrain.init.family={family}"),
        ]);
        let pretrained = first.join("seed/model");
        assert_eq!(arch(&pretrained), dense);
        // The seed as users download it: bf16, sharded.
        let seed = s.path().join("seed-bf16");
        run(&[
            "export",
            "--model",
            pretrained.to_str().unwrap(),
            "--out",
            seed.to_str().unwrap(),
            "--dtype",
            "bf16",
            "--max-shard-size",
            "8KB",
        ]);
        assert!(seed.join("model.safetensors.index.json").is_file());

        let recipe2 = s.path().join("from-seed.toml");
        std::fs::write(&recipe2, with_seed_path(&seed)).unwrap();
        let second = s.path().join("second");
        run(&[
            "run",
            recipe2.to_str().unwrap(),
            "--out",
            second.to_str().unwrap(),
        ]);
        for out in ["mix/btx/model", "finetune/btx/model", "upcycle/model"] {
            let dir = second.join(out);
            assert_eq!(arch(&dir), moe, "{out}");
            let c = config(&dir);
            assert_eq!(c["norm_topk_prob"], true, "{out}");
            assert_eq!(c["num_experts"], 3, "{out}");
            let header = btx_model::TensorReader::open(&dir).unwrap();
            // The seed's dtype all the way (each stage computes in f32, rounds its output).
            assert_eq!(
                header.weights_dtype(),
                btx_model::io::OutDtype::BF16,
                "{out}"
            );
            assert_eq!(c["torch_dtype"], "bfloat16", "{out}");
            let names: Vec<&str> = header.names().collect();
            assert!(
                names.contains(&"model.layers.0.mlp.experts.2.gate_proj.weight")
                    && names.contains(&"model.layers.0.mlp.gate.weight"),
                "{out}: {names:?}"
            );
            assert!(
                !names.iter().any(|n| n.contains("block_sparse_moe")),
                "{out}"
            );
            if family == "qwen2" {
                assert!(names.contains(&"model.layers.0.self_attn.q_proj.bias"));
                assert!(names.contains(&"model.layers.0.mlp.shared_expert_gate.weight"));
                assert_eq!(c["shared_expert_intermediate_size"], 0);
            } else {
                assert!(names.contains(&"model.layers.0.self_attn.q_norm.weight"));
            }
        }
        let report = std::fs::read_to_string(second.join("report.md")).unwrap();
        assert!(report.contains("| btx |"), "{report}");
        // The family's MoE reads back and computes.
        let m = btx_model::Model::load(
            &second.join("finetune/btx/model"),
            &btx_model::burn::prelude::Device::flex(),
        )
        .unwrap();
        assert_eq!(m.cfg.num_experts(), 3);
        assert_eq!(m.cfg.family.name(), family);
    }
}

/// A Mistral seed (sliding window) and a Llama 3 seed (llama3 RoPE scaling): BTX from each
/// gives Mixtral MoEs that keep the window and the scaling (and the RoPE frequencies they mean).
#[test]
fn btx_runs_from_mistral_and_llama3_seeds_into_mixtral_keeping_window_and_rope() {
    let s = Scratch::new("families-llama");
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let first = s.path().join("first");
    run(&[
        "run",
        recipe.to_str().unwrap(),
        "--out",
        first.to_str().unwrap(),
    ]);
    let pretrained = first.join("seed/model");
    for (name, edit) in [
        (
            "mistral",
            serde_json::json!({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                "sliding_window": 4096}),
        ),
        (
            "llama3",
            serde_json::json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0,
                "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}}),
        ),
    ] {
        let seed = s.path().join(format!("seed-{name}"));
        std::fs::create_dir_all(&seed).unwrap();
        for f in ["model.safetensors", "tokenizer.json"] {
            std::fs::copy(pretrained.join(f), seed.join(f)).unwrap();
        }
        // The seed's chat template travels with its tokenizer to every model of the run.
        let tc = r#"{"chat_template": "{{ messages }}"}"#;
        std::fs::write(seed.join("tokenizer_config.json"), tc).unwrap();
        let mut c = config(&pretrained);
        for (k, v) in edit.as_object().unwrap() {
            c[k] = v.clone();
        }
        std::fs::write(seed.join("config.json"), c.to_string()).unwrap();
        let want = btx_model::ModelConfig::load(&seed.join("config.json")).unwrap();
        let recipe2 = s.path().join(format!("{name}.toml"));
        std::fs::write(&recipe2, with_seed_path(&seed)).unwrap();
        let out = s.path().join(name);
        run(&[
            "run",
            recipe2.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        for stage in ["mix/btx/model", "finetune/btx/model"] {
            let dir = out.join(stage);
            assert_eq!(arch(&dir), "MixtralForCausalLM", "{name} {stage}");
            let got = btx_model::ModelConfig::load(&dir.join("config.json")).unwrap();
            assert_eq!(got.sliding_window, want.sliding_window, "{name} {stage}");
            assert_eq!(got.rope_scaling, want.rope_scaling, "{name} {stage}");
            assert_eq!(got.rope_theta, want.rope_theta, "{name} {stage}");
            assert_eq!(
                std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap(),
                tc,
                "{name} {stage}"
            );
        }
    }
}
