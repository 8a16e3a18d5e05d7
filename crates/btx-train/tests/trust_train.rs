//! Issue 28 (trust, second pass): values that train into NaN are refused by key; a step that
//! cannot fit in the machine's memory, a sequence past the sliding window and training-time
//! noise btx does not implement are refused before the run writes anything; a batch the
//! forward pass cannot take is an error, not a panic.

mod tiny;

use btx_data::{Batch, FixedBatches};
use btx_model::burn::prelude::Device;
use btx_model::Model;
use btx_testkit::Scratch;
use btx_train::{train, TrainError, TrainOpts, Trainer, TrainerConfig};

fn config() -> TrainerConfig {
    let mut tc = TrainerConfig::default();
    tc.train.steps = 2;
    tc.train.batch_size = 2;
    tc.train.seq_len = 16;
    tc
}

fn opts() -> TrainOpts {
    TrainOpts {
        progress: false,
        ..Default::default()
    }
}

/// `optim.eps = 0`, a negative weight decay, a non-finite clip norm or coefficient were
/// accepted and trained into NaN (or away from the paper's AdamW).
#[test]
fn values_that_make_nan_are_refused_by_key() {
    type Change = fn(&mut TrainerConfig);
    let cases: [(Change, &str); 11] = [
        (
            |c| c.optim.eps = 0.0,
            "optim.eps must be a finite number > 0 that f32 holds",
        ),
        (|c| c.optim.eps = f64::NAN, "optim.eps"),
        // 1e-300 is > 0 as an f64 but 0 in the f32 the optimizer divides by.
        (
            |c| c.optim.eps = 1e-300,
            "optim.eps must be a finite number > 0 that f32 holds",
        ),
        (
            |c| c.optim.weight_decay = -0.1,
            "optim.weight_decay must be a finite number >= 0, got -0.1",
        ),
        (|c| c.optim.clip_norm = f64::INFINITY, "optim.clip_norm"),
        (|c| c.optim.lr = f64::INFINITY, "optim.lr"),
        (|c| c.optim.beta2 = 1.0, "optim.beta2 must be in [0, 1)"),
        (|c| c.moe.lb_coef = f64::NAN, "moe.lb_coef"),
        (|c| c.moe.z_loss_coef = -1.0, "moe.z_loss_coef"),
        (
            |c| c.moe.dead_expert_threshold = 2.0,
            "moe.dead_expert_threshold",
        ),
        (|c| c.train.grad_accum = 0, "train.grad_accum must be > 0"),
    ];
    for (change, needle) in cases {
        let mut c = config();
        change(&mut c);
        let e = c.validate().unwrap_err();
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    assert!(config().validate().is_ok());
}

/// `train.batch_size = 1e8` tried to allocate about 100 GB. Refused from the shapes, before
/// the first allocation or write, with the estimate, the machine's memory and a hint.
#[test]
fn a_step_larger_than_the_machine_is_refused_before_anything() {
    let d = Scratch::absent("trust-train-mem");
    let mut c = config();
    c.train.batch_size = 100_000_000;
    let init = Model::init(&tiny::cfg(false), 1, &Device::flex()).unwrap();
    let e = train(init, &mut tiny::batches(1), &c, &d, &opts()).unwrap_err();
    let msg = e.to_string();
    for needle in [
        "train.batch_size 100000000",
        "GiB of memory",
        "this machine has",
        "\nhint: ",
        "grad_accum",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }
    assert!(!d.exists(), "a refused run created {}", d.display());
    // The demo's shape fits anywhere btx runs.
    let demo = TrainerConfig::default();
    assert!(demo
        .preflight(
            &btx_model::ModelSpec::default()
                .to_config(4096, Some(0))
                .unwrap()
        )
        .is_ok());
}

/// A sliding window shorter than train.seq_len panicked in the forward pass; now the run is
/// refused by name before it writes, and a Trainer fed a longer batch returns an error.
#[test]
fn sequences_past_the_sliding_window_are_refused() {
    let d = Scratch::absent("trust-train-window");
    let mut mc = tiny::cfg(false);
    mc.sliding_window = Some(8);
    let init = Model::init(&mc, 1, &Device::flex()).unwrap();
    let e = train(init.clone(), &mut tiny::batches(1), &config(), &d, &opts())
        .unwrap_err()
        .to_string();
    for needle in [
        "train.seq_len 16",
        "sliding_window of 8",
        "\nhint: lower train.seq_len",
    ] {
        assert!(e.contains(needle), "{needle:?} not in {e}");
    }
    assert!(!d.exists());
    let mut t = Trainer::new(init, config(), &Device::flex()).unwrap();
    let e = t.step(&mut tiny::batches(1)).err().unwrap().to_string();
    assert!(e.contains("sliding_window of 8"), "{e}");
    // Token ids outside the vocabulary: an error naming the cause, not a panic.
    let mut t = Trainer::new(
        Model::init(&tiny::cfg(false), 1, &Device::flex()).unwrap(),
        config(),
        &Device::flex(),
    )
    .unwrap();
    let mut bad = FixedBatches::new(vec![Batch {
        ids: vec![61; 8],
        batch: 2,
        seq: 4,
        domains: vec![],
    }]);
    let e = t.step(&mut bad).err().unwrap();
    assert!(matches!(e, TrainError::Data(_)), "{e}");
}

/// A model whose config asks for attention dropout would have trained without it.
#[test]
fn training_noise_btx_does_not_implement_is_refused() {
    let d = Scratch::absent("trust-train-dropout");
    let mut mc = tiny::cfg(true);
    mc.router_jitter_noise = 0.01;
    let init = Model::init(&mc, 1, &Device::flex()).unwrap();
    let e = train(init, &mut tiny::batches(1), &config(), &d, &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("router_jitter_noise = 0.01"), "{e}");
    assert!(!d.exists());
}

/// A model that cannot fit is refused by arithmetic, at once and with its own hint (listing the
/// parameters of 1e8 layers used to take gigabytes before the batch's check, whose hint was
/// to lower the batch).
#[test]
fn a_model_larger_than_the_machine_is_refused_at_once() {
    if btx_model::budget::machine_memory().is_none() {
        panic!("this test needs /proc/meminfo");
    }
    let mut m = btx_model::ModelConfig::llama(61, 32, 48, 2, 4, 2, 512);
    m.num_layers = 100_000_000;
    let t0 = std::time::Instant::now();
    let e = TrainerConfig::default()
        .preflight(&m)
        .unwrap_err()
        .to_string();
    assert!(t0.elapsed().as_secs_f64() < 1.0);
    assert!(e.contains("the model itself is too large"), "{e}");
}
