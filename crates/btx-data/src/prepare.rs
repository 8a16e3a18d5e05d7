//! `btx data prepare`: domains (built-in generators or corpora on disk) → a tokenizer and one
//! token shard per domain and split, plus each domain's held-out task set.
//!
//! Output directory:
//! ```text
//! DATA/tokenizer.json
//! DATA/manifest.json            # config, tokenizer hash, counts; written last
//! DATA/<domain>/train.tok       # shard (see shard.rs)
//! DATA/<domain>/val.tok
//! DATA/<domain>/tasks.jsonl     # {"prompt", "answer", "scorer"} per line (may be empty)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use btx_core::outdir::{Existing, OutDir};
use btx_core::rng::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::builtin::{self, Task};
use crate::corpus::{read_docs, Doc, DocSplit, Format};
use crate::error::{io_err, DataError, Result};
use crate::shard::ShardWriter;
use crate::tokenizer::Tok;

fn default_val_fraction() -> f64 {
    0.05
}
fn default_vocab() -> usize {
    4096
}
fn default_min_freq() -> u64 {
    2
}
fn default_tok_docs() -> usize {
    3000
}
fn default_field() -> String {
    "text".into()
}
fn default_docs() -> usize {
    2000
}
fn default_tasks() -> usize {
    200
}

/// `[tokenizer]`: use an existing `tokenizer.json`, or train a byte-level BPE.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// An existing tokenizer.json (e.g. the seed model's). When set, nothing is trained.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Vocabulary size of a trained BPE (incl. 256 bytes and EOS). Default 4096.
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge. Default 2.
    #[serde(default = "default_min_freq")]
    pub min_frequency: u64,
    /// Training documents per domain the BPE is trained on (balanced across domains).
    /// Default 3000.
    #[serde(default = "default_tok_docs")]
    pub docs_per_domain: usize,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        Self {
            path: None,
            vocab_size: default_vocab(),
            min_frequency: default_min_freq(),
            docs_per_domain: default_tok_docs(),
        }
    }
}

/// `[[domains]]`: one domain, from a built-in generator or from files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// A built-in generator: math, code, knowledge or general.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Built-in: documents to generate (default 2000). Files: keep at most this many (0 = all).
    #[serde(default = "default_docs")]
    pub docs: usize,
    /// Built-in: held-out tasks to generate (default 200).
    #[serde(default = "default_tasks")]
    pub tasks: usize,
    /// Files, directories or globs (relative to the config file).
    #[serde(default)]
    pub paths: Vec<String>,
    /// `text` (default) or `jsonl`.
    #[serde(default)]
    pub format: Format,
    /// JSONL field with the text (default "text").
    #[serde(default = "default_field")]
    pub field: String,
    /// Text files: `file` (default), `blank-line` or `line`.
    #[serde(default)]
    pub split: DocSplit,
    /// A JSONL task set for this domain ({"prompt", "answer", "scorer"} per line).
    #[serde(default)]
    pub tasks_file: Option<PathBuf>,
    /// Files without a task set: make this many cloze tasks from the domain's validation
    /// documents (the word that ends a sentence or line, given up to 300 characters before
    /// it; see `cloze`). Default 0 (none). ~1,200 measure an accuracy to about ±3 points.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cloze: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The whole `btx data prepare` config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareConfig {
    /// Seed of the generators and the train/validation split. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Fraction of documents held out for validation (chosen per document). Default 0.05.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub tokenizer: TokenizerConfig,
    pub domains: Vec<DomainConfig>,
}

