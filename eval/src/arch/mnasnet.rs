//! torchvision's MNASNet (`torchvision.models.mnasnet`, mnasnet0_5 to mnasnet1_3), configured from the checkpoint's shapes.
//!
//! Reference: Tan et al. 2019, "MnasNet: Platform-Aware Neural Architecture Search for
//! Mobile"; torchvision's `MNASNet` (the B1 variant), `_InvertedResidual` and `_stack`.
//!
//! `layers` is one flat `nn.Sequential`: the stem (`layers.0` 3x3 stride-2 conv, `layers.1`
//! batch norm, ReLU; `layers.3` depthwise 3x3 conv, `layers.4` batch norm, ReLU; `layers.6`
//! 1x1 conv, `layers.7` batch norm), then stacks of inverted residuals
//! `layers.{8+s}.{b}.layers.{0,1,3,4,6,7}` (1x1 expansion conv-bn-ReLU, depthwise kxk
//! conv-bn-ReLU, 1x1 projection conv-bn, the input added back when the block keeps its shape
//! at stride 1), then a 1x1 conv-bn-ReLU (`layers.{8+S}`, `layers.{9+S}`), the spatial mean
//! and `classifier.1` (dropout at `classifier.0` is inactive). Batch norm's epsilon is 1e-5.
//!
//! Read from the shapes: every width (so any `alpha`, and the v1 stem of old checkpoints),
//! expansion, kernel size, the number of stacks and of blocks in each, and the classes. Not in
//! the shapes: each stack's stride (of its first block). torchvision's (2, 2, 2, 1, 2, 1) for
//! six stacks; otherwise `--arch-option strides=..`, one per stack.

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{batch_norm_specs, conv_dims, linear, linear_specs, ConvNorm, ConvShape};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct MnasNetFamily;

/// torchvision's stacks: kernel, expansion, stride, repeats.
const STACKS: [(usize, usize, usize, usize); 6] = [
    (3, 3, 2, 3),
    (5, 3, 2, 3),
    (5, 6, 2, 3),
    (3, 6, 1, 2),
    (5, 6, 2, 4),
    (3, 6, 1, 1),
];

/// The standard variants and their width multipliers (`alpha`).
const VARIANTS: [(&str, f64); 4] = [
    ("mnasnet0_5", 0.5),
    ("mnasnet0_75", 0.75),
    ("mnasnet1_0", 1.0),
    ("mnasnet1_3", 1.3),
];

/// torchvision's `_round_to_multiple_of(val, 8)`: round to the nearest multiple of 8 (at
/// least 8), one step up when that lost more than 10%.
fn round_to_8(val: f64) -> usize {
    let rounded = (((val + 4.0) as usize) / 8 * 8).max(8);
    if rounded as f64 >= 0.9 * val {
        rounded
    } else {
        rounded + 8
    }
}

impl Family for MnasNetFamily {
    fn name(&self) -> &'static str {
        "mnasnet"
    }

    fn summary(&self) -> &'static str {
        "torchvision MNASNet, any alpha; stack strides by torchvision's convention unless --arch-option strides=.."
    }

    fn variants(&self) -> &'static [&'static str] {
        &["mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"]
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[("strides", "each stack's stride, e.g. 2,2,2,1,2,1")]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("layers.0.weight")
            && layout.has("layers.8.0.layers.0.weight")
            && layout.has("classifier.1.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(MnasNetConfig::read(layout, options)?))
    }
}

/// One inverted residual block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvertedResidual {
    /// Input channels.
    pub input: usize,
    /// Channels after the expansion.
    pub mid: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// Output channels.
    pub output: usize,
}

/// An MNASNet's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MnasNetConfig {
    /// Input channels.
    pub channels: usize,
    /// Output channels of the stem's first convolution (and its depthwise one).
    pub stem: usize,
    /// Output channels of the stem's last convolution.
    pub stem_out: usize,
    /// The blocks of each stack.
    pub stacks: Vec<Vec<InvertedResidual>>,
    /// Output channels of the final 1x1 convolution.
    pub last: usize,
    /// Output classes.
    pub classes: usize,
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> ConvShape {
    ConvShape {
        groups,
        ..ConvShape::same(input, output, kernel, stride)
    }
}

