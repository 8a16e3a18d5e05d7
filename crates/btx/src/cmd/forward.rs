//! `btx forward`: the parity and debugging tool.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use btx_model::burn::prelude::Device;
use btx_model::compare::compare_all;
use btx_model::io::{read_all, write_tensors};
use btx_model::probe::probe;
use btx_model::{Model, TensorReader};

#[derive(clap::Args)]
pub struct Args {
    /// Model directory (config.json + model.safetensors or a sharded index).
    #[arg(long)]
    model: PathBuf,
    /// Safetensors file with an integer tensor `input_ids` of shape [B, T].
    #[arg(long)]
    input: PathBuf,
    /// Where to write the outputs (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Also compute gradients of the loss for every parameter (`grad.<HF name>`).
    #[arg(long)]
    backward: bool,
    /// Load-balancing coefficient in `total_loss` (MoE models).
    #[arg(long, default_value_t = 0.01)]
    lb_coef: f64,
    /// Compare the outputs with a reference file of the same names and print max diffs.
    #[arg(long)]
    compare: Option<PathBuf>,
}

pub fn run(a: Args, dev: &Device) -> Result<()> {
    let mut inputs = vec![a.input.as_path(), a.model.as_path()];
    inputs.extend(a.compare.as_deref());
    btx_core::outdir::check_not_an_input(&a.out, &inputs)?;
    let (shape, ids) = TensorReader::open(&a.input)
        .and_then(|r| r.read_i64("input_ids"))
        .with_context(|| format!("reading input_ids from {}", a.input.display()))?;
    if shape.len() != 2 {
        bail!("input_ids must be 2-D [B, T], found shape {shape:?}");
    }
    let (b, t) = (shape[0], shape[1]);
    if b == 0 || t < 2 {
        bail!(
            "{}: input_ids has shape {shape:?}; btx forward needs B >= 1 rows of T >= 2 tokens (the loss predicts each next token)\nhint: pass at least two tokens per row",
            a.input.display()
        );
    }
    let model = Model::load(&a.model, dev)
        .with_context(|| format!("loading model from {}", a.model.display()))?;
    model.cfg.check_positions(
        t,
        &format!("{}: input_ids of {t} tokens per row", a.input.display()),
        "cut the rows to the positions the model computes",
    )?;
    // Logits (and with --backward every activation) of all rows at once: refuse what cannot
    // fit before computing any of it.
    let bytes = if a.backward {
        btx_model::budget::train_step_bytes(&model.cfg, b, t, model.cfg.total_params())
    } else {
        btx_model::budget::eval_forward_bytes(&model.cfg, b, t)
    };
    if let Some(total) = btx_model::budget::machine_memory() {
        btx_model::budget::check_fits(
            bytes,
            total,
            &format!(
                "{}: a forward pass over {b} rows of {t} tokens",
                a.input.display()
            ),
            "pass fewer rows at a time",
        )?;
    }
    let vocab = model.cfg.vocab_size as i64;
    if let Some(bad) = ids.iter().find(|&&x| x < 0 || x >= vocab) {
        bail!(
            "{}: input_ids holds {bad}, outside the model's vocabulary 0..{vocab}\nhint: were the ids made with this model's tokenizer?",
            a.input.display()
        );
    }
    // The reference is read before --out is written: a missing one refuses the command whole.
    let reference = match &a.compare {
        Some(r) => Some(
            read_all(r)
                .with_context(|| format!("reading the --compare reference {}", r.display()))?,
        ),
        None => None,
    };
    let model = if a.backward {
        model.to_device(&dev.clone().autodiff())
    } else {
        model
    };
    let outs = probe(&model, &ids, b, t, a.backward, a.lb_coef);
    write_tensors(&a.out, &outs).with_context(|| format!("writing {}", a.out.display()))?;
    errln!("wrote {} tensors to {}", outs.len(), a.out.display());
    if let Some(reference) = reference {
        let (diffs, errors) = compare_all(&outs, &reference);
        outln!("{:<60} {:>12} {:>12}", "tensor", "max_abs", "rel_to_norm");
        for d in &diffs {
            outln!("{:<60} {:>12.3e} {:>12.3e}", d.name, d.max_abs, d.rel_norm);
        }
        for e in &errors {
            outln!("{e}");
        }
    }
    Ok(())
}
