//! Mixtral-layout MoE feed-forward: a linear router, one of the BTX routing variants, and sparse
//! dispatch (each token is computed only by the experts it is routed to).
//!
//! Expert ids are chosen on the host from detached router logits; the gate values are always
//! taken from the router's scores inside the graph, so the router stays differentiable.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::softmax_rows;

use crate::config::Routing;
use btx_core::rng::Rng;

/// A SwiGLU FFN in Hugging Face layout (`[out, in]` weights): `down(silu(gate x) * up x)`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `gate_proj` / Mixtral `w1`, `[ffn, d]`.
    pub gate: Tensor<2>,
    /// `up_proj` / Mixtral `w3`, `[ffn, d]`.
    pub up: Tensor<2>,
    /// `down_proj` / Mixtral `w2`, `[d, ffn]`.
    pub down: Tensor<2>,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        crate::ops::mlp(x, &self.gate, &self.up, &self.down)
    }
}

#[derive(Clone, Debug)]
pub struct Moe {
    /// Router `block_sparse_moe.gate.weight`, `[E, d]`.
    pub router: Tensor<2>,
    pub experts: Vec<Mlp>,
}

/// Per-forward routing options.
#[derive(Clone, Debug)]
pub struct RouteOpts {
    pub routing: Routing,
    pub top_k: usize,
    /// Gumbel noise for sample-top1 while training: (seed for this step, temperature tau).
    /// `None` means inference: hard argmax.
    pub gumbel: Option<(u64, f64)>,
}

/// What a MoE layer reports besides its output: everything the losses and the routing
/// statistics need.
#[derive(Clone, Debug)]
pub struct RouterAux {
    /// `[N, E]` router logits (in the graph).
    pub logits: Tensor<2>,
    /// `[N, E]` full softmax of the logits (in the graph).
    pub probs: Tensor<2>,
    /// `[N, E]` the gate values actually applied (zero where a token does not use an expert).
    pub sparse_gates: Tensor<2>,
    /// For each token, the experts whose output it received (after capacity dropping).
    pub assigned: Vec<Vec<u32>>,
    /// For each token, the top-k experts by logit before any dropping (what HF's aux loss counts).
    pub topk_ids: Vec<Vec<u32>>,
    /// Tokens that Switch routing dropped for lack of capacity.
    pub dropped: usize,
}

impl RouterAux {
    pub fn num_experts(&self) -> usize {
        self.logits.dims()[1]
    }

    /// Fraction of routed (token, expert) pairs that went to each expert.
    pub fn load(&self) -> Vec<f64> {
        let e = self.num_experts();
        let mut c = vec![0usize; e];
        for a in &self.assigned {
            for &x in a {
                c[x as usize] += 1;
            }
        }
        let total = c.iter().sum::<usize>().max(1);
        c.iter().map(|&x| x as f64 / total as f64).collect()
    }
}

/// Indices of the k largest values of each row (ties to the lower index, like a stable sort).
pub fn topk_rows(vals: &[f32], e: usize, k: usize) -> Vec<Vec<u32>> {
    vals.chunks_exact(e)
        .map(|row| {
            let mut idx: Vec<u32> = (0..e as u32).collect();
            idx.sort_by(|&a, &b| {
                row[b as usize]
                    .partial_cmp(&row[a as usize])
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.cmp(&b))
            });
            idx.truncate(k);
            idx
        })
        .collect()
}

fn int1(v: Vec<i64>, dev: &Device) -> Tensor<1, Int> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), dev)
}

fn int2(v: Vec<i64>, rows: usize, cols: usize, dev: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v, [rows, cols]), dev)
}

