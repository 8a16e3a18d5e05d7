//! Per-domain evaluation of a model or ensemble: held-out loss / perplexity on the validation
//! split, and exact-match accuracy on the domain's task set by greedy generation.

use std::collections::BTreeMap;

use btx_data::builtin::{score, Task};
use btx_data::mixture::eval_windows;
use btx_data::{DataDir, Tok};
use serde::{Deserialize, Serialize};

use crate::lm::Lm;

fn d_seq() -> usize {
    256
}
fn d_windows() -> usize {
    32
}
fn d_batch() -> usize {
    8
}
fn d_tasks() -> usize {
    100
}
fn d_task_batch() -> usize {
    32
}

/// `[eval]`: how much to evaluate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    /// Tokens per loss window. Default 256.
    #[serde(default = "d_seq")]
    pub seq_len: usize,
    /// Validation windows per domain at most. Default 32.
    #[serde(default = "d_windows")]
    pub windows: usize,
    /// Windows per forward pass. Default 8.
    #[serde(default = "d_batch")]
    pub batch: usize,
    /// Tasks per domain at most (0 = no generation). Default 100.
    #[serde(default = "d_tasks")]
    pub tasks: usize,
    /// Prompts generated together. Default 32.
    #[serde(default = "d_task_batch")]
    pub task_batch: usize,
    /// k-shot: prepend this many training documents of the domain to each prompt. Default 0.
    #[serde(default)]
    pub shots: usize,
}

impl EvalSpec {
    /// Refuses sizes that evaluate nothing or evaluate wrongly: windows of fewer than two tokens
    /// (no target), zero windows, batches or task batches, windows longer than the model
    /// attends to.
    pub fn validate(&self, max_positions: usize) -> Result<(), String> {
        if self.seq_len < 2 {
            return Err(format!(
                "seq_len {} must be >= 2 (a window predicts its next tokens)",
                self.seq_len
            ));
        }
        if self.windows == 0 || self.batch == 0 || self.task_batch == 0 {
            return Err("windows, batch and task_batch must be >= 1".into());
        }
        if self.seq_len > max_positions {
            return Err(format!(
                "seq_len {} is longer than the {max_positions} positions the model attends to",
                self.seq_len
            ));
        }
        Ok(())
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            seq_len: d_seq(),
            windows: d_windows(),
            batch: d_batch(),
            tasks: d_tasks(),
            task_batch: d_task_batch(),
            shots: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainEval {
    pub loss: f64,
    pub perplexity: f64,
    pub loss_tokens: usize,
    /// Exact-match accuracy on the task set (None when the domain has no tasks).
    pub accuracy: Option<f64>,
    /// Tasks scored.
    pub tasks: usize,
    /// Tasks left out because their prompt leaves no room for an answer within the model's
    /// positions (scoring them on an empty answer would count what does not fit as wrong).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tasks_unfit: usize,
    /// A few generations, for the report.
    pub samples: Vec<Sample>,
    /// Mean loss of each evaluation window, in window order. Every method sees the same
    /// windows, so the report can resample them (bootstrap) and compare methods paired.
    #[serde(default)]
    pub window_losses: Vec<f64>,
    /// Whether each task was answered correctly, in task order (for accuracy intervals).
    #[serde(default)]
    pub task_correct: Vec<bool>,
    /// Accuracy of always giving the task set's most common answer: the floor a model must
    /// beat before its accuracy means anything.
    #[serde(default)]
    pub chance: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub prompt: String,
    pub answer: String,
    pub generated: String,
    pub correct: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    pub domains: BTreeMap<String, DomainEval>,
    /// Mean over domains of loss and (where present) accuracy.
    pub average: Average,
    /// Forward passes of a model this size per generated token.
    pub forward_passes_per_token: usize,
    pub active_params: usize,
    pub total_params: usize,
}

/// What an eval stage writes (`eval.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodEval {
    pub method: String,
    pub result: EvalResult,
    pub routing: Option<crate::routing::RoutingReport>,
}

/// What an opt-out stage writes (`optout.json`): a BTX model's held-out loss, whole and with
/// each expert removed (FlexOlmo's opt-out: its FFN, attention expert and router rows gone),
/// on the same windows, so that the cost of removing one is a paired difference per window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptOutEval {
    pub method: String,
    pub full: EvalResult,
    /// (expert label, the model without that expert), in expert order.
    pub removed: Vec<(String, EvalResult)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Average {
    pub loss: f64,
    pub accuracy: Option<f64>,
}

/// Next-token loss over `windows`: the mean over all targets, the number of targets, and each
/// window's own mean.
pub fn loss_on(lm: &dyn Lm, windows: &[Vec<i64>], batch: usize) -> (f64, usize, Vec<f64>) {
    let mut total = 0f64;
    let mut n = 0usize;
    let mut per_window = Vec::with_capacity(windows.len());
    for chunk in windows.chunks(batch.max(1)) {
        for lp in lm.target_logprobs(chunk) {
            let nll = -lp.iter().map(|x| *x as f64).sum::<f64>();
            total += nll;
            n += lp.len();
            per_window.push(nll / lp.len().max(1) as f64);
        }
    }
    (
        if n > 0 { total / n as f64 } else { f64::NAN },
        n,
        per_window,
    )
}

/// The share of tasks whose answer is the set's most common one (None without tasks).
pub fn majority_answer_rate(tasks: &[Task]) -> Option<f64> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in tasks {
        *counts.entry(t.answer.trim()).or_default() += 1;
    }
    let top = counts.values().max()?;
    Some(*top as f64 / tasks.len() as f64)
}

