//! Running a model over a dataset in batches, on the evaluation device: logits and scores for images and text classifiers, per-token statistics for next-token models, and the token-level ensemble.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;

use super::arch::{Architecture, Batch, Model};
use super::dataset::{Data, Dataset};
use super::ensemble::Mode;
use super::error::{CandleContext, Result};
use super::score::{Metric, Metrics, Score, Task};
use super::text::{self, tokens, TextData, TokenStats};
use super::weights::Weights;

/// What one model's forward passes over a split leave: enough for every metric of the task,
/// and for a classifier's ensemble.
#[derive(Clone, Debug, PartialEq)]
pub enum Outputs {
    /// Classification: row-major logits `[N, classes]`.
    Logits(Vec<f32>),
    /// Language modelling and multiple choice: each sequence's scored tokens. The logits
    /// `[B, T, V]` never leave the device; a batch's are reduced there to two numbers per
    /// position.
    Tokens(Vec<TokenStats>),
}

impl Outputs {
    /// Every metric of `data`'s task, ranked by `metric`.
    pub fn metrics(&self, data: &Data, classes: usize, metric: Metric) -> Metrics {
        match (self, data) {
            (Outputs::Logits(logits), Data::Images(d)) => {
                Metrics::classification(Score::from_logits(logits, classes, &d.labels), metric)
            }
            (Outputs::Logits(logits), Data::Text(t)) => {
                Metrics::classification(Score::from_logits(logits, classes, &t.labels), metric)
            }
            (Outputs::Tokens(stats), Data::Text(t)) if t.task == Task::MultipleChoice => {
                text::metrics::multiple_choice(&t.questions, stats, metric)
            }
            (Outputs::Tokens(stats), _) => text::metrics::language_modelling(stats, metric),
        }
    }
}

/// Evaluates weights of one architecture on one device, `batch_size` examples at a time.
pub struct Evaluator {
    /// The model, configured from the checkpoints.
    pub arch: Arc<dyn Architecture>,
    /// Where models run.
    pub device: Device,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// The dtype models compute in (`--eval-dtype`): f32, f16 or bf16 (the CLI's default is the checkpoint's). Weights
    /// and inputs are converted to it on the device; logits come back as f32.
    pub dtype: DType,
    /// Counts evaluated examples; hidden unless the caller made it visible.
    pub progress: ProgressBar,
}

impl Evaluator {
    /// An f32 evaluator with a hidden progress bar.
    pub fn new(arch: Arc<dyn Architecture>, device: Device, batch_size: usize) -> Evaluator {
        Evaluator {
            arch,
            device,
            batch_size: batch_size.max(1),
            dtype: DType::F32,
            progress: ProgressBar::hidden(),
        }
    }

    /// Waits until the device has finished the work queued on it (a GPU runs asynchronously),
    /// so that a timer read next counts that work.
    pub fn synchronize(&self) -> Result<()> {
        self.device
            .synchronize()
            .context(|| "the device failed while finishing its work".to_string())
    }

    /// `data`'s inputs `[N, ...]` on the device, in the evaluation dtype: upload them once and
    /// pass them to [`Evaluator::logits_on`] for every model evaluated on `data`. This holds
    /// the whole split on the device; [`Evaluator::logits`] reads one batch at a time instead.
    pub fn upload(&self, data: &Dataset) -> Result<Tensor> {
        self.place(data, 0, data.len())
    }

    /// Examples `start..end` of `data` on the device, in the evaluation dtype.
    fn place(&self, data: &Dataset, start: usize, end: usize) -> Result<Tensor> {
        let mut shape = vec![end - start];
        shape.extend(&data.sample_shape);
        let values = data.batch(start, end)?;
        Tensor::from_slice(&values, shape, &self.device)
            .and_then(|x| x.to_dtype(self.dtype))
            .context(|| {
                format!(
                    "{}: cannot place the inputs on the device",
                    data.path.display()
                )
            })
    }

    /// Row-major logits `[data.len(), classes]` of the model built from `weights`, placing
    /// `data`'s inputs on the device one batch at a time.
    pub fn logits(&self, weights: &Weights, data: &Dataset) -> Result<Vec<f32>> {
        self.logits_with(weights, data, None)
    }

    /// [`Evaluator::logits`] with `data`'s inputs already on the device ([`Evaluator::upload`]).
    pub fn logits_on(
        &self,
        weights: &Weights,
        data: &Dataset,
        inputs: &Tensor,
    ) -> Result<Vec<f32>> {
        self.logits_with(weights, data, Some(inputs))
    }

