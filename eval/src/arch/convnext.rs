//! torchvision's ConvNeXt (`torchvision.models.convnext`), configured from the checkpoint's shapes.
//!
//! Reference: Liu et al. 2022, "A ConvNet for the 2020s"; torchvision's `ConvNeXt`, `CNBlock`
//! and `LayerNorm2d` (LayerNorm over channels, eps 1e-6).
//!
//! `features` is a flat `nn.Sequential`: the stem at `features.0` (4x4 stride-4 convolution
//! `.0`, LayerNorm2d `.1`), then stages (`features.{i}.{b}.block.{0,2,3,5}` and
//! `.layer_scale`: a 7x7 depthwise convolution, LayerNorm, Linear to 4x, exact GELU, Linear
//! back, scaled, added to the input) alternating with downsampling layers (`features.{i}.0`
//! LayerNorm2d, `features.{i}.1` 2x2 stride-2 convolution). Then global average pooling,
//! `classifier.0` (LayerNorm2d) and `classifier.2` (Linear). Widths, depths and classes come
//! from the shapes; stochastic depth is inactive in eval mode.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::layers::{
    adaptive_avg_pool, conv_dims, linear, linear_specs, min_side, Conv, ConvShape, Window,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// LayerNorm epsilon of torchvision's ConvNeXt.
const LN_EPS: f64 = 1e-6;

/// The registry entry.
pub struct ConvNextFamily;

/// Standard variants: name, stage widths, stage depths.
const VARIANTS: &[(&str, [usize; 4], [usize; 4])] = &[
    ("convnext_tiny", [96, 192, 384, 768], [3, 3, 9, 3]),
    ("convnext_small", [96, 192, 384, 768], [3, 3, 27, 3]),
    ("convnext_base", [128, 256, 512, 1024], [3, 3, 27, 3]),
    ("convnext_large", [192, 384, 768, 1536], [3, 3, 27, 3]),
];

impl Family for ConvNextFamily {
    fn name(&self) -> &'static str {
        "convnext"
    }

    fn summary(&self) -> &'static str {
        "torchvision ConvNeXt, any widths and depths"
    }

    fn variants(&self) -> &'static [&'static str] {
        &[
            "convnext_tiny",
            "convnext_small",
            "convnext_base",
            "convnext_large",
        ]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("features.1.0.block.0.weight") && layout.has("features.1.0.layer_scale")
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(ConvNextConfig::read(layout)?))
    }
}

/// A ConvNeXt's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvNextConfig {
    /// Input channels.
    pub channels: usize,
    /// Each stage's width and number of blocks, in order; a downsampling layer sits between
    /// consecutive stages.
    pub stages: Vec<(usize, usize)>,
    /// Output classes.
    pub classes: usize,
}

impl ConvNextConfig {
    /// Reads the configuration from the checkpoint's tensor shapes.
    pub fn read(layout: &Layout) -> std::result::Result<ConvNextConfig, ConfigError> {
        let (_, channels, _) = conv_dims(layout, "features.0.0.weight")?;
        let mut stages = Vec::new();
        let mut i = 1;
        loop {
            let blocks = layout.count(&format!("features.{i}."), 0, ".block.0.weight");
            if blocks == 0 {
                return Err(ConfigError::new(
                    format!("features.{i}.0.block.0.weight"),
                    "is missing",
                ));
            }
            let (width, _, _) = conv_dims(layout, &format!("features.{i}.0.block.0.weight"))?;
            stages.push((width, blocks));
            if !layout.has(&format!("features.{}.1.weight", i + 1)) {
                break;
            }
            i += 2;
        }
        let classes = layout.require("classifier.2.weight", 2)?[0];
        Ok(ConvNextConfig {
            channels,
            stages,
            classes,
        })
    }

    fn standard(&self) -> Option<&'static str> {
        VARIANTS
            .iter()
            .find(|(_, widths, depths)| {
                self.channels == 3
                    && self.stages.len() == 4
                    && self
                        .stages
                        .iter()
                        .zip(widths.iter().zip(depths))
                        .all(|(s, (w, d))| s == &(*w, *d))
            })
            .map(|v| v.0)
    }

    fn last(&self) -> usize {
        self.stages.last().map_or(0, |s| s.0)
    }
}

fn ln_specs(prefix: &str, n: usize, out: &mut Vec<TensorSpec>) {
    out.push(TensorSpec::float(&format!("{prefix}.weight"), &[n]));
    out.push(TensorSpec::float(&format!("{prefix}.bias"), &[n]));
}

fn conv(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
) -> ConvShape {
    ConvShape {
        input,
        output,
        kernel,
        stride,
        padding,
        groups,
        dilation: 1,
        bias: true,
    }
}

