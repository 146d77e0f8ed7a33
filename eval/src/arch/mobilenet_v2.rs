//! torchvision's MobileNetV2 (`torchvision.models.mobilenetv2`), configured from the checkpoint's shapes.
//!
//! Reference: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks";
//! torchvision's `MobileNetV2` and `InvertedResidual`.
//!
//! `features.0` is the stem (3x3 stride-2 conv-bn-ReLU6); `features.{1..n}` are inverted
//! residual blocks `features.{i}.conv.{j}`: an optional 1x1 expansion (conv-bn-ReLU6), a
//! depthwise 3x3 (conv-bn-ReLU6), a 1x1 projection conv and its batch norm, with the input
//! added back when the block keeps its shape; `features.{n+1}` is a 1x1 conv-bn-ReLU6; then
//! global average pooling and `classifier.1` (dropout at `classifier.0` is inactive).
//!
//! Read from the shapes: every width, expansion and kernel, the number of blocks, the classes.
//! Not in the shapes: each block's stride. With torchvision's 17 blocks, its setting (stride 2
//! at blocks 2, 4, 7 and 14, any `width_mult`); otherwise `--arch-option strides=1,2,...`, one
//! per block.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, batch_norm_specs, conv_dims, linear, linear_specs, ConvNorm, ConvShape,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct MobileNetV2Family;

/// torchvision's block strides (blocks 1 to 17).
const STRIDES: [usize; 17] = [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1];

impl Family for MobileNetV2Family {
    fn name(&self) -> &'static str {
        "mobilenet_v2"
    }

    fn summary(&self) -> &'static str {
        "torchvision MobileNetV2, any width; strides by torchvision's setting unless --arch-option strides=.."
    }

    fn variants(&self) -> &'static [&'static str] {
        &[]
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[("strides", "each block's stride, e.g. 1,2,1,2,1,1,2,...")]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.0.0.weight")
            && layout.has("features.1.conv.0.0.weight")
            && layout.has("classifier.1.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(MobileNetV2Config::read(layout, options)?))
    }
}

/// One inverted residual block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvertedResidual {
    /// Input channels.
    pub input: usize,
    /// Channels after the expansion (the input's when there is none).
    pub hidden: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// Output channels.
    pub output: usize,
}

/// A MobileNetV2's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MobileNetV2Config {
    /// Input channels.
    pub channels: usize,
    /// Stem output channels.
    pub stem: usize,
    /// The blocks.
    pub blocks: Vec<InvertedResidual>,
    /// Output channels of the last 1x1 convolution.
    pub last: usize,
    /// Output classes.
    pub classes: usize,
}

impl MobileNetV2Config {
    /// Reads the configuration from the checkpoint's tensor shapes and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<Self, ConfigError> {
        let (stem, channels, _) = conv_dims(layout, "features.0.0.weight")?;
        let n = layout.count("features.", 1, ".conv.0.0.weight");
        let strides = match options.list("strides")? {
            Some(s) => s,
            None if n == STRIDES.len() => STRIDES.to_vec(),
            None => {
                return Err(ConfigError::new(
                    "--arch-option strides",
                    format!("is needed: the checkpoint has {n} blocks, not torchvision's 17, so their strides are unknown"),
                ))
            }
        };
        if strides.len() != n || strides.iter().any(|&s| s != 1 && s != 2) {
            return Err(ConfigError::new(
                "--arch-option strides",
                format!("must give {n} strides of 1 or 2, one per block"),
            ));
        }
        let mut input = stem;
        let mut blocks = Vec::with_capacity(n);
        for i in 1..=n {
            let p = format!("features.{i}.conv");
            // With an expansion: conv.0 (expand), conv.1 (depthwise), conv.2 (project), conv.3
            // (its norm); without: conv.0, conv.1, conv.2.
            let expand = layout.has(&format!("{p}.3.weight"));
            let dw = usize::from(expand);
            let (hidden, _, kernel) = conv_dims(layout, &format!("{p}.{dw}.0.weight"))?;
            let (output, _, _) = conv_dims(layout, &format!("{p}.{}.weight", dw + 1))?;
            blocks.push(InvertedResidual {
                input,
                hidden,
                kernel,
                stride: strides[i - 1],
                output,
            });
            input = output;
        }
        let (last, _, _) = conv_dims(layout, &format!("features.{}.0.weight", n + 1))?;
        let classes = layout.require("classifier.1.weight", 2)?[0];
        Ok(MobileNetV2Config {
            channels,
            stem,
            blocks,
            last,
            classes,
        })
    }
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> ConvShape {
    ConvShape {
        input,
        output,
        kernel,
        stride,
        padding: (kernel - 1) / 2,
        groups,
        dilation: 1,
        bias: false,
    }
}

