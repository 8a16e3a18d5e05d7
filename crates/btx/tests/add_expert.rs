//! `btx add-expert` (issue 30, FlexOlmo / Nexus): a dense branch of the seed becomes one more
//! expert of a BTX model. Every weight the model had is unchanged bit for bit (its router rows
//! included), the new expert is the dense model's FFN (and attention, for attention experts)
//! bit for bit, its router rows send its domain's tokens to it; what cannot be a branch of the
//! same seed, or a model where one more expert would change every token, is refused before
//! anything is written.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use btx_model::burn::prelude::Device;
use btx_model::{HostTensor, Model};
use btx_testkit::Scratch;

mod common;
use common::{btx, ok, refused, TINY};

fn params(dir: &Path) -> HashMap<String, HostTensor> {
    Model::load(dir, &Device::flex())
        .unwrap()
        .host_params()
        .into_iter()
        .collect()
}

fn add(moe: &Path, dense: &Path, domain: &str, data: &Path, out: &Path) -> Command {
    let mut c = btx();
    c.args(["add-expert", "--model"])
        .arg(moe)
        .arg("--expert")
        .arg(dense)
        .args(["--domain", domain, "--data"])
        .arg(data)
        .arg("--out")
        .arg(out);
    c
}

fn mix(run: &Path, out: &Path, extra: &[&str]) {
    ok(btx()
        .args(["mix", "--seed"])
        .arg(run.join("seed/model"))
        .arg("--experts")
        .arg(run.join("experts/math/model"))
        .args(["--domains", "math", "--generalist", "--out"])
        .arg(out)
        .args(extra));
}

