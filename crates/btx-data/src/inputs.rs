//! The files a `[data.prepare]` reads, checked before anything runs: a recipe or `btx train`
//! that names a missing corpus, task file or tokenizer is refused up front, not when its data
//! stage starts (after the seed trained, or after `--out` was written).

use std::path::{Path, PathBuf};

use crate::corpus::expand_paths;
use crate::error::{file_err, Result};
use crate::prepare::PrepareConfig;

fn at(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

impl PrepareConfig {
    /// Every path the prepare will read exists: each domain's files, directories and globs
    /// (each must match a file), its `tasks_file`, and the tokenizer's `path`. `base` resolves
    /// relative paths, as [`crate::prepare`] does. Reads no file's contents.
    pub fn check_inputs(&self, base: &Path) -> Result<()> {
        if let Some(t) = &self.tokenizer.path {
            let p = at(base, t);
            if !p.is_file() {
                return Err(file_err(
                    &p,
                    "[tokenizer] path: no such file\nhint: name a tokenizer.json (e.g. the seed model's)",
                ));
            }
        }
        for d in &self.domains {
            if !d.paths.is_empty() {
                expand_paths(&d.paths, base)?;
            }
            if let Some(f) = &d.tasks_file {
                let p = at(base, f);
                if !p.is_file() {
                    return Err(file_err(
                        &p,
                        format!(
                            "tasks_file of domain {:?}: no such file\nhint: paths are relative to the config file",
                            d.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_corpora_task_files_and_tokenizers_are_named() {
        let d = btx_testkit::Scratch::new("inputs");
        std::fs::write(d.join("a.txt"), "one\n").unwrap();
        let cfg = |domain: &str, tokenizer: &str| -> PrepareConfig {
            serde_json::from_str(&format!(
                r#"{{"domains": [{{"name": "x", "paths": ["a.txt"]{domain}}}]{tokenizer}}}"#
            ))
            .unwrap()
        };
        cfg("", "").check_inputs(d.path()).unwrap();
        for (c, want) in [
            (cfg(r#", "tasks_file": "t.jsonl""#, ""), "t.jsonl"),
            (
                cfg("", r#", "tokenizer": {"path": "tok.json"}"#),
                "tok.json",
            ),
        ] {
            let e = c.check_inputs(d.path()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("no such file"), "{e}");
        }
        let c: PrepareConfig =
            serde_json::from_str(r#"{"domains": [{"name": "x", "paths": ["nope/*.txt"]}]}"#)
                .unwrap();
        let e = c.check_inputs(d.path()).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