impl Architecture for MobileNetV2Config {
    fn family(&self) -> &'static str {
        "mobilenet_v2"
    }

    fn describe(&self) -> String {
        let widths: Vec<String> = self.blocks.iter().map(|b| b.output.to_string()).collect();
        format!(
            "mobilenet_v2 (stem {}, blocks {}, last {}, {} classes)",
            self.stem,
            widths.join("-"),
            self.last,
            self.classes
        )
    }

    fn input(&self) -> Input {
        InputShape {
            channels: self.channels,
            size: None,
            // Every convolution is padded by half its kernel: any size leaves a position.
            min: 1,
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        conv(self.channels, self.stem, 3, 2, 1).specs("features.0.0", &mut out);
        batch_norm_specs("features.0.1", self.stem, &mut out);
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("features.{}.conv", i + 1);
            let mut j = 0;
            if b.hidden != b.input {
                conv(b.input, b.hidden, 1, 1, 1).specs(&format!("{p}.0.0"), &mut out);
                batch_norm_specs(&format!("{p}.0.1"), b.hidden, &mut out);
                j = 1;
            }
            conv(b.hidden, b.hidden, b.kernel, b.stride, b.hidden)
                .specs(&format!("{p}.{j}.0"), &mut out);
            batch_norm_specs(&format!("{p}.{j}.1"), b.hidden, &mut out);
            conv(b.hidden, b.output, 1, 1, 1).specs(&format!("{p}.{}", j + 1), &mut out);
            batch_norm_specs(&format!("{p}.{}", j + 2), b.output, &mut out);
        }
        let input = self.blocks.last().map_or(self.stem, |b| b.output);
        let p = format!("features.{}", self.blocks.len() + 1);
        conv(input, self.last, 1, 1, 1).specs(&format!("{p}.0"), &mut out);
        batch_norm_specs(&format!("{p}.1"), self.last, &mut out);
        linear_specs("classifier.1", self.last, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let cn = |shape: ConvShape, vb: VarBuilder| ConvNorm::new(&shape, vb.pp("0"), vb.pp("1"));
        let stem = cn(conv(self.channels, self.stem, 3, 2, 1), f.pp("0"))?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let vb = f.pp(format!("{}.conv", i + 1));
            let mut j = 0;
            let expand = if b.hidden != b.input {
                j = 1;
                Some(cn(conv(b.input, b.hidden, 1, 1, 1), vb.pp("0"))?)
            } else {
                None
            };
            blocks.push(Block {
                expand,
                depthwise: cn(
                    conv(b.hidden, b.hidden, b.kernel, b.stride, b.hidden),
                    vb.pp(j.to_string()),
                )?,
                project: ConvNorm::new(
                    &conv(b.hidden, b.output, 1, 1, 1),
                    vb.pp((j + 1).to_string()),
                    vb.pp((j + 2).to_string()),
                )?,
                residual: b.stride == 1 && b.input == b.output,
            });
        }
        let input = self.blocks.last().map_or(self.stem, |b| b.output);
        let last = cn(
            conv(input, self.last, 1, 1, 1),
            f.pp((self.blocks.len() + 1).to_string()),
        )?;
        Ok(Box::new(MobileNetV2 {
            stem,
            blocks,
            last,
            classifier: linear(self.last, self.classes, vb.pp("classifier.1"))?,
        }))
    }
}

fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

struct Block {
    expand: Option<ConvNorm>,
    depthwise: ConvNorm,
    project: ConvNorm,
    residual: bool,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.expand {
            Some(e) => relu6(&x.apply(e)?)?,
            None => x.clone(),
        };
        let y = relu6(&y.apply(&self.depthwise)?)?.apply(&self.project)?;
        if self.residual {
            x + y
        } else {
            Ok(y)
        }
    }
}

struct MobileNetV2 {
    stem: ConvNorm,
    blocks: Vec<Block>,
    last: ConvNorm,
    classifier: Linear,
}

impl Model for MobileNetV2 {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = relu6(&x.apply(&self.stem)?)?;
        for block in &self.blocks {
            x = x.apply(block)?;
        }
        let x = relu6(&x.apply(&self.last)?)?;
        adaptive_avg_pool(&x, 1, 1)?
            .flatten_from(1)?
            .apply(&self.classifier)
    }
}
