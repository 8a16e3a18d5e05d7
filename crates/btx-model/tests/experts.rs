//! Attention experts (BAM) and expert removal: identical attention experts reproduce the dense
//! model (both variants, training path and cached/padded generation path), KV-cache decoding
//! equals a full forward with the experts' (or the shared) KV heads cached, checkpoints round-trip, and a
//! removed expert's weights and router rows are gone while the others are untouched.

use btx_model::burn::prelude::*;
use btx_model::config::{AttnExpertsConfig, MoeConfig, Routing};
use btx_model::generate::{generate, Sampling};
use btx_model::moa::MoA;
use btx_model::model::{Attn, Ffn};
use btx_model::moe::Moe;
use btx_model::{to_vec, ForwardOpts, KvCache, Model, ModelConfig};
use btx_testkit::{max_diff, Scratch};

const E: usize = 3;

fn dense_cfg() -> ModelConfig {
    let mut c = ModelConfig::llama(97, 32, 48, 2, 4, 2, 128);
    c.rope_theta = 5e5;
    c
}

fn ids(n: usize, seed: i64) -> Vec<i64> {
    (0..n as i64).map(|i| (i * 37 + seed * 11) % 97).collect()
}

fn random(shape: [usize; 2], std: f64) -> Tensor<2> {
    Tensor::<2>::random(
        shape,
        btx_model::burn::tensor::Distribution::Normal(0.0, std),
        &Device::flex(),
    )
}

/// `cfg` with E FFN experts (top-2) and E attention experts, labelled.
fn with_experts(mut c: ModelConfig, shared_kv: bool) -> ModelConfig {
    c.moe = Some(MoeConfig {
        num_experts: E,
        top_k: 2,
        routing: Routing::TopK,
    });
    c.attn_experts = Some(AttnExpertsConfig {
        num_experts: E,
        shared_kv,
    });
    c.expert_labels = vec!["code".into(), "math".into(), "generalist".into()];
    c
}

/// `dense` with every FFN as E identical experts and every attention as E identical attention
/// experts (keys/values shared or not), routers random (large, so that routing is far from
/// uniform and a wrong weighting would show).
fn identical_experts(dense: &Model, shared_kv: bool) -> Model {
    let mut m = dense.clone();
    m.cfg = with_experts(dense.cfg.clone(), shared_kv);
    for layer in &mut m.layers {
        let Ffn::Dense(mlp) = layer.ffn.clone() else {
            unreachable!()
        };
        layer.ffn = Ffn::Moe(Moe {
            router: random([E, 32], 1.0),
            experts: vec![mlp; E],
        });
        let Attn::Dense { q, k, v, o, .. } = layer.attn.clone() else {
            unreachable!()
        };
        let kv = if shared_kv { 1 } else { E };
        layer.attn = Attn::Experts(MoA::new(
            random([E, 32], 1.0),
            vec![q; E],
            vec![k; kv],
            vec![v; kv],
            vec![o; E],
        ));
    }
    m
}

/// A model with attention experts whose experts all differ.
fn distinct_experts(shared_kv: bool, seed: u64) -> Model {
    let c = with_experts(dense_cfg(), shared_kv);
    let mut m = Model::init(&c, seed, &Device::flex()).unwrap();
    // Init draws routers with std 0.02: make the routing decisive.
    for layer in &mut m.layers {
        if let Attn::Experts(a) = &mut layer.attn {
            a.router = a.router.clone() * 50.0;
        }
    }
    m
}

#[test]
fn identical_attention_experts_reproduce_the_dense_model() {
    let dense = Model::init(&dense_cfg(), 5, &Device::flex()).unwrap();
    let x = ids(16, 4);
    let want = to_vec(
        dense
            .forward(&x, 2, 8, &ForwardOpts::default(), None)
            .logits,
    );
    let s = Sampling::default();
    let prompts = vec![ids(9, 1), ids(5, 2)];
    let want_gen = generate(&dense, &prompts, 6, &s, None, |_, _| false);
    for shared_kv in [false, true] {
        let moa = identical_experts(&dense, shared_kv);
        let out = moa.forward(&x, 2, 8, &ForwardOpts::default(), None);
        assert_eq!(out.attn_routers.len(), 2, "one attention router per layer");
        let d = max_diff(&want, &to_vec(out.logits));
        assert!(
            d < 1e-5,
            "shared_kv={shared_kv}: identical attention experts differ from dense by {d}"
        );
        // Batched, left-padded generation goes through the cached composite path.
        let got = generate(&moa, &prompts, 6, &s, None, |_, _| false);
        assert_eq!(got, want_gen, "shared_kv={shared_kv}");
    }
}

