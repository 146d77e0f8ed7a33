//! torchvision's MobileNetV3 (`torchvision.models.mobilenetv3`, small and large), configured from the checkpoint's shapes.
//!
//! Reference: Howard et al. 2019, "Searching for MobileNetV3"; torchvision's `MobileNetV3`,
//! `InvertedResidual` and `SqueezeExcitation` (with a hard sigmoid).
//!
//! `features.0` is the stem (3x3 stride-2 conv-bn-hardswish); `features.{1..n}` are inverted
//! residual blocks `features.{i}.block.{j}`: an optional 1x1 expansion (conv-bn-act), a
//! depthwise kxk convolution (conv-bn-act), optional squeeze-and-excitation (`fc1`, ReLU,
//! `fc2`, hard sigmoid, scaling the channels), a 1x1 projection (conv-bn), and the input added
//! back when the block keeps its shape and has stride 1; `features.{n+1}` is a 1x1
//! conv-bn-hardswish; then global average pooling, `classifier.0` (Linear), hardswish and
//! `classifier.3` (dropout at `classifier.2` is inactive). Batch norm's epsilon is 1e-3.
//!
//! Read from the shapes: every width, expansion, kernel size, squeeze width (and so which
//! blocks have squeeze-and-excitation), the number of blocks, the head widths and the classes.
//! Not in the shapes, and taken by torchvision's convention for its standard variants (any
//! `width_mult`, `reduced_tail`): each block's stride, activation (ReLU or hardswish) and
//! dilation. With 15 blocks, mobilenet_v3_large's; with 11, mobilenet_v3_small's; otherwise
//! `--arch-option strides=..` and `activations=..` are required. `--arch-option
//! dilations=..` gives a dilated model (torchvision's `dilated=True` is
//! `dilations=1,...,1,2,2,2`: a block with dilation > 1 runs its depthwise convolution at
//! stride 1, as torchvision does).

use std::sync::Arc;

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, batch_norm_specs, conv_dims, hard_sigmoid, hard_swish, linear, linear_specs,
    make_divisible, Conv, ConvNorm, ConvShape,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct MobileNetV3Family;

/// Batch-norm epsilon torchvision's MobileNetV3 uses.
const BN_EPS: f64 = 1e-3;

/// One row of torchvision's tables: input, kernel, expanded, output, squeeze-and-excitation,
/// hardswish, stride (all at `width_mult = 1`).
type Row = (usize, usize, usize, usize, bool, bool, usize);

/// mobilenet_v3_large's blocks.
const LARGE: [Row; 15] = [
    (16, 3, 16, 16, false, false, 1),
    (16, 3, 64, 24, false, false, 2),
    (24, 3, 72, 24, false, false, 1),
    (24, 5, 72, 40, true, false, 2),
    (40, 5, 120, 40, true, false, 1),
    (40, 5, 120, 40, true, false, 1),
    (40, 3, 240, 80, false, true, 2),
    (80, 3, 200, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 184, 80, false, true, 1),
    (80, 3, 480, 112, true, true, 1),
    (112, 3, 672, 112, true, true, 1),
    (112, 5, 672, 160, true, true, 2),
    (160, 5, 960, 160, true, true, 1),
    (160, 5, 960, 160, true, true, 1),
];

/// mobilenet_v3_small's blocks.
const SMALL: [Row; 11] = [
    (16, 3, 16, 16, true, false, 2),
    (16, 3, 72, 24, false, false, 2),
    (24, 3, 88, 24, false, false, 1),
    (24, 5, 96, 40, true, true, 2),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 240, 40, true, true, 1),
    (40, 5, 120, 48, true, true, 1),
    (48, 5, 144, 48, true, true, 1),
    (48, 5, 288, 96, true, true, 2),
    (96, 5, 576, 96, true, true, 1),
    (96, 5, 576, 96, true, true, 1),
];

/// The standard variants: name, blocks, classifier hidden width.
const VARIANTS: [(&str, &[Row], usize); 2] = [
    ("mobilenet_v3_large", &LARGE, 1280),
    ("mobilenet_v3_small", &SMALL, 1024),
];

