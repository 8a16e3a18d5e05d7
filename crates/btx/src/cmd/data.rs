//! `btx data prepare|info` and `btx tokenizer train`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use btx_core::outdir::Existing;
use btx_data::corpus::{read_docs, DocSplit, Format};
use btx_data::{DataDir, PrepareConfig, Tok};

use btx_pipeline::recipe::overrides;

#[derive(clap::Subcommand)]
pub enum DataCmd {
    /// Tokenize domains (built-in generators or corpora) into token shards + task sets.
    Prepare {
        /// Prepare config (TOML), see examples/data-builtin.toml (built-in domains) and
        /// examples/data-corpora.toml (files: text or JSONL).
        #[arg(long)]
        config: PathBuf,
        /// Override a config value, e.g. --set val_fraction=0.02 --set tokenizer.vocab_size=4096.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output data directory (written beside it and renamed into place when complete).
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing --out that holds other data (atomically).
        #[arg(long)]
        force: bool,
    },
    /// Print the token counts of a prepared data directory.
    Info { dir: PathBuf },
}

#[derive(clap::Subcommand)]
pub enum TokenizerCmd {
    /// Train a byte-level BPE on text files, directories, globs or JSONL.
    Train {
        /// Inputs (files, directories, globs).
        #[arg(required = true)]
        inputs: Vec<String>,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Merge only pairs seen at least this often (0 and 1 alike: any pair seen once).
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// `text` or `jsonl`.
        #[arg(long, default_value = "text")]
        format: String,
        /// JSONL field with the text.
        #[arg(long, default_value = "text")]
        field: String,
        /// Where to write tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_data(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Prepare {
            config,
            sets,
            out,
            force,
        } => {
            let (cfg, _): (PrepareConfig, _) = overrides::load(Some(&config), &sets)?;
            let base = config.parent().unwrap_or(Path::new(".")).to_path_buf();
            cfg.validate().context("data prepare")?;
            cfg.check_inputs(&base).context("data prepare")?;
            let m = btx_data::prepare_verified(&cfg, &base, &out, Existing::replace_if(force))
                .context("data prepare")?;
            print_info(&out, &m);
            Ok(())
        }
        DataCmd::Info { dir } => {
            let d = DataDir::open(&dir)?;
            // Counts are read from the shards, not the manifest: a corrupt dir is an error.
            d.verify()
                .with_context(|| format!("checking {}", dir.display()))?;
            print_info(&dir, &d.manifest);
            Ok(())
        }
    }
}

fn print_info(dir: &Path, m: &btx_data::DataManifest) {
    outln!(
        "{} (tokenizer {}…, {} tokens)",
        dir.display(),
        btx_data::short_hash(&m.tokenizer_hash),
        m.vocab_size
    );
    outln!(
        "{:<14} {:>12} {:>8} {:>12} {:>8} {:>7}",
        "domain",
        "train tok",
        "docs",
        "val tok",
        "docs",
        "tasks"
    );
    for (name, s) in &m.domains {
        outln!(
            "{:<14} {:>12} {:>8} {:>12} {:>8} {:>7}",
            name,
            s.train.tokens,
            s.train.docs,
            s.val.tokens,
            s.val.docs,
            s.tasks
        );
    }
}

pub fn run_tokenizer(cmd: TokenizerCmd) -> Result<()> {
    match cmd {
        TokenizerCmd::Train {
            inputs,
            vocab_size,
            min_frequency,
            format,
            field,
            out,
        } => {
            let format = match format.as_str() {
                "text" => Format::Text,
                "jsonl" => Format::Jsonl,
                f => anyhow::bail!("--format {f:?}: expected text or jsonl"),
            };
            let files = btx_data::corpus::expand_paths(&inputs, Path::new("."))?;
            let files: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
            btx_core::outdir::check_not_an_input(&out, &files)?;
            if out.is_dir() {
                anyhow::bail!(
                    "{} is a directory\nhint: --out names the tokenizer.json file to write",
                    out.display()
                );
            }
            let docs = read_docs(&inputs, Path::new("."), format, DocSplit::File, &field)?;
            anyhow::ensure!(!docs.is_empty(), "no text in {inputs:?}");
            let tok = Tok::train_bpe(
                docs.iter().map(|d| d.text.as_str()),
                vocab_size,
                min_frequency,
            )?;
            tok.save(&out)?;
            outln!(
                "trained a {}-token byte-level BPE on {} documents: {}",
                tok.vocab_size(),
                docs.len(),
                out.display()
            );
            Ok(())
        }
    }
}
