//! Writing safetensors as a stream: the header is computed from the shapes up front and tensors
//! are appended as they are produced, so a writer never holds more than one tensor; checkpoints
//! are cut into shards with an index.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::tensor::{HostTensor, INDEX_FILE, SINGLE_FILE};
use crate::error::{ModelError, Result};

/// Element types the writer emits. Float tensors are given as f32 and stored in their dtype,
/// rounded once to nearest-even (as torch's `.to(torch.bfloat16)` / `.half()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    BF16,
    F16,
    I64,
}

impl OutDtype {
    fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::BF16 => "BF16",
            OutDtype::F16 => "F16",
            OutDtype::I64 => "I64",
        }
    }

    pub fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::BF16 | OutDtype::F16 => 2,
            OutDtype::I64 => 8,
        }
    }

    fn is_float(self) -> bool {
        self != OutDtype::I64
    }

    /// The float dtype a CLI or config names: `f32`/`float32`, `bf16`/`bfloat16`,
    /// `f16`/`float16`.
    pub fn parse_float(name: &str) -> std::result::Result<Self, String> {
        Ok(match name {
            "f32" | "float32" => OutDtype::F32,
            "bf16" | "bfloat16" => OutDtype::BF16,
            "f16" | "float16" => OutDtype::F16,
            other => return Err(format!("unknown dtype {other:?} (f32, bf16, f16)")),
        })
    }

    /// transformers' name (`config.json`'s `dtype` / `torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::BF16 => "bfloat16",
            OutDtype::F16 => "float16",
            OutDtype::I64 => "int64",
        }
    }

    /// The float dtype a stored tensor has, as btx writes it again (F32 for anything else).
    pub fn of_stored(d: safetensors::Dtype) -> Self {
        match d {
            safetensors::Dtype::BF16 => OutDtype::BF16,
            safetensors::Dtype::F16 => OutDtype::F16,
            _ => OutDtype::F32,
        }
    }

    /// `data` as little-endian bytes of this float dtype.
    fn encode(self, data: &[f32]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(data.len() * self.size());
        match self {
            OutDtype::BF16 => {
                for x in data {
                    buf.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes());
                }
            }
            OutDtype::F16 => {
                for x in data {
                    buf.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes());
                }
            }
            _ => {
                for x in data {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
        buf
    }
}

/// How a model checkpoint is written: its float dtype and the largest shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SaveOpts {
    pub dtype: OutDtype,
    pub max_shard_bytes: usize,
}

/// transformers' default `max_shard_size` ("5GB", decimal).
pub const DEFAULT_MAX_SHARD_BYTES: usize = 5_000_000_000;