impl Family for MobileNetV3Family {
    fn name(&self) -> &'static str {
        "mobilenet_v3"
    }

    fn summary(&self) -> &'static str {
        "torchvision MobileNetV3 small/large, any width; strides and activations by torchvision's convention unless --arch-option strides=.. activations=.."
    }

    fn variants(&self) -> &'static [&'static str] {
        &["mobilenet_v3_large", "mobilenet_v3_small"]
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("strides", "each block's stride, e.g. 2,2,1,2,1,1,1,1,2,1,1"),
            (
                "activations",
                "each block's activation, relu or hardswish, e.g. relu,relu,relu,hardswish,...",
            ),
            ("dilations", "each block's dilation (default 1 each)"),
            ("bn_eps", "batch norm's epsilon (default 0.001)"),
        ]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.0.0.weight")
            && layout.has("features.1.block.0.0.weight")
            && layout.has("classifier.3.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(MobileNetV3Config::read(layout, options)?))
    }
}

/// One inverted residual block.
#[derive(Clone, Debug, PartialEq)]
pub struct Bneck {
    /// Input channels.
    pub input: usize,
    /// Channels after the expansion (the input's when there is none).
    pub expanded: usize,
    /// Depthwise kernel size.
    pub kernel: usize,
    /// The block's stride as configured (the depthwise convolution runs at stride 1 when
    /// dilated, but the residual still follows this one, as in torchvision).
    pub stride: usize,
    /// Depthwise dilation.
    pub dilation: usize,
    /// Squeeze-and-excitation width, if the block has it.
    pub squeeze: Option<usize>,
    /// Hardswish (else ReLU) after the expansion and the depthwise convolution.
    pub hardswish: bool,
    /// Output channels.
    pub output: usize,
}

impl Bneck {
    fn residual(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }

    /// The depthwise convolution.
    fn depthwise(&self) -> ConvShape {
        ConvShape {
            input: self.expanded,
            output: self.expanded,
            kernel: self.kernel,
            stride: if self.dilation > 1 { 1 } else { self.stride },
            padding: (self.kernel - 1) / 2 * self.dilation,
            groups: self.expanded,
            dilation: self.dilation,
            bias: false,
        }
    }
}

/// A MobileNetV3's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV3Config {
    /// Input channels.
    pub channels: usize,
    /// Stem output channels.
    pub stem: usize,
    /// The blocks.
    pub blocks: Vec<Bneck>,
    /// Output channels of the last 1x1 convolution.
    pub last: usize,
    /// Width of `classifier.0`.
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
    /// Batch-norm epsilon.
    pub bn_eps: f64,
}

