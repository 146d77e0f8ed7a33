//! Hugging Face transformers' `ViTForImageClassification`, configured from the model directory's `config.json` (or, for a lone safetensors file, from its shapes and the configuration class's defaults).
//!
//! Reference: transformers' `modeling_vit.py` (`ViTEmbeddings`, `ViTLayer`,
//! `ViTForImageClassification`). The names are those `save_pretrained` writes (and the hub's
//! checkpoints use): `vit.embeddings.{cls_token, position_embeddings,
//! patch_embeddings.projection}`, `vit.encoder.layer.{i}.{layernorm_before,
//! attention.attention.{query,key,value}, attention.output.dense, layernorm_after,
//! intermediate.dense, output.dense}`, `vit.layernorm` and `classifier`. Pre-norm blocks, the
//! class token's final state into the classifier.
//!
//! From `config.json`: `hidden_size`, `num_hidden_layers`, `num_attention_heads`,
//! `intermediate_size`, `hidden_act`, `layer_norm_eps`, `image_size`, `patch_size`,
//! `num_channels` and `qkv_bias`, each defaulting to `ViTConfig`'s value (so a file without
//! `config.json` is read as a ViT-B/16 at 224 unless its shapes say otherwise: widths, depth,
//! patch and image size then come from the shapes). The classes come from `classifier.weight`.
//! `--arch-option heads=N` overrides the heads. Inputs must have the configured size (no
//! position-embedding interpolation).

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::hf_config::{key_name, HfConfig};
use super::layers::{
    first_token, linear, linear_specs, tokens_linear, Conv, ConvShape, SelfAttention,
};
use super::text_layers::Activation;
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// The registry entry.
pub struct HfVitFamily;

/// The class `config.json`'s `architectures` names.
const ARCHITECTURE: &str = "ViTForImageClassification";

impl Family for HfVitFamily {
    fn name(&self) -> &'static str {
        "hf_vit"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face ViTForImageClassification, from the model directory's config.json"
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[(
            "heads",
            "attention heads (default: config.json's num_attention_heads)",
        )]
    }

    fn detect(&self, layout: &Layout) -> bool {
        let Ok(config) = HfConfig::optional(layout) else {
            return false;
        };
        if config.present() {
            config.architectures().contains(&ARCHITECTURE)
        } else {
            layout.has("vit.embeddings.patch_embeddings.projection.weight")
                && layout.has("classifier.weight")
        }
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(HfVitConfig::read(layout, options)?))
    }
}

/// A `ViTForImageClassification`'s configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct HfVitConfig {
    /// Input channels.
    pub channels: usize,
    /// Patch size.
    pub patch: usize,
    /// Image height and width.
    pub image: [usize; 2],
    /// Encoder layers.
    pub layers: usize,
    /// Token width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Attention heads.
    pub heads: usize,
    /// The MLP's activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// Whether the query, key and value projections have biases.
    pub qkv_bias: bool,
    /// Output classes.
    pub classes: usize,
}

const PROJECTION: &str = "vit.embeddings.patch_embeddings.projection.weight";

impl HfVitConfig {
    /// Reads the configuration from `config.json` (or the shapes, without one) and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<Self, ConfigError> {
        let c = HfConfig::optional(layout)?;
        let layer0 = "vit.encoder.layer.0";
        // Without config.json, the shapes stand in for what config.json would say.
        let (hidden, channels, patch, layers, intermediate, qkv_bias, image) = if c.present() {
            let patch = c.square_or("patch_size", 16)?;
            (
                c.positive_or("hidden_size", 768)?,
                c.positive_or("num_channels", 3)?,
                patch,
                c.positive_or("num_hidden_layers", 12)?,
                c.positive_or("intermediate_size", 3072)?,
                c.bool_or("qkv_bias", true)?,
                c.size_or("image_size", 224)?,
            )
        } else {
            let proj = layout.require(PROJECTION, 4)?;
            if proj[2] != proj[3] {
                return Err(ConfigError::new(PROJECTION, "has a non-square patch"));
            }
            let tokens =
                layout.require("vit.embeddings.position_embeddings", 3)?[1].saturating_sub(1);
            let side = (tokens as f64).sqrt().round() as usize;
            if side * side != tokens || side == 0 {
                return Err(ConfigError::new(
                    "vit.embeddings.position_embeddings",
                    "has no square number of patches; add the model's config.json",
                ));
            }
            (
                proj[0],
                proj[1],
                proj[2],
                layout.count("vit.encoder.layer.", 0, ".layernorm_before.weight"),
                layout.require(&format!("{layer0}.intermediate.dense.weight"), 2)?[0],
                layout.has(&format!("{layer0}.attention.attention.query.bias")),
                [side * proj[2]; 2],
            )
        };
        if image[0] % patch != 0 || image[1] % patch != 0 {
            return Err(ConfigError::new(
                key_name("image_size"),
                format!("is {image:?}, which the patch size {patch} does not divide"),
            ));
        }
        let heads = match options.positive("heads")? {
            Some(h) => h,
            None if c.present() => c.positive_or("num_attention_heads", 12)?,
            None => (hidden / 64).max(1),
        };
        if hidden % heads != 0 {
            return Err(ConfigError::new(
                key_name("num_attention_heads"),
                format!("is {heads}, which does not divide hidden_size {hidden}"),
            ));
        }
        let act = Activation::read(&c, "hidden_act", "gelu")?;
        let classes = layout.require("classifier.weight", 2)?[0];
        Ok(HfVitConfig {
            channels,
            patch,
            image,
            layers,
            hidden,
            intermediate,
            heads,
            act,
            eps: c.non_negative_or("layer_norm_eps", 1e-12)?,
            qkv_bias,
            classes,
        })
    }

    fn tokens(&self) -> usize {
        (self.image[0] / self.patch) * (self.image[1] / self.patch) + 1
    }

    fn projection(&self) -> ConvShape {
        ConvShape {
            padding: 0,
            bias: true,
            ..ConvShape::same(self.channels, self.hidden, self.patch, self.patch)
        }
    }
}

