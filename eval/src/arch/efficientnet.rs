//! torchvision's EfficientNet B0-B7 (`torchvision.models.efficientnet`, MBConv stages), configured from the checkpoint's shapes.
//!
//! Reference: Tan and Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
//! Networks"; torchvision's `EfficientNet`, `MBConv` and `SqueezeExcitation`.
//!
//! `features.0` is the stem (3x3 stride-2 convolution, batch norm, SiLU); `features.{1..n}`
//! are stages of MBConv blocks `features.{s}.{b}.block.{j}`: an optional 1x1 expansion
//! (conv-bn-SiLU), a depthwise kxk convolution (conv-bn-SiLU), squeeze-and-excitation (`fc1`,
//! SiLU, `fc2`, sigmoid, scaling the channels), a 1x1 projection (conv-bn), and the input
//! added back when the block keeps its shape; `features.{n+1}` is a 1x1 conv-bn-SiLU; then
//! global average pooling and `classifier.1` (dropout at `classifier.0` is inactive).
//!
//! Read from the shapes: every width, kernel size, expansion, squeeze width, the depth of each
//! stage and the classes. Not in the shapes:
//! - each stage's stride: torchvision's B0-B7 setting (1, 2, 2, 2, 1, 2, 1) for seven stages;
//!   `--arch-option strides=1,2,2` for another number of stages;
//! - batch norm's epsilon: 1e-5, except 1e-3 for B5-B7 as torchvision builds them;
//!   `--arch-option bn_eps=0.001` overrides.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, batch_norm_specs, conv_dims, linear, linear_specs, Conv, ConvNorm, ConvShape,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct EfficientNetFamily;

/// torchvision's B0 setting: expansion, kernel, stride, input, output, layers per stage.
const B0: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

/// Standard variants: name, width multiplier, depth multiplier, batch-norm epsilon.
const VARIANTS: &[(&str, f64, f64, f64)] = &[
    ("efficientnet_b0", 1.0, 1.0, 1e-5),
    ("efficientnet_b1", 1.0, 1.1, 1e-5),
    ("efficientnet_b2", 1.1, 1.2, 1e-5),
    ("efficientnet_b3", 1.2, 1.4, 1e-5),
    ("efficientnet_b4", 1.4, 1.8, 1e-5),
    ("efficientnet_b5", 1.6, 2.2, 1e-3),
    ("efficientnet_b6", 1.8, 2.6, 1e-3),
    ("efficientnet_b7", 2.0, 3.1, 1e-3),
];

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let rounded = (((v + 4.0) as usize) / 8 * 8).max(8);
    if (rounded as f64) < 0.9 * v {
        rounded + 8
    } else {
        rounded
    }
}

impl Family for EfficientNetFamily {
    fn name(&self) -> &'static str {
        "efficientnet"
    }

    fn summary(&self) -> &'static str {
        "torchvision EfficientNet B0-B7, any widths and depths; strides and batch-norm eps by torchvision's convention unless --arch-option strides=.. bn_eps=.."
    }

    fn variants(&self) -> &'static [&'static str] {
        &[
            "efficientnet_b0",
            "efficientnet_b1",
            "efficientnet_b2",
            "efficientnet_b3",
            "efficientnet_b4",
            "efficientnet_b5",
            "efficientnet_b6",
            "efficientnet_b7",
        ]
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("strides", "each stage's stride, e.g. 1,2,2,2,1,2,1"),
            (
                "bn_eps",
                "batch norm's epsilon (default 1e-5; 1e-3 for B5-B7)",
            ),
        ]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.0.0.weight")
            && (layout.has("features.1.0.block.1.fc1.weight")
                || layout.has("features.1.0.block.2.fc1.weight"))
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(EfficientNetConfig::read(layout, options)?))
    }
}

/// One MBConv block.
#[derive(Clone, Debug, PartialEq)]
pub struct MbConv {
    /// Input channels.
    pub input: usize,
    /// Channels after the expansion (the input's when there is none).
    pub expanded: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// Depthwise stride.
    pub stride: usize,
    /// Squeeze-and-excitation width.
    pub squeeze: usize,
    /// Output channels.
    pub output: usize,
}

/// An EfficientNet's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct EfficientNetConfig {
    /// Input channels.
    pub channels: usize,
    /// Stem output channels.
    pub stem: usize,
    /// Blocks of each stage.
    pub stages: Vec<Vec<MbConv>>,
    /// Output channels of the final 1x1 convolution.
    pub head: usize,
    /// Output classes.
    pub classes: usize,
    /// Batch-norm epsilon.
    pub bn_eps: f64,
}

