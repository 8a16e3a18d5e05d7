//! RoPE (Hugging Face rotate-half) and grouped-query causal self-attention, both ways: in
//! composite burn ops, so that autodiff derives every gradient, and around the fused flex
//! kernel. [`crate::ops::attention`] picks one; RMSNorm and the residual stream are in
//! [`crate::ops`].

use burn::prelude::*;

use crate::config::ModelConfig;
pub use crate::ops::{rms_norm, rms_norm_composite, Residual};

/// cos/sin tables for absolute positions `pos0..pos0+t`: `[1, 1, T, head_dim/2]`, or with
/// left padding `[B, 1, T, head_dim/2]` where row b's positions start `pads[b]` later (so its
/// first real token sits at position 0, as transformers does with `position_ids`).
///
/// Computed in f32 the way transformers does (`inv_freq` from [`crate::config::RopeScaling`],
/// angle = inv_freq x pos, cos and sin times its attention factor) so that positions far from 0
/// round the same way.
pub fn rope_tables(
    cfg: &ModelConfig,
    pos0: usize,
    t: usize,
    pads: Option<&[usize]>,
    dev: &Device,
) -> (Tensor<4>, Tensor<4>) {
    let half = cfg.head_dim / 2;
    let inv = cfg.rope_scaling.inv_freq(cfg.rope_theta, cfg.head_dim);
    // transformers multiplies cos and sin by the scaling's attention factor (YaRN's).
    let scale = cfg.rope_scaling.attention_scaling();
    let zero = [0usize];
    let rows = pads.unwrap_or(&zero);
    let mut cos = Vec::with_capacity(rows.len() * t * half);
    let mut sin = Vec::with_capacity(rows.len() * t * half);
    for &pad in rows {
        for p in pos0..pos0 + t {
            let p = p.saturating_sub(pad);
            for f in &inv {
                let a = f * p as f32;
                if scale == 1.0 {
                    cos.push(a.cos());
                    sin.push(a.sin());
                } else {
                    cos.push(a.cos() * scale);
                    sin.push(a.sin() * scale);
                }
            }
        }
    }
    let shape = [rows.len(), 1, t, half];
    (
        Tensor::from_data(TensorData::new(cos, shape), dev),
        Tensor::from_data(TensorData::new(sin, shape), dev),
    )
}

/// Rotate-half RoPE on `[B, H, T, hd]`.
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let hd = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, hd / 2);
    let x2 = x.narrow(3, hd / 2, hd / 2);
    let a = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let b = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![a, b], 3)
}

/// Keys and values of earlier positions, `[B, KV, T_past, hd]`, for incremental decoding
/// (attention experts: every expert's KV heads stacked, or the shared ones).
#[derive(Clone, Debug, Default)]
pub struct LayerCache {
    pub kv: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The batch layout of one forward: `[b, t]` tokens, their RoPE tables, left padding.
#[derive(Clone, Copy)]
pub struct SeqInfo<'a> {
    pub b: usize,
    pub t: usize,
    pub rope: &'a (Tensor<4>, Tensor<4>),
    pub pads: Option<&'a [usize]>,
}

pub struct AttnWeights<'a> {
    pub q: &'a Tensor<2>,
    pub k: &'a Tensor<2>,
    pub v: &'a Tensor<2>,
    pub o: &'a Tensor<2>,
    /// Qwen2's q, k and v biases (`[1, out]`).
    pub bias: Option<&'a [Tensor<2>; 3]>,
    /// Qwen3's q and k head norms (`[1, head_dim]`).
    pub qk_norm: Option<&'a [Tensor<2>; 2]>,
}