fn loss(model: &Path, data: &Path, domain: &str, dir: &Path) -> f64 {
    let out = dir.join("eval.json");
    ok(btx()
        .args(["eval", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--domains", domain, "--seq-len", "32", "--windows", "8"])
        .args(["--tasks", "0", "--out"])
        .arg(&out));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    j["result"]["domains"][domain]["loss"].as_f64().unwrap()
}

/// Nothing beside `dir`'s entries but what `keep` names (no output, no scratch left behind).
fn only(dir: &Path, keep: &[&str]) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn an_added_expert_leaves_every_weight_as_it_was_and_takes_its_domain() {
    let s = Scratch::new("add-expert");
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let run = s.path().join("run");
    ok(btx().arg("run").arg(&recipe).arg("--out").arg(&run));
    let data = run.join("data/tokens");
    let work = s.path().join("w");
    std::fs::create_dir(&work).unwrap();
    let moe = work.join("moe");
    mix(
        &run,
        &moe,
        &[
            "--router-init",
            "fit",
            "--domain-data",
            data.to_str().unwrap(),
        ],
    );
    let code = run.join("experts/code/model");
    let out = work.join("added");
    ok(&mut add(&moe, &code, "code", &data, &out));
    only(&work, &["moe", "added"]);

    let (before, after, dense) = (params(&moe), params(&out), params(&code));
    let cfg = Model::load(&out, &Device::flex()).unwrap().cfg;
    assert_eq!(cfg.expert_labels, ["math", "generalist", "code"]);
    assert_eq!(after.len(), before.len() + 3);
    let d = cfg.hidden_size;
    for (name, t) in &before {
        let a = &after[name];
        if name.ends_with("block_sparse_moe.gate.weight") {
            // The old rows bit for bit, one new row after them.
            assert_eq!(a.shape, [3, d]);
            assert_eq!(a.data[..2 * d], t.data[..], "{name}");
            assert!(a.data[2 * d..].iter().any(|&x| x != 0.0), "{name}: new row");
        } else {
            assert_eq!(a.data, t.data, "{name} changed");
        }
    }
    for (w, proj) in [(1, "gate_proj"), (2, "down_proj"), (3, "up_proj")] {
        let new = &after[&format!("model.layers.0.block_sparse_moe.experts.2.w{w}.weight")];
        assert_eq!(
            new.data,
            dense[&format!("model.layers.0.mlp.{proj}.weight")].data
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("add-expert.json")).unwrap())
            .unwrap();
    assert_eq!(j["name"], "code");
    assert_eq!(j["index"], 2);
    let dist = j["distance"].as_f64().unwrap();
    assert!(dist > 0.0 && dist < 0.5, "{j}");
    assert_eq!(j["router_fit"].as_array().unwrap().len(), cfg.num_layers);
    // Its domain gains from it.
    let (l0, l1) = (
        loss(&moe, &data, "code", s.path()),
        loss(&out, &data, "code", s.path()),
    );
    assert!(l1 < l0, "code: {l0} without the code expert, {l1} with it");
    // Deterministic.
    let again = work.join("again");
    ok(&mut add(&moe, &code, "code", &data, &again));
    assert_eq!(
        params(&again)["model.layers.0.block_sparse_moe.gate.weight"].data,
        after["model.layers.0.block_sparse_moe.gate.weight"].data
    );
    std::fs::remove_dir_all(&again).unwrap();

    // Refused, each before anything is written.
    let no = work.join("no");
    refused(
        &mut add(&code, &code, "code", &data, &no),
        "dense model, not a MoE",
    );
    refused(
        &mut add(&moe, &moe, "code", &data, &no),
        "must be a dense model",
    );
    refused(
        &mut add(&moe, &run.join("experts/math/model"), "math", &data, &no),
        "math",
    );
    refused(
        &mut add(&moe, &code, "generalist", &data, &no),
        "generalist",
    );
    refused(
        &mut add(&moe, &code, "history", &data, &no),
        "no domain \"history\"",
    );
    refused(
        add(&moe, &code, "code", &data, &no).args(["--max-distance", "1e-6"]),
        "not a branch of its seed",
    );
    refused(
        add(&moe, &code, "code", &data, &no).args(["--router-margin", "nan"]),
        "--router-margin",
    );
    refused(
        add(&moe, &code, "code", &data, &no).args(["--dtype", "bf16"]),
        "would re-round every weight",
    );
    refused(
        &mut add(&moe, &code, "c++", &data, &no),
        "must not contain +",
    );
    // Another tokenizer: token ids would mean other things.
    let other_tok = work.join("other-tok");
    std::fs::create_dir(&other_tok).unwrap();
    for f in std::fs::read_dir(&code).unwrap().flatten() {
        std::fs::copy(f.path(), other_tok.join(f.file_name())).unwrap();
    }
    let tok = other_tok.join("tokenizer.json");
    let mut t = std::fs::read_to_string(&tok).unwrap();
    t.push(' ');
    std::fs::write(&tok, t).unwrap();
    refused(
        &mut add(&moe, &other_tok, "code", &data, &no),
        "different tokenizer.json",
    );
    std::fs::remove_dir_all(&other_tok).unwrap();
    // Switch routing: one more expert shrinks every expert's capacity.
    let switch = work.join("switch");
    mix(&run, &switch, &["--routing", "switch"]);
    refused(&mut add(&switch, &code, "code", &data, &no), "switch");
    std::fs::remove_dir_all(&switch).unwrap();
    // An existing output is refused before the fit (and left as it was).
    let before_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    refused(&mut add(&moe, &code, "code", &data, &out), "not empty");
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before_bytes
    );
    only(&work, &["moe", "added"]);
}

/// A model with attention experts (BAM) gets the dense model's attention as a new attention
/// expert too, with a row of its own in the attention router; every other weight unchanged.
#[test]
fn an_attention_expert_model_gets_the_new_attention_too() {
    let s = Scratch::new("add-expert-bam");
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let run = s.path().join("run");
    ok(btx().arg("run").arg(&recipe).arg("--out").arg(&run));
    let data = run.join("data/tokens");
    let moe = s.path().join("bam");
    mix(&run, &moe, &["--attention", "experts"]);
    let code = run.join("experts/code/model");
    let out = s.path().join("added");
    ok(&mut add(&moe, &code, "code", &data, &out));
    let (before, after, dense) = (params(&moe), params(&out), params(&code));
    let d = 16;
    for (name, t) in &before {
        let a = &after[name];
        if name.ends_with("gate.weight") || name.ends_with("self_attn.router.weight") {
            assert_eq!(a.data[..2 * d], t.data[..], "{name}");
            assert_eq!(a.shape[0], 3, "{name}");
        } else {
            assert_eq!(a.data, t.data, "{name} changed");
        }
    }
    for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        assert_eq!(
            after[&format!("model.layers.0.self_attn.experts.2.{proj}.weight")].data,
            dense[&format!("model.layers.0.self_attn.{proj}.weight")].data
        );
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("add-expert.json")).unwrap())
            .unwrap();
    // One attention router and one FFN router per layer.
    assert_eq!(j["router_fit"].as_array().unwrap().len(), 2);
}

