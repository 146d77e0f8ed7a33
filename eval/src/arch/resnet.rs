//! torchvision's ResNet, ResNeXt and Wide ResNet (`torchvision.models.resnet`), configured from the checkpoint's shapes.
//!
//! References: He et al. 2016, "Deep Residual Learning for Image Recognition" (the stride of a
//! bottleneck sits on its 3x3 convolution, torchvision's "ResNet v1.5"); Xie et al. 2017,
//! "Aggregated Residual Transformations" (ResNeXt: grouped 3x3 convolutions); Zagoruyko and
//! Komodakis 2016, "Wide Residual Networks" (wider bottlenecks).
//!
//! Tensor names are torchvision's state-dict names:
//!
//! | tensor | shape |
//! |--------|-------|
//! | `conv1.weight`, `bn1.*` | stem: [C0, 3, 7, 7], stride 2, then 3x3 max pool, stride 2 |
//! | `layer{s}.{b}.conv{1,2[,3]}.weight`, `.bn{1,2[,3]}.*` | block b of stage s |
//! | `layer{s}.{b}.downsample.{0,1}.*` | 1x1 projection and its batch norm, when present |
//! | `fc.weight`, `fc.bias` | [classes, features] |
//!
//! Read from the shapes: basic or bottleneck blocks (`conv3` present), the number of stages
//! and of blocks per stage, every width, the groups of each 3x3 convolution, the classes.
//! Fixed by torchvision and assumed: the first block of every stage after the first has
//! stride 2; `replace_stride_with_dilation` (dilated stages) is not supported.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, batch_norm_specs, conv_dims, linear, linear_specs, max_pool, min_side,
    ConvNorm, ConvShape, Window,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct ResNetFamily;

/// Standard variants: name, bottleneck, blocks per stage, groups, width per group.
const VARIANTS: &[(&str, bool, [usize; 4], usize, usize)] = &[
    ("resnet18", false, [2, 2, 2, 2], 1, 64),
    ("resnet34", false, [3, 4, 6, 3], 1, 64),
    ("resnet50", true, [3, 4, 6, 3], 1, 64),
    ("resnet101", true, [3, 4, 23, 3], 1, 64),
    ("resnet152", true, [3, 8, 36, 3], 1, 64),
    ("resnext50_32x4d", true, [3, 4, 6, 3], 32, 4),
    ("resnext101_32x8d", true, [3, 4, 23, 3], 32, 8),
    ("resnext101_64x4d", true, [3, 4, 23, 3], 64, 4),
    ("wide_resnet50_2", true, [3, 4, 6, 3], 1, 128),
    ("wide_resnet101_2", true, [3, 4, 23, 3], 1, 128),
];

impl Family for ResNetFamily {
    fn name(&self) -> &'static str {
        "resnet"
    }

    fn summary(&self) -> &'static str {
        "torchvision ResNet, ResNeXt and Wide ResNet, any depth and width"
    }

    fn variants(&self) -> &'static [&'static str] {
        &[
            "resnet18",
            "resnet34",
            "resnet50",
            "resnet101",
            "resnet152",
            "resnext50_32x4d",
            "resnext101_32x8d",
            "resnext101_64x4d",
            "wide_resnet50_2",
            "wide_resnet101_2",
        ]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("conv1.weight") && layout.has("layer1.0.conv1.weight") && layout.has("fc.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(ResNetConfig::read(layout)?))
    }
}

/// One residual block: its convolutions in order (2 for basic, 3 for bottleneck) and the
/// projection of its shortcut, if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// `conv1`, `conv2` (and `conv3`), each followed by the batch norm of the same number.
    pub convs: Vec<ConvShape>,
    /// `downsample.0`, followed by `downsample.1`.
    pub downsample: Option<ConvShape>,
}

/// A ResNet's configuration, as read from a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// `conv1`.
    pub stem: ConvShape,
    /// Bottleneck (three convolutions) or basic (two) blocks.
    pub bottleneck: bool,
    /// Blocks of each stage (`layer1`, `layer2`, ...).
    pub stages: Vec<Vec<Block>>,
    /// Output classes of `fc`.
    pub classes: usize,
}

