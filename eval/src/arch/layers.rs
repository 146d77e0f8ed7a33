//! Layers torchvision's models share, with PyTorch's semantics: convolutions read from their stored shapes, eval-mode batch norm, padded pooling, adaptive average pooling.

use candle_core::{Module, ModuleT, Result, Tensor, D};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarBuilder};

use super::{Layout, TensorSpec};

/// Batch-norm epsilon, PyTorch's default.
pub const BN_EPS: f64 = 1e-5;

/// A 2-D convolution as `torch.nn.Conv2d` stores it: `weight` [out, in/groups, k, k] and an
/// optional `bias` [out].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub input: usize,
    /// Output channels.
    pub output: usize,
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
    /// Whether a `bias` tensor goes with the weight.
    pub bias: bool,
}

impl ConvShape {
    /// A bias-free convolution with `padding = kernel / 2`, torchvision's usual choice.
    pub fn same(input: usize, output: usize, kernel: usize, stride: usize) -> Self {
        ConvShape {
            input,
            output,
            kernel,
            stride,
            padding: kernel / 2,
            groups: 1,
            bias: false,
        }
    }

    /// The tensors at `prefix` (`prefix.weight`, and `prefix.bias` with a bias).
    pub fn specs(&self, prefix: &str, out: &mut Vec<TensorSpec>) {
        out.push(TensorSpec::float(
            &format!("{prefix}.weight"),
            &[
                self.output,
                self.input / self.groups,
                self.kernel,
                self.kernel,
            ],
        ));
        if self.bias {
            out.push(TensorSpec::float(&format!("{prefix}.bias"), &[self.output]));
        }
    }

    /// Builds the convolution from `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Conv2d> {
        let cfg = Conv2dConfig {
            padding: self.padding,
            stride: self.stride,
            groups: self.groups,
            ..Default::default()
        };
        if self.bias {
            candle_nn::conv2d(self.input, self.output, self.kernel, cfg, vb)
        } else {
            candle_nn::conv2d_no_bias(self.input, self.output, self.kernel, cfg, vb)
        }
    }
}

/// The output and input channels of a stored conv weight [out, in/groups, k, k], with its
/// kernel size, or the configuration error naming it.
pub fn conv_dims(
    layout: &Layout,
    name: &str,
) -> std::result::Result<(usize, usize, usize), super::ConfigError> {
    let shape = layout.require(name, 4)?;
    if shape[2] != shape[3] {
        return Err(super::ConfigError::new(
            name,
            format!("has shape {shape:?}; only square kernels are supported"),
        ));
    }
    Ok((shape[0], shape[1], shape[2]))
}

/// The tensors of a `torch.nn.BatchNorm2d` of `n` channels at `prefix`.
pub fn batch_norm_specs(prefix: &str, n: usize, out: &mut Vec<TensorSpec>) {
    for leaf in ["weight", "bias", "running_mean", "running_var"] {
        out.push(TensorSpec::float(&format!("{prefix}.{leaf}"), &[n]));
    }
    out.push(TensorSpec::buffer(
        &format!("{prefix}.num_batches_tracked"),
        &[],
    ));
}

/// A `torch.nn.BatchNorm2d` of `n` channels, used in eval mode (running statistics).
pub fn batch_norm(n: usize, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(n, BN_EPS, vb)
}

/// Applies batch norm with its running statistics.
pub fn eval_norm(x: &Tensor, bn: &BatchNorm) -> Result<Tensor> {
    bn.forward_t(x, false)
}

/// The tensors of a `torch.nn.Linear(input, output)` with bias at `prefix`.
pub fn linear_specs(prefix: &str, input: usize, output: usize, out: &mut Vec<TensorSpec>) {
    out.push(TensorSpec::float(
        &format!("{prefix}.weight"),
        &[output, input],
    ));
    out.push(TensorSpec::float(&format!("{prefix}.bias"), &[output]));
}

/// A `torch.nn.Linear(input, output)` with bias.
pub fn linear(input: usize, output: usize, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear(input, output, vb)
}

/// `torch.nn.MaxPool2d(kernel, stride, padding)`: padding counts as -infinity, so it never wins.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let x = if padding > 0 {
        pad_with(x, padding, f32::NEG_INFINITY)?
    } else {
        x.clone()
    };
    x.max_pool2d_with_stride(kernel, stride)
}

/// Pads the last two dimensions of `x` by `p` on each side with `value`.
fn pad_with(x: &Tensor, p: usize, value: f32) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let side = Tensor::full(value, (n, c, h, p), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&side, x, &side], 3)?;
    let top = Tensor::full(value, (n, c, p, w + 2 * p), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&top, &x, &top], 2)
}

/// `torch.nn.AvgPool2d(kernel, stride)` without padding.
pub fn avg_pool(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    x.avg_pool2d_with_stride(kernel, stride)
}

/// `torch.nn.AdaptiveAvgPool2d((oh, ow))`: output cell i averages input rows
/// `floor(i*h/oh) .. ceil((i+1)*h/oh)`, and likewise for columns.
pub fn adaptive_avg_pool(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if oh == 1 && ow == 1 {
        return x.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2);
    }
    if h % oh == 0 && w % ow == 0 {
        return x.avg_pool2d_with_stride((h / oh, w / ow), (h / oh, w / ow));
    }
    let mut rows = Vec::with_capacity(oh);
    for i in 0..oh {
        let (r0, r1) = (i * h / oh, ((i + 1) * h).div_ceil(oh));
        let band = x.narrow(2, r0, r1 - r0)?.mean_keepdim(2)?;
        let mut cells = Vec::with_capacity(ow);
        for j in 0..ow {
            let (c0, c1) = (j * w / ow, ((j + 1) * w).div_ceil(ow));
            cells.push(band.narrow(3, c0, c1 - c0)?.mean_keepdim(3)?);
        }
        rows.push(Tensor::cat(&cells, 3)?);
    }
    Tensor::cat(&rows, 2)
}

/// A convolution followed by eval-mode batch norm (and nothing else): torchvision's
/// `Conv2dNormActivation` without the activation, and ResNet's conv/bn pairs.
pub struct ConvNorm {
    conv: Conv2d,
    norm: BatchNorm,
}

impl ConvNorm {
    /// Reads `conv` at `conv_vb` and the batch norm at `norm_vb`.
    pub fn new(shape: &ConvShape, conv_vb: VarBuilder, norm_vb: VarBuilder) -> Result<Self> {
        Ok(ConvNorm {
            conv: shape.build(conv_vb)?,
            norm: batch_norm(shape.output, norm_vb)?,
        })
    }
}

impl Module for ConvNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        eval_norm(&x.apply(&self.conv)?, &self.norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn max_pool_padding_never_wins() {
        // All values negative: zero padding would wrongly give 0 at the borders.
        let x = Tensor::new(&[[[[-1f32, -2.0], [-3.0, -4.0]]]], &Device::Cpu).unwrap();
        let y = max_pool(&x, 3, 2, 1).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [-1.0]);
    }

    #[test]
    fn adaptive_average_uses_overlapping_windows() {
        // 1 x 1 x 1 x 5 to width 3: windows [0,2), [1,4), [3,5), as PyTorch computes them.
        let x = Tensor::new(&[[[[1f32, 2.0, 3.0, 4.0, 5.0]]]], &Device::Cpu).unwrap();
        let y = adaptive_avg_pool(&x, 1, 3).unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got, [1.5, 3.0, 4.5]);
    }
}