/// The recipe variant: `add_expert = "code"` leaves code's expert out of the variant's MiX and
/// finetune, then adds it (stage `add-expert:<v>`); the report states what the addition did to
/// each domain. The refusals come before anything runs.
#[test]
fn a_recipe_variant_adds_an_expert_after_its_finetune() {
    let s = Scratch::new("add-expert-recipe");
    let recipe = s.path().join("tiny.toml");
    let text = format!(
        "{TINY}\n[[finetune.variants]]\nname = \"btx\"\n[[finetune.variants]]\nname = \"late\"\nadd_expert = \"code\"\n"
    );
    std::fs::write(&recipe, &text).unwrap();
    let run = s.path().join("run");
    ok(btx().arg("run").arg(&recipe).arg("--out").arg(&run));
    let mix: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("mix/late/model/mix.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(mix["labels"], serde_json::json!(["math", "generalist"]));
    let added = run.join("added/late/model");
    let cfg = Model::load(&added, &Device::flex()).unwrap().cfg;
    assert_eq!(cfg.expert_labels, ["math", "generalist", "code"]);
    // The finetune never saw code.
    let resolved = std::fs::read_to_string(run.join("plan.json")).unwrap();
    let plan: serde_json::Value = serde_json::from_str(&resolved).unwrap();
    let ft = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "finetune:late")
        .unwrap();
    assert_eq!(
        ft["kind"]["spec"]["weights"],
        serde_json::json!({"math": 0.5})
    );
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("| btx:late+code |"), "{report}");
    assert!(
        report.contains("Adding code's expert to btx:late after its finetune"),
        "{report}"
    );
    // btx mixes the same experts the same way, code's included: the reference that isolates
    // adding late.
    assert!(
        report
            .contains("Against btx, which mixed code's expert from the start, otherwise the same"),
        "{report}"
    );
    // Refused before anything runs.
    for (variant, needle) in [
        ("add_expert = \"history\"", "is not one of experts.domains"),
        (
            "add_expert = \"code\"\nrouting = { mode = \"soft\" }",
            "add_expert needs top-k routing",
        ),
        (
            "add_expert = \"code\"\ncompute_matched = true",
            "cannot go with finetune_share or compute_matched",
        ),
        (
            "add_expert = \"code\"\n[mix]\ngeneralist = false",
            "keep the generalist or set [eval] oracle = false",
        ),
    ] {
        let bad = s.path().join("bad.toml");
        std::fs::write(
            &bad,
            format!("{TINY}\n[[finetune.variants]]\nname = \"btx\"\n[[finetune.variants]]\nname = \"late\"\n{variant}\n"),
        )
        .unwrap();
        let out = s.path().join("bad-run");
        refused(btx().arg("run").arg(&bad).arg("--out").arg(&out), needle);
        assert!(!out.exists());
    }
    // `+` joins a method and an added domain: refused in variant names.
    let bad = s.path().join("plus.toml");
    std::fs::write(
        &bad,
        format!("{TINY}\n[[finetune.variants]]\nname = \"btx\"\n[[finetune.variants]]\nname = \"a+b\"\n"),
    )
    .unwrap();
    refused(
        btx()
            .arg("run")
            .arg(&bad)
            .arg("--out")
            .arg(s.path().join("x")),
        "without spaces, slashes, colons, #, @ or +",
    );
    let bad = s.path().join("first.toml");
    std::fs::write(
        &bad,
        format!("{TINY}\n[[finetune.variants]]\nname = \"late\"\nadd_expert = \"code\"\n"),
    )
    .unwrap();
    refused(
        btx()
            .arg("run")
            .arg(&bad)
            .arg("--out")
            .arg(s.path().join("x")),
        "the first variant is btx itself",
    );
}
