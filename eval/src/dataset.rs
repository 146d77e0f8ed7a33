//! Datasets: a safetensors file with `inputs` (float [N, ...]) and `labels` (i64 [N]).

use std::path::{Path, PathBuf};

use model_soup::format::{Accumulator, Checkpoint, Dtype};

use super::arch::Architecture;
use super::error::{Error, Result};

/// One split of a dataset, held on the host as f32 inputs and class labels.
pub struct Dataset {
    /// The file it came from.
    pub path: PathBuf,
    /// Row-major inputs, `len() * sample_len()` values.
    pub inputs: Vec<f32>,
    /// The shape of one input, without the batch dimension.
    pub sample_shape: Vec<usize>,
    /// Class of each input, each in `0..classes`.
    pub labels: Vec<usize>,
}

impl Dataset {
    /// Loads `path` and checks it against `arch`: input shape, and labels in `0..num_classes`.
    pub fn open(path: &Path, arch: &dyn Architecture) -> Result<Dataset> {
        let file = Checkpoint::open(path)?;
        let bad = |reason: String| Error::Dataset {
            path: path.to_path_buf(),
            reason,
        };
        let inputs = file.tensor("inputs").ok_or_else(|| {
            bad("no 'inputs' tensor; a dataset holds 'inputs' (float [N, ...]) and 'labels' (i64 [N])".into())
        })?;
        let labels = file.tensor("labels").ok_or_else(|| {
            bad("no 'labels' tensor; a dataset holds 'inputs' (float [N, ...]) and 'labels' (i64 [N])".into())
        })?;
        if !inputs.info.dtype.is_averaged() {
            return Err(bad(format!(
                "'inputs' is {}; it must be a float tensor (F32, F16, BF16 or F64)",
                inputs.info.dtype
            )));
        }
        if labels.info.dtype != Dtype::I64 {
            return Err(bad(format!(
                "'labels' is {}; it must be I64",
                labels.info.dtype
            )));
        }
        let shape: Vec<usize> = inputs.info.shape.iter().map(|&d| d as usize).collect();
        let expected = arch.input();
        if shape.is_empty() || !expected.accepts(&shape[1..]) {
            return Err(bad(format!(
                "'inputs' has shape {shape:?}; {} expects {expected}",
                arch.describe(),
            )));
        }
        let n = shape[0];
        if labels.info.shape != [n as u64] {
            return Err(bad(format!(
                "'labels' has shape {:?}; it must be [{n}], one label per input",
                labels.info.shape
            )));
        }
        let mut values = vec![0f32; inputs.info.elements() as usize];
        f32::load(inputs.info.dtype, inputs.data, &mut values);
        let classes = arch.num_classes();
        let labels = labels
            .data
            .chunks_exact(8)
            .enumerate()
            .map(|(i, b)| {
                let label = i64::from_le_bytes(b.try_into().expect("chunks of 8"));
                usize::try_from(label)
                    .ok()
                    .filter(|&l| l < classes)
                    .ok_or_else(|| {
                        bad(format!(
                            "label {label} of input {i} is out of range; {} has classes 0..{}",
                            arch.describe(),
                            classes - 1
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            path: path.to_path_buf(),
            inputs: values,
            sample_shape: shape[1..].to_vec(),
            labels,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Values per example.
    pub fn sample_len(&self) -> usize {
        self.sample_shape.iter().product()
    }
}
