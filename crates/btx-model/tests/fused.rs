//! Every fused kernel against its composite reference: forward and every gradient, on random
//! shapes including odd lengths (1, 37, 70, 130 positions: partial and multiple 64-row blocks)
//! and grouped-query attention.

use btx_model::attention::{
    rope_tables, self_attention_composite, self_attention_fused, AttnWeights, SeqInfo,
};
use btx_model::burn::prelude::*;
use btx_model::burn::tensor::Distribution;
use btx_model::fused::cross_entropy::mean_cross_entropy;
use btx_model::loss::lm_loss_composite;
use btx_model::{to_vec, ModelConfig};

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// A gradient leaf on the autodiff flex device.
fn leaf(shape: [usize; 2], std: f64) -> Tensor<2> {
    Tensor::<2>::random(shape, Distribution::Normal(0.0, std), &Device::flex())
        .autodiff()
        .require_grad()
}

#[test]
fn fused_attention_matches_composite_forward_and_gradients() {
    let dev = Device::flex().autodiff();
    for (i, &(b, t, h, kvh, hd)) in [
        (2, 16, 4, 2, 8),
        (1, 1, 2, 1, 8),
        (2, 37, 4, 1, 16),
        (1, 70, 6, 3, 8),
        (1, 130, 2, 2, 16),
        // Head dim 64 (four full vectors in the tile kernel), GQA, a partial last block.
        (1, 90, 4, 2, 64),
    ]
    .iter()
    .enumerate()
    {
        Device::flex().seed(100 + i as u64);
        let d = 24;
        let mut cfg = ModelConfig::llama(50, d, 32, 1, h, kvh, 256);
        cfg.head_dim = hd;
        let x = leaf([b * t, d], 1.0);
        let wq = leaf([h * hd, d], 0.3);
        let wk = leaf([kvh * hd, d], 0.3);
        let wv = leaf([kvh * hd, d], 0.3);
        let wo = leaf([d, h * hd], 0.3);
        let rope = rope_tables(&cfg, 0, t, None, &dev);
        let w = AttnWeights {
            q: &wq,
            k: &wk,
            v: &wv,
            o: &wo,
            bias: None,
            qk_norm: None,
        };
        let seq = SeqInfo {
            b,
            t,
            rope: &rope,
            pads: None,
        };
        // A loss that weighs every output element differently.
        let probe =
            Tensor::<2>::random([b * t, d], Distribution::Normal(0.0, 1.0), &Device::flex())
                .autodiff();
        let run = |fused: bool| {
            let y = if fused {
                self_attention_fused(&cfg, &w, x.clone(), b, t, &rope)
            } else {
                self_attention_composite(
                    &cfg,
                    AttnWeights {
                        q: &wq,
                        k: &wk,
                        v: &wv,
                        o: &wo,
                        bias: None,
                        qk_norm: None,
                    },
                    x.clone(),
                    &seq,
                    None,
                )
            };
            let g = (y.clone() * probe.clone()).sum().backward();
            let grads: Vec<Vec<f32>> = [&x, &wq, &wk, &wv, &wo]
                .iter()
                .map(|p| to_vec(p.grad(&g).expect("gradient")))
                .collect();
            (to_vec(y), grads)
        };
        let (yf, gf) = run(true);
        let (yc, gc) = run(false);
        let e = rel_err(&yf, &yc);
        assert!(e < 1e-5, "case {i}: output differs by {e}");
        for (n, (a, c)) in ["x", "wq", "wk", "wv", "wo"].iter().zip(gf.iter().zip(&gc)) {
            let e = rel_err(a, c);
            assert!(e < 1e-4, "case {i}: d{n} differs by {e}");
        }
    }
}

