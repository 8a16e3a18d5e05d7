//! The study's code paths on a tiny budget (issue 18): the MiX evaluated before finetuning,
//! the ablations (no load balancing, non-FFN weights from the seed, FFN-only experts, another
//! share of the budget for the finetune), two budgets, two replicas, and a report whose every
//! number carries its 95% interval.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use btx_model::io::read_all;
use btx_testkit::Scratch;

mod common;

/// The pipeline tests' small recipe (testdata/recipes/small.toml) with this binary's
/// differences.
const SETS: &[&str] = &[
    r#"name="tiny-study""#,
    r#"replicas=2"#,
    r#"budgets=[0.5, 1.0]"#,
    // A corpus without a task set: cloze items from its validation documents, as the study's
    // real corpora get them.
    r#"data.prepare.domains=[{name = "math", builtin = "math", docs = 200, tasks = 8}, {name = "code", builtin = "code", docs = 200, tasks = 8}, {name = "general", paths = ["general"], cloze = 8}]"#,
    r#"seed.pretrain.init.max_position_embeddings=64"#,
    r#"experts.train.steps=8"#,
    r#"experts.train.checkpoint_every=4"#,
    r#"finetune.train.steps=4"#,
    r#"finetune.train.checkpoint_every=2"#,
    r#"finetune.variants=[{name = "btx"}, {name = "no-lb", lb_coef = 0.0}, {name = "seed-non-ffn", non_ffn = "seed"}, {name = "ffn-only", experts = "ffn-only"}, {name = "ft-half", finetune_share = 0.5}]"#,
    r#"baselines.dense="compute-matched""#,
    r#"baselines.upcycle="none""#,
    r#"baselines.merge_avg=false"#,
    r#"eval.seq_len=32"#,
    r#"eval.windows=8"#,
    r#"eval.tasks=8"#,
];

fn tensors(dir: &Path) -> HashMap<String, Vec<f32>> {
    read_all(&dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.data))
        .collect()
}

