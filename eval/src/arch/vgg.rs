//! torchvision's VGG (`torchvision.models.vgg`), with or without batch norm, configured from the checkpoint's shapes.
//!
//! Reference: Simonyan and Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale
//! Image Recognition"; torchvision's `make_layers` and `VGG`.
//!
//! `features` is torchvision's flat `nn.Sequential`: a 3x3 convolution (`features.{i}`, with
//! bias), its batch norm at `features.{i+1}` for the `_bn` variants, a ReLU, and 2x2 max pools
//! between groups. Pools hold no tensors, so they are found from the gaps in the indices; the
//! pool after the last convolution, which every torchvision configuration has, is assumed.
//! Then `AdaptiveAvgPool2d((7, 7))` and `classifier.{0,3,6}`: three linear layers with ReLU
//! between (dropout is inactive in eval mode). Every width and the classes come from the
//! shapes.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, batch_norm_specs, conv_dims, linear, linear_specs, max_pool, min_side, Conv,
    ConvNorm, ConvShape, Window,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct VggFamily;

/// Standard variants: name, convolutions per pooled group, batch norm.
const VARIANTS: &[(&str, [usize; 5], bool)] = &[
    ("vgg11", [1, 1, 2, 2, 2], false),
    ("vgg13", [2, 2, 2, 2, 2], false),
    ("vgg16", [2, 2, 3, 3, 3], false),
    ("vgg19", [2, 2, 4, 4, 4], false),
    ("vgg11_bn", [1, 1, 2, 2, 2], true),
    ("vgg13_bn", [2, 2, 2, 2, 2], true),
    ("vgg16_bn", [2, 2, 3, 3, 3], true),
    ("vgg19_bn", [2, 2, 4, 4, 4], true),
];

impl Family for VggFamily {
    fn name(&self) -> &'static str {
        "vgg"
    }

    fn summary(&self) -> &'static str {
        "torchvision VGG with or without batch norm, any layer configuration"
    }

    fn variants(&self) -> &'static [&'static str] {
        &[
            "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
        ]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.0.weight") && layout.has("classifier.6.weight")
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(VggConfig::read(layout)?))
    }
}

/// One step of `features`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A convolution at this index of `features`, then ReLU.
    Conv(usize, ConvShape),
    /// A 2x2 max pool.
    Pool,
}

/// A VGG's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VggConfig {
    /// `features`, in order.
    pub steps: Vec<Step>,
    /// Whether each convolution is followed by batch norm.
    pub batch_norm: bool,
    /// Widths of `classifier.0`, `classifier.3` and `classifier.6` (inputs, hidden, hidden, classes).
    pub classifier: [usize; 4],
}

impl VggConfig {
    /// Reads the configuration from the checkpoint's tensor shapes.
    pub fn read(layout: &Layout) -> std::result::Result<VggConfig, ConfigError> {
        let mut convs: Vec<usize> = layout
            .names()
            .filter_map(|n| n.strip_prefix("features.")?.strip_suffix(".weight"))
            .filter_map(|i| i.parse::<usize>().ok())
            .filter(|i| {
                layout
                    .shape(&format!("features.{i}.weight"))
                    .is_some_and(|s| s.len() == 4)
            })
            .collect();
        convs.sort_unstable();
        let Some(&first) = convs.first() else {
            return Err(ConfigError::new("features.0.weight", "is missing"));
        };
        if first != 0 {
            return Err(ConfigError::new("features.0.weight", "is missing"));
        }
        let batch_norm = layout.has("features.1.running_mean");
        let per = if batch_norm { 3 } else { 2 };
        let mut steps = Vec::new();
        let mut channels = None;
        for (k, &i) in convs.iter().enumerate() {
            let name = format!("features.{i}.weight");
            let (out, input, kernel) = conv_dims(layout, &name)?;
            if channels.is_some_and(|c| c != input) {
                return Err(ConfigError::new(
                    name,
                    format!(
                        "takes {input} channels, but the layer before gives {}",
                        channels.unwrap_or(0)
                    ),
                ));
            }
            channels = Some(out);
            steps.push(Step::Conv(
                i,
                ConvShape {
                    input,
                    output: out,
                    kernel,
                    stride: 1,
                    padding: kernel / 2,
                    groups: 1,
                    dilation: 1,
                    bias: true,
                },
            ));
            match convs.get(k + 1).map(|next| next - i) {
                None => steps.push(Step::Pool),
                Some(gap) if gap == per => {}
                Some(gap) if gap == per + 1 => steps.push(Step::Pool),
                Some(_) => {
                    return Err(ConfigError::new(
                        format!("features.{}.weight", convs[k + 1]),
                        format!("does not follow features.{i} as a VGG layer does ({} modules per convolution, one per pool)", per),
                    ))
                }
            }
        }
        let c0 = layout.require("classifier.0.weight", 2)?;
        let c3 = layout.require("classifier.3.weight", 2)?;
        let c6 = layout.require("classifier.6.weight", 2)?;
        Ok(VggConfig {
            steps,
            batch_norm,
            classifier: [c0[1], c0[0], c3[0], c6[0]],
        })
    }

