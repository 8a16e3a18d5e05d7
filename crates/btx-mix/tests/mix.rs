//! Merge arithmetic: averages, expert order, split, blend, router init, the identical-copies
//! self-check, upcycling, weight averaging, and refusals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use btx_core::outdir::Existing;
use btx_mix::router::domain_mean_rows;
use btx_mix::{average, mix, upcycle, AttnMix, MixOptions, MixSpec, RouterInitKind};
use btx_model::burn::prelude::Device;
use btx_model::io::HostTensor;
use btx_model::{to_vec, ForwardOpts, Model, ModelConfig, Routing};
use btx_testkit::Scratch;

fn tmp(tag: &str) -> Scratch {
    Scratch::new(&format!("mix-{tag}"))
}

fn cfg() -> ModelConfig {
    ModelConfig::llama(50, 16, 24, 2, 4, 2, 64)
}

/// Saves a random model (distinct per seed) with a tokenizer stand-in file.
fn make(dir: &Path, seed: u64, cfg: &ModelConfig) -> PathBuf {
    let m = Model::init(cfg, seed, &Device::flex()).unwrap();
    // Norms are all ones after init; perturb them so averaging is visible there too.
    let m = m.map(|n, t| {
        if n.contains("norm") {
            t * (1.0 + seed as f32 * 0.1)
        } else {
            t
        }
    });
    m.save(dir, usize::MAX).unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{\"same\": true}").unwrap();
    dir.to_path_buf()
}

fn load(dir: &Path) -> HashMap<String, HostTensor> {
    Model::load(dir, &Device::flex())
        .unwrap()
        .host_params()
        .into_iter()
        .collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * (1.0 + y.abs()))
}

