//! Beyond the paper (issue 20) through the pipeline and the command line, on a tiny budget:
//! BAM's attention experts (both variants) and anchored experts run beside BTX, compute-matched;
//! the MiX keeps each expert's attention; anchored experts keep the seed's attention; the
//! report carries the attention routing and the opt-out cost; export refuses what a Mixtral
//! cannot hold; experts are removed with `prune-experts` and `--without-expert`.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use btx_model::io::read_all;
use btx_model::ModelConfig;
use btx_testkit::Scratch;

mod common;

/// The pipeline tests' small recipe (testdata/recipes/small.toml) with this binary's
/// differences.
const SETS: &[&str] = &[
    r#"name="tiny-beyond""#,
    r#"data.prepare.seed=2"#,
    r#"data.prepare.domains=[{name = "math", builtin = "math", docs = 200, tasks = 4}, {name = "code", builtin = "code", docs = 200, tasks = 4}]"#,
    r#"seed.pretrain.init.max_position_embeddings=64"#,
    r#"experts.train.steps=8"#,
    r#"experts.train.checkpoint_every=4"#,
    r#"finetune.weights={math = 0.5, code = 0.5}"#,
    r#"finetune.variants=[{name = "btx"}, {name = "bam", attention = "experts", compute_matched = true}, {name = "bam-shared-kv", attention = "experts-shared-kv", router_init = "domain-mean", compute_matched = true}, {name = "anchored", experts = "anchored", router_init = "domain-mean"}]"#,
    r#"baselines.dense="none""#,
    r#"baselines.upcycle="none""#,
    r#"baselines.merge_avg=false"#,
    r#"eval.seq_len=32"#,
    r#"eval.windows=8"#,
    r#"eval.tasks=4"#,
    r#"eval.btm=false"#,
];

fn tensors(dir: &Path) -> HashMap<String, Vec<f32>> {
    read_all(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect()
}

fn btx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(args)
        .env("BTX_LOG", "warn")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    text
}