/// A per-block list option, checked for length and values.
fn per_block<T>(
    options: &Options,
    key: &str,
    n: usize,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> std::result::Result<Option<Vec<T>>, ConfigError> {
    let Some(text) = options.text(key) else {
        return Ok(None);
    };
    let bad = || {
        ConfigError::new(
            format!("--arch-option {key}"),
            format!("is '{text}'; it must give {n} {expected}, one per block, separated by commas"),
        )
    };
    let values: Vec<T> = text
        .split(',')
        .map(|v| parse(v.trim()))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if values.len() != n {
        return Err(bad());
    }
    Ok(Some(values))
}

fn conv(input: usize, output: usize, kernel: usize) -> ConvShape {
    ConvShape::same(input, output, kernel, 1)
}

impl MobileNetV3Config {
    /// Reads the configuration from the checkpoint's tensor shapes and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<Self, ConfigError> {
        let (stem, channels, _) = conv_dims(layout, "features.0.0.weight")?;
        let n = layout.count("features.", 1, ".block.0.0.weight");
        if n == 0 {
            return Err(ConfigError::new(
                "features.1.block.0.0.weight",
                "is missing",
            ));
        }
        let table: Option<&[Row]> = match n {
            15 => Some(&LARGE),
            11 => Some(&SMALL),
            _ => None,
        };
        let strides = per_block(
            options,
            "strides",
            n,
            |v| v.parse().ok().filter(|s| *s == 1 || *s == 2),
            "strides of 1 or 2",
        )?
        .or_else(|| table.map(|t| t.iter().map(|r| r.6).collect()));
        let activations = per_block(
            options,
            "activations",
            n,
            |v| match v {
                "relu" | "RE" => Some(false),
                "hardswish" | "HS" => Some(true),
                _ => None,
            },
            "activations (relu or hardswish)",
        )?
        .or_else(|| table.map(|t| t.iter().map(|r| r.5).collect()));
        let (Some(strides), Some(activations)) = (strides, activations) else {
            return Err(ConfigError::new(
                "--arch-option strides",
                format!("and activations are needed: the checkpoint has {n} blocks, not torchvision's 15 (large) or 11 (small), so their strides and activations are unknown; pass e.g. strides={} activations={}", vec!["1"; n].join(","), vec!["relu"; n].join(",")),
            ));
        };
        let dilations = per_block(
            options,
            "dilations",
            n,
            |v| v.parse().ok().filter(|d| *d > 0),
            "positive dilations",
        )?
        .unwrap_or_else(|| vec![1; n]);
        let mut input = stem;
        let mut blocks = Vec::with_capacity(n);
        for i in 1..=n {
            let p = format!("features.{i}.block");
            // An expansion is a 1x1 convolution of all the input channels; without one, the
            // block starts with the depthwise convolution (one input channel per filter).
            let first = layout.require(&format!("{p}.0.0.weight"), 4)?;
            let expand = first[1] == input && first[2] == 1 && first[0] != input;
            let dw = usize::from(expand);
            let (expanded, _, kernel) = conv_dims(layout, &format!("{p}.{dw}.0.weight"))?;
            let squeeze = layout
                .has(&format!("{p}.{}.fc1.weight", dw + 1))
                .then(|| conv_dims(layout, &format!("{p}.{}.fc1.weight", dw + 1)))
                .transpose()?
                .map(|d| d.0);
            let project = dw + 1 + usize::from(squeeze.is_some());
            let (output, _, _) = conv_dims(layout, &format!("{p}.{project}.0.weight"))?;
            blocks.push(Bneck {
                input,
                expanded,
                kernel,
                stride: strides[i - 1],
                dilation: dilations[i - 1],
                squeeze,
                hardswish: activations[i - 1],
                output,
            });
            input = output;
        }
        let (last, _, _) = conv_dims(layout, &format!("features.{}.0.weight", n + 1))?;
        let hidden = layout.require("classifier.0.weight", 2)?[0];
        let classes = layout.require("classifier.3.weight", 2)?[0];
        Ok(MobileNetV3Config {
            channels,
            stem,
            blocks,
            last,
            hidden,
            classes,
            bn_eps: options.float("bn_eps")?.unwrap_or(BN_EPS),
        })
    }

    /// The standard variant (width 1, no reduced tail, no dilation) these shapes are.
    fn standard(&self) -> Option<&'static str> {
        if self.channels != 3 || self.bn_eps != BN_EPS || self.stem != 16 {
            return None;
        }
        VARIANTS
            .iter()
            .find(|(_, rows, hidden)| {
                rows.len() == self.blocks.len()
                    && *hidden == self.hidden
                    && self.last == 6 * rows[rows.len() - 1].3
                    && rows.iter().zip(&self.blocks).all(|(r, b)| {
                        (
                            b.input,
                            b.kernel,
                            b.expanded,
                            b.output,
                            b.hardswish,
                            b.stride,
                        ) == (r.0, r.1, r.2, r.3, r.5, r.6)
                            && b.dilation == 1
                            && b.squeeze == r.4.then(|| make_divisible((r.2 / 4) as f64))
                    })
            })
            .map(|v| v.0)
    }
}

