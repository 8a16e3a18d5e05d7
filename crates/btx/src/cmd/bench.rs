//! `btx bench train|generate`: time full train steps (forward, backward, AdamW) or KV-cache
//! decoding of the standard presets. Benchmarks only — tests never time anything.

use anyhow::{bail, Context, Result};
use btx_core::rng::Rng;
use btx_data::{Batch, BatchSource, FixedBatches};
use btx_model::burn::prelude::Device;
use btx_model::fused::gemm_clock;
use btx_model::generate::{generate, Sampling};
use btx_model::precision::Precision;
use btx_model::{Model, ModelConfig, ModelSpec};
use btx_train::{Trainer, TrainerConfig};
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

/// (model shape, batch, seq) of a preset.
pub fn preset(name: &str) -> Result<(ModelConfig, usize, usize)> {
    let s = |hidden, ffn, layers, heads, experts| ModelSpec {
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_experts: experts,
        top_k: 2,
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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

/// The matrix products of one train step (forward and backward), as (m, k, n, count).
/// One kind of matrix product in a train step: `count` calls of `[m x k] [k x n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepProduct {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub count: usize,
    /// An attention block, which the step runs on the tile kernel where it can.
    pub block: bool,
}

/// The matrix products of one train step of `cfg` (linears forward and backward, attention
/// blocks as the fused kernel computes them, the experts' rows at their average count).
pub fn step_gemms(cfg: &ModelConfig, batch: usize, seq: usize) -> Vec<StepProduct> {
    let n = batch * seq;
    let d = cfg.hidden_size;
    let mut g = vec![];
    // y = x W^T with x [rows, i], W [o, i]: forward, dX, dW.
    let linear = |g: &mut Vec<StepProduct>, rows: usize, i: usize, o: usize, count: usize| {
        if rows == 0 {
            return;
        }
        for (m, k, n) in [(rows, i, o), (rows, o, i), (o, rows, i)] {
            g.push(StepProduct {
                m,
                k,
                n,
                count,
                block: false,
            });
        }
    };
    let l = cfg.num_layers;
    linear(&mut g, n, d, cfg.q_dim(), 2 * l);
    linear(&mut g, n, d, cfg.kv_dim(), 2 * l);
    let (t, hd, bh) = (seq, cfg.head_dim, batch * cfg.num_heads * l);
    // Attention as the fused kernel computes it: blocks of 64 query rows against the keys they
    // can see. Forward S = QKᵀ, O = PV; backward dP = dO Vᵀ, dQ = dS K, and per block of 64
    // keys dK = dSᵀ Q, dV = Pᵀ dO over the rows that see them.
    let blk = 64;
    let mut r0 = 0;
    while r0 < t {
        let rows = blk.min(t - r0);
        let cols = r0 + rows;
        for (m, k, n) in [(rows, hd, cols), (rows, cols, hd), (rows, t - r0, hd)] {
            g.push(StepProduct {
                m,
                k,
                n,
                count: 2 * bh,
                block: true,
            });
        }
        r0 += rows;
    }
    match &cfg.moe {
        None => linear(&mut g, n, d, cfg.intermediate_size, 3 * l),
        Some(m) => {
            let active = match m.routing {
                btx_model::Routing::TopK => m.top_k,
                btx_model::Routing::Soft => m.num_experts,
                _ => 1,
            };
            let per_expert = n * active / m.num_experts;
            linear(
                &mut g,
                per_expert,
                d,
                cfg.intermediate_size,
                3 * l * m.num_experts,
            );
            linear(&mut g, n, d, m.num_experts, l);
        }
    }
    linear(&mut g, n, d, cfg.vocab_size, 1);
    g
}

/// The step's products by call (shape and layout), in-step time against the same call alone.
fn print_products(steps: usize, threads: usize) {
    let calls = gemm_clock::calls();
    let per_step = |x: f64| x / steps.max(1) as f64 * 1e3;
    let mut rows: Vec<(gemm_clock::Call, f64, f64, u64)> = calls
        .iter()
        .map(|&(c, n, s)| (c, per_step(s), per_step(c.replay() * n as f64), n))
        .collect();
    rows.sort_by(|x, y| (y.1 - y.2).total_cmp(&(x.1 - x.2)));
    let (step, alone) = rows.iter().fold((0.0, 0.0), |(a, b), r| (a + r.1, b + r.2));
    errln!(
        "products per step ({threads} thread(s); single-core calls summed over threads): {step:.1} ms in the step, {alone:.1} ms alone on hot caches ({:.3}x)",
        step / alone
    );
    errln!("  in-step ms   alone ms  ratio  calls  m x n x k  [dst_rs; A rs,cs; B rs,cs]");
    for (c, st, al, n) in rows.iter().take(20) {
        errln!(
            "  {st:>10.2} {al:>10.2} {:>6.3} {:>6} {} x {} x {}  [{}; {},{}; {},{}]{}{}",
            st / al,
            n / steps.max(1) as u64,
            c.m,
            c.n,
            c.k,
            c.dst_rs,
            c.a.0,
            c.a.1,
            c.b.0,
            c.b.1,
            if c.acc { " acc" } else { "" },
            if c.parallel { " spread" } else { "" },
        );
    }
}

/// Seconds the matrix products of one train step take on their own (contiguous operands,
/// median of repeats): the floor a step's time is measured against. Each product runs as the
/// step would run it alone: one gemm call, spread over the pool when worth it; an attention
/// block on the faster of gemm and the tile kernel (which the step uses where the CPU has
/// AVX-512), so that a faster kernel in the step lowers the floor with it.
///
/// `Caches::Hot` repeats each call on the same operands (they stay in cache): the floor.
/// `Caches::Cold` gives every call its own operands and output from a ring of more than twice
/// the L3 (64 MB), so each starts with its data in memory, as a step's activations are when
/// they outgrow the caches: what the same products cost when nothing is reused from cache.
pub fn matmul_floor(cfg: &ModelConfig, batch: usize, seq: usize, caches: Caches) -> f64 {
    step_gemms(cfg, batch, seq)
        .into_iter()
        .map(|p| {
            // One product's operands at a time (a cold ring is 64 MB).
            let mut f = FloorProduct::new(p, caches);
            let mut ts: Vec<f64> = (0..3).map(|_| f.round()).collect();
            median(&mut ts) * p.count as f64
        })
        .sum()
}

/// The hot floor taken in sweeps, one round of every product each, so that it can be
/// measured between train steps: a step and the sweep right after it see the machine in the
/// same state. (On this shared machine both move by ±3% from run to run, mostly not together:
/// with the floor measured after all the steps, six runs gave MoE-S ratios of 1.19-1.24.)
struct HotFloor(Vec<FloorProduct>);

impl HotFloor {
    fn new(cfg: &ModelConfig, batch: usize, seq: usize) -> Self {
        HotFloor(
            step_gemms(cfg, batch, seq)
                .into_iter()
                .map(|p| FloorProduct::new(p, Caches::Hot))
                .collect(),
        )
    }

    /// Seconds of one step's products, one round of each.
    fn sweep(&mut self) -> f64 {
        self.0
            .iter_mut()
            .map(|f| f.round() * f.p.count as f64)
            .sum()
    }
}

/// One of the floor's products with its operands (`sets` of them for a cold ring), warmed up.
struct FloorProduct {
    p: StepProduct,
    sets: usize,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
    /// Calls per round: enough work to time (~0.2 GFLOP), and every set at least once.
    calls: usize,
}

impl FloorProduct {
    fn new(p: StepProduct, caches: Caches) -> Self {
        let (m, k, n) = (p.m, p.k, p.n);
        let sets = match caches {
            Caches::Hot => 1,
            Caches::Cold => (RING_BYTES / (4 * (m * k + k * n + m * n))).clamp(2, 4096),
        };
        let fill = |len: usize, q: usize, s: usize| -> Vec<f32> {
            (0..len).map(|i| ((i + s) % q) as f32 * 0.01).collect()
        };
        let reps = ((2e8 / (2.0 * (m * k * n) as f64)).ceil() as usize).clamp(3, 200);
        let mut f = FloorProduct {
            p,
            sets,
            a: (0..sets).map(|s| fill(m * k, 13, s)).collect(),
            b: (0..sets).map(|s| fill(k * n, 7, s)).collect(),
            c: (0..sets).map(|_| vec![0f32; m * n]).collect(),
            calls: reps.max(sets),
        };
        // One pass with each kernel first: warms up and maps every page.
        for i in 0..f.calls {
            f.gemm(i);
            if f.tiled() {
                f.tile(i);
            }
        }
        f
    }

    /// Where the step runs this product on the tile kernel.
    fn tiled(&self) -> bool {
        self.p.block && btx_model::fused::tile_mm::available()
    }

    fn gemm(&mut self, i: usize) {
        let (s, StepProduct { m, k, n, .. }) = (i % self.sets, self.p);
        btx_model::fused::linear::product_into(
            &mut self.c[s],
            [m, n, k],
            (&self.a[s], k, 1),
            (&self.b[s], n, 1),
        );
        std::hint::black_box(&mut self.c[s]);
    }

    fn tile(&mut self, i: usize) {
        let (s, StepProduct { m, k, n, .. }) = (i % self.sets, self.p);
        // SAFETY: only called where `tiled` (AVX-512 checked); a, b and c hold m*k, k*n and
        // m*n elements, the row-major extents of the strides given.
        unsafe {
            btx_model::fused::tile_mm::product(
                [m, n, k],
                self.c[s].as_mut_ptr(),
                n,
                false,
                (self.a[s].as_ptr(), k, 1),
                (self.b[s].as_ptr(), n),
                1.0,
            )
        };
        std::hint::black_box(&mut self.c[s]);
    }

    /// Seconds per call over one round of `calls` calls: gemm's, or the faster of gemm's
    /// and the tile kernel's where the step uses the tile kernel. On hot caches, one untimed
    /// call first brings the operands back (a sweep ran every other product in between).
    fn round(&mut self) -> f64 {
        let time = |f: &mut Self, tile: bool| {
            let run = |f: &mut Self, i: usize| {
                if tile {
                    f.tile(i)
                } else {
                    f.gemm(i)
                }
            };
            if f.sets == 1 {
                run(f, 0);
            }
            let t0 = std::time::Instant::now();
            for i in 0..f.calls {
                run(f, i);
            }
            t0.elapsed().as_secs_f64() / f.calls as f64
        };
        let g = time(self, false);
        if self.tiled() {
            g.min(time(self, true))
        } else {
            g
        }
    }
}

/// Steps paired with a sweep of the hot floor each (see [`HotFloor`]).
const FLOOR_ROUNDS: usize = 7;

/// Where [`matmul_floor`]'s operands come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caches {
    Hot,
    Cold,
}