impl MnasNetConfig {
    /// Reads the configuration from the checkpoint's tensor shapes and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<Self, ConfigError> {
        let (stem, channels, _) = conv_dims(layout, "layers.0.weight")?;
        let (stem_out, _, _) = conv_dims(layout, "layers.6.weight")?;
        let n = layout.count("layers.", 8, ".0.layers.0.weight");
        let strides = match options.list("strides")? {
            Some(s) => s,
            None if n == STACKS.len() => STACKS.iter().map(|s| s.2).collect(),
            None => {
                return Err(ConfigError::new(
                    "--arch-option strides",
                    format!("is needed: the checkpoint has {n} stacks, not torchvision's 6, so their strides are unknown; pass e.g. strides={}", vec!["1"; n].join(",")),
                ))
            }
        };
        if strides.len() != n || strides.iter().any(|&s| s != 1 && s != 2) {
            return Err(ConfigError::new(
                "--arch-option strides",
                format!("must give {n} strides of 1 or 2, one per stack"),
            ));
        }
        let mut input = stem_out;
        let mut stacks = Vec::with_capacity(n);
        for (s, &stride) in strides.iter().enumerate() {
            let blocks = layout.count(&format!("layers.{}.", 8 + s), 0, ".layers.0.weight");
            let mut list = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let p = format!("layers.{}.{b}.layers", 8 + s);
                let (mid, _, _) = conv_dims(layout, &format!("{p}.0.weight"))?;
                let (_, _, kernel) = conv_dims(layout, &format!("{p}.3.weight"))?;
                let (output, _, _) = conv_dims(layout, &format!("{p}.6.weight"))?;
                list.push(InvertedResidual {
                    input,
                    mid,
                    kernel,
                    stride: if b == 0 { stride } else { 1 },
                    output,
                });
                input = output;
            }
            stacks.push(list);
        }
        let (last, _, _) = conv_dims(layout, &format!("layers.{}.weight", 8 + n))?;
        let classes = layout.require("classifier.1.weight", 2)?[0];
        Ok(MnasNetConfig {
            channels,
            stem,
            stem_out,
            stacks,
            last,
            classes,
        })
    }

    /// The standard variant whose shapes these are (classes aside).
    fn standard(&self) -> Option<&'static str> {
        if self.channels != 3 || self.last != 1280 || self.stacks.len() != STACKS.len() {
            return None;
        }
        VARIANTS
            .iter()
            .find(|&&(_, alpha)| {
                let depths: Vec<usize> = [32.0, 16.0, 24.0, 40.0, 80.0, 96.0, 192.0, 320.0]
                    .iter()
                    .map(|d| round_to_8(d * alpha))
                    .collect();
                self.stem == depths[0]
                    && self.stem_out == depths[1]
                    && self.stacks.iter().zip(STACKS).enumerate().all(
                        |(s, (stack, (k, e, stride, repeats)))| {
                            stack.len() == repeats
                                && stack.iter().enumerate().all(|(b, block)| {
                                    block.output == depths[s + 2]
                                        && block.kernel == k
                                        && block.mid == block.input * e
                                        && block.stride == if b == 0 { stride } else { 1 }
                                })
                        },
                    )
            })
            .map(|v| v.0)
    }

    fn last_input(&self) -> usize {
        self.stacks
            .iter()
            .flatten()
            .last()
            .map_or(self.stem_out, |b| b.output)
    }
}