impl Architecture for MobileNetV3Config {
    fn family(&self) -> &'static str {
        "mobilenet_v3"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let widths: Vec<String> = self
            .blocks
            .iter()
            .map(|b| {
                format!(
                    "{}{}{}",
                    b.output,
                    if b.squeeze.is_some() { "se" } else { "" },
                    if b.hardswish { "hs" } else { "" }
                )
            })
            .collect();
        format!(
            "mobilenet_v3 (stem {}, blocks {}, last {}, hidden {}, {} classes)",
            self.stem,
            widths.join("-"),
            self.last,
            self.hidden,
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
        ConvShape::same(self.channels, self.stem, 3, 2).specs("features.0.0", &mut out);
        batch_norm_specs("features.0.1", self.stem, &mut out);
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("features.{}.block", i + 1);
            let mut j = 0;
            if b.expanded != b.input {
                conv(b.input, b.expanded, 1).specs(&format!("{p}.0.0"), &mut out);
                batch_norm_specs(&format!("{p}.0.1"), b.expanded, &mut out);
                j = 1;
            }
            b.depthwise().specs(&format!("{p}.{j}.0"), &mut out);
            batch_norm_specs(&format!("{p}.{j}.1"), b.expanded, &mut out);
            if let Some(s) = b.squeeze {
                let mut fc1 = conv(b.expanded, s, 1);
                fc1.bias = true;
                fc1.specs(&format!("{p}.{}.fc1", j + 1), &mut out);
                let mut fc2 = conv(s, b.expanded, 1);
                fc2.bias = true;
                fc2.specs(&format!("{p}.{}.fc2", j + 1), &mut out);
                j += 1;
            }
            conv(b.expanded, b.output, 1).specs(&format!("{p}.{}.0", j + 1), &mut out);
            batch_norm_specs(&format!("{p}.{}.1", j + 1), b.output, &mut out);
        }
        let input = self.blocks.last().map_or(self.stem, |b| b.output);
        let p = format!("features.{}", self.blocks.len() + 1);
        conv(input, self.last, 1).specs(&format!("{p}.0"), &mut out);
        batch_norm_specs(&format!("{p}.1"), self.last, &mut out);
        linear_specs("classifier.0", self.last, self.hidden, &mut out);
        linear_specs("classifier.3", self.hidden, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let eps = self.bn_eps;
        let cn = |shape: ConvShape, vb: VarBuilder| {
            ConvNorm::with_eps(&shape, vb.pp("0"), vb.pp("1"), eps)
        };
        let stem = cn(ConvShape::same(self.channels, self.stem, 3, 2), f.pp("0"))?;
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for (i, b) in self.blocks.iter().enumerate() {
            let vb = f.pp(format!("{}.block", i + 1));
            let mut j = 0;
            let expand = if b.expanded != b.input {
                j = 1;
                Some(cn(conv(b.input, b.expanded, 1), vb.pp("0"))?)
            } else {
                None
            };
            let depthwise = cn(b.depthwise(), vb.pp(j.to_string()))?;
            let se = match b.squeeze {
                Some(s) => {
                    j += 1;
                    let se = vb.pp(j.to_string());
                    let mut fc1 = conv(b.expanded, s, 1);
                    fc1.bias = true;
                    let mut fc2 = conv(s, b.expanded, 1);
                    fc2.bias = true;
                    Some((fc1.build(se.pp("fc1"))?, fc2.build(se.pp("fc2"))?))
                }
                None => None,
            };
            blocks.push(Block {
                expand,
                depthwise,
                se,
                project: cn(conv(b.expanded, b.output, 1), vb.pp((j + 1).to_string()))?,
                hardswish: b.hardswish,
                residual: b.residual(),
            });
        }
        let input = self.blocks.last().map_or(self.stem, |b| b.output);
        let last = cn(
            conv(input, self.last, 1),
            f.pp((self.blocks.len() + 1).to_string()),
        )?;
        let c = vb.pp("classifier");
        Ok(Box::new(MobileNetV3 {
            stem,
            blocks,
            last,
            hidden: linear(self.last, self.hidden, c.pp("0"))?,
            head: linear(self.hidden, self.classes, c.pp("3"))?,
        }))
    }
}

struct Block {
    expand: Option<ConvNorm>,
    depthwise: ConvNorm,
    /// Squeeze-and-excitation's `fc1` and `fc2`.
    se: Option<(Conv, Conv)>,
    project: ConvNorm,
    hardswish: bool,
    residual: bool,
}

