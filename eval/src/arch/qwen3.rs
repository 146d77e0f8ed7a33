//! Qwen3 causal LMs (`Qwen3ForCausalLM`): the shared decoder with an RMSNorm on each query and key head (`q_norm`, `k_norm`) before RoPE.
//!
//! Reference: Qwen team 2025, "Qwen3 Technical Report"; transformers' `modeling_qwen3.py`.

use std::sync::Arc;

use super::decoder::{Bias, Decoder, Style, Windows};
use super::hf_config::detect;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// The registry entry.
pub struct Qwen3Family;

const QWEN3: Style = Style {
    family: "qwen3",
    mlp_bias: Bias::No,
    qk_norm: true,
    windows: Windows::PerLayer,
    head_dim: Some(128),
    ..Style::LLAMA
};

impl Family for Qwen3Family {
    fn name(&self) -> &'static str {
        "qwen3"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face Qwen3ForCausalLM, from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, &["Qwen3ForCausalLM"], &["qwen3"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Decoder::read(layout, &QWEN3)?.into_arch())
    }
}
