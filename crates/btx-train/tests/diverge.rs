//! Issue 17 regression: a diverging run used to apply updates with a NaN gradient norm and keep
//! checkpoints full of NaN (with DONE files); resuming with a lower learning rate was refused.
//! Now non-finite steps are skipped, the run stops after a few in a row with the last good
//! checkpoint as the newest, nothing non-finite is written, and the learning rate may change on
//! resume.

mod tiny;

use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;
use btx_train::checkpoint::{find_latest, load};
use btx_train::{train, TrainError, TrainOpts, TrainerConfig};

fn data() -> btx_data::FixedBatches {
    tiny::batches(4)
}

fn config(lr: f64, steps: usize) -> TrainerConfig {
    let mut tc = TrainerConfig::default();
    tc.train.steps = steps;
    tc.train.batch_size = 2;
    tc.train.seq_len = 16;
    tc.train.checkpoint_every = 1;
    tc.train.keep_checkpoints = 1000;
    tc.optim.warmup_steps = 1;
    tc.optim.lr = lr;
    tc
}

fn opts(resume: bool) -> TrainOpts {
    TrainOpts {
        resume,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn a_diverging_run_stops_on_its_last_good_checkpoint_and_resumes_with_a_lower_lr() {
    let d = Scratch::new("diverge");
    let init = Model::init(
        &ModelConfig::llama(61, 32, 48, 2, 4, 2, 64),
        3,
        &Device::flex(),
    )
    .unwrap();
    // Three sound steps, then a resume with an absurd learning rate (a changed lr is allowed).
    train(
        init.clone(),
        &mut data(),
        &config(1e-3, 3),
        &d,
        &opts(false),
    )
    .unwrap();
    let e = train(init.clone(), &mut data(), &config(1e6, 40), &d, &opts(true)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrainError::Diverged { .. }), "{msg}");
    assert!(
        msg.contains("optim.lr") && msg.contains("--resume"),
        "{msg}"
    );

    // Every checkpoint on disk is complete and finite; the newest is the one the error names.
    let root = d.join("checkpoints");
    let ckpts: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(ckpts.len() > 3, "{ckpts:?}");
    for c in &ckpts {
        let m = load(c, &Device::flex()).unwrap().model;
        for (name, t) in m.host_params() {
            assert!(t.data.iter().all(|x| x.is_finite()), "{c:?}: {name}");
        }
    }
    let (_, newest) = find_latest(&root).unwrap();
    assert!(msg.contains(&newest.display().to_string()), "{msg}");
    // The exported model of the sound run is untouched by the diverged one.
    let exported = Model::load(&d.join("model"), &Device::flex()).unwrap();
    assert!(exported
        .host_params()
        .iter()
        .all(|(_, t)| t.data.iter().all(|x| x.is_finite())));

    // Back to the sound step-3 checkpoint: a lower learning rate and a longer schedule resume.
    for c in &ckpts {
        if find_step(c) > 3 {
            std::fs::remove_dir_all(c).unwrap();
        }
    }
    let out = train(init.clone(), &mut data(), &config(1e-3, 6), &d, &opts(true)).unwrap();
    assert_eq!(out.steps, 6);
    assert!(out.final_loss.is_finite());

    // What a checkpoint depends on may not change.
    let mut other = config(1e-3, 8);
    other.train.seed = 9;
    let e = train(init, &mut data(), &other, &d, &opts(true)).unwrap_err();
    assert!(matches!(e, TrainError::ConfigChanged { .. }), "{e}");
    assert!(e.to_string().contains("train.seed"), "{e}");
}

fn find_step(p: &std::path::Path) -> usize {
    let name = p.file_name().unwrap().to_string_lossy().to_string();
    name.trim_start_matches("step-").parse().unwrap()
}
