//! The post-norm transformer encoder that BERT, RoBERTa, XLM-RoBERTa and DistilBERT share: embeddings (word + position + token type, LayerNorm) and layers of self-attention over the real tokens and an MLP, each followed by a residual LayerNorm.
//!
//! Reference: Devlin et al. 2019, "BERT"; transformers' `modeling_bert.py`,
//! `modeling_roberta.py` and `modeling_distilbert.py`. The families differ only in tensor
//! names ([`LayerNames`]), in how position ids are made ([`Positions`]) and in the
//! classification head, which each family file adds on top of [`Encoder::forward`]'s hidden
//! states.
//!
//! Padded keys (attention mask 0) are masked for every query, so the real positions don't
//! depend on the padding. Token type (segment) ids are optional: without them every token is
//! type 0, as when transformers is called without `token_type_ids`.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::hf_config::{key_name, HfConfig};
use super::text_layers::{
    attend, check_ids, layer_norm_specs, linear, linear_specs, mask_or_ones, padding_mask,
    split_heads, Activation, LayerNorm,
};
use super::{ConfigError, Layout, TensorSpec};

/// The names of one encoder layer's tensors, relative to the layer's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerNames {
    /// Query projection.
    pub query: &'static str,
    /// Key projection.
    pub key: &'static str,
    /// Value projection.
    pub value: &'static str,
    /// Attention output projection.
    pub attention_out: &'static str,
    /// LayerNorm after the attention's residual.
    pub attention_norm: &'static str,
    /// First MLP projection (hidden → intermediate).
    pub up: &'static str,
    /// Second MLP projection (intermediate → hidden).
    pub down: &'static str,
    /// LayerNorm after the MLP's residual.
    pub output_norm: &'static str,
}

/// BERT's and RoBERTa's layer names (`encoder.layer.{i}.…`).
pub const BERT_NAMES: LayerNames = LayerNames {
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_out: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    up: "intermediate.dense",
    down: "output.dense",
    output_norm: "output.LayerNorm",
};

/// DistilBERT's layer names (`transformer.layer.{i}.…`).
pub const DISTILBERT_NAMES: LayerNames = LayerNames {
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_out: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    up: "ffn.lin1",
    down: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// How position ids are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Positions {
    /// 0, 1, 2, … (BERT, DistilBERT).
    Absolute,
    /// RoBERTa's: padding tokens (id = the padding index) take position `padding_idx`, the
    /// others count up from `padding_idx + 1`, computed from the ids as transformers'
    /// `create_position_ids_from_input_ids` does.
    AfterPadding(u32),
}

/// A configured encoder body.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Prefix of the embeddings (`bert.embeddings`).
    pub embeddings: String,
    /// Prefix of the layers, without the index (`bert.encoder.layer`).
    pub layer_prefix: String,
    /// The layers' tensor names.
    pub names: LayerNames,
    /// Embedding rows.
    pub vocab: usize,
    /// Hidden width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Rows of the position embedding.
    pub position_rows: usize,
    /// Rows of the token type embedding, when the model has one.
    pub token_types: Option<usize>,
    /// How position ids are made.
    pub positions: Positions,
    /// Integer buffers a checkpoint may hold (`embeddings.position_ids`), with their shapes.
    pub buffers: Vec<(String, Vec<usize>)>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
}

impl EncoderConfig {
    /// Reads a BERT-style body (`{prefix}.embeddings`, `{prefix}.encoder.layer.{i}`) from
    /// `layout`'s shapes and `config`; `roberta` for RoBERTa's positions and padding default (1).
    pub fn read_bert(
        layout: &Layout,
        config: &HfConfig,
        prefix: &str,
        roberta: bool,
    ) -> std::result::Result<EncoderConfig, ConfigError> {
        config.refuse_unless(
            "position_embedding_type",
            &[serde_json::Value::from("absolute")],
            "only absolute position embeddings are implemented",
        )?;
        config.refuse_unless(
            "is_decoder",
            &[serde_json::Value::Bool(false)],
            "a sequence classifier is an encoder; a decoder's causal attention is not implemented",
        )?;
        let e = format!("{prefix}.embeddings");
        let word = format!("{e}.word_embeddings.weight");
        let shape = layout.require(&word, 2)?;
        let (vocab, hidden) = (shape[0], shape[1]);
        config.agrees("vocab_size", vocab, &word)?;
        config.agrees("hidden_size", hidden, &word)?;
        let position = format!("{e}.position_embeddings.weight");
        let position_rows = layout.require(&position, 2)?[0];
        config.agrees("max_position_embeddings", position_rows, &position)?;
        let types = format!("{e}.token_type_embeddings.weight");
        let token_types = layout.require(&types, 2)?[0];
        config.agrees("type_vocab_size", token_types, &types)?;
        let layer_prefix = format!("{prefix}.encoder.layer");
        let layers = count_layers(layout, config, &layer_prefix, BERT_NAMES)?;
        let up = format!("{layer_prefix}.0.{}.weight", BERT_NAMES.up);
        let intermediate = layout.require(&up, 2)?[0];
        config.agrees("intermediate_size", intermediate, &up)?;
        let heads = heads(config, "num_attention_heads", hidden)?;
        // RoBERTa's positions count from its padding id, so a negative one (which would
        // shift them) stays an error there.
        let pad = if roberta {
            config.token_id("pad_token_id")?
        } else {
            config.pad_token_id()?
        };
        let pad_token_id = match pad {
            Some(p) => Some(p),
            None if roberta => Some(1),
            None => Some(0),
        };
        let positions = if roberta {
            let pad = pad_token_id.unwrap_or(1);
            if (pad as usize) + 1 >= position_rows {
                return Err(ConfigError::new(
                    key_name("pad_token_id"),
                    format!("is {pad}, but RoBERTa's positions start after it and {position} has only {position_rows} rows"),
                ));
            }
            Positions::AfterPadding(pad)
        } else {
            Positions::Absolute
        };
        let buffers = ["position_ids", "token_type_ids"]
            .iter()
            .map(|b| (format!("{e}.{b}"), vec![1, position_rows]))
            .collect();
        Ok(EncoderConfig {
            embeddings: e,
            layer_prefix,
            names: BERT_NAMES,
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            eps: config.positive_number_or("layer_norm_eps", 1e-12)?,
            activation: Activation::read(config, "hidden_act", "gelu")?,
            position_rows,
            token_types: Some(token_types),
            positions,
            buffers,
            pad_token_id,
        })
    }