impl Architecture for HfVitConfig {
    fn family(&self) -> &'static str {
        "hf_vit"
    }

    fn describe(&self) -> String {
        format!(
            "hf_vit (patch {}, image {}x{}, {} layers, hidden {}, intermediate {}, {} heads, {} classes)",
            self.patch,
            self.image[0],
            self.image[1],
            self.layers,
            self.hidden,
            self.intermediate,
            self.heads,
            self.classes
        )
    }

    fn input(&self) -> Input {
        InputShape {
            channels: self.channels,
            size: Some(self.image),
            min: 1,
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.hidden;
        let mut out = vec![
            TensorSpec::float("vit.embeddings.cls_token", &[1, 1, h]),
            TensorSpec::float("vit.embeddings.position_embeddings", &[1, self.tokens(), h]),
        ];
        self.projection()
            .specs("vit.embeddings.patch_embeddings.projection", &mut out);
        for i in 0..self.layers {
            let p = format!("vit.encoder.layer.{i}");
            for ln in ["layernorm_before", "layernorm_after"] {
                out.push(TensorSpec::float(&format!("{p}.{ln}.weight"), &[h]));
                out.push(TensorSpec::float(&format!("{p}.{ln}.bias"), &[h]));
            }
            for qkv in ["query", "key", "value"] {
                let at = format!("{p}.attention.attention.{qkv}");
                out.push(TensorSpec::float(&format!("{at}.weight"), &[h, h]));
                if self.qkv_bias {
                    out.push(TensorSpec::float(&format!("{at}.bias"), &[h]));
                }
            }
            linear_specs(&format!("{p}.attention.output.dense"), h, h, &mut out);
            linear_specs(
                &format!("{p}.intermediate.dense"),
                h,
                self.intermediate,
                &mut out,
            );
            linear_specs(&format!("{p}.output.dense"), self.intermediate, h, &mut out);
        }
        out.push(TensorSpec::float("vit.layernorm.weight", &[h]));
        out.push(TensorSpec::float("vit.layernorm.bias", &[h]));
        linear_specs("classifier", h, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let h = self.hidden;
        let v = vb.pp("vit");
        let e = v.pp("embeddings");
        let mut layers = Vec::with_capacity(self.layers);
        for i in 0..self.layers {
            let l = v.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention.attention");
            let weights = ["query", "key", "value"]
                .iter()
                .map(|n| a.get((h, h), &format!("{n}.weight")))
                .collect::<Result<Vec<_>>>()?;
            let bias = if self.qkv_bias {
                let b = ["query", "key", "value"]
                    .iter()
                    .map(|n| a.get(h, &format!("{n}.bias")))
                    .collect::<Result<Vec<_>>>()?;
                Some(Tensor::cat(&b, 0)?)
            } else {
                None
            };
            layers.push(Layer {
                before: candle_nn::layer_norm(h, self.eps, l.pp("layernorm_before"))?,
                attention: SelfAttention::new(
                    Tensor::cat(&weights, 0)?,
                    bias,
                    linear(h, h, l.pp("attention.output.dense"))?,
                    self.heads,
                )?,
                after: candle_nn::layer_norm(h, self.eps, l.pp("layernorm_after"))?,
                up: linear(h, self.intermediate, l.pp("intermediate.dense"))?,
                down: linear(self.intermediate, h, l.pp("output.dense"))?,
                act: self.act,
            });
        }
        Ok(Box::new(HfVit {
            projection: self
                .projection()
                .build(e.pp("patch_embeddings.projection"))?,
            cls: e.get((1, 1, h), "cls_token")?,
            positions: e.get((1, self.tokens(), h), "position_embeddings")?,
            layers,
            norm: candle_nn::layer_norm(h, self.eps, v.pp("layernorm"))?,
            classifier: linear(h, self.classes, vb.pp("classifier"))?,
        }))
    }
}

/// One pre-norm encoder layer.
struct Layer {
    before: LayerNorm,
    attention: SelfAttention,
    after: LayerNorm,
    up: Linear,
    down: Linear,
    act: Activation,
}

impl Layer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (self.attention.forward(&x.apply(&self.before)?)? + x)?;
        let y = tokens_linear(&x.apply(&self.after)?, &self.up)?;
        let y = tokens_linear(&self.act.apply(&y)?, &self.down)?;
        y + x
    }
}

struct HfVit {
    projection: Conv,
    cls: Tensor,
    positions: Tensor,
    layers: Vec<Layer>,
    norm: LayerNorm,
    classifier: Linear,
}

impl Model for HfVit {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let n = x.dim(0)?;
        let patches = x
            .apply(&self.projection)?
            .flatten_from(2)?
            .transpose(1, 2)?;
        let w = patches.dim(2)?;
        let cls = self.cls.broadcast_as((n, 1, w))?;
        let mut x = Tensor::cat(&[&cls, &patches], 1)?.broadcast_add(&self.positions)?;
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        // LayerNorm is per token, so only the class token needs it.
        first_token(&x)?.apply(&self.norm)?.apply(&self.classifier)
    }
}
