//! Routing analysis of a MoE model: for each domain's held-out tokens, the share routed to each
//! expert in each layer (by top-1 and by all top-k slots), the routers' entropy, dead experts.

use std::collections::BTreeMap;

use btx_data::mixture::eval_windows;
use btx_data::DataDir;
use btx_model::moa::AttnRouterAux;
use btx_model::moe::RouterAux;
use btx_model::{to_vec, ForwardOpts, Model};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainRouting {
    /// `[layer][expert]`: fraction of tokens whose top-1 expert is e.
    pub top1_share: Vec<Vec<f64>>,
    /// `[layer][expert]`: fraction of top-k slots that go to e (sums to 1 per layer).
    pub topk_share: Vec<Vec<f64>>,
    /// `[layer]`: mean over tokens of the entropy (nats) of the router's full softmax.
    pub entropy: Vec<f64>,
    pub tokens: usize,
    /// Attention experts (BAM), `[layer][expert]`: the mean weight the attention router gives
    /// each attention expert (soft routing: every expert runs, weighted; sums to 1 per layer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attn_share: Vec<Vec<f64>>,
    /// `[layer]`: mean entropy (nats) of the attention router's weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attn_entropy: Vec<f64>,
    /// The same shares per evaluation window (the loss windows, in order): the units the
    /// report's bootstrap resamples for the load-balancing claim's intervals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowShares>,
}

/// One window's routing: `[layer][expert]` shares of its tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowShares {
    pub top1: Vec<Vec<f64>>,
    pub topk: Vec<Vec<f64>>,
}

impl WindowShares {
    /// The shares of the tokens `rows` (one window of a batch) in every layer.
    pub fn of(routers: &[RouterAux], rows: std::ops::Range<usize>) -> Self {
        let n = rows.len().max(1) as f64;
        let mut w = Self::default();
        for r in routers {
            let e = r.num_experts();
            let (mut top1, mut topk) = (vec![0.0; e], vec![0.0; e]);
            for ids in &r.topk_ids[rows.clone()] {
                top1[ids[0] as usize] += 1.0 / n;
                for &x in ids {
                    topk[x as usize] += 1.0 / (n * ids.len() as f64);
                }
            }
            w.top1.push(top1);
            w.topk.push(topk);
        }
        w
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingReport {
    pub num_experts: usize,
    pub top_k: usize,
    pub domains: BTreeMap<String, DomainRouting>,
    /// (layer, expert) pairs whose top-k share over all domains is below `dead_threshold`.
    pub dead_experts: Vec<(usize, usize)>,
    pub dead_threshold: f64,
}

/// Sums of one batch's attention-router weights and entropies, accumulated into `acc`
/// (normalised by [`normalise`] with the FFN routers' token count).
pub fn accumulate_attention(acc: &mut DomainRouting, routers: &[AttnRouterAux]) {
    for (l, r) in routers.iter().enumerate() {
        let e = r.probs.dims()[1];
        if acc.attn_share.len() <= l {
            acc.attn_share.push(vec![0.0; e]);
            acc.attn_entropy.push(0.0);
        }
        let p = to_vec(r.probs.clone());
        for row in p.chunks_exact(e) {
            for (s, x) in acc.attn_share[l].iter_mut().zip(row) {
                *s += *x as f64;
            }
            acc.attn_entropy[l] -= row
                .iter()
                .filter(|x| **x > 0.0)
                .map(|x| *x as f64 * (*x as f64).ln())
                .sum::<f64>();
        }
    }
}

/// Counts of one batch's routing, accumulated into `acc`.
pub fn accumulate(acc: &mut DomainRouting, routers: &[RouterAux]) {
    for (l, r) in routers.iter().enumerate() {
        let e = r.num_experts();
        if acc.top1_share.len() <= l {
            acc.top1_share.push(vec![0.0; e]);
            acc.topk_share.push(vec![0.0; e]);
            acc.entropy.push(0.0);
        }
        for ids in &r.topk_ids {
            acc.top1_share[l][ids[0] as usize] += 1.0;
            for &x in ids {
                acc.topk_share[l][x as usize] += 1.0 / ids.len() as f64;
            }
        }
        let p = to_vec(r.probs.clone());
        for row in p.chunks_exact(e) {
            acc.entropy[l] -= row
                .iter()
                .filter(|x| **x > 0.0)
                .map(|x| *x as f64 * (*x as f64).ln())
                .sum::<f64>();
        }
    }
    acc.tokens += routers.first().map_or(0, |r| r.topk_ids.len());
}

/// Turns accumulated counts into shares and mean entropies.
pub fn normalise(acc: &mut DomainRouting) {
    let n = acc.tokens.max(1) as f64;
    for l in 0..acc.top1_share.len() {
        acc.top1_share[l].iter_mut().for_each(|x| *x /= n);
        acc.topk_share[l].iter_mut().for_each(|x| *x /= n);
        acc.entropy[l] /= n;
    }
    for l in 0..acc.attn_share.len() {
        acc.attn_share[l].iter_mut().for_each(|x| *x /= n);
        acc.attn_entropy[l] /= n;
    }
}

/// Routing statistics of `model` on each domain's validation windows.
pub fn analyze(
    model: &Model,
    data: &DataDir,
    domains: &[String],
    seq: usize,
    windows: usize,
    batch: usize,
    dead_threshold: f64,
) -> btx_data::Result<RoutingReport> {
    let moe =
        model.cfg.moe.clone().ok_or_else(|| {
            btx_data::DataError::Invalid("routing analysis needs a MoE model".into())
        })?;
    let mut report = RoutingReport {
        num_experts: moe.num_experts,
        top_k: moe.top_k,
        dead_threshold,
        ..Default::default()
    };
    for d in domains {
        let val = data.shard(d, "val")?;
        data.check_vocab(&val, model.cfg.vocab_size)?;
        let seq = seq.min(val.len());
        let ws = eval_windows(&val, seq, windows);
        let mut acc = DomainRouting::default();
        for chunk in ws.chunks(batch.max(1)) {
            let ids: Vec<i64> = chunk.iter().flatten().copied().collect();
            let out = model.forward(&ids, chunk.len(), seq, &ForwardOpts::default(), None);
            accumulate(&mut acc, &out.routers);
            accumulate_attention(&mut acc, &out.attn_routers);
            for w in 0..chunk.len() {
                acc.windows
                    .push(WindowShares::of(&out.routers, w * seq..(w + 1) * seq));
            }
        }
        normalise(&mut acc);
        report.domains.insert(d.clone(), acc);
    }
    report.dead_experts = dead_experts(&report.domains, report.num_experts, dead_threshold);
    Ok(report)
}

/// (layer, expert) pairs whose top-k share, averaged over domains, is below `threshold`.
pub fn dead_experts(
    domains: &BTreeMap<String, DomainRouting>,
    num_experts: usize,
    threshold: f64,
) -> Vec<(usize, usize)> {
    let layers = domains.values().next().map_or(0, |r| r.topk_share.len());
    let mut out = vec![];
    for l in 0..layers {
        for e in 0..num_experts {
            let share = domains.values().map(|r| r.topk_share[l][e]).sum::<f64>()
                / domains.len().max(1) as f64;
            if share < threshold {
                out.push((l, e));
            }
        }
    }
    out
}
