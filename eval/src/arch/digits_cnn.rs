//! The small CNN of the fixtures: two conv + batch-norm + ReLU + max-pool blocks and a linear head, for 8×8 digits.
//!
//! The layout follows the ResNet stem convention (a convolution without bias, then batch norm),
//! with PyTorch's tensor names, so a state dict saved from the equivalent `torch.nn` module loads
//! unchanged:
//!
//! | tensor                      | shape          |
//! |-----------------------------|----------------|
//! | `conv1.weight`              | [16, 1, 3, 3]  |
//! | `bn1.{weight,bias,running_mean,running_var}` | [16] |
//! | `bn1.num_batches_tracked`   | [] (i64, ignored) |
//! | `conv2.weight`              | [32, 16, 3, 3] |
//! | `bn2.{weight,bias,running_mean,running_var}` | [32] |
//! | `bn2.num_batches_tracked`   | [] (i64, ignored) |
//! | `fc.weight`                 | [10, 128]      |
//! | `fc.bias`                   | [10]           |
//!
//! Input: f32 [N, 1, 8, 8]. Output: logits [N, 10].
//!
//! References: the conv-then-batch-norm block without conv bias is ResNet's (He et al. 2016,
//! "Deep Residual Learning for Image Recognition"); batch norm is Ioffe and Szegedy 2015, with
//! PyTorch's defaults (eps 1e-5, momentum 0.1, unbiased running variance). The data is the UCI
//! Optical Recognition of Handwritten Digits set (Alpaydin and Kaynak 1998), see fixtures/README.md.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{
    batch_norm, conv2d_no_bias, linear, BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder,
};

use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// Channels of the first convolution.
const C1: usize = 16;
/// Channels of the second convolution.
const C2: usize = 32;
/// Number of classes (the ten digits).
const CLASSES: usize = 10;
/// Batch-norm epsilon, PyTorch's default.
pub const BN_EPS: f64 = 1e-5;

/// The registry entry: the fixtures' CNN has one configuration, so the checkpoint only has to
/// match it.
pub struct DigitsCnnFamily;

impl Family for DigitsCnnFamily {
    fn name(&self) -> &'static str {
        "digits-cnn"
    }

    fn summary(&self) -> &'static str {
        "the fixtures' small CNN for 8x8 grey digits (conv-bn-relu-pool x2, linear), 10 classes"
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.shape("conv1.weight") == Some(&[C1, 1, 3, 3][..])
            && layout.has("conv2.weight")
            && layout.has("fc.weight")
            && !layout.has("layer1.0.conv1.weight")
    }

    fn configure(
        &self,
        _layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(arch())
    }
}

/// The one configuration of the fixtures' CNN.
pub fn arch() -> Arc<dyn Architecture> {
    Arc::new(DigitsCnnArch)
}

/// The fixed architecture of [`DigitsCnn`].
pub struct DigitsCnnArch;

impl Architecture for DigitsCnnArch {
    fn family(&self) -> &'static str {
        "digits-cnn"
    }

    fn describe(&self) -> String {
        "digits-cnn".into()
    }

    fn variant(&self) -> Option<String> {
        Some("digits-cnn".into())
    }

    fn input(&self) -> Input {
        InputShape {
            channels: 1,
            size: Some([8, 8]),
            min: 1,
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(CLASSES)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut specs = vec![TensorSpec::float("conv1.weight", &[C1, 1, 3, 3])];
        specs.extend(bn_specs("bn1", C1));
        specs.push(TensorSpec::float("conv2.weight", &[C2, C1, 3, 3]));
        specs.extend(bn_specs("bn2", C2));
        specs.push(TensorSpec::float("fc.weight", &[CLASSES, C2 * 2 * 2]));
        specs.push(TensorSpec::float("fc.bias", &[CLASSES]));
        specs
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        Ok(Box::new(DigitsCnn::new(vb)?))
    }
}

fn bn_specs(prefix: &str, n: usize) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .map(|leaf| TensorSpec::float(&format!("{prefix}.{leaf}"), &[n]))
        .collect();
    specs.push(TensorSpec::buffer(
        &format!("{prefix}.num_batches_tracked"),
        &[],
    ));
    specs
}

/// The model itself. Built from any [`VarBuilder`]: a `VarMap` for training
/// (`eval/examples/make-fixtures.rs`) or in-memory tensors for evaluation.
pub struct DigitsCnn {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    fc: Linear,
}

impl DigitsCnn {
    /// Builds the model from `vb`, reading the tensor names listed in the module docs.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let conv = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        Ok(Self {
            conv1: conv2d_no_bias(1, C1, 3, conv, vb.pp("conv1"))?,
            bn1: batch_norm(C1, BN_EPS, vb.pp("bn1"))?,
            conv2: conv2d_no_bias(C1, C2, 3, conv, vb.pp("conv2"))?,
            bn2: batch_norm(C2, BN_EPS, vb.pp("bn2"))?,
            fc: linear(C2 * 2 * 2, CLASSES, vb.pp("fc"))?,
        })
    }

    /// Logits for a batch `x` of shape [N, 1, 8, 8]. With `train`, batch norm uses the batch's
    /// statistics and updates its running ones; otherwise it uses the running statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        x.apply(&self.conv1)?
            .apply_t(&self.bn1, train)?
            .relu()?
            .max_pool2d(2)?
            .apply(&self.conv2)?
            .apply_t(&self.bn2, train)?
            .relu()?
            .max_pool2d(2)?
            .flatten_from(1)?
            .apply(&self.fc)
    }
}

impl Model for DigitsCnn {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        self.forward_t(x, false)
    }
}

impl Module for DigitsCnn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }
}