#[test]
fn diagnosis_runs_and_every_number_has_its_interval() {
    let d = Scratch::new("study");
    std::fs::write(d.join("recipe.toml"), common::small_recipe(SETS)).unwrap();
    std::fs::create_dir_all(d.join("general")).unwrap();
    let (who, what) = (["miller", "sailor", "weaver"], ["bread", "rope", "cloth"]);
    for i in 0..60 {
        let text = format!(
            "On day {i} the {w} of the village rose early and went down to the market with a \
             basket. There the {w} sold {t} to every neighbour who passed by the stall.\n",
            w = who[i % 3],
            t = what[i % 3],
        );
        std::fs::write(d.join(format!("general/doc{i}.txt")), text).unwrap();
    }
    let run = d.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["--threads", "2", "run"])
        .arg(d.join("recipe.toml"))
        .arg("--out")
        .arg(&run)
        .args(["--jobs", "2"])
        .env("BTX_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // FFN-only experts: every weight outside the FFNs is still the seed's, bit for bit; the
    // FFNs trained.
    let seed = tensors(&run.join("seed/model"));
    for (family, dir) in [("ffn-only", "expert-ffns/math"), ("full", "experts/math")] {
        let e = tensors(&run.join(dir).join("model"));
        for (name, w) in &e {
            let same = seed[name] == *w;
            if name.contains(".mlp.") {
                assert!(!same, "{family}: {name} did not train");
            } else if family == "ffn-only" {
                assert!(same, "{family}: {name} moved");
            }
        }
        if family == "full" {
            let n = "model.layers.0.self_attn.q_proj.weight";
            assert_ne!(seed[n], e[n], "a full expert trains its attention");
        }
    }
    // The MiX of FFN-only experts averages identical copies (exactly the seed's weights), as
    // does a MiX that takes the non-FFN weights from the seed; the paper's MiX averages
    // attention that moved.
    let n = "model.layers.1.self_attn.o_proj.weight";
    for (mix, from_seed) in [("ffn-only", true), ("seed-non-ffn", true), ("btx", false)] {
        let m = tensors(&run.join("mix").join(mix).join("model"));
        assert_eq!(m[n] == seed[n], from_seed, "mix {mix}");
        assert_eq!(
            m["model.norm.weight"] == seed["model.norm.weight"],
            from_seed,
            "mix {mix}"
        );
    }

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    let methods = [
        "seed",
        "expert:math",
        "expert-ffn:code",
        "mix:btx",
        "mix:ffn-only",
        "btx",
        "btx:no-lb",
        "btx:seed-non-ffn",
        "btx:ffn-only",
        "dense-compute",
        "btm-top1",
    ];
    for m in methods {
        for dom in ["math", "code", "general", "average"] {
            let x = &results["methods"][m][dom];
            let l = x["loss"].as_f64().unwrap_or(f64::NAN);
            let ci = x["loss_ci"].as_array().map(|v| {
                (
                    v[0].as_f64().unwrap_or(f64::NAN),
                    v[1].as_f64().unwrap_or(f64::NAN),
                )
            });
            let (lo, hi) = ci.unwrap_or((f64::NAN, f64::NAN));
            assert!(lo <= l && l <= hi && lo < hi, "{m} {dom}: {x}");
        }
    }
    assert_eq!(results["replicas"], 2);
    // The cloze items were made and scored: a chance level, an accuracy with its interval.
    assert!(results["tasks"]["general"]["chance"].as_f64().unwrap() > 0.0);
    let acc = &results["methods"]["btx"]["general"];
    assert!(acc["accuracy_ci"].as_array().is_some(), "{acc}");
    // The MiX and the FFN-only variant count the experts they were made of.
    let tokens = |dir: &str| -> u64 {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(dir).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["compute"]["train_tokens"].as_u64().unwrap()
    };
    assert_eq!(
        results["compute"]["btx:ffn-only"]["train_tokens"]
            .as_u64()
            .unwrap(),
        tokens("expert-ffns/math") + tokens("expert-ffns/code") + tokens("finetune/ffn-only")
    );
    assert_eq!(
        results["compute"]["mix:btx"]["train_tokens"]
            .as_u64()
            .unwrap(),
        tokens("experts/math") + tokens("experts/code")
    );
    // Every verdict is backed by an interval or says why it is not tested; load balancing is
    // tested (a no-lb run, two replicas).
    let verdicts = results["verdict"].as_array().unwrap();
    for v in verdicts {
        let s = v["status"].as_str().unwrap();
        assert!(
            ["holds", "does not hold", "within noise"].contains(&s)
                || s.starts_with("not tested ("),
            "{v}"
        );
    }
    assert!(
        !verdicts[4]["status"]
            .as_str()
            .unwrap()
            .starts_with("not tested"),
        "{}",
        verdicts[4]
    );
    assert!(results["diagnosis"].as_str().unwrap().contains("mix:btx"));

    // Budgets: the half budget ran in its own directories, with half the steps; the report
    // has both points of every method, the smaller budget at fewer FLOPs.
    assert!(run.join("budgets/x0.5/experts/math/DONE").is_file());
    assert!(run
        .join("budgets/x0.5/replicas/1/finetune/btx/DONE")
        .is_file());
    let curves = results["budgets"].as_array().unwrap();
    let btx = curves.iter().find(|c| c["method"] == "btx").unwrap();
    let pts = btx["points"].as_array().unwrap();
    assert_eq!(pts.len(), 2, "{btx}");
    let flops = |scale: f64| {
        pts.iter().find(|p| p["scale"] == scale).unwrap()["train_flops"]
            .as_f64()
            .unwrap()
    };
    assert!((flops(0.5) / flops(1.0) - 0.5).abs() < 0.05, "{btx}");
    // The finetune-share variant spends about the same FLOPs as btx, half of them finetuning
    // (step counts are whole numbers: a tiny budget lands near, not on, the target).
    let c = |m: &str| results["compute"][m]["train_flops"].as_f64().unwrap();
    assert!(
        (c("btx:ft-half") / c("btx") - 1.0).abs() < 0.2,
        "{} vs {}",
        c("btx:ft-half"),
        c("btx")
    );
    let ft_flops = |dir: &str| -> f64 {
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(dir).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["compute"]["train_flops"].as_f64().unwrap()
    };
    let share = ft_flops("finetune/ft-half") / c("btx:ft-half");
    assert!((share - 0.5).abs() < 0.15, "finetune share {share}");
    assert!(std::fs::read_dir(&run).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("experts-x")));
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(
        report.contains("## Diagnosis") && report.contains(" ±"),
        "{report}"
    );
}
