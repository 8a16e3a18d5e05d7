//! `btx bench train|generate`: time full train steps (forward, backward, AdamW) or KV-cache
//! decoding of the standard presets. Benchmarks only — tests never time anything.

use anyhow::{bail, Context, Result};
use btx_core::rng::Rng;
use btx_data::{Batch, BatchSource, FixedBatches};
use btx_kernels::instrument::gemm_clock;
use btx_model::burn::prelude::Device;

mod compare;
mod mix;
mod products;

use btx_model::generate::{generate, Sampling};
use btx_model::precision::Precision;
use btx_model::{Model, ModelConfig, ModelSpec};
use btx_train::{Trainer, TrainerConfig};
use compare::{compare, Sweep};
use mix::run_mix_bench;
pub use products::{matmul_floor, step_gemms, Caches, StepProduct};
use products::{median, print_products, HotFloor, FLOOR_ROUNDS};
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Time train steps of a preset: S (5.3M Llama), MoE-S (S with 4 experts, top-2), M (33M);
    /// GPU-sized: SmolLM2 (the SmolLM2-135M shape at seq 2048) and MoE-SmolLM2 (4 experts, top-2).
    Train {
        #[arg(long, default_value = "S")]
        preset: String,
        #[arg(long, default_value_t = 10)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Skip measuring the matmul floor.
        #[arg(long)]
        no_floor: bool,
        /// Also list the step's matrix products by shape and layout, each against the same
        /// call run alone on hot caches (where the step's gemm time goes).
        #[arg(long)]
        products: bool,
        /// The device's peak TFLOP/s in this precision, to print MFU (model FLOPs utilisation).
        #[arg(long)]
        peak_tflops: Option<f64>,
        /// The matmuls' precision: f32, or bf16 (mixed precision, `[train] precision`).
        #[arg(long, default_value = "f32")]
        precision: String,
    },
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
    Generate {
        #[arg(long, default_value = "S")]
        preset: String,
        /// Decode with this model directory instead of a random preset (prints its costs:
        /// parameters, FLOPs and KV cache per token).
        #[arg(long)]
        model: Option<std::path::PathBuf>,
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
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
    let threads = rayon::current_num_threads();
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
        BenchCmd::Train {
            preset: name,
            steps,
            warmup,
            json,
            no_floor,
            products,
            peak_tflops,
            precision,
        } => {
            let precision = parse_precision(&precision)?;
            check_peak(peak_tflops)?;
            at_least_one(
                steps,
                "--steps",
                "no step would be timed",
                "--steps 10 (the default): the median of the timed steps is reported",
            )?;
            // The matmul floor and the product clock are the CPU kernels' instruments (f32).
            let on_gpu = device != "cpu" && device != "flex";
            let fused = !on_gpu && precision.is_f32();
            let no_floor = no_floor || !fused;
            let products = products && fused;
            let (cfg, batch, seq) = preset(&name)?;
            let model = Model::init(&cfg, 0, &Device::flex())?;
            // The steps' products timed inside the step (gemm_clock) on steps of their own:
            // the clock costs the step ~1% (measured), which the timed steps must not carry.
            let clocked = steps.clamp(1, 5);
            let mut tc = TrainerConfig::default();
            // One schedule for every phase, so that the timed steps' learning rates and losses
            // do not depend on which phases run.
            tc.train.steps = warmup + steps + clocked + 1 + FLOOR_ROUNDS;
            tc.train.batch_size = batch;
            tc.train.seq_len = seq;
            tc.optim.warmup_steps = 1;
            tc.train.precision = precision;
            let mut tr = Trainer::new(model, tc, dev)?;
            let mut data = FixedBatches::new(random_batches(cfg.vocab_size, batch, seq, 4));
            let mut step = || -> Result<(f64, f64)> {
                let t0 = std::time::Instant::now();
                let st = tr.step(&mut data as &mut dyn BatchSource)?;
                Ok((t0.elapsed().as_secs_f64(), st.loss))
            };
            let (mut times, mut loss) = (vec![], 0.0);
            for i in 0..warmup + steps {
                let (dt, l) = step()?;
                if i >= warmup {
                    times.push(dt);
                    loss = l;
                }
            }
            let mut gemm_times = vec![];
            gemm_clock::enable(true);
            gemm_clock::enable_calls(products);
            for _ in 0..clocked {
                gemm_clock::take();
                step()?;
                gemm_times.push(gemm_clock::take().wall_s(threads));
            }
            gemm_clock::enable(false);
            gemm_clock::enable_calls(false);
            if products {
                print_products(clocked, threads);
            }
            let step_s = median(&mut times);
            let gemm_s = median(&mut gemm_times);
            // Before the floor's operands exist.
            let rss = peak_rss_mb();
            let tokens = (batch * seq) as f64;
            let flops = cfg.train_flops_per_token(seq) * tokens;
            let (floor, ratio, cold, peak) = if no_floor {
                (f64::NAN, f64::NAN, f64::NAN, f64::NAN)
            } else {
                // Each of FLOOR_ROUNDS more steps, then a sweep of the hot floor: the ratio is
                // the median of each step over the floor taken right after it.
                let mut hot = HotFloor::new(&cfg, batch, seq);
                // The first step after the floor's operands are set up ran 2.5x slower.
                step()?;
                let (mut floors, mut ratios) = (vec![], vec![]);
                for _ in 0..FLOOR_ROUNDS {
                    let (dt, _) = step()?;
                    let f = hot.sweep();
                    floors.push(f);
                    ratios.push(dt / f);
                }
                drop(hot);
                (
                    median(&mut floors),
                    median(&mut ratios),
                    matmul_floor(&cfg, batch, seq, Caches::Cold),
                    btx_kernels::instrument::peak::fma_gflops(0.25).unwrap_or(f64::NAN) * 1e9,
                )
            };
            // The floor's FLOPs at the FMA peak: how close the floor (and the step) is to what
            // the cores can do at all.
            let product_flops: f64 = step_gemms(&cfg, batch, seq)
                .iter()
                .map(|p| 2.0 * (p.m * p.k * p.n * p.count) as f64)
                .sum();
            let at_peak = product_flops / peak;
            let r = json!({
                "impl": "btx", "preset": name, "threads": threads, "params": cfg.total_params(),
                "active_params": cfg.active_params(), "batch": batch, "seq": seq,
                "step_s_median": step_s, "tokens_per_s": tokens / step_s,
                "gflops_per_s": flops / step_s / 1e9, "peak_rss_mb": rss,
                "matmul_floor_s": floor, "floor_ratio": ratio,
                "gemm_s": gemm_s, "gemm_floor_ratio": gemm_s / floor,
                "matmul_floor_cold_s": cold, "cold_floor_ratio": step_s / cold,
                "fma_peak_gflops": peak / 1e9, "products_at_peak_s": at_peak,
                "final_loss": loss, "device": device,
                "precision": precision,
                "tflops_per_s": flops / step_s / 1e12,
                "mfu": peak_tflops.map(|p| flops / step_s / (p * 1e12)),
            });
            if json {
                outln!("{r}");
            } else {
                let floor_text = if no_floor {
                    format!("the step's own products {gemm_s:.3}s (floor not measured)")
                } else {
                    format!(
                        "matmul floor {floor:.3}s ({:.2}x, steps paired with the floor right after; the step's own products {gemm_s:.3}s = {:.2}x; the floor's products with operands from memory {cold:.3}s = {:.2}x; FMA peak {:.0} GFLOP/s: the floor runs at {:.0}% of it, the whole step at {:.0}%)",
                        ratio,
                        gemm_s / floor,
                        cold / floor,
                        peak / 1e9,
                        100.0 * at_peak / floor,
                        100.0 * at_peak / step_s
                    )
                };
                let mfu = peak_tflops.map_or(String::new(), |p| {
                    format!(" (MFU {:.1}%)", 100.0 * flops / step_s / (p * 1e12))
                });
                outln!(
                    "train {name} on {device}: {:.2}M params ({:.2}M active), {threads} thread(s): median step {:.3}s, {:.0} tokens/s, {:.1} GFLOP/s{mfu}, {floor_text}, peak RSS {:.0} MB",
                    cfg.total_params() as f64 / 1e6,
                    cfg.active_params() as f64 / 1e6,
                    step_s,
                    tokens / step_s,
                    flops / step_s / 1e9,
                    rss
                );
            }
        }
        BenchCmd::Generate {
            preset: name,
            model: dir,
            tokens,
            batch,
            json,
        } => {
            at_least_one(
                batch,
                "--batch",
                "no row would be decoded",
                "--batch 1 (the default) or more: rows decoded together",
            )?;
            at_least_one(
                tokens,
                "--tokens",
                "no token would be decoded",
                "--tokens 128 (the default): tokens decoded per row",
            )?;
            // The shape first: every check below runs before the model's weights exist.
            let cfg = match &dir {
                Some(d) => ModelConfig::load(&d.join("config.json"))
                    .with_context(|| format!("loading {}", d.display()))?,
                None => preset(&name)?.0,
            };
            if tokens.saturating_add(16) > cfg.max_position_embeddings {
                bail!(
                    "--tokens {tokens} after a 16-token prompt exceeds the model's {} positions\nhint: fewer --tokens",
                    cfg.max_position_embeddings
                );
            }
            if let Some(total) = btx_model::budget::machine_memory() {
                btx_model::budget::check_fits(
                    btx_model::budget::generate_bytes(&cfg, batch, 16 + tokens),
                    total,
                    &format!(
                        "decoding {batch} row(s) of {} tokens (the KV cache and logits of every row)",
                        16 + tokens
                    ),
                    "a smaller --batch",
                )?;
            }
            let (model, name) = match &dir {
                Some(d) => (
                    Model::load(d, dev).with_context(|| format!("loading {}", d.display()))?,
                    d.display().to_string(),
                ),
                None => (Model::init(&cfg, 0, dev)?, name),
            };
            let cfg = model.cfg.clone();
            let prompts: Vec<Vec<i64>> = random_batches(cfg.vocab_size, batch, 16, 1)[0]
                .ids
                .chunks(16)
                .map(|c| c.to_vec())
                .collect();
            let s = Sampling::default();
            let _ = generate(&model, &prompts, 8, &s, None, |_, _| false);
            let t0 = std::time::Instant::now();
            let out = generate(&model, &prompts, tokens, &s, None, |_, _| false);
            let dt = t0.elapsed().as_secs_f64();
            let n: usize = out.iter().map(Vec::len).sum();
            let ctx = 16 + tokens / 2;
            let r = json!({"preset": name, "threads": threads, "batch": batch,
                "tokens": n, "seconds": dt, "tokens_per_s": n as f64 / dt, "peak_rss_mb": peak_rss_mb(),
                "total_params": cfg.total_params(), "active_params": cfg.active_params(),
                "flops_per_token": cfg.infer_flops_per_token(ctx), "mean_context": ctx,
                "kv_cache_bytes_per_token": 4 * cfg.kv_cache_floats_per_token()});
            if json {
                outln!("{r}");
            } else {
                outln!(
                    "generate {name}: batch {batch}, {threads} thread(s): {n} tokens in {dt:.2}s = {:.1} tokens/s",
                    n as f64 / dt
                );
                outln!(
                    "  {:.3}M parameters ({:.3}M active), {:.2} MFLOPs per token at context {ctx}, KV cache {} bytes per token",
                    cfg.total_params() as f64 / 1e6,
                    cfg.active_params() as f64 / 1e6,
                    cfg.infer_flops_per_token(ctx) / 1e6,
                    4 * cfg.kv_cache_floats_per_token()
                );
            }
        }
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
