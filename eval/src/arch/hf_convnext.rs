//! Hugging Face transformers' `ConvNextForImageClassification`, configured from the model directory's `config.json` (or, for a lone safetensors file, from its shapes).
//!
//! Reference: transformers' `modeling_convnext.py` (`ConvNextEmbeddings`, `ConvNextStage`,
//! `ConvNextLayer`, `ConvNextModel`). Names as `save_pretrained` writes them:
//! `convnext.embeddings.{patch_embeddings, layernorm}` (a patch x patch convolution of stride
//! patch, LayerNorm over channels, eps 1e-6), stages `convnext.encoder.stages.{i}` with a
//! `downsampling_layer.{0,1}` (LayerNorm over channels, 2x2 stride-2 convolution) from the
//! second on, and layers `layers.{j}.{dwconv, layernorm, pwconv1, pwconv2,
//! layer_scale_parameter}` (7x7 depthwise convolution, LayerNorm eps 1e-6, Linear to 4x, the
//! configured activation, Linear back, scaled per channel when the layer scale exists, added
//! to the input); then the spatial mean, `convnext.layernorm` (eps `layer_norm_eps`) and
//! `classifier`.
//!
//! From `config.json`: `hidden_sizes`, `depths`, `patch_size`, `num_channels`, `hidden_act`,
//! `layer_norm_eps` and `layer_scale_init_value` (> 0: layers have `layer_scale_parameter`),
//! with `ConvNextConfig`'s defaults. Without `config.json` the widths, depths, patch size and
//! layer scale come from the shapes, the activation is GELU and `layer_norm_eps` 1e-12. The
//! classes come from `classifier.weight`. Any input size (fully convolutional).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::hf_config::{key_name, HfConfig};
use super::layers::{
    conv_dims, linear, linear_specs, min_side, tokens_linear, Conv, ConvShape, Window,
};
use super::text_layers::Activation;
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct HfConvNextFamily;

/// The class `config.json`'s `architectures` names.
const ARCHITECTURE: &str = "ConvNextForImageClassification";

/// LayerNorm epsilon of every norm but the last, fixed in transformers' code.
const INNER_EPS: f64 = 1e-6;

const PATCH: &str = "convnext.embeddings.patch_embeddings.weight";

impl Family for HfConvNextFamily {
    fn name(&self) -> &'static str {
        "hf_convnext"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face ConvNextForImageClassification, from the model directory's config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        let Ok(config) = HfConfig::optional(layout) else {
            return false;
        };
        if config.present() {
            config.architectures().contains(&ARCHITECTURE)
        } else {
            layout.has(PATCH) && layout.has("classifier.weight")
        }
    }

    fn configure(
        &self,
        layout: &Layout,
        _: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(HfConvNextConfig::read(layout)?))
    }
}

/// A `ConvNextForImageClassification`'s configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct HfConvNextConfig {
    /// Input channels.
    pub channels: usize,
    /// Patch size of the stem.
    pub patch: usize,
    /// Width and depth of each stage.
    pub stages: Vec<(usize, usize)>,
    /// The MLP's activation.
    pub act: Activation,
    /// Epsilon of the final LayerNorm.
    pub eps: f64,
    /// Whether layers have `layer_scale_parameter`.
    pub layer_scale: bool,
    /// Output classes.
    pub classes: usize,
}

