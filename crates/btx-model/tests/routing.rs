//! The routing variants of the paper: forward and backward of each, gradients reaching the
//! router, top-k with k = E equal to soft routing, Switch capacity dropping, sample-top1.

use btx_model::burn::prelude::*;
use btx_model::burn::tensor::Distribution;
use btx_model::loss::{lb_paper, lm_loss};
use btx_model::moe::{Mlp, Moe, RouteOpts};
use btx_model::{to_vec, ForwardOpts, Model, ModelConfig, MoeConfig, Routing};

fn moe_layer(e: usize, dev: &Device) -> Moe {
    let w = |r, c| {
        let t = Tensor::<2>::random([r, c], Distribution::Normal(0.0, 0.3), dev);
        if dev.is_autodiff() {
            t.require_grad()
        } else {
            t
        }
    };
    Moe {
        router: w(e, 8),
        experts: (0..e)
            .map(|_| Mlp {
                gate: w(12, 8),
                up: w(12, 8),
                down: w(8, 12),
            })
            .collect(),
    }
}

fn opts(routing: Routing, k: usize, gumbel: Option<(u64, f64)>) -> RouteOpts {
    RouteOpts {
        routing,
        top_k: k,
        gumbel,
    }
}

/// (routing, top_k, Gumbel noise seed and temperature).
type Variant = (Routing, usize, Option<(u64, f64)>);

fn variants() -> Vec<Variant> {
    vec![
        (Routing::TopK, 2, None),
        (Routing::TopK, 1, None),
        (Routing::Soft, 4, None),
        (
            Routing::Switch {
                capacity_factor: 1.5,
            },
            1,
            None,
        ),
        (
            Routing::SampleTop1 {
                anneal_rate: 1e-4,
                min_tau: 0.5,
            },
            1,
            Some((7, 0.9)),
        ),
    ]
}

#[test]
fn every_variant_backpropagates_into_the_router_and_the_experts() {
    let dev = Device::flex().autodiff();
    dev.seed(3);
    for (routing, k, g) in variants() {
        let layer = moe_layer(4, &dev);
        let x = Tensor::<2>::random([32, 8], Distribution::Normal(0.0, 1.0), &dev);
        // Layer 1 so that sample-top1 really samples (layer 0 routes softly).
        let (out, aux) = layer.forward(x, &opts(routing.clone(), k, g), 1);
        let loss = out.square().mean() + lb_paper(&aux) * 0.01;
        let grads = loss.backward();
        let rg = to_vec(layer.router.grad(&grads).expect("router gradient"));
        assert!(
            rg.iter().any(|v| *v != 0.0),
            "{routing:?}: router gradient is zero"
        );
        let used = layer
            .experts
            .iter()
            .filter(|m| {
                m.gate
                    .grad(&grads)
                    .is_some_and(|g| to_vec(g).iter().any(|v| *v != 0.0))
            })
            .count();
        assert!(used >= 2, "{routing:?}: only {used} experts got gradients");
        let load: f64 = aux.load().iter().sum();
        assert!((load - 1.0).abs() < 1e-9, "{routing:?}");
    }
}

#[test]
fn top_k_with_k_equal_to_e_is_soft_routing() {
    let dev = Device::flex();
    dev.seed(5);
    let layer = moe_layer(4, &dev);
    let x = Tensor::<2>::random([20, 8], Distribution::Normal(0.0, 1.0), &dev);
    let (a, _) = layer.forward(x.clone(), &opts(Routing::TopK, 4, None), 0);
    let (b, _) = layer.forward(x, &opts(Routing::Soft, 4, None), 0);
    let d = to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(d < 1e-6, "{d}");
}