impl AttnWeights<'_> {
    /// The family's additions to the q, k and v projections `[B*T, heads*hd]`, in
    /// transformers' order: Qwen2's biases, then Qwen3's RMSNorm over each head (before RoPE,
    /// which the attention applies). Llama's projections pass through untouched.
    fn finish_qkv(
        &self,
        cfg: &ModelConfig,
        mut q: Tensor<2>,
        mut k: Tensor<2>,
        mut v: Tensor<2>,
    ) -> [Tensor<2>; 3] {
        if let Some([bq, bk, bv]) = self.bias {
            q = q + bq.clone();
            k = k + bk.clone();
            v = v + bv.clone();
        }
        if let Some([nq, nk]) = self.qk_norm {
            let per_head = |x: Tensor<2>, w: &Tensor<2>| {
                let [n, width] = x.dims();
                let hd = cfg.head_dim;
                rms_norm(x.reshape([n * width / hd, hd]), w, cfg.rms_norm_eps).reshape([n, width])
            };
            q = per_head(q, nq);
            k = per_head(k, nk);
        }
        [q, k, v]
    }
}

/// Additive mask `[1 or B, 1, t, pos0 + t]`: query i (absolute position pos0 + i) sees keys
/// 0..=pos0 + i, and with left padding never the first `pads[b]` keys of row b. A large
/// negative number rather than -inf keeps every row finite.
fn attention_mask(pos0: usize, t: usize, pads: Option<&[usize]>, dev: &Device) -> Tensor<4> {
    let tk = pos0 + t;
    let zero = [0usize];
    let rows = pads.unwrap_or(&zero);
    let mut m = vec![0f32; rows.len() * t * tk];
    for (r, &pad) in rows.iter().enumerate() {
        for i in 0..t {
            for j in 0..tk {
                if j > pos0 + i || j < pad {
                    m[(r * t + i) * tk + j] = -1e30;
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(m, [rows.len(), 1, t, tk]), dev)
}

/// Causal GQA self-attention over `x: [B*T, d]`, returning `[B*T, d]` after `o_proj`, in
/// composite ops (every backend runs it; the reference of [`self_attention_fused`]).
/// `crate::ops::attention::self_attention` picks between the two.
pub fn self_attention_composite(
    cfg: &ModelConfig,
    w: AttnWeights<'_>,
    x: Tensor<2>,
    seq: &SeqInfo<'_>,
    cache: Option<&mut LayerCache>,
) -> Tensor<2> {
    let [q, k, v] = w.finish_qkv(
        cfg,
        crate::linear(x.clone(), w.q),
        crate::linear(x.clone(), w.k),
        crate::linear(x, w.v),
    );
    let kv = cached_kv(cfg, k, v, seq, cache);
    let y = attend_composite(cfg, q, kv, seq);
    crate::linear(y, w.o)
}

/// The keys (RoPE applied) and values of this forward's projections `[B*T, KV*hd]`, after the
/// cached ones (which the cache then holds): (`[B, KV, T_past + T, hd]` twice, T_past).
pub fn cached_kv(
    cfg: &ModelConfig,
    k: Tensor<2>,
    v: Tensor<2>,
    seq: &SeqInfo<'_>,
    cache: Option<&mut LayerCache>,
) -> (Tensor<4>, Tensor<4>, usize) {
    let SeqInfo { b, t, rope, .. } = *seq;
    let (kvh, hd) = (cfg.num_kv_heads, cfg.head_dim);
    let heads = |x: Tensor<2>| x.reshape([b, t, kvh, hd]).swap_dims(1, 2);
    let mut k = apply_rope(heads(k), &rope.0, &rope.1);
    let mut v = heads(v);
    let mut pos0 = 0;
    if let Some(c) = cache {
        if let Some((pk, pv)) = c.kv.take() {
            pos0 = pk.dims()[2];
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        c.kv = Some((k.clone(), v.clone()));
    }
    (k, v, pos0)
}

/// Causal attention of the query projection `q: [B*T, H*hd]` over keys and values from
/// [`cached_kv`]; returns `[B*T, H*hd]` (before the output projection).
pub fn attend_composite(
    cfg: &ModelConfig,
    q: Tensor<2>,
    (mut k, mut v, pos0): (Tensor<4>, Tensor<4>, usize),
    seq: &SeqInfo<'_>,
) -> Tensor<2> {
    let SeqInfo { b, t, rope, pads } = *seq;
    let (h, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let dev = q.device();
    let q = apply_rope(q.reshape([b, t, h, hd]).swap_dims(1, 2), &rope.0, &rope.1);
    let tk = pos0 + t;
    let scale = 1.0 / (hd as f64).sqrt();
    if kvh != h && t == 1 && pads.is_none() {
        // Decoding one token: the `rep` query heads of a KV head are rows of one product with
        // that head's keys and values (nothing to mask: every cached position is visible), so
        // the keys and values are read as cached instead of copied once per query head.
        let rep = h / kvh;
        let scores =
            crate::precision::matmul(q.reshape([b, kvh, rep, hd]), k.swap_dims(2, 3)) * scale;
        let p = crate::softmax_rows(scores.reshape([b * h, tk])).reshape([b, kvh, rep, tk]);
        return crate::precision::matmul(p, v).reshape([b, h * hd]);
    }
    if kvh != h {
        // Query head j reads KV head j / (h / kvh), as transformers' repeat_kv does.
        let rep = h / kvh;
        k = k
            .unsqueeze_dim::<5>(2)
            .expand([b, kvh, rep, tk, hd])
            .reshape([b, h, tk, hd]);
        v = v
            .unsqueeze_dim::<5>(2)
            .expand([b, kvh, rep, tk, hd])
            .reshape([b, h, tk, hd]);
    }
    let mut scores = crate::precision::matmul(q, k.swap_dims(2, 3)) * scale;
    if t > 1 || pads.is_some() {
        scores = scores + attention_mask(pos0, t, pads, &dev);
    }
    // Rows of scores through the fused softmax: masked entries (every padded or future key)
    // sent libm's exp down its underflow path, a fifth of batched generation's time.
    let p = crate::softmax_rows(scores.reshape([b * h * t, tk])).reshape([b, h, t, tk]);
    crate::precision::matmul(p, v)
        .swap_dims(1, 2)
        .reshape([b * t, h * hd])
}

/// The flex fast path: projections stay `[B*T, heads*hd]` (no transposes) and the fused kernel
/// applies RoPE and does masked softmax attention. Causal, no cache, no padding; the inputs must
/// be on a flex device.
pub fn self_attention_fused(
    cfg: &ModelConfig,
    w: &AttnWeights<'_>,
    x: Tensor<2>,
    b: usize,
    t: usize,
    rope: &(Tensor<4>, Tensor<4>),
) -> Tensor<2> {
    let table = rope_table(rope);
    let [q, k, v]: [Tensor<2>; 3] = crate::linears(x, &[w.q, w.k, w.v])
        .try_into()
        .expect("three projections");
    let [q, k, v] = w.finish_qkv(cfg, q, k, v);
    let y = attend_fused(cfg, q, k, v, b, t, &table);
    crate::linear(y, w.o)
}

/// The RoPE tables of a forward without padding (`[1, 1, T, hd/2]`, a few KB) as the fused
/// kernel reads them.
pub fn rope_table(rope: &(Tensor<4>, Tensor<4>)) -> std::sync::Arc<crate::fused::attention::Rope> {
    std::sync::Arc::new(crate::fused::attention::Rope {
        cos: crate::to_vec(rope.0.clone()),
        sin: crate::to_vec(rope.1.clone()),
    })
}

/// The fused kernel's causal attention of projections `[B*T, heads*hd]` (flex only, no cache,
/// no padding); returns `[B*T, H*hd]` before the output projection.
pub fn attend_fused(
    cfg: &ModelConfig,
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    b: usize,
    t: usize,
    table: &std::sync::Arc<crate::fused::attention::Rope>,
) -> Tensor<2> {
    let (h, kvh, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let dims = crate::fused::attention::Dims { b, t, h, kvh, hd };
    crate::fused::attention::causal_attention(q, k, v, dims, Some(table.clone()))
}