impl Block {
    fn act(&self, x: &Tensor) -> Result<Tensor> {
        if self.hardswish {
            hard_swish(x)
        } else {
            x.relu()
        }
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.expand {
            Some(e) => self.act(&x.apply(e)?)?,
            None => x.clone(),
        };
        let mut y = self.act(&y.apply(&self.depthwise)?)?;
        if let Some((fc1, fc2)) = &self.se {
            let scale = hard_sigmoid(
                &adaptive_avg_pool(&y, 1, 1)?
                    .apply(fc1)?
                    .relu()?
                    .apply(fc2)?,
            )?;
            y = y.broadcast_mul(&scale)?;
        }
        let y = y.apply(&self.project)?;
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

struct MobileNetV3 {
    stem: ConvNorm,
    blocks: Vec<Block>,
    last: ConvNorm,
    hidden: Linear,
    head: Linear,
}

impl Model for MobileNetV3 {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = hard_swish(&batch.inputs.apply(&self.stem)?)?;
        for block in &self.blocks {
            x = x.apply(block)?;
        }
        let x = hard_swish(&x.apply(&self.last)?)?;
        let x = adaptive_avg_pool(&x, 1, 1)?.flatten_from(1)?;
        hard_swish(&x.apply(&self.hidden)?)?.apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shapes torchvision's `mobilenet_v3_{large,small}(num_classes=7)` store, by hand.
    fn standard_layout(rows: &[Row], hidden: usize) -> Layout {
        let mut shapes = vec![("features.0.0.weight".to_string(), vec![16, 3, 3, 3])];
        for (i, &(input, k, e, out, se, _, _)) in rows.iter().enumerate() {
            let p = format!("features.{}.block", i + 1);
            let mut j = 0;
            if e != input {
                shapes.push((format!("{p}.0.0.weight"), vec![e, input, 1, 1]));
                j = 1;
            }
            shapes.push((format!("{p}.{j}.0.weight"), vec![e, 1, k, k]));
            if se {
                j += 1;
                shapes.push((
                    format!("{p}.{j}.fc1.weight"),
                    vec![make_divisible((e / 4) as f64), e, 1, 1],
                ));
            }
            shapes.push((format!("{p}.{}.0.weight", j + 1), vec![out, e, 1, 1]));
        }
        let last = 6 * rows[rows.len() - 1].3;
        let n = rows.len() + 1;
        shapes.push((
            format!("features.{n}.0.weight"),
            vec![last, rows[rows.len() - 1].3, 1, 1],
        ));
        shapes.push(("classifier.0.weight".into(), vec![hidden, last]));
        shapes.push(("classifier.3.weight".into(), vec![7, hidden]));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn large_and_small_are_recognised_with_their_strides_and_activations() {
        for (name, rows, hidden) in VARIANTS {
            let layout = standard_layout(rows, hidden);
            let config = MobileNetV3Config::read(&layout, &Options::default()).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.classes, 7);
            let strides: Vec<usize> = config.blocks.iter().map(|b| b.stride).collect();
            assert_eq!(strides, rows.iter().map(|r| r.6).collect::<Vec<_>>());
            // Other strides: still a MobileNetV3, but not the standard variant.
            let n = rows.len();
            let ones = Options::parse(&[format!("strides={}", vec!["1"; n].join(","))]).unwrap();
            let config = MobileNetV3Config::read(&layout, &ones).unwrap();
            assert_eq!(config.variant(), None);
        }
    }

    #[test]
    fn per_block_options_must_give_one_valid_value_per_block() {
        let layout = standard_layout(&SMALL, 1024);
        for bad in [
            "strides=1,2",
            "strides=1,2,1,2,1,1,1,1,2,1,3",
            "activations=relu,gelu,relu,relu,relu,relu,relu,relu,relu,relu,relu",
            "dilations=0,1,1,1,1,1,1,1,1,1,1",
        ] {
            let options = Options::parse(&[bad.to_string()]).unwrap();
            let err = MobileNetV3Config::read(&layout, &options).unwrap_err();
            assert!(err.tensor.starts_with("--arch-option"), "{bad}: {err:?}");
            assert!(err.reason.contains("11"), "{bad}: {err:?}");
        }
    }
}