/// Why `name` cannot name a domain (with a hint), if it cannot. A domain's name is a
/// directory, part of stage names (where `#` and `@` mark tags) and an expert's name (where a
/// number would read as a position).
pub fn domain_name_problem(name: &str) -> Option<String> {
    if name.is_empty()
        || name.contains(['/', '\\', ':', '#', '@'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Some(format!(
            "domain name {name:?} must be non-empty, without spaces, slashes, colons, '#' or '@'\nhint: e.g. name = \"math\""
        ));
    }
    if name.parse::<i128>().is_ok() {
        return Some(format!(
            "domain name {name:?} is a number; domains name experts, and expert numbers are positions\nhint: give it a word, e.g. \"domain-{name}\""
        ));
    }
    None
}

impl PrepareConfig {
    /// The four built-in domains with `docs` documents each and a `vocab`-sized BPE.
    pub fn builtin(docs: usize, tasks: usize, vocab: usize, seed: u64) -> Self {
        Self {
            seed,
            val_fraction: default_val_fraction(),
            tokenizer: TokenizerConfig {
                vocab_size: vocab,
                ..Default::default()
            },
            domains: builtin::DOMAINS
                .iter()
                .map(|d| DomainConfig {
                    name: d.to_string(),
                    builtin: Some(d.to_string()),
                    docs,
                    tasks,
                    paths: vec![],
                    format: Format::Text,
                    field: default_field(),
                    split: DocSplit::File,
                    tasks_file: None,
                    cloze: 0,
                })
                .collect(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.domains.is_empty() {
            return Err(DataError::Invalid("no [[domains]] given".into()));
        }
        let mut names = std::collections::HashSet::new();
        for d in &self.domains {
            if let Some(problem) = domain_name_problem(&d.name) {
                return Err(DataError::Invalid(problem));
            }
            if !names.insert(&d.name) {
                return Err(DataError::Invalid(format!(
                    "domain {:?} is listed twice\nhint: each [[domains]] needs its own name",
                    d.name
                )));
            }
            match (&d.builtin, d.paths.is_empty()) {
                (Some(b), true) if builtin::DOMAINS.contains(&b.as_str()) => {}
                (Some(b), true) => {
                    return Err(DataError::Invalid(format!(
                        "domain {:?}: unknown builtin {b:?} (one of {:?})",
                        d.name,
                        builtin::DOMAINS
                    )))
                }
                (Some(_), false) => {
                    return Err(DataError::Invalid(format!(
                        "domain {:?}: give either builtin or paths, not both",
                        d.name
                    )))
                }
                (None, true) => {
                    return Err(DataError::Invalid(format!(
                        "domain {:?}: needs builtin = \"...\" or paths = [...]",
                        d.name
                    )))
                }
                (None, false) => {}
            }
            if d.cloze > 0 && (d.builtin.is_some() || d.tasks_file.is_some()) {
                return Err(DataError::Invalid(format!(
                    "domain {:?}: cloze makes a task set for files without one; it has {}\nhint: drop cloze, or the tasks_file",
                    d.name,
                    if d.builtin.is_some() { "the built-in domain's tasks" } else { "a tasks_file" }
                )));
            }
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(DataError::Invalid("val_fraction must be in [0, 1)".into()));
        }
        self.check_memory()
    }

    /// Built-in domains are generated whole in memory: refuses counts of documents and tasks
    /// that cannot fit in this machine, with the estimate, before generating any.
    fn check_memory(&self) -> Result<()> {
        let Some(total) = btx_core::memory::machine_memory() else {
            return Ok(());
        };
        let mut need = 0.0;
        for d in &self.domains {
            let Some(b) = &d.builtin else { continue };
            need += builtin::memory_estimate(b, self.seed, d.docs, d.tasks).unwrap_or(0.0);
            if need > total as f64 {
                return Err(DataError::Invalid(format!(
                    "domain {:?} (docs = {}, tasks = {}): the built-in domains' documents and tasks need at least {} of memory to prepare, but this machine has {}\nhint: fewer docs (or tasks) per domain; the default is {} docs and {} tasks",
                    d.name,
                    d.docs,
                    d.tasks,
                    btx_core::memory::gib(need),
                    btx_core::memory::gib(total as f64),
                    default_docs(),
                    default_tasks()
                )));
            }
        }
        Ok(())
    }

    /// Hash of the config as it affects the output (used to skip a finished prepare).
    pub fn fingerprint(&self) -> String {
        let j = serde_json::to_string(self).expect("json");
        format!("{:x}", Sha256::digest(j.as_bytes()))
    }
}

/// Counts of one split of one domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitStats {
    pub docs: u64,
    pub tokens: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainStats {
    pub train: SplitStats,
    pub val: SplitStats,
    pub tasks: usize,
    /// Where the documents came from (files, or `builtin:<name>`).
    pub sources: Vec<String>,
}

/// `DATA/manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataManifest {
    pub version: u32,
    pub fingerprint: String,
    pub tokenizer_hash: String,
    pub vocab_size: usize,
    pub eos_id: u32,
    pub domains: BTreeMap<String, DomainStats>,
    pub config: PrepareConfig,
}

pub const MANIFEST: &str = "manifest.json";

fn load_domain_docs(d: &DomainConfig, seed: u64, base: &Path) -> Result<(Vec<Doc>, Vec<String>)> {
    if let Some(b) = &d.builtin {
        let docs = builtin::docs(b, seed, d.docs).expect("validated builtin");
        let docs = docs
            .into_iter()
            .enumerate()
            .map(|(i, text)| Doc {
                text,
                origin: format!("builtin:{b}#{i}"),
            })
            .collect();
        return Ok((docs, vec![format!("builtin:{b}")]));
    }
    let mut docs = read_docs(&d.paths, base, d.format, d.split, &d.field)?;
    if d.docs > 0 && docs.len() > d.docs {
        docs.truncate(d.docs);
    }
    if docs.is_empty() {
        return Err(DataError::Invalid(format!(
            "domain {:?}: no documents in {:?} (all files empty?)",
            d.name, d.paths
        )));
    }
    let mut srcs: Vec<String> = docs
        .iter()
        .map(|x| x.origin.split(':').next().unwrap_or("").to_string())
        .collect();
    srcs.dedup();
    Ok((docs, srcs))
}

/// Splits documents deterministically: each document goes to validation with probability
/// `frac`, decided by its index and the seed alone (so adding documents at the end never moves
/// earlier ones). At least one document lands on each side.
pub fn split_docs(n: usize, frac: f64, seed: u64, domain: &str) -> Result<Vec<bool>> {
    if n < 2 {
        return Err(DataError::Invalid(format!(
            "domain {domain:?} has {n} document(s); need at least 2 to hold one out"
        )));
    }
    let mut rng = Rng::derive(seed, &format!("split-{domain}"));
    let mut is_val: Vec<bool> = (0..n).map(|_| rng.uniform() < frac).collect();
    if !is_val.iter().any(|&v| v) {
        is_val[n - 1] = true;
    }
    if is_val.iter().all(|&v| v) {
        is_val[0] = false;
    }
    Ok(is_val)
}

fn read_tasks_file(path: &Path) -> Result<Vec<Task>> {
    let text = crate::corpus::read_utf8(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Task>(l).map_err(|e| DataError::At {
                path: path.to_path_buf(),
                line: i + 1,
                msg: format!("not a task ({{\"prompt\", \"answer\", \"scorer\"}}): {e}"),
            })
        })
        .collect()
}

pub fn write_tasks(path: &Path, tasks: &[Task]) -> Result<()> {
    let mut s = String::new();
    for t in tasks {
        s.push_str(&serde_json::to_string(t).expect("json"));
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| io_err(path, e))
}

/// Runs a prepare into `out`. `base` resolves relative paths (the config file's directory).
/// Skips all work when `out/manifest.json` exists with the same fingerprint; otherwise the data
/// dir is built beside `out` and renamed into place whole (see [`OutDir`]), so an interrupted or
/// failed prepare leaves `out` as it was; an existing `out` is replaced only with
/// [`Existing::Replace`].
pub fn prepare(
    cfg: &PrepareConfig,
    base: &Path,
    out: &Path,
    existing: Existing,
) -> Result<DataManifest> {
    cfg.validate()?;
    let fp = cfg.fingerprint();
    if let Ok(text) = std::fs::read_to_string(out.join(MANIFEST)) {
        if let Ok(m) = serde_json::from_str::<DataManifest>(&text) {
            if m.fingerprint == fp {
                // (Believed by its manifest: `datadir::prepare_verified` reads it back first.)
                tracing::info!("data in {} is up to date", out.display());
                return Ok(m);
            }
        }
    }
    prepare_fresh(cfg, base, out, existing)
}

/// [`prepare`] without its shortcut: prepares even when `out`'s manifest says it is up to date.
pub fn prepare_fresh(
    cfg: &PrepareConfig,
    base: &Path,
    out: &Path,
    existing: Existing,
) -> Result<DataManifest> {
    cfg.validate()?;
    let fp = cfg.fingerprint();
    let mut inputs: Vec<PathBuf> = cfg.tokenizer.path.iter().map(|p| base.join(p)).collect();
    for d in &cfg.domains {
        inputs.extend(d.paths.iter().map(|p| base.join(p)));
        inputs.extend(d.tasks_file.iter().map(|p| base.join(p)));
    }
    let inputs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    let staged = OutDir::create(out, &inputs, existing)?;
    let (out, final_out) = (staged.path(), out);
    let mpath = out.join(MANIFEST);
    let mut per_domain = vec![];
    for d in &cfg.domains {
        let (docs, sources) = load_domain_docs(d, cfg.seed, base)?;
        let is_val = split_docs(docs.len(), cfg.val_fraction, cfg.seed, &d.name)?;
        tracing::info!("domain {}: {} documents", d.name, docs.len());
        per_domain.push(DomainDocs {
            d,
            docs,
            is_val,
            sources,
        });
    }
    let tok = data_tokenizer(cfg, base, &per_domain)?;
    tok.save(&out.join("tokenizer.json"))?;
    // The given tokenizer's chat template and settings go with it (to the models trained here).
    if let Some(dir) = cfg.tokenizer.path.as_ref().map(|p| base.join(p)) {
        if let Some(parent) = dir.parent() {
            crate::tokenizer::copy_tokenizer_config(parent, out)?;
        }
    }
    let mut domains = BTreeMap::new();
    for dd in per_domain {
        let name = dd.d.name.clone();
        domains.insert(name, write_domain(cfg, base, &tok, out, dd)?);
    }
    let m = DataManifest {
        version: 1,
        fingerprint: fp,
        tokenizer_hash: tok.hash().to_string(),
        vocab_size: tok.vocab_size(),
        eos_id: tok.eos_id(),
        domains,
        config: cfg.clone(),
    };
    std::fs::write(&mpath, serde_json::to_string_pretty(&m).expect("json"))
        .map_err(|e| io_err(&mpath, e))?;
    staged.commit()?;
    tracing::info!("data written to {}", final_out.display());
    Ok(m)
}

/// One domain's documents, which of them are held out, and where they came from.
struct DomainDocs<'a> {
    d: &'a DomainConfig,
    docs: Vec<Doc>,
    is_val: Vec<bool>,
    sources: Vec<String>,
}

