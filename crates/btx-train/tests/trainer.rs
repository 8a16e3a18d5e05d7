//! Trainer properties: gradient accumulation averages exactly, frozen parameters stay
//! bit-identical, training is deterministic, and a MoE trains with load balancing.

mod tiny;

use btx_core::rng::Rng;
use btx_data::{Batch, FixedBatches};
use btx_model::burn::prelude::Device;
use btx_model::config::Routing;
use btx_model::Model;
use btx_train::{Trainer, TrainerConfig};

fn batches(n: usize, b: usize, t: usize, seed: u64) -> Vec<Batch> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|_| Batch {
            ids: (0..b * t).map(|_| r.below(61) as i64).collect(),
            batch: b,
            seq: t,
            domains: vec![],
        })
        .collect()
}

fn trainer(moe: bool, steps: usize, accum: usize, b: usize) -> Trainer {
    let mut tc = TrainerConfig::default();
    tc.train.steps = steps;
    tc.train.grad_accum = accum;
    tc.train.batch_size = b;
    tc.train.seq_len = 16;
    tc.optim.warmup_steps = 1;
    tc.optim.lr = 1e-2;
    let m = Model::init(&tiny::cfg(moe), 3, &Device::flex()).unwrap();
    Trainer::new(m, tc, &Device::flex()).unwrap()
}

fn params(t: &Trainer) -> Vec<(String, Vec<f32>)> {
    t.model
        .host_params()
        .into_iter()
        .map(|(n, h)| (n, h.data))
        .collect()
}

#[test]
fn accumulating_two_halves_equals_one_full_batch() {
    // Dense: the loss is a mean over tokens, so mean of two half-batch means == full mean.
    let full = batches(3, 4, 16, 1);
    let halves: Vec<Batch> = full
        .iter()
        .flat_map(|b| {
            let h = b.ids.len() / 2;
            [b.ids[..h].to_vec(), b.ids[h..].to_vec()].map(|ids| Batch {
                ids,
                batch: 2,
                seq: 16,
                domains: vec![],
            })
        })
        .collect();
    let mut a = trainer(false, 3, 1, 4);
    let mut b = trainer(false, 3, 2, 2);
    let (mut da, mut db) = (FixedBatches::new(full), FixedBatches::new(halves));
    for _ in 0..3 {
        let sa = a.step(&mut da).unwrap();
        let sb = b.step(&mut db).unwrap();
        assert!(
            (sa.loss - sb.loss).abs() < 1e-5,
            "{} vs {}",
            sa.loss,
            sb.loss
        );
        assert!((sa.grad_norm - sb.grad_norm).abs() / sa.grad_norm < 1e-4);
    }
    for ((n, x), (_, y)) in params(&a).iter().zip(params(&b)) {
        let d = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{n}: {d}");
    }
}

#[test]
fn frozen_experts_stay_bit_identical_and_the_rest_trains() {
    let mut tc = TrainerConfig::default();
    tc.train.steps = 4;
    tc.train.batch_size = 2;
    tc.train.seq_len = 16;
    tc.optim.warmup_steps = 1;
    tc.train.freeze = vec!["model.layers.*.block_sparse_moe.experts.*".into()];
    let m = Model::init(&tiny::cfg(true), 3, &Device::flex()).unwrap();
    let before = m.host_params();
    let mut t = Trainer::new(m, tc, &Device::flex()).unwrap();
    let mut d = FixedBatches::new(batches(4, 2, 16, 2));
    for _ in 0..4 {
        t.step(&mut d).unwrap();
    }
    let after = t.model.host_params();
    let mut frozen = 0;
    for ((n, x), (_, y)) in before.iter().zip(&after) {
        let same = x
            .data
            .iter()
            .zip(&y.data)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if n.contains(".experts.") {
            assert!(same, "{n} changed although frozen");
            frozen += 1;
        } else {
            assert!(!same, "{n} did not train");
        }
    }
    assert_eq!(frozen, 2 * 4 * 3);
    // A pattern that matches nothing is a config error, not a silent no-op.
    let mut tc = TrainerConfig::default();
    tc.train.freeze = vec!["model.layers.*.mlp.nothing".into()];
    let m = Model::init(&tiny::cfg(false), 3, &Device::flex()).unwrap();
    let e = Trainer::new(m, tc, &Device::flex())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("matches no parameter"), "{e}");
}

#[test]
fn training_is_deterministic_and_moe_logs_expert_load() {
    let run = || {
        let mut t = trainer(true, 5, 1, 2);
        let mut d = FixedBatches::new(batches(5, 2, 16, 3));
        let stats: Vec<_> = (0..5).map(|_| t.step(&mut d).unwrap()).collect();
        (stats, params(&t))
    };
    let (s1, p1) = run();
    let (s2, p2) = run();
    assert_eq!(p1, p2);
    for s in &s1 {
        assert_eq!(s.expert_load.len(), 2);
        for layer in &s.expert_load {
            // top-2: per-layer fractions of tokens sum to 2.
            assert!((layer.iter().sum::<f64>() - 2.0).abs() < 1e-9);
        }
        assert!(s.lb_loss > 0.0);
    }
    assert_eq!(s1.last().unwrap().loss, s2.last().unwrap().loss);
    assert!(s1.last().unwrap().loss < s1[0].loss);
}

/// Regression (issue 17): the recipe's `routing = {mode = "sample-top1", anneal_rate, min_tau}`
/// was recorded in config.json but never read (the trainer had temperature fields of its own).
#[test]
fn sample_top1_trains_with_the_models_own_temperature() {
    let first_loss = |min_tau: f64| {
        let mut c = tiny::cfg(true);
        c.moe.as_mut().unwrap().top_k = 1;
        c.moe.as_mut().unwrap().routing = Routing::SampleTop1 {
            anneal_rate: 0.0,
            min_tau,
        };
        let mut tc = TrainerConfig::default();
        tc.train.steps = 1;
        tc.train.batch_size = 2;
        tc.train.seq_len = 16;
        let m = Model::init(&c, 3, &Device::flex()).unwrap();
        let mut t = Trainer::new(m, tc, &Device::flex()).unwrap();
        t.step(&mut FixedBatches::new(batches(1, 2, 16, 4)))
            .unwrap()
            .loss
    };
    // tau = max(min_tau, exp(0)) = 1 and 8: the Gumbel-softmax weights differ, so do the losses.
    assert_ne!(first_loss(0.5), first_loss(8.0));
    assert_eq!(first_loss(0.5), first_loss(1.0));
}
