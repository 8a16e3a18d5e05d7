//! One writer per run directory and per stage directory: an advisory `flock` on `DIR/.lock`,
//! held for the life of the process (the kernel drops it when the process dies, however it
//! dies), with the holder (what, host, pid, since) written into the file for the message a
//! second writer gets. `btx status` and `btx cancel` ask the lock, not a pid file, whether a
//! stage is alive.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const LOCK: &str = ".lock";

/// Who holds a lock (the file's contents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub what: String,
    pub host: String,
    pub pid: u32,
    pub since_unix: u64,
}

impl Holder {
    pub fn describe(&self) -> String {
        let ago = crate::run::manifest::now_unix().saturating_sub(self.since_unix);
        format!(
            "{} (pid {} on {}, for {ago}s)",
            self.what, self.pid, self.host
        )
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// An exclusive lock on a directory, released when dropped or when the process ends.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

fn try_flock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        // A filesystem without locks (some network mounts): run unguarded rather than not at
        // all, and say so.
        Some(libc::ENOLCK | libc::EOPNOTSUPP) => {
            tracing::warn!(
                "this filesystem does not support locks ({e}): nothing stops a second writer in this directory"
            );
            Ok(true)
        }
        _ => Err(e),
    }
}

fn read_holder(f: &mut File) -> Option<Holder> {
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

impl DirLock {
    /// Takes the lock on `dir` for `what` (e.g. "btx run", "stage expert:math"), or fails at
    /// once naming who holds it.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // `holder` probes by taking the lock for an instant (`btx status`): retry briefly so
        // that a probe is never mistaken for a second writer.
        let mut got = false;
        for attempt in 0..10 {
            got = try_flock(&f).with_context(|| format!("locking {}", path.display()))?;
            if got {
                break;
            }
            if attempt < 9 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        if !got {
            let who = read_holder(&mut f)
                .map(|h| h.describe())
                .unwrap_or_else(|| "another process".into());
            bail!(
                "{} is in use by {who}\nhint: one process writes a run or stage directory at a time; wait for it, stop it with `btx cancel`, or choose another --out",
                dir.display()
            );
        }
        let h = Holder {
            what: what.into(),
            host: hostname(),
            pid: std::process::id(),
            since_unix: crate::run::manifest::now_unix(),
        };
        f.set_len(0)?;
        f.seek(SeekFrom::Start(0))?;
        f.write_all(serde_json::to_string(&h)?.as_bytes())?;
        Ok(Self { _file: f })
    }
}

/// The live holder of `dir`'s lock, if any (probes without keeping the lock).
pub fn holder(dir: &Path) -> Option<Holder> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(LOCK))
        .ok()?;
    match try_flock(&f) {
        // Free: nobody is there (our probe's lock goes with `f`).
        Ok(true) => None,
        Ok(false) => Some(read_holder(&mut f).unwrap_or(Holder {
            what: "unknown".into(),
            host: String::new(),
            pid: 0,
            since_unix: 0,
        })),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_and_the_lock_ends_with_it() {
        let d = btx_testkit::Scratch::new("lock");
        let a = DirLock::acquire(&d, "btx run").unwrap();
        // flock locks belong to open file descriptions: a second open in this process
        // conflicts just as another process would.
        let e = DirLock::acquire(&d, "btx run").unwrap_err().to_string();
        assert!(
            e.contains("in use by btx run") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        let h = holder(&d).unwrap();
        assert_eq!(h.pid, std::process::id());
        drop(a);
        assert!(holder(&d).is_none());
        DirLock::acquire(&d, "btx run").unwrap();
    }
}