impl Architecture for ConvNextConfig {
    fn family(&self) -> &'static str {
        "convnext"
    }

    fn describe(&self) -> String {
        if let Some(v) = self.standard() {
            return v.to_string();
        }
        let widths: Vec<String> = self.stages.iter().map(|s| s.0.to_string()).collect();
        let depths: Vec<String> = self.stages.iter().map(|s| s.1.to_string()).collect();
        format!(
            "convnext (widths {}, depths {}, {} classes)",
            widths.join("-"),
            depths.join("-"),
            self.classes
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(str::to_string)
    }

    fn input(&self) -> Input {
        // The 4x4 stride-4 stem, then a 2x2 stride-2 convolution between stages.
        let down = conv(1, 1, 2, 2, 0, 1);
        let chain: Vec<Window> = std::iter::once(Window::from(&conv(1, 1, 4, 4, 0, 1)))
            .chain(self.stages[1..].iter().map(|_| Window::from(&down)))
            .collect();
        InputShape {
            channels: self.channels,
            size: None,
            min: min_side(&chain),
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let mut out = Vec::new();
        let first = self.stages[0].0;
        conv(self.channels, first, 4, 4, 0, 1).specs("features.0.0", &mut out);
        ln_specs("features.0.1", first, &mut out);
        for (s, &(width, blocks)) in self.stages.iter().enumerate() {
            let i = 1 + 2 * s;
            for b in 0..blocks {
                let p = format!("features.{i}.{b}");
                conv(width, width, 7, 1, 3, width).specs(&format!("{p}.block.0"), &mut out);
                ln_specs(&format!("{p}.block.2"), width, &mut out);
                linear_specs(&format!("{p}.block.3"), width, 4 * width, &mut out);
                linear_specs(&format!("{p}.block.5"), 4 * width, width, &mut out);
                out.push(TensorSpec::float(
                    &format!("{p}.layer_scale"),
                    &[width, 1, 1],
                ));
            }
            if let Some(&(next, _)) = self.stages.get(s + 1) {
                ln_specs(&format!("features.{}.0", i + 1), width, &mut out);
                conv(width, next, 2, 2, 0, 1).specs(&format!("features.{}.1", i + 1), &mut out);
            }
        }
        ln_specs("classifier.0", self.last(), &mut out);
        linear_specs("classifier.2", self.last(), self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let f = vb.pp("features");
        let first = self.stages[0].0;
        let stem = (
            conv(self.channels, first, 4, 4, 0, 1).build(f.pp("0.0"))?,
            candle_nn::layer_norm(first, LN_EPS, f.pp("0.1"))?,
        );
        let mut stages = Vec::new();
        for (s, &(width, blocks)) in self.stages.iter().enumerate() {
            let i = 1 + 2 * s;
            let mut list = Vec::with_capacity(blocks);
            for b in 0..blocks {
                let vb = f.pp(format!("{i}.{b}"));
                list.push(Block {
                    dwconv: conv(width, width, 7, 1, 3, width).build(vb.pp("block.0"))?,
                    norm: candle_nn::layer_norm(width, LN_EPS, vb.pp("block.2"))?,
                    up: linear(width, 4 * width, vb.pp("block.3"))?,
                    down: linear(4 * width, width, vb.pp("block.5"))?,
                    scale: vb.get((width, 1, 1), "layer_scale")?,
                });
            }
            let downsample = match self.stages.get(s + 1) {
                Some(&(next, _)) => Some((
                    candle_nn::layer_norm(width, LN_EPS, f.pp(format!("{}.0", i + 1)))?,
                    conv(width, next, 2, 2, 0, 1).build(f.pp(format!("{}.1", i + 1)))?,
                )),
                None => None,
            };
            stages.push((list, downsample));
        }
        let c = vb.pp("classifier");
        Ok(Box::new(ConvNext {
            stem,
            stages,
            norm: candle_nn::layer_norm(self.last(), LN_EPS, c.pp("0"))?,
            head: linear(self.last(), self.classes, c.pp("2"))?,
        }))
    }
}

/// LayerNorm over the channels of an NCHW tensor (torchvision's `LayerNorm2d`).
fn norm2d(x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))?
        .contiguous()?
        .apply(ln)?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

struct Block {
    dwconv: Conv,
    norm: LayerNorm,
    up: Linear,
    down: Linear,
    scale: Tensor,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x
            .apply(&self.dwconv)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .apply(&self.norm)?
            .apply(&self.up)?
            .gelu_erf()?
            .apply(&self.down)?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        x + y.broadcast_mul(&self.scale)?
    }
}

/// LayerNorm2d then a 2x2 stride-2 convolution, between stages.
type Downsample = (LayerNorm, Conv);

struct ConvNext {
    stem: (Conv, LayerNorm),
    stages: Vec<(Vec<Block>, Option<Downsample>)>,
    norm: LayerNorm,
    head: Linear,
}

impl Model for ConvNext {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let mut x = norm2d(&x.apply(&self.stem.0)?, &self.stem.1)?;
        for (blocks, downsample) in &self.stages {
            for block in blocks {
                x = block.forward(&x)?;
            }
            if let Some((ln, conv)) = downsample {
                x = norm2d(&x, ln)?.apply(conv)?;
            }
        }
        let x = norm2d(&adaptive_avg_pool(&x, 1, 1)?, &self.norm)?;
        x.flatten_from(1)?.apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_variants_are_recognised_from_shapes() {
        for &(name, widths, depths) in VARIANTS {
            let mut shapes = vec![("features.0.0.weight".to_string(), vec![widths[0], 3, 4, 4])];
            for s in 0..4 {
                let i = 1 + 2 * s;
                for b in 0..depths[s] {
                    shapes.push((
                        format!("features.{i}.{b}.block.0.weight"),
                        vec![widths[s], 1, 7, 7],
                    ));
                }
                if s < 3 {
                    shapes.push((
                        format!("features.{}.1.weight", i + 1),
                        vec![widths[s + 1], widths[s], 2, 2],
                    ));
                }
            }
            shapes.push(("classifier.2.weight".into(), vec![7, widths[3]]));
            let layout = Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())));
            let config = ConvNextConfig::read(&layout).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.classes, 7);
        }
    }
}