#[test]
fn attention_experts_decode_with_a_cache_per_kv_projection() {
    for shared_kv in [false, true] {
        let m = distinct_experts(shared_kv, 3);
        let x = ids(12, 3);
        let full = to_vec(m.forward(&x, 1, 12, &ForwardOpts::default(), None).logits);
        let mut cache = KvCache::new(2);
        let mut inc = to_vec(
            m.forward(&x[..5], 1, 5, &ForwardOpts::default(), Some(&mut cache))
                .logits,
        );
        for i in 5..12 {
            let step = m.forward(
                &x[i..i + 1],
                1,
                1,
                &ForwardOpts::default(),
                Some(&mut cache),
            );
            inc.extend(to_vec(step.logits));
        }
        assert_eq!(cache.len(), 12);
        // Every expert's KV heads stacked in one cache, or the shared ones once.
        let heads = if shared_kv { 2 } else { 2 * E };
        assert!(cache
            .layers
            .iter()
            .all(|l| l.kv.as_ref().unwrap().0.dims()[1] == heads));
        let d = max_diff(&full, &inc);
        assert!(
            d < 1e-4,
            "shared_kv={shared_kv}: incremental decoding differs by {d}"
        );
        // The KV cache the config reports is what the cache holds.
        let floats: usize = cache
            .layers
            .iter()
            .flat_map(|l| &l.kv)
            .map(|(k, v)| k.shape().num_elements() + v.shape().num_elements())
            .sum();
        assert_eq!(floats, 12 * m.cfg.kv_cache_floats_per_token());
    }
}

#[test]
fn attention_expert_checkpoints_round_trip_in_btx_layout() {
    for shared_kv in [false, true] {
        let m = distinct_experts(shared_kv, 9);
        let d = Scratch::absent(&format!("moa-rt-{shared_kv}"));
        m.save(&d, usize::MAX).unwrap();
        let text = std::fs::read_to_string(d.join("config.json")).unwrap();
        assert!(
            text.contains("BtxMoaForCausalLM") && text.contains("btx_attention_experts"),
            "{text}"
        );
        let back = Model::load(&d, &Device::flex()).unwrap();
        assert_eq!(back.cfg, m.cfg);
        assert_eq!(back.cfg.expert_labels, ["code", "math", "generalist"]);
        let (a, b) = (m.host_params(), back.host_params());
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(ta.data, tb.data, "{na}");
        }
        let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"model.layers.1.self_attn.router.weight"));
        assert!(names.contains(&"model.layers.1.self_attn.experts.2.o_proj.weight"));
        assert_eq!(
            names.contains(&"model.layers.1.self_attn.k_proj.weight"),
            shared_kv,
            "shared keys carry the dense name"
        );
    }
}

