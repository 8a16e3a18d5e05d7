//! Writing in the seed's dtype: a bf16 (f16) MiX of bf16 (f16) experts is the f32 MiX of the
//! same values rounded once, stored in that dtype, sharded at the size asked for.

use std::path::{Path, PathBuf};

use btx_core::outdir::Existing;
use btx_mix::{mix, MixOptions, MixSpec};
use btx_model::burn::prelude::Device;
use btx_model::io::{OutDtype, SaveOpts, TensorReader};
use btx_model::{Model, ModelConfig};
use btx_testkit::Scratch;

fn cfg() -> ModelConfig {
    let mut c = ModelConfig::llama(50, 16, 24, 2, 4, 2, 64);
    // A Qwen3 seed: its head norms travel through the MiX too.
    c.family = btx_model::config::Family::Qwen3;
    c.qk_norm = true;
    c
}

/// A random model whose values are exactly representable in `dtype`, saved in `dtype`.
fn make(dir: &Path, seed: u64, dtype: OutDtype) -> PathBuf {
    let round = |x: f32| match dtype {
        OutDtype::BF16 => half::bf16::from_f32(x).to_f32(),
        OutDtype::F16 => half::f16::from_f32(x).to_f32(),
        _ => x,
    };
    let m = Model::init(&cfg(), seed, &Device::flex())
        .unwrap()
        .map(|n, t| {
            let v: Vec<f32> = btx_model::to_vec(t.clone())
                .into_iter()
                .enumerate()
                .map(|(i, x)| {
                    let bump = if n.contains("norm") {
                        0.01 * ((i as u64 * 7 + seed) % 13) as f32
                    } else {
                        0.0
                    };
                    round(x + bump)
                })
                .collect();
            let [a, b] = t.dims();
            btx_model::burn::prelude::Tensor::from_data(
                btx_model::burn::prelude::TensorData::new(v, [a, b]),
                &t.device(),
            )
        });
    m.save_as(
        dir,
        &SaveOpts {
            dtype,
            max_shard_bytes: usize::MAX,
        },
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), b"{}").unwrap();
    dir.to_path_buf()
}

fn params(dir: &Path) -> Vec<(String, Vec<f32>)> {
    Model::load(dir, &Device::flex())
        .unwrap()
        .host_params()
        .into_iter()
        .map(|(n, t)| (n, t.data))
        .collect()
}

#[test]
fn a_half_precision_mix_is_the_f32_mix_rounded_once() {
    for (dtype, round) in [
        (
            OutDtype::BF16,
            (|x: f32| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (OutDtype::F16, |x: f32| half::f16::from_f32(x).to_f32()),
    ] {
        let d = Scratch::new("mix-dtype");
        let seed = make(&d.join("seed"), 0, dtype);
        let experts: Vec<PathBuf> = (1..=2)
            .map(|i| make(&d.join(format!("e{i}")), i, dtype))
            .collect();
        let opts = |dtype: Option<OutDtype>, max_shard_bytes| MixOptions {
            spec: MixSpec {
                generalist: true,
                ..MixSpec::default()
            },
            existing: Existing::Refuse,
            dtype,
            max_shard_bytes,
            ..MixOptions::default()
        };
        // Default: the seed's dtype, in one file.
        mix(&seed, &experts, &opts(None, usize::MAX), &d.join("half")).unwrap();
        mix(
            &seed,
            &experts,
            &opts(Some(OutDtype::F32), usize::MAX),
            &d.join("full"),
        )
        .unwrap();
        let r = TensorReader::open(&d.join("half")).unwrap();
        assert_eq!(r.weights_dtype(), dtype);
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("half/config.json")).unwrap())
                .unwrap();
        assert_eq!(config["torch_dtype"], dtype.torch_name());
        let (half, full) = (params(&d.join("half")), params(&d.join("full")));
        assert_eq!(half.len(), full.len());
        let mut averaged_and_rounded = 0;
        for ((n, h), (m, f)) in half.iter().zip(&full) {
            assert_eq!(n, m);
            for (x, y) in h.iter().zip(f) {
                assert_eq!(x.to_bits(), round(*y).to_bits(), "{n}: {x} vs round({y})");
            }
            averaged_and_rounded += h.iter().zip(f).any(|(x, y)| x != y) as usize;
        }
        // The averaged tensors are not representable before rounding: the test sees rounding.
        assert!(averaged_and_rounded > 0);

        // Sharded at a size of that dtype (2 bytes per value): every shard within it but the
        // one a larger tensor takes alone, and the same values read back.
        let max = 2_000;
        mix(&seed, &experts, &opts(None, max), &d.join("sharded")).unwrap();
        let index = d.join("sharded/model.safetensors.index.json");
        assert!(index.is_file());
        let shards: Vec<PathBuf> = std::fs::read_dir(d.join("sharded"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        assert!(shards.len() > 2, "{shards:?}");
        assert_eq!(params(&d.join("sharded")), half);
    }
}