#[test]
fn fused_cross_entropy_matches_composite() {
    for (i, &(b, t, v)) in [(2, 16, 50), (1, 2, 7), (3, 37, 300), (2, 5, 4096)]
        .iter()
        .enumerate()
    {
        Device::flex().seed(7 + i as u64);
        let logits = leaf([b * t, v], 3.0);
        let ids: Vec<i64> = (0..b * t).map(|j| ((j * 31 + 7) % v) as i64).collect();
        let targets: Vec<i64> = (0..b * t)
            .map(|j| if j % t == t - 1 { -1 } else { ids[j + 1] })
            .collect();
        let lf = mean_cross_entropy(logits.clone(), &targets);
        let gf = to_vec(logits.grad(&lf.backward()).unwrap());
        let lc = lm_loss_composite(logits.clone(), &ids, b, t);
        let gc = to_vec(logits.grad(&lc.backward()).unwrap());
        let (a, c) = (to_vec(lf)[0], to_vec(lc)[0]);
        assert!(((a - c) / c).abs() < 1e-5, "case {i}: loss {a} vs {c}");
        let e = rel_err(&gf, &gc);
        assert!(e < 1e-5, "case {i}: gradient differs by {e}");
        // Inference (no autodiff) gives the same loss.
        let plain = logits.clone().inner();
        let li = to_vec(mean_cross_entropy(plain, &targets))[0];
        assert_eq!(li, a);
    }
}

/// Loss and gradients (dh, dw if tracked) of the fused head + cross-entropy, scaled by `k` so the
/// backward's incoming gradient is not 1.
fn head_loss_grads(
    h: &Tensor<2>,
    w: &Tensor<2>,
    ids: &[i64],
    b: usize,
    t: usize,
    k: f64,
    fused: bool,
) -> (f32, Vec<f32>, Option<Vec<f32>>) {
    let l = if fused {
        btx_model::loss::lm_head_loss(h.clone(), w, ids, b, t)
    } else {
        lm_loss_composite(h.clone().matmul(w.clone().transpose()), ids, b, t)
    };
    let g = (l.clone() * k).backward();
    (
        to_vec(l)[0],
        to_vec(h.grad(&g).expect("dh")),
        w.grad(&g).map(to_vec),
    )
}

#[test]
fn fused_head_cross_entropy_matches_composite() {
    // Blocks hold about 16 MB of logits: small vocabularies give one block; 20000 words give
    // two blocks of 150 rows, 16384 words (rows padded to 16400) three of 200.
    for (i, &(b, t, d, v)) in [
        (2, 16, 24, 50),
        (1, 2, 8, 7),
        (3, 37, 40, 300),
        (1, 256, 16, 33),
        (1, 300, 8, 20000),
        (2, 300, 8, 16384),
    ]
    .iter()
    .enumerate()
    {
        Device::flex().seed(40 + i as u64);
        let h = leaf([b * t, d], 1.0);
        let ids: Vec<i64> = (0..b * t).map(|j| ((j * 31 + 7) % v) as i64).collect();
        for frozen in [false, true] {
            let w = if frozen {
                Tensor::<2>::random([v, d], Distribution::Normal(0.0, 0.5), &Device::flex())
                    .autodiff()
            } else {
                leaf([v, d], 0.5)
            };
            let (lf, hf, wf) = head_loss_grads(&h, &w, &ids, b, t, 0.37, true);
            let (lc, hc, wc) = head_loss_grads(&h, &w, &ids, b, t, 0.37, false);
            assert!(((lf - lc) / lc).abs() < 1e-5, "case {i}: loss {lf} vs {lc}");
            let e = rel_err(&hf, &hc);
            assert!(e < 1e-5, "case {i}: dh differs by {e}");
            match (wf, wc) {
                (Some(a), Some(c)) => {
                    let e = rel_err(&a, &c);
                    assert!(e < 1e-5, "case {i}: dw differs by {e}");
                }
                (None, None) => assert!(frozen),
                (a, _) => panic!(
                    "case {i}: frozen={frozen} but fused dw is {:?}",
                    a.map(|_| ())
                ),
            }
            // Inference (no autodiff) gives the same loss.
            let li = to_vec(btx_model::loss::lm_head_loss(
                h.clone().inner(),
                &w.clone().inner(),
                &ids,
                b,
                t,
            ))[0];
            assert!(
                ((li - lf) / lf).abs() < 1e-6,
                "case {i}: inference loss {li} vs {lf}"
            );
        }
    }
}

