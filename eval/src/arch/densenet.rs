//! torchvision's DenseNet (`torchvision.models.densenet`), configured from the checkpoint's shapes.
//!
//! Reference: Huang et al. 2017, "Densely Connected Convolutional Networks" (DenseNet-BC:
//! bottleneck layers and compressing transitions), as torchvision's `DenseNet` builds it.
//!
//! Tensor names are torchvision's state-dict names (the current ones: `norm1`, `conv1`, ...;
//! checkpoints from before torchvision 0.3 spell them `norm.1`, which torchvision's own
//! loader renames and this family does not):
//!
//! | tensor | what |
//! |--------|------|
//! | `features.conv0`, `features.norm0` | stem: 7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pool |
//! | `features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}` | BN-ReLU-1x1 conv to `bn_size * growth`, BN-ReLU-3x3 conv to `growth`; its output is concatenated to its input |
//! | `features.transition{b}.{norm,conv}` | BN-ReLU-1x1 conv, 2x2 average pool, between blocks |
//! | `features.norm5` | the final batch norm, then ReLU and global average pooling |
//! | `classifier.weight`, `classifier.bias` | [classes, features] |
//!
//! Read from the shapes: the initial features, the number of blocks and of layers in each,
//! the growth rate, the bottleneck width, each transition's output and the classes, so
//! `DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, num_classes=5)`
//! loads as it was built.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{BatchNorm, Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, avg_pool, batch_norm, batch_norm_specs, conv_dims, eval_norm, linear,
    linear_specs, max_pool, min_side, Conv, ConvNorm, ConvShape, Window,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct DenseNetFamily;

/// Standard variants: name, growth rate, layers per block, initial features.
const VARIANTS: &[(&str, usize, [usize; 4], usize)] = &[
    ("densenet121", 32, [6, 12, 24, 16], 64),
    ("densenet161", 48, [6, 12, 36, 24], 96),
    ("densenet169", 32, [6, 12, 32, 32], 64),
    ("densenet201", 32, [6, 12, 48, 32], 64),
];

impl Family for DenseNetFamily {
    fn name(&self) -> &'static str {
        "densenet"
    }

    fn summary(&self) -> &'static str {
        "torchvision DenseNet, any growth rate, block configuration and width"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["densenet121", "densenet161", "densenet169", "densenet201"]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.conv0.weight")
            && layout.has("features.denseblock1.denselayer1.conv1.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(DenseNetConfig::read(layout)?))
    }
}

/// A DenseNet's configuration, as read from a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenseNetConfig {
    /// `features.conv0`.
    pub stem: ConvShape,
    /// Channels each dense layer adds.
    pub growth: usize,
    /// Output channels of each dense layer's 1x1 convolution (`bn_size * growth`).
    pub bottleneck: usize,
    /// Dense layers in each block.
    pub blocks: Vec<usize>,
    /// Output channels of the transition after each block but the last.
    pub transitions: Vec<usize>,
    /// Output classes of `classifier`.
    pub classes: usize,
}

impl DenseNetConfig {
    /// Reads the configuration from the checkpoint's tensor shapes.
    pub fn read(layout: &Layout) -> std::result::Result<DenseNetConfig, ConfigError> {
        let (init, input, k) = conv_dims(layout, "features.conv0.weight")?;
        let stem = ConvShape {
            input,
            output: init,
            kernel: k,
            stride: 2,
            padding: k / 2,
            groups: 1,
            dilation: 1,
            bias: false,
        };
        let first = "features.denseblock1.denselayer1";
        let (bottleneck, _, _) = conv_dims(layout, &format!("{first}.conv1.weight"))?;
        let (growth, _, _) = conv_dims(layout, &format!("{first}.conv2.weight"))?;
        let n_blocks = layout.count("features.denseblock", 1, ".denselayer1.conv1.weight");
        let mut blocks = Vec::with_capacity(n_blocks);
        let mut transitions = Vec::new();
        for b in 1..=n_blocks {
            blocks.push(layout.count(
                &format!("features.denseblock{b}.denselayer"),
                1,
                ".conv1.weight",
            ));
            if b < n_blocks {
                let name = format!("features.transition{b}.conv.weight");
                let (out, _, _) = conv_dims(layout, &name)?;
                transitions.push(out);
            }
        }
        let classifier = layout.require("classifier.weight", 2)?;
        Ok(DenseNetConfig {
            stem,
            growth,
            bottleneck,
            blocks,
            transitions,
            classes: classifier[0],
        })
    }

