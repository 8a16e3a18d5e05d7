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
    #[error("{path}: {source}{}", io_hint(.source))]
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

/// What to do about the write errors a user can fix, as a hint line (empty for others).
pub fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EROFS) => "\nhint: the filesystem is read-only: choose an --out on a writable one",
        Some(libc::EACCES | libc::EPERM) => {
            "\nhint: no permission to write there: choose another --out, or fix its permissions"
        }
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "\nhint: the disk (or quota) is full: free space, or choose an --out elsewhere; nothing was left half-written"
        }
        Some(libc::EFBIG) => "\nhint: the file is larger than this process may write (ulimit -f)",
        _ => "",
    }
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
    /// Starts writing `target`, after checking it against `inputs` and `existing`. A target
    /// that is a symlink to a directory is written where the link points (the link stays).
    pub fn create(target: &Path, inputs: &[&Path], existing: Existing) -> Result<Self> {
        check_not_an_input(target, inputs)?;
        let target = follow_dir_link(target)?;
        Self::start(&target, existing, false)
    }

    /// [`OutDir::create`] for an output its writer owns outright (a pipeline stage's report,
    /// plots, model): whatever is at `target` is replaced, a symlink included, never written
    /// through (a link planted there must not send the write, and the removal of the old
    /// contents, somewhere else).
    pub fn create_owned(target: &Path, inputs: &[&Path]) -> Result<Self> {
        check_not_an_input(target, inputs)?;
        Self::start(target, Existing::Replace, true)
    }

    /// What [`OutDir::create`] would refuse, checked without writing anything: for a writer
    /// that has slow work to do before it creates its output (a fitted router's forward
    /// passes), so that a refusal comes first.
    pub fn precheck(target: &Path, inputs: &[&Path], existing: Existing) -> Result<()> {
        check_not_an_input(target, inputs)?;
        let target = follow_dir_link(target)?;
        check_target(&target, existing, false)
    }

    fn start(target: &Path, existing: Existing, owned: bool) -> Result<Self> {
        check_target(target, existing, owned)?;
        let name = target
            .file_name()
            .ok_or_else(|| OutputError::Refused {
                path: target.to_path_buf(),
                msg: "has no directory name".into(),
                hint: "name a directory, e.g. --out out/model".into(),
            })?
            .to_string_lossy()
            .to_string();
        let staging = fresh_beside(target, &name, "partial")?;
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
        move_into_place(&self.staging, &self.target)?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

fn check_target(target: &Path, existing: Existing, owned: bool) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(target) {
        if !m.is_dir() && !owned {
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
    Ok(())
}

/// A new empty hidden directory `.NAME.KIND-HOST-PID` beside `target` (its parent created,
/// what killed writers of `target` left there swept first).
fn fresh_beside(target: &Path, name: &str, kind: &str) -> Result<PathBuf> {
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| OutputError::io(&parent, e))?;
    sweep_leftovers(target);
    let p = parent.join(leftover_name(name, kind));
    if p.exists() {
        fs::remove_dir_all(&p).map_err(|e| OutputError::io(&p, e))?;
    }
    fs::create_dir(&p).map_err(|e| OutputError::io(&p, e))?;
    Ok(p)
}

/// A hidden working directory beside `target` (`.NAME.scratch-HOST-PID`), removed when dropped
/// (and by [`sweep_leftovers`] when its writer was killed): for intermediate files a writer
/// needs on the output's filesystem and never leaves behind.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn beside(target: &Path) -> Result<Self> {
        let name = target
            .file_name()
            .map_or_else(|| "out".into(), |n| n.to_string_lossy().to_string());
        Ok(Self(fresh_beside(target, &name, "scratch")?))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Moves the complete directory `from` to `to` (same filesystem), replacing what `to` holds:
/// swapped atomically where the filesystem can (renameat2 RENAME_EXCHANGE), else renamed aside
/// first; the old contents are removed afterwards. On failure `to` is as it was.
pub fn move_into_place(from: &Path, to: &Path) -> Result<()> {
    let occupied = fs::symlink_metadata(to).is_ok();
    if occupied && !is_empty_dir(to) {
        if exchange(from, to).is_ok() {
            // `from` now holds the old contents (a directory, or a file or link swapped out).
            remove_any(from);
        } else {
            let name = to.file_name().unwrap_or_default().to_string_lossy();
            let old = from.with_file_name(leftover_name(&name, "old"));
            fs::rename(to, &old).map_err(|e| OutputError::io(to, e))?;
            if let Err(e) = fs::rename(from, to) {
                let _ = fs::rename(&old, to);
                return Err(OutputError::io(to, e));
            }
            remove_any(&old);
        }
    } else {
        if occupied {
            // An empty directory, or a link to one: removed, never followed.
            if fs::symlink_metadata(to).is_ok_and(|m| m.is_dir()) {
                fs::remove_dir(to)
            } else {
                fs::remove_file(to)
            }
            .map_err(|e| OutputError::io(to, e))?;
        }
        fs::rename(from, to).map_err(|e| OutputError::io(to, e))?;
    }
    if let Some(p) = to.parent() {
        fsync_dir(if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        });
    }
    Ok(())
}

/// Removes a directory tree, a file or a link (the link itself), best effort.
fn remove_any(p: &Path) {
    let _ = if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
}

