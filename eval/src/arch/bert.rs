//! BERT sequence classifiers (`BertForSequenceClassification`): the shared encoder, then the pooler (tanh of a dense layer on the first token) and `classifier`.
//!
//! Reference: Devlin et al. 2019, "BERT"; transformers' `modeling_bert.py`.

use std::sync::Arc;

use super::encoder::{classes, EncoderConfig};
use super::encoder_classifier::{EncoderClassifier, FirstTokenHead};
use super::hf_config::{detect, HfConfig};
use super::text_layers::Activation;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// BERT's head: the pooler (tanh of a dense layer on the first token), then `classifier`.
const HEAD: FirstTokenHead = FirstTokenHead {
    dense: "bert.pooler.dense",
    activation: Activation::Tanh,
    out: "classifier",
};

/// The registry entry.
pub struct BertFamily;

impl Family for BertFamily {
    fn name(&self) -> &'static str {
        "bert"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face BertForSequenceClassification, from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, &["BertForSequenceClassification"], &["bert"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        let config = HfConfig::of(layout)?;
        let encoder = EncoderConfig::read_bert(layout, &config, "bert", false)?;
        let classes = classes(layout, &config, "classifier.weight")?;
        let e = &encoder;
        Ok(Arc::new(EncoderClassifier {
            family: "bert",
            description: format!(
                "bert ({} layers, hidden {}, {} heads, mlp {}, vocab {}, {classes} classes)",
                e.layers, e.hidden, e.heads, e.intermediate, e.vocab
            ),
            encoder,
            head: HEAD,
            classes,
            segments: true,
            ignored: Vec::new(),
        }))
    }
}