#[test]
fn a_removed_expert_is_gone_and_the_others_are_unchanged() {
    for shared_kv in [false, true] {
        let m = distinct_experts(shared_kv, 4);
        let drop = m.cfg.expert_indices(&["math".into()]).unwrap();
        assert_eq!(drop, [1]);
        let p = m.without_experts(&drop).unwrap();
        assert_eq!(p.cfg.expert_labels, ["code", "generalist"]);
        assert_eq!(p.cfg.num_experts(), 2);
        assert_eq!(p.cfg.attn_experts.unwrap().num_experts, 2);
        let host = |m: &Model| -> std::collections::HashMap<String, Vec<f32>> {
            m.host_params()
                .into_iter()
                .map(|(n, t)| (n, t.data))
                .collect()
        };
        let (before, after) = (host(&m), host(&p));
        // Expert 2 (generalist) is now expert 1, bit for bit; expert 0 stays; router rows follow.
        for (name, t) in &after {
            let old = name.replace("experts.1.", "experts.2.");
            if name.ends_with("gate.weight") || name.ends_with("self_attn.router.weight") {
                let full = &before[name];
                let d = 32;
                assert_eq!(t[..d], full[..d], "{name} row 0");
                assert_eq!(t[d..], full[2 * d..], "{name} row 1 is the old row 2");
                continue;
            }
            assert_eq!(t, &before[&old], "{name}");
        }
        // Per layer: the FFN expert's three matrices and the attention expert's q, o (and k, v).
        assert_eq!(
            after.len() + if shared_kv { 2 * 5 } else { 2 * 7 },
            before.len()
        );
        // The pruned model runs, and cannot lose its last experts.
        let x = ids(8, 1);
        let l = to_vec(p.forward(&x, 1, 8, &ForwardOpts::default(), None).logits);
        assert!(l.iter().all(|v| v.is_finite()));
        assert!(p.without_experts(&[0, 1]).is_err());
        let e = m
            .cfg
            .expert_indices(&["law".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("law") && e.contains("generalist"), "{e}");
    }
}

#[test]
fn attention_experts_cost_what_the_config_says() {
    let dense = dense_cfg();
    let mut c = dense.clone();
    c.attn_experts = Some(AttnExpertsConfig {
        num_experts: E,
        shared_kv: false,
    });
    c.moe = Some(MoeConfig {
        num_experts: E,
        top_k: 2,
        routing: Routing::TopK,
    });
    let m = Model::init(&c, 1, &Device::flex()).unwrap();
    let counted: usize = m.host_params().iter().map(|(_, t)| t.data.len()).sum();
    assert_eq!(counted, c.total_params());
    assert_eq!(
        c.kv_cache_floats_per_token(),
        E * dense.kv_cache_floats_per_token()
    );
    c.attn_experts = Some(AttnExpertsConfig {
        num_experts: E,
        shared_kv: true,
    });
    let m = Model::init(&c, 1, &Device::flex()).unwrap();
    let counted: usize = m.host_params().iter().map(|(_, t)| t.data.len()).sum();
    assert_eq!(counted, c.total_params());
    assert_eq!(
        c.kv_cache_floats_per_token(),
        dense.kv_cache_floats_per_token()
    );
}

/// The stacked attention is BAM's definition, `sum_e softmax(R x)_e * Attn_e(x)`, computed
/// expert by expert with the dense attention: distinct experts, both variants, on the fused
/// (training) path and the cached composite path.
#[test]
fn attention_experts_compute_the_gate_weighted_sum_of_their_attentions() {
    use btx_model::attention::{
        rope_tables, self_attention_composite, AttnWeights, LayerCache, SeqInfo,
    };
    let cfg = dense_cfg();
    let (b, t, d) = (2, 7, 32);
    let dev = Device::flex();
    let rope = rope_tables(&cfg, 0, t, None, &dev);
    let seq = SeqInfo {
        b,
        t,
        rope: &rope,
        pads: None,
    };
    let x = random([b * t, d], 1.0);
    for shared_kv in [false, true] {
        let kv = if shared_kv { 1 } else { E };
        let moa = MoA::new(
            random([E, d], 1.0),
            (0..E).map(|_| random([cfg.q_dim(), d], 0.2)).collect(),
            (0..kv).map(|_| random([cfg.kv_dim(), d], 0.2)).collect(),
            (0..kv).map(|_| random([cfg.kv_dim(), d], 0.2)).collect(),
            (0..E).map(|_| random([d, cfg.q_dim()], 0.2)).collect(),
        );
        let probs = to_vec(btx_model::softmax_rows(btx_model::linear(
            x.clone(),
            &moa.router,
        )));
        let mut want = vec![0f32; b * t * d];
        for e in 0..E {
            let s = if shared_kv { 0 } else { e };
            let w = AttnWeights {
                q: &moa.q[e],
                k: &moa.k[s],
                v: &moa.v[s],
                o: &moa.o[e],
                bias: None,
                qk_norm: None,
            };
            let y = to_vec(self_attention_composite(&cfg, w, x.clone(), &seq, None));
            for (i, out) in want.iter_mut().enumerate() {
                *out += probs[(i / d) * E + e] * y[i];
            }
        }
        let (fused, _) = moa.forward(&cfg, x.clone(), &seq, None);
        let mut cache = LayerCache::default();
        let (cached, _) = moa.forward(&cfg, x.clone(), &seq, Some(&mut cache));
        for (path, got) in [("fused", fused), ("cached", cached)] {
            let diff = max_diff(&want, &to_vec(got));
            assert!(
                diff < 1e-5,
                "shared_kv={shared_kv}, {path}: differs from the definition by {diff}"
            );
        }
    }
}

/// Inference keeps the experts' stacked weights between calls; a weight update (every update
/// goes through `Model::map`) must not leave them stale.
#[test]
fn changed_weights_are_never_read_from_the_stacked_cache() {
    let m = distinct_experts(false, 6);
    let fresh = m.clone();
    let x = ids(8, 2);
    let fwd = |m: &Model| to_vec(m.forward(&x, 1, 8, &ForwardOpts::default(), None).logits);
    let before = fwd(&m);
    let halve = |n: &str, t: Tensor<2>| if n.contains("o_proj") { t * 0.5 } else { t };
    let (m, fresh) = (m.map(halve), fresh.map(halve));
    let (a, b) = (fwd(&m), fwd(&fresh));
    assert_eq!(a, b);
    assert_ne!(a, before);
}