/// Whether a partial generation is complete enough to score.
pub fn finished(scorer: &str, text: &str) -> bool {
    match scorer {
        "math" => {
            text.contains("\nQuestion")
                || text.contains("\n\n")
                || text.split("####").nth(1).is_some_and(|after| {
                    after.trim_start().contains(['\n', ' ']) && !after.trim().is_empty()
                })
        }
        "first-line" => text.trim_start_matches([' ', '\t']).contains('\n'),
        "first-word" => {
            let t = text.trim_start();
            !t.is_empty() && t.contains(|c: char| !(c.is_alphanumeric() || c == '-' || c == '\''))
        }
        _ => text.contains('\n'),
    }
}

fn max_new_tokens(scorer: &str) -> usize {
    match scorer {
        "math" => 96,
        "first-line" => 12,
        _ => 10,
    }
}

/// Exact-match accuracy of `lm` on `tasks` (greedy), batched.
pub fn task_accuracy(
    lm: &dyn Lm,
    tok: &Tok,
    tasks: &[Task],
    prefix: &str,
    batch: usize,
    keep_samples: usize,
) -> (f64, Vec<Sample>, Vec<bool>) {
    let mut correct = 0usize;
    let mut samples = vec![];
    let mut each = Vec::with_capacity(tasks.len());
    for chunk in tasks.chunks(batch.max(1)) {
        let prompts: Vec<Vec<i64>> = chunk
            .iter()
            .map(|t| {
                tok.encode(&format!("{prefix}{}", t.prompt))
                    .map(|v| v.into_iter().map(i64::from).collect())
                    .unwrap_or_default()
            })
            .collect();
        let max_new = chunk
            .iter()
            .map(|t| max_new_tokens(&t.scorer))
            .max()
            .unwrap_or(16);
        let decode = |ids: &[i64]| {
            let u: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
            tok.decode(&u).unwrap_or_default()
        };
        let mut stop = |row: usize, gen: &[i64]| finished(&chunk[row].scorer, &decode(gen));
        let outs = lm.greedy(&prompts, max_new, Some(tok.eos_id() as i64), &mut stop);
        for (t, o) in chunk.iter().zip(outs) {
            let text = decode(&o);
            let ok = score(t, &text);
            correct += ok as usize;
            each.push(ok);
            if samples.len() < keep_samples {
                samples.push(Sample {
                    prompt: t.prompt.clone(),
                    answer: t.answer.clone(),
                    generated: text,
                    correct: ok,
                });
            }
        }
    }
    (correct as f64 / tasks.len().max(1) as f64, samples, each)
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The tasks whose prompt (after `prefix`) leaves room for at least one answer token within
/// `positions` (a prompt of at most `positions` tokens), in order, and how many were left out. Every model of a comparison has the same
/// positions (they share a seed), so every method is scored on the same tasks.
pub fn fitting_tasks(
    tasks: Vec<Task>,
    tok: &Tok,
    prefix: &str,
    positions: usize,
) -> btx_data::Result<(Vec<Task>, usize)> {
    let n = tasks.len();
    let mut keep = Vec::with_capacity(n);
    for t in tasks {
        // (The last position's logits give the first answer token, which is never fed back:
        // a prompt filling every position still has room for one.)
        if tok.encode(&format!("{prefix}{}", t.prompt))?.len() <= positions {
            keep.push(t);
        }
    }
    let unfit = n - keep.len();
    Ok((keep, unfit))
}

/// k-shot prefix: the first `k` training documents of the domain, blank-line separated.
pub fn shots_prefix(data: &DataDir, domain: &str, k: usize) -> btx_data::Result<String> {
    if k == 0 {
        return Ok(String::new());
    }
    let tok = data.tokenizer()?;
    let s = data.shard(domain, "train")?;
    let mut docs = vec![];
    let mut cur = vec![];
    let eos = tok.eos_id();
    for i in 0..s.len() {
        let id = s.get(i);
        if id == eos {
            docs.push(tok.decode(&cur)?);
            cur.clear();
            if docs.len() == k {
                break;
            }
        } else {
            cur.push(id);
        }
    }
    Ok(docs.join("\n\n") + "\n\n")
}

fn refused(msg: String) -> btx_data::DataError {
    btx_data::DataError::Invalid(msg)
}

/// Everything that can refuse an evaluation of `lm` on `domains`, checked before the first
/// forward pass (an evaluation of several domains is long; a refusal after the first would
/// waste it): the sizes, the positions the windows and task prompts need, an ensemble's
/// vocabularies, validation splits long enough for a loss, and the memory of a batch.
fn preflight(
    lm: &dyn Lm,
    data: &DataDir,
    domains: &[String],
    spec: &EvalSpec,
) -> btx_data::Result<()> {
    let cfgs = lm.configs();
    if cfgs.is_empty() {
        return Err(refused(
            "eval: an ensemble of no models\nhint: pass at least one --model".into(),
        ));
    }
    let hint = "e.g. --seq-len 256 --windows 32 --batch 8 (recipes: [eval])";
    spec.validate(usize::MAX)
        .map_err(|e| refused(format!("eval: {e}\nhint: {hint}")))?;
    for c in &cfgs {
        c.check_positions(
            spec.seq_len,
            &format!("eval seq_len {}", spec.seq_len),
            "lower --seq-len (recipes: [eval] seq_len)",
        )
        .map_err(|e| refused(format!("eval: {e}")))?;
    }
    spec.validate(lm.max_positions())
        .map_err(|e| refused(format!("eval: {e}\nhint: {hint}")))?;
    if cfgs.windows(2).any(|w| w[0].vocab_size != w[1].vocab_size) {
        let v: Vec<usize> = cfgs.iter().map(|c| c.vocab_size).collect();
        return Err(refused(format!(
            "eval: the ensemble's models have different vocabularies {v:?}, so their next-token distributions cannot be mixed\nhint: ensemble models that share a tokenizer"
        )));
    }
    let tok = data.tokenizer()?;
    let weights: f64 = cfgs.iter().map(|c| 4.0 * c.total_params() as f64).sum();
    for d in domains {
        let val = data.shard(d, "val")?;
        // An id the embedding cannot look up would stop the forward pass with a panic.
        data.check_vocab(&val, cfgs[0].vocab_size)?;
        if val.len() < 2 {
            return Err(refused(format!(
                "eval: domain {d:?}: the validation split holds {} token(s); a held-out loss needs at least 2\nhint: prepare the data with a larger val_fraction (or more documents)",
                val.len()
            )));
        }
        let seq = spec.seq_len.min(val.len());
        let n_windows = (val.len() / seq).min(spec.windows);
        // The members of an ensemble run one after another: all weights, one member's pass.
        let batch = spec.batch.min(n_windows).max(1);
        let pass = cfgs
            .iter()
            .map(|c| {
                btx_model::budget::eval_forward_bytes(c, batch, seq) - 4.0 * c.total_params() as f64
            })
            .fold(0.0, f64::max);
        match btx_model::budget::machine_memory() {
            Some(total) => btx_model::budget::check_fits(
                weights + pass,
                total,
                &format!("evaluating domain {d:?} in batches of {batch} windows of {seq} tokens"),
                "lower --batch (recipes: [eval] batch) or --seq-len",
            )
            .map_err(|e| refused(format!("eval: {e}")))?,
            None => tracing::debug!(
                "cannot read MemTotal from /proc/meminfo: the evaluation's memory is not checked"
            ),
        }
        let mut tasks = data.tasks(d)?;
        tasks.truncate(spec.tasks);
        if tasks.is_empty() {
            continue;
        }
        // An empty prompt has nothing to continue (a bad tasks file). A prompt with no room for
        // one new token is left out of the accuracy (see `fitting_tasks`), not scored on an
        // empty answer.
        let prefix = shots_prefix(data, d, spec.shots)?;
        for (i, t) in tasks.iter().enumerate() {
            if tok.encode(&format!("{prefix}{}", t.prompt))?.is_empty() {
                return Err(refused(format!(
                    "eval: domain {d:?} task {i}: the prompt is empty, so there is nothing to continue\nhint: fix the domain's tasks file"
                )));
            }
        }
    }
    Ok(())
}

/// Evaluates `lm` on every domain in `domains`. A loss that is not a finite number (a model
/// whose logits overflow, NaN weights) is an error naming the domain, never a row of NaN.
pub fn evaluate(
    lm: &dyn Lm,
    data: &DataDir,
    domains: &[String],
    spec: &EvalSpec,
) -> btx_data::Result<EvalResult> {
    preflight(lm, data, domains, spec)?;
    let tok = data.tokenizer()?;
    let mut out = BTreeMap::new();
    for d in domains {
        let val = data.shard(d, "val")?;
        let seq = spec.seq_len.min(val.len());
        let windows = eval_windows(&val, seq, spec.windows);
        let (loss, n, window_losses) = loss_on(lm, &windows, spec.batch);
        if !loss.is_finite() {
            return Err(refused(format!(
                "eval: domain {d:?}: the held-out loss is {loss} over {n} tokens, not a finite number\nhint: the model's logits are not finite (NaN or overflowing weights, or a config value such as rms_norm_eps that makes them so); check it with btx forward"
            )));
        }
        let mut tasks = data.tasks(d)?;
        tasks.truncate(spec.tasks);
        let prefix = shots_prefix(data, d, spec.shots)?;
        let (tasks, unfit) = fitting_tasks(tasks, &tok, &prefix, lm.max_positions())?;
        if unfit > 0 {
            tracing::warn!(
                "{d}: {unfit} task prompt(s){} leave no room for an answer within the model's {} positions; they are left out of the accuracy (use fewer shots, or a model with more positions)",
                if spec.shots > 0 { format!(" with {} shots", spec.shots) } else { String::new() },
                lm.max_positions()
            );
        }
        let (accuracy, samples, task_correct) = if tasks.is_empty() {
            (None, vec![], vec![])
        } else {
            let (a, s, each) = task_accuracy(lm, &tok, &tasks, &prefix, spec.task_batch, 3);
            (Some(a), s, each)
        };
        tracing::info!(
            "{d}: loss {loss:.4}{}",
            accuracy.map_or(String::new(), |a| format!(", accuracy {:.1}%", 100.0 * a))
        );
        out.insert(
            d.clone(),
            DomainEval {
                loss,
                perplexity: loss.exp(),
                loss_tokens: n,
                accuracy,
                tasks: tasks.len(),
                tasks_unfit: unfit,
                samples,
                window_losses,
                task_correct,
                chance: majority_answer_rate(&tasks),
            },
        );
    }
    Ok(EvalResult::from_domains(out, lm))
}

impl EvalResult {
    /// The result of per-domain evaluations of `lm` (the averages over those domains).
    pub fn from_domains(domains: BTreeMap<String, DomainEval>, lm: &dyn Lm) -> Self {
        let nd = domains.len().max(1) as f64;
        let accs: Vec<f64> = domains.values().filter_map(|e| e.accuracy).collect();
        EvalResult {
            average: Average {
                loss: domains.values().map(|e| e.loss).sum::<f64>() / nd,
                accuracy: (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64),
            },
            domains,
            forward_passes_per_token: lm.forward_passes(),
            active_params: lm.active_params(),
            total_params: lm.total_params(),
        }
    }
}

#[cfg(test)]
mod spec_tests {
    use super::EvalSpec;

    /// Regression (issue 17): `--seq-len 1`, `--batch 0`, `--windows 0` and windows longer than
    /// the model's positions evaluated nothing, or evaluated past what the model attends to,
    /// and exited 0.
    #[test]
    fn sizes_that_evaluate_nothing_or_wrongly_are_refused() {
        let ok = EvalSpec::default();
        assert!(ok.validate(ok.seq_len).is_ok());
        let bad = [
            EvalSpec {
                seq_len: 1,
                ..ok.clone()
            },
            EvalSpec {
                batch: 0,
                ..ok.clone()
            },
            EvalSpec {
                windows: 0,
                ..ok.clone()
            },
            EvalSpec {
                task_batch: 0,
                ..ok.clone()
            },
        ];
        for s in bad {
            assert!(s.validate(4096).is_err(), "{s:?}");
        }
        let e = ok.validate(ok.seq_len - 1).unwrap_err();
        assert!(e.contains("positions"), "{e}");
    }
}

#[cfg(test)]
mod fit_tests {
    use super::*;

    /// A task whose prompt leaves no room for an answer within the model's positions is left
    /// out and counted (it was scored as a wrong, empty answer), the others kept in order.
    #[test]
    fn prompts_without_room_for_an_answer_are_left_out_and_counted() {
        let docs = btx_data::builtin::docs("general", 0, 100).unwrap();
        let tok = Tok::train_bpe(docs.iter(), 300, 2).unwrap();
        let task = |p: &str| Task {
            prompt: p.into(),
            answer: "x".into(),
            scorer: "exact".into(),
        };
        let long = "word ".repeat(200);
        let tasks = vec![task("a b"), task(&long), task("c d")];
        let n = |p: &str| tok.encode(p).unwrap().len();
        let positions = n("a b").max(n("c d"));
        let (kept, unfit) = fitting_tasks(tasks, &tok, "", positions).unwrap();
        assert_eq!(unfit, 1);
        assert_eq!(
            kept.iter().map(|t| t.prompt.as_str()).collect::<Vec<_>>(),
            ["a b", "c d"]
        );
        // With no room at all, nothing is kept.
        let (kept, unfit) = fitting_tasks(vec![task("a b")], &tok, "", n("a b") - 1).unwrap();
        assert!(kept.is_empty() && unfit == 1);
    }
}
