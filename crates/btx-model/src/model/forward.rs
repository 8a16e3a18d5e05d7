//! One forward pass of the decoder: its options, its outputs (logits, the routers' statistics,
//! captured inputs), and the key/value cache that incremental decoding carries between passes.

use burn::prelude::*;

use super::{Attn, Ffn, Model};
use crate::attention::{rms_norm, rope_tables, AttnWeights, LayerCache, Residual, SeqInfo};
use crate::config::Routing;
use crate::moa::AttnRouterAux;
use crate::moe::{RouteOpts, RouterAux};

/// Options of one forward pass.
#[derive(Clone, Debug, Default)]
pub struct ForwardOpts {
    /// Gumbel noise for sample-top1 routing while training: (seed, tau).
    pub gumbel: Option<(u64, f64)>,
    /// Left padding per row (batched generation): row b's first `pads[b]` tokens are ignored
    /// and its positions start after them.
    pub pads: Option<Vec<usize>>,
    /// Keep each layer's FFN input (the post-attention RMSNorm output) in
    /// [`ForwardOut::ffn_inputs`] and its attention input in [`ForwardOut::attn_inputs`]
    /// (router initialisation).
    pub capture_inputs: bool,
}

pub struct ForwardOut {
    /// `[B, T, V]`.
    pub logits: Tensor<3>,
    /// One entry per MoE layer (empty for dense models).
    pub routers: Vec<RouterAux>,
    /// `[B*T, d]` per layer when `capture_inputs` was set.
    pub ffn_inputs: Vec<Tensor<2>>,
    /// `[B*T, d]` per layer when `capture_inputs` was set: the attention's input (the input
    /// RMSNorm output), what an attention router reads.
    pub attn_inputs: Vec<Tensor<2>>,
    /// One entry per layer with attention experts (empty otherwise).
    pub attn_routers: Vec<AttnRouterAux>,
}

/// [`Model::forward_trunk`]'s output: [`ForwardOut`] before the head.
pub struct Trunk {
    /// The final norm's output, `[B*T, d]`.
    pub hidden: Tensor<2>,
    pub routers: Vec<RouterAux>,
    pub ffn_inputs: Vec<Tensor<2>>,
    pub attn_inputs: Vec<Tensor<2>>,
    pub attn_routers: Vec<AttnRouterAux>,
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the batch rows `rows` (in that order): generation drops the rows that have
    /// stopped, so that the rest do not pay for them.
    pub fn keep_rows(&mut self, rows: &[usize]) {
        for l in &mut self.layers {
            if let Some((k, v)) = l.kv.take() {
                let idx = Tensor::<1, Int>::from_data(
                    TensorData::new(rows.iter().map(|&r| r as i64).collect(), [rows.len()]),
                    &k.device(),
                );
                l.kv = Some((k.select(0, idx.clone()), v.select(0, idx)));
            }
        }
    }
}

impl Model {
    /// Full forward over `ids: [B, T]` (row-major i64 ids). With `cache`, positions continue
    /// after the cached ones and the new keys/values are appended.
    pub fn forward(
        &self,
        ids: &[i64],
        b: usize,
        t: usize,
        opts: &ForwardOpts,
        cache: Option<&mut KvCache>,
    ) -> ForwardOut {
        let trunk = self.forward_trunk(ids, b, t, opts, cache);
        let logits = crate::linear(trunk.hidden, self.head()).reshape([b, t, self.cfg.vocab_size]);
        ForwardOut {
            logits,
            routers: trunk.routers,
            ffn_inputs: trunk.ffn_inputs,
            attn_inputs: trunk.attn_inputs,
            attn_routers: trunk.attn_routers,
        }
    }

    /// The logits of each row's last position, `[B, V]`: what generation needs (the head on
    /// every prompt position would be a fifth of a small model's prefill, thrown away).
    pub fn next_logits(
        &self,
        ids: &[i64],
        b: usize,
        t: usize,
        opts: &ForwardOpts,
        cache: Option<&mut KvCache>,
    ) -> Tensor<2> {
        let trunk = self.forward_trunk(ids, b, t, opts, cache);
        let d = self.cfg.hidden_size;
        let last = trunk
            .hidden
            .reshape([b, t, d])
            .narrow(1, t - 1, 1)
            .reshape([b, d]);
        crate::linear(last, self.head())
    }