#[test]
fn fused_head_cross_entropy_is_identical_on_one_and_two_threads() {
    // Several blocks (see above).
    let (b, t, d, v) = (2, 300, 8, 16384);
    Device::flex().seed(9);
    let h = leaf([b * t, d], 1.0);
    let w = leaf([v, d], 0.5);
    let ids: Vec<i64> = (0..b * t).map(|j| ((j * 17 + 3) % v) as i64).collect();
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| head_loss_grads(&h, &w, &ids, b, t, 1.0, true))
    };
    let (l1, h1, w1) = run(1);
    let (l2, h2, w2) = run(2);
    assert_eq!(l1.to_bits(), l2.to_bits(), "loss {l1} vs {l2}");
    assert!(h1 == h2, "dh differs between 1 and 2 threads");
    assert!(w1 == w2, "dw differs between 1 and 2 threads");
}

/// The fused all-experts FFN and the composite per-expert path on the same rows: output,
/// dX and every weight gradient (one expert frozen, one with no rows), on 1 and 2 threads.
#[test]
fn fused_experts_ffn_matches_expert_by_expert() {
    use btx_model::fused::experts::experts_ffn;
    use btx_model::moe::Mlp;
    let dev = Device::flex();
    for (case, sizes) in [vec![300, 0, 7, 2100], vec![5], vec![1, 2], vec![200, 0, 90]]
        .iter()
        .enumerate()
    {
        dev.seed(200 + case as u64);
        // The last case: weight gradients wider than one column block (and a partial block).
        let (d, f) = if case == 3 { (136, 300) } else { (24, 40) };
        let m: usize = sizes.iter().sum();
        let x = leaf([m, d], 1.0);
        let experts: Vec<Mlp> = (0..sizes.len())
            .map(|e| {
                let frozen = e == 0 && sizes.len() > 2;
                let w = |shape| {
                    if frozen {
                        Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.3), &dev).autodiff()
                    } else {
                        leaf(shape, 0.3)
                    }
                };
                Mlp {
                    gate: w([f, d]),
                    up: w([f, d]),
                    down: w([d, f]),
                }
            })
            .collect();
        let mut bounds = vec![0];
        for s in sizes {
            bounds.push(bounds.last().unwrap() + s);
        }
        let probe = Tensor::<2>::random([m, d], Distribution::Normal(0.0, 1.0), &dev).autodiff();
        let params = |mlps: &[Mlp]| -> Vec<Tensor<2>> {
            mlps.iter()
                .flat_map(|e| [e.gate.clone(), e.up.clone(), e.down.clone()])
                .collect()
        };
        let run = |fused: bool| {
            let y = if fused {
                let w: Vec<_> = experts.iter().map(|e| (&e.gate, &e.up, &e.down)).collect();
                experts_ffn(x.clone(), &bounds, &w)
            } else {
                let ys: Vec<Tensor<2>> = experts
                    .iter()
                    .enumerate()
                    .filter(|(e, _)| sizes[*e] > 0)
                    .map(|(e, mlp)| mlp.forward(x.clone().slice([bounds[e]..bounds[e + 1], 0..d])))
                    .collect();
                Tensor::cat(ys, 0)
            };
            let g = (y.clone() * probe.clone()).sum().backward();
            let grads: Vec<Option<Vec<f32>>> = std::iter::once(x.clone())
                .chain(params(&experts))
                .map(|p| p.grad(&g).map(to_vec))
                .collect();
            (to_vec(y), grads)
        };
        let (yc, gc) = run(false);
        for threads in [1, 2] {
            let (yf, gf) = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(true));
            let e = rel_err(&yf, &yc);
            assert!(e < 1e-6, "case {case}: output differs by {e}");
            for (i, (a, c)) in gf.iter().zip(&gc).enumerate() {
                match (a, c) {
                    (Some(a), Some(c)) => {
                        let e = rel_err(a, c);
                        assert!(e < 1e-5, "case {case}: gradient {i} differs by {e}");
                    }
                    // Frozen, or an expert with no rows (the composite path never runs it).
                    (None, None) => {}
                    (a, _) => panic!("case {case}: gradient {i}: fused {:?}", a.is_some()),
                }
            }
            if threads == 1 {
                continue;
            }
            let (y1, g1) = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| run(true));
            assert!(y1 == yf && g1 == gf, "case {case}: 1 and 2 threads differ");
        }
    }
}