/// Bytes of operands [`Caches::Cold`] cycles through per product: twice this machine's 32 MB
/// L3 (more than most CPUs' last-level cache a core can use).
const RING_BYTES: usize = 64 << 20;

/// Runs a benchmark command, returning its JSON line.
fn run_json(mut c: std::process::Command) -> Result<serde_json::Value> {
    let out = c.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("{:?} failed", c);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("");
    Ok(serde_json::from_str(line)?)
}

/// glibc malloc settings under which PyTorch keeps freed memory instead of returning it to the
/// OS and faulting it back in every step (its best CPU configuration on this machine).
const TORCH_MALLOC: [(&str, &str); 3] = [
    ("MALLOC_MMAP_THRESHOLD_", "33554432"),
    ("MALLOC_TRIM_THRESHOLD_", "17179869184"),
    ("MALLOC_TOP_PAD_", "268435456"),
];

/// How long, how often and where `bench compare` measures.
struct Sweep {
    steps: usize,
    rounds: usize,
    /// `cpu` or `cuda`: both sides run there; on `cuda` PyTorch also runs `torch.compile`d.
    device: String,
    peak_tflops: Option<f64>,
    /// `f32` or `bf16`, on both sides.
    precision: String,
}

/// One side-by-side measurement: btx's and PyTorch's JSON lines (on a GPU, PyTorch's eager
/// line carries the `torch.compile` one under "compiled").
fn measure_pair(
    exe: &std::path::Path,
    (python, script, tuned_malloc): (&str, &std::path::Path, bool),
    preset: &str,
    threads: usize,
    sweep: &Sweep,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let steps = sweep.steps.to_string();
    let peak = sweep.peak_tflops.map(|p| p.to_string());
    let mut b = std::process::Command::new(exe);
    b.args(["--threads", &threads.to_string(), "--device", &sweep.device])
        .args(["bench", "train"])
        .args(["--preset", preset, "--json", "--steps", &steps])
        .args(["--precision", &sweep.precision]);
    if let Some(p) = &peak {
        b.args(["--peak-tflops", p]);
    }
    let ours = run_json(b)?;
    let torch = |compile: bool| {
        let mut r = std::process::Command::new(python);
        r.arg(script)
            .args(["--preset", preset, "--threads", &threads.to_string()])
            .args(["--device", &sweep.device, "--json", "--steps", &steps])
            .args(["--dtype", &sweep.precision]);
        if compile {
            r.arg("--compile");
        }
        if let Some(p) = &peak {
            r.args(["--peak-tflops", p]);
        }
        if tuned_malloc {
            for (k, v) in TORCH_MALLOC {
                if std::env::var_os(k).is_none() {
                    r.env(k, v);
                }
            }
        }
        run_json(r)
    };
    let mut theirs = torch(false)?;
    if sweep.device == "cuda" {
        theirs["compiled"] = torch(true)?;
    }
    Ok((ours, theirs))
}

