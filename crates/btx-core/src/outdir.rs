//! Output directories that appear whole or not at all, and never on top of an input.
//!
//! Every command that writes a model or data directory goes through [`OutDir`]: it checks the
//! target against the command's inputs (a target that is, contains or lies inside an input is
//! refused: the inputs are memory-mapped, and writing over them destroyed them with SIGBUS), refuses
//! an existing non-empty target unless asked to replace it, writes into a hidden staging directory
//! beside the target, fsyncs it and renames it into place. A failure at any point (a bad input
//! found half-way, a full disk, a panic) drops the staging directory and leaves the target as it
//! was.

use std::fs;
use std::path::{Component, Path, PathBuf};

/// Why an output directory could not be made: the target, what is wrong, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}\nhint: {hint}")]
    Refused {
        path: PathBuf,
        msg: String,
        hint: String,
    },
}

impl OutputError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        OutputError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = OutputError> = std::result::Result<T, E>;

/// What to do with a target that already exists and is not empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Existing {
    /// Refuse with an error naming the directory (the default: nothing is overwritten silently).
    #[default]
    Refuse,
    /// Replace it, atomically: the old contents stay until the new ones are complete.
    Replace,
}

impl Existing {
    pub fn replace_if(force: bool) -> Self {
        if force {
            Existing::Replace
        } else {
            Existing::Refuse
        }
    }
}

/// A directory being written: files go into [`OutDir::path`]; [`OutDir::commit`] puts them at the
/// target. Dropped without a commit, it removes what it wrote.
#[derive(Debug)]
pub struct OutDir {
    target: PathBuf,
    staging: PathBuf,
    committed: bool,
}

/// `p` made absolute and free of `.`/`..` and symlinks as far as it exists (the part that does not
/// exist yet is appended lexically), so two spellings of one place compare equal.
pub fn resolve(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    // Canonicalize the longest existing prefix, keep the rest as written.
    let mut rest = vec![];
    let mut head = clean.clone();
    loop {
        if let Ok(c) = fs::canonicalize(&head) {
            let mut out = c;
            for r in rest.iter().rev() {
                out.push(r);
            }
            return out;
        }
        match (head.file_name().map(|n| n.to_os_string()), head.parent()) {
            (Some(n), Some(parent)) => {
                rest.push(n);
                head = parent.to_path_buf();
            }
            _ => return clean,
        }
    }
}

/// Refuses a target that is, contains or lies inside one of `inputs` (files or directories).
pub fn check_not_an_input(target: &Path, inputs: &[&Path]) -> Result<()> {
    let t = resolve(target);
    for input in inputs {
        let i = resolve(input);
        let how = if t == i {
            "is"
        } else if t.starts_with(&i) {
            "lies inside"
        } else if i.starts_with(&t) {
            "contains"
        } else {
            continue;
        };
        return Err(OutputError::Refused {
            path: target.to_path_buf(),
            msg: format!("the output {how} the input {}", input.display()),
            hint: "choose an --out that is none of the inputs, nor inside or above one".into(),
        });
    }
    Ok(())
}

fn is_empty_dir(p: &Path) -> bool {
    fs::read_dir(p).is_ok_and(|mut d| d.next().is_none())
}