impl DomainDocs<'_> {
    /// The texts of the training (`val` false) or validation (`val` true) documents.
    fn texts(&self, val: bool) -> impl Iterator<Item = &str> {
        self.docs
            .iter()
            .zip(&self.is_val)
            .filter(move |(_, v)| **v == val)
            .map(|(d, _)| d.text.as_str())
    }
}

/// The tokenizer `[tokenizer] path` names, or else a byte-level BPE trained on the first
/// `docs_per_domain` training documents of each domain.
fn data_tokenizer(cfg: &PrepareConfig, base: &Path, per_domain: &[DomainDocs]) -> Result<Tok> {
    if let Some(p) = &cfg.tokenizer.path {
        let p = if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        };
        return Tok::load(&p);
    }
    let n = cfg.tokenizer.docs_per_domain;
    let sample: Vec<&str> = per_domain
        .iter()
        .flat_map(|dd| dd.texts(false).take(n))
        .collect();
    tracing::info!(
        "training a byte-level BPE ({} entries) on {} documents",
        cfg.tokenizer.vocab_size,
        sample.len()
    );
    Tok::train_bpe(
        sample.into_iter(),
        cfg.tokenizer.vocab_size,
        cfg.tokenizer.min_frequency,
    )
}

/// Writes a domain's `train.tok`, `val.tok` and `tasks.jsonl` under `out/<domain>`, and
/// returns its counts.
fn write_domain(
    cfg: &PrepareConfig,
    base: &Path,
    tok: &Tok,
    out: &Path,
    dd: DomainDocs,
) -> Result<DomainStats> {
    let d = dd.d;
    let dir = out.join(&d.name);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut w = [
        ShardWriter::create(
            &dir.join("train.tok"),
            tok.vocab_size(),
            tok.hash(),
            tok.eos_id(),
        )?,
        ShardWriter::create(
            &dir.join("val.tok"),
            tok.vocab_size(),
            tok.hash(),
            tok.eos_id(),
        )?,
    ];
    for (doc, v) in dd.docs.iter().zip(&dd.is_val) {
        let ids = tok
            .encode(&doc.text)
            .map_err(|e| DataError::Invalid(format!("{}: {e}", doc.origin)))?;
        w[*v as usize].push_doc(&ids)?;
    }
    let [wt, wv] = w;
    let (tt, td) = wt.finish()?;
    let (vt, vd) = wv.finish()?;
    let tasks = domain_tasks(cfg, base, &dd)?;
    write_tasks(&dir.join("tasks.jsonl"), &tasks)?;
    tracing::info!(
        "domain {}: train {tt} tokens / {td} docs, val {vt} tokens / {vd} docs, {} tasks",
        d.name,
        tasks.len()
    );
    Ok(DomainStats {
        train: SplitStats {
            docs: td,
            tokens: tt,
        },
        val: SplitStats {
            docs: vd,
            tokens: vt,
        },
        tasks: tasks.len(),
        sources: dd.sources,
    })
}

