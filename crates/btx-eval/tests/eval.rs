//! BTM mixtures, routing counts and the task scorers' stopping rules.

use std::collections::BTreeMap;

use btx_eval::evaluate::finished;
use btx_eval::lm::{Ensemble, Lm, Weighting};
use btx_eval::routing::{accumulate, dead_experts, normalise, DomainRouting};
use btx_model::burn::prelude::*;
use btx_model::moe::RouterAux;
use btx_model::{Model, ModelConfig};

fn models(n: usize) -> Vec<Model> {
    (0..n)
        .map(|i| {
            Model::init(
                &ModelConfig::llama(40, 16, 24, 2, 2, 1, 64),
                10 + i as u64,
                &Device::flex(),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn mixture_weights_sum_to_one_and_keep_the_top_k() {
    let e = |w| Ensemble::new(models(3), w);
    let ll = [-5.0, -2.0, -9.0];
    let u = e(Weighting::Uniform).weights(&ll);
    assert!(u.iter().all(|x| (*x - 1.0 / 3.0).abs() < 1e-12));
    let p1 = e(Weighting::Posterior { top_k: 1 }).weights(&ll);
    assert_eq!(p1, vec![0.0, 1.0, 0.0]);
    let p2 = e(Weighting::Posterior { top_k: 2 }).weights(&ll);
    assert!((p2.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert_eq!(p2[2], 0.0);
    // The posterior of the two kept experts: exp(-5) / (exp(-5) + exp(-2)).
    assert!((p2[0] - 1.0 / (1.0 + 3f64.exp())).abs() < 1e-12);
    let p3 = e(Weighting::Posterior { top_k: 3 }).weights(&ll);
    assert!((p3.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p3.iter().all(|x| *x > 0.0));
}

#[test]
fn top1_ensemble_scores_each_token_with_the_expert_the_prefix_chooses() {
    let ms = models(3);
    let windows: Vec<Vec<i64>> = (0..2)
        .map(|r| (0..12).map(|i| ((i * 7 + r * 3) % 40) as i64).collect())
        .collect();
    let per: Vec<Vec<Vec<f32>>> = ms.iter().map(|m| m.target_logprobs(&windows)).collect();
    let ens = Ensemble::new(ms, Weighting::Posterior { top_k: 1 });
    let got = ens.target_logprobs(&windows);
    for (b, row) in got.iter().enumerate() {
        let mut ll = [0f64; 3];
        for (t, &lp) in row.iter().enumerate() {
            // The chosen expert maximises the log-likelihood of the prefix (ties: lowest index).
            let mut best = 0;
            for e in 1..3 {
                if ll[e] > ll[best] {
                    best = e;
                }
            }
            assert!(
                (lp - per[best][b][t]).abs() < 1e-5,
                "window {b} position {t}"
            );
            for e in 0..3 {
                ll[e] += per[e][b][t] as f64;
            }
        }
    }
    // A uniform mixture's probability lies between its members' and costs 3 passes.
    let uni = Ensemble::new(models(3), Weighting::Uniform);
    assert_eq!(uni.forward_passes(), 3);
    let u = uni.target_logprobs(&windows);
    for b in 0..2 {
        for t in 0..11 {
            let lo = (0..3).map(|e| per[e][b][t]).fold(f32::INFINITY, f32::min);
            let hi = (0..3)
                .map(|e| per[e][b][t])
                .fold(f32::NEG_INFINITY, f32::max);
            assert!(u[b][t] >= lo - 1e-5 && u[b][t] <= hi + 1e-5);
        }
    }
}

#[test]
fn a_one_model_ensemble_generates_like_the_model() {
    let m = models(1).remove(0);
    let prompts = vec![vec![1, 2, 3, 4], vec![5, 6]];
    let a = m.greedy(&prompts, 6, None, &mut |_, _| false);
    let ens = Ensemble::new(vec![m], Weighting::Posterior { top_k: 1 });
    let b = ens.greedy(&prompts, 6, None, &mut |_, _| false);
    assert_eq!(a, b);
}

#[test]
fn ensemble_rows_that_stop_leave_the_batch_without_changing_the_others() {
    // Stopped rows leave the batch (their caches and likelihoods too): the others continue as
    // they would alone.
    let ens = Ensemble::new(models(3), Weighting::Posterior { top_k: 2 });
    let prompts = vec![vec![1, 2, 3, 4, 5], vec![6, 7], vec![8, 9, 10]];
    let limit = [3, 1, usize::MAX];
    let both = ens.greedy(&prompts, 7, None, &mut |r, g| g.len() >= limit[r]);
    for (r, p) in prompts.iter().enumerate() {
        let alone = ens.greedy(std::slice::from_ref(p), 7, None, &mut |_, _| false);
        assert_eq!(both[r], alone[0][..limit[r].min(7)], "row {r}");
    }
}

#[test]
fn routing_counts_shares_and_dead_experts() {
    let dev = Device::flex();
    // 4 tokens, 3 experts, top-2: token i's top-k ids given explicitly.
    let topk = vec![vec![0, 1], vec![0, 2], vec![0, 1], vec![1, 0]];
    let probs = vec![
        0.5f32, 0.3, 0.2, 0.5, 0.2, 0.3, 0.6, 0.3, 0.1, 0.3, 0.6, 0.1,
    ];
    let p = Tensor::<2>::from_data(TensorData::new(probs.clone(), [4, 3]), &dev);
    let aux = RouterAux {
        logits: p.clone().log(),
        probs: p.clone(),
        sparse_gates: p,
        assigned: topk.clone(),
        topk_ids: topk,
        dropped: 0,
    };
    let mut acc = DomainRouting::default();
    accumulate(&mut acc, &[aux.clone(), aux]);
    normalise(&mut acc);
    assert_eq!(acc.tokens, 4);
    assert_eq!(acc.top1_share[0], vec![0.75, 0.25, 0.0]);
    assert_eq!(acc.topk_share[1], vec![0.5, 0.375, 0.125]);
    let h = |r: &[f32]| -r.iter().map(|x| *x as f64 * (*x as f64).ln()).sum::<f64>();
    let want = probs.chunks(3).map(h).sum::<f64>() / 4.0;
    assert!(
        (acc.entropy[0] - want).abs() < 1e-6,
        "{} vs {want}",
        acc.entropy[0]
    );
    let mut doms = BTreeMap::new();
    doms.insert("x".to_string(), acc);
    assert_eq!(dead_experts(&doms, 3, 0.2), vec![(0, 2), (1, 2)]);
    assert!(dead_experts(&doms, 3, 0.01).is_empty());
}

#[test]
fn generation_stops_when_the_answer_is_complete() {
    assert!(!finished("math", " 3 + 4 = 7 dollars."));
    assert!(finished("math", " 3 + 4 = 7.\n#### 7\n"));
    assert!(finished("math", " blah\n\nQuestion"));
    assert!(!finished("first-line", " 42"));
    assert!(finished("first-line", " 42\n"));
    assert!(!finished("first-word", " lant"));
    assert!(finished("first-word", " lantern."));
}