impl Moe {
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// `x: [N, d]` → (`[N, d]`, routing aux). `first_layer` selects soft routing for sample-top1.
    pub fn forward(&self, x: Tensor<2>, opts: &RouteOpts, layer: usize) -> (Tensor<2>, RouterAux) {
        let dev = x.device();
        let [n, _] = x.dims();
        let e = self.num_experts();
        // The router and the experts' gather both read x: one summed gradient on flex.
        let input = crate::ops::MoeInput::new(x.clone());
        let logits = input.router(&self.router);
        let probs = softmax_rows(logits.clone());
        let host: Vec<f32> = crate::to_vec(logits.clone().detach());
        let topk_ids = topk_rows(&host, e, opts.top_k.min(e));

        let mut routing = opts.routing.clone();
        if matches!(routing, Routing::SampleTop1 { .. }) && layer == 0 {
            routing = Routing::Soft;
        }
        // Each variant yields: per-token chosen experts, the gate values `[N, c]` in the graph
        // (c chosen experts per token), and which (token, slot) pairs survive.
        let (chosen, gates, keep): (Vec<Vec<u32>>, Tensor<2>, Option<Vec<bool>>) = match routing {
            Routing::TopK => {
                let k = opts.top_k.min(e);
                let ids = flat_ids(&topk_ids);
                let g = softmax_rows(logits.clone().gather(1, int2(ids, n, k, &dev)));
                (topk_ids.clone(), g, None)
            }
            Routing::Soft => {
                let all: Vec<Vec<u32>> = (0..n).map(|_| (0..e as u32).collect()).collect();
                (all, probs.clone(), None)
            }
            Routing::Switch { capacity_factor } => {
                let cap = ((capacity_factor * n as f64) / e as f64).ceil() as usize;
                let mut used = vec![0usize; e];
                let mut keep = vec![false; n];
                let top1: Vec<Vec<u32>> = topk_ids.iter().map(|r| vec![r[0]]).collect();
                for (i, r) in top1.iter().enumerate() {
                    let ex = r[0] as usize;
                    if used[ex] < cap {
                        used[ex] += 1;
                        keep[i] = true;
                    }
                }
                let g = probs.clone().gather(1, int2(flat_ids(&top1), n, 1, &dev));
                (top1, g, Some(keep))
            }
            Routing::SampleTop1 { .. } => match opts.gumbel {
                Some((seed, tau)) => {
                    let mut rng = Rng::derive(seed, &format!("gumbel-layer-{layer}"));
                    let noise: Vec<f32> = (0..n * e).map(|_| rng.gumbel() as f32).collect();
                    let noisy: Vec<f32> = host.iter().zip(&noise).map(|(a, b)| a + b).collect();
                    let top1 = topk_rows(&noisy, e, 1);
                    let noise_t = Tensor::<2>::from_data(TensorData::new(noise, [n, e]), &dev);
                    let y = softmax_rows((logits.clone() + noise_t) / tau);
                    let g = y.gather(1, int2(flat_ids(&top1), n, 1, &dev));
                    (top1, g, None)
                }
                None => {
                    let top1: Vec<Vec<u32>> = topk_ids.iter().map(|r| vec![r[0]]).collect();
                    (top1, Tensor::<2>::ones([n, 1], &dev), None)
                }
            },
        };
        let c = chosen[0].len();
        let gates = match &keep {
            None => gates,
            Some(k) => {
                let m: Vec<f32> = k.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect();
                gates * Tensor::<2>::from_data(TensorData::new(m, [n, 1]), &dev)
            }
        };
        let sparse_gates = Tensor::<2>::zeros([n, e], &dev).scatter(
            1,
            int2(flat_ids(&chosen), n, c, &dev),
            gates.clone(),
            IndexingUpdateOp::Add,
        );

        // Group (token, slot) pairs by expert: one gather, one FFN and one scatter-add each.
        let mut toks: Vec<Vec<i64>> = vec![vec![]; e];
        let mut slots: Vec<Vec<i64>> = vec![vec![]; e];
        let mut assigned: Vec<Vec<u32>> = vec![vec![]; n];
        let mut dropped = 0;
        for (i, row) in chosen.iter().enumerate() {
            if keep.as_ref().is_some_and(|k| !k[i]) {
                dropped += 1;
                continue;
            }
            for (s, &ex) in row.iter().enumerate() {
                toks[ex as usize].push(i as i64);
                slots[ex as usize].push((i * c + s) as i64);
                assigned[i].push(ex);
            }
        }
        // Expert outputs, rows grouped by expert; then each row weighted by its gate value and
        // added into its token's output.
        let row_tok: Vec<usize> = toks.iter().flatten().map(|&t| t as usize).collect();
        let row_slot: Vec<i64> = slots.concat();
        let d = x.dims()[1];
        let out = if row_tok.is_empty() {
            Tensor::<2>::zeros([n, d], &dev)
        } else {
            let weights: Vec<_> = self
                .experts
                .iter()
                .map(|m| (&m.gate, &m.up, &m.down))
                .collect();
            let y = input.experts(&toks, &weights);
            let g = gates.reshape([n * c]).select(0, int1(row_slot, &dev));
            let routes = std::sync::Arc::new(crate::fused::moe::Routes::new(row_tok, n));
            crate::ops::combine(y, g, routes)
        };
        let aux = RouterAux {
            logits,
            probs,
            sparse_gates,
            assigned,
            topk_ids,
            dropped,
        };
        (out, aux)
    }
}

fn flat_ids(rows: &[Vec<u32>]) -> Vec<i64> {
    rows.iter().flatten().map(|&x| x as i64).collect()
}
