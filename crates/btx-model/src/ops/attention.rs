//! Attention's choice between the fused kernel and the composite ops. A child of [`crate::ops`]
//! rather than part of it: both halves live in [`crate::attention`], which builds on the ops'
//! linear layers, softmax and RMSNorm, so `ops` itself must not import it back.

use burn::prelude::*;

use super::fused_available;
use crate::attention::{
    attend_composite, attend_fused, cached_kv, rope_table, self_attention_composite,
    self_attention_fused, AttnWeights, LayerCache, SeqInfo,
};
use crate::config::ModelConfig;

/// Causal GQA self-attention over `x: [B*T, d]`, returning `[B*T, d]` after `o_proj`: the fused
/// path (projections sharing x's gradient, the fused kernel with RoPE folded in) on flex when
/// there is no KV cache and no padding; the composite ops, which handle both, otherwise.
pub fn self_attention(
    cfg: &ModelConfig,
    w: AttnWeights<'_>,
    x: Tensor<2>,
    seq: &SeqInfo<'_>,
    cache: Option<&mut LayerCache>,
) -> Tensor<2> {
    if cache.is_none() && seq.pads.is_none() && fused_available(&x) {
        return self_attention_fused(cfg, &w, x, seq.b, seq.t, seq.rope);
    }
    self_attention_composite(cfg, w, x, seq, cache)
}

/// Causal attention of projections `q: [B*T, H*hd]` and `k, v: [B*T, KV*hd]` (`cfg`'s heads),
/// returning `[B*T, H*hd]` before the output projection: the fused kernel on flex when there is
/// no KV cache and no padding; else the composite ops, after the keys and values join the cache.
pub fn attend(
    cfg: &ModelConfig,
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    seq: &SeqInfo<'_>,
    cache: Option<&mut LayerCache>,
) -> Tensor<2> {
    if cache.is_none() && seq.pads.is_none() && fused_available(&q) {
        let table = rope_table(seq.rope);
        return attend_fused(cfg, q, k, v, seq.b, seq.t, &table);
    }
    let kv = cached_kv(cfg, k, v, seq, cache);
    attend_composite(cfg, q, kv, seq)
}