impl Default for SaveOpts {
    fn default() -> Self {
        Self {
            dtype: OutDtype::F32,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// A shard size as transformers spells it: `5GB`, `500MB`, `100KB` (decimal), `2GiB`,
/// `512MiB` (binary), or plain bytes.
pub fn parse_size(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: f64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KIB" => 1024.0,
        "MIB" => 1024f64.powi(2),
        "GIB" => 1024f64.powi(3),
        "TIB" => 1024f64.powi(4),
        _ => {
            return Err(format!(
                "{text:?}: unknown size unit (e.g. 5GB, 500MB, 2GiB)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 5GB, 500MB, 2GiB)"))?;
    let bytes = n * mult;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{text:?}: a shard size must be at least 1 byte"));
    }
    Ok(bytes as usize)
}

/// Writes one safetensors file whose tensor list is known in advance; tensors must then be
/// written in exactly that order. Nothing but the current tensor is held in memory.
pub struct StreamWriter {
    path: PathBuf,
    out: BufWriter<File>,
    entries: Vec<(String, OutDtype, Vec<usize>)>,
    next: usize,
}

impl StreamWriter {
    pub fn create(path: &Path, entries: Vec<(String, OutDtype, Vec<usize>)>) -> Result<Self> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut off = 0usize;
        for (name, dt, shape) in &entries {
            let n = shape.iter().product::<usize>() * dt.size();
            header.insert(
                name.clone(),
                json!({"dtype": dt.name(), "shape": shape, "data_offsets": [off, off + n]}),
            );
            off += n;
        }
        let mut h = serde_json::to_string(&Value::Object(header)).expect("json");
        // The format asks for the data to start 8-byte aligned: pad the header with spaces.
        while !(h.len() + 8).is_multiple_of(8) {
            h.push(' ');
        }
        let f = File::create(path).map_err(|e| ModelError::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&(h.len() as u64).to_le_bytes())
            .and_then(|_| out.write_all(h.as_bytes()))
            .map_err(|e| ModelError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            entries,
            next: 0,
        })
    }

    fn expect(&mut self, name: &str, dt: OutDtype, numel: usize) -> Result<()> {
        let Some((n, d, shape)) = self.entries.get(self.next) else {
            return Err(ModelError::Invalid {
                msg: format!("{}: extra tensor {name:?} written", self.path.display()),
            });
        };
        let kind_ok = *d == dt || (d.is_float() && dt.is_float());
        if n != name || !kind_ok || shape.iter().product::<usize>() != numel {
            return Err(ModelError::Invalid {
                msg: format!(
                    "{}: expected tensor {n:?} ({d:?}, {shape:?}) next, got {name:?} ({dt:?}, {numel} values)",
                    self.path.display()
                ),
            });
        }
        self.next += 1;
        Ok(())
    }

    /// Writes one f32 tensor in pieces: `fill` gets a sink and must push exactly the tensor's
    /// number of values, in order.
    pub fn write_f32_with(
        &mut self,
        name: &str,
        numel: usize,
        fill: impl FnOnce(&mut TensorSink<'_>) -> Result<()>,
    ) -> Result<()> {
        self.expect(name, OutDtype::F32, numel)?;
        let dtype = self.entries[self.next - 1].1;
        let mut sink = TensorSink {
            out: &mut self.out,
            path: &self.path,
            name,
            remaining: numel,
            dtype,
        };
        fill(&mut sink)?;
        if sink.remaining != 0 {
            return Err(ModelError::Invalid {
                msg: format!(
                    "{}: tensor {name:?} is {} values short",
                    self.path.display(),
                    sink.remaining
                ),
            });
        }
        Ok(())
    }

    pub fn write_f32(&mut self, name: &str, data: &[f32]) -> Result<()> {
        self.write_f32_with(name, data.len(), |sink| sink.f32(data))
    }

    pub fn write_i64(&mut self, name: &str, data: &[i64]) -> Result<()> {
        self.expect(name, OutDtype::I64, data.len())?;
        let mut buf = Vec::with_capacity(data.len() * 8);
        for x in data {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        self.out
            .write_all(&buf)
            .map_err(|e| ModelError::io(&self.path, e))
    }

    /// Flushes and fsyncs; errors if not every announced tensor was written.
    pub fn finish(self) -> Result<()> {
        if self.next != self.entries.len() {
            return Err(ModelError::Invalid {
                msg: format!(
                    "{}: only {} of {} tensors were written",
                    self.path.display(),
                    self.next,
                    self.entries.len()
                ),
            });
        }
        let f = self
            .out
            .into_inner()
            .map_err(|e| ModelError::io(&self.path, e.into_error()))?;
        f.sync_all().map_err(|e| ModelError::io(&self.path, e))
    }
}

/// Refuses a non-finite value: nothing btx writes (a model, a checkpoint, `btx forward`'s
/// outputs) may hold NaN or Inf, whichever computation made it (an overflowing router scale, a
/// weighted sum past f32's range, a model whose logits overflow).
fn finite(path: &Path, name: &str, values: impl Iterator<Item = f32>) -> Result<()> {
    let mut bad = 0usize;
    let mut first = None;
    for (i, x) in values.enumerate() {
        if !x.is_finite() {
            bad += 1;
            first.get_or_insert((i, x));
        }
    }
    match first {
        None => Ok(()),
        Some((i, x)) => Err(ModelError::refused(
            format!(
                "{}: tensor {name:?} holds {bad} non-finite value(s) (first: {x} at {i}); refusing to write it",
                path.display()
            ),
            "the computation that made it overflowed or divided by zero: check the values it was given (weights, scales, router settings)",
        )),
    }
}

/// Receives one tensor's values piece by piece (see [`StreamWriter::write_f32_with`]).
pub struct TensorSink<'a> {
    out: &'a mut BufWriter<File>,
    path: &'a Path,
    name: &'a str,
    remaining: usize,
    /// The stored dtype (a float one); values arrive as f32.
    dtype: OutDtype,
}

impl TensorSink<'_> {
    fn take(&mut self, n: usize) -> Result<()> {
        if n > self.remaining {
            return Err(ModelError::Invalid {
                msg: format!("{}: tensor overflows its shape", self.path.display()),
            });
        }
        self.remaining -= n;
        Ok(())
    }

    pub fn f32(&mut self, data: &[f32]) -> Result<()> {
        self.take(data.len())?;
        finite(self.path, self.name, data.iter().copied())?;
        let buf = self.dtype.encode(data);
        if self.dtype == OutDtype::F16 {
            // f16 tops out at 65504: a larger weight would be stored as infinity.
            if let Some((i, x)) = data.iter().enumerate().find(|(_, x)| x.abs() > 65504.0) {
                return Err(ModelError::refused(
                    format!(
                        "{}: tensor {:?} holds {x} at {i}, beyond float16's range (65504)",
                        self.path.display(),
                        self.name
                    ),
                    "write it as bf16 or f32 (--dtype bf16)",
                ));
            }
        }
        self.out
            .write_all(&buf)
            .map_err(|e| ModelError::io(self.path, e))
    }

    /// Values already encoded as little-endian f32 bytes (copied through untouched).
    pub fn f32_le_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        if self.dtype != OutDtype::F32 {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            return self.f32(&v);
        }
        self.take(bytes.len() / 4)?;
        finite(
            self.path,
            self.name,
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        )?;
        self.out
            .write_all(bytes)
            .map_err(|e| ModelError::io(self.path, e))
    }
}