impl EfficientNetConfig {
    /// Reads the configuration from the checkpoint's tensor shapes and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<Self, ConfigError> {
        let (stem, channels, _) = conv_dims(layout, "features.0.0.weight")?;
        let n = layout.count("features.", 1, ".0.block.0.0.weight");
        if n == 0 {
            return Err(ConfigError::new(
                "features.1.0.block.0.0.weight",
                "is missing",
            ));
        }
        // Every MBConv block has squeeze-and-excitation; EfficientNetV2's fused blocks, which
        // its first stages are, have none. Said first, before any question about strides.
        let se = |b: usize| {
            layout
                .shape(&format!("features.1.0.block.{b}.fc1.weight"))
                .is_some()
        };
        if !se(1) && !se(2) {
            return Err(ConfigError::new(
                "features.1.0.block",
                "has no squeeze-and-excitation (fc1): a fused block, as EfficientNetV2's are, which soup-eval doesn't read; score the model with --scorer COMMAND",
            ));
        }
        let strides: Vec<usize> = match options.list("strides")? {
            Some(s) => s,
            None if n == 7 => B0.iter().map(|b| b.2).collect(),
            None => {
                return Err(ConfigError::new(
                    "--arch-option strides",
                    format!("is needed: the checkpoint has {n} stages, not torchvision's 7, so their strides are unknown; pass e.g. strides={}", vec!["1"; n].join(",")),
                ))
            }
        };
        if strides.len() != n || strides.iter().any(|&s| s != 1 && s != 2) {
            return Err(ConfigError::new(
                "--arch-option strides",
                format!("must give {n} strides of 1 or 2, one per stage"),
            ));
        }
        let mut input = stem;
        let mut stages = Vec::with_capacity(n);
        for s in 1..=n {
            let blocks = layout.count(&format!("features.{s}."), 0, ".block.0.0.weight");
            let mut list = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let p = format!("features.{s}.{b}.block");
                // With an expansion the block has four parts, else three.
                let expand = layout.has(&format!("{p}.3.0.weight"));
                let (dw, se, project) = if expand { (1, 2, 3) } else { (0, 1, 2) };
                let (expanded, _, kernel) = conv_dims(layout, &format!("{p}.{dw}.0.weight"))?;
                let (squeeze, _, _) = conv_dims(layout, &format!("{p}.{se}.fc1.weight"))?;
                let (output, _, _) = conv_dims(layout, &format!("{p}.{project}.0.weight"))?;
                list.push(MbConv {
                    input,
                    expanded,
                    kernel,
                    stride: if b == 0 { strides[s - 1] } else { 1 },
                    squeeze,
                    output,
                });
                input = output;
            }
            stages.push(list);
        }
        let (head, _, _) = conv_dims(layout, &format!("features.{}.0.weight", n + 1))?;
        let classes = layout.require("classifier.1.weight", 2)?[0];
        let mut config = EfficientNetConfig {
            channels,
            stem,
            stages,
            head,
            classes,
            bn_eps: 1e-5,
        };
        config.bn_eps = match options.float("bn_eps")? {
            Some(eps) => eps,
            None => config.standard().map_or(1e-5, |v| v.3),
        };
        Ok(config)
    }

    /// The standard variant whose shapes these are (classes aside).
    fn standard(&self) -> Option<&'static (&'static str, f64, f64, f64)> {
        if self.stages.len() != 7 || self.channels != 3 {
            return None;
        }
        VARIANTS.iter().find(|&&(_, w, d, _)| {
            self.stem == make_divisible(32.0 * w)
                && self.head == 4 * make_divisible(320.0 * w)
                && self
                    .stages
                    .iter()
                    .zip(B0)
                    .all(|(stage, (e, k, s, _, out, layers))| {
                        stage.len() == (layers as f64 * d).ceil() as usize
                            && stage.iter().enumerate().all(|(i, b)| {
                                b.output == make_divisible(out as f64 * w)
                                    && b.kernel == k
                                    && b.expanded == make_divisible(b.input as f64 * e as f64)
                                    && b.squeeze == (b.input / 4).max(1)
                                    && b.stride == if i == 0 { s } else { 1 }
                            })
                    })
        })
    }

    fn conv(
        &self,
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> ConvShape {
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
}

impl Architecture for EfficientNetConfig {
    fn family(&self) -> &'static str {
        "efficientnet"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.0.to_string();
        }
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{}x{}", s.len(), s.last().map_or(0, |b| b.output)))
            .collect();
        format!(
            "efficientnet (stem {}, stages {}, head {}, {} classes)",
            self.stem,
            stages.join(" "),
            self.head,
            self.classes
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(|v| v.0.to_string())
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
        self.conv(self.channels, self.stem, 3, 2, 1)
            .specs("features.0.0", &mut out);
        batch_norm_specs("features.0.1", self.stem, &mut out);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let p = format!("features.{}.{b}.block", s + 1);
                let mut j = 0;
                if block.expanded != block.input {
                    self.conv(block.input, block.expanded, 1, 1, 1)
                        .specs(&format!("{p}.0.0"), &mut out);
                    batch_norm_specs(&format!("{p}.0.1"), block.expanded, &mut out);
                    j = 1;
                }
                self.conv(
                    block.expanded,
                    block.expanded,
                    block.kernel,
                    block.stride,
                    block.expanded,
                )
                .specs(&format!("{p}.{j}.0"), &mut out);
                batch_norm_specs(&format!("{p}.{j}.1"), block.expanded, &mut out);
                let mut fc1 = self.conv(block.expanded, block.squeeze, 1, 1, 1);
                fc1.bias = true;
                fc1.specs(&format!("{p}.{}.fc1", j + 1), &mut out);
                let mut fc2 = self.conv(block.squeeze, block.expanded, 1, 1, 1);
                fc2.bias = true;
                fc2.specs(&format!("{p}.{}.fc2", j + 1), &mut out);
                self.conv(block.expanded, block.output, 1, 1, 1)
                    .specs(&format!("{p}.{}.0", j + 2), &mut out);
                batch_norm_specs(&format!("{p}.{}.1", j + 2), block.output, &mut out);
            }
        }
        let last = self
            .stages
            .last()
            .and_then(|s| s.last())
            .map_or(self.stem, |b| b.output);
        let head = format!("features.{}", self.stages.len() + 1);
        self.conv(last, self.head, 1, 1, 1)
            .specs(&format!("{head}.0"), &mut out);
        batch_norm_specs(&format!("{head}.1"), self.head, &mut out);
        linear_specs("classifier.1", self.head, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let eps = self.bn_eps;
        let cbn = |shape: ConvShape, vb: VarBuilder| -> Result<ConvNorm> {
            ConvNorm::with_eps(&shape, vb.pp("0"), vb.pp("1"), eps)
        };
        let stem = cbn(self.conv(self.channels, self.stem, 3, 2, 1), f.pp("0"))?;
        let mut blocks = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                let vb = f.pp(format!("{}.{b}.block", s + 1));
                let mut j = 0;
                let expand = if block.expanded != block.input {
                    j = 1;
                    Some(cbn(
                        self.conv(block.input, block.expanded, 1, 1, 1),
                        vb.pp("0"),
                    )?)
                } else {
                    None
                };
                let se = vb.pp((j + 1).to_string());
                let mut fc1 = self.conv(block.expanded, block.squeeze, 1, 1, 1);
                fc1.bias = true;
                let mut fc2 = self.conv(block.squeeze, block.expanded, 1, 1, 1);
                fc2.bias = true;
                blocks.push(Block {
                    expand,
                    depthwise: cbn(
                        self.conv(
                            block.expanded,
                            block.expanded,
                            block.kernel,
                            block.stride,
                            block.expanded,
                        ),
                        vb.pp(j.to_string()),
                    )?,
                    fc1: fc1.build(se.pp("fc1"))?,
                    fc2: fc2.build(se.pp("fc2"))?,
                    project: cbn(
                        self.conv(block.expanded, block.output, 1, 1, 1),
                        vb.pp((j + 2).to_string()),
                    )?,
                    residual: block.stride == 1 && block.input == block.output,
                });
            }
        }
        let last = self
            .stages
            .last()
            .and_then(|s| s.last())
            .map_or(self.stem, |b| b.output);
        let head = cbn(
            self.conv(last, self.head, 1, 1, 1),
            f.pp((self.stages.len() + 1).to_string()),
        )?;
        Ok(Box::new(EfficientNet {
            stem,
            blocks,
            head,
            classifier: linear(self.head, self.classes, vb.pp("classifier.1"))?,
        }))
    }
}

