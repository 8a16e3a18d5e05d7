//! Oracle routing (`btx eval --route-by-domain`, issue 30's diagnostic): each domain's tokens go
//! to that domain's expert alone, which is exactly the model without every other expert and
//! without the generalist; what it refuses.

use std::path::Path;

use btx_testkit::Scratch;

mod common;
use common::{btx, ok, TINY};

fn eval(model: &Path, data: &Path, extra: &[&str], out: &Path) -> serde_json::Value {
    ok(btx()
        .args(["eval", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--seq-len", "32", "--windows", "6", "--tasks", "0", "--out"])
        .arg(out)
        .args(extra));
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn routing_by_domain_is_each_domain_with_only_its_expert() {
    let s = Scratch::new("oracle");
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let run = s.path().join("run");
    ok(btx().arg("run").arg(&recipe).arg("--out").arg(&run));
    let data = run.join("data/tokens");
    for model in ["mix/btx/model", "finetune/btx/model"] {
        let m = run.join(model);
        let oracle = eval(&m, &data, &["--route-by-domain"], &s.path().join("o.json"));
        let plain = eval(&m, &data, &[], &s.path().join("p.json"));
        for (d, other) in [("math", "code"), ("code", "math")] {
            // Only the domain's expert is left (top-2 renormalised over one expert: weight 1).
            let without = eval(
                &m,
                &data,
                &[
                    "--domains",
                    d,
                    "--without-expert",
                    other,
                    "--without-expert",
                    "generalist",
                    "--allow-generalist",
                ],
                &s.path().join("w.json"),
            );
            let got = &oracle["result"]["domains"][d];
            let want = &without["result"]["domains"][d];
            assert_eq!(got["window_losses"], want["window_losses"], "{model} {d}");
            // Routing changes something: the oracle is not the plain model.
            assert_ne!(
                got["window_losses"], plain["result"]["domains"][d]["window_losses"],
                "{model} {d}"
            );
        }
    }
    // A dense model has no experts to route to; a model without the domain's expert neither.
    let o = btx()
        .args(["eval", "--route-by-domain", "--model"])
        .arg(run.join("seed/model"))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs a MoE model"));
    let pruned = s.path().join("pruned");
    ok(btx()
        .args(["prune-experts", "--model"])
        .arg(run.join("mix/btx/model"))
        .args(["--drop", "math", "--out"])
        .arg(&pruned));
    let o = btx()
        .args(["eval", "--route-by-domain", "--model"])
        .arg(&pruned)
        .arg("--data")
        .arg(&data)
        .args(["--seq-len", "32", "--tasks", "0"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    // The pruned MiX still has its generalist: a domain without an expert is routed there.
    assert!(o.status.success(), "{e}");
    let pruned_all = s.path().join("pruned-all");
    ok(btx()
        .args(["prune-experts", "--model"])
        .arg(run.join("mix/btx/model"))
        .args([
            "--drop",
            "math",
            "generalist",
            "--allow-generalist",
            "--out",
        ])
        .arg(&pruned_all));
    let o = btx()
        .args(["eval", "--route-by-domain", "--model"])
        .arg(&pruned_all)
        .arg("--data")
        .arg(&data)
        .args(["--seq-len", "32", "--tasks", "0"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("no expert of domain \"math\"") && e.contains("hint"),
        "{e}"
    );
}
