//! The data stage: prepare the recipe's token data, or adopt a prepared directory.

use std::path::Path;

use anyhow::{bail, Context, Result};
use btx_core::outdir::Existing;
use btx_data::DataDir;

use super::{data_root, JobOutcome, StageCtx};
use crate::plan::StageId;
use crate::recipe::sections::DataSection;
use crate::run::manifest::Compute;

/// `[data] dir` is adopted (linked, every shard checked once: the stages after this one trust
/// it); `[data.prepare]` is prepared, with the tokenizer of stage `tokenizer_from` (an imported
/// seed) when it names one.
pub(super) fn data(
    ctx: &StageCtx,
    section: &DataSection,
    base: &Path,
    tokenizer_from: Option<&StageId>,
) -> Result<JobOutcome> {
    let root = data_root(ctx.run, ctx.stage);
    match (&section.dir, &section.prepare) {
        (Some(d), None) => {
            let d = if d.is_absolute() {
                d.clone()
            } else {
                base.join(d)
            };
            DataDir::open(&d)?
                .verify()
                .with_context(|| format!("[data] dir {}", d.display()))?;
            let _ = std::fs::remove_file(&root);
            std::os::unix::fs::symlink(&d, &root)
                .with_context(|| format!("linking {} to {}", root.display(), d.display()))?;
        }
        (None, Some(p)) => {
            let mut p = p.clone();
            if let Some(from) = tokenizer_from {
                p.tokenizer.path = Some(ctx.model_of(from)?.join("tokenizer.json"));
            }
            btx_data::prepare_verified(&p, base, &root, Existing::Replace)
                .context("preparing data")?;
        }
        _ => bail!("[data] needs exactly one of dir or prepare"),
    }
    let m = DataDir::open(&root)?.manifest;
    JobOutcome::done(Compute::default(), serde_json::to_value(&m.domains)?)
}
