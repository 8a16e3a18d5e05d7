//! `btx bench compare`: btx and PyTorch (eager, torch.compile) on the same presets, the same
//! machine and the same FLOPs formula, in alternating rounds.

use anyhow::{bail, Result};
use serde_json::json;

use super::products::median;

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
pub(super) struct Sweep {
    pub(super) steps: usize,
    pub(super) rounds: usize,
    /// `cpu` or `cuda`: both sides run there; on `cuda` PyTorch also runs `torch.compile`d.
    pub(super) device: String,
    pub(super) peak_tflops: Option<f64>,
    /// `f32` or `bf16`, on both sides.
    pub(super) precision: String,
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

pub(super) fn compare(
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
