//! `btx bench mix`: the streaming MiX's time and memory on random models.

use anyhow::{bail, Result};
use btx_core::rng::Rng;
use btx_model::ModelConfig;
use serde_json::json;

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

pub(super) fn run_mix_bench(dir: &std::path::Path, experts: usize, json: bool) -> Result<()> {
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