/// A domain's tasks: from its tasks file, else its builtin's (made from its training text),
/// else cloze tasks from its validation documents when asked for.
fn domain_tasks(cfg: &PrepareConfig, base: &Path, dd: &DomainDocs) -> Result<Vec<Task>> {
    let d = dd.d;
    Ok(match (&d.builtin, &d.tasks_file) {
        (_, Some(f)) => {
            let f = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            read_tasks_file(&f)?
        }
        (Some(b), None) => {
            let train_text: String = dd.texts(false).collect::<Vec<_>>().join("\n");
            builtin::tasks(b, cfg.seed, d.tasks, &train_text).expect("validated builtin")
        }
        (None, None) if d.cloze > 0 => {
            let val: Vec<&str> = dd.texts(true).collect();
            let tasks = crate::cloze::cloze_tasks(&val, d.cloze, cfg.seed, &d.name);
            if tasks.len() < d.cloze {
                tracing::warn!(
                    "domain {}: {} cloze tasks asked, its {} validation documents hold {}",
                    d.name,
                    d.cloze,
                    val.len(),
                    tasks.len()
                );
            }
            tasks
        }
        (None, None) => vec![],
    })
}

#[cfg(test)]
mod trust_tests {
    use super::*;

    /// Issue 28: a domain named "1" became an expert that `--drop 1` confused with position 1;
    /// `#` and `@` in a name collide with the tags of stage names. Refused by name.
    #[test]
    fn domain_names_are_words_without_tag_characters() {
        for bad in ["1", "-3", "0", "ma#th", "co@de", "tab\tbed", "line\nbreak"] {
            let mut c = PrepareConfig::builtin(10, 1, 300, 0);
            c.domains[0].name = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("\nhint: "),
                "{bad:?}: {e}"
            );
        }
        let mut c = PrepareConfig::builtin(10, 1, 300, 0);
        c.domains[0].name = "math-2".into();
        c.validate().unwrap();
    }
}
