//! torchvision's Vision Transformer (`torchvision.models.vision_transformer`, `vit_b_16` naming), configured from the checkpoint's shapes.
//!
//! Reference: Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"; torchvision's
//! `VisionTransformer`, `Encoder` and `EncoderBlock`: pre-norm blocks (LayerNorm eps 1e-6,
//! `nn.MultiheadAttention` with packed `in_proj_weight`, an MLP with exact GELU), a class
//! token, learned position embeddings, a final LayerNorm and the `heads` (`heads.head`, with
//! `heads.pre_logits` and tanh when the model has a representation layer).
//!
//! Read from the shapes: patch size and width (`conv_proj`), image size (from the position
//! embedding's length: `(image / patch)^2 + 1`), depth, MLP width, representation size and
//! classes. Not in the shapes: the number of heads. It defaults to width / 64, the head
//! dimension of every torchvision variant, and `--arch-option heads=N` overrides it.

use std::sync::Arc;

use candle_core::{Result, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use super::layers::{
    first_token, linear, linear_specs, tokens_linear, Conv, ConvShape, SelfAttention,
};
use super::{
    Architecture, Batch, ConfigError, Family, Input, InputShape, Layout, Model, Options, Output,
    TensorSpec,
};

/// LayerNorm epsilon of torchvision's ViT.
const LN_EPS: f64 = 1e-6;

/// The registry entry.
pub struct VitFamily;

/// Standard variants: name, patch, layers, width, MLP width (image size 224).
const VARIANTS: &[(&str, usize, usize, usize, usize)] = &[
    ("vit_b_16", 16, 12, 768, 3072),
    ("vit_b_32", 32, 12, 768, 3072),
    ("vit_l_16", 16, 24, 1024, 4096),
    ("vit_l_32", 32, 24, 1024, 4096),
    ("vit_h_14", 14, 32, 1280, 5120),
];

impl Family for VitFamily {
    fn name(&self) -> &'static str {
        "vit"
    }

    fn summary(&self) -> &'static str {
        "torchvision Vision Transformer, any depth, width and patch size; heads = width / 64 unless --arch-option heads=N"
    }

    fn variants(&self) -> &'static [&'static str] {
        &["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"]
    }

    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[("heads", "attention heads (default: width / 64)")]
    }

    fn detect(&self, layout: &Layout) -> bool {
        layout.has("conv_proj.weight") && layout.has("encoder.pos_embedding")
    }

    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Arc::new(VitConfig::read(layout, options)?))
    }
}

/// A ViT's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VitConfig {
    /// Input channels.
    pub channels: usize,
    /// Patch size.
    pub patch: usize,
    /// Image height and width.
    pub image: usize,
    /// Encoder blocks.
    pub layers: usize,
    /// Token width.
    pub width: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Attention heads.
    pub heads: usize,
    /// Width of `heads.pre_logits`, if the model has one.
    pub representation: Option<usize>,
    /// Output classes.
    pub classes: usize,
}

impl VitConfig {
    /// Reads the configuration from the checkpoint's tensor shapes and `options`.
    pub fn read(layout: &Layout, options: &Options) -> std::result::Result<VitConfig, ConfigError> {
        let proj = layout.require("conv_proj.weight", 4)?;
        let (width, channels, patch) = (proj[0], proj[1], proj[2]);
        if proj[3] != patch {
            return Err(ConfigError::new(
                "conv_proj.weight",
                "has a non-square patch; torchvision's ViT patches are square",
            ));
        }
        let pos = layout.require("encoder.pos_embedding", 3)?;
        let tokens = pos[1].saturating_sub(1);
        let side = (tokens as f64).sqrt().round() as usize;
        if pos[0] != 1 || side * side != tokens || side == 0 {
            return Err(ConfigError::new(
                "encoder.pos_embedding",
                format!("has shape {pos:?}; it must be [1, (image / patch)^2 + 1, width]"),
            ));
        }
        let layers = layout.count("encoder.layers.encoder_layer_", 0, ".ln_1.weight");
        if layers == 0 {
            return Err(ConfigError::new(
                "encoder.layers.encoder_layer_0.ln_1.weight",
                "is missing",
            ));
        }
        let mlp = layout.require("encoder.layers.encoder_layer_0.mlp.0.weight", 2)?[0];
        let heads = match options.positive("heads")? {
            Some(h) => h,
            None => (width / 64).max(1),
        };
        if width % heads != 0 {
            return Err(ConfigError::new(
                "--arch-option heads",
                format!("{heads} heads do not divide the width {width}; pass --arch-option heads=N with N dividing {width}"),
            ));
        }
        let representation = layout.shape("heads.pre_logits.weight").map(|s| s[0]);
        let classes = layout.require("heads.head.weight", 2)?[0];
        Ok(VitConfig {
            channels,
            patch,
            image: side * patch,
            layers,
            width,
            mlp,
            heads,
            representation,
            classes,
        })
    }