#[test]
fn fused_linear_matches_matmul_forward_and_gradients() {
    use btx_model::fused::linear::linear;
    let dev = Device::flex();
    for (i, &(m, k, n)) in [
        (1, 1, 1),
        (7, 33, 5),
        (300, 257, 190),
        (2048, 256, 704),
        (150, 704, 40),
        (0, 8, 4),
    ]
    .iter()
    .enumerate()
    {
        dev.seed(70 + i as u64);
        let x = leaf([m, k], 1.0);
        let probe = Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &dev).autodiff();
        // Both tracked, and a frozen weight (autodiff, no gradient).
        for frozen in [false, true] {
            let w = if frozen {
                Tensor::<2>::random([n, k], Distribution::Normal(0.0, 0.1), &dev).autodiff()
            } else {
                leaf([n, k], 0.1)
            };
            let yf = linear(x.clone(), w.clone());
            let yc = x.clone().matmul(w.clone().transpose());
            let gf = (yf.clone() * probe.clone()).sum().backward();
            let gc = (yc.clone() * probe.clone()).sum().backward();
            let e = rel_err(&to_vec(yf), &to_vec(yc));
            assert!(e < 1e-6, "case {i}: output differs by {e}");
            if m == 0 {
                continue;
            }
            let e = rel_err(&to_vec(x.grad(&gf).unwrap()), &to_vec(x.grad(&gc).unwrap()));
            assert!(e < 1e-6, "case {i}: dx differs by {e}");
            if frozen {
                assert!(w.grad(&gf).is_none(), "a frozen weight got a gradient");
            } else {
                let e = rel_err(&to_vec(w.grad(&gf).unwrap()), &to_vec(w.grad(&gc).unwrap()));
                assert!(e < 1e-6, "case {i}: dw differs by {e}");
            }
        }
        // Inference (no autodiff) gives the same numbers.
        let (xi, wi) = (
            Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &dev),
            Tensor::<2>::random([n, k], Distribution::Normal(0.0, 1.0), &dev),
        );
        let e = rel_err(
            &to_vec(linear(xi.clone(), wi.clone())),
            &to_vec(xi.matmul(wi.transpose())),
        );
        assert!(
            e < 1e-6 || m == 0,
            "case {i}: inference output differs by {e}"
        );
    }
}

/// The linear layer's output and gradients on 1, 2 and 3 threads (halves of each product one
/// after the other, side by side, or themselves spread over the pool): same bits.
#[test]
fn linear_layer_is_bit_identical_on_one_two_and_three_threads() {
    use btx_model::fused::linear::linear;
    for (i, &(m, k, n)) in [
        (300, 257, 190),
        (2048, 256, 704),
        (150, 704, 40),
        (15, 8, 4),
        (33, 17, 1),
    ]
    .iter()
    .enumerate()
    {
        Device::flex().seed(90 + i as u64);
        let x = leaf([m, k], 1.0);
        let w = leaf([n, k], 0.1);
        let probe =
            Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &Device::flex()).autodiff();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let y = linear(x.clone(), w.clone());
                    let g = (y.clone() * probe.clone()).sum().backward();
                    (
                        to_vec(x.grad(&g).unwrap()),
                        to_vec(w.grad(&g).unwrap()),
                        to_vec(y),
                    )
                })
        };
        let one = on(1);
        for t in [2, 3] {
            let other = on(t);
            assert!(
                one.0 == other.0,
                "case {i}: dx differs between 1 and {t} threads"
            );
            assert!(
                one.1 == other.1,
                "case {i}: dw differs between 1 and {t} threads"
            );
            assert!(
                one.2 == other.2,
                "case {i}: y differs between 1 and {t} threads"
            );
        }
    }
}

/// The trainer's determinism across thread counts rests on gemm splitting only the output
/// among threads: a product must come out bit-identical on 1 and on 2 threads.
#[test]
fn products_are_bit_identical_on_one_and_two_threads() {
    use btx_kernels::gemm::product;
    for &(m, k, n) in &[(300, 257, 190), (2048, 256, 704), (704, 2048, 256)] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 997) as f32 * 1e-3 - 0.5)
            .collect();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                // Row-major, and with a transposed left operand (as for weight gradients).
                .install(|| {
                    (
                        product(m, n, k, &a, k, 1, &b, n, 1),
                        product(m, n, k, &a, 1, m, &b, n, 1),
                    )
                })
        };
        assert!(
            on(1) == on(2),
            "[{m}x{k}]·[{k}x{n}] differs between 1 and 2 threads"
        );
    }
}