    /// [`Evaluator::logits_on`] when `inputs` is given, else [`Evaluator::logits`]; both
    /// give the same bits, since the batches are the same. Weights on another device are
    /// copied to this one first. The batches' logits stay on the device until the last one
    /// is done, then come back in one copy.
    pub fn logits_with(
        &self,
        weights: &Weights,
        data: &Dataset,
        inputs: Option<&Tensor>,
    ) -> Result<Vec<f32>> {
        let weights = weights.to_device(&self.device)?;
        let model = self
            .arch
            .build(weights.var_builder(self.dtype))
            .context(|| format!("cannot build {}", self.arch.describe()))?;
        let failed = || {
            format!(
                "forward pass of {} on {} failed",
                self.arch.describe(),
                data.path.display()
            )
        };
        self.progress.inc_length(data.len() as u64);
        let mut batches = Vec::with_capacity(data.len().div_ceil(self.batch_size));
        for start in (0..data.len()).step_by(self.batch_size) {
            let len = self.batch_size.min(data.len() - start);
            let x = match inputs {
                Some(inputs) => inputs.narrow(0, start, len).context(failed)?,
                None => self.place(data, start, start + len)?,
            };
            let logits = model.logits(&Batch::images(&x)).context(failed)?;
            batches.push(logits);
            self.progress.inc(len as u64);
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        Tensor::cat(&batches, 0)
            .and_then(|l| l.to_dtype(DType::F32))
            .and_then(|l| l.flatten_all())
            .and_then(|l| l.to_vec1::<f32>())
            .context(failed)
    }

    /// The model built from `weights` (copied to this device first if they are elsewhere).
    fn model(&self, weights: &Weights) -> Result<Box<dyn Model>> {
        let weights = weights.to_device(&self.device)?;
        self.arch
            .build(weights.var_builder(self.dtype))
            .context(|| format!("cannot build {}", self.arch.describe()))
    }

    /// What the model built from `weights` leaves on `data` (`inputs`: an image split already
    /// on the device, see [`Evaluator::upload`]).
    pub fn outputs(
        &self,
        weights: &Weights,
        data: &Data,
        inputs: Option<&Tensor>,
    ) -> Result<Outputs> {
        match data {
            Data::Images(d) => Ok(Outputs::Logits(self.logits_with(weights, d, inputs)?)),
            Data::Text(t) if t.task == Task::Classification => {
                Ok(Outputs::Logits(self.text_logits(weights, t)?))
            }
            Data::Text(t) => Ok(Outputs::Tokens(self.token_stats(
                &[weights],
                t,
                Mode::Probs,
            )?)),
        }
    }

    /// Every metric of the model built from `weights` on `data`, ranked by `metric`.
    pub fn metrics(
        &self,
        weights: &Weights,
        data: &Data,
        inputs: Option<&Tensor>,
        metric: Metric,
    ) -> Result<Metrics> {
        let outputs = self.outputs(weights, data, inputs)?;
        Ok(outputs.metrics(data, self.arch.output().width(), metric))
    }

    /// A text classifier's logits `[N, classes]`, `batch_size` sequences at a time, each
    /// batch padded to its longest sequence.
    pub fn text_logits(&self, weights: &Weights, data: &TextData) -> Result<Vec<f32>> {
        let model = self.model(weights)?;
        let failed = || self.failed(&data.path);
        let n = data.sequences.len();
        self.progress.inc_length(n as u64);
        let mut out = Vec::new();
        for start in (0..n).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(n);
            let batch = tokens::batch(data, start..end, &self.device).context(failed)?;
            let logits = model
                .logits(&batch.as_batch())
                .and_then(|l| l.to_dtype(DType::F32))
                .and_then(|l| l.flatten_all())
                .and_then(|l| l.to_vec1::<f32>())
                .context(failed)?;
            out.extend(logits);
            self.progress.inc((end - start) as u64);
        }
        Ok(out)
    }

    /// Each sequence's scored tokens under the model built from `members[0]`, or under the
    /// ensemble of the models built from every member: with [`Mode::Probs`] the mixture (per
    /// position the mean of the members' token probabilities), with [`Mode::Logits`] the
    /// mean of their logits.
    ///
    /// Memory: every member's weights at once (k models), and per batch the logits
    /// `[B, T, V]` of one member plus the mixture's sum `[B, T, V]` in f32; only two numbers
    /// per position per member come back to the host. Nothing of size `N·T·V` is kept.
    pub fn token_stats(
        &self,
        members: &[&Weights],
        data: &TextData,
        mode: Mode,
    ) -> Result<Vec<TokenStats>> {
        let models = members
            .iter()
            .map(|w| self.model(w))
            .collect::<Result<Vec<_>>>()?;
        self.model_stats(&models, data, mode)
    }