    fn last_channels(&self) -> usize {
        self.steps
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Conv(_, c) => Some(c.output),
                Step::Pool => None,
            })
            .unwrap_or(0)
    }

    fn standard(&self) -> Option<&'static str> {
        let mut groups = Vec::new();
        let mut count = 0;
        let mut widths_ok = true;
        for s in &self.steps {
            match s {
                Step::Conv(_, c) => {
                    count += 1;
                    widths_ok &= c.output
                        == [64, 128, 256, 512, 512]
                            .get(groups.len())
                            .copied()
                            .unwrap_or(0);
                }
                Step::Pool => {
                    groups.push(count);
                    count = 0;
                }
            }
        }
        if !widths_ok || self.classifier[..3] != [512 * 49, 4096, 4096] {
            return None;
        }
        VARIANTS
            .iter()
            .find(|(_, g, bn)| groups == g && *bn == self.batch_norm)
            .map(|v| v.0)
    }
}

impl Architecture for VggConfig {
    fn family(&self) -> &'static str {
        "vgg"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let layers: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv(_, c) => c.output.to_string(),
                Step::Pool => "M".into(),
            })
            .collect();
        format!(
            "vgg{} ({}, classifier {}-{}, {} classes)",
            if self.batch_norm { "_bn" } else { "" },
            layers.join(" "),
            self.classifier[1],
            self.classifier[2],
            self.classifier[3]
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(str::to_string)
    }

    fn input(&self) -> Input {
        let channels = match self.steps.first() {
            Some(Step::Conv(_, c)) => c.input,
            _ => 3,
        };
        // Each 2x2 max pool halves the map; the convolutions are as stored.
        let chain: Vec<Window> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Conv(_, c) => Window::from(c),
                Step::Pool => Window::pool(2, 2, 0),
            })
            .collect();
        InputShape {
            channels,
            size: None,
            min: min_side(&chain),
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classifier[3])
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        for s in &self.steps {
            if let Step::Conv(i, c) = s {
                c.specs(&format!("features.{i}"), &mut out);
                if self.batch_norm {
                    batch_norm_specs(&format!("features.{}", i + 1), c.output, &mut out);
                }
            }
        }
        // The classifier reads the last features after the 7x7 adaptive pool.
        let [_, h1, h2, classes] = self.classifier;
        linear_specs("classifier.0", self.last_channels() * 49, h1, &mut out);
        linear_specs("classifier.3", h1, h2, &mut out);
        linear_specs("classifier.6", h2, classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let mut layers = Vec::new();
        for s in &self.steps {
            layers.push(match s {
                // Batch norm is folded into its convolution (layers::ConvNorm).
                Step::Conv(i, c) if self.batch_norm => Layer::ConvNorm(ConvNorm::new(
                    c,
                    f.pp(i.to_string()),
                    f.pp((i + 1).to_string()),
                )?),
                Step::Conv(i, c) => Layer::Conv(c.build(f.pp(i.to_string()))?),
                Step::Pool => Layer::Pool,
            });
        }
        let [_, h1, h2, classes] = self.classifier;
        let c = vb.pp("classifier");
        Ok(Box::new(Vgg {
            layers,
            fc: [
                linear(self.last_channels() * 49, h1, c.pp("0"))?,
                linear(h1, h2, c.pp("3"))?,
                linear(h2, classes, c.pp("6"))?,
            ],
        }))
    }
}

enum Layer {
    Conv(Conv),
    ConvNorm(ConvNorm),
    Pool,
}

struct Vgg {
    layers: Vec<Layer>,
    fc: [Linear; 3],
}

impl Model for Vgg {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = x.clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Conv(conv) => x.apply(conv)?.relu()?,
                Layer::ConvNorm(conv) => x.apply(conv)?.relu()?,
                Layer::Pool => max_pool(&x, 2, 2, 0)?,
            };
        }
        let x = adaptive_avg_pool(&x, 7, 7)?.flatten_from(1)?;
        x.apply(&self.fc[0])?
            .relu()?
            .apply(&self.fc[1])?
            .relu()?
            .apply(&self.fc[2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(groups: [usize; 5], bn: bool) -> Layout {
        let per = if bn { 3 } else { 2 };
        let mut shapes = Vec::new();
        let (mut i, mut channels) = (0, 3);
        for (g, &n) in groups.iter().enumerate() {
            let width = [64, 128, 256, 512, 512][g];
            for _ in 0..n {
                shapes.push((format!("features.{i}.weight"), vec![width, channels, 3, 3]));
                if bn {
                    shapes.push((format!("features.{}.running_mean", i + 1), vec![width]));
                }
                channels = width;
                i += per;
            }
            i += 1;
        }
        shapes.push(("classifier.0.weight".into(), vec![4096, 512 * 49]));
        shapes.push(("classifier.3.weight".into(), vec![4096, 4096]));
        shapes.push(("classifier.6.weight".into(), vec![3, 4096]));
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn standard_variants_are_recognised_from_shapes() {
        for &(name, groups, bn) in VARIANTS {
            let config = VggConfig::read(&layout(groups, bn)).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.output(), Output::Classes(3));
        }
    }

    #[test]
    fn a_gap_that_is_no_pool_is_named() {
        let mut l = layout([1, 1, 2, 2, 2], false);
        let w = l.shapes.remove("features.3.weight").unwrap();
        l.shapes.insert("features.5.weight".into(), w);
        let err = VggConfig::read(&l).unwrap_err();
        assert!(err.tensor.starts_with("features."), "{err:?}");
    }
}
