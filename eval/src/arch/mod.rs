//! The architecture registry: the models `--arch NAME` can build from a checkpoint.
//!
//! To add an architecture, write one file here with a type implementing [`Architecture`]
//! (its tensor names exactly as its checkpoints spell them, read through `vb.pp(..)`), and list
//! it in [`ARCHITECTURES`].

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub mod digits_cnn;

/// A classifier built from one set of weights: maps a batch of inputs to logits [N, classes].
pub trait Classifier {
    /// Logits for a batch of inputs, with every normalisation layer in eval mode.
    fn logits(&self, x: &Tensor) -> Result<Tensor>;
}

/// Whether a tensor is a learned float parameter / statistic, or an integer buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A float tensor the model reads (weights, biases, running statistics).
    Float,
    /// An integer buffer the model may ignore, such as batch norm's `num_batches_tracked`.
    /// It is optional in a checkpoint.
    Buffer,
}

/// One tensor an architecture expects in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name, exactly as checkpoints spell it.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Float parameter or integer buffer.
    pub kind: TensorKind,
}

impl TensorSpec {
    /// A float tensor the model needs.
    pub fn float(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind: TensorKind::Float,
        }
    }

    /// An optional integer buffer.
    pub fn buffer(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind: TensorKind::Buffer,
        }
    }
}

/// A model family the evaluator can build.
pub trait Architecture: Send + Sync {
    /// The name given to `--arch`.
    fn name(&self) -> &'static str;
    /// One line for `--help` and error messages.
    fn summary(&self) -> &'static str;
    /// The shape of one input, without the batch dimension.
    fn input_shape(&self) -> Vec<usize>;
    /// Number of output classes; labels must lie in `0..num_classes`.
    fn num_classes(&self) -> usize;
    /// Every tensor a checkpoint must (Float) or may (Buffer) hold.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// Builds the model from tensors named as in [`Architecture::tensors`], which `vb` hands
    /// out on the evaluation device in the evaluation dtype (f32 unless `--eval-dtype`); inputs
    /// arrive in that dtype too.
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Classifier>>;
}

/// Every architecture `--arch` accepts.
pub const ARCHITECTURES: &[&dyn Architecture] = &[&digits_cnn::DigitsCnnArch];

/// The architecture called `name`, if there is one.
pub fn lookup(name: &str) -> Option<&'static dyn Architecture> {
    ARCHITECTURES.iter().copied().find(|a| a.name() == name)
}

/// The names `--arch` accepts, comma-separated, for error messages.
pub fn names() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--arch`'s help: every architecture with its summary.
pub fn help() -> String {
    let list: Vec<String> = ARCHITECTURES
        .iter()
        .map(|a| format!("{} ({})", a.name(), a.summary()))
        .collect();
    format!(
        "Model architecture the checkpoints hold: {}",
        list.join("; ")
    )
}