#[test]
fn fused_moe_combine_matches_gate_multiply_and_scatter_add() {
    use btx_model::burn::tensor::{IndexingUpdateOp, Int};
    use btx_model::fused::moe::{combine, Routes};
    use std::sync::Arc;
    let dev = Device::flex();
    // (tokens, width, destination token of each row): top-2-like, a token with no rows (dropped
    // by a capacity limit), rows of one token far apart, and a single row.
    let cases: Vec<(usize, usize, Vec<usize>)> = vec![
        (5, 8, vec![0, 2, 4, 1, 0, 3, 2, 4, 1]),
        (70, 33, (0..140).map(|r| (r * 37 + r / 70) % 70).collect()),
        (4, 3, vec![3]),
    ];
    for (i, (n, d, tok)) in cases.into_iter().enumerate() {
        dev.seed(90 + i as u64);
        let m = tok.len();
        let y = leaf([m, d], 1.0);
        let g = Tensor::<1>::random([m], Distribution::Normal(0.5, 0.2), &dev)
            .autodiff()
            .require_grad();
        let probe = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &dev).autodiff();
        let routes = Arc::new(Routes::new(tok.clone(), n));
        let fused = combine(y.clone(), g.clone(), routes);
        let idx: Vec<i64> = tok.iter().map(|&t| t as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [m]), &dev.clone().autodiff());
        let comp = Tensor::<2>::zeros([n, d], &dev.clone().autodiff()).select_assign(
            0,
            idx,
            y.clone() * g.clone().unsqueeze_dim(1),
            IndexingUpdateOp::Add,
        );
        assert!(
            rel_err(&to_vec(fused.clone()), &to_vec(comp.clone())) < 1e-6,
            "case {i}"
        );
        let gf = (fused * probe.clone()).sum().backward();
        let gc = (comp * probe).sum().backward();
        let e = rel_err(&to_vec(y.grad(&gf).unwrap()), &to_vec(y.grad(&gc).unwrap()));
        assert!(e < 1e-6, "case {i}: dy differs by {e}");
        let (a, b) = (g.grad(&gf).unwrap(), g.grad(&gc).unwrap());
        let e = rel_err(&to_vec(a), &to_vec(b));
        assert!(e < 1e-5, "case {i}: dgate differs by {e}");
    }
}

#[test]
fn fused_swiglu_and_rmsnorm_match_composite() {
    use btx_model::attention::{rms_norm, rms_norm_composite};
    use btx_model::burn::tensor::activation::silu;
    use btx_model::fused::elementwise::swiglu;
    for (i, &(n, f)) in [(1, 1), (7, 33), (300, 200), (64, 8193)].iter().enumerate() {
        Device::flex().seed(50 + i as u64);
        let (a, b) = (leaf([n, f], 3.0), leaf([n, f], 1.0));
        let probe =
            Tensor::<2>::random([n, f], Distribution::Normal(0.0, 1.0), &Device::flex()).autodiff();
        let fused = swiglu(a.clone(), b.clone());
        let gf = (fused.clone() * probe.clone()).sum().backward();
        let comp = silu(a.clone()) * b.clone();
        let gc = (comp.clone() * probe.clone()).sum().backward();
        assert!(
            rel_err(&to_vec(fused), &to_vec(comp)) < 1e-6,
            "swiglu case {i}"
        );
        for (nm, p) in [("a", &a), ("b", &b)] {
            let e = rel_err(&to_vec(p.grad(&gf).unwrap()), &to_vec(p.grad(&gc).unwrap()));
            assert!(e < 1e-5, "swiglu case {i}: d{nm} differs by {e}");
        }
        // RMSNorm over the same shapes, weight as a [1, f] row. (A width of 1 is degenerate:
        // the output is sign(x) w and its gradient pure cancellation in both versions.)
        if f == 1 {
            continue;
        }
        let x = leaf([n, f], 2.0);
        let w = leaf([1, f], 1.0);
        let yf = rms_norm(x.clone(), &w, 1e-5);
        let gf = (yf.clone() * probe.clone()).sum().backward();
        let yc = rms_norm_composite(x.clone(), &w, 1e-5);
        let gc = (yc.clone() * probe.clone()).sum().backward();
        assert!(rel_err(&to_vec(yf), &to_vec(yc)) < 1e-5, "rms case {i}");
        for (nm, p) in [("x", &x), ("w", &w)] {
            let e = rel_err(&to_vec(p.grad(&gf).unwrap()), &to_vec(p.grad(&gc).unwrap()));
            assert!(e < 1e-4, "rms case {i}: d{nm} differs by {e}");
        }
    }
}