    /// The torchvision builder this configuration is, at any `image_size` (its SWAG weights
    /// are `vit_b_16(image_size=384)`, say).
    fn standard(&self) -> Option<&'static str> {
        if self.representation.is_some() || self.heads * 64 != self.width {
            return None;
        }
        VARIANTS
            .iter()
            .find(|&&(_, p, l, w, m)| {
                (p, l, w, m) == (self.patch, self.layers, self.width, self.mlp)
            })
            .map(|v| v.0)
    }
}

impl Architecture for VitConfig {
    fn family(&self) -> &'static str {
        "vit"
    }

    fn describe(&self) -> String {
        match self.standard() {
            Some(v) if self.image == 224 => return v.to_string(),
            Some(v) => return format!("{v} (image {})", self.image),
            None => {}
        }
        format!(
            "vit (patch {}, image {}, {} layers, width {}, mlp {}, {} heads, {} classes)",
            self.patch, self.image, self.layers, self.width, self.mlp, self.heads, self.classes
        )
    }

    fn variant(&self) -> Option<String> {
        self.standard().map(str::to_string)
    }

    fn input(&self) -> Input {
        InputShape {
            channels: self.channels,
            size: Some([self.image, self.image]),
            min: 1,
        }
        .into()
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let w = self.width;
        let mut out = Vec::new();
        let mut proj = ConvShape::same(self.channels, w, self.patch, self.patch);
        proj.padding = 0;
        proj.bias = true;
        proj.specs("conv_proj", &mut out);
        out.push(TensorSpec::float("class_token", &[1, 1, w]));
        let tokens = (self.image / self.patch).pow(2) + 1;
        out.push(TensorSpec::float("encoder.pos_embedding", &[1, tokens, w]));
        for i in 0..self.layers {
            let p = format!("encoder.layers.encoder_layer_{i}");
            for ln in ["ln_1", "ln_2"] {
                out.push(TensorSpec::float(&format!("{p}.{ln}.weight"), &[w]));
                out.push(TensorSpec::float(&format!("{p}.{ln}.bias"), &[w]));
            }
            out.push(TensorSpec::float(
                &format!("{p}.self_attention.in_proj_weight"),
                &[3 * w, w],
            ));
            out.push(TensorSpec::float(
                &format!("{p}.self_attention.in_proj_bias"),
                &[3 * w],
            ));
            linear_specs(&format!("{p}.self_attention.out_proj"), w, w, &mut out);
            linear_specs(&format!("{p}.mlp.0"), w, self.mlp, &mut out);
            linear_specs(&format!("{p}.mlp.3"), self.mlp, w, &mut out);
        }
        out.push(TensorSpec::float("encoder.ln.weight", &[w]));
        out.push(TensorSpec::float("encoder.ln.bias", &[w]));
        let head_in = match self.representation {
            Some(r) => {
                linear_specs("heads.pre_logits", w, r, &mut out);
                r
            }
            None => w,
        };
        linear_specs("heads.head", head_in, self.classes, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let w = self.width;
        let mut proj = ConvShape::same(self.channels, w, self.patch, self.patch);
        proj.padding = 0;
        proj.bias = true;
        let tokens = (self.image / self.patch).pow(2) + 1;
        let e = vb.pp("encoder");
        let mut blocks = Vec::with_capacity(self.layers);
        for i in 0..self.layers {
            let b = e.pp(format!("layers.encoder_layer_{i}"));
            let a = b.pp("self_attention");
            blocks.push(Block {
                ln_1: candle_nn::layer_norm(w, LN_EPS, b.pp("ln_1"))?,
                attention: SelfAttention::new(
                    a.get((3 * w, w), "in_proj_weight")?,
                    Some(a.get(3 * w, "in_proj_bias")?),
                    linear(w, w, a.pp("out_proj"))?,
                    self.heads,
                )?,
                ln_2: candle_nn::layer_norm(w, LN_EPS, b.pp("ln_2"))?,
                mlp_0: linear(w, self.mlp, b.pp("mlp.0"))?,
                mlp_3: linear(self.mlp, w, b.pp("mlp.3"))?,
            });
        }
        let h = vb.pp("heads");
        let (pre_logits, head_in) = match self.representation {
            Some(r) => (Some(linear(w, r, h.pp("pre_logits"))?), r),
            None => (None, w),
        };
        Ok(Box::new(Vit {
            proj: proj.build(vb.pp("conv_proj"))?,
            class_token: vb.get((1, 1, w), "class_token")?,
            pos: e.get((1, tokens, w), "pos_embedding")?,
            blocks,
            ln: candle_nn::layer_norm(w, LN_EPS, e.pp("ln"))?,
            pre_logits,
            head: linear(head_in, self.classes, h.pp("head"))?,
        }))
    }
}

