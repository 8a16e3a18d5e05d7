//! A cost model for N workers: where BTX's advantage lives. The paper compares methods at
//! equal GPU-days on a cluster, where BTX's experts train in parallel with no communication,
//! while the report's main comparison is at equal FLOPs. This model turns each method's
//! measured FLOPs and shapes into time on N workers of a stated speed and link:
//!
//! - a dense stage trains data-parallel on all N workers: FLOPs / (N·R), plus per step a ring
//!   all-reduce of every gradient, 2·(N−1)/N · bytes / B;
//! - a MoE stage (BTX's finetune, upcycling) is the same with expert parallelism: the weights
//!   outside the experts are all-reduced over all N workers, each expert's over its N/E
//!   replicas when N > E, and per step each MoE layer sends every token's hidden state to its
//!   k experts and back, forward and backward (4·L·k·T·d·g bytes over the batch, each worker
//!   sending (N−1)/N of its share);
//! - BTX's E experts train at the same time, N/E workers each (data-parallel within an expert,
//!   nothing between experts); with fewer workers than experts, in ceil(E/N) rounds.
//!
//! It ignores latency, overlap of communication with compute, pipeline and tensor
//! parallelism, and stragglers: a first-order account of what parallelism without
//! communication buys, not a prediction of a particular cluster's wall-clock.

use serde::{Deserialize, Serialize};

/// A worker's speed and link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hardware {
    /// Sustained training FLOP/s per worker.
    pub flops: f64,
    /// Bytes per second each worker sends over the interconnect.
    pub bandwidth: f64,
    /// Bytes per communicated value (bf16 gradients and activations: 2).
    pub value_bytes: f64,
}

/// An H100 at 40% of its bf16 peak (~400 TFLOP/s of 989), one 400 Gb/s InfiniBand link per
/// GPU: the order of what a multi-node cluster sustains.
pub const H100_CLUSTER: Hardware = Hardware {
    flops: 400e12,
    bandwidth: 50e9,
    value_bytes: 2.0,
};

/// One training stage as the model sees it (from the stage's measured FLOPs and its shapes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageWork {
    pub flops: f64,
    pub steps: f64,
    /// Values all-reduced each step: every parameter of a dense model, a MoE's outside its
    /// experts.
    pub synced_params: f64,
    /// Values one step sends through all-to-all over the whole batch (4·L·k·T·d for a MoE,
    /// 0 for a dense model).
    pub a2a_values: f64,
    /// A MoE's expert parameters (all experts) and how many experts share them: with more
    /// workers than experts each expert is replicated and its gradients all-reduced.
    #[serde(default)]
    pub expert_params: f64,
    #[serde(default)]
    pub experts: usize,
    /// Set for one of several branches trained independently at the same time (BTX's experts).
    pub branch: bool,
}

fn ring(values: f64, n: f64, hw: &Hardware) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        2.0 * (n - 1.0) / n * values * hw.value_bytes / hw.bandwidth
    }
}

/// Seconds `s` takes on `n` workers.
fn stage_seconds(s: &StageWork, n: f64, hw: &Hardware) -> f64 {
    let compute = s.flops / (n * hw.flops);
    let a2a = if n > 1.0 {
        s.a2a_values / n * (n - 1.0) / n * hw.value_bytes / hw.bandwidth
    } else {
        0.0
    };
    let replicas = if s.experts > 0 {
        n / s.experts as f64
    } else {
        0.0
    };
    let expert_sync = if replicas > 1.0 {
        ring(s.expert_params / s.experts as f64, replicas, hw)
    } else {
        0.0
    };
    compute + s.steps * (ring(s.synced_params, n, hw) + a2a + expert_sync)
}

/// Seconds a method's training stages take on `n` workers: its branches side by side (see
/// the module comment), then the rest one after another.
pub fn seconds(stages: &[StageWork], n: usize, hw: &Hardware) -> f64 {
    let n = n.max(1);
    let branches: Vec<&StageWork> = stages.iter().filter(|s| s.branch).collect();
    let mut t = 0.0;
    if !branches.is_empty() {
        let e = branches.len();
        let (per, rounds) = if n >= e {
            ((n / e) as f64, 1.0)
        } else {
            (1.0, e.div_ceil(n) as f64)
        };
        let slowest = branches
            .iter()
            .map(|s| stage_seconds(s, per, hw))
            .fold(0.0, f64::max);
        t += rounds * slowest;
    }
    t + stages
        .iter()
        .filter(|s| !s.branch)
        .map(|s| stage_seconds(s, n as f64, hw))
        .sum::<f64>()
}

/// The worker counts the report shows.
pub const WORKERS: [usize; 4] = [1, 8, 64, 512];

#[cfg(test)]
mod tests {
    use super::*;

    const HW: Hardware = Hardware {
        flops: 1e12,
        bandwidth: 1e9,
        value_bytes: 2.0,
    };

    #[test]
    fn one_worker_is_flops_over_speed() {
        let s = StageWork {
            flops: 5e12,
            steps: 10.0,
            synced_params: 1e6,
            ..Default::default()
        };
        assert!((seconds(&[s], 1, &HW) - 5.0).abs() < 1e-12);
    }

    /// Dense data-parallel pays a ring all-reduce per step; branches pay nothing between them.
    #[test]
    fn branches_in_parallel_skip_the_all_reduce() {
        let dense = StageWork {
            flops: 8e12,
            steps: 100.0,
            synced_params: 1e6,
            ..Default::default()
        };
        let t = seconds(std::slice::from_ref(&dense), 4, &HW);
        let want = 8e12 / 4e12 + 100.0 * 2.0 * 0.75 * 1e6 * 2.0 / 1e9;
        assert!((t - want).abs() < 1e-9, "{t} {want}");
        // Four experts of a quarter of the FLOPs each, one worker each: no communication.
        let expert = StageWork {
            flops: 2e12,
            branch: true,
            ..dense.clone()
        };
        let b = seconds(&vec![expert.clone(); 4], 4, &HW);
        assert!((b - 2.0).abs() < 1e-12, "{b}");
        // Two workers for four experts: two rounds.
        assert!((seconds(&vec![expert; 4], 2, &HW) - 4.0).abs() < 1e-12);
    }

    #[test]
    fn a_moe_stage_pays_its_all_to_all_and_replicated_experts_their_all_reduce() {
        let moe = StageWork {
            flops: 0.0,
            steps: 1.0,
            a2a_values: 8e9,
            ..Default::default()
        };
        // 8e9 values over 8 workers: each sends 1e9 · 7/8 values of 2 bytes at 1e9 B/s.
        assert!((seconds(std::slice::from_ref(&moe), 8, &HW) - 1.75).abs() < 1e-9);
        // Four experts of 1e8 values each on 8 workers: two replicas each, a ring between them.
        let replicated = StageWork {
            a2a_values: 0.0,
            expert_params: 4e8,
            experts: 4,
            ..moe.clone()
        };
        let want = 2.0 * 0.5 * 1e8 * 2.0 / 1e9;
        assert!((seconds(std::slice::from_ref(&replicated), 8, &HW) - want).abs() < 1e-9);
        // As many workers as experts: nothing to all-reduce.
        assert_eq!(seconds(&[replicated], 4, &HW), 0.0);
    }
}