#[test]
fn fused_moe_gather_matches_select_bit_for_bit() {
    use btx_model::burn::tensor::Int;
    use btx_model::fused::moe::{gather, Routes};
    use std::sync::Arc;
    let dev = Device::flex();
    // (tokens, width, source token of each row): top-2-like in expert order, a token sent
    // nowhere, a token sent three times, more than one block of rows, and a single row.
    let cases: Vec<(usize, usize, Vec<usize>)> = vec![
        (5, 8, vec![0, 2, 4, 1, 0, 2, 2, 4, 1]),
        (
            130,
            33,
            (0..260).map(|r| (r * 37 + r / 130) % 130).collect(),
        ),
        (4, 3, vec![3]),
    ];
    for (i, (n, d, tok)) in cases.into_iter().enumerate() {
        dev.seed(120 + i as u64);
        let m = tok.len();
        let x = leaf([n, d], 1.0);
        let probe = Tensor::<2>::random([m, d], Distribution::Normal(0.0, 1.0), &dev).autodiff();
        let fused = gather(x.clone(), Arc::new(Routes::new(tok.clone(), n)), None);
        let idx: Vec<i64> = tok.iter().map(|&t| t as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [m]), &dev.clone().autodiff());
        let comp = x.clone().select(0, idx);
        assert_eq!(to_vec(fused.clone()), to_vec(comp.clone()), "case {i}");
        let gf = (fused * probe.clone()).sum().backward();
        let gc = (comp * probe).sum().backward();
        let (df, dc) = (to_vec(x.grad(&gf).unwrap()), to_vec(x.grad(&gc).unwrap()));
        assert_eq!(df, dc, "case {i}: dx differs");
        assert!(df.iter().any(|&v| v != 0.0), "case {i}: no gradient at all");
    }
}

/// One input read by several projections (`linears`) and a residual block (`Residual`): the
/// input's gradient, summed inside the ops' backward passes, against burn summing the composite
/// versions' gradients; also a block whose input arrives from an op upstream (so the sum has to
/// reach that op) and identical bits on 1, 2 and 3 threads.
#[test]
fn shared_input_gradients_match_composite_and_thread_counts() {
    use btx_model::attention::{rms_norm_composite, Residual};
    for (i, &(m, k, ns)) in [
        (1, 1, &[1usize, 2][..]),
        (37, 24, &[16, 8, 8][..]),
        (300, 257, &[190, 64][..]),
        (2048, 256, &[256, 128, 128][..]),
    ]
    .iter()
    .enumerate()
    {
        Device::flex().seed(300 + i as u64);
        let x0 = leaf([m, k], 1.0);
        let ws: Vec<Tensor<2>> = ns.iter().map(|&n| leaf([n, k], 0.1)).collect();
        let norm = leaf([1, k], 1.0);
        let back = leaf([k, k], 0.1);
        let probes: Vec<Tensor<2>> = ns
            .iter()
            .map(|&n| {
                Tensor::<2>::random([m, n], Distribution::Normal(0.0, 1.0), &Device::flex())
                    .autodiff()
            })
            .collect();
        let probe_x =
            Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &Device::flex()).autodiff();
        // x comes from an op (so its gradient flows on to x0 and `back`), then one residual
        // block whose inner function is the projections, their outputs folded back to k columns.
        let run = |fused: bool| {
            let x = btx_model::linear(x0.clone(), &back);
            let refs: Vec<&Tensor<2>> = ws.iter().collect();
            let (ys, out) = if fused {
                let (res, h) = Residual::norm(x, &norm, 1e-5);
                let ys = btx_model::linears(h, &refs);
                let delta = ys[0].clone().sum_dim(1).expand([m, k]);
                (ys, res.output(delta))
            } else {
                let h = rms_norm_composite(x.clone(), &norm, 1e-5);
                let ys: Vec<Tensor<2>> = ws
                    .iter()
                    .map(|w| h.clone().matmul(w.clone().transpose()))
                    .collect();
                let delta = ys[0].clone().sum_dim(1).expand([m, k]);
                (ys.clone(), x + delta)
            };
            let mut loss = (out.clone() * probe_x.clone()).sum();
            for (y, p) in ys.iter().zip(&probes) {
                loss = loss + (y.clone() * p.clone()).sum();
            }
            let g = loss.backward();
            let mut grads = vec![to_vec(out)];
            for p in [&x0, &back, &norm].into_iter().chain(&ws) {
                grads.push(to_vec(p.grad(&g).expect("gradient")));
            }
            grads
        };
        let fused = run(true);
        let comp = run(false);
        for (j, (f, c)) in fused.iter().zip(&comp).enumerate() {
            let e = rel_err(f, c);
            assert!(e < 1e-4, "case {i}: result {j} differs by {e}");
        }
        for t in [2, 3] {
            let other = rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| run(true));
            assert!(
                other == fused,
                "case {i}: differs between 1 and {t} threads"
            );
        }
    }
}

