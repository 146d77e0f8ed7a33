//! Layers torchvision's models share, with PyTorch's semantics: convolutions read from their stored shapes, eval-mode batch norm (folded into the convolution before it), padded pooling, adaptive average pooling, hard activations.

use candle_core::{DType, Module, ModuleT, Result, Tensor, D};
use candle_nn::{BatchNorm, Linear, VarBuilder};

use super::{Layout, TensorSpec};

mod attention;
mod depthwise;

pub use attention::{first_token, tokens_linear, SelfAttention};
pub use depthwise::Depthwise;

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
    /// Spacing of the kernel taps (1: none).
    pub dilation: usize,
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
            dilation: 1,
            bias: false,
        }
    }

    /// The shape of the stored weight: [out, in/groups, k, k].
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.output,
            self.input / self.groups,
            self.kernel,
            self.kernel,
        ]
    }

    /// The tensors at `prefix` (`prefix.weight`, and `prefix.bias` with a bias).
    pub fn specs(&self, prefix: &str, out: &mut Vec<TensorSpec>) {
        out.push(TensorSpec::float(
            &format!("{prefix}.weight"),
            &self.weight_shape(),
        ));
        if self.bias {
            out.push(TensorSpec::float(&format!("{prefix}.bias"), &[self.output]));
        }
    }

    /// Builds the convolution from `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Conv> {
        let weight = vb.get(self.weight_shape().as_slice(), "weight")?;
        let bias = if self.bias {
            Some(vb.get(self.output, "bias")?)
        } else {
            None
        };
        Conv::new(weight, bias, self)
    }
}

/// The window a convolution or pooling layer slides over a feature map: what decides how
/// much of the map is left after it, and so the smallest input a model takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Square kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding on each side.
    pub padding: usize,
    /// Spacing of the kernel taps.
    pub dilation: usize,
}

impl Window {
    /// A pooling window (PyTorch's `ceil_mode=False`, as torchvision's models use it).
    pub fn pool(kernel: usize, stride: usize, padding: usize) -> Self {
        Window {
            kernel,
            stride,
            padding,
            dilation: 1,
        }
    }

    /// The side left of a side of `n`, as PyTorch computes it; `None` when the kernel does
    /// not fit, where candle fails with an internal error or panics.
    pub fn output(&self, n: usize) -> Option<usize> {
        let span = self.dilation * (self.kernel.max(1) - 1) + 1;
        let padded = n + 2 * self.padding;
        (padded >= span).then(|| (padded - span) / self.stride.max(1) + 1)
    }
}

impl From<&ConvShape> for Window {
    fn from(c: &ConvShape) -> Self {
        Window {
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
        }
    }
}

/// The smallest side for which every window of `chain`, applied in order, leaves at least one
/// position. Windows that keep the size (padded stride-1 convolutions) may be left out.
pub fn min_side(chain: &[Window]) -> usize {
    // Each window at most divides the side by its stride, so the answer is below the product
    // of the strides times the largest kernel; the bound only stops a malformed chain.
    (1..=1 << 24)
        .find(|&n| chain.iter().try_fold(n, |n, w| w.output(n)).is_some())
        .unwrap_or(1 << 24)
}

/// A `torch.nn.Conv2d` in eval mode: candle's convolution, or, on the CPU for a depthwise
/// layer (one filter per channel), the direct [`Depthwise`] kernel.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    shape: ConvShape,
    /// The direct kernel, when the layer is depthwise and the weights are on the CPU.
    depthwise: Option<Depthwise>,
}

