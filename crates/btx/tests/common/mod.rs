//! What the CLI test binaries share: the btx binary with quiet logs, its output as text, and
//! the two outcomes a test asserts (success, or a clear refusal). Each test binary uses part
//! of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The smallest whole BTX experiment (~3 s): `testdata/recipes/tiny.toml`.
pub const TINY: &str = include_str!("../../../../testdata/recipes/tiny.toml");

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `btx --threads 2`, logging warnings only.
pub fn btx() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_btx"));
    c.env("BTX_LOG", "warn").args(["--threads", "2"]);
    c
}

/// stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `c`, which must succeed; returns its output.
pub fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "btx failed:\n{t}");
    t
}

/// A clear refusal: exit code 1, a message holding `needle`, a hint, no panic.
pub fn refused(c: &mut Command, needle: &str) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains(needle), "wanted {needle:?} in:\n{t}");
    assert!(t.contains("hint"), "no hint in:\n{t}");
    assert!(!t.contains("panicked"), "{t}");
    t
}
