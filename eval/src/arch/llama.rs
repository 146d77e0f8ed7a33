//! Llama and Mistral causal LMs (`LlamaForCausalLM`, `MistralForCausalLM`): the base [`Style`] of the shared decoder, plus Mistral's sliding-window attention.
//!
//! Reference: Touvron et al. 2023, "LLaMA"; Jiang et al. 2023, "Mistral 7B"; transformers'
//! `modeling_llama.py` and `modeling_mistral.py`.

use std::sync::Arc;

use super::decoder::{Bias, Decoder, Style, Windows};
use super::hf_config::{detect, HfConfig};
use super::{Architecture, ConfigError, Family, Layout, Options};

/// The registry entry.
pub struct LlamaFamily;

const LLAMA_CLASSES: &[&str] = &["LlamaForCausalLM"];
const MISTRAL_CLASSES: &[&str] = &["MistralForCausalLM"];

/// Mistral: Llama without biases, with `sliding_window` (4096 when config.json has no such key).
const MISTRAL: Style = Style {
    family: "llama",
    qkv_bias: Bias::No,
    o_bias: Bias::No,
    mlp_bias: Bias::No,
    windows: Windows::Global {
        default: Some(4096),
    },
    ..Style::LLAMA
};

impl Family for LlamaFamily {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn summary(&self) -> &'static str {
        "Hugging Face LlamaForCausalLM (rope unscaled, linear or llama3) and MistralForCausalLM (sliding window), from config.json"
    }

    fn detect(&self, layout: &Layout) -> bool {
        detect(layout, LLAMA_CLASSES, &["llama"]) || detect(layout, MISTRAL_CLASSES, &["mistral"])
    }

    fn configure(
        &self,
        layout: &Layout,
        _options: &Options,
    ) -> Result<Arc<dyn Architecture>, ConfigError> {
        let config = HfConfig::of(layout)?;
        let mistral = config
            .architectures()
            .iter()
            .any(|a| MISTRAL_CLASSES.contains(a))
            || (config.architectures().is_empty()
                && config.opt_str("model_type")? == Some("mistral"));
        let style = if mistral { MISTRAL } else { Style::LLAMA };
        Ok(Decoder::read(layout, &style)?.into_arch())
    }
}