impl Conv {
    /// A convolution of `shape` from its weight [out, in/groups, k, k] and optional bias [out].
    pub fn new(weight: Tensor, bias: Option<Tensor>, shape: &ConvShape) -> Result<Conv> {
        let depthwise_layer =
            shape.groups > 1 && shape.groups == shape.input && shape.output == shape.input;
        let depthwise = if depthwise_layer && weight.device().is_cpu() {
            Some(Depthwise {
                stride: shape.stride,
                padding: shape.padding,
                dilation: shape.dilation,
                bias: bias
                    .as_ref()
                    .map(|b| b.to_dtype(DType::F32)?.to_vec1::<f32>())
                    .transpose()?,
            })
        } else {
            None
        };
        Ok(Conv {
            weight,
            bias,
            shape: *shape,
            depthwise,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(op) = &self.depthwise {
            return x.contiguous()?.apply_op2_no_bwd(&self.weight, op);
        }
        let s = &self.shape;
        let y = x.conv2d(&self.weight, s.padding, s.stride, s.dilation, s.groups)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, s.output, 1, 1))?),
            None => Ok(y),
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
///
/// In eval mode batch norm is an affine map per output channel, `y * s + (beta - mean * s)`
/// with `s = gamma / sqrt(var + eps)`, so it is folded into the convolution when the model is
/// built: `W' = W * s` per output channel and `b' = (b - mean) * s + beta`. That saves one
/// pass over every activation (and its temporaries) per convolution. The folding is computed
/// in f64 from the f32 weights and rounded once to the evaluation dtype, so an f16/bf16 model
/// rounds each folded weight once rather than rounding the convolution's output and then
/// every step of the normalisation.
pub struct ConvNorm {
    conv: Conv,
}

impl ConvNorm {
    /// Reads `conv` at `conv_vb` and the batch norm (PyTorch's default epsilon) at `norm_vb`.
    pub fn new(shape: &ConvShape, conv_vb: VarBuilder, norm_vb: VarBuilder) -> Result<Self> {
        Self::with_eps(shape, conv_vb, norm_vb, BN_EPS)
    }

    /// [`ConvNorm::new`] with batch norm's epsilon `eps`.
    pub fn with_eps(
        shape: &ConvShape,
        conv_vb: VarBuilder,
        norm_vb: VarBuilder,
        eps: f64,
    ) -> Result<Self> {
        let dtype = conv_vb.dtype();
        // Read at full precision (the evaluator's weights are f32), fold in f64, round once.
        let exact = |vb: &VarBuilder, shape: &[usize], name: &str| -> Result<Tensor> {
            vb.clone()
                .set_dtype(DType::F32)
                .get(shape, name)?
                .to_dtype(DType::F64)
        };
        let o = shape.output;
        let weight = exact(
            &conv_vb,
            &[o, shape.input / shape.groups, shape.kernel, shape.kernel],
            "weight",
        )?;
        let bias = if shape.bias {
            Some(exact(&conv_vb, &[o], "bias")?)
        } else {
            None
        };
        let gamma = exact(&norm_vb, &[o], "weight")?;
        let beta = exact(&norm_vb, &[o], "bias")?;
        let mean = exact(&norm_vb, &[o], "running_mean")?;
        let var = exact(&norm_vb, &[o], "running_var")?;
        let scale = (gamma / (var + eps)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
        let shift = match bias {
            Some(b) => (b - mean)?,
            None => mean.neg()?,
        };
        let bias = ((shift * scale)? + beta)?;
        Ok(ConvNorm {
            conv: Conv::new(weight.to_dtype(dtype)?, Some(bias.to_dtype(dtype)?), shape)?,
        })
    }
}

impl Module for ConvNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// `torch.nn.Hardsigmoid`: `relu6(x + 3) / 6`.
pub fn hard_sigmoid(x: &Tensor) -> Result<Tensor> {
    (x + 3.0)?.clamp(0f32, 6f32)? / 6.0
}

/// `torch.nn.Hardswish`: `x * relu6(x + 3) / 6`.
pub fn hard_swish(x: &Tensor) -> Result<Tensor> {
    x * hard_sigmoid(x)?
}

/// torchvision's `_make_divisible(v, 8)`: the multiple of 8 nearest `v` (at least 8), one
/// step up when rounding lost more than 10%.
pub fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
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

    /// The smallest sides PyTorch gives for torchvision's stems and downsampling chains.
    #[test]
    fn min_side_is_the_smallest_input_every_window_fits() {
        let conv = |kernel, stride, padding| Window {
            kernel,
            stride,
            padding,
            dilation: 1,
        };
        // ConvNeXt: a 4x4 stride-4 stem, then three 2x2 stride-2 downsamplings.
        let convnext = [conv(4, 4, 0), conv(2, 2, 0), conv(2, 2, 0), conv(2, 2, 0)];
        assert_eq!(min_side(&convnext), 32);
        // DenseNet-121: 7x7/2 stem, 3x3/2 max pool, three 2x2 average pools.
        let mut densenet = vec![conv(7, 2, 3), Window::pool(3, 2, 1)];
        densenet.extend([Window::pool(2, 2, 0); 3]);
        assert_eq!(min_side(&densenet), 29);
        // Padded layers take anything; a dilated 3x3 needs 5 without padding.
        assert_eq!(min_side(&[conv(7, 2, 3), conv(3, 2, 1)]), 1);
        let dilated = Window {
            dilation: 2,
            ..conv(3, 1, 0)
        };
        assert_eq!(min_side(&[dilated]), 5);
        assert_eq!(min_side(&[]), 1);
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