    /// Channels entering each block, and the final feature count.
    fn widths(&self) -> (Vec<usize>, usize) {
        let mut channels = self.stem.output;
        let mut inputs = Vec::with_capacity(self.blocks.len());
        for (b, &layers) in self.blocks.iter().enumerate() {
            inputs.push(channels);
            channels += layers * self.growth;
            if let Some(&t) = self.transitions.get(b) {
                channels = t;
            }
        }
        (inputs, channels)
    }

    fn standard(&self) -> Option<&'static str> {
        if self.stem != ConvShape::same(3, self.stem.output, 7, 2) || self.blocks.len() != 4 {
            return None;
        }
        let (inputs, _) = self.widths();
        // torchvision's transitions halve the channels (compression 0.5).
        let halving = self
            .transitions
            .iter()
            .enumerate()
            .all(|(b, &t)| t == (inputs[b] + self.blocks[b] * self.growth) / 2);
        VARIANTS.iter().find_map(|&(name, growth, blocks, init)| {
            (self.growth == growth
                && self.bottleneck == 4 * growth
                && self.blocks == blocks
                && self.stem.output == init
                && halving)
                .then_some(name)
        })
    }
}

impl Architecture for DenseNetConfig {
    fn family(&self) -> &'static str {
        "densenet"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let blocks: Vec<String> = self.blocks.iter().map(usize::to_string).collect();
        format!(
            "densenet (growth {}, blocks {}, {} initial features, bottleneck {}, {} classes)",
            self.growth,
            blocks.join("-"),
            self.stem.output,
            self.bottleneck,
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
            // The stem, its max pool and each transition's unpadded 2x2 average pool.
            min: min_side(
                &[Window::from(&self.stem), Window::pool(3, 2, 1)]
                    .into_iter()
                    .chain(self.transitions.iter().map(|_| Window::pool(2, 2, 0)))
                    .collect::<Vec<_>>(),
            ),
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        self.stem.specs("features.conv0", &mut out);
        batch_norm_specs("features.norm0", self.stem.output, &mut out);
        let (inputs, features) = self.widths();
        for (b, &layers) in self.blocks.iter().enumerate() {
            let mut channels = inputs[b];
            for l in 1..=layers {
                let p = format!("features.denseblock{}.denselayer{l}", b + 1);
                batch_norm_specs(&format!("{p}.norm1"), channels, &mut out);
                ConvShape::same(channels, self.bottleneck, 1, 1)
                    .specs(&format!("{p}.conv1"), &mut out);
                batch_norm_specs(&format!("{p}.norm2"), self.bottleneck, &mut out);
                ConvShape::same(self.bottleneck, self.growth, 3, 1)
                    .specs(&format!("{p}.conv2"), &mut out);
                channels += self.growth;
            }
            if let Some(&t) = self.transitions.get(b) {
                let p = format!("features.transition{}", b + 1);
                batch_norm_specs(&format!("{p}.norm"), channels, &mut out);
                ConvShape::same(channels, t, 1, 1).specs(&format!("{p}.conv"), &mut out);
            }
        }
        batch_norm_specs("features.norm5", features, &mut out);
        linear_specs("classifier", features, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let stem = ConvNorm::new(&self.stem, f.pp("conv0"), f.pp("norm0"))?;
        let (inputs, features) = self.widths();
        let mut stages = Vec::with_capacity(self.blocks.len());
        for (b, &layers) in self.blocks.iter().enumerate() {
            let mut channels = inputs[b];
            let mut dense = Vec::with_capacity(layers);
            for l in 1..=layers {
                let vb = f.pp(format!("denseblock{}.denselayer{l}", b + 1));
                dense.push(DenseLayer {
                    norm1: batch_norm(channels, vb.pp("norm1"))?,
                    conv1: ConvShape::same(channels, self.bottleneck, 1, 1)
                        .build(vb.pp("conv1"))?,
                    norm2: batch_norm(self.bottleneck, vb.pp("norm2"))?,
                    conv2: ConvShape::same(self.bottleneck, self.growth, 3, 1)
                        .build(vb.pp("conv2"))?,
                });
                channels += self.growth;
            }
            let transition = self
                .transitions
                .get(b)
                .map(|&t| -> Result<Transition> {
                    let vb = f.pp(format!("transition{}", b + 1));
                    Ok(Transition {
                        norm: batch_norm(channels, vb.pp("norm"))?,
                        conv: ConvShape::same(channels, t, 1, 1).build(vb.pp("conv"))?,
                    })
                })
                .transpose()?;
            stages.push((dense, transition));
        }
        Ok(Box::new(DenseNet {
            stem,
            stages,
            norm5: batch_norm(features, f.pp("norm5"))?,
            classifier: linear(features, self.classes, vb.pp("classifier"))?,
        }))
    }
}

/// BN-ReLU-conv1x1-BN-ReLU-conv3x3; its output is concatenated to its input.
struct DenseLayer {
    norm1: BatchNorm,
    conv1: Conv,
    norm2: BatchNorm,
    conv2: Conv,
}

impl Module for DenseLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = eval_norm(x, &self.norm1)?.relu()?.apply(&self.conv1)?;
        let y = eval_norm(&y, &self.norm2)?.relu()?.apply(&self.conv2)?;
        Tensor::cat(&[x, &y], 1)
    }
}

