//! `metrics.jsonl` (one JSON object per optimizer step) and the progress display: an indicatif
//! bar on a terminal, plain log lines otherwise.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::error::{io_err, TrainError};

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    /// The loss of the last record kept when the log was opened (the step a resume starts at).
    resumed_loss: Option<f64>,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping records of steps after `keep_upto` (they were
    /// written after the checkpoint a resume starts from and will be produced again); the
    /// rewrite is atomic, so a kill during it loses no record.
    pub fn open(path: &Path, keep_upto: usize) -> Result<Self, TrainError> {
        let mut resumed_loss = None;
        if path.exists() {
            let f = File::open(path).map_err(|e| io_err(path, e))?;
            let kept: Vec<(String, Value)> = BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    let v = serde_json::from_str::<Value>(&l).ok()?;
                    let step = v.get("step").and_then(|s| s.as_u64())? as usize;
                    (step <= keep_upto).then_some((l, v))
                })
                .collect();
            resumed_loss = kept
                .iter()
                .rev()
                .find(|(_, v)| v["skipped"] != true)
                .filter(|(_, v)| v["step"].as_u64() == Some(keep_upto as u64))
                .and_then(|(_, v)| v["loss"].as_f64());
            let mut text = kept
                .iter()
                .map(|(l, _)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            btx_core::atomic::write_file(path, text.as_bytes())?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            resumed_loss,
        })
    }

    /// The loss recorded for the step the log was kept up to, if a record of it survived.
    pub fn resumed_loss(&self) -> Option<f64> {
        self.resumed_loss
    }

    pub fn write(&mut self, record: &Value) -> Result<(), TrainError> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io_err(&self.path, e))
    }
}

/// Step progress: a bar with step, loss, tokens/s and ETA when stderr is a terminal; otherwise
/// nothing here (the trainer logs a line every `log_every` steps).
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(label: &str, total: usize, start: usize, enabled: bool) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] step {pos}/{len} {msg} ETA {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.set_position(start as u64);
        bar.enable_steady_tick(Duration::from_millis(500));
        Self { bar: Some(bar) }
    }

    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    pub fn update(&self, step: usize, loss: f64, tok_s: f64) {
        if let Some(b) = &self.bar {
            b.set_position(step as u64);
            b.set_message(format!("loss {loss:.4} {tok_s:.0} tok/s"));
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
