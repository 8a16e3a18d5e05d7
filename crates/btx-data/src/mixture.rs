//! Prepared data directories and weighted domain mixtures: fixed-length windows sampled from
//! one or several domains, deterministic in a seed, with a cursor for exact resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use btx_core::rng::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::builtin::Task;
use crate::error::{file_err, io_err, DataError, Result};
use crate::prepare::{DataManifest, MANIFEST};
use crate::shard::Shard;
use crate::source::{Batch, BatchSource};
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

/// `[data]` of a training config: where the tokens come from and in what proportions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// Sampling weight per domain (normalised). Empty = every domain equally.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// `train` (default) or `val`.
    #[serde(default)]
    pub split: Option<String>,
}

/// Samples `[B, T]` windows: each row picks a domain by weight, then a uniformly random start.
pub struct Mixture {
    names: Vec<String>,
    shards: Vec<Shard>,
    cum: Vec<f64>,
    batch: usize,
    seq: usize,
    rng: Rng,
    served: u64,
}

impl Mixture {
    pub fn new(
        data: &DataDir,
        mix: &MixConfig,
        batch: usize,
        seq: usize,
        seed: u64,
    ) -> Result<Self> {
        let split = mix.split.clone().unwrap_or_else(|| "train".into());
        let weights: Vec<(String, f64)> = if mix.weights.is_empty() {
            data.domains().into_iter().map(|d| (d, 1.0)).collect()
        } else {
            mix.weights.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let total: f64 = weights.iter().map(|(_, w)| w).sum();
        if weights.iter().any(|(_, w)| *w < 0.0 || !w.is_finite()) || total <= 0.0 {
            return Err(DataError::Invalid(format!(
                "mixture weights must be >= 0 with a positive sum, got {weights:?}"
            )));
        }
        let mut names = vec![];
        let mut shards = vec![];
        let mut cum = vec![];
        let mut acc = 0.0;
        for (name, w) in weights {
            if w == 0.0 {
                continue;
            }
            let s = data.shard(&name, &split)?;
            if s.len() < seq + 1 {
                return Err(file_err(
                    &s.path,
                    format!(
                        "{} tokens, fewer than seq_len + 1 = {}\nhint: generate more documents or lower train.seq_len",
                        s.len(),
                        seq + 1
                    ),
                ));
            }
            acc += w / total;
            names.push(name);
            shards.push(s);
            cum.push(acc);
        }
        Ok(Self {
            names,
            shards,
            cum,
            batch,
            seq,
            rng: Rng::derive(seed, "mixture"),
            served: 0,
        })
    }

    pub fn domain_names(&self) -> &[String] {
        &self.names
    }

    fn pick_domain(&mut self) -> usize {
        let u = self.rng.uniform();
        self.cum
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.cum.len() - 1)
    }
}

impl BatchSource for Mixture {
    fn next_batch(&mut self) -> Batch {
        let mut ids = Vec::with_capacity(self.batch * self.seq);
        let mut domains = Vec::with_capacity(self.batch);
        for _ in 0..self.batch {
            let d = self.pick_domain();
            let s = &self.shards[d];
            let start = self.rng.below(s.len() - self.seq + 1);
            ids.extend(s.window(start, self.seq));
            domains.push(d);
        }
        self.served += 1;
        Batch {
            ids,
            batch: self.batch,
            seq: self.seq,
            domains,
        }
    }

    fn cursor(&self) -> Value {
        json!({"rng": self.rng.state, "served": self.served, "domains": self.names})
    }

    fn restore(&mut self, c: &Value) -> std::result::Result<(), String> {
        let names: Vec<String> = c
            .get("domains")
            .and_then(|d| serde_json::from_value(d.clone()).ok())
            .ok_or("cursor has no domain list")?;
        if names != self.names {
            return Err(format!(
                "cursor is for domains {names:?}, the mixture has {:?}",
                self.names
            ));
        }
        self.rng.state = c
            .get("rng")
            .and_then(|v| v.as_u64())
            .ok_or("cursor has no rng")?;
        self.served = c
            .get("served")
            .and_then(|v| v.as_u64())
            .ok_or("cursor has no count")?;
        Ok(())
    }
}

/// Non-overlapping windows of `seq` tokens over a shard, at most `max` of them, spread evenly
/// over the shard (for held-out loss).
pub fn eval_windows(s: &Shard, seq: usize, max: usize) -> Vec<Vec<i64>> {
    let n = s.len() / seq;
    let take = n.min(max);
    if take == 0 {
        return vec![];
    }
    (0..take)
        .map(|i| {
            let w = i * n / take;
            s.window(w * seq, seq)
        })
        .collect()
}