impl Drop for OutDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// This host's name as it appears in leftover names (characters other than letters, digits
/// and `-` become `_`, so the name parses back unambiguously).
pub fn host_tag() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let t: String = h
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() {
        "localhost".into()
    } else {
        t
    }
}

/// The hidden name this process uses beside `name` for `kind` (`partial`: a directory being
/// written; `old`: the replaced one; `tmp`: a file being written; `scratch`: a
/// [`ScratchDir`]): `.NAME.KIND-HOST-PID`.
pub fn leftover_name(name: &str, kind: &str) -> String {
    format!(".{name}.{kind}-{}-{}", host_tag(), std::process::id())
}

/// Whether `pid` names a live process on this host (EPERM: it exists, under another user).
fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 only asks whether the process exists.
    let rc = unsafe { libc::kill(pid as i32, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes what killed writers of `target` left beside it: `.NAME.{partial,old,tmp,scratch}-HOST-PID`
/// of this host whose pid is no longer alive (and the older `.NAME.partial-PID` spelling, which
/// had no host: taken as this host's). Another host's leftovers, and live writers', are kept:
/// on a shared filesystem they may be another machine's work in progress. Best effort.
pub fn sweep_leftovers(target: &Path) {
    let (Some(name), Some(parent)) = (target.file_name(), target.parent()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let host = host_tag();
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let fname = e.file_name().to_string_lossy().to_string();
        let Some(rest) = fname.strip_prefix(&prefix) else {
            continue;
        };
        let Some((kind, tail)) = rest.split_once('-') else {
            continue;
        };
        if !matches!(kind, "partial" | "old" | "tmp" | "scratch") {
            continue;
        }
        // `HOST-PID` (host may itself hold dashes), or a bare `PID`.
        let (h, pid) = match tail.rsplit_once('-') {
            Some((h, p)) => (h, p),
            None => (host.as_str(), tail),
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if h != host || pid_alive(pid) {
            continue;
        }
        let p = e.path();
        let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        if removed.is_ok() {
            tracing::info!("removed {} (left by a writer that was killed)", p.display());
        }
    }
}

/// `p` itself, or where it points when it is a symlink to a directory (writing through the
/// link, not over it); a link to nothing is refused by name.
fn follow_dir_link(p: &Path) -> Result<PathBuf> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => match fs::metadata(p) {
            Ok(t) if t.is_dir() => fs::canonicalize(p).map_err(|e| OutputError::io(p, e)),
            Ok(_) => Err(OutputError::Refused {
                path: p.to_path_buf(),
                msg: "is a symlink to something that is not a directory".into(),
                hint: "choose another --out".into(),
            }),
            Err(_) => Err(OutputError::Refused {
                path: p.to_path_buf(),
                msg: format!(
                    "is a symlink to {}, which does not exist",
                    fs::read_link(p).unwrap_or_default().display()
                ),
                hint: "create the directory it points to, or choose another --out".into(),
            }),
        },
        _ => Ok(p.to_path_buf()),
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

    /// A killed writer's staging directory (this host, dead pid) goes when the next writer of
    /// the same target starts; a live writer's, another host's and other targets' stay.
    #[test]
    fn dead_writers_leftovers_are_swept_live_ones_kept() {
        let d = btx_testkit::Scratch::new("sweep");
        // A pid that is surely dead: a child that has been reaped.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let dead = c.id();
        c.wait().unwrap();
        let me = std::process::id();
        let host = host_tag();
        let mk = |n: &str| {
            fs::create_dir_all(d.join(n)).unwrap();
            fs::write(d.join(n).join("model.safetensors"), b"half").unwrap();
        };
        let dead_new = format!(".out.partial-{host}-{dead}");
        let dead_old = format!(".out.partial-{dead}");
        let dead_tmp = format!(".out.tmp-{host}-{dead}");
        let live = format!(".out.partial-{host}-{me}");
        let other_host = format!(".out.partial-elsewhere-{dead}");
        let other_target = format!(".other.partial-{host}-{dead}");
        // pid 1 is always alive.
        let alive = format!(".out.partial-{host}-1");
        for n in [
            &dead_new,
            &dead_old,
            &live,
            &other_host,
            &other_target,
            &alive,
        ] {
            mk(n);
        }
        fs::write(d.join(&dead_tmp), b"x").unwrap();
        let w = OutDir::create(&d.join("out"), &[], Existing::Refuse).unwrap();
        for n in [&dead_new, &dead_old, &dead_tmp] {
            assert!(!d.join(n).exists(), "{n} should be swept");
        }
        // Our own pid's name is the staging directory itself, made afresh.
        assert_eq!(w.path(), d.join(&live));
        for n in [&other_host, &other_target, &alive] {
            assert!(d.join(n).exists(), "{n} should be kept");
        }
        w.commit().unwrap();
    }

    /// `--out` that is a symlink to a directory is written through the link; a dangling link
    /// is refused with what it points to.
    #[test]
    fn a_symlinked_directory_is_written_through() {
        let d = btx_testkit::Scratch::new("outlink");
        fs::create_dir_all(d.join("real")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("link")).unwrap();
        let w = OutDir::create(&d.join("link"), &[], Existing::Refuse).unwrap();
        fs::write(w.path().join("a"), b"1").unwrap();
        w.commit().unwrap();
        assert!(fs::symlink_metadata(d.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("real/a")).unwrap(), b"1");
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
        let e = OutDir::create(&d.join("dangling"), &[], Existing::Refuse)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist") && e.contains("nowhere"), "{e}");
    }
}
