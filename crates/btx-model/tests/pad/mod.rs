//! The padding_idx checks shared by the fused (flex) and the composite (BTX_COMPOSITE=1) test
//! binaries: the embedding lookup is a different op on each path.

use btx_model::burn::prelude::*;
use btx_model::probe::probe;
use btx_model::{Model, ModelConfig};

pub const PAD: i64 = 5;

/// Two rows holding the pad id at several positions (the first position included), and
/// tokens that repeat, so that rows other than the pad's sum several gradients.
pub const IDS: [i64; 12] = [PAD, 3, 7, PAD, 3, 1, 2, 9, PAD, 2, PAD, 7];

pub fn cfg(tied: bool) -> ModelConfig {
    let mut c = ModelConfig::llama(32, 16, 24, 2, 2, 1, 64);
    c.tie_word_embeddings = tied;
    c
}

/// `grad.<name>` of every parameter (and the logits) from one forward and backward pass.
pub fn grads(m: &Model) -> Vec<(String, Vec<f32>)> {
    let m = m.clone().to_device(&Device::flex().autodiff());
    probe(&m, &IDS, 2, 6, true, 0.0)
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

pub fn get<'a>(g: &'a [(String, Vec<f32>)], name: &str) -> &'a [f32] {
    &g.iter().find(|(n, _)| n == name).unwrap().1
}

pub fn with_pad(m: &Model, pad: Option<u32>) -> Model {
    let mut m = m.clone();
    m.cfg.pad_token_id = pad;
    m
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

const EMBED: &str = "grad.model.embed_tokens.weight";

/// Untied: pad_token_id changes no logit and no gradient but the embedding's pad row, which is
/// exactly zero (F.embedding's backward skips padding_idx); the other rows keep their bits.
pub fn untied_pad_row_gets_no_gradient() {
    let m = Model::init(&cfg(false), 11, &Device::flex()).unwrap();
    let plain = grads(&m);
    let padded = grads(&with_pad(&m, Some(PAD as u32)));
    let d = m.cfg.hidden_size;
    let p = PAD as usize;
    let (g0, g1) = (get(&plain, EMBED), get(&padded, EMBED));
    // Without pad_token_id the lookup does train the row: the check below means something.
    assert!(g0[p * d..(p + 1) * d].iter().any(|&x| x != 0.0));
    assert!(
        g1[p * d..(p + 1) * d].iter().all(|&x| x == 0.0),
        "pad row: {:?}",
        &g1[p * d..(p + 1) * d]
    );
    for r in (0..m.cfg.vocab_size).filter(|&r| r != p) {
        assert_eq!(
            bits(&g0[r * d..(r + 1) * d]),
            bits(&g1[r * d..(r + 1) * d]),
            "row {r}"
        );
    }
    // Everything else, the logits and the loss included, is bit for bit the same.
    for ((n0, a), (n1, b)) in plain.iter().zip(&padded) {
        assert_eq!(n0, n1);
        if n0 != EMBED {
            assert_eq!(bits(a), bits(b), "{n0}");
        }
    }
}

/// Tied: the pad row's gradient is the head's part only. The expected values come from an
/// untied twin whose head holds the same values as the embeddings: there the two parts are
/// apart (lm_head.weight's gradient, and the lookup's with its pad row zero), and the tied
/// gradient is their sum.
pub fn tied_pad_row_gets_the_heads_gradient_only() {
    let tied = Model::init(&cfg(true), 12, &Device::flex()).unwrap();
    let mut twin = with_pad(&tied, Some(PAD as u32));
    twin.cfg.tie_word_embeddings = false;
    twin.lm_head = Some(tied.embed.clone());
    let tied_pad = grads(&with_pad(&tied, Some(PAD as u32)));
    let tied_plain = grads(&tied);
    let parts = grads(&twin);
    let d = tied.cfg.hidden_size;
    let p = PAD as usize;
    let (lookup, head) = (get(&parts, EMBED), get(&parts, "grad.lm_head.weight"));
    let (g, g_plain) = (get(&tied_pad, EMBED), get(&tied_plain, EMBED));
    // The twin computes what the tied model does.
    assert_eq!(bits(get(&parts, "logits")), bits(get(&tied_pad, "logits")));
    assert!(lookup[p * d..(p + 1) * d].iter().all(|&x| x == 0.0));
    for r in 0..tied.cfg.vocab_size {
        for j in r * d..(r + 1) * d {
            let want = head[j] + lookup[j];
            assert!(
                g[j] == want,
                "row {r}, element {}: tied gradient {} but head {} + lookup {}",
                j - r * d,
                g[j],
                head[j],
                lookup[j]
            );
        }
    }
    // The pad row: the head's part only, where without pad_token_id the lookup adds to it.
    assert_eq!(&g[p * d..(p + 1) * d], &head[p * d..(p + 1) * d]);
    assert_ne!(&g_plain[p * d..(p + 1) * d], &head[p * d..(p + 1) * d]);
}

/// A batch without the pad id: the same bits with and without pad_token_id.
pub fn a_batch_without_the_pad_id_is_unchanged() {
    let m = Model::init(&cfg(false), 13, &Device::flex()).unwrap();
    let a = grads(&with_pad(&m, Some(30)));
    let b = grads(&m);
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(bits(x), bits(y), "{n}");
    }
}
