//! `btx mix --router-init fit`: routers solved in closed form on the MiX, layer by layer (ridge
//! regression from each layer's FFN inputs over each expert's domain to that expert, or to
//! every model's loss advantage), deterministic, with the generalist's row at zero for domain
//! targets; routes each domain's tokens to its own expert more than a random router does;
//! records each router's fit in mix.json; leaves no scratch behind; refuses before fitting.

use std::path::Path;
use std::process::Command;

use btx_testkit::Scratch;

mod common;
use common::{btx, ok, TINY};

fn mix(run: &Path, out: &Path, init: &[&str]) -> Command {
    let mut c = btx();
    c.args(["mix", "--seed"])
        .arg(run.join("seed/model"))
        .arg("--experts")
        .arg(run.join("experts/math/model"))
        .arg(run.join("experts/code/model"))
        .args(["--domains", "math", "code", "--generalist", "--out"])
        .arg(out)
        .args(init);
    c
}

/// The model at `dir` and its first layer's router rows.
fn router0(dir: &Path) -> (btx_model::Model, btx_model::HostTensor) {
    let m = btx_model::Model::load(dir, &btx_model::burn::prelude::Device::flex()).unwrap();
    let router = m
        .host_params()
        .into_iter()
        .find(|(n, _)| n == "model.layers.0.block_sparse_moe.gate.weight")
        .unwrap()
        .1;
    (m, router)
}

/// Mean over domains of the share of the domain's tokens whose top-1 expert is its own.
fn own_share(model: &Path, data: &Path, out: &Path) -> f64 {
    ok(btx()
        .args(["eval", "--model"])
        .arg(model)
        .arg("--data")
        .arg(data)
        .args(["--seq-len", "32", "--windows", "8", "--tasks", "0", "--out"])
        .arg(out));
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    let r = &j["routing"]["domains"];
    let share = |d: &str, e: usize| r[d]["top1_share"][0][e].as_f64().unwrap();
    (share("math", 0) + share("code", 1)) / 2.0
}

#[test]
fn fitted_routers_are_deterministic_and_route_domains_to_their_experts() {
    let s = Scratch::new("router-fit");
    let recipe = s.path().join("tiny.toml");
    std::fs::write(&recipe, TINY).unwrap();
    let run = s.path().join("run");
    ok(btx().arg("run").arg(&recipe).arg("--out").arg(&run));
    let data = run.join("data/tokens");
    let fit = |out: &Path| {
        let mut c = mix(&run, out, &["--router-init", "fit", "--domain-data"]);
        c.arg(&data);
        c
    };
    let (a, b) = (s.path().join("fit-a"), s.path().join("fit-b"));
    ok(&mut fit(&a));
    ok(&mut fit(&b));
    let bytes = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "two fits differ");
    let (m, router) = router0(&a);
    let d = m.cfg.hidden_size;
    assert_eq!(router.shape, vec![3, d]);
    assert!(
        router.data[2 * d..].iter().all(|&x| x == 0.0),
        "generalist row"
    );
    assert!(router.data[..2 * d].iter().any(|&x| x != 0.0));
    let random = s.path().join("random");
    ok(&mut mix(&run, &random, &[]));
    let (f, r) = (
        own_share(&a, &data, &s.path().join("f.json")),
        own_share(&random, &data, &s.path().join("r.json")),
    );
    assert!(
        f > r,
        "fit routes {f} of its domains' tokens to their experts, random {r}"
    );
    // Each router's fit is recorded (2 layers, the FFN routers), and nothing is left beside
    // the output.
    let fits = |d: &Path| -> Vec<serde_json::Value> {
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("mix.json")).unwrap()).unwrap();
        j["router_fit"].as_array().unwrap().clone()
    };
    let fa = fits(&a);
    assert_eq!(fa.len(), m.cfg.num_layers, "{fa:?}");
    for (l, f) in fa.iter().enumerate() {
        assert_eq!(f["layer"], l);
        assert_eq!(f["router"], "ffn");
        assert!(f["tokens"].as_u64().unwrap() > 100, "{f}");
        let agree = f["agree"].as_f64().unwrap();
        assert!((0.5..=1.0).contains(&agree), "{f}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Advantage targets: deterministic too, and the generalist (the seed) gets a row of its own.
    let adv = |out: &Path| {
        let mut c = fit(out);
        c.args(["--fit-target", "advantage"]);
        c
    };
    let (c1, c2) = (s.path().join("adv-a"), s.path().join("adv-b"));
    ok(&mut adv(&c1));
    ok(&mut adv(&c2));
    assert!(bytes(&c1) == bytes(&c2), "two advantage fits differ");
    let (m, router) = router0(&c1);
    assert!(router.data[2 * d..].iter().any(|&x| x != 0.0));
    assert_ne!(bytes(&c1), bytes(&a));
    assert_eq!(fits(&c1).len(), m.cfg.num_layers);
    // A target without a fit would be ignored: refused by name, nothing written.
    let o = mix(
        &run,
        &s.path().join("y"),
        &["--fit-target", "advantage", "--domain-data"],
    )
    .arg(&data)
    .output()
    .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("fit_target"), "{e}");
    assert!(!s.path().join("y").exists());
    // An output the merge would refuse is refused before the fit runs: nothing is created
    // beside it, what it holds is unchanged.
    let before = bytes(&a);
    let o = fit(&a).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("not empty"), "{e}");
    assert!(!e.contains("router fit"), "{e}");
    assert_eq!(bytes(&a), before);
    // Without domain data there is nothing to fit.
    let o = mix(&run, &s.path().join("x"), &["--router-init", "fit"])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("--domain-data"), "{e}");
    assert!(!s.path().join("x").exists());
}
