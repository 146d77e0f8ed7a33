//! RoBERTa and XLM-RoBERTa sequence classifiers (`RobertaForSequenceClassification`, `XLMRobertaForSequenceClassification`): the shared encoder with positions counted after the padding index, then `classifier.dense`, tanh and `classifier.out_proj` on the first token.
//!
//! Reference: Liu et al. 2019, "RoBERTa"; Conneau et al. 2020, "Unsupervised Cross-lingual
//! Representation Learning at Scale"; transformers' `modeling_roberta.py` (XLM-RoBERTa is
//! the same model under other names).

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
        Ok(Arc::new(RobertaClassifier {
            encoder,
            classes,
            class: config
                .architectures()
                .first()
                .map_or("RobertaForSequenceClassification", |a| a)
                .to_string(),
            ignored: pooler,
        }))
    }
}

/// A configured RoBERTa classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct RobertaClassifier {
    /// The encoder body.
    pub encoder: EncoderConfig,
    /// Output classes.
    pub classes: usize,
    /// The transformers class (for reports).
    pub class: String,
    /// Tensors accepted and never read (an unused pooler), with their shapes.
    pub ignored: Vec<(String, Vec<usize>)>,
}

impl Architecture for RobertaClassifier {
    fn family(&self) -> &'static str {
        "roberta"
    }

    fn describe(&self) -> String {
        let e = &self.encoder;
        format!(
            "roberta ({}, {} layers, hidden {}, {} heads, mlp {}, vocab {}, {} classes)",
            self.class, e.layers, e.hidden, e.heads, e.intermediate, e.vocab, self.classes
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
        linear_specs("classifier.dense", h, h, true, &mut out);
        linear_specs("classifier.out_proj", h, self.classes, true, &mut out);
        for (name, shape) in &self.ignored {
            out.push(TensorSpec::float(name, shape));
        }
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let h = self.encoder.hidden;
        Ok(Box::new(Roberta {
            encoder: self.encoder.build(&vb)?,
            dense: linear(h, h, true, vb.pp("classifier.dense"))?,
            out_proj: linear(h, self.classes, true, vb.pp("classifier.out_proj"))?,
        }))
    }
}

struct Roberta {
    encoder: Encoder,
    dense: Linear,
    out_proj: Linear,
}

impl Model for Roberta {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let x = self
            .encoder
            .forward(batch.inputs, batch.attention_mask, None)?;
        let first = x.narrow(1, 0, 1)?.squeeze(1)?;
        self.out_proj.forward(&self.dense.forward(&first)?.tanh()?)
    }
}
