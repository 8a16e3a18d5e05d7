//! AdamW exactly as `torch.optim.AdamW` (single-tensor path), the warmup + cosine schedule, and
//! clipping by the global gradient norm (burn's own clipping is per tensor; PyTorch and the
//! paper clip the global norm).

use std::collections::BTreeMap;

use btx_model::burn::prelude::*;
use btx_model::io::HostTensor;

use crate::config::OptimConfig;

/// lr at 0-based step `s` of `total`: linear warmup to the peak, then cosine to
/// `min_lr_ratio * peak` at the last step.
pub fn lr_at(o: &OptimConfig, s: usize, total: usize) -> f64 {
    if s < o.warmup_steps {
        return o.lr * (s + 1) as f64 / o.warmup_steps as f64;
    }
    let span = total.saturating_sub(o.warmup_steps).max(1);
    let prog = ((s - o.warmup_steps) as f64 / span as f64).min(1.0);
    o.lr * (o.min_lr_ratio
        + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * prog).cos()))
}

/// Global L2 norm over gradients (each tensor's sum of squares in f64 on flex, else per tensor
/// in f32; combined in f64).
pub fn global_norm(grads: &[Option<Tensor<2>>]) -> f64 {
    let mut total = 0f64;
    let mut composite: Vec<Tensor<1>> = vec![];
    for g in grads.iter().flatten() {
        match crate::adamw::sum_squares(g) {
            Some(s) => total += s,
            None => composite.push(g.clone().square().sum()),
        }
    }
    if !composite.is_empty() {
        total += btx_model::to_vec(Tensor::cat(composite, 0))
            .iter()
            .map(|x| *x as f64)
            .sum::<f64>();
    }
    total.sqrt()
}

/// PyTorch's `clip_grad_norm_` coefficient: `max_norm / (norm + 1e-6)` when that is below 1,
/// else 1 (no clipping; also when `max_norm <= 0`).
pub fn clip_coef(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 {
        let coef = (max_norm / (norm + 1e-6)) as f32;
        if coef < 1.0 {
            return coef;
        }
    }
    1.0
}

/// AdamW moments of one parameter.
#[derive(Clone, Debug)]
pub struct Moments {
    pub m: Tensor<2>,
    pub v: Tensor<2>,
}

/// AdamW over a model's parameters, identified by name (so state survives a save/load and a
/// change of which parameters are frozen).
#[derive(Debug)]
pub struct AdamW {
    pub cfg: OptimConfig,
    /// Completed update steps (PyTorch's `step` in the bias correction).
    pub t: u64,
    pub state: BTreeMap<String, Moments>,
}

impl AdamW {
    pub fn new(cfg: OptimConfig) -> Self {
        Self {
            cfg,
            t: 0,
            state: BTreeMap::new(),
        }
    }

    /// Advances the step counter; call once per optimizer step before [`AdamW::update`].
    pub fn begin_step(&mut self) {
        self.t += 1;
    }

    /// One AdamW update of parameter `p` (a non-autodiff tensor) with gradient `g * grad_scale`
    /// (the clipping coefficient, 1 for none). `decay` selects weight decay (tensors with >= 2
    /// dims).
    pub fn update(
        &mut self,
        name: &str,
        p: Tensor<2>,
        g: Tensor<2>,
        grad_scale: f32,
        lr: f64,
        decay: bool,
    ) -> Tensor<2> {
        let c = &self.cfg;
        let (b1, b2) = (c.beta1, c.beta2);
        let st = self
            .state
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                m: g.zeros_like(),
                v: g.zeros_like(),
            });
        let t = self.t as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let decay_mul = if decay && c.weight_decay != 0.0 {
            1.0 - lr * c.weight_decay
        } else {
            1.0
        };
        let scalars = crate::adamw::AdamWScalars {
            decay: decay_mul as f32,
            one_minus_b1: (1.0 - b1) as f32,
            b2: b2 as f32,
            one_minus_b2: (1.0 - b2) as f32,
            bc2_sqrt: bc2_sqrt as f32,
            eps: c.eps as f32,
            step: (lr / bc1) as f32,
            grad_scale,
        };
        // Hand the moments over (not clones) so the fused update can work in place.
        let placeholder = || Tensor::<2>::zeros([1, 1], &p.device());
        let (m, v) = (
            std::mem::replace(&mut st.m, placeholder()),
            std::mem::replace(&mut st.v, placeholder()),
        );
        let (p, g) = match crate::adamw::adamw(p, g, m, v, scalars) {
            Ok((p, m, v)) => {
                (st.m, st.v) = (m, v);
                return p;
            }
            Err(inputs) => {
                let (p, g, m, v) = *inputs;
                (st.m, st.v) = (m, v);
                (p, g)
            }
        };
        // The composite path (backends other than flex): the clipping coefficient too.
        let g = if grad_scale != 1.0 { g * grad_scale } else { g };
        let mut p = p;
        if decay_mul != 1.0 {
            p = p * decay_mul;
        }
        // m.lerp_(g, 1 - b1) == m + (1 - b1) (g - m)
        let m = st.m.clone() + (g.clone() - st.m.clone()) * (1.0 - b1);
        let v = st.v.clone() * b2 + g.clone() * g * (1.0 - b2);
        let denom = v.clone().sqrt() / bc2_sqrt + c.eps;
        let p = p - m.clone() / denom * (lr / bc1);
        st.m = m;
        st.v = v;
        p
    }

    /// Moments as host tensors (`m.<name>`, `v.<name>`) for a checkpoint.
    pub fn export(&self, shapes: &BTreeMap<String, Vec<usize>>) -> Vec<(String, HostTensor)> {
        let mut out = vec![];
        for (name, st) in &self.state {
            let shape = shapes[name].clone();
            out.push((
                format!("m.{name}"),
                HostTensor::new(shape.clone(), btx_model::to_vec(st.m.clone())),
            ));
            out.push((
                format!("v.{name}"),
                HostTensor::new(shape, btx_model::to_vec(st.v.clone())),
            ));
        }
        out
    }

    /// Restores moments exported by [`AdamW::export`]; `shape2` maps a name to the in-memory 2-D
    /// shape of that parameter.
    pub fn import(
        &mut self,
        t: u64,
        tensors: &std::collections::HashMap<String, HostTensor>,
        shape2: &BTreeMap<String, [usize; 2]>,
        dev: &Device,
    ) -> Result<(), String> {
        self.t = t;
        self.state.clear();
        for (key, host) in tensors {
            let Some(name) = key.strip_prefix("m.") else {
                continue;
            };
            let v = tensors
                .get(&format!("v.{name}"))
                .ok_or_else(|| format!("optimizer state has m.{name} but no v.{name}"))?;
            let s = *shape2
                .get(name)
                .ok_or_else(|| format!("optimizer state names unknown parameter {name:?}"))?;
            let mk =
                |h: &HostTensor| Tensor::<2>::from_data(TensorData::new(h.data.clone(), s), dev);
            self.state.insert(
                name.to_string(),
                Moments {
                    m: mk(host),
                    v: mk(v),
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_the_golden_formula() {
        let o = OptimConfig {
            lr: 1e-3,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        let lrs: Vec<f64> = (0..6).map(|s| lr_at(&o, s, 6)).collect();
        assert_eq!(lrs[0], 5e-4);
        assert_eq!(lrs[1], 1e-3);
        assert!((lrs[2] - 1e-3).abs() < 1e-15);
        assert!((lrs[4] - 1e-3 * 0.55).abs() < 1e-12);
        // Decays monotonically towards the floor.
        assert!(lrs[5] < lrs[4] && lrs[5] > 1e-4);
    }
}