    /// The longest sequence the position embedding covers.
    pub fn max_positions(&self) -> usize {
        match self.positions {
            Positions::Absolute => self.position_rows,
            Positions::AfterPadding(pad) => self.position_rows - pad as usize - 1,
        }
    }

    /// Every tensor of the body.
    pub fn specs(&self, out: &mut Vec<TensorSpec>) {
        let (h, e) = (self.hidden, &self.embeddings);
        out.push(TensorSpec::float(
            &format!("{e}.word_embeddings.weight"),
            &[self.vocab, h],
        ));
        out.push(TensorSpec::float(
            &format!("{e}.position_embeddings.weight"),
            &[self.position_rows, h],
        ));
        if let Some(t) = self.token_types {
            out.push(TensorSpec::float(
                &format!("{e}.token_type_embeddings.weight"),
                &[t, h],
            ));
        }
        layer_norm_specs(&format!("{e}.LayerNorm"), h, out);
        for (name, shape) in &self.buffers {
            out.push(TensorSpec::buffer(name, shape));
        }
        let n = self.names;
        for i in 0..self.layers {
            let p = format!("{}.{i}", self.layer_prefix);
            for proj in [n.query, n.key, n.value, n.attention_out] {
                linear_specs(&format!("{p}.{proj}"), h, h, true, out);
            }
            layer_norm_specs(&format!("{p}.{}", n.attention_norm), h, out);
            linear_specs(&format!("{p}.{}", n.up), h, self.intermediate, true, out);
            linear_specs(&format!("{p}.{}", n.down), self.intermediate, h, true, out);
            layer_norm_specs(&format!("{p}.{}", n.output_norm), h, out);
        }
    }

    /// Builds the body from the root `vb`.
    pub fn build(&self, vb: &VarBuilder) -> Result<Encoder> {
        let (h, i) = (self.hidden, self.intermediate);
        let e = vb.pp(&self.embeddings);
        let n = self.names;
        let mut layers = Vec::with_capacity(self.layers);
        for l in 0..self.layers {
            let p = vb.pp(format!("{}.{l}", self.layer_prefix));
            layers.push(EncoderLayer {
                query: linear(h, h, true, p.pp(n.query))?,
                key: linear(h, h, true, p.pp(n.key))?,
                value: linear(h, h, true, p.pp(n.value))?,
                attention_out: linear(h, h, true, p.pp(n.attention_out))?,
                attention_norm: LayerNorm::load(h, self.eps, p.pp(n.attention_norm))?,
                up: linear(h, i, true, p.pp(n.up))?,
                down: linear(i, h, true, p.pp(n.down))?,
                output_norm: LayerNorm::load(h, self.eps, p.pp(n.output_norm))?,
            });
        }
        Ok(Encoder {
            config: self.clone(),
            word: e.get((self.vocab, h), "word_embeddings.weight")?,
            position: e.get((self.position_rows, h), "position_embeddings.weight")?,
            token_type: match self.token_types {
                Some(t) => Some(e.get((t, h), "token_type_embeddings.weight")?),
                None => None,
            },
            norm: LayerNorm::load(h, self.eps, e.pp("LayerNorm"))?,
            layers,
        })
    }
}

