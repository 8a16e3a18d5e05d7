//! Test-only helpers shared by the integration tests of the btx crates.

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A scratch directory under the system temp dir, named `btx-<tag>-<pid>` so a failing test's
/// files are easy to find. Removed when dropped, unless the test is panicking (kept, and its
/// path printed, so a failure can be inspected) or `BTX_KEEP_TEST_DIRS` is set. Without the
/// removal every CI run left ~0.5 GB of run directories behind.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// An empty directory (any leftover of an earlier run with the same pid is removed).
    pub fn new(tag: &str) -> Self {
        let s = Self::absent(tag);
        std::fs::create_dir_all(&s.path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", s.path.display()));
        s
    }

    /// A path that does not exist yet, for commands that must create their own directory
    /// (run directories refuse to start in an existing one without `--resume`).
    pub fn absent(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("btx-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("BTX_KEEP_TEST_DIRS").is_some() {
            eprintln!("kept test directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

impl Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for Scratch {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

/// The largest absolute difference between two equally long slices (what parity tests print).
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared slices differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Writes an F32 safetensors file of `(name, shape, values)` as given, NaN and Inf included:
/// btx's own writers refuse non-finite values, and tests of what a reader does with a file
/// made elsewhere need one that holds them.
pub fn write_raw_f32_safetensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let mut header = String::from("{");
    let mut off = 0usize;
    for (i, (name, shape, data)) in tensors.iter().enumerate() {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            dims.join(","),
            off + 4 * data.len()
        ));
        off += 4 * data.len();
    }
    header.push('}');
    while !(header.len() + 8).is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    for (_, _, data) in tensors {
        for x in data {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_and_kept_on_panic() {
        let kept;
        {
            let s = Scratch::new("testkit-drop");
            std::fs::write(s.join("f"), b"x").unwrap();
            kept = s.path().to_path_buf();
            assert!(kept.join("f").exists());
        }
        assert!(!kept.exists(), "dropped scratch dir should be gone");

        let panicked = std::panic::catch_unwind(|| {
            let s = Scratch::new("testkit-panic");
            std::fs::write(s.join("f"), b"x").unwrap();
            panic!("test failure");
        });
        assert!(panicked.is_err());
        let left = std::env::temp_dir().join(format!("btx-testkit-panic-{}", std::process::id()));
        assert!(left.join("f").exists(), "a failing test's dir is kept");
        std::fs::remove_dir_all(left).unwrap();

        let a = Scratch::absent("testkit-absent");
        assert!(!a.exists());
    }
}
