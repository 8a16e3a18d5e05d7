//! One training step, as every stage takes it (seed pretraining, expert training,
//! MoE-finetune, baselines): forward, losses, backward, accumulation, global-norm clipping,
//! AdamW. The run around the steps (resume, metrics, checkpoints) is in [`crate::run`].

use btx_core::rng::Rng;
use btx_data::BatchSource;
use btx_model::burn::prelude::*;
use btx_model::loss::{hf_aux_loss, lb_paper, lm_head_loss, z_loss};
use btx_model::moe::RouterAux;
use btx_model::names::param_specs;
use btx_model::{to_vec, ForwardOpts, Model, Routing};

use crate::config::{glob_match, LbKind, TrainerConfig};
use crate::error::TrainError;
use crate::optim::{clip_coef, global_norm, lr_at, AdamW};

/// Per-step numbers, also the `metrics.jsonl` record.
#[derive(Clone, Debug, Default)]
pub struct StepStats {
    pub loss: f64,
    pub lb_loss: f64,
    pub z_loss: f64,
    pub total_loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// Per MoE layer, the fraction of tokens routed to each expert.
    pub expert_load: Vec<Vec<f64>>,
    pub dropped_tokens: usize,
    /// The loss or the gradient norm was not finite: the update was not applied.
    pub skipped: bool,
    /// A stop was asked for (SIGTERM, ...) between two micro-batches: the step was abandoned,
    /// nothing changed and the data source is back where the step began, so a checkpoint
    /// written now resumes exactly.
    pub interrupted: bool,
}

/// Holds the model under training and its optimizer; one [`Trainer::step`] is one optimizer
/// update. [`train`] wraps it with data, checkpoints and logging.
pub struct Trainer {
    pub model: Model,
    pub opt: AdamW,
    pub cfg: TrainerConfig,
    /// Completed optimizer steps.
    pub step: usize,
    trainable: Vec<bool>,
    decay: Vec<bool>,
}