impl ResNetConfig {
    /// Reads the configuration from the checkpoint's tensor shapes.
    pub fn read(layout: &Layout) -> std::result::Result<ResNetConfig, ConfigError> {
        let (stem_out, stem_in, stem_k) = conv_dims(layout, "conv1.weight")?;
        let stem = ConvShape {
            input: stem_in,
            output: stem_out,
            kernel: stem_k,
            stride: 2,
            padding: stem_k / 2,
            groups: 1,
            dilation: 1,
            bias: false,
        };
        let bottleneck = layout.has("layer1.0.conv3.weight");
        let n_stages = layout.count("layer", 1, ".0.conv1.weight");
        if n_stages == 0 {
            return Err(ConfigError::new("layer1.0.conv1.weight", "is missing"));
        }
        let mut channels = stem_out;
        let mut stages = Vec::with_capacity(n_stages);
        for s in 1..=n_stages {
            let n_blocks = layout.count(&format!("layer{s}."), 0, ".conv1.weight");
            let mut blocks = Vec::with_capacity(n_blocks);
            for b in 0..n_blocks {
                let stride = if s > 1 && b == 0 { 2 } else { 1 };
                let prefix = format!("layer{s}.{b}");
                let block = read_block(layout, &prefix, bottleneck, channels, stride)?;
                channels = block.convs.last().expect("two or three convs").output;
                blocks.push(block);
            }
            stages.push(blocks);
        }
        let fc = layout.require("fc.weight", 2)?;
        Ok(ResNetConfig {
            stem,
            bottleneck,
            stages,
            classes: fc[0],
        })
    }

    fn features(&self) -> usize {
        self.stages
            .last()
            .and_then(|s| s.last())
            .map_or(self.stem.output, |b| b.convs.last().expect("convs").output)
    }

    /// The standard variant's row in [`VARIANTS`] this configuration matches, if any.
    fn standard(&self) -> Option<&'static str> {
        if self.stem != ConvShape::same(3, 64, 7, 2) || self.stages.len() != 4 {
            return None;
        }
        let depths: Vec<usize> = self.stages.iter().map(Vec::len).collect();
        VARIANTS
            .iter()
            .find_map(|&(name, bottleneck, blocks, groups, per_group)| {
                let fits = bottleneck == self.bottleneck
                    && depths == blocks
                    && self.stages.iter().enumerate().all(|(i, stage)| {
                        let planes = 64 << i;
                        stage.iter().all(|block| {
                            let c = &block.convs;
                            if bottleneck {
                                let width = planes * per_group / 64 * groups;
                                c[0].output == width
                                    && c[1].groups == groups
                                    && c[2].output == planes * 4
                            } else {
                                c[0].output == planes && c[1].output == planes
                            }
                        })
                    });
                fits.then_some(name)
            })
    }
}

/// Reads block `prefix` whose input has `channels` channels.
fn read_block(
    layout: &Layout,
    prefix: &str,
    bottleneck: bool,
    channels: usize,
    stride: usize,
) -> std::result::Result<Block, ConfigError> {
    let n = if bottleneck { 3 } else { 2 };
    let mut convs = Vec::with_capacity(n);
    let mut input = channels;
    for i in 1..=n {
        let name = format!("{prefix}.conv{i}.weight");
        let (out, in_per_group, k) = conv_dims(layout, &name)?;
        // The 3x3 convolution is grouped in ResNeXt: its stored input is channels / groups.
        let groups = if in_per_group > 0 && input.is_multiple_of(in_per_group) {
            input / in_per_group
        } else {
            return Err(ConfigError::new(
                &name,
                format!("has {in_per_group} input channels per group, which does not divide the {input} channels reaching it"),
            ));
        };
        // torchvision's stride sits on the 3x3 convolution: conv1 of a basic block, conv2 of
        // a bottleneck.
        let strided = if bottleneck { i == 2 } else { i == 1 };
        convs.push(ConvShape {
            input,
            output: out,
            kernel: k,
            stride: if strided { stride } else { 1 },
            padding: k / 2,
            groups,
            dilation: 1,
            bias: false,
        });
        input = out;
    }
    let output = input;
    let name = format!("{prefix}.downsample.0.weight");
    let downsample = if layout.has(&name) {
        let (out, _, k) = conv_dims(layout, &name)?;
        Some(ConvShape {
            input: channels,
            output: out,
            kernel: k,
            stride,
            padding: 0,
            groups: 1,
            dilation: 1,
            bias: false,
        })
    } else {
        if stride != 1 || channels != output {
            return Err(ConfigError::new(
                name,
                format!("is missing; the block changes {channels} channels to {output} with stride {stride}, so its shortcut needs a projection"),
            ));
        }
        None
    };
    Ok(Block { convs, downsample })
}

impl Architecture for ResNetConfig {
    fn family(&self) -> &'static str {
        "resnet"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let depths: Vec<String> = self.stages.iter().map(|s| s.len().to_string()).collect();
        let widths: Vec<String> = self
            .stages
            .iter()
            .map(|s| s[0].convs[0].output.to_string())
            .collect();
        let groups = self
            .stages
            .first()
            .and_then(|s| s.first())
            .map_or(1, |b| b.convs[1].groups);
        format!(
            "resnet ({} blocks {}, widths {}, groups {groups}, {} classes)",
            if self.bottleneck {
                "bottleneck"
            } else {
                "basic"
            },
            depths.join("-"),
            widths.join("-"),
            self.classes
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(str::to_string)
    }

