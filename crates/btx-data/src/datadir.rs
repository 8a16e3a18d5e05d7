//! Prepared data directories (`btx data prepare`'s output): opening one, its domains, shards,
//! tasks and tokenizer, and verifying them against its manifest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::builtin::Task;
use crate::error::{file_err, io_err, DataError, Result};
use crate::prepare::{DataManifest, MANIFEST};
use crate::shard::Shard;
use crate::tokenizer::Tok;

/// [`crate::prepare()`], believing an up-to-date `out` only once its shards, task files and
/// tokenizer are read back and match its manifest ([`DataDir::verify`]): damaged data is
/// prepared again (a data directory is derived entirely from its config, so replacing it loses
/// nothing).
pub fn prepare_verified(
    cfg: &crate::PrepareConfig,
    base: &Path,
    out: &Path,
    existing: btx_core::outdir::Existing,
) -> Result<DataManifest> {
    if let Ok(d) = DataDir::open(out) {
        if d.manifest.fingerprint == cfg.fingerprint() {
            match d.verify() {
                Ok(_) => return Ok(d.manifest),
                Err(e) => {
                    tracing::warn!(
                        "data in {} is damaged ({e}); preparing it again",
                        out.display()
                    );
                    return crate::prepare::prepare_fresh(
                        cfg,
                        base,
                        out,
                        btx_core::outdir::Existing::Replace,
                    );
                }
            }
        }
    }
    crate::prepare(cfg, base, out, existing)
}

/// A directory written by `btx data prepare`.
pub struct DataDir {
    pub root: PathBuf,
    pub manifest: DataManifest,
}

impl DataDir {
    /// Fails, naming the shard, when it holds a token id outside the model's vocabulary of
    /// `model_vocab` or this data's tokenizer (whichever is smaller).
    pub fn check_vocab(&self, shard: &crate::shard::Shard, model_vocab: usize) -> Result<()> {
        let data_vocab = self.manifest.vocab_size;
        if model_vocab <= data_vocab {
            shard.check_ids(model_vocab, "the model's vocabulary")
        } else {
            shard.check_ids(data_vocab, "the data's tokenizer vocabulary")
        }
    }

    pub fn open(root: &Path) -> Result<Self> {
        let mp = root.join(MANIFEST);
        let text = std::fs::read_to_string(&mp).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                file_err(&mp, "missing: not a prepared data directory, or the prepare did not finish\nhint: run `btx data prepare --config ... --out DIR`")
            } else {
                io_err(&mp, e)
            }
        })?;
        let manifest: DataManifest =
            serde_json::from_str(&text).map_err(|e| file_err(&mp, e.to_string()))?;
        Ok(Self {
            root: root.to_path_buf(),
            manifest,
        })
    }

    pub fn domains(&self) -> Vec<String> {
        self.manifest.domains.keys().cloned().collect()
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.root.join("tokenizer.json")
    }

    /// The data's tokenizer, checked against the one the shards were made with (a swapped
    /// `tokenizer.json` would otherwise train fine and ship a model with the wrong tokenizer).
    pub fn tokenizer(&self) -> Result<Tok> {
        let p = self.tokenizer_path();
        let tok = Tok::load(&p)?;
        if tok.hash() != self.manifest.tokenizer_hash {
            return Err(file_err(
                &p,
                format!(
                    "is not the tokenizer this data was prepared with (hash {} vs {} in manifest.json)\nhint: restore the original tokenizer.json, or prepare the data again with this one",
                    crate::short_hash(tok.hash()),
                    crate::short_hash(&self.manifest.tokenizer_hash)
                ),
            ));
        }
        Ok(tok)
    }

    /// Checks that a model can be trained or evaluated on this data: its vocabulary holds every
    /// token id, and the tokenizer beside it (if any) is the data's.
    pub fn check_model(&self, model_dir: &Path, vocab_size: usize) -> Result<()> {
        if vocab_size < self.manifest.vocab_size {
            return Err(file_err(
                model_dir,
                format!(
                    "the model's vocabulary ({vocab_size}) is smaller than the data's tokenizer ({} entries in {})\nhint: prepare the data with the model's tokenizer ([tokenizer] path = \"{}\")",
                    self.manifest.vocab_size,
                    self.root.display(),
                    model_dir.join("tokenizer.json").display()
                ),
            ));
        }
        let tp = model_dir.join("tokenizer.json");
        if tp.exists() {
            let mt = Tok::load(&tp)?;
            if mt.hash() != self.manifest.tokenizer_hash {
                return Err(file_err(
                    &tp,
                    format!(
                        "differs from the tokenizer the data in {} was prepared with\nhint: prepare the data with [tokenizer] path = \"{}\"",
                        self.root.display(),
                        tp.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_domain(&self, domain: &str) -> Result<()> {
        if !self.manifest.domains.contains_key(domain) {
            return Err(DataError::Invalid(format!(
                "domain {domain:?} is not in {} (it has {:?})",
                self.root.display(),
                self.domains()
            )));
        }
        Ok(())
    }

    /// The shard of a domain's `train` or `val` split, checked against the manifest's tokenizer.
    pub fn shard(&self, domain: &str, split: &str) -> Result<Shard> {
        self.check_domain(domain)?;
        let s = Shard::open(&self.root.join(domain).join(format!("{split}.tok")))?;
        s.check_tokenizer(&self.manifest.tokenizer_hash)?;
        Ok(s)
    }

    /// Reads every shard and task file and checks them against the manifest: token and document
    /// counts, tokenizer, token ids inside the vocabulary. Returns the counts found on disk.
    pub fn verify(&self) -> Result<BTreeMap<String, [(u64, u64); 2]>> {
        self.tokenizer()?;
        let mut found = BTreeMap::new();
        for (name, stats) in &self.manifest.domains {
            let mut counts = [(0, 0); 2];
            for (i, (split, want)) in [("train", &stats.train), ("val", &stats.val)]
                .into_iter()
                .enumerate()
            {
                let s = self.shard(name, split)?;
                if (s.len() as u64, s.docs()) != (want.tokens, want.docs) {
                    return Err(file_err(
                        &s.path,
                        format!(
                            "holds {} tokens / {} docs, manifest.json says {} / {}\nhint: the data dir was changed after `btx data prepare`; prepare it again",
                            s.len(),
                            s.docs(),
                            want.tokens,
                            want.docs
                        ),
                    ));
                }
                s.check_ids(self.manifest.vocab_size, "the tokenizer's vocabulary")?;
                counts[i] = (s.len() as u64, s.docs());
            }
            let tasks = self.tasks(name)?.len();
            if tasks != stats.tasks {
                return Err(file_err(
                    &self.root.join(name).join("tasks.jsonl"),
                    format!("holds {tasks} tasks, manifest.json says {}", stats.tasks),
                ));
            }
            found.insert(name.clone(), counts);
        }
        Ok(found)
    }

    pub fn tasks(&self, domain: &str) -> Result<Vec<Task>> {
        self.check_domain(domain)?;
        let p = self.root.join(domain).join("tasks.jsonl");
        let text = std::fs::read_to_string(&p).map_err(|e| io_err(&p, e))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| file_err(&p, e.to_string())))
            .collect()
    }
}
