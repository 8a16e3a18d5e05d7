//! GGUF (llama.cpp) files: read metadata and tensors, dequantise (F32, F16, BF16, Q8_0, Q4_0,
//! Q4_1), and write small files (used by tests to quantise their own weights).
//!
//! Layout (version 2/3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata
//! count u64, metadata key/values, tensor infos (name, dims with ne[0] fastest, type, offset),
//! padding to `general.alignment` (default 32), tensor data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{file_err, io_err, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer: None for a non-integer and for a negative signed one
    /// (casting would turn -1 into 2^64 - 1, a size nobody meant).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(x) => Some(x as u64),
            Value::I8(x) => u64::try_from(x).ok(),
            Value::U16(x) => Some(x as u64),
            Value::I16(x) => u64::try_from(x).ok(),
            Value::U32(x) => Some(x as u64),
            Value::I32(x) => u64::try_from(x).ok(),
            Value::U64(x) => Some(x),
            Value::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            Value::I8(x) => Some(x as f64),
            Value::I16(x) => Some(x as f64),
            Value::I32(x) => Some(x as f64),
            Value::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types btx can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::Bf16,
            x => GgmlType::Other(x),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::Bf16 => 30,
            GgmlType::Other(x) => x,
        }
    }

    /// (elements per block, bytes per block).
    fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Other(_) => return None,
        })
    }

    /// Bytes of `numel` values: None for a type btx cannot read, a count that is not a whole
    /// number of blocks, or a size past `usize`.
    pub fn byte_size(self, numel: usize) -> Option<usize> {
        let (e, b) = self.block()?;
        numel
            .is_multiple_of(e)
            .then(|| (numel / e).checked_mul(b))
            .flatten()
    }
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml dims: `dims[0]` varies fastest (for a matrix: the number of columns).
    pub dims: Vec<usize>,
    pub ty: GgmlType,
    /// Byte offset into the data section.
    pub offset: usize,
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Row-major shape (outermost first), i.e. the dims reversed: `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub meta: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
    data_start: usize,
}

/// What to do about a file that ends early or holds bytes that cannot be a GGUF.
const DAMAGED: &str = "\nhint: the file is damaged or cut short; download it again, or convert the model again with llama.cpp's convert_hf_to_gguf.py";

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
    /// What is being read, for the message when it fails ("the header", "metadata KEY", ...).
    what: String,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> crate::error::DataError {
        file_err(self.path, format!("{msg} (in {}){DAMAGED}", self.what))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.b.len() - self.pos {
            return Err(self.err(format_args!(
                "truncated GGUF: wanted {n} bytes at offset {}, the file has {}",
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let n = self.u64()? as usize;
        let b = self.take(n)?;
        // Not lossy: a token or tensor name with replacement characters would be another name
        // (another vocabulary entry, a tensor that is not found) without any error.
        String::from_utf8(b.to_vec())
            .map_err(|_| self.err(format_args!("the string at offset {at} is not valid UTF-8")))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.take(1)?[0]),
            1 => Value::I8(self.take(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2)?.try_into().unwrap())),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                // Arrays of arrays are legal but real files nest one level at most; a bound
                // keeps a crafted file from recursing the stack away.
                if depth >= 8 {
                    return Err(self.err("GGUF arrays nested more than 8 deep"));
                }
                let inner = self.u32()?;
                let n = self.u64()? as usize;
                // Every element takes at least one byte: no more can follow than bytes remain.
                let mut v = Vec::with_capacity(n.min(self.b.len() - self.pos));
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            t => return Err(self.err(format_args!("unknown GGUF value type {t}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        // A directory opens on Linux and then fails to map with "No such device": say what it is.
        if path.is_dir() {
            return Err(file_err(
                path,
                "is a directory, not a GGUF file\nhint: give the .gguf file itself (a Hugging Face model directory is a seed through [seed] path, not import-gguf)",
            ));
        }
        let f = File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: read-only mapping of a file btx never writes while reading.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
        let mut c = Cursor {
            b: &mmap,
            pos: 0,
            path,
            what: "the header".into(),
        };
        let magic = c.take(4)?;
        if magic != b"GGUF" {
            return Err(file_err(
                path,
                format!(
                    "not a GGUF file (bad magic: it starts with {:?}, not \"GGUF\")\nhint: btx import-gguf reads llama.cpp GGUF files; convert the model with llama.cpp's convert_hf_to_gguf.py, or use a Hugging Face model directory as the seed ([seed] path)",
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(file_err(
                path,
                format!("GGUF version {version} (btx reads 2 and 3)\nhint: convert the model again with a current llama.cpp, which writes version 3"),
            ));
        }
        let n_tensors = c.u64()? as usize;
        let n_kv = c.u64()? as usize;
        let mut meta = BTreeMap::new();
        for i in 0..n_kv {
            c.what = format!("metadata entry {i} of {n_kv}");
            let k = c.string()?;
            c.what = format!("metadata {k}");
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            // llama.cpp refuses a key given twice; keeping either one would be a guess.
            if meta.insert(k.clone(), v).is_some() {
                return Err(file_err(
                    path,
                    format!("metadata {k} appears twice{DAMAGED}"),
                ));
            }
        }
        // A tensor record takes at least 24 bytes: bound the allocation by what the file holds.
        let mut tensors: Vec<TensorInfo> =
            Vec::with_capacity(n_tensors.min((mmap.len() - c.pos) / 24));
        let mut names = std::collections::HashSet::new();
        for i in 0..n_tensors {
            c.what = format!("tensor record {i} of {n_tensors}");
            let name = c.string()?;
            c.what = format!("the record of tensor {name:?}");
            let nd = c.u32()? as usize;
            if nd > 8 {
                return Err(c.err(format_args!(
                    "tensor {name:?} has {nd} dimensions (ggml has at most 4)"
                )));
            }
            let dims = (0..nd)
                .map(|_| c.u64().map(|x| x as usize))
                .collect::<Result<Vec<_>>>()?;
            if dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .is_none()
            {
                return Err(c.err(format_args!(
                    "tensor {name:?} has dims {dims:?}, too many elements to address"
                )));
            }
            let ty = GgmlType::from_id(c.u32()?);
            let offset = c.u64()? as usize;
            if !names.insert(name.clone()) {
                return Err(file_err(
                    path,
                    format!("tensor {name:?} appears twice{DAMAGED}"),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let align = match meta.get("general.alignment") {
            None => 32,
            Some(v) => v.as_u64().unwrap_or(0) as usize,
        };
        if !align.is_power_of_two() || align > 1 << 20 {
            return Err(file_err(
                path,
                format!(
                    "general.alignment {:?} is not a power of two up to 1 MiB{DAMAGED}",
                    meta.get("general.alignment")
                ),
            ));
        }
        let data_start = c.pos.div_ceil(align) * align;
        let g = Self {
            path: path.to_path_buf(),
            version,
            meta,
            tensors,
            mmap,
            data_start,
        };
        for t in &g.tensors {
            if let Some((e, _)) = t.ty.block() {
                // ggml stores each row as whole blocks (and refuses a file whose rows are not):
                // a row of 48 values in 32-value blocks has no layout to read it by.
                let row = t.dims.first().copied().unwrap_or(1);
                if !row.is_multiple_of(e) || t.ty.byte_size(t.numel()).is_none() {
                    return Err(file_err(
                        path,
                        format!(
                            "tensor {:?} ({:?}, dims {:?}) has rows of {row} values, not a whole number of {e}-value blocks{DAMAGED}",
                            t.name, t.ty, t.dims
                        ),
                    ));
                }
            }
            if let Some(n) = t.ty.byte_size(t.numel()) {
                let end = g
                    .data_start
                    .checked_add(t.offset)
                    .and_then(|s| s.checked_add(n));
                if end.is_none_or(|e| e > g.mmap.len()) {
                    return Err(file_err(
                        path,
                        format!(
                            "tensor {:?} ({n} bytes at offset {}) runs past the end of the file ({} bytes){DAMAGED}",
                            t.name,
                            t.offset,
                            g.mmap.len()
                        ),
                    ));
                }
            }
        }
        Ok(g)
    }

    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta.get(key).and_then(Value::as_u64)
    }

    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        self.meta.get(key).and_then(Value::as_f64)
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta.get(key).and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Checks that a tensor can be dequantised (known type, bytes inside the file) without
    /// decoding it.
    pub fn check_readable(&self, t: &TensorInfo) -> Result<()> {
        self.raw(t).map(|_| ())
    }

    /// Dequantises a tensor to f32 (row-major, shape [`TensorInfo::shape`]).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        Ok(dequantize(t.ty, self.raw(t)?, t.numel()))
    }

    /// Values `from..to` of a tensor as f32 (both whole blocks of its type: one expert of a
    /// stacked `ffn_*_exps`, whose rows are whole blocks), so that a part of a large tensor is
    /// read without dequantising the rest.
    pub fn dequantize_range(&self, t: &TensorInfo, from: usize, to: usize) -> Result<Vec<f32>> {
        let raw = self.raw(t)?;
        let (e, b) = t.ty.block().expect("raw() checked the type");
        assert!(
            from.is_multiple_of(e) && to.is_multiple_of(e) && from <= to && to <= t.numel(),
            "range {from}..{to} of {} is not whole blocks of {e}",
            t.name
        );
        Ok(dequantize(t.ty, &raw[from / e * b..to / e * b], to - from))
    }

    /// The index of the first value of `t` that dequantises to NaN or ±infinity, without
    /// dequantising it (see [`first_non_finite`]).
    pub fn first_non_finite(&self, t: &TensorInfo) -> Result<Option<usize>> {
        Ok(first_non_finite(t.ty, self.raw(t)?))
    }

    fn raw(&self, t: &TensorInfo) -> Result<&[u8]> {
        let n = t.numel();
        let size = t.ty.byte_size(n).ok_or_else(|| {
            file_err(
                &self.path,
                format!(
                    "tensor {:?} has ggml type {:?}, which btx cannot dequantise (F32, F16, BF16, Q8_0, Q4_0, Q4_1)\nhint: re-quantise with llama.cpp to Q8_0 or Q4_1",
                    t.name, t.ty
                ),
            )
        })?;
        let bytes = self.data_start
            .checked_add(t.offset)
            .and_then(|start| self.mmap.get(start..start.checked_add(size)?))
            .ok_or_else(|| {
                file_err(
                    &self.path,
                    format!(
                        "tensor {:?} ({size} bytes at offset {}) runs past the end of the file ({} bytes)\nhint: the file is truncated or corrupt; download it again",
                        t.name, t.offset, self.mmap.len()
                    ),
                )
            })?;
        Ok(bytes)
    }
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The index of the first value that [`dequantize`] would make NaN or ±infinity, reading only
/// what decides it: every value of a float type, and only the f16 scales of a block type. A
/// block's quants are small integers (|q| <= 128, <= 15 for Q4), and an f16 is at most 65504,
/// so `d * q` and `d * q + m` are finite exactly when `d` (and `m`) are; a non-finite scale makes
/// every value of its block non-finite (0 * inf is NaN), so the block's first index is the answer.
pub fn first_non_finite(ty: GgmlType, b: &[u8]) -> Option<usize> {
    let f16_bad = |c: &[u8]| !f16(c).is_finite();
    match ty {
        GgmlType::F32 => b
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
        GgmlType::F16 => b.chunks_exact(2).position(f16_bad),
        GgmlType::Bf16 => b
            .chunks_exact(2)
            .position(|c| !half::bf16::from_le_bytes([c[0], c[1]]).to_f32().is_finite()),
        GgmlType::Q8_0 => b
            .chunks_exact(34)
            .position(|k| f16_bad(&k[..2]))
            .map(|i| i * 32),
        GgmlType::Q4_0 => b
            .chunks_exact(18)
            .position(|k| f16_bad(&k[..2]))
            .map(|i| i * 32),
        GgmlType::Q4_1 => b
            .chunks_exact(20)
            .position(|k| f16_bad(&k[..2]) || f16_bad(&k[2..4]))
            .map(|i| i * 32),
        GgmlType::Other(_) => unreachable!("checked by byte_size"),
    }
}

/// Dequantises `n` values of type `ty` from `b`.
pub fn dequantize(ty: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(b.chunks_exact(2).map(f16)),
        GgmlType::Bf16 => out.extend(
            b.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for blk in b.chunks_exact(34) {
                let d = f16(&blk[..2]);
                out.extend(blk[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for blk in b.chunks_exact(18) {
                let d = f16(&blk[..2]);
                let qs = &blk[2..];
                out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in b.chunks_exact(20) {
                let (d, m) = (f16(&blk[..2]), f16(&blk[2..4]));
                let qs = &blk[4..];
                out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Other(_) => unreachable!("checked by byte_size"),
    }
    out
}

/// Quantises `x` (length a multiple of 32 for block types) as ggml's reference quantisers do.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    match ty {
        GgmlType::F32 => x.iter().for_each(|v| out.extend(v.to_le_bytes())),
        GgmlType::F16 => x.iter().for_each(|v| out.extend(h(*v))),
        GgmlType::Bf16 => x
            .iter()
            .for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks(32) {
                let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks(32) {
                // ggml: d = max / -8 where max is the value of largest magnitude.
                let max = blk
                    .iter()
                    .fold(0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(blk[j]) | (q(blk[j + 16]) << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for blk in x.chunks(32) {
                let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(h(d));
                out.extend(h(min));
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..16 {
                    out.push(q(blk[j]) | (q(blk[j + 16]) << 4));
                }
            }
        }
        GgmlType::Other(t) => panic!("cannot quantise to ggml type {t}"),
    }
    out
}

/// The alignment of tensor data btx writes (GGUF's default; `general.alignment` unset).
pub const ALIGN: usize = 32;

/// One tensor's entry in a GGUF header: its name, row-major shape (written with ne[0], the
/// last dimension, first), type and offset from the start of the data section.
pub struct TensorHeader<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub ty: GgmlType,
    pub offset: u64,
}

/// A GGUF v3 header: magic, version, counts, metadata, tensor infos, padded to [`ALIGN`] so
/// that the data section starts right after it.
pub fn encode_header(meta: &[(String, Value)], tensors: &[TensorHeader]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(s) => string(out, s),
            Value::Array(a) => {
                // An empty array is written as one of strings: the only empty array btx
                // writes is a vocabulary's merges, which llama.cpp requires to be strings.
                let inner = a.first().map_or(8, type_id);
                out.extend(inner.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| value(out, x));
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
    let mut head = b"GGUF".to_vec();
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        string(&mut head, k);
        head.extend(type_id(v).to_le_bytes());
        value(&mut head, v);
    }
    for t in tensors {
        string(&mut head, t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(t.ty.id().to_le_bytes());
        head.extend(t.offset.to_le_bytes());
    }
    head.resize(head.len().div_ceil(ALIGN) * ALIGN, 0);
    head
}

/// Writes a small GGUF v3 file in memory (tests): metadata, then tensors given as (name,
/// row-major shape, type, f32 values to quantise).
pub fn write(
    path: &Path,
    meta: &[(String, Value)],
    tensors: &[(String, Vec<usize>, GgmlType, Vec<f32>)],
) -> Result<()> {
    let mut data = vec![];
    let mut offsets = vec![];
    for (_, _, ty, vals) in tensors {
        offsets.push(data.len() as u64);
        data.extend(quantize(*ty, vals));
        data.resize(data.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    let infos: Vec<TensorHeader> = tensors
        .iter()
        .zip(&offsets)
        .map(|((name, shape, ty, _), &offset)| TensorHeader {
            name,
            shape,
            ty: *ty,
            offset,
        })
        .collect();
    let head = encode_header(meta, &infos);
    let mut f = File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(&head)
        .and_then(|_| f.write_all(&data))
        .map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan that decides finiteness without dequantising agrees with dequantising, on bytes
    /// where NaN and infinite f16/f32/bf16 values (and scales) are common.
    #[test]
    fn first_non_finite_agrees_with_dequantize() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut byte = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Half the bytes all ones: exponents of all ones (NaN/inf) turn up often.
            if state.is_multiple_of(2) {
                0xff
            } else {
                (state >> 8) as u8
            }
        };
        let mut seen = [0usize; 2];
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Bf16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
        ] {
            for _ in 0..400 {
                let n = 64;
                let size = ty.byte_size(n).unwrap();
                let mut b: Vec<u8> = (0..size).map(|_| byte()).collect();
                // Many cases all finite: clear the top bits that make NaN/inf, sometimes.
                if b[0].is_multiple_of(3) {
                    for x in b.iter_mut() {
                        *x &= 0x3b;
                    }
                }
                let want = dequantize(ty, &b, n).iter().position(|v| !v.is_finite());
                assert_eq!(first_non_finite(ty, &b), want, "{ty:?} {b:?}");
                seen[want.is_some() as usize] += 1;
            }
        }
        assert!(seen[0] > 100 && seen[1] > 100, "{seen:?}");
    }

    #[test]
    fn negative_integers_are_not_sizes() {
        assert_eq!(Value::I32(-1).as_u64(), None);
        assert_eq!(Value::I64(-5).as_u64(), None);
        assert_eq!(Value::I8(7).as_u64(), Some(7));
        assert_eq!(Value::I32(-2).as_f64(), Some(-2.0));
    }

    #[test]
    fn quantisers_round_trip_within_their_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 30.0) * 0.013)
            .collect();
        for (ty, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::Q8_0, 0.4 / 127.0),
            (GgmlType::Q4_1, 0.82 / 15.0),
            (GgmlType::Q4_0, 0.4 / 8.0 + 1e-3),
        ] {
            let b = quantize(ty, &x);
            assert_eq!(Some(b.len()), ty.byte_size(x.len()));
            let y = dequantize(ty, &b, x.len());
            let err = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(err <= tol, "{ty:?}: max error {err} > {tol}");
        }
    }
}
