//! DistilBERT sequence classifiers (`DistilBertForSequenceClassification`): the shared encoder under DistilBERT's names (no token types), then `pre_classifier`, ReLU and `classifier` on the first token.
//!
//! Reference: Sanh et al. 2019, "DistilBERT, a distilled version of BERT"; transformers'
//! `modeling_distilbert.py`. Its LayerNorm epsilon is fixed at 1e-12.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::encoder::{
    classes, count_layers, heads, Encoder, EncoderConfig, Positions, DISTILBERT_NAMES,
};
use super::hf_config::{detect, HfConfig};
use super::text_layers::{linear, linear_specs, Activation};
use super::{
    Architecture, Batch, ConfigError, Family, Input, Layout, Model, Options, Output, TensorSpec,
    TokenInput,
};

/// DistilBERT's LayerNorm epsilon (not a config key).
const EPS: f64 = 1e-12;

/// The registry entry.
pub struct DistilBertFamily;

impl Family for DistilBertFamily {
    fn name(&self) -> &'static str {
        "distilbert"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face DistilBertForSequenceClassification, from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(
            layout,
            &["DistilBertForSequenceClassification"],
            &["distilbert"],
        )
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        let config = HfConfig::of(layout)?;
        let e = "distilbert.embeddings";
        let word = format!("{e}.word_embeddings.weight");
        let shape = layout.require(&word, 2)?;
        let (vocab, hidden) = (shape[0], shape[1]);
        config.agrees("vocab_size", vocab, &word)?;
        config.agrees("dim", hidden, &word)?;
        let position = format!("{e}.position_embeddings.weight");
        let position_rows = layout.require(&position, 2)?[0];
        config.agrees("max_position_embeddings", position_rows, &position)?;
        let layer_prefix = "distilbert.transformer.layer";
        let layers = count_layers(layout, &config, layer_prefix, DISTILBERT_NAMES)?;
        let up = format!("{layer_prefix}.0.{}.weight", DISTILBERT_NAMES.up);
        let intermediate = layout.require(&up, 2)?[0];
        config.agrees("hidden_dim", intermediate, &up)?;
        let encoder = EncoderConfig {
            embeddings: e.to_string(),
            layer_prefix: layer_prefix.to_string(),
            names: DISTILBERT_NAMES,
            vocab,
            hidden,
            intermediate,
            layers,
            heads: heads(&config, "n_heads", hidden)?,
            eps: EPS,
            activation: Activation::read(&config, "activation", "gelu")?,
            position_rows,
            token_types: None,
            positions: Positions::Absolute,
            buffers: vec![(format!("{e}.position_ids"), vec![1, position_rows])],
            pad_token_id: Some(config.token_id("pad_token_id")?.unwrap_or(0)),
        };
        let classes = classes(layout, &config, "classifier.weight")?;
        Ok(Arc::new(DistilBertClassifier { encoder, classes }))
    }
}

/// A configured DistilBERT classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct DistilBertClassifier {
    /// The encoder body.
    pub encoder: EncoderConfig,
    /// Output classes.
    pub classes: usize,
}

impl Architecture for DistilBertClassifier {
    fn family(&self) -> &'static str {
        "distilbert"
    }

    fn describe(&self) -> String {
        let e = &self.encoder;
        format!(
            "distilbert ({} layers, dim {}, {} heads, hidden dim {}, vocab {}, {} classes)",
            e.layers, e.hidden, e.heads, e.intermediate, e.vocab, self.classes
        )
    }

    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: self.encoder.vocab,
            max_positions: Some(self.encoder.max_positions()),
            pad_token_id: self.encoder.pad_token_id,
        })
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.encoder.hidden;
        let mut out = Vec::new();
        self.encoder.specs(&mut out);
        linear_specs("pre_classifier", h, h, true, &mut out);
        linear_specs("classifier", h, self.classes, true, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let h = self.encoder.hidden;
        Ok(Box::new(DistilBert {
            encoder: self.encoder.build(&vb)?,
            pre_classifier: linear(h, h, true, vb.pp("pre_classifier"))?,
            classifier: linear(h, self.classes, true, vb.pp("classifier"))?,
        }))
    }
}

struct DistilBert {
    encoder: Encoder,
    pre_classifier: Linear,
    classifier: Linear,
}

impl Model for DistilBert {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = self
            .encoder
            .forward(batch.inputs, batch.attention_mask, None)?;
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.classifier
            .forward(&self.pre_classifier.forward(&first)?.relu()?)
    }
}