/// One pre-norm encoder block.
struct Block {
    ln_1: LayerNorm,
    attention: SelfAttention,
    ln_2: LayerNorm,
    mlp_0: Linear,
    mlp_3: Linear,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (self.attention.forward(&x.apply(&self.ln_1)?)? + x)?;
        let y = tokens_linear(&x.apply(&self.ln_2)?, &self.mlp_0)?.gelu_erf()?;
        tokens_linear(&y, &self.mlp_3)? + x
    }
}

struct Vit {
    proj: Conv,
    class_token: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
    ln: LayerNorm,
    pre_logits: Option<Linear>,
    head: Linear,
}

impl Model for Vit {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = batch.inputs;
        let n = x.dim(0)?;
        let x = x.apply(&self.proj)?.flatten_from(2)?.transpose(1, 2)?;
        let w = x.dim(D::Minus1)?;
        let cls = self.class_token.broadcast_as((n, 1, w))?;
        let mut x = Tensor::cat(&[&cls, &x], 1)?.broadcast_add(&self.pos)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        // LayerNorm is per token, so only the class token needs it.
        let x = first_token(&x)?.apply(&self.ln)?;
        let x = match &self.pre_logits {
            Some(p) => x.apply(p)?.tanh()?,
            None => x,
        };
        x.apply(&self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(patch: usize, layers: usize, width: usize, mlp: usize) -> Layout {
        let tokens = (224 / patch).pow(2) + 1;
        let mut shapes = vec![
            ("conv_proj.weight".to_string(), vec![width, 3, patch, patch]),
            ("encoder.pos_embedding".into(), vec![1, tokens, width]),
            (
                "encoder.layers.encoder_layer_0.mlp.0.weight".into(),
                vec![mlp, width],
            ),
            ("heads.head.weight".into(), vec![10, width]),
        ];
        for i in 0..layers {
            shapes.push((
                format!("encoder.layers.encoder_layer_{i}.ln_1.weight"),
                vec![width],
            ));
        }
        Layout::from_shapes(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())))
    }

    #[test]
    fn standard_variants_are_recognised_and_heads_follow_the_convention() {
        for &(name, patch, layers, width, mlp) in VARIANTS {
            let config =
                VitConfig::read(&layout(patch, layers, width, mlp), &Options::default()).unwrap();
            assert_eq!(config.variant().as_deref(), Some(name));
            assert_eq!(config.heads, width / 64);
            assert_eq!(config.image, 224);
        }
        // Other heads than the convention: a valid model, but not the standard variant.
        let twelve = Options::parse(&["heads=8".into()]).unwrap();
        let config = VitConfig::read(&layout(16, 12, 768, 3072), &twelve).unwrap();
        assert_eq!(config.variant(), None);
        // torchvision's vit_b_16(image_size=384) (the SWAG weights): the same builder.
        let mut l = layout(16, 12, 768, 3072);
        l.shapes
            .insert("encoder.pos_embedding".into(), vec![1, 24 * 24 + 1, 768]);
        let config = VitConfig::read(&l, &Options::default()).unwrap();
        assert_eq!(config.variant().as_deref(), Some("vit_b_16"));
        assert_eq!(config.describe(), "vit_b_16 (image 384)");
    }

    #[test]
    fn a_position_embedding_of_no_square_grid_is_refused() {
        let mut l = layout(16, 2, 64, 128);
        l.shapes
            .insert("encoder.pos_embedding".into(), vec![1, 51, 64]);
        let err = VitConfig::read(&l, &Options::default()).unwrap_err();
        assert_eq!(err.tensor, "encoder.pos_embedding");
    }
}
