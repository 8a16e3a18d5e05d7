//! Attention experts (BAM, Branch-Attend-Mix): a layer's attention as a soft mixture of the
//! dense experts' attention blocks, `sum_e softmax(R x)_e * Attn_e(x)`. Every expert runs for
//! every token (soft routing), so the router is differentiable without any host-side choice.
//! With shared keys/values (BAM's KV-sharing variant) the experts keep their own query and
//! output projections and read one key/value projection, so the KV cache is one model's.

use burn::prelude::*;

use crate::attention::{
    attend_composite, attend_fused, cached_kv, rope_table, LayerCache, SeqInfo,
};
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
}

/// What the attention router did on one forward (for the routing analysis).
#[derive(Clone, Debug)]
pub struct AttnRouterAux {
    /// `[N, E]` softmax of the router logits: the weight of each expert's output.
    pub probs: Tensor<2>,
}

impl MoA {
    pub fn num_experts(&self) -> usize {
        self.q.len()
    }

    /// The key/value projection expert `e` reads.
    fn kv_of(&self, e: usize) -> usize {
        if self.k.len() == self.q.len() {
            e
        } else {
            0
        }
    }

    /// `x: [B*T, d]` (the input norm's output) → `[B*T, d]`. With a cache, each KV projection
    /// keeps its own slot.
    pub fn forward(
        &self,
        cfg: &ModelConfig,
        x: Tensor<2>,
        seq: &SeqInfo<'_>,
        mut cache: Option<&mut LayerCache>,
    ) -> (Tensor<2>, AttnRouterAux) {
        let e = self.num_experts();
        let kv_sets = self.k.len();
        // Every projection of x (router, keys, values, queries) in one call: on flex they share
        // x's gradient in one pass.
        let mut ws: Vec<&Tensor<2>> = vec![&self.router];
        ws.extend(self.k.iter());
        ws.extend(self.v.iter());
        ws.extend(self.q.iter());
        let mut proj = crate::linears(x.clone(), &ws).into_iter();
        let logits = proj.next().expect("router");
        let ks: Vec<Tensor<2>> = proj.by_ref().take(kv_sets).collect();
        let vs: Vec<Tensor<2>> = proj.by_ref().take(kv_sets).collect();
        let qs: Vec<Tensor<2>> = proj.collect();
        let probs = crate::softmax_rows(logits);
        let fused = cache.is_none() && seq.pads.is_none() && crate::fused::on_flex(&x);
        let ys: Vec<Tensor<2>> = if fused {
            let table = rope_table(seq.rope);
            qs.into_iter()
                .enumerate()
                .map(|(i, q)| {
                    let s = self.kv_of(i);
                    attend_fused(cfg, q, ks[s].clone(), vs[s].clone(), seq.b, seq.t, &table)
                })
                .collect()
        } else {
            let kvs: Vec<_> = ks
                .into_iter()
                .zip(vs)
                .enumerate()
                .map(|(s, (k, v))| cached_kv(cfg, k, v, seq, cache.as_deref_mut().map(|c| (c, s))))
                .collect();
            qs.into_iter()
                .enumerate()
                .map(|(i, q)| attend_composite(cfg, q, kvs[self.kv_of(i)].clone(), seq))
                .collect()
        };
        let mut out: Option<Tensor<2>> = None;
        for (i, y) in ys.into_iter().enumerate() {
            let gate = probs.clone().narrow(1, i, 1);
            let yi = crate::linear(y, &self.o[i]) * gate;
            out = Some(match out {
                None => yi,
                Some(acc) => acc + yi,
            });
        }
        debug_assert_eq!(e, self.o.len());
        (
            out.expect("at least one attention expert"),
            AttnRouterAux { probs },
        )
    }

    /// Keeps only the experts `keep` (in that order) and their router rows.
    pub fn keep(&self, keep: &[usize]) -> Self {
        let pick = |v: &Vec<Tensor<2>>| keep.iter().map(|&i| v[i].clone()).collect::<Vec<_>>();
        let shared = self.k.len() != self.q.len();
        let idx = Tensor::<1, Int>::from_data(
            TensorData::new(keep.iter().map(|&i| i as i64).collect(), [keep.len()]),
            &self.router.device(),
        );
        Self {
            router: self.router.clone().select(0, idx),
            q: pick(&self.q),
            k: if shared {
                self.k.clone()
            } else {
                pick(&self.k)
            },
            v: if shared {
                self.v.clone()
            } else {
                pick(&self.v)
            },
            o: pick(&self.o),
        }
    }
}