/// The shares are counted by what is built: a residual block's norm without its add (one
/// consumer) still passes its gradient on, and projections of an input that needs no gradient
/// leave the weights' gradients as they were.
#[test]
fn shared_input_gradients_count_the_consumers_built() {
    use btx_model::attention::{rms_norm, Residual};
    Device::flex().seed(400);
    let x = leaf([8, 4], 1.0);
    let w = leaf([1, 4], 1.0);
    let (_res, h) = Residual::norm(x.clone(), &w, 1e-5);
    let g = h.sum().backward();
    let alone = rms_norm(x.clone(), &w, 1e-5).sum().backward();
    assert_eq!(
        to_vec(x.grad(&g).expect("the norm's gradient")),
        to_vec(x.grad(&alone).unwrap())
    );
    let frozen =
        Tensor::<2>::random([8, 4], Distribution::Normal(0.0, 1.0), &Device::flex()).autodiff();
    let (w1, w2) = (leaf([3, 4], 0.1), leaf([5, 4], 0.1));
    let ys = btx_model::linears(frozen.clone(), &[&w1, &w2]);
    let g = (ys[0].clone().sum() + ys[1].clone().sum()).backward();
    for (w, n) in [(&w1, 3), (&w2, 5)] {
        let want = frozen.clone().sum_dim(0).expand([n, 4]);
        let e = rel_err(&to_vec(w.grad(&g).unwrap()), &to_vec(want));
        assert!(e < 1e-6, "weight gradient differs by {e}");
    }
}

#[test]
fn fused_row_softmax_matches_composite() {
    use btx_model::burn::tensor::activation::softmax;
    use btx_model::fused::elementwise::softmax_rows;
    for (i, &(n, e)) in [(1, 1), (5, 2), (7, 4), (300, 33), (2048, 4)]
        .iter()
        .enumerate()
    {
        Device::flex().seed(500 + i as u64);
        let x = leaf([n, e], 3.0);
        let probe =
            Tensor::<2>::random([n, e], Distribution::Normal(0.0, 1.0), &Device::flex()).autodiff();
        let yf = softmax_rows(x.clone());
        let gf = (yf.clone() * probe.clone()).sum().backward();
        let yc = softmax(x.clone(), 1);
        let gc = (yc.clone() * probe.clone()).sum().backward();
        let e1 = rel_err(&to_vec(yf), &to_vec(yc));
        assert!(e1 < 1e-6, "case {i}: output differs by {e1}");
        let (a, c) = (to_vec(x.grad(&gf).unwrap()), to_vec(x.grad(&gc).unwrap()));
        let e2 = rel_err(&a, &c);
        // (A single column has a zero gradient both ways, up to rounding.)
        assert!(
            e2 < 1e-5 || (e == 1 && a.iter().all(|v| v.abs() < 1e-6)),
            "case {i}: dx differs by {e2}"
        );
    }
}
