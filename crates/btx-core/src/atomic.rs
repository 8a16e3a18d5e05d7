//! Files that appear whole or not at all: written to a hidden temporary file beside the target,
//! fsynced, renamed over it, and the directory fsynced. A failure at any point (a full disk, a
//! kill) leaves the previous file as it was, so a report or manifest is never seen half-written
//! and a failing re-run never destroys the last good one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::outdir::{fsync_dir, leftover_name, sweep_leftovers, OutputError, Result};

/// The hidden temporary beside `target` this process writes (`.NAME.tmp-HOST-PID`): the host
/// and pid let a later writer tell a dead writer's leftover from a live one's work.
fn temp_path(target: &Path) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| OutputError::Refused {
            path: target.to_path_buf(),
            msg: "has no file name".into(),
            hint: "name a file, e.g. out/report.md".into(),
        })?
        .to_string_lossy()
        .to_string();
    Ok(target.with_file_name(leftover_name(&name, "tmp")))
}

/// Writes `bytes` to `path` atomically (see the module's doc). The parent directory must exist.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// A file written piece by piece (a multi-gigabyte export streamed tensor by tensor) that
/// appears whole or not at all: the pieces go to the hidden temporary beside the target, which
/// [`AtomicFile::commit`] fsyncs and renames over it; dropped uncommitted (an error on the
/// way), the temporary is removed and the target stays as it was.
pub struct AtomicFile {
    target: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<fs::File>>,
}

impl AtomicFile {
    /// Starts writing `path` (its parent must exist); what a killed writer left is swept first.
    pub fn create(path: &Path) -> Result<Self> {
        let tmp = temp_path(path)?;
        sweep_leftovers(path);
        let f = fs::File::create(&tmp).map_err(|e| OutputError::io(path, e))?;
        Ok(Self {
            target: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, f)),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().expect("written after commit");
        f.write_all(bytes)
            .map_err(|e| OutputError::io(&self.target, e))
    }

    /// Flushes, fsyncs and renames the file into place, then fsyncs its directory. On failure
    /// the temporary is removed and the target stays as it was.
    pub fn commit(mut self) -> Result<()> {
        let f = self.file.take().expect("committed twice");
        let done = f
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&self.tmp, &self.target));
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp);
            return Err(OutputError::io(&self.target, e));
        }
        if let Some(p) = self.target.parent() {
            fsync_dir(if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            });
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_nothing_beside() {
        let d = btx_testkit::Scratch::new("atomic");
        let p = d.join("report.md");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        // An unwritable target keeps the old file and names the path.
        let e = write_file(&d.join("missing/x.json"), b"{}").unwrap_err();
        assert!(e.to_string().contains("missing/x.json"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"two");
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one_and_no_temporary() {
        let d = btx_testkit::Scratch::new("atomic-stream");
        let p = d.join("model.gguf");
        write_file(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"half of a new").unwrap();
            assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        let mut f = AtomicFile::create(&p).unwrap();
        f.write_all(b"new, ").unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new, whole");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
        // A commit that cannot rename (a non-empty directory is in the way) fails, naming the
        // target, and takes its temporary with it.
        let blocked = d.join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        let mut f = AtomicFile::create(&blocked).unwrap();
        f.write_all(b"bytes").unwrap();
        let e = f.commit().unwrap_err();
        assert!(e.to_string().contains("blocked"), "{e}");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            2,
            "model.gguf and blocked only"
        );
    }
}