fn refused(o: &Output) -> String {
    let text = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

#[test]
fn attention_experts_anchored_experts_and_opt_out_through_the_pipeline() {
    let d = Scratch::new("beyond");
    std::fs::write(d.join("recipe.toml"), common::small_recipe(SETS)).unwrap();
    let run = d.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&btx(&[
        "--threads",
        "2",
        "run",
        &s(&d.join("recipe.toml")),
        "--out",
        &s(&run),
        "--jobs",
        "2",
    ]));

    // The BAM MiX: each expert's attention is an attention expert, unchanged; the seed's is
    // the generalist's. Shared keys/values are the mean, under the dense names.
    let seed = tensors(&run.join("seed/model"));
    let math = tensors(&run.join("experts/math/model"));
    let bam = tensors(&run.join("mix/bam/model"));
    let q = "model.layers.1.self_attn.q_proj.weight";
    assert_eq!(
        bam["model.layers.1.self_attn.experts.0.q_proj.weight"],
        math[q]
    );
    assert_eq!(
        bam["model.layers.1.self_attn.experts.2.q_proj.weight"],
        seed[q]
    );
    assert!(!bam.contains_key(q));
    let cfg = ModelConfig::load(&run.join("mix/bam/model/config.json")).unwrap();
    assert_eq!(cfg.expert_labels, ["math", "code", "generalist"]);
    assert!(!cfg.attn_experts.unwrap().shared_kv);
    let kv = tensors(&run.join("mix/bam-shared-kv/model"));
    let k = "model.layers.0.self_attn.k_proj.weight";
    assert!(kv.contains_key(k) && kv[k] != math[k] && kv[k] != seed[k]);
    assert!(!kv.contains_key("model.layers.0.self_attn.experts.0.k_proj.weight"));
    // Domain-mean routers: the attention router's rows come from each expert's mean attention
    // input (the generalist's row is zero), not from the FFN router's.
    let r = &kv["model.layers.0.self_attn.router.weight"];
    let row = |i: usize| &r[i * 32..(i + 1) * 32];
    assert!(row(0).iter().any(|x| *x != 0.0) && row(2).iter().all(|x| *x == 0.0));
    assert_ne!(r, &kv["model.layers.0.block_sparse_moe.gate.weight"]);
    assert!(bam["model.layers.0.self_attn.router.weight"]
        .iter()
        .any(|x| *x != 0.0));

    // Anchored experts: attention, embeddings and head are the seed's, bit for bit; the FFNs
    // and norms trained.
    let anchored = tensors(&run.join("expert-anchoreds/math/model"));
    for (name, w) in &anchored {
        let same = seed[name] == *w;
        let frozen = name.contains(".self_attn.")
            || name.contains("embed_tokens")
            || name == "lm_head.weight";
        assert_eq!(same, frozen, "{name}");
    }

    // Compute-matched: BAM's finetune costs more per token, so it runs fewer steps and lands
    // near BTX's total FLOPs.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let flops = |m: &str| results["compute"][m]["train_flops"].as_f64().unwrap();
    for m in ["btx:bam", "btx:bam-shared-kv"] {
        assert!(
            (flops(m) / flops("btx") - 1.0).abs() < 0.1,
            "{m}: {} vs {}",
            flops(m),
            flops("btx")
        );
    }
    let steps = |v: &str| -> u64 {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join("finetune").join(v).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["outputs"]["steps"].as_u64().unwrap()
    };
    assert!(
        steps("bam") < steps("btx"),
        "{} vs {}",
        steps("bam"),
        steps("btx")
    );
    for m in ["btx:bam", "btx:bam-shared-kv", "btx:anchored", "mix:bam"] {
        let l = &results["methods"][m]["average"]["loss_ci"];
        assert!(l.as_array().is_some(), "{m}: {l}");
    }

    // The report: attention routing of the BAM models, and the opt-out cost of every
    // finetuned model, per expert and domain with an interval.
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains("Attention experts: mean weight"),
        "{report}"
    );
    assert!(
        report.contains("## Removing an expert (opt-out cost)"),
        "{report}"
    );
    for m in ["btx", "btx:bam", "btx:anchored"] {
        let c = &results["opt_out"][m]["math"]["math"];
        assert!(
            c["delta_loss"].as_f64().is_some() && c["ci95"].as_array().is_some(),
            "{m}: {c}"
        );
    }

    // Export: a Mixtral cannot hold attention experts; the message names what can be exported.
    let bam_ft = run.join("finetune/bam/model");
    let e = refused(&btx(&[
        "export",
        "--model",
        &s(&bam_ft),
        "--out",
        &s(&d.join("x")),
    ]));
    assert!(
        e.contains("attention = \"average\"") && e.contains("--format btx"),
        "{e}"
    );
    assert!(!d.join("x").exists());
    ok(&btx(&[
        "export",
        "--model",
        &s(&bam_ft),
        "--format",
        "btx",
        "--out",
        &s(&d.join("x")),
    ]));
    let btx_ft = run.join("finetune/btx/model");
    ok(&btx(&[
        "export",
        "--model",
        &s(&btx_ft),
        "--out",
        &s(&d.join("hf")),
    ]));
    let text = std::fs::read_to_string(d.join("hf/config.json")).unwrap();
    assert!(text.contains("MixtralForCausalLM"), "{text}");

    // Removing experts: the generalist only when asked; the rest unchanged.
    let e = refused(&btx(&[
        "prune-experts",
        "--model",
        &s(&bam_ft),
        "--drop",
        "generalist",
        "--out",
        &s(&d.join("p")),
    ]));
    assert!(e.contains("--allow-generalist"), "{e}");
    let e = refused(&btx(&[
        "prune-experts",
        "--model",
        &s(&bam_ft),
        "--drop",
        "law",
        "--out",
        &s(&d.join("p")),
    ]));
    assert!(e.contains("\"law\"") && e.contains("math"), "{e}");
    ok(&btx(&[
        "prune-experts",
        "--model",
        &s(&bam_ft),
        "--drop",
        "math",
        "--out",
        &s(&d.join("p")),
    ]));
    let p = ModelConfig::load(&d.join("p/config.json")).unwrap();
    assert_eq!(p.expert_labels, ["code", "generalist"]);
    assert_eq!(p.attn_experts.unwrap().num_experts, 2);
    let (before, after) = (tensors(&bam_ft), tensors(&d.join("p")));
    let o = "model.layers.0.self_attn.experts.0.o_proj.weight";
    assert_eq!(
        after[o],
        before["model.layers.0.self_attn.experts.1.o_proj.weight"]
    );
    // Reading and writing the same directory is refused.
    refused(&btx(&[
        "prune-experts",
        "--model",
        &s(&bam_ft),
        "--drop",
        "math",
        "--out",
        &s(&bam_ft),
        "--force",
    ]));

    let data = run.join("data/tokens");
    let eval = |extra: &[&str]| {
        let mut a = vec!["eval", "--model", &s(&btx_ft), "--data", &s(&data)]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        a.extend(["--seq-len", "32", "--windows", "4", "--tasks", "0"].map(String::from));
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        btx(&refs)
    };
    let full = ok(&eval(&[]));
    let without = ok(&eval(&["--without-expert", "code"]));
    assert_ne!(full, without);
    refused(&eval(&["--without-expert", "generalist"]));
    ok(&eval(&[
        "--without-expert",
        "generalist",
        "--allow-generalist",
    ]));
    ok(&btx(&[
        "generate",
        "--model",
        &s(&bam_ft),
        "--prompt",
        "1 + 2 =",
        "--max-tokens",
        "4",
        "--without-expert",
        "math",
    ]));
}
