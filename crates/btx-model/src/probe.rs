//! One forward (and optionally backward) pass that reports every number the Hugging Face
//! reference fixtures hold, under the same tensor names. `btx forward` writes it; the parity
//! tests compare it.

use burn::prelude::*;

use crate::io::HostTensor;
use crate::loss::{hf_aux_loss, lb_paper, lm_loss};
use crate::model::forward::ForwardOpts;
use crate::model::Model;
use crate::names::param_specs;
use crate::to_vec;

/// Runs `model` on `ids: [B, T]`. Names: `logits`, `lm_loss`; for MoE also `router_logits.L`,
/// `lb_paper_per_layer`, `hf_aux_loss`, `total_loss`; with `backward`, `grad.<HF name>` of
/// `lm_loss` (dense) or `total_loss = lm_loss + lb_coef * sum(lb_paper_per_layer)` (MoE).
///
/// For gradients the model must live on an autodiff device (see [`Model::to_device`]).
pub fn probe(
    model: &Model,
    ids: &[i64],
    b: usize,
    t: usize,
    backward: bool,
    lb_coef: f64,
) -> Vec<(String, HostTensor)> {
    let out = model.forward(ids, b, t, &ForwardOpts::default(), None);
    let v = model.cfg.vocab_size;
    let mut res = vec![(
        "logits".to_string(),
        HostTensor::new(vec![b, t, v], to_vec(out.logits.clone())),
    )];
    let lm = lm_loss(out.logits, ids);
    res.push(scalar("lm_loss", &lm));
    let mut total = lm;
    if !out.routers.is_empty() {
        let e = model.cfg.num_experts();
        for (l, r) in out.routers.iter().enumerate() {
            res.push((
                format!("router_logits.{l}"),
                HostTensor::new(vec![b * t, e], to_vec(r.logits.clone())),
            ));
        }
        let per_layer: Vec<Tensor<1>> = out.routers.iter().map(lb_paper).collect();
        let lbs = Tensor::cat(per_layer, 0);
        res.push((
            "lb_paper_per_layer".into(),
            HostTensor::new(vec![out.routers.len()], to_vec(lbs.clone())),
        ));
        let hf = hf_aux_loss(&out.routers).expect("moe layers");
        res.push(scalar("hf_aux_loss", &hf));
        total = total + lbs.sum() * lb_coef;
        res.push(scalar("total_loss", &total));
    }
    if backward {
        let grads = total.backward();
        let specs = param_specs(&model.cfg);
        let mut i = 0;
        model.visit(|name, p| {
            let shape = specs[i].shape.clone();
            i += 1;
            let g = p
                .grad(&grads)
                .map(to_vec)
                .unwrap_or_else(|| vec![0.0; shape.iter().product()]);
            res.push((format!("grad.{name}"), HostTensor::new(shape, g)));
        });
    }
    res
}

fn scalar(name: &str, t: &Tensor<1>) -> (String, HostTensor) {
    (
        name.to_string(),
        HostTensor::new(vec![1], to_vec(t.clone())),
    )
}