impl HfConvNextConfig {
    /// Reads the configuration from `config.json` (or the shapes, without one).
    pub fn read(layout: &Layout) -> std::result::Result<Self, ConfigError> {
        let c = HfConfig::optional(layout)?;
        let stages = if c.present() {
            let widths = c.positives_or("hidden_sizes", &[96, 192, 384, 768])?;
            let depths = c.positives_or("depths", &[3, 3, 9, 3])?;
            let n = c.positive_or("num_stages", 4)?;
            if widths.len() < n || depths.len() < n {
                return Err(ConfigError::new(
                    key_name("num_stages"),
                    format!(
                        "is {n}, but hidden_sizes has {} and depths {} entries",
                        widths.len(),
                        depths.len()
                    ),
                ));
            }
            widths.into_iter().zip(depths).take(n).collect()
        } else {
            let n = layout.count("convnext.encoder.stages.", 0, ".layers.0.dwconv.weight");
            (0..n)
                .map(|i| {
                    let p = format!("convnext.encoder.stages.{i}.layers.");
                    let (width, _, _) = conv_dims(layout, &format!("{p}0.dwconv.weight"))?;
                    Ok((width, layout.count(&p, 0, ".dwconv.weight")))
                })
                .collect::<std::result::Result<Vec<_>, ConfigError>>()?
        };
        if stages.is_empty() {
            return Err(ConfigError::new(
                "convnext.encoder.stages.0.layers.0.dwconv.weight",
                "is missing",
            ));
        }
        let (channels, patch, layer_scale) = if c.present() {
            (
                c.positive_or("num_channels", 3)?,
                c.square_or("patch_size", 4)?,
                c.non_negative_or("layer_scale_init_value", 1e-6)? > 0.0,
            )
        } else {
            let (_, channels, patch) = conv_dims(layout, PATCH)?;
            (
                channels,
                patch,
                layout.has("convnext.encoder.stages.0.layers.0.layer_scale_parameter"),
            )
        };
        let act = Activation::read(&c, "hidden_act", "gelu")?;
        Ok(HfConvNextConfig {
            channels,
            patch,
            stages,
            act,
            eps: c.non_negative_or("layer_norm_eps", 1e-12)?,
            layer_scale,
            classes: layout.require("classifier.weight", 2)?[0],
        })
    }

    fn last(&self) -> usize {
        self.stages[self.stages.len() - 1].0
    }
}

