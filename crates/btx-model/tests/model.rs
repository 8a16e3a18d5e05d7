//! Properties of the model that need no reference file: KV-cache decoding equals a full
//! forward, left padding changes nothing, identical experts equal the dense model, and
//! checkpoints round-trip bit-exactly with clear errors for wrong files.

use btx_model::burn::prelude::*;
use btx_model::config::{MoeConfig, Routing};
use btx_model::generate::{generate, Sampling};
use btx_model::model::Ffn;
use btx_model::moe::Moe;
use btx_model::{to_vec, ForwardOpts, KvCache, Model, ModelConfig};
use btx_testkit::{max_diff, Scratch};

fn cfg(moe: bool) -> ModelConfig {
    let mut c = ModelConfig::llama(97, 32, 48, 2, 4, 2, 128);
    c.rope_theta = 5e5;
    c.tie_word_embeddings = !moe;
    if moe {
        c.moe = Some(MoeConfig {
            num_experts: 3,
            top_k: 2,
            routing: Routing::TopK,
        });
    }
    c
}

fn ids(n: usize, seed: i64) -> Vec<i64> {
    (0..n as i64).map(|i| (i * 37 + seed * 11) % 97).collect()
}

fn tmp(tag: &str) -> Scratch {
    Scratch::absent(&format!("model-{tag}"))
}

#[test]
fn kv_cache_decoding_equals_full_forward() {
    for moe in [false, true] {
        let m = Model::init(&cfg(moe), 1, &Device::flex()).unwrap();
        let x = ids(12, 3);
        let full = to_vec(m.forward(&x, 1, 12, &ForwardOpts::default(), None).logits);
        let mut cache = KvCache::new(2);
        let mut inc = to_vec(
            m.forward(&x[..5], 1, 5, &ForwardOpts::default(), Some(&mut cache))
                .logits,
        );
        for i in 5..12 {
            inc.extend(to_vec(
                m.forward(
                    &x[i..i + 1],
                    1,
                    1,
                    &ForwardOpts::default(),
                    Some(&mut cache),
                )
                .logits,
            ));
        }
        assert_eq!(cache.len(), 12);
        let d = max_diff(&full, &inc);
        assert!(d < 1e-4, "moe={moe}: incremental decoding differs by {d}");
    }
}

#[test]
fn left_padding_is_invisible() {
    for moe in [false, true] {
        let m = Model::init(&cfg(moe), 2, &Device::flex()).unwrap();
        let (a, b) = (ids(9, 1), ids(5, 2));
        let s = Sampling::default();
        let both = generate(&m, &[a.clone(), b.clone()], 6, &s, None, |_, _| false);
        let one_a = generate(&m, &[a], 6, &s, None, |_, _| false);
        let one_b = generate(&m, &[b], 6, &s, None, |_, _| false);
        assert_eq!(both[0], one_a[0], "moe={moe}");
        assert_eq!(both[1], one_b[0], "moe={moe}");
    }
}

#[test]
fn rows_that_stop_leave_the_batch_without_changing_the_others() {
    // Generation drops stopped rows from the batch (and their KV cache): the rows that go on
    // must continue exactly as they would alone, with and without padding.
    for moe in [false, true] {
        let m = Model::init(&cfg(moe), 2, &Device::flex()).unwrap();
        let prompts = [ids(9, 1), ids(5, 2), ids(7, 3)];
        let s = Sampling::default();
        // Row 1 stops after two tokens, row 0 after four, row 2 runs to the end.
        let limit = [4, 2, usize::MAX];
        let both = generate(&m, &prompts, 8, &s, None, |r, g| g.len() >= limit[r]);
        for (r, p) in prompts.iter().enumerate() {
            let alone = generate(&m, std::slice::from_ref(p), 8, &s, None, |_, _| false);
            let want = &alone[0][..limit[r].min(8)];
            assert_eq!(both[r], want, "moe={moe} row {r}");
        }
    }
}

#[test]
fn identical_experts_equal_the_dense_model() {
    let dense = Model::init(&cfg(false), 5, &Device::flex()).unwrap();
    let mut c = dense.cfg.clone();
    c.moe = Some(MoeConfig {
        num_experts: 4,
        top_k: 2,
        routing: Routing::TopK,
    });
    let mut moe = dense.clone();
    moe.cfg = c;
    for (l, layer) in moe.layers.iter_mut().enumerate() {
        let Ffn::Dense(mlp) = layer.ffn.clone() else {
            unreachable!()
        };
        let router = Tensor::<2>::random(
            [4, 32],
            btx_model::burn::tensor::Distribution::Normal(0.0, 1.0 + l as f64),
            &Device::flex(),
        );
        layer.ffn = Ffn::Moe(Moe {
            router,
            experts: vec![mlp; 4],
        });
    }
    let x = ids(16, 4);
    let a = to_vec(
        dense
            .forward(&x, 2, 8, &ForwardOpts::default(), None)
            .logits,
    );
    let b = to_vec(moe.forward(&x, 2, 8, &ForwardOpts::default(), None).logits);
    let d = max_diff(&a, &b);
    assert!(d < 1e-5, "identical experts differ from dense by {d}");
}

#[test]
fn checkpoints_round_trip_bit_exactly_single_and_sharded() {
    for (moe, shard) in [(false, usize::MAX), (true, 20_000)] {
        let m = Model::init(&cfg(moe), 9, &Device::flex()).unwrap();
        let d = tmp(&format!("rt{moe}"));
        m.save(&d, shard).unwrap();
        assert_eq!(d.join("model.safetensors.index.json").exists(), moe);
        let back = Model::load(&d, &Device::flex()).unwrap();
        assert_eq!(back.cfg, m.cfg);
        let (a, b) = (m.host_params(), back.host_params());
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert_eq!(ta.shape, tb.shape);
            let bits = |t: &[f32]| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&ta.data), bits(&tb.data), "{na}");
        }
    }
}

#[test]
fn loading_errors_name_file_tensor_and_shapes() {
    let m = Model::init(&cfg(false), 9, &Device::flex()).unwrap();
    let d = tmp("err");
    m.save(&d, usize::MAX).unwrap();
    // A config that disagrees with the weights: wrong intermediate size.
    let mut c = m.cfg.clone();
    c.intermediate_size = 50;
    c.save(&d.join("config.json")).unwrap();
    let e = Model::load(&d, &Device::flex()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors")
            && e.contains("mlp.gate_proj.weight")
            && e.contains("[48, 32]")
            && e.contains("[50, 32]"),
        "{e}"
    );
    // A Mixtral config over Llama weights: the dense FFN tensors are unexpected.
    let mut c = m.cfg.clone();
    c.moe = Some(MoeConfig {
        num_experts: 2,
        top_k: 1,
        routing: Routing::TopK,
    });
    c.save(&d.join("config.json")).unwrap();
    let e = Model::load(&d, &Device::flex()).unwrap_err().to_string();
    assert!(e.contains("unexpected tensor") && e.contains("mlp."), "{e}");
}
