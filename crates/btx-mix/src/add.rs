//! Adding an expert to a BTX model (FlexOlmo / Nexus; beyond the paper): a dense model branched
//! from the same seed becomes one more expert of every layer — its FFN a new MoE expert, and
//! for a model with attention experts its attention a new attention expert — with a router row
//! of its own per layer. Every weight the MoE had is copied bit for bit (routers included: the
//! new rows are appended), so the experts already there compute what they computed, and with
//! top-k routing a token whose new logit stays below its k-th largest is routed exactly as
//! before. Attention experts (BAM) are mixed softly over all of them: there the new attention
//! expert takes a small weight on every token (its fitted logit sits a margin below the
//! smallest of the others on their domains), so other domains change slightly, not exactly
//! nothing.
//!
//! Refused before anything is written: a dense model that is not a branch of the MoE's seed
//! (config, tokenizer, or shared weights — embeddings, norms, non-expert attention — further
//! from the MoE's than `max_distance`, relative), an expert name the MoE already has, routing
//! where one more expert changes every token (switch capacity, soft and sampled routing), and
//! split or blended MoEs (their experts are chunks of FFNs).

use std::path::{Path, PathBuf};

use btx_core::outdir::{Existing, OutDir};
use btx_model::io::{write_model_checkpoint, OutDtype, SaveOpts};
use btx_model::names::{attn_name, ffn_name, param_kind, param_specs, ParamKind};
use btx_model::{AttnExpertsConfig, ModelConfig, MoeConfig, Routing};
use serde::{Deserialize, Serialize};

use crate::error::{MixError, Result};
pub use crate::fit::NewRows;
use crate::source::{
    config_difference, copy_tokenizer, f32_at, into_model_err, mean_into, write_json, Source,
};

/// A checked addition: the two models open, the output's config, the measured distance.
pub struct AddPlan {
    moe: Source,
    dense: Source,
    /// The MoE with one more expert (and attention expert), named `name`.
    pub cfg: ModelConfig,
    pub name: String,
    /// Relative distance of the dense model's shared weights from the MoE's:
    /// ||dense − moe|| / ||moe|| over every tensor outside the experts and routers.
    pub distance: f64,
}

