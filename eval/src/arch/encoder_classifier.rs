//! The sequence classifier every BERT-style family here is: the shared encoder, then a head on the first token (a square dense layer, an activation, the projection to the classes) under each family's tensor names.
//!
//! The families (`bert.rs`, `roberta.rs`, `distilbert.rs`) only read their configuration and
//! name their head; building, checking and running are here.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::encoder::{Encoder, EncoderConfig};
use super::layers::first_token;
use super::text_layers::{linear, linear_specs, Activation};
use super::{Architecture, Batch, Input, Model, Output, TensorSpec, TokenInput};

/// Where a family keeps its head, and what it applies between the two layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstTokenHead {
    /// The square dense layer on the first token's hidden state (`bert.pooler.dense`).
    pub dense: &'static str,
    /// What follows it: tanh for BERT's pooler and RoBERTa, ReLU for DistilBERT.
    pub activation: Activation,
    /// The projection to the classes (`classifier`).
    pub out: &'static str,
}

/// A configured encoder classifier.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderClassifier {
    /// The family's `--arch` name.
    pub family: &'static str,
    /// What reports call it, with its settings.
    pub description: String,
    /// The encoder body.
    pub encoder: EncoderConfig,
    /// The head on the first token.
    pub head: FirstTokenHead,
    /// Output classes.
    pub classes: usize,
    /// Whether the model reads a pair's segment ids (BERT's token type embedding); other
    /// families treat every token as segment 0, as transformers does when it passes none.
    pub segments: bool,
    /// Tensors accepted and never read (a pooler RoBERTa's head doesn't use), with shapes.
    pub ignored: Vec<(String, Vec<usize>)>,
}

impl Architecture for EncoderClassifier {
    fn family(&self) -> &'static str {
        self.family
    }

    fn describe(&self) -> String {
        self.description.clone()
    }

    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: self.encoder.vocab,
            max_positions: Some(self.encoder.max_positions()),
            trained_positions: None,
            pad_token_id: self.encoder.pad_token_id,
            segments: match (self.segments, self.encoder.token_types) {
                (true, Some(types)) => types,
                _ => 1,
            },
        })
    }

    fn output(&self) -> Output {
        Output::Classes(self.classes)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let h = self.encoder.hidden;
        let mut out = Vec::new();
        self.encoder.specs(&mut out);
        linear_specs(self.head.dense, h, h, true, &mut out);
        linear_specs(self.head.out, h, self.classes, true, &mut out);
        for (name, shape) in &self.ignored {
            out.push(TensorSpec::float(name, shape));
        }
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let h = self.encoder.hidden;
        Ok(Box::new(Classifier {
            encoder: self.encoder.build(&vb)?,
            dense: linear(h, h, true, vb.pp(self.head.dense))?,
            activation: self.head.activation,
            out: linear(h, self.classes, true, vb.pp(self.head.out))?,
            segments: self.segments,
        }))
    }
}

struct Classifier {
    encoder: Encoder,
    dense: Linear,
    activation: Activation,
    out: Linear,
    segments: bool,
}

impl Model for Classifier {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let segments = batch.token_type_ids.filter(|_| self.segments);
        let x = self
            .encoder
            .forward(batch.inputs, batch.attention_mask, segments)?;
        let first = first_token(&x)?;
        self.out
            .forward(&self.activation.apply(&self.dense.forward(&first)?)?)
    }
}