/// Writes a whole f32 tensor set to one file (small outputs: `btx forward`, optimizer state),
/// through a temporary file beside it and a rename, so `path` is whole or as it was.
pub fn write_tensors(path: &Path, tensors: &[(String, HostTensor)]) -> Result<()> {
    let entries = tensors
        .iter()
        .map(|(n, t)| (n.clone(), OutDtype::F32, t.shape.clone()))
        .collect();
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    btx_core::outdir::sweep_leftovers(path);
    let tmp = path.with_file_name(btx_core::outdir::leftover_name(
        &name.unwrap_or_default(),
        "tmp",
    ));
    let written = (|| {
        let mut w = StreamWriter::create(&tmp, entries)?;
        for (n, t) in tensors {
            w.write_f32(n, &t.data)?;
        }
        w.finish()?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Plans the shards of a checkpoint: names grouped in order so that no shard exceeds
/// `max_shard_bytes` (a single larger tensor gets a shard of its own). One group means one
/// `model.safetensors` without an index.
pub fn plan_shards(specs: &[(String, Vec<usize>)], max_shard_bytes: usize) -> Vec<Vec<usize>> {
    plan_shards_of(specs, max_shard_bytes, 4)
}

/// [`plan_shards`] for elements of `elem` bytes.
pub fn plan_shards_of(
    specs: &[(String, Vec<usize>)],
    max_shard_bytes: usize,
    elem: usize,
) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = vec![vec![]];
    let mut cur = 0usize;
    for (i, (_, shape)) in specs.iter().enumerate() {
        let n = shape.iter().product::<usize>() * elem;
        if cur > 0 && cur + n > max_shard_bytes {
            groups.push(vec![]);
            cur = 0;
        }
        groups.last_mut().unwrap().push(i);
        cur += n;
    }
    groups
}

/// Streams a checkpoint into `dir`: `produce(i)` is called once per spec, in order, and must
/// return that tensor's values. Writes `model.safetensors`, or shards plus the index when the
/// total exceeds `max_shard_bytes`.
pub fn write_checkpoint(
    dir: &Path,
    specs: &[(String, Vec<usize>)],
    max_shard_bytes: usize,
    mut produce: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<()> {
    write_checkpoint_with(dir, specs, max_shard_bytes, |i, sink| {
        let data = produce(i)?;
        sink.f32(&data)
    })
}

/// Writes a model's parameters (`specs` in btx's names, `produce(i, sink)` filling spec i) as
/// the checkpoint of `cfg`'s family: each tensor under its name on disk
/// ([`crate::names::disk_name`]), then the family's extra tensors as zeros
/// ([`crate::names::disk_extras`]).
pub fn write_model_checkpoint(
    dir: &Path,
    cfg: &crate::config::ModelConfig,
    specs: &[(String, Vec<usize>)],
    save: &SaveOpts,
    mut produce: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<()> {
    let n = specs.len();
    let mut disk: Vec<(String, Vec<usize>)> = specs
        .iter()
        .map(|(name, shape)| (crate::names::disk_name(cfg, name), shape.clone()))
        .collect();
    disk.extend(crate::names::disk_extras(cfg));
    let extra_shapes: Vec<usize> = disk[n..].iter().map(|(_, s)| s.iter().product()).collect();
    write_checkpoint_as(dir, &disk, save, |i, sink| {
        if i < n {
            produce(i, sink)
        } else {
            sink.f32(&vec![0.0; extra_shapes[i - n]])
        }
    })
}

/// Like [`write_checkpoint`], but `produce(i, sink)` pushes tensor i's values into the sink in
/// pieces, so not even one whole tensor needs to be in memory.
pub fn write_checkpoint_with(
    dir: &Path,
    specs: &[(String, Vec<usize>)],
    max_shard_bytes: usize,
    produce: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<()> {
    let save = SaveOpts {
        dtype: OutDtype::F32,
        max_shard_bytes,
    };
    write_checkpoint_as(dir, specs, &save, produce)
}

/// [`write_checkpoint_with`] in `save.dtype`, cut at `save.max_shard_bytes` of that dtype.
pub fn write_checkpoint_as(
    dir: &Path,
    specs: &[(String, Vec<usize>)],
    save: &SaveOpts,
    mut produce: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let elem = save.dtype.size();
    let groups = plan_shards_of(specs, save.max_shard_bytes, elem);
    let n = groups.len();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (gi, g) in groups.iter().enumerate() {
        let file = if n == 1 {
            SINGLE_FILE.to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", gi + 1, n)
        };
        let entries = g
            .iter()
            .map(|&i| (specs[i].0.clone(), save.dtype, specs[i].1.clone()))
            .collect();
        let mut w = StreamWriter::create(&dir.join(&file), entries)?;
        for &i in g {
            let numel: usize = specs[i].1.iter().product();
            total += numel * elem;
            w.write_f32_with(&specs[i].0, numel, |sink| produce(i, sink))?;
            weight_map.insert(specs[i].0.clone(), json!(file));
        }
        w.finish()?;
    }
    let index = dir.join(INDEX_FILE);
    if n > 1 {
        // A model.safetensors left by an earlier write would be read instead of these shards
        // (transformers, and so btx, read the single file first). Removed before the index is
        // written, so that no moment has both.
        let single = dir.join(SINGLE_FILE);
        if single.exists() {
            std::fs::remove_file(&single).map_err(|e| ModelError::io(&single, e))?;
        }
        let v = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(&index, serde_json::to_string_pretty(&v).expect("json"))
            .map_err(|e| ModelError::io(&index, e))?;
    } else if index.exists() {
        std::fs::remove_file(&index).map_err(|e| ModelError::io(&index, e))?;
    }
    Ok(())
}