impl AddPlan {
    /// Opens and checks `moe` and `dense` (see the module comment); `max_distance` bounds
    /// [`AddPlan::distance`].
    pub fn new(moe: &Path, dense: &Path, name: &str, max_distance: f64) -> Result<Self> {
        let refuse = |msg: String, hint: &str| MixError::Incompatible {
            msg,
            hint: hint.into(),
        };
        let moe_src = Source::open(moe)?;
        let dense_src = Source::open(dense)?;
        let m = &moe_src.cfg;
        let Some(moe_cfg) = &m.moe else {
            return Err(refuse(
                format!("{} is a dense model, not a MoE", moe.display()),
                "give a BTX model (btx mix or a finetuned one) as --model and the dense expert as --expert",
            ));
        };
        if dense_src.cfg.is_moe() || dense_src.cfg.attn_experts.is_some() {
            return Err(refuse(
                format!(
                    "{} is a MoE; the new expert must be a dense model",
                    dense.display()
                ),
                "give a dense model branched from the MoE's seed as --expert",
            ));
        }
        if moe_cfg.routing != Routing::TopK {
            return Err(refuse(
                format!(
                    "{} routes with {}: one more expert changes every token's routing (switch capacities are shared out over the experts; soft and sampled routing weigh every expert)",
                    moe.display(),
                    moe_cfg.routing.name()
                ),
                "add experts to top-k models (btx mix --routing top-k)",
            ));
        }
        let labels = &m.expert_labels;
        if labels.len() != moe_cfg.num_experts {
            return Err(refuse(
                format!(
                    "{} names no experts (btx_experts in config.json)",
                    moe.display()
                ),
                "add experts to models made by btx mix with --domains, or by a recipe",
            ));
        }
        let mut unique = labels.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != labels.len() || labels.iter().any(|l| l.starts_with("blend-")) {
            return Err(refuse(
                format!(
                    "{}'s experts are chunks of FFNs (split or blend: {labels:?}); a whole dense FFN is not one of them",
                    moe.display()
                ),
                "add experts to a MiX made without --split/--blend",
            ));
        }
        crate::merge::check_expert_names(
            &labels
                .iter()
                .filter(|l| *l != btx_model::config::GENERALIST)
                .cloned()
                .chain(std::iter::once(name.to_string()))
                .collect::<Vec<_>>(),
            true,
        )?;
        // The MoE seen as the dense model its experts came from.
        let mut as_dense = m.clone();
        as_dense.moe = None;
        as_dense.attn_experts = None;
        as_dense.expert_labels = vec![];
        if let Some((k, x, y)) = config_difference(&as_dense, &dense_src.cfg) {
            return Err(refuse(
                format!(
                    "{} has {k} = {y}, but the experts of {} have {k} = {x}",
                    dense.display(),
                    moe.display()
                ),
                "the new expert must be branched from the MoE's seed (same config.json)",
            ));
        }
        if moe_src.tokenizer_hash.is_some()
            && dense_src.tokenizer_hash.is_some()
            && moe_src.tokenizer_hash != dense_src.tokenizer_hash
        {
            return Err(refuse(
                format!(
                    "{} and {} have different tokenizer.json files",
                    dense.display(),
                    moe.display()
                ),
                "token ids would mean different things to the new expert",
            ));
        }
        let mut cfg = m.clone();
        cfg.moe = Some(MoeConfig {
            num_experts: moe_cfg.num_experts + 1,
            ..moe_cfg.clone()
        });
        if let Some(a) = &m.attn_experts {
            cfg.attn_experts = Some(AttnExpertsConfig {
                num_experts: a.num_experts + 1,
                shared_kv: a.shared_kv,
            });
        }
        cfg.expert_labels.push(name.to_string());
        let distance = shared_distance(&moe_src, &dense_src)?;
        // NaN (a non-finite weight, or bound) is refused too.
        if !matches!(
            distance.partial_cmp(&max_distance),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ) {
            return Err(refuse(
                format!(
                    "{}'s shared weights (embeddings, norms, attention) are {distance:.3} (relative) from {}'s, more than {max_distance}: not a branch of its seed, or trained too far from it",
                    dense.display(),
                    moe.display()
                ),
                "branch the new expert from the MoE's seed; --max-distance raises the bound if this one is meant",
            ));
        }
        Ok(Self {
            moe: moe_src,
            dense: dense_src,
            cfg,
            name: name.to_string(),
            distance,
        })
    }

    /// The new expert's index (last), in the MoE and among attention experts.
    pub fn new_expert(&self) -> usize {
        self.cfg.num_experts() - 1
    }