    /// The token embeddings of `ids` (in range), `[ids.len(), d]`.
    ///
    /// With `pad_token_id` set, the lookup's gradient of that row is zero, as transformers'
    /// `nn.Embedding(..., padding_idx=pad_token_id)` makes it (F.embedding's backward skips
    /// `padding_idx`); the forward is unchanged, and a tied head's gradient still reaches the
    /// row (only the lookup's part is dropped). Only a batch that holds the pad id on the
    /// autodiff graph takes the masked path: other batches cost what they did.
    pub fn embed_lookup(&self, ids: &[i64]) -> Tensor<2> {
        let pad = self
            .cfg
            .pad_token_id
            .map(|p| p as i64)
            .filter(|p| self.embed.is_autodiff() && ids.contains(p));
        crate::ops::embed(&self.embed, ids, pad)
    }

    /// The output head's weight `[V, d]` (the embedding when tied).
    pub fn head(&self) -> &Tensor<2> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// [`Model::forward`] up to the final norm: training feeds `hidden` and [`Model::head`] to
    /// [`crate::loss::lm_head_loss`], which never materialises the logits.
    pub fn forward_trunk(
        &self,
        ids: &[i64],
        b: usize,
        t: usize,
        opts: &ForwardOpts,
        mut cache: Option<&mut KvCache>,
    ) -> Trunk {
        let cfg = &self.cfg;
        let dev = self.device();
        assert_eq!(ids.len(), b * t, "ids must hold B x T values");
        let pos0 = cache.as_ref().map_or(0, |c| c.len());
        // An invariant, not input checking: every entry point refuses longer sequences first
        // (ModelConfig::check_positions; generation stops at generate::room).
        if let Some(w) = cfg.sliding_window {
            assert!(
                pos0 + t <= w,
                "sequence of {} positions exceeds sliding_window {w}, which btx does not implement",
                pos0 + t
            );
        }
        let v = cfg.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as usize >= v) {
            panic!("token id {bad} is outside the vocabulary of {v} (HINT: the data was tokenized with another tokenizer)");
        }
        let mut x = self.embed_lookup(ids);
        let pads = opts.pads.as_deref();
        let rope = rope_tables(cfg, pos0, t, pads, &dev);
        let route = cfg.moe.as_ref().map(|m| RouteOpts {
            routing: m.routing.clone(),
            top_k: m.top_k,
            gumbel: match m.routing {
                Routing::SampleTop1 { .. } => opts.gumbel,
                _ => None,
            },
        });
        let mut routers = Vec::new();
        let mut attn_routers = Vec::new();
        let mut ffn_inputs = Vec::new();
        let mut attn_inputs = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let (res, h) = Residual::norm(x, &layer.input_norm, cfg.rms_norm_eps);
            if opts.capture_inputs {
                attn_inputs.push(h.clone().detach());
            }
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let seq = SeqInfo {
                b,
                t,
                rope: &rope,
                pads,
            };
            let a = match &layer.attn {
                Attn::Dense {
                    q,
                    k,
                    v,
                    o,
                    bias,
                    qk_norm,
                } => crate::ops::attention::self_attention(
                    cfg,
                    AttnWeights {
                        q,
                        k,
                        v,
                        o,
                        bias: bias.as_ref(),
                        qk_norm: qk_norm.as_ref(),
                    },
                    h,
                    &seq,
                    lc,
                ),
                Attn::Experts(m) => {
                    let (a, aux) = m.forward(cfg, h, &seq, lc);
                    attn_routers.push(aux);
                    a
                }
            };
            x = res.output(a);
            let (res, h) = Residual::norm(x, &layer.post_norm, cfg.rms_norm_eps);
            if opts.capture_inputs {
                ffn_inputs.push(h.clone().detach());
            }
            let f = match &layer.ffn {
                Ffn::Dense(m) => m.forward(h),
                Ffn::Moe(moe) => {
                    let (o, aux) = moe.forward(h, route.as_ref().expect("moe config"), l);
                    routers.push(aux);
                    o
                }
            };
            x = res.output(f);
        }
        Trunk {
            hidden: rms_norm(x, &self.norm, cfg.rms_norm_eps),
            routers,
            ffn_inputs,
            attn_inputs,
            attn_routers,
        }
    }
}