/// Counts the layers from the shapes and checks the count against `num_hidden_layers` (or
/// DistilBERT's `n_layers`).
pub fn count_layers(
    layout: &Layout,
    config: &HfConfig,
    layer_prefix: &str,
    names: LayerNames,
) -> std::result::Result<usize, ConfigError> {
    let suffix = format!(".{}.weight", names.query);
    let layers = layout.count(&format!("{layer_prefix}."), 0, &suffix);
    if layers == 0 {
        return Err(ConfigError::new(
            format!("{layer_prefix}.0{suffix}"),
            "is missing",
        ));
    }
    for key in ["num_hidden_layers", "n_layers"] {
        config.agrees(key, layers, &format!("{layer_prefix}.N{suffix}"))?;
    }
    Ok(layers)
}

/// The number of heads `config` gives under `key`, which must divide `hidden`.
pub fn heads(
    config: &HfConfig,
    key: &str,
    hidden: usize,
) -> std::result::Result<usize, ConfigError> {
    let heads = config.positive(key)?;
    if !hidden.is_multiple_of(heads) {
        return Err(ConfigError::new(
            key_name(key),
            format!("is {heads}, which does not divide the hidden width {hidden}"),
        ));
    }
    Ok(heads)
}

/// The number of classes of a classifier whose last layer is `tensor` [classes, hidden],
/// checked against `config.json`'s `id2label`.
pub fn classes(
    layout: &Layout,
    config: &HfConfig,
    tensor: &str,
) -> std::result::Result<usize, ConfigError> {
    let classes = layout.require(tensor, 2)?[0];
    if let Some(serde_json::Value::Object(labels)) = config.get("id2label") {
        if labels.len() != classes {
            return Err(ConfigError::new(
                key_name("id2label"),
                format!(
                    "names {} labels, but tensor '{tensor}' has {classes} rows; config.json and the weights disagree",
                    labels.len()
                ),
            ));
        }
    }
    Ok(classes)
}

struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    up: Linear,
    down: Linear,
    output_norm: LayerNorm,
}

/// A built encoder body.
pub struct Encoder {
    config: EncoderConfig,
    word: Tensor,
    position: Tensor,
    /// The token type embedding, when the model has one.
    token_type: Option<Tensor>,
    norm: LayerNorm,
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Hidden states [B, T, hidden] for ids [B, T] (U32), an optional attention mask and
    /// optional token type ids (U32 [B, T]; all 0 when absent).
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: Option<&Tensor>,
        token_types: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        check_ids(ids, c.vocab)?;
        let (b, t) = ids.dims2()?;
        if t > c.max_positions() {
            candle_core::bail!(
                "a sequence of {t} tokens is longer than the model's {} positions; truncate it (--max-length)",
                c.max_positions()
            );
        }
        let position_ids = match c.positions {
            Positions::Absolute => Tensor::arange(0u32, t as u32, ids.device())?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?,
            Positions::AfterPadding(pad) => {
                let real = ids.ne(pad)?.to_dtype(DType::F32)?;
                // Exact in f32: counts below 2^24.
                ((real.cumsum(1)? * &real)? + pad as f64)?.to_dtype(DType::U32)?
            }
        };
        // transformers' order: word + token type, then + position.
        let mut x = self.word.index_select(&ids.flatten_all()?, 0)?;
        match (&self.token_type, token_types) {
            (Some(table), Some(types)) => {
                if types.dims() != ids.dims() {
                    candle_core::bail!(
                        "the token type ids have shape {:?}, but the token ids have {:?}",
                        types.dims(),
                        ids.dims()
                    );
                }
                check_ids(&types.to_dtype(DType::U32)?, table.dim(0)?).map_err(|_| {
                    candle_core::Error::Msg(format!(
                        "a token type id is outside the model's {} types (type_vocab_size)",
                        table.dim(0).unwrap_or(0)
                    ))
                })?;
                let types = types.to_dtype(DType::U32)?.flatten_all()?;
                x = (x + table.index_select(&types, 0)?)?;
            }
            (Some(table), None) => x = x.broadcast_add(&table.narrow(0, 0, 1)?)?,
            (None, _) => {}
        }
        let x = (x + self
            .position
            .index_select(&position_ids.flatten_all()?, 0)?)?
        .reshape((b, t, c.hidden))?;
        let mut x = self.norm.forward(&x)?;
        let mask = padding_mask(&mask_or_ones(ids, attention_mask)?)?;
        let d = c.hidden / c.heads;
        for layer in &self.layers {
            let q = split_heads(&layer.query.forward(&x)?, c.heads, d)?;
            let k = split_heads(&layer.key.forward(&x)?, c.heads, d)?;
            let v = split_heads(&layer.value.forward(&x)?, c.heads, d)?;
            let y =
                attend(&q, &k, &v, &mask, (d as f64).powf(-0.5))?.apply(&layer.attention_out)?;
            x = layer.attention_norm.forward(&(y + &x)?)?;
            let y = c
                .activation
                .apply(&layer.up.forward(&x)?)?
                .apply(&layer.down)?;
            x = layer.output_norm.forward(&(y + &x)?)?;
        }
        Ok(x)
    }
}
