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
    let tmp = temp_path(path)?;
    sweep_leftovers(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(OutputError::io(path, e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(OutputError::io(path, e));
    }
    if let Some(p) = path.parent() {
        fsync_dir(if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        });
    }
    Ok(())
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
}
