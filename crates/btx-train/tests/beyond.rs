//! Beyond the paper, in the trainer: attention experts (BAM) train and resume — every attention
//! expert and its router gets gradients, and a run stopped halfway and resumed from its
//! checkpoint ends bit-identical to one that ran straight through (both the per-expert and the
//! shared-KV variant); anchored experts (attention, embeddings and head frozen) resume
//! bit-exactly with the anchor untouched.

mod tiny;

use btx_model::burn::prelude::Device;
use btx_model::config::{AttnExpertsConfig, MoeConfig, Routing};
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;
use btx_train::{train, TrainOpts, TrainerConfig};

fn cfg(shared_kv: bool) -> ModelConfig {
    let mut c = ModelConfig::llama(61, 32, 48, 2, 4, 2, 64);
    c.moe = Some(MoeConfig {
        num_experts: 3,
        top_k: 2,
        routing: Routing::TopK,
    });
    c.attn_experts = Some(AttnExpertsConfig {
        num_experts: 3,
        shared_kv,
    });
    c
}

fn data() -> btx_data::FixedBatches {
    tiny::batches(6)
}

fn config() -> TrainerConfig {
    let mut tc = TrainerConfig::default();
    tc.train.steps = 6;
    tc.train.batch_size = 2;
    tc.train.seq_len = 16;
    tc.train.checkpoint_every = 3;
    tc.optim.warmup_steps = 1;
    tc.optim.lr = 1e-2;
    tc
}

fn opts(resume: bool, max: Option<usize>) -> TrainOpts {
    TrainOpts {
        resume,
        progress: false,
        max_steps_this_run: max,
        ..Default::default()
    }
}

fn bits(m: &Model) -> Vec<(String, Vec<u32>)> {
    m.host_params()
        .into_iter()
        .map(|(n, t)| (n, t.data.iter().map(|x| x.to_bits()).collect()))
        .collect()
}

#[test]
fn attention_experts_train_and_resume_bit_exactly() {
    for shared_kv in [false, true] {
        let init = Model::init(&cfg(shared_kv), 3, &Device::flex()).unwrap();
        let straight = Scratch::new(&format!("moa-straight-{shared_kv}"));
        let out = train(
            init.clone(),
            &mut data(),
            &config(),
            &straight,
            &opts(false, None),
        )
        .unwrap();
        assert!(out.final_loss.is_finite());
        let a = Model::load(&straight.join("model"), &Device::flex()).unwrap();
        // Every parameter trained, the attention experts and their routers included.
        for ((n, before), (_, after)) in bits(&init).iter().zip(bits(&a)) {
            assert_ne!(before, &after, "shared_kv={shared_kv}: {n} did not train");
        }
        let halves = Scratch::new(&format!("moa-halves-{shared_kv}"));
        let first = train(
            init.clone(),
            &mut data(),
            &config(),
            &halves,
            &opts(false, Some(3)),
        )
        .unwrap();
        assert!(first.stopped_early && first.steps == 3);
        let rest = train(init, &mut data(), &config(), &halves, &opts(true, None)).unwrap();
        assert_eq!(rest.steps, 6);
        let b = Model::load(&halves.join("model"), &Device::flex()).unwrap();
        assert_eq!(a.cfg, b.cfg);
        assert!(
            bits(&a) == bits(&b),
            "shared_kv={shared_kv}: resumed run differs"
        );
    }
}

#[test]
fn anchored_experts_resume_bit_exactly_with_the_anchor_untouched() {
    let mut c = ModelConfig::llama(61, 32, 48, 2, 4, 2, 64);
    c.tie_word_embeddings = false;
    let init = Model::init(&c, 4, &Device::flex()).unwrap();
    let mut tc = config();
    // What the planner freezes for `experts = "anchored"`.
    tc.train.freeze = vec![
        "model.layers.*.self_attn.*".into(),
        "model.embed_tokens.weight".into(),
        "lm_head.weight".into(),
    ];
    let straight = Scratch::new("anchored-straight");
    train(
        init.clone(),
        &mut data(),
        &tc,
        &straight,
        &opts(false, None),
    )
    .unwrap();
    let a = Model::load(&straight.join("model"), &Device::flex()).unwrap();
    for ((n, before), (_, after)) in bits(&init).iter().zip(bits(&a)) {
        let anchor =
            n.contains(".self_attn.") || n.contains("embed_tokens") || n == "lm_head.weight";
        assert_eq!(before == &after, anchor, "{n}");
    }
    let halves = Scratch::new("anchored-halves");
    train(
        init.clone(),
        &mut data(),
        &tc,
        &halves,
        &opts(false, Some(3)),
    )
    .unwrap();
    train(init, &mut data(), &tc, &halves, &opts(true, None)).unwrap();
    let b = Model::load(&halves.join("model"), &Device::flex()).unwrap();
    assert!(bits(&a) == bits(&b), "the resumed anchored run differs");
}
