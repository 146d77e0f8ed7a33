//! Phi-3 causal LMs (`Phi3ForCausalLM`): the shared decoder with fused `qkv_proj` and `gate_up_proj`, partial rotary embeddings and an optional sliding window.
//!
//! Reference: Abdin et al. 2024, "Phi-3 Technical Report"; transformers' `modeling_phi3.py`.
//! Phi-3's long-context rope scaling (`longrope`) is not implemented: such a config is an
//! error naming `rope_scaling` / `rope_parameters`.

use std::sync::Arc;

use super::decoder::{Bias, Decoder, Style, Windows};
use super::hf_config::detect;
use super::{Architecture, ConfigError, Family, Layout, Options};

/// The registry entry.
pub struct Phi3Family;

const PHI3: Style = Style {
    family: "phi3",
    fused_qkv: true,
    fused_gate_up: true,
    qkv_bias: Bias::No,
    o_bias: Bias::No,
    mlp_bias: Bias::No,
    partial_rotary: true,
    windows: Windows::Global { default: None },
    eps: 1e-5,
    ..Style::LLAMA
};

impl Family for Phi3Family {
    fn name(&self) -> &'static str {
        "phi3"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face Phi3ForCausalLM (unscaled rope), from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, &["Phi3ForCausalLM"], &["phi3"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> Result<Arc<dyn Architecture>, ConfigError> {
        Ok(Decoder::read(layout, &PHI3)?.into_arch())
    }
}
