//! bf16 mixed precision (`[train] precision = "bf16"`): the same run as in f32, through the
//! composite ops with bf16 matmuls and f32 master weights, follows the f32 run to within
//! bf16's rounding, and is not the f32 run. Its own test binary: the precision is a process
//! setting.

mod tiny;

use btx_core::rng::Rng;
use btx_data::{Batch, FixedBatches};
use btx_model::burn::prelude::Device;
use btx_model::precision::{self, Precision};
use btx_model::{to_vec, ForwardOpts, Model};
use btx_train::{Trainer, TrainerConfig};

fn batches(n: usize) -> Vec<Batch> {
    let mut r = Rng::new(5);
    (0..n)
        .map(|_| Batch {
            ids: (0..2 * 16).map(|_| r.below(61) as i64).collect(),
            batch: 2,
            seq: 16,
            domains: vec![],
        })
        .collect()
}

/// Losses of 25 steps on 3 fixed batches (memorisable: the loss falls).
fn run(moe: bool, p: Precision) -> Vec<f64> {
    let mut tc = TrainerConfig::default();
    tc.train.batch_size = 2;
    tc.train.seq_len = 16;
    tc.train.precision = p;
    tc.optim.warmup_steps = 1;
    tc.optim.lr = 1e-2;
    let m = Model::init(&tiny::cfg(moe), 3, &Device::flex()).unwrap();
    let mut t = Trainer::new(m, tc, &Device::flex()).unwrap();
    let mut d = FixedBatches::new(batches(3));
    (0..25).map(|_| t.step(&mut d).unwrap().loss).collect()
}

#[test]
fn bf16_training_follows_the_f32_run_within_bf16_rounding() {
    for moe in [false, true] {
        let f32_run = run(moe, Precision::F32);
        let bf16_run = run(moe, Precision::Bf16);
        assert_eq!(precision::current(), Precision::Bf16, "the trainer sets it");
        assert!(bf16_run.iter().all(|l| l.is_finite()), "{bf16_run:?}");
        let (first, last) = (f32_run[0], f32_run[24]);
        assert!(
            last < first - 0.5,
            "moe={moe}: f32 learns {first} -> {last}"
        );
        println!("moe={moe}: f32 {f32_run:.4?}\n     bf16 {bf16_run:.4?}");
        // Before any update the losses differ by the operands' rounding alone (bf16 keeps 8
        // bits of mantissa, 2^-9 relative per operand, mostly cancelling in the sums).
        let gap0 = (f32_run[0] - bf16_run[0]).abs() / f32_run[0];
        assert!(gap0 > 0.0, "moe={moe}: bf16 changed nothing");
        assert!(gap0 < 1e-3, "moe={moe}: first loss {gap0:.2e} apart");
        // Then the rounding feeds back through 25 updates at a high learning rate (and flips
        // some top-k choices of the MoE): the curves wander apart by a few percent of the loss
        // drop, step by step, but bf16 must learn as much as f32 (broken gradients through the
        // casts would not).
        let drop = first - last;
        let drop_bf16 = bf16_run[0] - bf16_run[24];
        let gaps: Vec<f64> = f32_run
            .iter()
            .zip(&bf16_run)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let mean_gap = gaps.iter().sum::<f64>() / gaps.len() as f64;
        println!(
            "moe={moe}: first-loss gap {gap0:.1e}; drop f32 {drop:.3}, bf16 {drop_bf16:.3}; mean gap {:.1}%, final gap {:.1}% of the drop",
            100.0 * mean_gap / drop,
            100.0 * gaps[24] / drop
        );
        assert!(
            drop_bf16 > 0.9 * drop,
            "moe={moe}: bf16 learns {drop_bf16:.3}, f32 {drop:.3}"
        );
        assert!(
            gaps[24] < 0.1 * drop,
            "moe={moe}: final gap {:.4} of a drop {drop:.4}",
            gaps[24]
        );
    }

    // One forward: the logits move by bf16's rounding, no more.
    let m = Model::init(&tiny::cfg(true), 9, &Device::flex()).unwrap();
    let ids: Vec<i64> = batches(1)[0].ids.clone();
    let logits = |p| {
        precision::set(p);
        to_vec(m.forward(&ids, 2, 16, &ForwardOpts::default(), None).logits)
    };
    let (a, b) = (logits(Precision::F32), logits(Precision::Bf16));
    precision::set(Precision::F32);
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    println!("logits: max |f32 - bf16| {diff:.2e} of max |logit| {scale:.2e}");
    assert!(diff > 0.0 && diff < 2e-2 * scale, "{diff} vs {scale}");
}