/// BN-ReLU-conv1x1, then a 2x2 average pool.
struct Transition {
    norm: BatchNorm,
    conv: Conv,
}

impl Module for Transition {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = eval_norm(x, &self.norm)?.relu()?.apply(&self.conv)?;
        avg_pool(&y, 2, 2)
    }
}

/// The model.
struct DenseNet {
    stem: ConvNorm,
    stages: Vec<(Vec<DenseLayer>, Option<Transition>)>,
    norm5: BatchNorm,
    classifier: Linear,
}

impl Model for DenseNet {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = max_pool(&x.apply(&self.stem)?.relu()?, 3, 2, 1)?;
        for (layers, transition) in &self.stages {
            for layer in layers {
                x = x.apply(layer)?;
            }
            if let Some(t) = transition {
                x = x.apply(t)?;
            }
        }
        let x = eval_norm(&x, &self.norm5)?.relu()?;
        adaptive_avg_pool(&x, 1, 1)?
            .flatten_from(1)?
            .apply(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard_layout(growth: usize, blocks: [usize; 4], init: usize) -> Layout {
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("features.conv0.weight".into(), vec![init, 3, 7, 7])];
        let mut channels = init;
        for (b, &n) in blocks.iter().enumerate() {
            for l in 1..=n {
                let p = format!("features.denseblock{}.denselayer{l}", b + 1);
                shapes.push((
                    format!("{p}.conv1.weight"),
                    vec![4 * growth, channels, 1, 1],
                ));
                shapes.push((format!("{p}.conv2.weight"), vec![growth, 4 * growth, 3, 3]));
                channels += growth;
            }
            if b < 3 {
                shapes.push((
                    format!("features.transition{}.conv.weight", b + 1),
                    vec![channels / 2, channels, 1, 1],
                ));
                channels /= 2;
            }
        }
        shapes.push(("classifier.weight".into(), vec![5, channels]));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn standard_variants_are_recognised_from_shapes() {
        for &(name, growth, blocks, init) in VARIANTS {
            let config = DenseNetConfig::read(&standard_layout(growth, blocks, init)).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            // torchvision's feature counts: 1024, 2208, 1664, 1920.
            let features = config.widths().1;
            let expected =
                [1024, 2208, 1664, 1920][VARIANTS.iter().position(|v| v.0 == name).unwrap()];
            assert_eq!(features, expected, "{name}");
        }
    }

    #[test]
    fn a_non_standard_densenet_is_its_own_configuration() {
        let mut layout = standard_layout(32, [6, 12, 24, 16], 64);
        layout
            .shapes
            .insert("features.conv0.weight".into(), vec![48, 3, 7, 7]);
        let config = DenseNetConfig::read(&layout).unwrap();
        assert_eq!(config.variant(), None);
        assert!(config.describe().contains("48 initial features"));
    }
}
