//! Running a model over a dataset in batches: logits and scores.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;

use super::arch::Architecture;
use super::dataset::Dataset;
use super::error::{CandleContext, Result};
use super::score::Score;
use super::weights::Weights;

/// Evaluates weights of one architecture on one device, `batch_size` examples at a time.
pub struct Evaluator {
    /// The model family.
    pub arch: Arc<dyn Architecture>,
    /// Where models run.
    pub device: Device,
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Counts evaluated examples; hidden unless the caller made it visible.
    pub progress: ProgressBar,
}

impl Evaluator {
    /// An evaluator with a hidden progress bar.
    pub fn new(arch: Arc<dyn Architecture>, device: Device, batch_size: usize) -> Evaluator {
        Evaluator {
            arch,
            device,
            batch_size: batch_size.max(1),
            progress: ProgressBar::hidden(),
        }
    }

    /// Row-major logits `[data.len(), classes]` of the model built from `weights`.
    pub fn logits(&self, weights: &Weights, data: &Dataset) -> Result<Vec<f32>> {
        let vb = weights.var_builder(&self.device)?;
        let model = self
            .arch
            .build(vb)
            .context(|| format!("cannot build {}", self.arch.describe()))?;
        self.progress.inc_length(data.len() as u64);
        let mut out = Vec::with_capacity(data.len() * self.arch.num_classes());
        for start in (0..data.len()).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(data.len());
            let mut shape = vec![end - start];
            shape.extend(&data.sample_shape);
            let inputs = data.batch(start, end)?;
            let run = || -> candle_core::Result<Vec<f32>> {
                let x = Tensor::from_slice(&inputs, shape, &self.device)?;
                model.logits(&x)?.flatten_all()?.to_vec1::<f32>()
            };
            out.extend(run().context(|| {
                format!(
                    "forward pass of {} on {} failed",
                    self.arch.describe(),
                    data.path.display()
                )
            })?);
            self.progress.inc((end - start) as u64);
        }
        Ok(out)
    }

    /// Accuracy and loss of the model built from `weights` on `data`.
    pub fn score(&self, weights: &Weights, data: &Dataset) -> Result<Score> {
        let logits = self.logits(weights, data)?;
        Ok(Score::from_logits(
            &logits,
            self.arch.num_classes(),
            &data.labels,
        ))
    }
}
