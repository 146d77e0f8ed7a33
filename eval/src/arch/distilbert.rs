//! DistilBERT sequence classifiers (`DistilBertForSequenceClassification`): the shared encoder under DistilBERT's names (no token types), then `pre_classifier`, ReLU and `classifier` on the first token.
//!
//! Reference: Sanh et al. 2019, "DistilBERT, a distilled version of BERT"; transformers'
//! `modeling_distilbert.py`. Its LayerNorm epsilon is fixed at 1e-12.

use std::sync::Arc;

use super::encoder::{classes, count_layers, heads, EncoderConfig, Positions, DISTILBERT_NAMES};
use super::encoder_classifier::{EncoderClassifier, FirstTokenHead};
use super::hf_config::{detect, HfConfig};
use super::text_layers::Activation;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// DistilBERT's head: `pre_classifier`, ReLU, then `classifier`, on the first token.
const HEAD: FirstTokenHead = FirstTokenHead {
    dense: "pre_classifier",
    activation: Activation::Relu,
    out: "classifier",
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
            pad_token_id: Some(config.pad_token_id()?.unwrap_or(0)),
        };
        let classes = classes(layout, &config, "classifier.weight")?;
        let e = &encoder;
        Ok(Arc::new(EncoderClassifier {
            family: "distilbert",
            description: format!(
                "distilbert ({} layers, dim {}, {} heads, hidden dim {}, vocab {}, {classes} classes)",
                e.layers, e.hidden, e.heads, e.intermediate, e.vocab
            ),
            encoder,
            head: HEAD,
            classes,
            segments: false,
            ignored: Vec::new(),
        }))
    }
}