    /// Writes the MoE with the new expert to `out`. `rows`: the new expert's router rows per
    /// layer (`[d]` each; the FFN router's, and for attention experts their router's); `None`:
    /// zero rows.
    pub fn write(
        &self,
        rows: Option<&NewRows>,
        opts: &AddOptions,
        out: &Path,
    ) -> Result<AddSummary> {
        let t0 = std::time::Instant::now();
        let (l, d) = (self.cfg.num_layers, self.cfg.hidden_size);
        if let Some(r) = rows {
            let want_attn = if self.cfg.attn_experts.is_some() {
                l
            } else {
                0
            };
            if r.ffn.len() != l
                || r.attn.len() != want_attn
                || r.ffn.iter().chain(&r.attn).any(|v| v.len() != d)
            {
                return Err(MixError::Options(format!(
                    "new router rows must be {l} FFN rows (and {want_attn} attention rows) of {d}"
                )));
            }
        }
        let inputs = [self.moe.dir.as_path(), self.dense.dir.as_path()];
        let save = SaveOpts {
            dtype: opts
                .dtype
                .unwrap_or_else(|| self.moe.reader.weights_dtype()),
            max_shard_bytes: opts.max_shard_bytes,
        };
        let specs: Vec<(String, Vec<usize>)> = param_specs(&self.cfg)
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect();
        let old = self.new_expert();
        let moe = std::slice::from_ref(&self.moe);
        let dense = std::slice::from_ref(&self.dense);
        let staged = OutDir::create(out, &inputs, opts.existing)?;
        let dir = staged.path();
        write_model_checkpoint(dir, &self.cfg, &specs, &save, |i, sink| {
            let (name, shape) = &specs[i];
            let copy = |src: &[Source], from: &str, sink: &mut _| {
                mean_into(src, from, shape, &[1.0], sink).map_err(into_model_err)
            };
            // A router: the MoE's rows, bit for bit, then the new expert's.
            let with_row = |row: Option<&Vec<f32>>, sink: &mut btx_model::io::TensorSink<'_>| {
                let old_shape = [shape[0] - 1, shape[1]];
                let b = self.moe.bytes(name, &old_shape).map_err(into_model_err)?;
                let mut v: Vec<f32> = (0..old_shape[0] * d).map(|j| f32_at(&b, j)).collect();
                match row {
                    Some(r) => v.extend_from_slice(r),
                    None => v.extend(std::iter::repeat_n(0f32, d)),
                }
                sink.f32(&v)
            };
            match param_kind(name) {
                ParamKind::Ffn {
                    layer,
                    expert: Some(e),
                } if e == old => {
                    let w = crate::source::ffn_w(name);
                    copy(dense, &ffn_name(layer, None, w), sink)
                }
                ParamKind::AttnExpert {
                    layer,
                    expert,
                    proj,
                } if expert == old => copy(dense, &attn_name(layer, None, proj), sink),
                ParamKind::Router { layer } => with_row(rows.map(|r| &r.ffn[layer]), sink),
                ParamKind::AttnRouter { layer } => with_row(rows.map(|r| &r.attn[layer]), sink),
                _ => copy(moe, name, sink),
            }
        })?;
        self.cfg.save_as(&dir.join("config.json"), save.dtype)?;
        copy_tokenizer(&self.moe.dir, dir)?;
        let summary = AddSummary {
            moe: self.moe.dir.clone(),
            expert: self.dense.dir.clone(),
            name: self.name.clone(),
            index: old,
            num_experts: self.cfg.num_experts(),
            distance: self.distance,
            router_fit: opts.router_fit.clone(),
            seconds: t0.elapsed().as_secs_f64(),
        };
        write_json(&dir.join("add-expert.json"), &summary)?;
        staged.commit()?;
        Ok(summary)
    }
}

/// How to write the output.
#[derive(Clone, Debug)]
pub struct AddOptions {
    pub existing: Existing,
    /// `None`: the MoE's stored dtype.
    pub dtype: Option<OutDtype>,
    pub max_shard_bytes: usize,
    /// How each new router row's fit went (recorded in `add-expert.json`).
    pub router_fit: Vec<crate::fit::LayerFit>,
}

impl Default for AddOptions {
    fn default() -> Self {
        Self {
            existing: Existing::Refuse,
            dtype: None,
            max_shard_bytes: btx_model::io::DEFAULT_MAX_SHARD_BYTES,
            router_fit: vec![],
        }
    }
}

/// What an addition did (written as `add-expert.json` beside the model).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddSummary {
    pub moe: PathBuf,
    pub expert: PathBuf,
    pub name: String,
    /// The new expert's index among the MoE's experts (the last).
    pub index: usize,
    pub num_experts: usize,
    /// See [`AddPlan::distance`].
    pub distance: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub router_fit: Vec<crate::fit::LayerFit>,
    pub seconds: f64,
}

/// ||dense − moe|| / ||moe|| over the tensors the MoE shares between its experts (embeddings,
/// norms, the LM head, attention unless it is made of experts), in f64.
fn shared_distance(moe: &Source, dense: &Source) -> Result<f64> {
    let (mut diff, mut norm) = (0f64, 0f64);
    for s in param_specs(&moe.cfg) {
        if param_kind(&s.name) != ParamKind::Shared {
            continue;
        }
        let a = moe.bytes(&s.name, &s.shape)?;
        let b = dense.bytes(&s.name, &s.shape)?;
        for j in 0..s.numel() {
            let (x, y) = (f32_at(&a, j) as f64, f32_at(&b, j) as f64);
            diff += (x - y) * (x - y);
            norm += x * x;
        }
        drop((a, b));
        moe.reader.release(&s.name);
        dense.reader.release(&s.name);
    }
    Ok((diff / norm.max(f64::MIN_POSITIVE)).sqrt())
}
