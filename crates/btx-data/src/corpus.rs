//! Corpus readers: text files, directories (recursive), glob patterns and JSONL, with errors
//! that name the file and line. Every document remembers where it came from.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{file_err, io_err, DataError, Result};

/// How a text file is cut into documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DocSplit {
    /// The whole file is one document (source code, articles).
    #[default]
    File,
    /// Paragraphs separated by one or more blank lines.
    BlankLine,
    /// Every non-empty line.
    Line,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Text,
    /// One JSON object per line; the document is the string in `field`.
    Jsonl,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub text: String,
    /// `path` or `path:line`.
    pub origin: String,
}

/// Expands files, directories (every regular file below, sorted) and glob patterns, relative to
/// `base`. A pattern or path that matches nothing is an error naming it.
pub fn expand_paths(patterns: &[String], base: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for pat in patterns {
        let full = if Path::new(pat).is_absolute() {
            PathBuf::from(pat)
        } else {
            base.join(pat)
        };
        let before = out.len();
        if pat.contains(['*', '?', '[']) {
            let s = full.to_string_lossy().to_string();
            let entries =
                glob::glob(&s).map_err(|e| DataError::Invalid(format!("bad glob {pat:?}: {e}")))?;
            let mut found: Vec<PathBuf> = entries.flatten().filter(|p| p.is_file()).collect();
            found.sort();
            out.extend(found);
        } else if full.is_dir() {
            walk(&full, &mut out)?;
        } else if full.is_file() {
            out.push(full.clone());
        } else {
            return Err(file_err(
                &full,
                "no such file or directory\nhint: relative paths start at the config file's directory (on the command line: the current one)",
            ));
        }
        if out.len() == before {
            return Err(file_err(
                &full,
                "matches no files\nhint: relative paths and globs start at the config file's directory (on the command line: the current one)",
            ));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads a file as UTF-8; invalid bytes are an error with the line they are on.
pub fn read_utf8(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let b = e.as_bytes();
        let line = b[..at].iter().filter(|&&c| c == b'\n').count() + 1;
        DataError::At {
            path: path.to_path_buf(),
            line,
            msg: format!(
                "invalid UTF-8 (byte 0x{:02x} at offset {at})\nhint: convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`",
                b[at]
            ),
        }
    })
}

/// Documents of one text file.
pub fn text_docs(path: &Path, split: DocSplit) -> Result<Vec<Doc>> {
    let text = read_utf8(path)?;
    let origin = path.display().to_string();
    let mut docs = vec![];
    match split {
        DocSplit::File => {
            if !text.trim().is_empty() {
                docs.push(Doc {
                    text: text.trim_end().to_string(),
                    origin,
                });
            }
        }
        DocSplit::Line => {
            for (i, l) in text.lines().enumerate() {
                if !l.trim().is_empty() {
                    docs.push(Doc {
                        text: l.to_string(),
                        origin: format!("{origin}:{}", i + 1),
                    });
                }
            }
        }
        DocSplit::BlankLine => {
            let mut cur: Vec<&str> = vec![];
            let mut start = 0;
            for (i, l) in text.lines().chain(std::iter::once("")).enumerate() {
                if l.trim().is_empty() {
                    if !cur.is_empty() {
                        docs.push(Doc {
                            text: cur.join("\n"),
                            origin: format!("{origin}:{}", start + 1),
                        });
                        cur.clear();
                    }
                } else {
                    if cur.is_empty() {
                        start = i;
                    }
                    cur.push(l);
                }
            }
        }
    }
    Ok(docs)
}

/// Documents of one JSONL file: the string in `field` of each line's object.
pub fn jsonl_docs(path: &Path, field: &str) -> Result<Vec<Doc>> {
    let text = read_utf8(path)?;
    let mut docs = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| DataError::At {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| at(format!("not valid JSON: {e}")))?;
        let t = v.get(field).ok_or_else(|| {
            let keys: Vec<String> = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            at(format!("no field {field:?} (fields: {keys:?})\nhint: set `field` to the key that holds the text"))
        })?;
        let t = t
            .as_str()
            .ok_or_else(|| at(format!("field {field:?} is not a string")))?;
        if !t.trim().is_empty() {
            docs.push(Doc {
                text: t.to_string(),
                origin: format!("{}:{}", path.display(), i + 1),
            });
        }
    }
    Ok(docs)
}

/// All documents of a list of paths in one format.
pub fn read_docs(
    paths: &[String],
    base: &Path,
    format: Format,
    split: DocSplit,
    field: &str,
) -> Result<Vec<Doc>> {
    let files = expand_paths(paths, base)?;
    let mut docs = vec![];
    for f in &files {
        match format {
            Format::Text => docs.extend(text_docs(f, split)?),
            Format::Jsonl => docs.extend(jsonl_docs(f, field)?),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> btx_testkit::Scratch {
        btx_testkit::Scratch::new(&format!("corpus-{tag}"))
    }

    #[test]
    fn splits_and_globs() {
        let d = tmp("split");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("a.txt"), "one\ntwo\n\n\nthree\n").unwrap();
        std::fs::write(d.join("sub/b.txt"), "four\n").unwrap();
        std::fs::write(d.join("c.md"), "five").unwrap();
        let docs = read_docs(&["*.txt".into()], &d, Format::Text, DocSplit::BlankLine, "").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].text, "one\ntwo");
        assert!(docs[1].origin.ends_with("a.txt:5"), "{}", docs[1].origin);
        let all = read_docs(&[".".into()], &d, Format::Text, DocSplit::Line, "").unwrap();
        assert_eq!(all.len(), 5);
        let e = read_docs(&["*.nope".into()], &d, Format::Text, DocSplit::File, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("matches no files"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = tmp("err");
        std::fs::write(d.join("bad.txt"), b"fine\nalso fine\nbad \xff byte\n").unwrap();
        let e = read_docs(&["bad.txt".into()], &d, Format::Text, DocSplit::File, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.txt:3") && e.contains("UTF-8"), "{e}");
        std::fs::write(d.join("x.jsonl"), "{\"text\": \"a\"}\n{\"body\": \"b\"}\n").unwrap();
        let e = read_docs(
            &["x.jsonl".into()],
            &d,
            Format::Jsonl,
            DocSplit::File,
            "text",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.jsonl:2") && e.contains("\"body\""), "{e}");
        std::fs::write(d.join("y.jsonl"), "{\"text\": \"a\"}\nnot json\n").unwrap();
        let e = read_docs(
            &["y.jsonl".into()],
            &d,
            Format::Jsonl,
            DocSplit::File,
            "text",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("y.jsonl:2") && e.contains("JSON"), "{e}");
    }
}
