//! RoBERTa and XLM-RoBERTa sequence classifiers (`RobertaForSequenceClassification`, `XLMRobertaForSequenceClassification`): the shared encoder with positions counted after the padding index, then `classifier.dense`, tanh and `classifier.out_proj` on the first token.
//!
//! Reference: Liu et al. 2019, "RoBERTa"; Conneau et al. 2020, "Unsupervised Cross-lingual
//! Representation Learning at Scale"; transformers' `modeling_roberta.py` (XLM-RoBERTa is
//! the same model under other names).

use std::sync::Arc;

use super::encoder::{classes, EncoderConfig};
use super::encoder_classifier::{EncoderClassifier, FirstTokenHead};
use super::hf_config::{detect, HfConfig};
use super::text_layers::Activation;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// RoBERTa's head: `classifier.dense`, tanh, then `classifier.out_proj`, on the first token.
const HEAD: FirstTokenHead = FirstTokenHead {
    dense: "classifier.dense",
    activation: Activation::Tanh,
    out: "classifier.out_proj",
};

/// The registry entry.
pub struct RobertaFamily;

impl Family for RobertaFamily {
    fn name(&self) -> &'static str {
        "roberta"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face RobertaForSequenceClassification and XLMRobertaForSequenceClassification, from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(
            layout,
            &[
                "RobertaForSequenceClassification",
                "XLMRobertaForSequenceClassification",
            ],
            &["roberta", "xlm-roberta"],
        )
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError> {
        let config = HfConfig::of(layout)?;
        let encoder = EncoderConfig::read_bert(layout, &config, "roberta", true)?;
        let classes = classes(layout, &config, "classifier.out_proj.weight")?;
        // RobertaForSequenceClassification has no pooler; transformers ignores one that an
        // older checkpoint still carries, and so does this model.
        let pooler = ["roberta.pooler.dense.weight", "roberta.pooler.dense.bias"]
            .iter()
            .filter_map(|n| layout.shape(n).map(|s| (n.to_string(), s.to_vec())))
            .collect();
        let class = config
            .architectures()
            .first()
            .map_or("RobertaForSequenceClassification", |a| a)
            .to_string();
        let e = &encoder;
        Ok(Arc::new(EncoderClassifier {
            family: "roberta",
            description: format!(
                "roberta ({class}, {} layers, hidden {}, {} heads, mlp {}, vocab {}, {classes} classes)",
                e.layers, e.hidden, e.heads, e.intermediate, e.vocab
            ),
            encoder,
            head: HEAD,
            classes,
            // transformers adds the token type rows for ids it is given; a tokenizer gives
            // RoBERTa only 0s, which are the same as none.
            segments: true,
            ignored: pooler,
        }))
    }
}
