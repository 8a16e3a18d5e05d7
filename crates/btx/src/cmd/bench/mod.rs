//! `btx bench train|generate`: time full train steps (forward, backward, AdamW) or KV-cache
//! decoding of the standard presets. Benchmarks only — tests never time anything.

use anyhow::{bail, Result};
use btx_core::rng::Rng;
use btx_data::Batch;
use btx_model::burn::prelude::Device;

mod compare;
mod generate;
mod mix;
mod products;
mod train;

use btx_model::precision::Precision;
use btx_model::{ModelConfig, ModelSpec};
use compare::{compare, Sweep};
use mix::run_mix_bench;
pub use products::{matmul_floor, step_gemms, Caches, StepProduct};

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Time train steps of a preset: S (5.3M Llama), MoE-S (S with 4 experts, top-2), M (33M);
    /// GPU-sized: SmolLM2 (the SmolLM2-135M shape at seq 2048) and MoE-SmolLM2 (4 experts, top-2).
    Train(train::TrainArgs),
    /// btx and the PyTorch reference (bench/torch_reference.py) side by side, each in its own
    /// process, at each thread count; both keep freed memory (btx: mimalloc; PyTorch: tuned glibc).
    Compare {
        /// Presets, comma-separated (on a GPU add SmolLM2,MoE-SmolLM2).
        #[arg(long, default_value = "S,MoE-S,M", value_delimiter = ',')]
        presets: Vec<String>,
        /// The device's peak TFLOP/s in f32, to print MFU on both sides.
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// Thread counts, comma-separated.
        #[arg(long, default_value = "1,2", value_delimiter = ',')]
        threads: Vec<usize>,
        #[arg(long, default_value_t = 6)]
        steps: usize,
        /// Repeat the whole sweep this many times and report medians over the rounds: on a
        /// noisy machine single runs of one preset swing by ±10%, and interleaved rounds let
        /// drift hit every preset alike (the MoE-S / S ratio compares runs minutes apart).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Python with torch.
        #[arg(long, default_value = "python3")]
        python: String,
        /// The reference script.
        #[arg(long, default_value = "bench/torch_reference.py")]
        script: std::path::PathBuf,
        /// Run PyTorch with glibc malloc as it comes. By default it gets the tuned settings
        /// (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_) that keep its
        /// freed memory, as btx's allocator keeps its own: no page faults per step on either side.
        #[arg(long)]
        torch_default_malloc: bool,
        /// The matmuls' precision on both sides: f32, or bf16 (btx `[train] precision`,
        /// PyTorch `torch.autocast`). Give --peak-tflops in the same precision.
        #[arg(long, default_value = "f32")]
        precision: String,
        #[arg(long)]
        json: bool,
    },
    /// Time `btx mix` on N random f32 Llama models of ~246M parameters (the size of the
    /// mergekit-moe reference: 13 s, 5.6 GB for four such models). The mix runs as a child
    /// process so its peak RSS is its own.
    Mix {
        /// Where the input models are created (kept and reused).
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 4)]
        experts: usize,
        #[arg(long)]
        json: bool,
    },
    /// Time KV-cache decoding of a preset (dense and MoE).
    Generate(generate::GenerateArgs),
}

/// `--precision f32|bf16`.
fn parse_precision(s: &str) -> Result<Precision> {
    match s.to_lowercase().as_str() {
        "f32" => Ok(Precision::F32),
        "bf16" => Ok(Precision::Bf16),
        _ => bail!("--precision {s:?}: f32 or bf16\nhint: bf16 is mixed precision (bf16 matmuls, f32 weights)"),
    }
}

/// `--peak-tflops`, when given, is a positive number (an MFU of NaN% or below zero says nothing).
fn check_peak(peak: Option<f64>) -> Result<()> {
    match peak {
        Some(p) if !(p.is_finite() && p > 0.0) => bail!(
            "--peak-tflops {p}: must be a positive number\nhint: the device's peak TFLOP/s in this precision, e.g. --peak-tflops 989 for an H100's bf16"
        ),
        _ => Ok(()),
    }
}

/// A count that must be at least 1 (`what` is the flag, `why` what 0 would mean).
fn at_least_one(n: usize, what: &str, why: &str, hint: &str) -> Result<()> {
    if n == 0 {
        bail!("{what} 0: {why}\nhint: {hint}");
    }
    Ok(())
}