/// Median over rounds of one number of the btx (`side = "btx"`) or PyTorch results.
fn median_of(rounds: &[(serde_json::Value, serde_json::Value)], side: &str, key: &str) -> f64 {
    let mut v: Vec<f64> = rounds
        .iter()
        .map(|(o, t)| {
            let r = if side == "btx" { o } else { t };
            r[key].as_f64().unwrap_or(f64::NAN)
        })
        .collect();
    median(&mut v)
}

fn compare(
    presets: &[String],
    threads: &[usize],
    sweep: Sweep,
    torch: (&str, &std::path::Path, bool),
    json: bool,
) -> Result<()> {
    let exe = std::env::current_exe()?;
    let cells: Vec<(&str, usize)> = presets
        .iter()
        .flat_map(|p| threads.iter().map(move |&t| (p.as_str(), t)))
        .collect();
    let mut results: Vec<Vec<(serde_json::Value, serde_json::Value)>> = vec![vec![]; cells.len()];
    for round in 0..sweep.rounds {
        if sweep.rounds > 1 && !json {
            outln!("round {}/{}", round + 1, sweep.rounds);
        }
        for (cell, &(p, t)) in cells.iter().enumerate() {
            let (ours, theirs) = measure_pair(&exe, torch, p, t, &sweep)?;
            if !json && sweep.device == "cuda" {
                let tps = |v: &serde_json::Value| v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
                let mfu = |v: &serde_json::Value| {
                    v["mfu"]
                        .as_f64()
                        .map_or(String::new(), |m| format!(", MFU {:.1}%", 100.0 * m))
                };
                let compiled = &theirs["compiled"];
                outln!(
                    "{p:<11} cuda: btx {:>8.0} tok/s{} | pytorch eager {:>8.0} tok/s{} | torch.compile {:>8.0} tok/s{} | btx / eager {:.2}x, btx / compile {:.2}x",
                    tps(&ours),
                    mfu(&ours),
                    tps(&theirs),
                    mfu(&theirs),
                    tps(compiled),
                    mfu(compiled),
                    tps(&ours) / tps(&theirs),
                    tps(&ours) / tps(compiled),
                );
            } else if !json {
                // The floor is the f32 CPU kernels' instrument (not measured in bf16).
                let floor = match ours["floor_ratio"].as_f64() {
                    Some(r) => format!(
                        "{r:.2}x floor, gemm alone {:.2}x, floor from memory {:.2}x",
                        ours["gemm_floor_ratio"].as_f64().unwrap_or(f64::NAN),
                        ours["matmul_floor_cold_s"].as_f64().unwrap_or(f64::NAN)
                            / ours["matmul_floor_s"].as_f64().unwrap_or(f64::NAN),
                    ),
                    None => format!("{}, no floor", sweep.precision),
                };
                outln!(
                    "{p:<6} {t} thread(s): btx {:>6.0} tok/s ({:.3} s/step, {floor}, {:>4.0} MB) | pytorch {:>6.0} tok/s ({:.3} s/step, {:>4.0} MB) | speed {:.2}x, memory {:.2}x",
                    ours["tokens_per_s"].as_f64().unwrap_or(0.0),
                    ours["step_s_median"].as_f64().unwrap_or(0.0),
                    ours["peak_rss_mb"].as_f64().unwrap_or(0.0),
                    theirs["tokens_per_s"].as_f64().unwrap_or(0.0),
                    theirs["step_s_median"].as_f64().unwrap_or(0.0),
                    theirs["peak_rss_mb"].as_f64().unwrap_or(0.0),
                    ours["tokens_per_s"].as_f64().unwrap_or(0.0)
                        / theirs["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                    ours["peak_rss_mb"].as_f64().unwrap_or(0.0)
                        / theirs["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
                );
            }
            results[cell].push((ours, theirs));
        }
    }
    let mut rows = vec![];
    if sweep.rounds > 1 && !json {
        outln!("medians over {} rounds:", sweep.rounds);
    }
    for (&(p, t), rs) in cells.iter().zip(&results) {
        let m = |side: &str, key: &str| median_of(rs, side, key);
        let speed = m("btx", "tokens_per_s") / m("pytorch", "tokens_per_s");
        let mut compiled: Vec<f64> = rs
            .iter()
            .filter_map(|r| r.1["compiled"]["tokens_per_s"].as_f64())
            .collect();
        let speed_vs_compile = if compiled.is_empty() {
            f64::NAN
        } else {
            m("btx", "tokens_per_s") / median(&mut compiled)
        };
        let memory = m("btx", "peak_rss_mb") / m("pytorch", "peak_rss_mb");
        let floor_at_peak = m("btx", "products_at_peak_s") / m("btx", "matmul_floor_s");
        if sweep.rounds > 1 && !json {
            outln!(
                "{p:<6} {t} thread(s): btx {:.3} s/step, {:.2}x floor, gemm alone {:.2}x, floor from memory {:.2}x, floor at {:.0}% of the FMA peak | pytorch {:.3} s/step | speed {speed:.2}x, memory {memory:.2}x",
                m("btx", "step_s_median"),
                m("btx", "floor_ratio"),
                m("btx", "gemm_floor_ratio"),
                m("btx", "matmul_floor_cold_s") / m("btx", "matmul_floor_s"),
                100.0 * floor_at_peak,
                m("pytorch", "step_s_median"),
            );
        }
        rows.push(json!({
            "preset": p, "threads": t, "rounds": rs.len(),
            "btx": rs.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "pytorch": rs.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
            "btx_step_s": m("btx", "step_s_median"), "floor_ratio": m("btx", "floor_ratio"),
            "cold_floor_ratio": m("btx", "cold_floor_ratio"),
            "floor_peak_fraction": floor_at_peak,
            "speed_ratio": speed, "rss_ratio": memory,
            "speed_ratio_vs_compile": speed_vs_compile,
        }));
    }
    // MoE-S against S: step times against active FLOPs (GFLOP/s x step = FLOPs per step).
    for &t in threads {
        let cell = |p: &str| cells.iter().position(|&c| c == (p, t)).map(|i| &results[i]);
        if let (Some(s), Some(moe)) = (cell("S"), cell("MoE-S")) {
            let step = |rs: &[(serde_json::Value, serde_json::Value)]| {
                median_of(rs, "btx", "step_s_median")
            };
            // The same in every round: take the first.
            let flops = |rs: &[(serde_json::Value, serde_json::Value)]| {
                let b = &rs[0].0;
                b["gflops_per_s"].as_f64().unwrap_or(f64::NAN)
                    * b["step_s_median"].as_f64().unwrap_or(f64::NAN)
            };
            let (time_ratio, flop_ratio) = (step(moe) / step(s), flops(moe) / flops(s));
            if !json {
                outln!(
                    "MoE-S / S at {t} thread(s): step time {time_ratio:.3} (medians), active FLOPs {flop_ratio:.3}: {:.3}x the FLOP ratio",
                    time_ratio / flop_ratio
                );
            }
            rows.push(json!({"moe_over_s": {"threads": t, "step_ratio": time_ratio, "flop_ratio": flop_ratio}}));
        }
    }
    if json {
        outln!("{}", serde_json::Value::Array(rows));
    }
    Ok(())
}

/// A ~246M-parameter Llama: vocab 32000, d 1024, 14 layers, 16 heads, d_ff 2816, untied.
fn mix_bench_config() -> ModelConfig {
    ModelConfig::llama(32000, 1024, 2816, 14, 16, 16, 2048)
}

/// Writes a random model tensor by tensor (never the whole model in memory).
fn write_random_model(dir: &std::path::Path, seed: u64) -> Result<()> {
    let cfg = mix_bench_config();
    let specs: Vec<(String, Vec<usize>)> = btx_model::names::param_specs(&cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let mut rng = Rng::derive(seed, "bench-mix");
    btx_model::io::write_checkpoint(dir, &specs, usize::MAX, |i| {
        let n: usize = specs[i].1.iter().product();
        Ok((0..n)
            .map(|_| (rng.uniform() as f32 - 0.5) * 0.04)
            .collect())
    })?;
    cfg.save(&dir.join("config.json"))?;
    Ok(())
}

fn run_mix_bench(dir: &std::path::Path, experts: usize, json: bool) -> Result<()> {
    let cfg = mix_bench_config();
    let mut paths = vec![];
    for e in 0..experts {
        let p = dir.join(format!("model{e}"));
        if !p.join("config.json").exists() {
            errln!(
                "creating {} ({:.0}M params)",
                p.display(),
                cfg.total_params() as f64 / 1e6
            );
            write_random_model(&p, e as u64)?;
        }
        paths.push(p);
    }
    let out = dir.join("mixed");
    let _ = std::fs::remove_dir_all(&out);
    let exe = std::env::current_exe()?;
    let t0 = std::time::Instant::now();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mix").arg("--seed").arg(&paths[0]).arg("--experts");
    cmd.args(&paths).arg("--out").arg(&out);
    let status = cmd.stdout(std::process::Stdio::null()).status()?;
    let secs = t0.elapsed().as_secs_f64();
    if !status.success() {
        bail!("btx mix failed");
    }
    // SAFETY: getrusage only writes into the struct we pass.
    let maxrss_mb = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss as f64 / 1024.0
    };
    let in_gb = experts as f64 * cfg.total_params() as f64 * 4.0 / 1e9;
    let out_cfg = btx_model::ModelConfig::load(&out.join("config.json"))?;
    let out_gb = out_cfg.total_params() as f64 * 4.0 / 1e9;
    let r = json!({"experts": experts, "params_per_model": cfg.total_params(),
        "input_gb": in_gb, "output_gb": out_gb, "seconds": secs, "peak_rss_mb": maxrss_mb,
        "mergekit_reference": {"seconds": 13.0, "peak_rss_mb": 5600.0}});
    if json {
        outln!("{r}");
    } else {
        outln!(
            "mix {experts} x {:.0}M f32 models ({in_gb:.1} GB in, {out_gb:.1} GB out): {secs:.1}s, peak RSS {maxrss_mb:.0} MB (mergekit-moe: 13 s, 5600 MB)",
            cfg.total_params() as f64 / 1e6
        );
    }
    Ok(())
}

pub fn run(cmd: BenchCmd, dev: &Device, device: &str) -> Result<()> {
    let threads = rayon::current_num_threads();
    match cmd {
        BenchCmd::Mix { dir, experts, json } => run_mix_bench(&dir, experts, json)?,
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
        } => compare(
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
        )?,
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
                    btx_model::fused::peak::fma_gflops(0.25).unwrap_or(f64::NAN) * 1e9,
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
            let (model, name) = match &dir {
                Some(d) => (
                    Model::load(d, dev).with_context(|| format!("loading {}", d.display()))?,
                    d.display().to_string(),
                ),
                None => (Model::init(&preset(&name)?.0, 0, dev)?, name),
            };
            let cfg = model.cfg.clone();
            if tokens + 16 > cfg.max_position_embeddings {
                bail!(
                    "--tokens {tokens} after a 16-token prompt exceeds the model's {} positions\nhint: fewer --tokens",
                    cfg.max_position_embeddings
                );
            }
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
