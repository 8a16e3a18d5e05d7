//! Attention experts (BAM, Branch-Attend-Mix): a layer's attention as a soft mixture of the
//! dense experts' attention blocks, `sum_e softmax(R x)_e * Attn_e(x)`. Every expert runs for
//! every token (soft routing), so the router is differentiable without any host-side choice.
//! With shared keys/values (BAM's KV-sharing variant) the experts keep their own query and
//! output projections and read one key/value projection, so the KV cache is one model's.

use burn::prelude::*;

use crate::attention::{LayerCache, SeqInfo};
use crate::config::ModelConfig;

/// One layer's attention experts, in expert order. `k` and `v` hold one projection each when
/// the keys/values are shared, else one per expert.
#[derive(Clone, Debug)]
pub struct MoA {
    /// `self_attn.router.weight`, `[E, d]`.
    pub router: Tensor<2>,
    pub q: Vec<Tensor<2>>,
    pub k: Vec<Tensor<2>>,
    pub v: Vec<Tensor<2>>,
    pub o: Vec<Tensor<2>>,
    /// The stacked q, k, v and o of [`MoA::forward`], kept between inference calls (decoding
    /// would otherwise copy every expert's weights once per token); never used on an autodiff
    /// device, where each step's weights are new, and reset by [`crate::Model::map`].
    stacked: std::sync::OnceLock<[Tensor<2>; 4]>,
}

/// What the attention router did on one forward (for the routing analysis).
#[derive(Clone, Debug)]
pub struct AttnRouterAux {
    /// `[N, E]` softmax of the router logits: the weight of each expert's output.
    pub probs: Tensor<2>,
}

impl MoA {
    pub fn new(
        router: Tensor<2>,
        q: Vec<Tensor<2>>,
        k: Vec<Tensor<2>>,
        v: Vec<Tensor<2>>,
        o: Vec<Tensor<2>>,
    ) -> Self {
        Self {
            router,
            q,
            k,
            v,
            o,
            stacked: Default::default(),
        }
    }

    /// Forgets the stacked weights (after the weights changed).
    pub fn reset_stacked(&mut self) {
        self.stacked = Default::default();
    }

    /// Every expert's q, k and v projections stacked by rows, and the o projections by
    /// columns.
    fn stack(&self) -> [Tensor<2>; 4] {
        let cat = |ws: &[Tensor<2>], dim: usize| {
            if ws.len() == 1 {
                ws[0].clone()
            } else {
                Tensor::cat(ws.to_vec(), dim)
            }
        };
        [
            cat(&self.q, 0),
            cat(&self.k, 0),
            cat(&self.v, 0),
            cat(&self.o, 1),
        ]
    }

    pub fn num_experts(&self) -> usize {
        self.q.len()
    }

    /// `x: [B*T, d]` (the input norm's output) → `[B*T, d]`.
    ///
    /// The experts run as one attention over stacked heads: expert e's query heads are heads
    /// `e*H..(e+1)*H` of a wider attention whose KV heads are every expert's (with shared keys
    /// and values, each KV group takes every expert's query heads of that group), one output
    /// projection over the gate-weighted concatenation. The same arithmetic as E separate
    /// attentions summed, in a few large ops instead of many small ones (decoding is bound by
    /// op count). The cache holds the stacked (or the shared) keys and values.
    pub fn forward(
        &self,
        cfg: &ModelConfig,
        x: Tensor<2>,
        seq: &SeqInfo<'_>,
        cache: Option<&mut LayerCache>,
    ) -> (Tensor<2>, AttnRouterAux) {
        let e = self.num_experts();
        let kv_sets = self.k.len();
        let shared = kv_sets != e;
        let [n, _] = x.dims();
        let [wq, wk, wv, wo] = if self.router.device().is_autodiff() {
            self.stack()
        } else {
            self.stacked.get_or_init(|| self.stack()).clone()
        };
        // Every projection of x in one call: on flex they share x's gradient in one pass.
        let [logits, k, v, q]: [Tensor<2>; 4] =
            crate::linears(x.clone(), &[&self.router, &wk, &wv, &wq])
                .try_into()
                .expect("four projections");
        let probs = crate::softmax_rows(logits);
        // The stacked attention: E x H query heads over E x KV heads, or with shared keys and
        // values over the KV heads alone, every expert's query heads of a KV group joining
        // that group (GQA with E times the group size): nothing repeated, one model's cache.
        let mut wide = cfg.clone();
        wide.num_heads = e * cfg.num_heads;
        wide.num_kv_heads = if shared { kv_sets } else { e } * cfg.num_kv_heads;
        let qd = cfg.q_dim();
        let group = qd / cfg.num_kv_heads;
        // Query columns expert-major [E, KV, group] <-> KV-major [KV, E, group].
        let regroup = |t: Tensor<2>, from: [usize; 2]| {
            if shared && e > 1 {
                t.reshape([n, from[0], from[1], group])
                    .swap_dims(1, 2)
                    .reshape([n, e * qd])
            } else {
                t
            }
        };
        let q = regroup(q, [e, cfg.num_kv_heads]);
        let y = crate::ops::attention::attend(&wide, q, k, v, seq, cache);
        let y = regroup(y, [cfg.num_kv_heads, e]);
        // Each expert's block of y weighted by its gate, then one output projection.
        let gates = probs
            .clone()
            .unsqueeze_dim::<3>(2)
            .expand([n, e, qd])
            .reshape([n, e * qd]);
        (crate::linear(y * gates, &wo), AttnRouterAux { probs })
    }

    /// Keeps only the experts `keep` (in that order) and their router rows.
    pub fn keep(&self, keep: &[usize]) -> Self {
        let pick = |v: &Vec<Tensor<2>>| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let shared = self.k.len() != self.q.len();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
            &self.router.device(),
        );
        let kv = |v: &Vec<Tensor<2>>| if shared { v.clone() } else { pick(v) };
        Self::new(
            self.router.clone().select(0, idx),
            pick(&self.q),
            kv(&self.k),
            kv(&self.v),
            pick(&self.o),
        )
    }
}