/// (model shape, batch, seq) of a preset.
pub fn preset(name: &str) -> Result<(ModelConfig, usize, usize)> {
    let s = |hidden, ffn, layers, heads, experts| ModelSpec {
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_experts: experts,
        ..Default::default()
    };
    let (spec, vocab, batch, seq) = match name {
        "S" => (s(256, 704, 4, 4, 0), 4096, 8, 256),
        "MoE-S" | "moeS" => (s(256, 704, 4, 4, 4), 4096, 8, 256),
        "M" => (s(512, 1376, 8, 8, 0), 8192, 4, 256),
        "SmolLM2" | "MoE-SmolLM2" => {
            let experts = if name == "SmolLM2" { 0 } else { 4 };
            let spec = ModelSpec {
                num_kv_heads: Some(3),
                tie_word_embeddings: true,
                max_position_embeddings: 2048,
                ..s(576, 1536, 30, 9, experts)
            };
            (spec, 49152, 8, 2048)
        }
        other => bail!("unknown preset {other:?} (S, MoE-S, M, SmolLM2 or MoE-SmolLM2)"),
    };
    Ok((spec.to_config(vocab, Some(0))?, batch, seq))
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn random_batches(vocab: usize, batch: usize, seq: usize, n: usize) -> Vec<Batch> {
    let mut rng = Rng::new(42);
    (0..n)
        .map(|_| Batch {
            ids: (0..batch * seq).map(|_| rng.below(vocab) as i64).collect(),
            batch,
            seq,
            domains: vec![],
        })
        .collect()
}

pub fn run(cmd: BenchCmd, dev: &Device, device: &str) -> Result<()> {
    match cmd {
        BenchCmd::Mix { dir, experts, json } => {
            at_least_one(
                experts,
                "--experts",
                "there is nothing to mix",
                "--experts 4 (the default; the mergekit-moe reference mixes four)",
            )?;
            run_mix_bench(&dir, experts, json)?
        }
        BenchCmd::Compare {
            presets,
            threads,
            steps,
            rounds,
            python,
            script,
            torch_default_malloc,
            json,
            peak_tflops,
            precision,
        } => {
            check_peak(peak_tflops)?;
            at_least_one(
                steps,
                "--steps",
                "no step would be timed",
                "--steps 6 (the default)",
            )?;
            compare(
                &presets,
                &threads,
                Sweep {
                    steps,
                    rounds: rounds.max(1),
                    device: device.to_string(),
                    peak_tflops,
                    precision: parse_precision(&precision).map(|_| precision.to_lowercase())?,
                },
                (&python, &script, !torch_default_malloc),
                json,
            )?
        }
        BenchCmd::Train(a) => train::run(a, dev, device)?,
        BenchCmd::Generate(a) => generate::run(a, dev)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor's products are the step's: the linears (attention projections, experts at
    /// their average rows, router, LM head) forward and backward come to 6 FLOPs per token per
    /// active matmul weight, and the attention blocks cover exactly the causal blocks of 64.
    #[test]
    fn step_products_match_the_model() {
        for name in ["S", "MoE-S", "M"] {
            let (cfg, batch, seq) = preset(name).unwrap();
            let ps = step_gemms(&cfg, batch, seq);
            let flops = |block: bool| -> usize {
                ps.iter()
                    .filter(|p| p.block == block)
                    .map(|p| 2 * p.m * p.k * p.n * p.count)
                    .sum()
            };
            let (d, l, tokens) = (cfg.hidden_size, cfg.num_layers, batch * seq);
            let attn = d * (cfg.q_dim() + 2 * cfg.kv_dim()) + cfg.q_dim() * d;
            let ffn = match &cfg.moe {
                None => 3 * d * cfg.intermediate_size,
                Some(m) => m.top_k * 3 * d * cfg.intermediate_size + d * m.num_experts,
            };
            let weights = l * (attn + ffn) + d * cfg.vocab_size;
            assert_eq!(flops(false), 6 * tokens * weights, "{name}: linears");
            // Per (batch, head, layer) and visible pair of 64-blocks: S and O forward; dP, dQ,
            // dK and dV backward; each 2 * 64 * 64 * hd FLOPs (seq is a multiple of 64 here).
            let nb = seq / 64;
            let pairs = nb * (nb + 1) / 2;
            let heads = batch * cfg.num_heads * l;
            let want = heads * 6 * pairs * 2 * 64 * 64 * cfg.head_dim;
            assert_eq!(flops(true), want, "{name}: attention blocks");
            assert!(ps.iter().filter(|p| p.block).all(|p| p.m <= 64));
        }
    }
}

#[cfg(test)]
mod preset_tests {
    use super::preset;

    /// The GPU-sized preset is SmolLM2-135M's shape (134.5M parameters, tied embeddings, GQA
    /// 9:3, seq 2048), as bench/torch_reference.py builds it.
    #[test]
    fn the_gpu_preset_has_the_smollm2_135m_shape() {
        let (c, batch, seq) = preset("SmolLM2").unwrap();
        assert_eq!((batch, seq), (8, 2048));
        assert_eq!((c.num_heads, c.num_kv_heads, c.num_layers), (9, 3, 30));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.total_params(), 134_515_008);
        let (m, _, _) = preset("MoE-SmolLM2").unwrap();
        assert_eq!(
            m.moe.as_ref().map(|x| (x.num_experts, x.top_k)),
            Some((4, 2))
        );
        assert!(preset("XL").is_err());
    }
}