impl Architecture for MnasNetConfig {
    fn family(&self) -> &'static str {
        "mnasnet"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let stacks: Vec<String> = self
            .stacks
            .iter()
            .map(|s| format!("{}x{}", s.len(), s.last().map_or(0, |b| b.output)))
            .collect();
        format!(
            "mnasnet (stem {}-{}, stacks {}, last {}, {} classes)",
            self.stem,
            self.stem_out,
            stacks.join(" "),
            self.last,
            self.classes
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(str::to_string)
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
        let mut cbn = |shape: ConvShape, conv_at: String, norm_at: String| {
            shape.specs(&conv_at, &mut out);
            batch_norm_specs(&norm_at, shape.output, &mut out);
        };
        let s = self.stem;
        cbn(
            conv(self.channels, s, 3, 2, 1),
            "layers.0".into(),
            "layers.1".into(),
        );
        cbn(conv(s, s, 3, 1, s), "layers.3".into(), "layers.4".into());
        cbn(
            conv(s, self.stem_out, 1, 1, 1),
            "layers.6".into(),
            "layers.7".into(),
        );
        for (i, stack) in self.stacks.iter().enumerate() {
            for (b, block) in stack.iter().enumerate() {
                let p = format!("layers.{}.{b}.layers", 8 + i);
                for (shape, at) in block.convs().into_iter().zip([0, 3, 6]) {
                    cbn(shape, format!("{p}.{at}"), format!("{p}.{}", at + 1));
                }
            }
        }
        let at = 8 + self.stacks.len();
        cbn(
            conv(self.last_input(), self.last, 1, 1, 1),
            format!("layers.{at}"),
            format!("layers.{}", at + 1),
        );
        linear_specs("classifier.1", self.last, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let l = vb.pp("layers");
        let cn = |shape: ConvShape, at: usize| {
            ConvNorm::new(&shape, l.pp(at.to_string()), l.pp((at + 1).to_string()))
        };
        let s = self.stem;
        let stem = [
            cn(conv(self.channels, s, 3, 2, 1), 0)?,
            cn(conv(s, s, 3, 1, s), 3)?,
            cn(conv(s, self.stem_out, 1, 1, 1), 6)?,
        ];
        let mut blocks = Vec::new();
        for (i, stack) in self.stacks.iter().enumerate() {
            for (b, block) in stack.iter().enumerate() {
                let vb = l.pp(format!("{}.{b}.layers", 8 + i));
                let [expand, depthwise, project] = block.convs();
                let at = |shape: ConvShape, j: usize| {
                    ConvNorm::new(&shape, vb.pp(j.to_string()), vb.pp((j + 1).to_string()))
                };
                blocks.push(Block {
                    convs: [at(expand, 0)?, at(depthwise, 3)?, at(project, 6)?],
                    residual: block.stride == 1 && block.input == block.output,
                });
            }
        }
        let last = cn(
            conv(self.last_input(), self.last, 1, 1, 1),
            8 + self.stacks.len(),
        )?;
        Ok(Box::new(MnasNet {
            stem,
            blocks,
            last,
            classifier: linear(self.last, self.classes, vb.pp("classifier.1"))?,
        }))
    }
}

impl InvertedResidual {
    /// The expansion, depthwise and projection convolutions.
    fn convs(&self) -> [ConvShape; 3] {
        [
            conv(self.input, self.mid, 1, 1, 1),
            conv(self.mid, self.mid, self.kernel, self.stride, self.mid),
            conv(self.mid, self.output, 1, 1, 1),
        ]
    }
}

struct Block {
    convs: [ConvNorm; 3],
    residual: bool,
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x
            .apply(&self.convs[0])?
            .relu()?
            .apply(&self.convs[1])?
            .relu()?
            .apply(&self.convs[2])?;
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

struct MnasNet {
    stem: [ConvNorm; 3],
    blocks: Vec<Block>,
    last: ConvNorm,
    classifier: Linear,
}

impl Model for MnasNet {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs.apply(&self.stem[0])?.relu()?;
        let mut x = x.apply(&self.stem[1])?.relu()?.apply(&self.stem[2])?;
        for block in &self.blocks {
            x = x.apply(block)?;
        }
        let x = x.apply(&self.last)?.relu()?;
        // torchvision: x.mean([2, 3]).
        x.mean(3)?.mean(2)?.apply(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes torchvision's `MNASNet(alpha, num_classes=3)` stores, by hand.
    fn standard_layout(alpha: f64) -> Layout {
        let d: Vec<usize> = [32.0, 16.0, 24.0, 40.0, 80.0, 96.0, 192.0, 320.0]
            .iter()
            .map(|x| round_to_8(x * alpha))
            .collect();
        let mut shapes = vec![
            ("layers.0.weight".to_string(), vec![d[0], 3, 3, 3]),
            ("layers.3.weight".into(), vec![d[0], 1, 3, 3]),
            ("layers.6.weight".into(), vec![d[1], d[0], 1, 1]),
        ];
        let mut input = d[1];
        for (s, (k, e, _, repeats)) in STACKS.iter().enumerate() {
            for b in 0..*repeats {
                let p = format!("layers.{}.{b}.layers", 8 + s);
                shapes.push((format!("{p}.0.weight"), vec![input * e, input, 1, 1]));
                shapes.push((format!("{p}.3.weight"), vec![input * e, 1, *k, *k]));
                shapes.push((format!("{p}.6.weight"), vec![d[s + 2], input * e, 1, 1]));
                input = d[s + 2];
            }
        }
        shapes.push(("layers.14.weight".into(), vec![1280, input, 1, 1]));
        shapes.push(("classifier.1.weight".into(), vec![3, 1280]));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn the_four_variants_are_recognised() {
        for (name, alpha) in VARIANTS {
            let config = MnasNetConfig::read(&standard_layout(alpha), &Options::default()).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.classes, 3);
        }
        let other = MnasNetConfig::read(&standard_layout(0.25), &Options::default()).unwrap();
        assert_eq!(other.variant(), None);
    }

    #[test]
    fn round_to_8_matches_torchvision() {
        // torchvision: _round_to_multiple_of(v, 8) (its docstring's examples, and alphas).
        assert_eq!(round_to_8(83.0), 80);
        assert_eq!(round_to_8(84.0), 88);
        assert_eq!(round_to_8(32.0 * 0.5), 16);
        assert_eq!(round_to_8(40.0 * 0.75), 32);
        assert_eq!(round_to_8(16.0 * 0.25), 8);
        assert_eq!(round_to_8(24.0 * 1.3), 32);
    }

    #[test]
    fn strides_must_match_the_stacks() {
        let layout = standard_layout(1.0);
        let bad = Options::parse(&["strides=2,2,2".to_string()]).unwrap();
        let err = MnasNetConfig::read(&layout, &bad).unwrap_err();
        assert!(err.reason.contains("6 strides"), "{err:?}");
    }
}
