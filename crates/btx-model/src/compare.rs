//! Tensor-by-tensor comparison against a reference dump (max-abs and norm-relative error), the
//! way llm.c checks itself against PyTorch.

use std::collections::HashMap;

use crate::io::HostTensor;

#[derive(Clone, Debug)]
pub struct Diff {
    pub name: String,
    /// max |a - b|
    pub max_abs: f64,
    /// ||a - b|| / ||b|| (b = reference); 0 when both are zero.
    pub rel_norm: f64,
    /// |a - b| / |b| of the largest-magnitude element, for scalars.
    pub rel_max: f64,
}

impl Diff {
    pub fn of(name: &str, ours: &HostTensor, reference: &HostTensor) -> Result<Self, String> {
        if ours.shape != reference.shape {
            return Err(format!(
                "{name}: shape {:?} vs reference {:?}",
                ours.shape, reference.shape
            ));
        }
        let (mut max_abs, mut dn, mut rn, mut rmax) = (0f64, 0f64, 0f64, 0f64);
        for (a, b) in ours.data.iter().zip(&reference.data) {
            let (a, b) = (*a as f64, *b as f64);
            let d = (a - b).abs();
            max_abs = max_abs.max(d);
            dn += d * d;
            rn += b * b;
            rmax = rmax.max(b.abs());
        }
        let rel_norm = if rn == 0.0 {
            if dn == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            (dn / rn).sqrt()
        };
        let rel_max = if rmax == 0.0 { max_abs } else { max_abs / rmax };
        Ok(Self {
            name: name.to_string(),
            max_abs,
            rel_norm,
            rel_max,
        })
    }
}

impl Diff {
    /// Whether this diff is within the tolerance btx holds itself to against transformers
    /// (the parity tests, `btx forward --compare`, `btx selftest`): logits and router logits
    /// 1e-4 max-abs, every gradient 1e-3 relative to its norm, scalar losses 1e-5 relative.
    /// One rule for every device: a GPU build meets the CPU's tolerances or it fails.
    pub fn within_parity(&self) -> bool {
        match self.name.as_str() {
            "logits" => self.max_abs <= 1e-4,
            n if n.starts_with("router_logits.") => self.max_abs <= 1e-4,
            n if n.starts_with("grad.") => self.rel_norm <= 1e-3,
            // lm_loss, total_loss, hf_aux_loss, lb_paper_per_layer
            _ => self.rel_max <= 1e-5,
        }
    }
}

/// Diffs of every reference tensor that `ours` also has (skipping inputs such as `input_ids`).
/// Missing tensors are reported as errors.
pub fn compare_all(
    ours: &[(String, HostTensor)],
    reference: &HashMap<String, HostTensor>,
) -> (Vec<Diff>, Vec<String>) {
    let ours: HashMap<&str, &HostTensor> = ours.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut names: Vec<&String> = reference.keys().collect();
    names.sort();
    let mut diffs = vec![];
    let mut errors = vec![];
    for n in names {
        match ours.get(n.as_str()) {
            Some(t) => match Diff::of(n, t, &reference[n]) {
                Ok(d) => diffs.push(d),
                Err(e) => errors.push(e),
            },
            None => errors.push(format!("{n}: not produced")),
        }
    }
    (diffs, errors)
}
