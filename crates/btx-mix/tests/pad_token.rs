//! pad_token_id is the embedding's padding_idx (which row the lookup trains): models that
//! disagree on it are not mixed or averaged, and the output keeps the one they share.

use std::path::{Path, PathBuf};

use btx_mix::{average, mix, MixOptions, MixSpec, RouterInitKind};
use btx_model::burn::prelude::Device;
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;

fn cfg(pad: Option<u32>) -> ModelConfig {
    let mut c = ModelConfig::llama(50, 16, 24, 1, 4, 2, 64);
    c.pad_token_id = pad;
    c
}

fn make(dir: &Path, seed: u64, cfg: &ModelConfig) -> PathBuf {
    Model::init(cfg, seed, &Device::flex())
        .unwrap()
        .save(dir, usize::MAX)
        .unwrap();
    dir.to_path_buf()
}

fn opts() -> MixOptions {
    MixOptions {
        spec: MixSpec {
            router_init: RouterInitKind::Zero,
            ..MixOptions::default().spec
        },
        ..Default::default()
    }
}

#[test]
fn models_that_disagree_on_pad_token_id_are_not_merged() {
    let d = Scratch::new("mix-pad");
    let seed = make(&d.join("seed"), 0, &cfg(Some(3)));
    let other = make(&d.join("other"), 1, &cfg(None));
    let out = d.join("out");
    let e = mix(&seed, std::slice::from_ref(&other), &opts(), &out)
        .unwrap_err()
        .to_string();
    let want = format!(
        "{} has pad_token_id = null, but {} has pad_token_id = 3",
        other.display(),
        seed.display()
    );
    assert!(e.contains(&want), "{want:?} not in {e}");
    let e = average(&[seed.clone(), other], None, &out, Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("pad_token_id"), "{e}");
    assert!(!out.exists());

    // Agreeing, the merged model keeps it.
    let same = [
        make(&d.join("a"), 2, &cfg(Some(3))),
        make(&d.join("b"), 3, &cfg(Some(3))),
    ];
    mix(&seed, &same, &opts(), &out).unwrap();
    let c = ModelConfig::load(&out.join("config.json")).unwrap();
    assert_eq!(c.pad_token_id, Some(3));
}
