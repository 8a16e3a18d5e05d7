//! Token shards: one packed, memory-mapped file of token ids per domain and split.
//!
//! Layout (little-endian):
//! ```text
//! 0   8  magic  "BTXTOKEN"
//! 8   4  version (1)
//! 12  4  bytes per token (2 = u16, 4 = u32)
//! 16  8  token count
//! 24  8  document count
//! 32 64  tokenizer hash (SHA-256 of its canonical JSON, lowercase hex)
//! 96 32  reserved (zero)
//! 128    tokens; every document is followed by the tokenizer's EOS id
//! ```

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{file_err, io_err, DataError, Result};

pub const MAGIC: &[u8; 8] = b"BTXTOKEN";
pub const VERSION: u32 = 1;
pub const HEADER: usize = 128;

/// Streams documents into a shard; the header is finalised by [`ShardWriter::finish`], which
/// also renames the temporary file into place, so a half-written shard never has the final name.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    width: usize,
    hash: String,
    eos: u32,
    tokens: u64,
    docs: u64,
}

impl ShardWriter {
    pub fn create(path: &Path, vocab_size: usize, tokenizer_hash: &str, eos: u32) -> Result<Self> {
        let width = if vocab_size <= u16::MAX as usize + 1 {
            2
        } else {
            4
        };
        if tokenizer_hash.len() != 64 {
            return Err(DataError::Invalid(format!(
                "tokenizer hash must be 64 hex chars, got {tokenizer_hash:?}"
            )));
        }
        let tmp = path.with_extension("tok.tmp");
        let f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, f);
        out.write_all(&[0u8; HEADER]).map_err(|e| io_err(&tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out,
            width,
            hash: tokenizer_hash.to_string(),
            eos,
            tokens: 0,
            docs: 0,
        })
    }

    /// Appends one document's tokens followed by EOS.
    pub fn push_doc(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = Vec::with_capacity((ids.len() + 1) * self.width);
        for &id in ids.iter().chain(std::iter::once(&self.eos)) {
            if self.width == 2 {
                buf.extend_from_slice(&(id as u16).to_le_bytes());
            } else {
                buf.extend_from_slice(&id.to_le_bytes());
            }
        }
        self.out.write_all(&buf).map_err(|e| io_err(&self.tmp, e))?;
        self.tokens += ids.len() as u64 + 1;
        self.docs += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(u64, u64)> {
        let mut h = Vec::with_capacity(HEADER);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.width as u32).to_le_bytes());
        h.extend_from_slice(&self.tokens.to_le_bytes());
        h.extend_from_slice(&self.docs.to_le_bytes());
        h.extend_from_slice(self.hash.as_bytes());
        h.resize(HEADER, 0);
        let tmp = self.tmp.clone();
        self.out.flush().map_err(|e| io_err(&tmp, e))?;
        let mut f = self
            .out
            .into_inner()
            .map_err(|e| io_err(&tmp, e.into_error()))?;
        f.seek(SeekFrom::Start(0)).map_err(|e| io_err(&tmp, e))?;
        f.write_all(&h).map_err(|e| io_err(&tmp, e))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, e))?;
        Ok((self.tokens, self.docs))
    }
}

