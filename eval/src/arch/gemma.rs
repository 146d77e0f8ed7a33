//! Gemma (v1) causal LMs (`GemmaForCausalLM`): the shared decoder with (1 + weight) RMSNorms, embeddings scaled by sqrt(hidden), a tanh-GELU MLP and a tied head.
//!
//! Reference: Gemma Team 2024, "Gemma: Open Models Based on Gemini Research and Technology";
//! transformers' `modeling_gemma.py`. Gemma 2's logit soft-capping and extra norms are not
//! implemented: its `model_type` is not detected, and soft-capping keys are refused.

use std::sync::Arc;

use super::decoder::{Bias, Decoder, Style};
use super::hf_config::detect;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// The registry entry.
pub struct GemmaFamily;

const GEMMA: Style = Style {
    family: "gemma",
    gemma: true,
    mlp_bias: Bias::No,
    activation: "gelu_pytorch_tanh",
    tied: true,
    head_dim: Some(256),
    ..Style::LLAMA
};

impl Family for GemmaFamily {
    fn name(&self) -> &'static str {
        "gemma"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face GemmaForCausalLM (Gemma 1), from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, &["GemmaForCausalLM"], &["gemma"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Decoder::read(layout, &GEMMA)?.into_arch())
    }
}
