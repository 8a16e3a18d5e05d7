//! `btx bench train`: the median time of a preset's train step, beside the matmul floor (the
//! step's products alone, hot and cold), the FMA peak and the step's own product time.

use anyhow::Result;
use btx_data::{BatchSource, FixedBatches};
use btx_kernels::instrument::gemm_clock;
use btx_model::burn::prelude::Device;
use btx_model::Model;
use btx_train::{Trainer, TrainerConfig};
use serde_json::json;

use super::products::{
    matmul_floor, median, print_products, step_gemms, Caches, HotFloor, FLOOR_ROUNDS,
};
use super::{at_least_one, check_peak, parse_precision, peak_rss_mb, preset, random_batches};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, default_value = "S")]
    pub preset: String,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Skip measuring the matmul floor.
    #[arg(long)]
    pub no_floor: bool,
    /// Also list the step's matrix products by shape and layout, each against the same
    /// call run alone on hot caches (where the step's gemm time goes).
    #[arg(long)]
    pub products: bool,
    /// The device's peak TFLOP/s in this precision, to print MFU (model FLOPs utilisation).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// The matmuls' precision: f32, or bf16 (mixed precision, `[train] precision`).
    #[arg(long, default_value = "f32")]
    pub precision: String,
}

pub fn run(a: TrainArgs, dev: &Device, device: &str) -> Result<()> {
    let threads = rayon::current_num_threads();
    let TrainArgs {
        preset: name,
        steps,
        warmup,
        json,
        no_floor,
        products,
        peak_tflops,
        precision,
    } = a;
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
    Ok(())
}
