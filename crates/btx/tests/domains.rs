//! The built-in domains are distinct: a small model trained on one domain has a lower held-out
//! loss there than models trained on any other domain.

use std::process::Command;

fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn");
    c
}

/// Runs `c` and fails the test with its stderr unless it succeeded.
fn ok(c: &mut Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

const DOMAINS: [&str; 4] = ["math", "code", "knowledge", "general"];

#[test]
fn a_model_trained_on_a_domain_is_best_on_that_domain() {
    let root = btx_testkit::Scratch::new("domains");
    let data = root.join("data");
    let cfg = root.join("data.toml");
    let mut toml = "seed = 3\n[tokenizer]\nvocab_size = 400\n".to_string();
    for d in DOMAINS {
        toml +=
            &format!("[[domains]]\nname = \"{d}\"\nbuiltin = \"{d}\"\ndocs = 400\ntasks = 10\n");
    }
    std::fs::write(&cfg, toml).unwrap();
    ok(btx()
        .args(["data", "prepare", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(&data));
    let train_cfg = root.join("train.toml");
    std::fs::write(
        &train_cfg,
        format!(
            "[model.init]\nhidden_size = 64\nintermediate_size = 176\nnum_layers = 2\n\
             num_heads = 4\nnum_kv_heads = 2\n[data]\ndir = {:?}\n[optim]\nlr = 3e-3\n\
             warmup_steps = 5\n[train]\nsteps = 40\nbatch_size = 8\nseq_len = 64\n\
             checkpoint_every = 0\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let mut matrix = vec![];
    for d in DOMAINS {
        let out = root.join(format!("m-{d}"));
        ok(btx()
            .args(["--threads", "2", "train", "--config"])
            .arg(&train_cfg)
            .args(["--set", &format!("data.weights.{d}=1.0")])
            .arg("--out")
            .arg(&out));
        let ev = out.join("eval.json");
        ok(btx()
            .args(["eval", "--model"])
            .arg(out.join("model"))
            .arg("--data")
            .arg(&data)
            .args([
                "--seq-len",
                "64",
                "--windows",
                "16",
                "--tasks",
                "0",
                "--out",
            ])
            .arg(&ev));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ev).unwrap()).unwrap();
        matrix.push(
            DOMAINS
                .iter()
                .map(|e| v["result"]["domains"][e]["loss"].as_f64().unwrap())
                .collect::<Vec<_>>(),
        );
    }
    println!("held-out loss (row: trained on, column: evaluated on) {DOMAINS:?}");
    for (d, row) in DOMAINS.iter().zip(&matrix) {
        println!("{d:<10} {row:.3?}");
    }
    for (j, e) in DOMAINS.iter().enumerate() {
        for (i, d) in DOMAINS.iter().enumerate() {
            if i != j {
                assert!(
                    matrix[j][j] < matrix[i][j],
                    "on {e}: the {e} model ({:.3}) is not better than the {d} model ({:.3})",
                    matrix[j][j],
                    matrix[i][j]
                );
            }
        }
    }
}

/// Issue 18: the built-in task sets are calibrated for the demo — its seed scores above chance
/// (the rate of always giving a set's most common answer) and well below the ceiling on every
/// one, so that each method's accuracy can move both ways. Runs the demo's own recipe with
/// everything after the seed cut to two steps; the seed is the demo's, bit for bit.
#[test]
fn the_demo_seed_is_above_chance_and_below_the_ceiling_on_every_task_set() {
    let root = btx_testkit::Scratch::new("calibration");
    let out = root.join("demo");
    ok(btx()
        .args(["demo", "--jobs", "2", "--out"])
        .arg(&out)
        .args([
            "--set",
            "replicas=1",
            "--set",
            "experts.train.steps=2",
            "--set",
            "finetune.train.steps=2",
            "--set",
            "eval.windows=2",
        ]));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for d in DOMAINS {
        let chance = r["tasks"][d]["chance"].as_f64().unwrap();
        let seed = &r["methods"]["seed"][d];
        let (acc, lo, hi) = (
            seed["accuracy"].as_f64().unwrap(),
            seed["accuracy_ci"][0].as_f64().unwrap(),
            seed["accuracy_ci"][1].as_f64().unwrap(),
        );
        println!("{d}: seed {acc:.3} [{lo:.3}, {hi:.3}], chance {chance:.3}");
        assert!(
            lo > chance,
            "{d}: the seed ({acc:.3}, interval from {lo:.3}) is not above chance ({chance:.3})"
        );
        assert!(
            hi < 0.9,
            "{d}: the seed ({acc:.3}, interval to {hi:.3}) leaves no room below the ceiling"
        );
    }
}
