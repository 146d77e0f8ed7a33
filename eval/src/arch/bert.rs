//! BERT sequence classifiers (`BertForSequenceClassification`): the shared encoder, then the pooler (tanh of a dense layer on the first token) and `classifier`.
//!
//! Reference: Devlin et al. 2019, "BERT"; transformers' `modeling_bert.py`.

use std::sync::Arc;

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::encoder::{classes, Encoder, EncoderConfig};
use super::hf_config::{detect, HfConfig};
use super::text_layers::{linear, linear_specs};
use super::{
    Architecture, Batch, ConfigError, Family, Input, Layout, Model, Options, Output, TensorSpec,
    TokenInput,
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
        Ok(Arc::new(BertClassifier { encoder, classes }))
    }
}

/// A configured BERT classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct BertClassifier {
    /// The encoder body.
    pub encoder: EncoderConfig,
    /// Output classes.
    pub classes: usize,
}

impl Architecture for BertClassifier {
    fn family(&self) -> &'static str {
        "bert"
    }

    fn describe(&self) -> String {
        let e = &self.encoder;
        format!(
            "bert ({} layers, hidden {}, {} heads, mlp {}, vocab {}, {} classes)",
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
        linear_specs("bert.pooler.dense", h, h, true, &mut out);
        linear_specs("classifier", h, self.classes, true, &mut out);
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let h = self.encoder.hidden;
        Ok(Box::new(Bert {
            encoder: self.encoder.build(&vb)?,
            pooler: linear(h, h, true, vb.pp("bert.pooler.dense"))?,
            classifier: linear(h, self.classes, true, vb.pp("classifier"))?,
        }))
    }
}

struct Bert {
    encoder: Encoder,
    pooler: Linear,
    classifier: Linear,
}

impl Bert {
    fn classify(&self, batch: &Batch) -> Result<Tensor> {
        let x = self
            .encoder
            .forward(batch.inputs, batch.attention_mask, batch.token_type_ids)?;
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.classifier
            .forward(&self.pooler.forward(&first)?.tanh()?)
    }
}

impl Model for Bert {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        self.classify(batch)
    }
}
