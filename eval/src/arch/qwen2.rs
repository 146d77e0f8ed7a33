//! Qwen2 causal LMs (`Qwen2ForCausalLM`): the shared decoder with biased q/k/v projections and Qwen's per-layer sliding windows.
//!
//! Reference: Yang et al. 2024, "Qwen2 Technical Report"; transformers' `modeling_qwen2.py`.

use std::sync::Arc;

use super::decoder::{Bias, Decoder, Style, Windows};
use super::hf_config::detect;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// The registry entry.
pub struct Qwen2Family;

const QWEN2: Style = Style {
    family: "qwen2",
    qkv_bias: Bias::Yes,
    o_bias: Bias::No,
    mlp_bias: Bias::No,
    windows: Windows::PerLayer,
    ..Style::LLAMA
};

impl Family for Qwen2Family {
    fn name(&self) -> &'static str {
        "qwen2"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face Qwen2ForCausalLM, from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, &["Qwen2ForCausalLM"], &["qwen2"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Decoder::read(layout, &QWEN2)?.into_arch())
    }
}