#[test]
fn switch_drops_tokens_beyond_capacity_to_the_residual() {
    let dev = Device::flex();
    let mut layer = moe_layer(4, &dev);
    // A router that sends every token to expert 0.
    let mut r = vec![0f32; 4 * 8];
    r[..8].fill(5.0);
    layer.router = Tensor::from_data(TensorData::new(r, [4, 8]), &dev);
    let x = Tensor::<2>::ones([16, 8], &dev);
    let (out, aux) = layer.forward(
        x,
        &opts(
            Routing::Switch {
                capacity_factor: 1.5,
            },
            1,
            None,
        ),
        0,
    );
    // capacity = ceil(1.5 * 16 / 4) = 6 tokens for expert 0; the other 10 are dropped.
    assert_eq!(aux.dropped, 10);
    let v = to_vec(out);
    for (i, row) in v.chunks(8).enumerate() {
        let zero = row.iter().all(|x| *x == 0.0);
        assert_eq!(zero, i >= 6, "token {i}");
    }
    assert!(aux.assigned[..6].iter().all(|a| a == &vec![0]));
    assert!(aux.assigned[6..].iter().all(|a| a.is_empty()));
}

#[test]
fn sample_top1_samples_in_training_and_takes_the_argmax_at_inference() {
    let dev = Device::flex();
    dev.seed(9);
    let layer = moe_layer(4, &dev);
    let x = Tensor::<2>::random([64, 8], Distribution::Normal(0.0, 1.0), &dev);
    let st = Routing::SampleTop1 {
        anneal_rate: 1e-4,
        min_tau: 0.5,
    };
    let (_, infer) = layer.forward(x.clone(), &opts(st.clone(), 1, None), 1);
    // Inference: the argmax of the logits, gate exactly 1.
    for (a, t) in infer.assigned.iter().zip(&infer.topk_ids) {
        assert_eq!(a, &vec![t[0]]);
    }
    assert!(to_vec(infer.sparse_gates.clone().sum_dim(1))
        .iter()
        .all(|g| *g == 1.0));
    let (_, s1) = layer.forward(x.clone(), &opts(st.clone(), 1, Some((1, 1.0))), 1);
    let (_, s2) = layer.forward(x.clone(), &opts(st.clone(), 1, Some((2, 1.0))), 1);
    let (_, s1b) = layer.forward(x.clone(), &opts(st.clone(), 1, Some((1, 1.0))), 1);
    assert_eq!(
        s1.assigned, s1b.assigned,
        "the same noise seed samples the same experts"
    );
    assert_ne!(
        s1.assigned, s2.assigned,
        "different noise samples differently"
    );
    assert_ne!(
        s1.assigned, infer.assigned,
        "sampling departs from the argmax sometimes"
    );
    // The first MoE layer routes softly.
    let (_, first) = layer.forward(x, &opts(st, 1, Some((1, 1.0))), 0);
    assert!(first.assigned.iter().all(|a| a.len() == 4));
}

#[test]
fn a_whole_moe_model_trains_under_each_routing() {
    for (routing, k, _) in variants() {
        let mut c = ModelConfig::llama(40, 16, 24, 2, 2, 1, 32);
        c.moe = Some(MoeConfig {
            num_experts: 4,
            top_k: k,
            routing: routing.clone(),
        });
        let dev = Device::flex().autodiff();
        let m = Model::init(&c, 1, &Device::flex()).unwrap().to_device(&dev);
        let ids: Vec<i64> = (0..32).map(|i| (i * 3) % 40).collect();
        let o = ForwardOpts {
            gumbel: Some((4, 0.8)),
            ..Default::default()
        };
        let out = m.forward(&ids, 2, 16, &o, None);
        // With top-1 Mixtral routing the gate is softmax over one logit = 1, so only the load
        // balancing term reaches the router; the trainer always adds it for MoE models.
        let lb: Vec<Tensor<1>> = out.routers.iter().map(lb_paper).collect();
        let loss = lm_loss(out.logits, &ids) + Tensor::cat(lb, 0).sum() * 0.01;
        let grads = loss.backward();
        let mut routers = 0;
        m.visit(|n, p| {
            if n.ends_with("block_sparse_moe.gate.weight") {
                let g = to_vec(p.grad(&grads).expect("router grad"));
                assert!(g.iter().any(|x| *x != 0.0), "{routing:?} {n}");
                routers += 1;
            }
        });
        assert_eq!(routers, 2);
    }
}
