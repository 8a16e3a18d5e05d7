//! Weighted domain mixtures: fixed-length windows sampled from one or several domains of a
//! prepared data directory, deterministic in a seed, with a cursor for exact resume.

use std::collections::BTreeMap;

use btx_core::rng::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::datadir::DataDir;
use crate::error::{file_err, DataError, Result};
use crate::shard::Shard;
use crate::source::{Batch, BatchSource};

/// `[data]` of a training config: where the tokens come from and in what proportions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Sampling weight per domain (normalised). Empty = every domain equally.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// `train` (default) or `val`.
    #[serde(default)]
    pub split: Option<String>,
}

/// Samples `[B, T]` windows: each row picks a domain by weight, then a uniformly random start.
pub struct Mixture {
    names: Vec<String>,
    shards: Vec<Shard>,
    cum: Vec<f64>,
    batch: usize,
    seq: usize,
    rng: Rng,
    served: u64,
}

impl Mixture {
    pub fn new(
        data: &DataDir,
        mix: &MixConfig,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        let split = mix.split.clone().unwrap_or_else(|| "train".into());
        let weights: Vec<(String, f64)> = if mix.weights.is_empty() {
            data.domains().into_iter().map(|d| (d, 1.0)).collect()
        } else {
            mix.weights.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        if weights.iter().any(|(_, w)| *w < 0.0 || !w.is_finite()) || total <= 0.0 {
            return Err(DataError::Invalid(format!(
                "mixture weights must be >= 0 with a positive sum, got {weights:?}"
            )));
        }
        let mut names = vec![];
        let mut shards = vec![];
        let mut cum = vec![];
        let mut acc = 0.0;
        for (name, w) in weights {
            if w == 0.0 {
                continue;
            }
            let s = data.shard(&name, &split)?;
            if s.len() < seq + 1 {
                return Err(file_err(
                    &s.path,
                    format!(
                        "{} tokens, fewer than seq_len + 1 = {}\nhint: generate more documents or lower train.seq_len",
                        s.len(),
                        seq + 1
                    ),
                ));
            }
            acc += w / total;
            names.push(name);
            shards.push(s);
            cum.push(acc);
        }
        Ok(Self {
            names,
            shards,
            cum,
            batch,
            seq,
            rng: Rng::derive(seed, "mixture"),
            served: 0,
        })
    }

    pub fn domain_names(&self) -> &[String] {
        &self.names
    }

    fn pick_domain(&mut self) -> usize {
        let u = self.rng.uniform();
        self.cum
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cum.len() - 1)
    }
}

impl BatchSource for Mixture {
    fn next_batch(&mut self) -> Batch {
        let mut ids = Vec::with_capacity(self.batch * self.seq);
        let mut domains = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            let d = self.pick_domain();
            let s = &self.shards[d];
            let start = self.rng.below(s.len() - self.seq + 1);
            ids.extend(s.window(start, self.seq));
            domains.push(d);
        }
        self.served += 1;
        Batch {
            ids,
            batch: self.batch,
            seq: self.seq,
            domains,
        }
    }

    fn cursor(&self) -> Value {
        json!({"rng": self.rng.state, "served": self.served, "domains": self.names})
    }

    fn restore(&mut self, c: &Value) -> std::result::Result<(), String> {
        let names: Vec<String> = c
            .get("domains")
            .and_then(|d| serde_json::from_value(d.clone()).ok())
            .ok_or("cursor has no domain list")?;
        if names != self.names {
            return Err(format!(
                "cursor is for domains {names:?}, the mixture has {:?}",
                self.names
            ));
        }
        self.rng.state = c
            .get("rng")
            .and_then(|v| v.as_u64())
            .ok_or("cursor has no rng")?;
        self.served = c
            .get("served")
            .and_then(|v| v.as_u64())
            .ok_or("cursor has no count")?;
        Ok(())
    }
}

/// Non-overlapping windows of `seq` tokens over a shard, at most `max` of them, spread evenly
/// over the shard (for held-out loss).
pub fn eval_windows(s: &Shard, seq: usize, max: usize) -> Vec<Vec<i64>> {
    let n = s.len() / seq;
    let take = n.min(max);
    if take == 0 {
        return vec![];
    }
    (0..take)
        .map(|i| {
            let w = i * n / take;
            s.window(w * seq, seq)
        })
        .collect()
}
