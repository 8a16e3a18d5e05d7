//! The fused AdamW update and gradient sum of squares against the composite tensor ops they
//! replace (on flex).

use btx_model::burn::prelude::*;
use btx_model::burn::tensor::Distribution;
use btx_model::to_vec;
use btx_train::adamw::{adamw, sum_squares, AdamWScalars};

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn fused_adamw_matches_the_composite_update() {
    let dev = Device::flex();
    dev.seed(3);
    let r = |s: f64| Tensor::<2>::random([37, 129], Distribution::Normal(0.0, s), &dev);
    let (p, g, m) = (r(1.0), r(0.1), r(0.01));
    let v = r(0.01).abs();
    let (lr, wd, b1, b2, eps, t) = (1e-3f64, 0.1f64, 0.9f64, 0.95f64, 1e-8f64, 3i32);
    let (bc1, bc2s) = (1.0 - b1.powi(t), (1.0 - b2.powi(t)).sqrt());
    let s = AdamWScalars {
        decay: (1.0 - lr * wd) as f32,
        one_minus_b1: (1.0 - b1) as f32,
        b2: b2 as f32,
        one_minus_b2: (1.0 - b2) as f32,
        bc2_sqrt: bc2s as f32,
        eps: eps as f32,
        step: (lr / bc1) as f32,
        grad_scale: 0.7,
    };
    // Shared inputs: fresh output buffers.
    let (pf, mf, vf) =
        adamw(p.clone(), g.clone(), m.clone(), v.clone(), s).unwrap_or_else(|_| panic!("flex"));
    // Sole owner of p, m, v (deep copies): updated in place, the same numbers.
    let own = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &dev);
    let (pi, mi, vi) =
        adamw(own(&p), g.clone(), own(&m), own(&v), s).unwrap_or_else(|_| panic!("flex"));
    for (a, b) in [(&pf, pi), (&mf, mi), (&vf, vi)] {
        assert_eq!(
            to_vec(a.clone()),
            to_vec(b),
            "in-place and fresh updates differ"
        );
    }
    // The composite update of btx-train's AdamW, on the clipped gradient.
    let g = g * 0.7;
    let p1 = p * (1.0 - lr * wd);
    let m1 = m.clone() + (g.clone() - m) * (1.0 - b1);
    let v1 = v * b2 + g.clone() * g * (1.0 - b2);
    let denom = v1.clone().sqrt() / bc2s + eps;
    let p2 = p1 - m1.clone() / denom * (lr / bc1);
    for (name, a, b) in [("p", pf, p2), ("m", mf, m1), ("v", vf, v1)] {
        let e = rel_err(&to_vec(a), &to_vec(b));
        assert!(e < 1e-6, "{name} differs by {e}");
    }
}

#[test]
fn fused_sum_of_squares_matches_composite_also_on_transposed_gradients() {
    let dev = Device::flex();
    dev.seed(4);
    for shape in [[1, 1], [3, 5], [37, 129], [300, 257]] {
        let g = Tensor::<2>::random(shape, Distribution::Normal(0.0, 0.1), &dev);
        let want: f64 = to_vec(g.clone()).iter().map(|&x| (x * x) as f64).sum();
        for t in [g.clone(), g.clone().transpose()] {
            let got = sum_squares(&t).expect("flex");
            assert!(
                (got - want).abs() <= 1e-6 * want,
                "{shape:?}: {got} vs {want}"
            );
        }
    }
}
