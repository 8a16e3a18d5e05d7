//! `btx`: Branch-Train-MiX from the command line.

use btx::cmd;
use btx_core::errln;
use btx_pipeline::runtime;
use clap::{Parser, Subcommand};

// Training allocates and frees the same large activation buffers every step; glibc malloc hands
// them back to the kernel and page-faults them in again each time, mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "btx",
    version,
    about = "Branch-Train-MiX: mix domain-expert LLMs into one Mixtral MoE"
)]
struct Cli {
    /// Worker threads for tensor ops (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Compute device: cpu (burn flex) or cuda (a build from scripts/build-cuda.sh).
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One forward (and optionally backward) pass; writes logits, losses, router logits and
    /// gradients under the names of the Hugging Face reference fixtures.
    Forward(cmd::forward::Args),
    /// Train a model from a TOML config (pretraining, experts, finetuning all use this loop).
    Train(cmd::train::Args),
    /// Generate text from a model with a KV cache.
    Generate(cmd::generate::Args),
    /// Evaluate a model: held-out loss per domain.
    Eval(cmd::eval::Args),
    /// The whole BTX experiment on built-in data with an embedded recipe, ending with the report.
    Demo(cmd::demo::Args),
    /// Run a whole BTX experiment from a recipe (resumable; finished stages are skipped).
    Run(cmd::run::Args),
    /// Every stage of a run directory: state, Slurm job, elapsed time, progress, failures.
    Status(cmd::status::Args),
    /// Cancel what is still queued or running in a run directory.
    Cancel(cmd::status::CancelArgs),
    /// Run one stage of a run directory's plan (what `btx run` executes per stage).
    Stage(cmd::stage::Args),
    /// MiX: dense experts (+ the seed as generalist) → one Mixtral MoE checkpoint.
    Mix(cmd::mix::MixArgs),
    /// Sparse upcycling: N copies of the seed's FFN as experts, random router.
    Upcycle(cmd::mix::UpcycleArgs),
    /// Weight-average dense models ("model soup").
    Average(cmd::mix::AverageArgs),
    /// Remove experts (and their router rows) from a BTX model: FlexOlmo's opt-out.
    PruneExperts(cmd::experts::PruneArgs),
    /// Add a dense branch of the seed as one more expert of a BTX model (FlexOlmo / Nexus):
    /// every weight the model had unchanged, the new router rows fitted on the new domain.
    AddExpert(cmd::experts::AddArgs),
    /// Write a model in a given format: hf for transformers, gguf for llama.cpp, btx for its own layout.
    Export(cmd::export::ExportArgs),
    /// Import a llama.cpp GGUF file (Llama architecture) as a Hugging Face checkpoint.
    ImportGguf(cmd::import::Args),
    /// Check this build on this device against the transformers fixtures and the golden
    /// PyTorch training run, at the CPU tests' tolerances.
    Selftest(cmd::selftest::Args),
    /// Benchmarks: train-step and decoding speed of standard presets.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Prepare token shards from built-in domains or corpora.
    #[command(subcommand)]
    Data(cmd::data::DataCmd),
    /// Train tokenizers.
    #[command(subcommand)]
    Tokenizer(cmd::data::TokenizerCmd),
}

/// Keeps freed memory committed instead of returning it to the OS, so the next step's buffers
/// are not page-faulted in again (measured: 59k -> 0.8k page faults and -12% step time on the S
/// preset). `mi_option_purge_delay` is entry 15 of mimalloc's option enum (v2 and v3); the
/// versions are pinned in Cargo.toml and its known defaults (10 ms in v2, 1000 ms in v3) are
/// checked before anything is changed.
fn keep_freed_memory() {
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: plain getters/setters of mimalloc's global options.
    unsafe {
        if matches!(libmimalloc_sys::mi_option_get(PURGE_DELAY), 10 | 1000) {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

fn main() {
    keep_freed_memory();
    runtime::init_logging();
    let cli = Cli::parse();
    let result = runtime::init_threads(cli.threads).and_then(|_| runtime::on_pool(|| run(cli)));
    if let Err(e) = result {
        errln!("error: {e}");
        for cause in e.chain().skip(1) {
            errln!("  caused by: {cause}");
        }
        // Every error ends with what to do; the generic one only where nothing better was said.
        if !e.chain().any(|c| c.to_string().contains("hint:")) {
            errln!(
                "hint: `btx <command> --help` describes each option; the README and examples/*.toml each config key"
            );
        }
        // Every failure is exit code 1 (a usage error is clap's 2, a run stopped by a signal
        // with its checkpoint written exits EXIT_STOPPED where it stops).
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    {
        // Commands that only hand the device on check its name; the others open it.
        let hands_on = matches!(
            cli.cmd,
            Command::Run(_) | Command::Demo(_) | Command::Status(_) | Command::Cancel(_)
        );
        let dev = if hands_on {
            runtime::check_device_name(&cli.device)?;
            btx_model::burn::prelude::Device::flex()
        } else {
            runtime::device(&cli.device)?
        };
        match cli.cmd {
            Command::Forward(a) => cmd::forward::run(a, &dev),
            Command::Train(a) => cmd::train::run(a, &dev),
            Command::Generate(a) => cmd::generate::run(a, &dev),
            Command::Eval(a) => cmd::eval::run(a, &dev),
            Command::Demo(a) => cmd::demo::run(a, &cli.device),
            Command::Run(a) => cmd::run::run(a, &cli.device),
            Command::Status(a) => cmd::status::status(a),
            Command::Cancel(a) => cmd::status::cancel(a),
            Command::Stage(a) => cmd::stage::run(a, &dev, &cli.device),
            Command::Mix(a) => cmd::mix::run_mix(a),
            Command::Upcycle(a) => cmd::mix::run_upcycle(a),
            Command::Average(a) => cmd::mix::run_average(a),
            Command::PruneExperts(a) => cmd::experts::run_prune(a),
            Command::AddExpert(a) => cmd::experts::run_add(a),
            Command::Export(a) => cmd::export::run_export(a),
            Command::ImportGguf(a) => cmd::import::run(a),
            Command::Bench(c) => cmd::bench::run(c, &dev, &cli.device),
            Command::Selftest(a) => cmd::selftest::run(a, &dev, &cli.device),
            Command::Data(c) => cmd::data::run_data(c),
            Command::Tokenizer(c) => cmd::data::run_tokenizer(c),
        }
    }
}
