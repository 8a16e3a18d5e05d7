//! RoPE's frequency scalings, as transformers computes them (`modeling_rope_utils.py` of
//! transformers 5.25, the arbiter; its fixtures are `testdata/hf-family/llama*`): the inverse
//! frequencies of each rotated pair and the factor applied to cos and sin.
//!
//! `dynamic` (NTK) scaling rescales RoPE's base only once a sequence grows past
//! `max_position_embeddings`; btx refuses longer sequences for every model
//! ([`super::ModelConfig::check_positions`]), so within what btx computes it equals the
//! default RoPE exactly (transformers' own init takes seq_len = max_position_embeddings, where
//! the rescaled base is the base itself).

use serde::{Deserialize, Serialize};

/// How RoPE's frequencies are scaled (`rope_type` with its parameters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain rotate-half RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// NTK-aware scaling past `max_position_embeddings` (equal to the default within it).
    Dynamic { factor: f64 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, smoothed in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN: interpolation and extrapolation blended along a ramp over the dimensions, and
    /// cos/sin scaled by `attention_factor`.
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        /// The resolved factor on cos and sin (given, or from `factor`, `mscale`,
        /// `mscale_all_dim` as transformers derives it).
        attention_factor: f64,
        truncate: bool,
    },
}

impl RopeScaling {
    pub fn name(&self) -> &'static str {
        match self {
            RopeScaling::Default => "default",
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Llama3 { .. } => "llama3",
            RopeScaling::Yarn { .. } => "yarn",
        }
    }

    /// Refuses parameters that make RoPE NaN, infinite or meaningless.
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "rope {} scaling needs {name} > 0, got {v}",
                    self.name()
                ))
            }
        };
        match *self {
            RopeScaling::Default => Ok(()),
            RopeScaling::Linear { factor } | RopeScaling::Dynamic { factor } => {
                pos("factor", factor)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                pos("factor", factor)?;
                pos("low_freq_factor", low_freq_factor)?;
                pos("high_freq_factor", high_freq_factor)?;
                pos(
                    "original_max_position_embeddings",
                    original_max_position_embeddings as f64,
                )?;
                // transformers divides by (high - low) in the smoothing.
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "rope llama3 scaling needs high_freq_factor > low_freq_factor, got {high_freq_factor} and {low_freq_factor}"
                    ));
                }
                Ok(())
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                pos("factor", factor)?;
                pos(
                    "original_max_position_embeddings",
                    original_max_position_embeddings as f64,
                )?;
                pos("beta_fast", beta_fast)?;
                pos("beta_slow", beta_slow)?;
                pos("attention_factor", attention_factor)
            }
        }
    }

    /// The factor on cos and sin (transformers' `attention_scaling`).
    pub fn attention_scaling(&self) -> f32 {
        match self {
            RopeScaling::Yarn {
                attention_factor, ..
            } => *attention_factor as f32,
            _ => 1.0,
        }
    }

    /// The inverse frequency of each rotated pair (`head_dim / 2` of them), in f32 as
    /// transformers computes them (`1 / theta^(2j/d)` in f32, then the type's scaling).
    pub fn inv_freq(&self, theta: f64, head_dim: usize) -> Vec<f32> {
        let half = head_dim / 2;
        // torch: base ** (arange(0, dim, 2).float() / dim) with a Python float base: the power
        // is taken in f32.
        let theta32 = theta as f32;
        let pos_freq: Vec<f32> = (0..half)
            .map(|j| theta32.powf((2 * j) as f32 / head_dim as f32))
            .collect();
        let plain = || pos_freq.iter().map(|p| 1.0 / p).collect::<Vec<f32>>();
        match *self {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => plain(),
            RopeScaling::Linear { factor } => {
                plain().into_iter().map(|f| f / factor as f32).collect()
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let old = old as f64;
                let low_freq_wavelen = (old / low_freq_factor) as f32;
                let high_freq_wavelen = (old / high_freq_factor) as f32;
                let factor = factor as f32;
                plain()
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        // transformers: ~(wavelen < high) * ~(wavelen > low); wavelen is never NaN here
                        // (the frequencies are finite and > 0), so both bounds count as medium.
                        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                        if medium {
                            let smooth = ((old as f32) / wavelen - low_freq_factor as f32)
                                / (high_freq_factor as f32 - low_freq_factor as f32);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect()
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: old,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                let old = old as f64;
                let dim = head_dim as f64;
                let correction_dim = |rotations: f64| {
                    dim * (old / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
                };
                let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
                if truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(dim - 1.0);
                if low == high {
                    high += 0.001;
                }
                let factor32 = factor as f32;
                pos_freq
                    .iter()
                    .enumerate()
                    .map(|(j, &p)| {
                        // torch: (arange(dim // 2).float() - low) / (high - low), clamped, in
                        // f32 with Python-float low/high.
                        let ramp = ((j as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        let interpolation = 1.0 / (factor32 * p);
                        let extrapolation = 1.0 / p;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect()
            }
        }
    }
}

/// YaRN's `mscale` (the paper's Eq. 21), as transformers' `yarn_get_mscale`.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_dynamic_agree_and_linear_divides() {
        let d = RopeScaling::Default.inv_freq(10000.0, 8);
        assert_eq!(d, RopeScaling::Dynamic { factor: 4.0 }.inv_freq(10000.0, 8));
        assert_eq!(d[0], 1.0);
        let l = RopeScaling::Linear { factor: 2.0 }.inv_freq(10000.0, 8);
        for (a, b) in d.iter().zip(&l) {
            assert_eq!(*a / 2.0, *b);
        }
    }

    #[test]
    fn llama3_keeps_high_divides_low() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64,
        };
        let d = RopeScaling::Default.inv_freq(500000.0, 16);
        let l = s.inv_freq(500000.0, 16);
        assert_eq!(l[0], d[0]);
        assert_eq!(l[7], d[7] / 8.0);
    }
}
