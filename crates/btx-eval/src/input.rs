//! What a report is made from: each method's evaluation and compute, per replica, with the
//! routing and opt-out analyses. `findings` computes on it and `report` renders it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::evaluate::EvalResult;
use crate::routing::RoutingReport;

/// Training and inference cost of one method.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodCompute {
    pub train_tokens: u64,
    pub train_flops: f64,
    pub wall_seconds: f64,
    pub active_params: u64,
    pub total_params: u64,
    /// Forward passes per generated token (N for a BTM ensemble of N models).
    pub inference_forward_passes: usize,
    /// ≈ 2 x active parameters x forward passes.
    pub inference_flops_per_token: f64,
    /// Wall seconds with the method's independent branches (BTX's experts) side by side, as
    /// `btx run --jobs N` runs them when N covers them: the slowest branch plus the rest.
    #[serde(default)]
    pub wall_parallel_seconds: f64,
    /// The training stages as the cost model sees them (see [`crate::cost`]).
    #[serde(default)]
    pub work: Vec<crate::cost::StageWork>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// `seed`, `expert:<d>`, `dense`, `upcycle-data`, `btm-top1`, `merge-avg`, `btx`, ...
    pub name: String,
    pub eval: EvalResult,
    pub compute: MethodCompute,
}

#[derive(Clone, Debug, Default)]
pub struct ReportInput {
    pub title: String,
    pub domains: Vec<String>,
    /// Domains that have an expert, in expert order.
    pub expert_domains: Vec<String>,
    /// Replica 0 (the primary run) first; further replicas differ only in training seeds.
    pub replicas: Vec<Vec<MethodResult>>,
    /// Routing analysis of each MoE method (replica 0).
    pub routing: BTreeMap<String, RoutingReport>,
    /// Routing analysis of each MoE method in every replica (replica order).
    pub routing_replicas: BTreeMap<String, Vec<RoutingReport>>,
    /// Expert labels of the MoE (for heatmaps).
    pub expert_labels: Vec<String>,
    /// Markdown image links (relative to the report) by caption.
    pub plots: Vec<(String, String)>,
    /// Free-form lines for the setup section.
    pub setup: Vec<String>,
    /// Opt-out evaluations of each finetuned BTX method, in replica order.
    pub opt_out: BTreeMap<String, Vec<crate::evaluate::OptOutEval>>,
    /// The experts a method mixes, where they are not `expert:<d>` (FFN-only, anchored):
    /// method → domain → the experts' own method (`expert-ffn:<d>`). A share of "the experts'
    /// gain" is a share of these experts' gain.
    pub experts_of: BTreeMap<String, BTreeMap<String, String>>,
    /// For a method with an expert added after its finetune (`btx:<v>+<d>`), the variant that
    /// is the same but mixed d's expert from the start, where the run has one: the reference
    /// that isolates adding late.
    pub added_twin: BTreeMap<String, String>,
}
