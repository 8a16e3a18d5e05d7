//! Safetensors reading (single file or sharded with `model.safetensors.index.json`, memory-mapped)
//! and streaming writing (the header is computed from the shapes up front, tensors are appended as
//! they are produced, so a writer never holds more than one tensor).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor in host memory, f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} does not match {} values",
            data.len()
        );
        Self { shape, data }
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self::new(shape, vec![0.0; n])
    }
}

/// Safetensors file(s) opened read-only and memory-mapped.
pub struct TensorReader {
    files: Vec<(PathBuf, Mmap)>,
    /// name -> (file index, dtype, shape, byte range within the file)
    index: BTreeMap<String, (usize, Dtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl TensorReader {
    /// Opens a model directory (sharded or not) or a single `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::open_files(&[path.to_path_buf()]);
        }
        let index_path = path.join(INDEX_FILE);
        if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| ModelError::io(&index_path, e))?;
            let v: Value = serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                path: index_path.clone(),
                msg: e.to_string(),
            })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Safetensors {
                    path: index_path.clone(),
                    msg: "no \"weight_map\" object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            let files: Vec<PathBuf> = shards.iter().map(|s| path.join(s)).collect();
            return Self::open_files(&files);
        }
        let single = path.join(SINGLE_FILE);
        if single.exists() {
            return Self::open_files(&[single]);
        }
        Err(ModelError::io(
            &single,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {SINGLE_FILE} nor {INDEX_FILE} found"),
            ),
        ))
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
                index.insert(
                    name.clone(),
                    (fi, info.dtype, info.shape.clone(), base + a..base + b),
                );
            }
            files.push((p.clone(), mmap));
        }
        Ok(Self { files, index })
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
        let data = decode_f32(bytes, *dtype).ok_or_else(|| ModelError::Dtype {
            path: self.files[*fi].0.clone(),
            name: name.into(),
            dtype: format!("{dtype:?}"),
        })?;
        Ok(HostTensor::new(shape.clone(), data))
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
        let v = decode_f32(bytes, *dtype).ok_or_else(|| ModelError::Dtype {
            path: self.files[*fi].0.clone(),
            name: name.into(),
            dtype: format!("{dtype:?}"),
        })?;
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
                    dtype: format!("{other:?} (expected an integer type)"),
                })
            }
        };
        Ok((shape.clone(), v))
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

/// Element types the writer emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    I64,
}

impl OutDtype {
    fn name(self) -> &'static str {
        match self {
            OutDtype::F32 => "F32",
            OutDtype::I64 => "I64",
        }
    }
    fn size(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::I64 => 8,
        }
    }
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
        if n != name || *d != dt || shape.iter().product::<usize>() != numel {
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
        let mut sink = TensorSink {
            out: &mut self.out,
            path: &self.path,
            remaining: numel,
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
        self.expect(name, OutDtype::F32, data.len())?;
        let mut buf = Vec::with_capacity(data.len() * 4);
        for x in data {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        self.out
            .write_all(&buf)
            .map_err(|e| ModelError::io(&self.path, e))
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

/// Receives one tensor's values piece by piece (see [`StreamWriter::write_f32_with`]).
pub struct TensorSink<'a> {
    out: &'a mut BufWriter<File>,
    path: &'a Path,
    remaining: usize,
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
        let mut buf = Vec::with_capacity(data.len() * 4);
        for x in data {
            buf.extend_from_slice(&x.to_le_bytes());
        }
        self.out
            .write_all(&buf)
            .map_err(|e| ModelError::io(self.path, e))
    }

    /// Values already encoded as little-endian f32 bytes (copied through untouched).
    pub fn f32_le_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.take(bytes.len() / 4)?;
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
    let tmp = path.with_file_name(format!(
        ".{}.partial-{}",
        name.unwrap_or_default(),
        std::process::id()
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
    let mut groups: Vec<Vec<usize>> = vec![vec![]];
    let mut cur = 0usize;
    for (i, (_, shape)) in specs.iter().enumerate() {
        let n = shape.iter().product::<usize>() * 4;
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

/// Like [`write_checkpoint`], but `produce(i, sink)` pushes tensor i's values into the sink in
/// pieces, so not even one whole tensor needs to be in memory.
pub fn write_checkpoint_with(
    dir: &Path,
    specs: &[(String, Vec<usize>)],
    max_shard_bytes: usize,
    mut produce: impl FnMut(usize, &mut TensorSink<'_>) -> Result<()>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let groups = plan_shards(specs, max_shard_bytes);
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
            .map(|&i| (specs[i].0.clone(), OutDtype::F32, specs[i].1.clone()))
            .collect();
        let mut w = StreamWriter::create(&dir.join(&file), entries)?;
        for &i in g {
            let numel: usize = specs[i].1.iter().product();
            total += numel * 4;
            w.write_f32_with(&specs[i].0, numel, |sink| produce(i, sink))?;
            weight_map.insert(specs[i].0.clone(), json!(file));
        }
        w.finish()?;
    }
    let index = dir.join(INDEX_FILE);
    if n > 1 {
        let v = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        std::fs::write(&index, serde_json::to_string_pretty(&v).expect("json"))
            .map_err(|e| ModelError::io(&index, e))?;
    } else if index.exists() {
        std::fs::remove_file(&index).map_err(|e| ModelError::io(&index, e))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> btx_testkit::Scratch {
        btx_testkit::Scratch::new(&format!("io-{tag}"))
    }

    #[test]
    fn sharded_round_trip_is_bit_exact() {
        let d = tmpdir("shard");
        let specs: Vec<(String, Vec<usize>)> =
            (0..5).map(|i| (format!("t{i}"), vec![3, 7 + i])).collect();
        let vals: Vec<Vec<f32>> = specs
            .iter()
            .enumerate()
            .map(|(i, (_, s))| {
                (0..s.iter().product::<usize>())
                    .map(|j| (i * 1000 + j) as f32 * 0.37 - 1e-7)
                    .collect()
            })
            .collect();
        write_checkpoint(&d, &specs, 100, |i| Ok(vals[i].clone())).unwrap();
        assert!(d.join(INDEX_FILE).exists());
        let r = TensorReader::open(&d).unwrap();
        for (i, (n, s)) in specs.iter().enumerate() {
            let t = r.read(n).unwrap();
            assert_eq!(&t.shape, s);
            let a: Vec<u32> = t.data.iter().map(|x| x.to_bits()).collect();
            let b: Vec<u32> = vals[i].iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b);
        }
        // Rewriting as a single file removes the stale index.
        write_checkpoint(&d, &specs, usize::MAX, |i| Ok(vals[i].clone())).unwrap();
        assert!(!d.join(INDEX_FILE).exists());
        // The reference reader accepts what we write.
        let bytes = std::fs::read(d.join(SINGLE_FILE)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 5);
    }

    #[test]
    fn writer_refuses_out_of_order_tensors() {
        let d = tmpdir("order");
        let mut w = StreamWriter::create(
            &d.join("x.safetensors"),
            vec![
                ("a".into(), OutDtype::F32, vec![2]),
                ("b".into(), OutDtype::F32, vec![2]),
            ],
        )
        .unwrap();
        let e = w.write_f32("b", &[1.0, 2.0]).unwrap_err().to_string();
        assert!(e.contains("expected tensor \"a\""), "{e}");
    }
}
