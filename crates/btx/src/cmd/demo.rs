//! `btx demo [--out DIR] [--quick]`: the whole BTX experiment on the built-in domains with the
//! recipe embedded in the binary, ending with the results table and the verdict.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The default demo (examples/demo.toml; its measured time on 2 cores: docs/study.md).
pub const DEMO: &str = include_str!("../../../../examples/demo.toml");
/// `--quick` (examples/quick.toml): about a minute, one replica.
pub const QUICK: &str = include_str!("../../../../examples/quick.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Run directory (default runs/demo, or runs/demo-quick with --quick).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The small version: one replica, a smaller budget, about a minute.
    #[arg(long)]
    quick: bool,
    /// Stages at once (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Override a recipe value, e.g. --set experts.train.steps=200.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
}

/// The markdown of a report from its `## Results` heading up to the next section, the
/// diagnosis paragraph and the verdict section.
fn summary(report: &str) -> String {
    let section = |name: &str| -> String {
        let Some(start) = report.find(name) else {
            return String::new();
        };
        let rest = &report[start..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
        rest[..end].trim_end().to_string()
    };
    // The diagnosis' first paragraph (its tables stay in the report).
    let diagnosis = section("## Diagnosis")
        .split("\n\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n\n");
    format!(
        "{}\n\n{diagnosis}\n\n{}\n",
        section("## Results"),
        section("## Verdict")
    )
}

pub fn run(a: Args, device: &str) -> Result<()> {
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.quick {
            "runs/demo-quick"
        } else {
            "runs/demo"
        })
    });
    let text = if a.quick { QUICK } else { DEMO };
    if a.jobs == Some(0) {
        anyhow::bail!("--jobs 0 would run no stage\nhint: --jobs 1 or more (default: one per core, at most 4)");
    }
    // The recipe and its overrides are checked before anything is written.
    let (r, _): (btx_pipeline::recipe::Recipe, _) =
        btx_pipeline::recipe::overrides::load_str(text, "the demo recipe", &a.sets)?;
    r.validate(std::path::Path::new("."))?;
    // The run reads its recipe from the run directory: relative paths start there.
    let recipe = out.join("demo-recipe.toml");
    btx_pipeline::run::check_out(&out, &r, &out, &recipe)?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    btx_core::atomic::write_file(&recipe, text.as_bytes())?;
    let jobs = a
        .jobs
        .unwrap_or_else(|| rayon::current_num_threads().clamp(1, 4));
    errln!(
        "btx demo{}: seed pretraining, 3 domain experts + the seed as generalist, the MiX, BTX top-2 with load balancing and its controls, baselines at equal FLOPs, evaluation with 95% intervals, report -> {}",
        if a.quick { " --quick" } else { "" },
        out.display()
    );
    let t0 = std::time::Instant::now();
    btx_pipeline::run::run(
        btx_pipeline::run::RunOptions {
            recipe,
            out: out.clone(),
            jobs,
            sets: a.sets,
            dry_run: false,
            executor: btx_pipeline::run::ExecutorKind::Local,
            wait: false,
            gpus: None,
        },
        device,
    )?;
    let report = std::fs::read_to_string(out.join("report.md"))
        .with_context(|| format!("reading {}", out.join("report.md").display()))?;
    outln!("\n{}", summary(&report));
    outln!(
        "demo finished in {:.1} min; full report: {} (plots in {})",
        t0.elapsed().as_secs_f64() / 60.0,
        out.join("report.md").display(),
        out.join("plots").display()
    );
    Ok(())
}