/// A shard opened for reading (memory-mapped).
#[derive(Debug)]
pub struct Shard {
    pub path: PathBuf,
    mmap: Mmap,
    width: usize,
    len: usize,
    docs: u64,
    hash: String,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: shards are written to a temporary name and renamed; nobody writes a shard in
        // place, so the mapping does not change under us.
        let mmap = unsafe { Mmap::map(&f) }.map_err(|e| io_err(path, e))?;
        if mmap.len() < HEADER || &mmap[..8] != MAGIC {
            return Err(file_err(path, "not a btx token shard (bad magic)"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(mmap[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(mmap[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(file_err(
                path,
                format!("shard version {version}, this btx reads version {VERSION}\nhint: re-run `btx data prepare`"),
            ));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return Err(file_err(path, format!("bad token width {width}")));
        }
        let len = u64_at(16) as usize;
        let docs = u64_at(24);
        if len.checked_mul(width).and_then(|n| n.checked_add(HEADER)) != Some(mmap.len()) {
            return Err(file_err(
                path,
                format!(
                    "truncated or corrupt: header says {len} tokens ({} bytes), file has {} bytes\nhint: re-run `btx data prepare`",
                    (len as u128) * (width as u128) + HEADER as u128,
                    mmap.len()
                ),
            ));
        }
        let hash = String::from_utf8_lossy(&mmap[32..96]).to_string();
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            width,
            len,
            docs,
            hash,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn docs(&self) -> u64 {
        self.docs
    }

    pub fn tokenizer_hash(&self) -> &str {
        &self.hash
    }

    /// Fails unless the shard was made with the tokenizer of hash `expected`.
    pub fn check_tokenizer(&self, expected: &str) -> Result<()> {
        if self.hash != expected {
            return Err(file_err(
                &self.path,
                format!(
                    "made with tokenizer {}…, but the model's tokenizer is {}…\nhint: re-run `btx data prepare` with the model's tokenizer.json",
                    crate::short_hash(&self.hash),
                    crate::short_hash(expected)
                ),
            ));
        }
        Ok(())
    }

    /// The largest token id in the shard (a full scan; `btx data info` checks it against the
    /// vocabulary).
    pub fn max_id(&self) -> Option<u32> {
        (0..self.len).map(|i| self.get(i)).max()
    }

    /// Fails, naming the shard, when it holds a token id of `vocab` or more (a full scan): ids
    /// a model with `vocab` embeddings cannot look up. `whose` names that vocabulary, e.g.
    /// "the model's vocabulary".
    pub fn check_ids(&self, vocab: usize, whose: &str) -> Result<()> {
        match self.max_id().filter(|&m| m as usize >= vocab) {
            Some(m) => Err(file_err(
                &self.path,
                format!(
                    "holds token id {m}, outside {whose} of {vocab}\nhint: the shard is corrupt or was made with another tokenizer; prepare the data again (`btx data info` checks a data directory)"
                ),
            )),
            None => Ok(()),
        }
    }

    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER + i * self.width;
        if self.width == 2 {
            u16::from_le_bytes(self.mmap[o..o + 2].try_into().unwrap()) as u32
        } else {
            u32::from_le_bytes(self.mmap[o..o + 4].try_into().unwrap())
        }
    }

    /// Tokens `start..start + n` as i64 (the trainer's id type).
    pub fn window(&self, start: usize, n: usize) -> Vec<i64> {
        assert!(
            start + n <= self.len,
            "window past the end of {}",
            self.path.display()
        );
        (start..start + n).map(|i| self.get(i) as i64).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_validation() {
        let d = btx_testkit::Scratch::new("shard");
        let h = "a".repeat(64);
        for vocab in [300usize, 70_000] {
            let p = d.join(format!("s{vocab}.tok"));
            let mut w = ShardWriter::create(&p, vocab, &h, 7).unwrap();
            w.push_doc(&[1, 2, 3]).unwrap();
            w.push_doc(&[(vocab - 1) as u32]).unwrap();
            assert_eq!(w.finish().unwrap(), (6, 2));
            let s = Shard::open(&p).unwrap();
            assert_eq!(s.window(0, 6), vec![1, 2, 3, 7, vocab as i64 - 1, 7]);
            assert_eq!(s.docs(), 2);
            assert!(s.check_tokenizer(&h).is_ok());
            let e = s.check_tokenizer(&"b".repeat(64)).unwrap_err().to_string();
            assert!(e.contains("tokenizer"), "{e}");
            // Truncation is detected.
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
            assert!(Shard::open(&p)
                .unwrap_err()
                .to_string()
                .contains("truncated"));
        }
    }
}