struct Block {
    expand: Option<ConvNorm>,
    depthwise: ConvNorm,
    fc1: Conv,
    fc2: Conv,
    project: ConvNorm,
    residual: bool,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = match &self.expand {
            Some(e) => candle_nn::ops::silu(&x.apply(e)?)?,
            None => x.clone(),
        };
        y = candle_nn::ops::silu(&y.apply(&self.depthwise)?)?;
        let scale = candle_nn::ops::sigmoid(
            &candle_nn::ops::silu(&adaptive_avg_pool(&y, 1, 1)?.apply(&self.fc1)?)?
                .apply(&self.fc2)?,
        )?;
        let y = y.broadcast_mul(&scale)?.apply(&self.project)?;
        if self.residual {
            x + y
        } else {
            Ok(y)
        }
    }
}

struct EfficientNet {
    stem: ConvNorm,
    blocks: Vec<Block>,
    head: ConvNorm,
    classifier: Linear,
}

impl Model for EfficientNet {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = candle_nn::ops::silu(&x.apply(&self.stem)?)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let x = candle_nn::ops::silu(&x.apply(&self.head)?)?;
        adaptive_avg_pool(&x, 1, 1)?
            .flatten_from(1)?
            .apply(&self.classifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes torchvision's `efficientnet_bN(num_classes=4)` stores, built by hand.
    fn standard_layout(w: f64, d: f64) -> Layout {
        let mut shapes = vec![(
            "features.0.0.weight".to_string(),
            vec![make_divisible(32.0 * w), 3, 3, 3],
        )];
        let mut input = make_divisible(32.0 * w);
        for (s, (e, k, _, _, out, layers)) in B0.iter().enumerate() {
            let out = make_divisible(*out as f64 * w);
            for b in 0..(*layers as f64 * d).ceil() as usize {
                let p = format!("features.{}.{b}.block", s + 1);
                let expanded = make_divisible(input as f64 * *e as f64);
                let j = if expanded != input {
                    shapes.push((format!("{p}.0.0.weight"), vec![expanded, input, 1, 1]));
                    1
                } else {
                    0
                };
                shapes.push((format!("{p}.{j}.0.weight"), vec![expanded, 1, *k, *k]));
                shapes.push((
                    format!("{p}.{}.fc1.weight", j + 1),
                    vec![(input / 4).max(1), expanded, 1, 1],
                ));
                shapes.push((format!("{p}.{}.0.weight", j + 2), vec![out, expanded, 1, 1]));
                input = out;
            }
        }
        shapes.push((
            "features.8.0.weight".into(),
            vec![4 * make_divisible(320.0 * w), input, 1, 1],
        ));
        shapes.push((
            "classifier.1.weight".into(),
            vec![4, 4 * make_divisible(320.0 * w)],
        ));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn b0_to_b7_are_recognised_with_their_batch_norm_epsilon() {
        for &(name, w, d, eps) in VARIANTS {
            let config =
                EfficientNetConfig::read(&standard_layout(w, d), &Options::default()).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.bn_eps, eps, "{name}");
        }
    }

    /// EfficientNetV2 (torchvision's `efficientnet_v2_s`): its first stages' fused blocks have
    /// no squeeze-and-excitation. Refused as such, not by asking for strides.
    #[test]
    fn an_efficientnet_v2_is_named_before_any_strides_question() {
        let mut shapes: Vec<(String, Vec<usize>)> = standard_layout(1.0, 1.0)
            .shapes
            .into_iter()
            .filter(|(n, _)| !n.starts_with("features.1.0.block.1."))
            .collect();
        shapes.push(("features.9.0.block.0.0.weight".into(), vec![8, 8, 1, 1]));
        let layout = Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())));
        let e = EfficientNetConfig::read(&layout, &Options::default()).unwrap_err();
        assert!(e.reason.contains("EfficientNetV2"), "{}", e.reason);
    }

    #[test]
    fn make_divisible_matches_torchvision() {
        // torchvision: _make_divisible(v, 8) for b0..b7 stems and a few stage widths.
        assert_eq!(make_divisible(32.0), 32);
        assert_eq!(make_divisible(32.0 * 1.1), 32);
        assert_eq!(make_divisible(40.0 * 1.1), 48);
        assert_eq!(make_divisible(320.0 * 1.2), 384);
        assert_eq!(make_divisible(10.0), 16);
        assert_eq!(make_divisible(4.0), 8);
    }
}