    fn input(&self) -> Input {
        InputShape {
            channels: self.stem.input,
            size: None,
            // The stem and its max pool; the blocks' convolutions are padded.
            min: min_side(&[Window::from(&self.stem), Window::pool(3, 2, 1)]),
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        self.stem.specs("conv1", &mut out);
        batch_norm_specs("bn1", self.stem.output, &mut out);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let prefix = format!("layer{}.{b}", s + 1);
                for (i, conv) in block.convs.iter().enumerate() {
                    conv.specs(&format!("{prefix}.conv{}", i + 1), &mut out);
                    batch_norm_specs(&format!("{prefix}.bn{}", i + 1), conv.output, &mut out);
                }
                if let Some(d) = &block.downsample {
                    d.specs(&format!("{prefix}.downsample.0"), &mut out);
                    batch_norm_specs(&format!("{prefix}.downsample.1"), d.output, &mut out);
                }
            }
        }
        linear_specs("fc", self.features(), self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let stem = ConvNorm::new(&self.stem, vb.pp("conv1"), vb.pp("bn1"))?;
        let mut blocks = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let vb = vb.pp(format!("layer{}.{b}", s + 1));
                let convs = block
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        ConvNorm::new(
                            c,
                            vb.pp(format!("conv{}", i + 1)),
                            vb.pp(format!("bn{}", i + 1)),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let downsample = block
                    .downsample
                    .as_ref()
                    .map(|d| ConvNorm::new(d, vb.pp("downsample.0"), vb.pp("downsample.1")))
                    .transpose()?;
                blocks.push(Residual { convs, downsample });
            }
        }
        Ok(Box::new(ResNet {
            stem,
            blocks,
            fc: linear(self.features(), self.classes, vb.pp("fc"))?,
        }))
    }
}

/// A residual block: conv-bn with ReLU between, the shortcut added, then ReLU.
struct Residual {
    convs: Vec<ConvNorm>,
    downsample: Option<ConvNorm>,
}

impl Module for Residual {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            y = y.apply(conv)?;
            if i + 1 < self.convs.len() {
                y = y.relu()?;
            }
        }
        let shortcut = match &self.downsample {
            Some(d) => x.apply(d)?,
            None => x.clone(),
        };
        (y + shortcut)?.relu()
    }
}

/// The model.
struct ResNet {
    stem: ConvNorm,
    blocks: Vec<Residual>,
    fc: Linear,
}

impl Model for ResNet {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = max_pool(&x.apply(&self.stem)?.relu()?, 3, 2, 1)?;
        for block in &self.blocks {
            x = x.apply(block)?;
        }
        adaptive_avg_pool(&x, 1, 1)?
            .flatten_from(1)?
            .apply(&self.fc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes torchvision's `resnet_fn(num_classes=classes)` stores, built by hand.
    fn standard_layout(
        bottleneck: bool,
        depths: [usize; 4],
        groups: usize,
        per_group: usize,
    ) -> Layout {
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("conv1.weight".into(), vec![64, 3, 7, 7])];
        let mut channels = 64;
        for (s, &n) in depths.iter().enumerate() {
            let planes = 64 << s;
            for b in 0..n {
                let p = format!("layer{}.{b}", s + 1);
                let out = if bottleneck {
                    let width = planes * per_group / 64 * groups;
                    shapes.push((format!("{p}.conv1.weight"), vec![width, channels, 1, 1]));
                    shapes.push((
                        format!("{p}.conv2.weight"),
                        vec![width, width / groups, 3, 3],
                    ));
                    shapes.push((format!("{p}.conv3.weight"), vec![planes * 4, width, 1, 1]));
                    planes * 4
                } else {
                    shapes.push((format!("{p}.conv1.weight"), vec![planes, channels, 3, 3]));
                    shapes.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
                    planes
                };
                if b == 0 && (s > 0 || channels != out) {
                    shapes.push((
                        format!("{p}.downsample.0.weight"),
                        vec![out, channels, 1, 1],
                    ));
                }
                channels = out;
            }
        }
        shapes.push(("fc.weight".into(), vec![5, channels]));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn standard_variants_are_recognised_from_shapes() {
        for &(name, bottleneck, depths, groups, per_group) in VARIANTS {
            let layout = standard_layout(bottleneck, depths, groups, per_group);
            let config = ResNetConfig::read(&layout).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.classes, 5);
        }
    }

    #[test]
    fn a_missing_projection_is_named() {
        let mut layout = standard_layout(false, [2, 2, 2, 2], 1, 64);
        layout.shapes.remove("layer2.0.downsample.0.weight");
        let err = ResNetConfig::read(&layout).unwrap_err();
        assert_eq!(err.tensor, "layer2.0.downsample.0.weight");
    }

    #[test]
    fn groups_that_do_not_divide_are_refused() {
        let mut layout = standard_layout(true, [3, 4, 6, 3], 32, 4);
        layout
            .shapes
            .insert("layer1.0.conv2.weight".into(), vec![128, 5, 3, 3]);
        let err = ResNetConfig::read(&layout).unwrap_err();
        assert_eq!(err.tensor, "layer1.0.conv2.weight");
    }
}