fn conv(input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> ConvShape {
    ConvShape {
        input,
        output,
        kernel,
        stride,
        padding: if groups > 1 { kernel / 2 } else { 0 },
        groups,
        dilation: 1,
        bias: true,
    }
}

fn norm_specs(prefix: &str, n: usize, out: &mut Vec<TensorSpec>) {
    out.push(TensorSpec::float(&format!("{prefix}.weight"), &[n]));
    out.push(TensorSpec::float(&format!("{prefix}.bias"), &[n]));
}

impl Architecture for HfConvNextConfig {
    fn family(&self) -> &'static str {
        "hf_convnext"
    }

    fn describe(&self) -> String {
        let widths: Vec<String> = self.stages.iter().map(|s| s.0.to_string()).collect();
        let depths: Vec<String> = self.stages.iter().map(|s| s.1.to_string()).collect();
        format!(
            "hf_convnext (patch {}, widths {}, depths {}, {} classes)",
            self.patch,
            widths.join("-"),
            depths.join("-"),
            self.classes
        )
    }

    fn input(&self) -> Input {
        // The patch x patch stride-patch stem, then a 2x2 stride-2 convolution before each
        // stage but the first.
        let chain: Vec<Window> =
            std::iter::once(Window::from(&conv(1, 1, self.patch, self.patch, 1)))
                .chain(
                    self.stages[1..]
                        .iter()
                        .map(|_| Window::from(&conv(1, 1, 2, 2, 1))),
                )
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
        conv(self.channels, first, self.patch, self.patch, 1)
            .specs("convnext.embeddings.patch_embeddings", &mut out);
        norm_specs("convnext.embeddings.layernorm", first, &mut out);
        let mut input = first;
        for (i, &(width, depth)) in self.stages.iter().enumerate() {
            let p = format!("convnext.encoder.stages.{i}");
            if i > 0 {
                norm_specs(&format!("{p}.downsampling_layer.0"), input, &mut out);
                conv(input, width, 2, 2, 1).specs(&format!("{p}.downsampling_layer.1"), &mut out);
            }
            for j in 0..depth {
                let l = format!("{p}.layers.{j}");
                conv(width, width, 7, 1, width).specs(&format!("{l}.dwconv"), &mut out);
                norm_specs(&format!("{l}.layernorm"), width, &mut out);
                linear_specs(&format!("{l}.pwconv1"), width, 4 * width, &mut out);
                linear_specs(&format!("{l}.pwconv2"), 4 * width, width, &mut out);
                if self.layer_scale {
                    out.push(TensorSpec::float(
                        &format!("{l}.layer_scale_parameter"),
                        &[width],
                    ));
                }
            }
            input = width;
        }
        norm_specs("convnext.layernorm", self.last(), &mut out);
        linear_specs("classifier", self.last(), self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let m = vb.pp("convnext");
        let first = self.stages[0].0;
        let ln = |n: usize, eps: f64, vb: VarBuilder| candle_nn::layer_norm(n, eps, vb);
        let stem = (
            conv(self.channels, first, self.patch, self.patch, 1)
                .build(m.pp("embeddings.patch_embeddings"))?,
            ln(first, INNER_EPS, m.pp("embeddings.layernorm"))?,
        );
        let mut stages = Vec::with_capacity(self.stages.len());
        let mut input = first;
        for (i, &(width, depth)) in self.stages.iter().enumerate() {
            let s = m.pp(format!("encoder.stages.{i}"));
            let downsample = if i > 0 {
                let d = s.pp("downsampling_layer");
                Some((
                    ln(input, INNER_EPS, d.pp("0"))?,
                    conv(input, width, 2, 2, 1).build(d.pp("1"))?,
                ))
            } else {
                None
            };
            let mut layers = Vec::with_capacity(depth);
            for j in 0..depth {
                let l = s.pp(format!("layers.{j}"));
                layers.push(Layer {
                    dwconv: conv(width, width, 7, 1, width).build(l.pp("dwconv"))?,
                    norm: ln(width, INNER_EPS, l.pp("layernorm"))?,
                    up: linear(width, 4 * width, l.pp("pwconv1"))?,
                    down: linear(4 * width, width, l.pp("pwconv2"))?,
                    scale: if self.layer_scale {
                        Some(l.get(width, "layer_scale_parameter")?)
                    } else {
                        None
                    },
                    act: self.act,
                });
            }
            stages.push((downsample, layers));
            input = width;
        }
        Ok(Box::new(HfConvNext {
            stem,
            stages,
            norm: ln(self.last(), self.eps, m.pp("layernorm"))?,
            classifier: linear(self.last(), self.classes, vb.pp("classifier"))?,
        }))
    }
}

/// LayerNorm over the channels of an NCHW tensor (`data_format="channels_first"`).
fn channels_norm(x: &Tensor, ln: &LayerNorm) -> Result<Tensor> {
    x.permute((0, 2, 3, 1))?
        .apply(ln)?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

struct Layer {
    dwconv: Conv,
    norm: LayerNorm,
    up: Linear,
    down: Linear,
    scale: Option<Tensor>,
    act: Activation,
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Channels last for the norm and the two linears, as transformers computes it.
        let y = x
            .apply(&self.dwconv)?
            .permute((0, 2, 3, 1))?
            .contiguous()?
            .apply(&self.norm)?;
        let y = tokens_linear(&self.act.apply(&tokens_linear(&y, &self.up)?)?, &self.down)?;
        let y = match &self.scale {
            Some(s) => y.broadcast_mul(s)?,
            None => y,
        };
        x + y.permute((0, 3, 1, 2))?
    }
}

/// LayerNorm over channels then the strided convolution, between stages.
type Downsample = (LayerNorm, Conv);

struct HfConvNext {
    stem: (Conv, LayerNorm),
    stages: Vec<(Option<Downsample>, Vec<Layer>)>,
    norm: LayerNorm,
    classifier: Linear,
}

impl Model for HfConvNext {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let mut x = channels_norm(&batch.inputs.apply(&self.stem.0)?, &self.stem.1)?;
        for (downsample, layers) in &self.stages {
            if let Some((ln, conv)) = downsample {
                x = channels_norm(&x, ln)?.apply(conv)?;
            }
            for layer in layers {
                x = layer.forward(&x)?;
            }
        }
        // The spatial mean, then LayerNorm over the pooled channels.
        x.mean(3)?
            .mean(2)?
            .apply(&self.norm)?
            .apply(&self.classifier)
    }
}
