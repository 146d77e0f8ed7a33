//! Running a model over a dataset in batches, on the evaluation device: logits and scores.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use indicatif::ProgressBar;

use super::arch::{Architecture, Batch};
use super::dataset::Dataset;
use super::error::{CandleContext, Result};
use super::score::Score;
use super::weights::Weights;

/// Evaluates weights of one architecture on one device, `batch_size` examples at a time.
pub struct Evaluator {
    /// The model, configured from the checkpoints.
    pub arch: Arc<dyn Architecture>,
    /// Where models run.
    pub device: Device,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// The dtype models compute in (`--eval-dtype`): f32 (the default), f16 or bf16. Weights
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