impl OutDir {
    /// Starts writing `target`, after checking it against `inputs` and `existing`.
    pub fn create(target: &Path, inputs: &[&Path], existing: Existing) -> Result<Self> {
        check_not_an_input(target, inputs)?;
        let meta = fs::symlink_metadata(target);
        if let Ok(m) = &meta {
            if !m.is_dir() {
                return Err(OutputError::Refused {
                    path: target.to_path_buf(),
                    msg: "exists and is not a directory".into(),
                    hint: "choose another --out".into(),
                });
            }
            if existing == Existing::Refuse && !is_empty_dir(target) {
                return Err(OutputError::Refused {
                    path: target.to_path_buf(),
                    msg: "exists and is not empty".into(),
                    hint: "choose a new --out, or pass --force to replace it (the old contents stay until the new ones are complete)".into(),
                });
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| OutputError::Refused {
                path: target.to_path_buf(),
                msg: "has no directory name".into(),
                hint: "name a directory, e.g. --out out/model".into(),
            })?
            .to_string_lossy()
            .to_string();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| OutputError::io(&parent, e))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(|e| OutputError::io(&staging, e))?;
        }
        fs::create_dir(&staging).map_err(|e| OutputError::io(&staging, e))?;
        Ok(Self {
            target: target.to_path_buf(),
            staging,
            committed: false,
        })
    }

    /// Where to write the files (a hidden directory beside the target).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Fsyncs everything written and moves it to the target; an existing target is swapped out
    /// atomically where the filesystem can (renameat2 RENAME_EXCHANGE), then removed.
    pub fn commit(mut self) -> Result<PathBuf> {
        sync_tree(&self.staging)?;
        let parent = self.staging.parent().map(Path::to_path_buf);
        let occupied = fs::symlink_metadata(&self.target).is_ok();
        if occupied && !is_empty_dir(&self.target) {
            if exchange(&self.staging, &self.target).is_ok() {
                // The staging path now holds the old contents.
                self.committed = true;
                let _ = fs::remove_dir_all(&self.staging);
            } else {
                let old = self.staging.with_extension("old");
                fs::rename(&self.target, &old).map_err(|e| OutputError::io(&self.target, e))?;
                if let Err(e) = fs::rename(&self.staging, &self.target) {
                    let _ = fs::rename(&old, &self.target);
                    return Err(OutputError::io(&self.target, e));
                }
                self.committed = true;
                let _ = fs::remove_dir_all(&old);
            }
        } else {
            if occupied {
                fs::remove_dir(&self.target).map_err(|e| OutputError::io(&self.target, e))?;
            }
            fs::rename(&self.staging, &self.target)
                .map_err(|e| OutputError::io(&self.target, e))?;
            self.committed = true;
        }
        if let Some(p) = parent {
            fsync_dir(&p);
        }
        Ok(self.target.clone())
    }
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Fsyncs every file and directory under `dir` (writers that fsync themselves make this cheap).
pub fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(|e| OutputError::io(dir, e))? {
        let e = e.map_err(|e| OutputError::io(dir, e))?;
        let p = e.path();
        let ft = e.file_type().map_err(|e| OutputError::io(&p, e))?;
        if ft.is_dir() {
            sync_tree(&p)?;
        } else if ft.is_file() {
            fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| OutputError::io(&p, e))?;
        }
    }
    fsync_dir(dir);
    Ok(())
}

/// Best effort: some filesystems refuse to fsync a directory; the data files are synced already.
pub fn fsync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; the call only renames.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_inputs_and_existing_dirs_and_replaces_atomically() {
        let d = btx_testkit::Scratch::new("outdir");
        let input = d.join("in");
        fs::create_dir_all(input.join("sub")).unwrap();
        fs::write(input.join("model.safetensors"), b"keep").unwrap();
        for t in [
            input.clone(),
            input.join("sub"),
            d.to_path_buf(),
            d.join("in/../in"),
        ] {
            let e = OutDir::create(&t, &[&input], Existing::Replace).unwrap_err();
            assert!(e.to_string().contains("input"), "{t:?}: {e}");
        }
        assert_eq!(fs::read(input.join("model.safetensors")).unwrap(), b"keep");

        let out = d.join("out");
        let w = OutDir::create(&out, &[&input], Existing::Refuse).unwrap();
        fs::write(w.path().join("a"), b"1").unwrap();
        drop(w); // no commit: nothing appears, nothing is left behind
        assert!(!out.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);

        let w = OutDir::create(&out, &[&input], Existing::Refuse).unwrap();
        fs::write(w.path().join("a"), b"1").unwrap();
        w.commit().unwrap();
        assert_eq!(fs::read(out.join("a")).unwrap(), b"1");

        let e = OutDir::create(&out, &[&input], Existing::Refuse).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");

        let w = OutDir::create(&out, &[&input], Existing::Replace).unwrap();
        fs::write(w.path().join("b"), b"2").unwrap();
        w.commit().unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(fs::read(out.join("b")).unwrap(), b"2");
        // Only `in` and `out` remain: no staging or old directories.
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }
}