impl Trainer {
    /// Puts `model` on `dev` (with autodiff) and freezes what `cfg.train.freeze` names.
    pub fn new(model: Model, cfg: TrainerConfig, dev: &Device) -> Result<Self, TrainError> {
        cfg.validate().map_err(TrainError::Config)?;
        model.cfg.check_trainable()?;
        let dev = if dev.is_autodiff() {
            dev.clone()
        } else {
            dev.clone().autodiff()
        };
        let specs = param_specs(&model.cfg);
        crate::config::check_freeze(&cfg.train.freeze, &model.cfg)?;
        let is_frozen = |n: &str| cfg.train.freeze.iter().any(|p| glob_match(p, n));
        let trainable: Vec<bool> = specs.iter().map(|s| !is_frozen(&s.name)).collect();
        let decay = specs.iter().map(|s| s.shape.len() >= 2).collect();
        let model = model.to_device_with(&dev, |n| !is_frozen(n));
        // One training run per process: its matmul precision is the process's.
        btx_model::precision::set(cfg.train.precision);
        let opt = AdamW::new(cfg.optim.clone());
        Ok(Self {
            model,
            opt,
            cfg,
            step: 0,
            trainable,
            decay,
        })
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    fn forward_opts(&self, micro: usize) -> ForwardOpts {
        // Sample-top1's temperature schedule is the model's (config.json's btx_routing, from the
        // recipe's `routing = {mode = "sample-top1", anneal_rate, min_tau}`): one source.
        let gumbel = match self.model.cfg.moe.as_ref().map(|x| &x.routing) {
            Some(Routing::SampleTop1 {
                anneal_rate,
                min_tau,
            }) => {
                let tau = (-anneal_rate * self.step as f64).exp().max(*min_tau);
                let seed = Rng::derive(
                    self.cfg.train.seed,
                    &format!("gumbel-{}-{micro}", self.step),
                )
                .next_u64();
                Some((seed, tau))
            }
            _ => None,
        };
        ForwardOpts {
            gumbel,
            ..Default::default()
        }
    }

    /// Loss of one micro-batch and its MoE extras. Returns (total, lm, lb, z) as graph tensors
    /// (lb/z are None for dense models) and the router outputs.
    fn losses(
        &self,
        ids: &[i64],
        b: usize,
        t: usize,
        micro: usize,
    ) -> (
        Tensor<1>,
        Tensor<1>,
        Option<Tensor<1>>,
        Option<Tensor<1>>,
        Vec<RouterAux>,
    ) {
        let out = self
            .model
            .forward_trunk(ids, b, t, &self.forward_opts(micro), None);
        let lm = lm_head_loss(out.hidden, self.model.head(), ids, b, t);
        let m = &self.cfg.moe;
        let mut total = lm.clone();
        let (mut lb, mut z) = (None, None);
        if !out.routers.is_empty() {
            let l = match m.lb_kind {
                LbKind::Paper => Tensor::cat(out.routers.iter().map(lb_paper).collect(), 0).sum(),
                LbKind::Hf => hf_aux_loss(&out.routers).expect("moe layers"),
            };
            if m.lb_coef != 0.0 {
                total = total + l.clone() * m.lb_coef;
            }
            lb = Some(l);
            let zl = Tensor::cat(out.routers.iter().map(z_loss).collect(), 0).sum();
            if m.z_loss_coef != 0.0 {
                total = total + zl.clone() * m.z_loss_coef;
            }
            z = Some(zl);
        }
        (total, lm, lb, z, out.routers)
    }

    /// One optimizer step over `grad_accum` micro-batches pulled from `data`.
    pub fn step(&mut self, data: &mut dyn BatchSource) -> Result<StepStats, TrainError> {
        btx_kernels::awake::awake(|| self.step_inner(data))
    }

    fn step_inner(&mut self, data: &mut dyn BatchSource) -> Result<StepStats, TrainError> {
        let accum = self.cfg.train.grad_accum;
        let lr = lr_at(&self.cfg.optim, self.step, self.cfg.train.steps);
        let n_params = self.trainable.len();
        let mut grads: Vec<Option<Tensor<2>>> = vec![None; n_params];
        let mut st = StepStats {
            lr,
            ..Default::default()
        };
        let mut load_sum: Vec<Vec<f64>> = vec![];
        // Where the step begins, for a stop in its middle (a step of many micro-batches can
        // take longer than a scheduler waits after its warning).
        let cursor = (accum > 1).then(|| data.cursor());
        for micro in 0..accum {
            if micro > 0 && crate::signal::stop_requested() {
                if let Some(c) = &cursor {
                    data.restore(c).map_err(TrainError::Data)?;
                }
                st.interrupted = true;
                return Ok(st);
            }
            let batch = data.next_batch();
            let (b, t) = (batch.batch, batch.seq);
            // What the forward pass asserts, as errors: a batch it cannot compute exactly or
            // at all ends the run with a message, not a panic.
            self.model.cfg.check_positions(
                t,
                &format!("a training batch of {t} tokens per row"),
                "lower train.seq_len",
            )?;
            if t < 2 || batch.ids.len() != b * t {
                return Err(TrainError::Data(format!(
                    "a batch of {} ids is not {b} rows of {t} >= 2 tokens",
                    batch.ids.len()
                )));
            }
            let v = self.model.cfg.vocab_size;
            if let Some(bad) = batch.ids.iter().find(|&&i| i < 0 || i as usize >= v) {
                return Err(TrainError::Data(format!(
                    "token id {bad} is outside the model's vocabulary of {v}\nhint: the data was tokenized with another tokenizer than the model's"
                )));
            }
            let (total, lm, lb, z, routers) = self.losses(&batch.ids, b, t, micro);
            let scalars = Tensor::cat(
                vec![
                    total.clone(),
                    lm,
                    lb.unwrap_or_else(|| total.zeros_like()),
                    z.unwrap_or_else(|| total.zeros_like()),
                ],
                0,
            );
            let g = (total / accum as f64).backward();
            let v = to_vec(scalars);
            st.total_loss += v[0] as f64 / accum as f64;
            st.loss += v[1] as f64 / accum as f64;
            st.lb_loss += v[2] as f64 / accum as f64;
            st.z_loss += v[3] as f64 / accum as f64;
            let mut i = 0;
            self.model.visit(|_, p| {
                if let Some(gi) = p.grad(&g) {
                    grads[i] = Some(match grads[i].take() {
                        None => gi,
                        Some(acc) => acc + gi,
                    });
                }
                i += 1;
            });
            for (l, r) in routers.iter().enumerate() {
                let n = r.assigned.len() as f64;
                let mut c = vec![0f64; r.num_experts()];
                for a in &r.assigned {
                    for &e in a {
                        c[e as usize] += 1.0 / n;
                    }
                }
                if load_sum.len() <= l {
                    load_sum.push(vec![0.0; c.len()]);
                }
                for (s, x) in load_sum[l].iter_mut().zip(c) {
                    *s += x / accum as f64;
                }
                st.dropped_tokens += r.dropped;
            }
        }
        st.expert_load = load_sum;
        st.grad_norm = global_norm(&grads);
        if !st.total_loss.is_finite() || !st.grad_norm.is_finite() {
            // The step counts (its data is consumed and the schedule moves on) but changes
            // nothing: weights and optimizer moments stay as they were, all finite.
            st.skipped = true;
            self.step += 1;
            return Ok(st);
        }
        let coef = clip_coef(st.grad_norm, self.cfg.optim.clip_norm);
        self.opt.begin_step();
        let (trainable, decay) = (&self.trainable, &self.decay);
        let opt = &mut self.opt;
        let mut i = 0;
        let model = std::mem::replace(&mut self.model, placeholder_model());
        self.model = model.map(|name, p| {
            let idx = i;
            i += 1;
            match (trainable[idx], grads[idx].take()) {
                (true, Some(g)) => opt
                    .update(name, p.inner(), g, coef, lr, decay[idx])
                    .autodiff()
                    .require_grad(),
                _ => p,
            }
        });
        self.step += 1;
        Ok(st)
    }
}

/// A stand-in while the model is moved through `map` (never used for compute).
fn placeholder_model() -> Model {
    let cfg = btx_model::ModelConfig::llama(1, 2, 1, 0, 1, 1, 1);
    Model {
        cfg,
        embed: Tensor::zeros([1, 1], &Device::flex()),
        layers: vec![],
        norm: Tensor::zeros([1, 1], &Device::flex()),
        lm_head: None,
    }
}