#[test]
fn averages_shared_tensors_and_orders_experts() {
    let d = tmp("order");
    let seed = make(&d.join("seed"), 0, &cfg());
    let experts: Vec<PathBuf> = (1..=3)
        .map(|i| make(&d.join(format!("e{i}")), i, &cfg()))
        .collect();
    let opts = MixOptions {
        spec: MixSpec {
            generalist: true,
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    let out = d.join("mixed");
    let s = mix(&seed, &experts, &opts, &out).unwrap();
    assert_eq!(s.num_experts, 4);
    let mixed = load(&out);
    let srcs: Vec<_> = experts
        .iter()
        .chain(std::iter::once(&seed))
        .map(|p| load(p))
        .collect();
    // Shared tensors: the mean over the 3 experts and the seed.
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "lm_head.weight",
    ] {
        let mean: Vec<f32> = (0..mixed[name].data.len())
            .map(|i| (srcs.iter().map(|m| m[name].data[i] as f64).sum::<f64>() / 4.0) as f32)
            .collect();
        assert_eq!(mixed[name].data, mean, "{name}");
    }
    // Expert e is model e's FFN; the seed (generalist) is last.
    for l in 0..2 {
        for (e, src) in srcs.iter().enumerate() {
            for (w, dense) in [(1, "gate_proj"), (2, "down_proj"), (3, "up_proj")] {
                let a =
                    &mixed[&format!("model.layers.{l}.block_sparse_moe.experts.{e}.w{w}.weight")];
                let b = &src[&format!("model.layers.{l}.mlp.{dense}.weight")];
                assert_eq!(a.data, b.data, "layer {l} expert {e} w{w}");
            }
        }
        assert!(
            mixed[&format!("model.layers.{l}.block_sparse_moe.gate.weight")]
                .data
                .iter()
                .all(|x| *x == 0.0)
        );
    }
    // Weighted averaging, without the generalist.
    let out2 = d.join("weighted");
    let opts = MixOptions {
        spec: MixSpec {
            weights: vec![1.0, 0.0, 3.0],
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    mix(&seed, &experts, &opts, &out2).unwrap();
    let m2 = load(&out2);
    let n = "model.norm.weight";
    let want: Vec<f32> = (0..16)
        .map(|i| ((srcs[0][n].data[i] as f64 + 3.0 * srcs[2][n].data[i] as f64) / 4.0) as f32)
        .collect();
    assert_eq!(m2[n].data, want);
    assert_eq!(
        m2.keys()
            .filter(|k| k.contains(".experts.") && k.ends_with("w1.weight"))
            .count(),
        2 * 3
    );
}

#[test]
fn random_router_init_is_seeded_with_the_given_std() {
    let d = tmp("router");
    let seed = make(&d.join("seed"), 0, &cfg());
    let experts = vec![
        make(&d.join("e1"), 1, &cfg()),
        make(&d.join("e2"), 2, &cfg()),
    ];
    let opts = |s| MixOptions {
        spec: MixSpec {
            router_std: 0.5,
            ..MixOptions::default().spec
        },
        router_seed: s,
        ..Default::default()
    };
    mix(&seed, &experts, &opts(7), &d.join("a")).unwrap();
    mix(&seed, &experts, &opts(7), &d.join("b")).unwrap();
    mix(&seed, &experts, &opts(8), &d.join("c")).unwrap();
    let g = "model.layers.0.block_sparse_moe.gate.weight";
    let (a, b, c) = (load(&d.join("a")), load(&d.join("b")), load(&d.join("c")));
    assert_eq!(a[g].data, b[g].data);
    assert_ne!(a[g].data, c[g].data);
    let std =
        (a[g].data.iter().map(|x| (x * x) as f64).sum::<f64>() / a[g].data.len() as f64).sqrt();
    assert!((std - 0.5).abs() < 0.15, "{std}");
}

#[test]
fn split_cuts_each_ffn_into_chunks_that_sum_to_it() {
    let d = tmp("split");
    let seed = make(&d.join("seed"), 0, &cfg());
    let experts = vec![
        make(&d.join("e1"), 1, &cfg()),
        make(&d.join("e2"), 2, &cfg()),
    ];
    let opts = MixOptions {
        spec: MixSpec {
            split: 2,
            top_k: 4,
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    let s = mix(&seed, &experts, &opts, &d.join("out")).unwrap();
    assert_eq!((s.num_experts, s.expert_intermediate_size), (4, 12));
    let mixed = load(&d.join("out"));
    let e1 = load(&experts[0]);
    let w1 = &e1["model.layers.0.mlp.gate_proj.weight"];
    let w2 = &e1["model.layers.0.mlp.down_proj.weight"];
    // Expert 1 = model 0, chunk 1: rows 12..24 of w1/w3, columns 12..24 of w2.
    assert_eq!(
        mixed["model.layers.0.block_sparse_moe.experts.1.w1.weight"].data,
        w1.data[12 * 16..24 * 16]
    );
    let cols: Vec<f32> = w2
        .data
        .chunks(24)
        .flat_map(|r| r[12..24].to_vec())
        .collect();
    assert_eq!(
        mixed["model.layers.0.block_sparse_moe.experts.1.w2.weight"].data,
        cols
    );
    // SwiGLU is elementwise in the hidden dim, so an FFN's chunks sum to the FFN. Check it end to
    // end: two copies of the seed, each split in 2, soft routing with a zero router (every one
    // of the 4 experts weighted 1/4) gives half the seed's FFN; doubling w2 restores the seed.
    let copies = vec![seed.clone(), seed.clone()];
    let o = MixOptions {
        spec: MixSpec {
            split: 2,
            top_k: 4,
            routing: Routing::Soft,
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    mix(&seed, &copies, &o, &d.join("copies")).unwrap();
    let dense = Model::load(&seed, &Device::flex()).unwrap();
    let moe = Model::load(&d.join("copies"), &Device::flex()).unwrap();
    let moe = moe.map(|n, t| if n.ends_with("w2.weight") { t * 2.0 } else { t });
    let ids: Vec<i64> = (0..16).map(|i| (i * 7) % 50).collect();
    let a = to_vec(
        dense
            .forward(&ids, 1, 16, &ForwardOpts::default(), None)
            .logits,
    );
    let b = to_vec(
        moe.forward(&ids, 1, 16, &ForwardOpts::default(), None)
            .logits,
    );
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn blend_builds_expert_n_from_the_nth_chunk_of_every_ffn() {
    let d = tmp("blend");
    let seed = make(&d.join("seed"), 0, &cfg());
    let experts = vec![
        make(&d.join("e1"), 1, &cfg()),
        make(&d.join("e2"), 2, &cfg()),
    ];
    let opts = MixOptions {
        spec: MixSpec {
            blend: true,
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    let s = mix(&seed, &experts, &opts, &d.join("out")).unwrap();
    assert_eq!((s.num_experts, s.expert_intermediate_size), (2, 24));
    let mixed = load(&d.join("out"));
    let (a, b) = (load(&experts[0]), load(&experts[1]));
    let g = |m: &HashMap<String, HostTensor>, w: &str| {
        m[&format!("model.layers.1.mlp.{w}.weight")].data.clone()
    };
    // Expert 1 = [chunk 1 of model 0; chunk 1 of model 1] (rows of w1, columns of w2).
    let want_w1 = [
        &g(&a, "gate_proj")[12 * 16..24 * 16],
        &g(&b, "gate_proj")[12 * 16..24 * 16],
    ]
    .concat();
    assert_eq!(
        mixed["model.layers.1.block_sparse_moe.experts.1.w1.weight"].data,
        want_w1
    );
    let da = g(&a, "down_proj");
    let db = g(&b, "down_proj");
    let want_w2: Vec<f32> = (0..16)
        .flat_map(|r| [&da[r * 24 + 12..r * 24 + 24], &db[r * 24 + 12..r * 24 + 24]].concat())
        .collect();
    assert_eq!(
        mixed["model.layers.1.block_sparse_moe.experts.1.w2.weight"].data,
        want_w2
    );
    assert!(mix(
        &seed,
        &experts,
        &MixOptions {
            spec: MixSpec {
                blend: true,
                split: 2,
                ..MixOptions::default().spec
            },
            ..Default::default()
        },
        &d.join("x")
    )
    .is_err());
}

#[test]
fn mixing_identical_copies_of_the_seed_gives_the_seeds_logits() {
    let d = tmp("identity");
    let seed = make(&d.join("seed"), 5, &cfg());
    let cases = [
        (3, true, 2, AttnMix::Average),
        (4, false, 2, AttnMix::Average),
        (2, false, 1, AttnMix::Average),
        // Attention experts that are identical copies: the soft mixture is the seed's attention.
        (3, true, 2, AttnMix::Experts),
        (2, false, 1, AttnMix::ExpertsSharedKv),
    ];
    for (n, generalist, k, attention) in cases {
        let copies = vec![seed.clone(); n];
        let out = d.join(format!("m{n}{generalist}{}", attention.name()));
        let opts = MixOptions {
            spec: MixSpec {
                generalist,
                top_k: k,
                attention,
                router_std: 1.0,
                ..MixOptions::default().spec
            },
            router_seed: 3,
            ..Default::default()
        };
        mix(&seed, &copies, &opts, &out).unwrap();
        let dense = Model::load(&seed, &Device::flex()).unwrap();
        let moe = Model::load(&out, &Device::flex()).unwrap();
        // Every shared tensor is bit-identical to the seed's (f64 accumulation).
        let (ps, pm) = (load(&seed), load(&out));
        for (name, t) in &ps {
            if !name.contains(".mlp.")
                && (attention == AttnMix::Average || !name.contains("self_attn"))
            {
                assert_eq!(t.data, pm[name].data, "{name}");
            }
        }
        if attention != AttnMix::Average {
            let q = "model.layers.1.self_attn.q_proj.weight";
            let eq = "model.layers.1.self_attn.experts.1.q_proj.weight";
            assert_eq!(ps[q].data, pm[eq].data);
            assert_eq!(
                moe.cfg.attn_experts.unwrap().num_experts,
                n + generalist as usize
            );
            // Copies from one directory get numbered names (their directory names clash).
            assert_eq!(moe.cfg.expert_labels[0], "expert-0");
        }
        let ids: Vec<i64> = (0..24).map(|i| (i * 13 + 1) % 50).collect();
        let a = to_vec(
            dense
                .forward(&ids, 2, 12, &ForwardOpts::default(), None)
                .logits,
        );
        let b = to_vec(
            moe.forward(&ids, 2, 12, &ForwardOpts::default(), None)
                .logits,
        );
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // The gates of a token sum to 1 up to float rounding; nothing else differs.
        assert!(
            diff < 2e-6,
            "{n} copies, attention {}: logits differ by {diff}",
            attention.name()
        );
    }
}

#[test]
fn upcycling_copies_the_seed_ffn_and_averaging_makes_a_dense_soup() {
    let d = tmp("upcycle");
    let seed = make(&d.join("seed"), 0, &cfg());
    let s = upcycle(&seed, 3, &MixOptions::default(), &d.join("up")).unwrap();
    assert_eq!(s.num_experts, 3);
    let up = load(&d.join("up"));
    let sp = load(&seed);
    for e in 0..3 {
        assert_eq!(
            up[&format!("model.layers.0.block_sparse_moe.experts.{e}.w3.weight")].data,
            sp["model.layers.0.mlp.up_proj.weight"].data
        );
    }
    assert!(up["model.layers.0.block_sparse_moe.gate.weight"]
        .data
        .iter()
        .any(|x| *x != 0.0));
    let experts = vec![
        make(&d.join("e1"), 1, &cfg()),
        make(&d.join("e2"), 2, &cfg()),
    ];
    average(&experts, None, &d.join("soup"), Existing::Refuse).unwrap();
    let soup = load(&d.join("soup"));
    let (a, b) = (load(&experts[0]), load(&experts[1]));
    for (name, t) in &soup {
        let want: Vec<f32> = a[name]
            .data
            .iter()
            .zip(&b[name].data)
            .map(|(x, y)| ((*x as f64 + *y as f64) / 2.0) as f32)
            .collect();
        assert!(close(&t.data, &want), "{name}");
    }
    assert!(!ModelConfig::load(&d.join("soup/config.json"))
        .unwrap()
        .is_moe());
}

#[test]
fn incompatible_models_are_refused_with_the_reason() {
    let d = tmp("refuse");
    let seed = make(&d.join("seed"), 0, &cfg());
    let mut other = cfg();
    other.intermediate_size = 32;
    let bad = make(&d.join("wide"), 1, &other);
    let e = mix(&seed, &[bad], &MixOptions::default(), &d.join("o"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("intermediate_size = 32") && e.contains("wide") && e.contains("hint"),
        "{e}"
    );
    let tok = make(&d.join("tok"), 2, &cfg());
    std::fs::write(tok.join("tokenizer.json"), b"{\"other\": 1}").unwrap();
    let e = mix(&seed, &[tok], &MixOptions::default(), &d.join("o"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer"), "{e}");
    let e1 = make(&d.join("e1"), 1, &cfg());
    mix(
        &seed,
        &[e1.clone(), e1.clone()],
        &MixOptions::default(),
        &d.join("moe"),
    )
    .unwrap();
    let e = mix(
        &seed,
        &[d.join("moe")],
        &MixOptions::default(),
        &d.join("o"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("already a MoE"), "{e}");
    let e = mix(
        &seed,
        &[e1],
        &MixOptions {
            spec: MixSpec {
                top_k: 3,
                ..MixOptions::default().spec
            },
            ..Default::default()
        },
        &d.join("o"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("top_k"), "{e}");
}

#[test]
fn domain_mean_rows_are_centred_scaled_and_zero_for_the_generalist() {
    let mean = |v: f64| Some(vec![vec![v, 1.0, 0.0], vec![0.0, v, 2.0]]);
    let rows = domain_mean_rows(&[mean(1.0), mean(3.0), None], 4.0);
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(r.shape, vec![3, 3]);
        // Two domain rows point in opposite directions (centred) and the generalist is zero.
        let (a, b, g) = (&r.data[0..3], &r.data[3..6], &r.data[6..9]);
        for i in 0..3 {
            assert!((a[i] + b[i]).abs() < 1e-6);
        }
        assert!(g.iter().all(|x| *x == 0.0));
    }
    // Layer 0: h = (1,1,0) and (3,1,0); centre (2,1,0); r = (sqrt2 + sqrt10)/2; ||diff|| = 1.
    let r = (2f64.sqrt() + 10f64.sqrt()) / 2.0;
    assert!((rows[0].data[0] as f64 + 4.0 / r).abs() < 1e-6);
}

/// Regression (issue 17): `--out` pointing at an input used to write over the input's
/// memory-mapped weights (SIGBUS, a 0-byte model.safetensors); an existing output was rewritten
/// silently; a failure half-way left a partial checkpoint.
#[test]
fn outputs_never_touch_inputs_and_replace_only_when_asked_and_whole() {
    let d = tmp("nondestructive");
    let seed = make(&d.join("seed"), 0, &cfg());
    let e1 = make(&d.join("e1"), 1, &cfg());
    let weights = |p: &Path| std::fs::read(p.join("model.safetensors")).unwrap();
    let (seed_bytes, e1_bytes) = (weights(&seed), weights(&e1));
    let replace = MixOptions {
        spec: MixSpec {
            top_k: 1,
            ..MixOptions::default().spec
        },
        existing: Existing::Replace,
        ..Default::default()
    };
    for out in [seed.clone(), e1.clone(), d.to_path_buf(), seed.join("sub")] {
        let mut errs = vec![
            mix(&seed, std::slice::from_ref(&e1), &replace, &out).map(|_| ()),
            average(&[seed.clone(), e1.clone()], None, &out, Existing::Replace).map(|_| ()),
        ];
        if out != e1 {
            // Upcycling reads only the seed.
            errs.push(upcycle(&seed, 2, &replace, &out).map(|_| ()));
        }
        for (i, e) in errs.into_iter().enumerate() {
            let e = e
                .map(|_| format!("call {i} succeeded"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("input") && e.contains("hint"), "{out:?}: {e}");
        }
    }
    assert_eq!(weights(&seed), seed_bytes);
    assert_eq!(weights(&e1), e1_bytes);

    let out = d.join("moe");
    let first = MixOptions {
        spec: MixSpec {
            top_k: 1,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    mix(&seed, std::slice::from_ref(&e1), &first, &out).unwrap();
    let made = weights(&out);
    let e = mix(&seed, std::slice::from_ref(&e1), &first, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not empty") && e.contains("--force"), "{e}");
    assert_eq!(weights(&out), made);

    // An expert missing a tensor fails half-way through the write: the old output stays whole
    // and no staging directory is left behind.
    let broken = d.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(e1.join(f), broken.join(f)).unwrap();
    }
    let mut tensors: Vec<(String, HostTensor)> = load(&e1).into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    tensors.retain(|(n, _)| n != "model.norm.weight");
    btx_model::io::write_tensors(&broken.join("model.safetensors"), &tensors).unwrap();
    let e = mix(&seed, &[broken], &replace, &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.norm.weight"), "{e}");
    assert_eq!(weights(&out), made);
    let left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // With replace, a new output takes the old one's place whole.
    let other = MixOptions {
        spec: MixSpec {
            router_std: 0.5,
            ..replace.spec.clone()
        },
        router_seed: 9,
        ..replace
    };
    mix(&seed, std::slice::from_ref(&e1), &other, &out).unwrap();
    assert_ne!(weights(&out), made);
    Model::load(&out, &Device::flex()).unwrap();
}

#[test]
fn attention_experts_refuse_what_cannot_pair_one_per_model() {
    let d = tmp("attn-refuse");
    let seed = make(&d.join("seed"), 1, &cfg());
    let e = make(&d.join("math"), 2, &cfg());
    for (split, non_ffn, what) in [
        (2, btx_mix::NonFfn::Average, "split"),
        (1, btx_mix::NonFfn::Seed, "non_ffn = \"seed\""),
    ] {
        let opts = MixOptions {
            spec: MixSpec {
                split,
                non_ffn,
                top_k: 1,
                attention: AttnMix::Experts,
                ..MixOptions::default().spec
            },
            ..Default::default()
        };
        let out = d.join(format!("out{split}"));
        let err = mix(&seed, std::slice::from_ref(&e), &opts, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what) && err.contains("attention"), "{err}");
        assert!(!out.exists());
    }
    // Labels default to the directories' names, the seed as generalist last.
    let opts = MixOptions {
        spec: MixSpec {
            generalist: true,
            top_k: 1,
            ..MixOptions::default().spec
        },
        ..Default::default()
    };
    mix(&seed, &[e], &opts, &d.join("ok")).unwrap();
    let c = ModelConfig::load(&d.join("ok/config.json")).unwrap();
    assert_eq!(c.expert_labels, ["math", "generalist"]);
}

/// One truth of how the routers start: the spec's `router_init` (with `router_std`), the
/// options adding only a random router's seed or measured rows, and rows only for a measured
/// start.
#[test]
fn the_spec_says_how_routers_start_and_rows_go_only_with_a_measured_start() {
    use btx_mix::{RouterInit, RouterRows};
    let rows = RouterRows {
        ffn: vec![],
        attn: vec![],
    };
    let start = |kind, rows: Option<RouterRows>| {
        MixOptions {
            spec: MixSpec {
                router_init: kind,
                router_std: 0.3,
                ..MixOptions::default().spec
            },
            router_seed: 5,
            router_rows: rows,
            ..Default::default()
        }
        .router_init()
    };
    assert_eq!(
        start(RouterInitKind::Random, None).unwrap(),
        RouterInit::Random { std: 0.3, seed: 5 }
    );
    assert_eq!(start(RouterInitKind::Zero, None).unwrap(), RouterInit::Zero);
    assert_eq!(
        start(RouterInitKind::Fit, Some(rows.clone())).unwrap(),
        RouterInit::Rows(rows.clone())
    );
    for (kind, r) in [
        (RouterInitKind::Fit, None),
        (RouterInitKind::DomainMean, None),
        (RouterInitKind::Random, Some(rows.clone())),
        (RouterInitKind::Zero, Some(rows)),
    ] {
        let e = start(kind, r).unwrap_err().to_string();
        assert!(e.contains("rows"), "{kind:?}: {e}");
    }
}
