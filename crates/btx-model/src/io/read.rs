//! Reading safetensors: one file or shards listed in `model.safetensors.index.json`,
//! memory-mapped, any float dtype decoded to f32 on request.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::tensor::{HostTensor, INDEX_FILE, SINGLE_FILE};
use crate::error::{ModelError, Result};

/// Safetensors file(s) opened read-only and memory-mapped.
pub struct TensorReader {
    files: Vec<(PathBuf, Mmap)>,
    /// name -> (file index, dtype, shape, byte range within the file)
    index: BTreeMap<String, (usize, Dtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl TensorReader {
    /// Opens a model directory (sharded or not) or a single `.safetensors` file.
    ///
    /// In a directory, `model.safetensors` is read when it is there, and the index only
    /// otherwise: transformers' `from_pretrained` looks for the single file first (assumed from
    /// its `_get_resolved_checkpoint_files`), so with both present it loads the single file and
    /// btx must read the same weights. The index it then ignores is reported on stderr.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::open_files(&[path.to_path_buf()]);
        }
        let single = path.join(SINGLE_FILE);
        let index_path = path.join(INDEX_FILE);
        if single.is_file() {
            if index_path.is_file() {
                tracing::warn!(
                    "{} holds both {SINGLE_FILE} and {INDEX_FILE}; reading {SINGLE_FILE} and ignoring the index and its shards, as transformers does",
                    path.display()
                );
            }
            return Self::open_files(&[single]);
        }
        if index_path.is_file() {
            return Self::open_index(path, &index_path);
        }
        Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {SINGLE_FILE} nor {INDEX_FILE} found"),
            ),
        ))
    }

    /// The shards `index_path` lists in `dir`, each checked to be there, then opened.
    fn open_index(dir: &Path, index_path: &Path) -> Result<Self> {
        let bad = |msg: String, hint: &str| ModelError::Index {
            path: index_path.to_path_buf(),
            msg,
            hint: hint.into(),
        };
        let damaged = "the index is damaged or cut short (an interrupted download or copy?); fetch it again with the shards it belongs to";
        let text =
            std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a valid shard index: {e}"), damaged))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no \"weight_map\" object".into(), damaged))?;
        // An empty map would open no file at all, and every tensor would then be reported
        // missing from a file with an empty name.
        if map.is_empty() {
            return Err(bad(
                "\"weight_map\" is empty: the index names no tensor and no shard".into(),
                damaged,
            ));
        }
        let mut shards = Vec::with_capacity(map.len());
        for (name, f) in map {
            match f.as_str() {
                Some(f) if !f.is_empty() => shards.push(f),
                _ => {
                    return Err(bad(
                        format!("weight_map[{name:?}] must name a shard file, found {f}"),
                        damaged,
                    ))
                }
            }
        }
        shards.sort_unstable();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        if let Some((s, _)) = shards.iter().zip(&files).find(|(_, p)| !p.is_file()) {
            return Err(bad(
                format!("names the shard {s:?}, which is not in {}", dir.display()),
                "the index names a file that is not there (an incomplete download or copy?); fetch the missing shards again",
            ));
        }
        Self::open_files(&files)
    }

    fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for (fi, p) in paths.iter().enumerate() {
            let f = File::open(p).map_err(|e| ModelError::io(p, e))?;
            // SAFETY: the file is opened read-only; btx never writes a checkpoint in place (it
            // writes to a temporary directory and renames), so the mapping is not mutated under us.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| ModelError::io(p, e))?;
            let (n, meta) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let (a, b) = info.data_offsets;
                let prev = index.insert(
                    name.clone(),
                    (fi, info.dtype, info.shape.clone(), base + a..base + b),
                );
                // Two shards holding one name: which one a reader takes is arbitrary.
                if let Some((other, ..)) = prev {
                    return Err(ModelError::DuplicateTensor {
                        path: p.clone(),
                        other: paths[other].clone(),
                        name: name.clone(),
                    });
                }
            }
            files.push((p.clone(), mmap));
        }
        Ok(Self { files, index })
    }

    /// Opens `path` like [`TensorReader::open`] and reads its tensor names as btx names them
    /// for a model with `cfg` ([`crate::names::from_disk`]: Qwen-MoE experts renamed, their
    /// size-0 shared expert left out). Every reader of a model's weights opens it this way.
    pub fn open_for(path: &Path, cfg: &crate::config::ModelConfig) -> Result<Self> {
        let mut r = Self::open(path)?;
        let index = std::mem::take(&mut r.index);
        for (name, entry) in index {
            match crate::names::from_disk(cfg, &name, &entry.2) {
                crate::names::OnDisk::Inert => {}
                crate::names::OnDisk::Param(ours) => {
                    if let Some((other, ..)) = r.index.insert(ours.clone(), entry) {
                        return Err(ModelError::DuplicateTensor {
                            path: r.files[other].0.clone(),
                            other: r.files[other].0.clone(),
                            name: ours,
                        });
                    }
                }
            }
        }
        Ok(r)
    }

    /// The float dtype btx writes this checkpoint's weights in by default: the embeddings'
    /// stored dtype (bf16, f16, else f32).
    pub fn weights_dtype(&self) -> super::write::OutDtype {
        self.index
            .get("model.embed_tokens.weight")
            .map_or(super::write::OutDtype::F32, |e| {
                super::write::OutDtype::of_stored(e.1)
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|(_, _, s, _)| s.as_slice())
    }

    /// The file a tensor lives in (for error messages).
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.index
            .get(name)
            .map(|(fi, ..)| self.files[*fi].0.clone())
            .unwrap_or_else(|| self.files.first().map(|f| f.0.clone()).unwrap_or_default())
    }

    /// The index entry of a tensor, or an error naming the file and the tensor.
    #[allow(clippy::type_complexity)]
    fn entry(
        &self,
        name: &str,
        hint: &str,
    ) -> Result<&(usize, Dtype, Vec<usize>, std::ops::Range<usize>)> {
        self.index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.file_of(name),
                name: name.into(),
                hint: hint.into(),
            })
    }

    /// Reads one tensor as f32 (F16/BF16/F64 are converted).
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let (fi, dtype, shape, range) =
            self.entry(name, "the checkpoint does not hold this tensor")?;
        let bytes = &self.files[*fi].1[range.clone()];
        let data = decode_f32(bytes, *dtype)
            .ok_or_else(|| float_dtype_error(&self.files[*fi].0, name, *dtype))?;
        Ok(HostTensor::new(shape.clone(), data))
    }

    /// Elements `from..to` of a tensor as f32 (decoded like [`TensorReader::read`]), so that a
    /// large tensor can be streamed in pieces with bounded memory.
    pub fn read_f32_range(&self, name: &str, from: usize, to: usize) -> Result<Vec<f32>> {
        let (fi, dtype, _, range) = self.entry(name, "the checkpoint does not hold this tensor")?;
        let size = (dtype.bitsize() / 8).max(1);
        let bytes = &self.files[*fi].1[range.clone()];
        let n = bytes.len() / size;
        let (from, to) = (from.min(n), to.min(n).max(from.min(n)));
        decode_f32(&bytes[from * size..to * size], *dtype)
            .ok_or_else(|| float_dtype_error(&self.files[*fi].0, name, *dtype))
    }

    /// Like [`TensorReader::release_part`] for elements `from..to` (in the tensor's own dtype).
    pub fn release_elems(&self, name: &str, from: usize, to: usize) {
        if let Some((_, dtype, _, _)) = self.index.get(name) {
            let size = (dtype.bitsize() / 8).max(1);
            self.release_part(name, from * size, to * size);
        }
    }

    /// Drops a tensor's pages from this process's resident memory (they stay in the page cache),
    /// so streaming over many large files keeps the footprint to the tensors in flight.
    pub fn release(&self, name: &str) {
        self.release_part(name, 0, usize::MAX);
    }

    /// Like [`TensorReader::release`] for bytes `from..to` of the tensor (whole pages inside).
    pub fn release_part(&self, name: &str, from: usize, to: usize) {
        if let Some((fi, _, _, range)) = self.index.get(name) {
            let page = 4096;
            let lo = range.start + from.min(range.len());
            let hi = range.start + to.min(range.len());
            let start = lo.div_ceil(page) * page;
            let end = hi / page * page;
            if end > start {
                // SAFETY: a read-only private file mapping; after DONTNEED the kernel re-reads the
                // pages from the file on the next access, so no data is lost or changed.
                unsafe {
                    let _ = self.files[*fi].1.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        start,
                        end - start,
                    );
                }
            }
        }
    }

    /// A tensor's bytes as little-endian f32: borrowed straight from the mapping when the file
    /// stores F32, converted otherwise.
    pub fn f32_bytes(&self, name: &str) -> Result<std::borrow::Cow<'_, [u8]>> {
        let (fi, dtype, _, range) = self.entry(name, "the checkpoint does not hold this tensor")?;
        let bytes = &self.files[*fi].1[range.clone()];
        if *dtype == Dtype::F32 {
            return Ok(std::borrow::Cow::Borrowed(bytes));
        }
        let v = decode_f32(bytes, *dtype)
            .ok_or_else(|| float_dtype_error(&self.files[*fi].0, name, *dtype))?;
        Ok(std::borrow::Cow::Owned(
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ))
    }

    /// Reads a tensor that must exist with the given shape.
    pub fn read_expect(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let found = self.shape(name).ok_or_else(|| ModelError::MissingTensor {
            path: self.file_of(name),
            name: name.into(),
            hint: "is config.json the one that belongs to these weights?".into(),
        })?;
        if found != shape {
            return Err(ModelError::Shape {
                path: self.file_of(name),
                name: name.into(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
        }
        self.read(name)
    }

    /// Reads an integer tensor (I64/I32/U32/...) as i64, e.g. `input_ids`.
    pub fn read_i64(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (fi, dtype, shape, range) =
            self.entry(name, "expected an integer tensor of token ids")?;
        let b = &self.files[*fi].1[range.clone()];
        let v: Vec<i64> = match dtype {
            Dtype::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64)
                .collect(),
            other => {
                return Err(ModelError::Dtype {
                    path: self.files[*fi].0.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                    expected: "token ids as integers (I64, I32, U32 or U16)".into(),
                    hint: "store the token ids as an integer tensor (e.g. torch.int64)".into(),
                })
            }
        };
        Ok((shape.clone(), v))
    }
}

/// A weight stored in a dtype btx does not decode (integers, quantized or 8-bit floats).
fn float_dtype_error(path: &Path, name: &str, dtype: Dtype) -> ModelError {
    ModelError::Dtype {
        path: path.to_path_buf(),
        name: name.into(),
        dtype: format!("{dtype:?}"),
        expected: "floats (F32, F16, BF16 or F64)".into(),
        hint: "convert the checkpoint to F32, F16 or BF16 (btx reads unquantized float weights)"
            .into(),
    }
}

fn decode_f32(b: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
            .collect(),
        _ => return None,
    })
}

/// Reads every tensor of a file into memory (tests and small tools).
pub fn read_all(path: &Path) -> Result<HashMap<String, HostTensor>> {
    let r = TensorReader::open(path)?;
    let names: Vec<String> = r.names().map(str::to_string).collect();
    names
        .into_iter()
        .filter(|n| {
            matches!(
                r.index.get(n).map(|x| x.1),
                Some(Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
            )
        })
        .map(|n| r.read(&n).map(|t| (n, t)))
        .collect()
}