    /// [`Evaluator::token_stats`] of models already built, which may be of different
    /// architectures (an ensemble needs no soup) as long as they share the vocabulary.
    pub fn model_stats(
        &self,
        models: &[Box<dyn Model>],
        data: &TextData,
        mode: Mode,
    ) -> Result<Vec<TokenStats>> {
        let failed = || self.failed(&data.path);
        let n = data.sequences.len();
        self.progress.inc_length(n as u64);
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(n);
            let batch = tokens::batch(data, start..end, &self.device).context(failed)?;
            let (log_probs, argmax) = self
                .batch_stats(models, &batch.as_batch(), mode)
                .context(failed)?;
            tokens::collect(data, start..end, &log_probs, &argmax, &mut out);
            self.progress.inc((end - start) as u64);
        }
        Ok(out)
    }

    /// Per row and position of one batch: ln p(next token) (in f64, the mixture's for
    /// several models) and the most likely token, as host vectors `[B][T - 1]`.
    #[allow(clippy::type_complexity)]
    fn batch_stats(
        &self,
        models: &[Box<dyn Model>],
        batch: &Batch,
        mode: Mode,
    ) -> candle_core::Result<(Vec<Vec<f64>>, Vec<Vec<u32>>)> {
        let ids = batch.inputs;
        let widen = |t: Tensor| -> candle_core::Result<Vec<Vec<f64>>> {
            t.to_dtype(DType::F64)?.to_vec2::<f64>()
        };
        if models.len() == 1 || mode == Mode::Logits {
            // One model, or the mean of the logits: the logits' own next-token statistics.
            let mut sum: Option<Tensor> = None;
            for m in models {
                let logits = m.logits(batch)?.to_dtype(DType::F32)?;
                sum = Some(match sum {
                    None => logits,
                    Some(s) => (s + logits)?,
                });
            }
            let mean = (sum.expect("at least one model") / models.len() as f64)?;
            let (lp, am) = tokens::next_token_log_probs(&mean, ids)?;
            return Ok((widen(lp)?, am.to_vec2::<u32>()?));
        }
        // The mixture: sum the members' probabilities on the device (for its argmax), and
        // combine their target log-probabilities on the host in f64 (log-sum-exp), so that a
        // token every member finds unlikely doesn't underflow to 0.
        let (_, t) = ids.dims2()?;
        let targets = ids.narrow(1, 1, t - 1)?.contiguous()?.unsqueeze(2)?;
        let mut probs: Option<Tensor> = None;
        let mut member_lp = Vec::with_capacity(models.len());
        for m in models {
            let logits = m.logits(batch)?;
            let logits = logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?;
            let lsm = tokens::log_softmax(&logits)?;
            member_lp.push(widen(lsm.gather(&targets, 2)?.squeeze(2)?)?);
            let p = lsm.exp()?;
            probs = Some(match probs {
                None => p,
                Some(s) => (s + p)?,
            });
        }
        let argmax = tokens::first_argmax(&probs.expect("several models"))?.to_vec2::<u32>()?;
        let k = (models.len() as f64).ln();
        let mut log_probs = member_lp[0].clone();
        for (r, row) in log_probs.iter_mut().enumerate() {
            for (p, x) in row.iter_mut().enumerate() {
                let max = member_lp
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, lp| m.max(lp[r][p]));
                let sum: f64 = member_lp.iter().map(|lp| (lp[r][p] - max).exp()).sum();
                *x = max + sum.ln() - k;
            }
        }
        Ok((log_probs, argmax))
    }

    fn failed(&self, path: &std::path::Path) -> String {
        format!(
            "forward pass of {} on {} failed",
            self.arch.describe(),
            path.display()
        )
    }

    /// Accuracy and loss of the model built from `weights` on `data`.
    pub fn score(&self, weights: &Weights, data: &Dataset) -> Result<Score> {
        self.score_with(weights, data, None)
    }

    /// [`Evaluator::score`] with `data`'s inputs already on the device.
    pub fn score_on(&self, weights: &Weights, data: &Dataset, inputs: &Tensor) -> Result<Score> {
        self.score_with(weights, data, Some(inputs))
    }

    /// [`Evaluator::score_on`] when `inputs` is given, else [`Evaluator::score`].
    pub fn score_with(
        &self,
        weights: &Weights,
        data: &Dataset,
        inputs: Option<&Tensor>,
    ) -> Result<Score> {
        let logits = self.logits_with(weights, data, inputs)?;
        Ok(Score::from_logits(
            &logits,
            self.arch.output().width(),
            &data.labels,
        ))
    }
}
