//! What a finished output promises, and the check that it still holds: every file's size and a
//! SHA-256 of its size, first and last 64 KiB, recorded when the output is finished (a pipeline
//! stage's `manifest.json`, a checkpoint's `DONE`) and checked before the output is trusted. A
//! check costs a stat and 128 KiB read per file, whatever the file's size, so it stays quick on
//! multi-GB checkpoints; a change in the middle of a large file with its size, head and tail
//! intact is the one thing it cannot see.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::outdir::{OutputError, Result};

/// Bytes hashed at each end of a file.
const EDGE: u64 = 64 << 10;
/// Directory depth a walk follows (a symlink loop stops here instead of running forever).
const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    /// SHA-256 (hex, first 32 digits) of the size and the first and last 64 KiB.
    pub hash: String,
}

/// Every file of an output, by path relative to the directory it was recorded from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    pub files: BTreeMap<String, FileRecord>,
}

/// Size and edge hash of one file.
pub fn file_record(path: &Path) -> std::io::Result<FileRecord> {
    let mut f = File::open(path)?;
    let size = f.metadata()?.len();
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let mut buf = vec![0u8; EDGE.min(size) as usize];
    f.read_exact(&mut buf)?;
    h.update(&buf);
    if size > EDGE {
        let from = (size - EDGE).max(EDGE);
        f.seek(SeekFrom::Start(from))?;
        let mut tail = vec![0u8; (size - from) as usize];
        f.read_exact(&mut tail)?;
        h.update(&tail);
    }
    Ok(FileRecord {
        size,
        hash: format!("{:x}", h.finalize())[..32].to_string(),
    })
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .to_string()
}

fn walk(root: &Path, p: &Path, depth: usize, out: &mut OutputRecord) -> Result<()> {
    // Follows symlinks: a data stage's `tokens` may be a link to the user's prepared data.
    let io = |e| OutputError::io(p, e);
    let meta = std::fs::metadata(p).map_err(io)?;
    if meta.is_dir() {
        if depth >= MAX_DEPTH {
            return Err(OutputError::Refused {
                path: p.to_path_buf(),
                msg: "directories nested too deep".into(),
                hint: "is there a symlink loop?".into(),
            });
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort();
        for e in entries {
            walk(root, &e, depth + 1, out)?;
        }
    } else if meta.is_file() {
        let r = file_record(p).map_err(io)?;
        out.files.insert(rel(root, p), r);
    }
    Ok(())
}

impl OutputRecord {
    /// Records the files under `roots` (paths relative to `root`; roots that do not exist are
    /// left out). Directories are walked, following symlinks.
    pub fn of(root: &Path, roots: &[String]) -> Result<Self> {
        let mut out = OutputRecord::default();
        for r in roots {
            let p = root.join(r);
            if std::fs::symlink_metadata(&p).is_ok() {
                walk(root, &p, 0, &mut out)?;
            }
        }
        Ok(out)
    }

    /// The first way the files on disk differ from the record, if any.
    pub fn verify(&self, root: &Path) -> Option<String> {
        for (path, want) in &self.files {
            let p = root.join(path);
            match file_record(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Some(format!("{path} is missing"))
                }
                Err(e) => return Some(format!("{path} cannot be read ({e})")),
                Ok(got) if got.size != want.size => {
                    return Some(format!(
                        "{path} has {} bytes, DONE recorded {}",
                        got.size, want.size
                    ))
                }
                Ok(got) if got.hash != want.hash => {
                    return Some(format!(
                        "{path} differs from what DONE recorded (same size, other content)"
                    ))
                }
                Ok(_) => {}
            }
        }
        None
    }

    /// A digest of the files under `prefixes` (all files when empty): what a downstream stage
    /// records of what it read.
    pub fn digest(&self, prefixes: &[String]) -> String {
        let mut h = Sha256::new();
        for (path, r) in &self.files {
            let inside = prefixes.is_empty()
                || prefixes
                    .iter()
                    .any(|p| path == p || path.starts_with(&format!("{p}/")));
            if inside {
                h.update(path.as_bytes());
                h.update([0]);
                h.update(r.size.to_le_bytes());
                h.update(r.hash.as_bytes());
            }
        }
        format!("{:x}", h.finalize())[..32].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_sees_removal_truncation_and_edits_at_either_end() {
        let d = btx_testkit::Scratch::new("record");
        let root = d.path();
        std::fs::create_dir_all(root.join("s/model")).unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("s/model/model.safetensors"), &big).unwrap();
        std::fs::write(root.join("s/model/config.json"), b"{}").unwrap();
        let r = OutputRecord::of(root, &["s/model".into(), "s/absent".into()]).unwrap();
        assert_eq!(r.files.len(), 2);
        assert_eq!(r.verify(root), None);
        let digest = r.digest(&["s/model".into()]);
        assert_eq!(digest, r.digest(&[]));
        assert_ne!(digest, r.digest(&["s/other".into()]));
        let p = root.join("s/model/model.safetensors");
        for (what, bytes, want) in [
            ("truncated", big[..1000].to_vec(), "has 1000 bytes"),
            (
                "head edited",
                [&[9u8][..], &big[1..]].concat(),
                "same size, other content",
            ),
            (
                "tail edited",
                [&big[..big.len() - 1], &[7u8][..]].concat(),
                "same size, other content",
            ),
        ] {
            std::fs::write(&p, &bytes).unwrap();
            let e = r.verify(root).unwrap_or_else(|| panic!("{what} not seen"));
            assert!(
                e.contains(want) && e.contains("model.safetensors"),
                "{what}: {e}"
            );
        }
        std::fs::remove_file(&p).unwrap();
        assert!(r.verify(root).unwrap().contains("is missing"));
        std::fs::write(&p, &big).unwrap();
        assert_eq!(r.verify(root), None);
    }
}
