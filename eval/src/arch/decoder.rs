//! The decoder-only causal language model that Llama, Mistral, Qwen2, Qwen3, Phi-3 and Gemma share, configured from `config.json` and the tensor shapes; each family file only states how it differs ([`Style`]).
//!
//! Reference: transformers' `modeling_llama.py` and its siblings. A pre-norm stack of
//! `model.layers.{i}`: RMSNorm, self-attention with rotary position embeddings (RoPE,
//! `rotate_half` convention) and grouped-query attention, a residual, RMSNorm, a gated MLP
//! `down(act(gate(x)) * up(x))`, a residual; then `model.norm` and `lm_head` (or the
//! embedding, when `tie_word_embeddings` and the file has no `lm_head.weight`). The logits
//! come out at every position, [B, T, vocab].
//!
//! Sizes (vocabulary, hidden, intermediate, layers, head dimension) come from the shapes and
//! must agree with `config.json` where it states them; heads, key/value heads, epsilon,
//! rope theta and scaling (none, `linear`, `llama3`), activation and windows come from
//! `config.json`. Settings this implementation does not have (other rope scalings, logit
//! soft-capping, bidirectional attention) are errors that name the key, never silently
//! different numbers.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde_json::Value;

use super::hf_config::{key_name, HfConfig};
use super::text_layers::{
    attend, causal_mask, check_ids, linear, linear_specs, mask_or_ones, padding_mask, split_heads,
    Activation, RmsNorm,
};
use super::{
    Architecture, Batch, ConfigError, Input, Layout, Model, Output, TensorSpec, TokenInput,
};

/// Where a projection's bias comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bias {
    /// Never a bias.
    No,
    /// Always a bias (Qwen2's q/k/v).
    Yes,
    /// A bias when this `config.json` flag is true (Llama's `attention_bias`, `mlp_bias`).
    Flag(&'static str),
}

/// How attention windows are configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Windows {
    /// Full causal attention in every layer.
    Full,
    /// `sliding_window` for every layer (Mistral, Phi-3); `default` when the key is absent
    /// (transformers' config default), no window when it is `null`.
    Global {
        /// The window when `config.json` has no `sliding_window` key.
        default: Option<usize>,
    },
    /// Qwen's per-layer choice: `layer_types` (`full_attention` / `sliding_attention`), or,
    /// without it, `use_sliding_window` from layer `max_window_layers` on; the window is
    /// `sliding_window`, 4096 when the key is absent (Qwen2Config's and Qwen3Config's default).
    PerLayer,
}

/// How one family differs from Llama.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    /// The family's `--arch` name.
    pub family: &'static str,
    /// `self_attn.qkv_proj` fused (Phi-3) instead of `q_proj`, `k_proj`, `v_proj`.
    pub fused_qkv: bool,
    /// `mlp.gate_up_proj` fused (Phi-3) instead of `gate_proj` and `up_proj`.
    pub fused_gate_up: bool,
    /// Bias of q/k/v.
    pub qkv_bias: Bias,
    /// Bias of `o_proj`.
    pub o_bias: Bias,
    /// Bias of the MLP projections.
    pub mlp_bias: Bias,
    /// RMSNorm of each query and key head before RoPE (Qwen3's `q_norm`, `k_norm`).
    pub qk_norm: bool,
    /// Gemma: RMSNorm scales by (1 + weight) and the embeddings by sqrt(hidden).
    pub gemma: bool,
    /// Whether `partial_rotary_factor` is read (Phi-3); the others rotate the whole head.
    pub partial_rotary: bool,
    /// Attention windows.
    pub windows: Windows,
    /// transformers' default `hidden_act`.
    pub activation: &'static str,
    /// transformers' default `rms_norm_eps`.
    pub eps: f64,
    /// transformers' default `tie_word_embeddings`.
    pub tied: bool,
    /// transformers' default `head_dim` when `config.json` has none (Qwen3: 128, Gemma: 256);
    /// `None`: hidden / heads.
    pub head_dim: Option<usize>,
}

impl Style {
    /// Llama's style: the base the others modify.
    pub const LLAMA: Style = Style {
        family: "llama",
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: Bias::Flag("attention_bias"),
        o_bias: Bias::Flag("attention_bias"),
        mlp_bias: Bias::Flag("mlp_bias"),
        qk_norm: false,
        gemma: false,
        partial_rotary: false,
        windows: Windows::Full,
        activation: "silu",
        eps: 1e-6,
        tied: false,
        head_dim: None,
    };
}

/// A configured causal LM.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoder {
    /// The family's name and differences.
    pub family: &'static str,
    style_key: StyleKey,
    /// The transformers class, from `architectures` (for reports).
    pub class: String,
    /// Embedding rows.
    pub vocab: usize,
    /// Hidden width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Leading dimensions of each head that RoPE rotates (all but Phi-3's partial rotary).
    pub rotary_dim: usize,
    /// RoPE base, rotated fraction and scaling.
    pub rope: RopeConfig,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// MLP activation.
    pub activation: Activation,
    /// Each layer's sliding window (`None`: full causal attention).
    pub windows: Vec<Option<usize>>,
    /// Biases of q/k/v, o and the MLP.
    pub biases: [bool; 3],
    /// Whether the checkpoint has `lm_head.weight` (else the head is the embedding).
    pub lm_head: bool,
    /// Unused tensors transformers ignores when loading (old checkpoints' persistent
    /// `rotary_emb.inv_freq`), with their shapes: accepted, never read.
    pub ignored: Vec<(String, Vec<usize>)>,
    /// `pad_token_id`.
    pub pad_token_id: Option<u32>,
    /// `max_position_embeddings`: the length the model was trained on.
    pub trained_positions: Option<usize>,
}

/// The parts of [`Style`] the model needs after configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StyleKey {
    fused_qkv: bool,
    fused_gate_up: bool,
    qk_norm: bool,
    gemma: bool,
}

impl Decoder {
    /// Reads a `style` decoder's configuration from `layout`'s `config.json` and shapes.
    pub fn read(layout: &Layout, style: &Style) -> std::result::Result<Decoder, ConfigError> {
        let config = HfConfig::of(layout)?;
        refuse_unsupported(&config, style)?;

        let embed = "model.embed_tokens.weight";
        let e = layout.require(embed, 2)?;
        let (vocab, hidden) = (e[0], e[1]);
        config.agrees("vocab_size", vocab, embed)?;
        config.agrees("hidden_size", hidden, embed)?;

        let layers = layout.count("model.layers.", 0, ".input_layernorm.weight");
        if layers == 0 {
            return Err(ConfigError::new(
                "model.layers.0.input_layernorm.weight",
                "is missing",
            ));
        }
        config.agrees(
            "num_hidden_layers",
            layers,
            "model.layers.N.input_layernorm.weight",
        )?;

        let heads = config.positive("num_attention_heads")?;
        let kv_heads = config.positive_or("num_key_value_heads", heads)?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(ConfigError::new(
                key_name("num_key_value_heads"),
                format!("is {kv_heads}, which does not divide num_attention_heads {heads}"),
            ));
        }
        let (q_name, q_rows) = if style.fused_qkv {
            let n = "model.layers.0.self_attn.qkv_proj.weight";
            (n, layout.require(n, 2)?[0])
        } else {
            let n = "model.layers.0.self_attn.q_proj.weight";
            (n, layout.require(n, 2)?[0])
        };
        let q_heads = if style.fused_qkv {
            heads + 2 * kv_heads
        } else {
            heads
        };
        let head_dim = match config.opt_usize("head_dim")? {
            Some(d) => d,
            None => match style.head_dim {
                Some(d) => d,
                None => hidden / heads,
            },
        };
        if head_dim == 0 || q_heads * head_dim != q_rows {
            return Err(ConfigError::new(
                q_name,
                format!(
                    "has {q_rows} rows, but config.json's heads ({heads} query, {kv_heads} key/value) of dimension {head_dim} need {}; config.json and the weights disagree",
                    q_heads * head_dim
                ),
            ));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(ConfigError::new(
                key_name("head_dim"),
                format!("is {head_dim}; rotary embeddings need an even head dimension"),
            ));
        }

        let down = "model.layers.0.mlp.down_proj.weight";
        let intermediate = layout.require(down, 2)?[1];
        config.agrees("intermediate_size", intermediate, down)?;

        let rope = rope(&config, style)?;
        let partial = rope.partial;
        let rotary_dim = ((head_dim as f64) * partial) as usize;
        if rotary_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim > head_dim {
            return Err(ConfigError::new(
                key_name("partial_rotary_factor"),
                format!("is {partial}, which rotates {rotary_dim} of {head_dim} head dimensions; it must be an even number from 2 to {head_dim}"),
            ));
        }

        let default_act = style.activation;
        let mut activation = Activation::read(&config, "hidden_act", default_act)?;
        if style.gemma && activation == Activation::Gelu {
            // transformers' GemmaConfig maps the legacy "gelu" to the tanh approximation.
            activation = Activation::GeluTanh;
        }
        let eps = config.positive_number_or("rms_norm_eps", style.eps)?;
        let flag = |b: Bias| -> std::result::Result<bool, ConfigError> {
            match b {
                Bias::No => Ok(false),
                Bias::Yes => Ok(true),
                Bias::Flag(key) => config.bool_or(key, false),
            }
        };
        let biases = [
            flag(style.qkv_bias)?,
            flag(style.o_bias)?,
            flag(style.mlp_bias)?,
        ];
        let windows = windows(&config, style.windows, layers)?;

        let tied = config.bool_or("tie_word_embeddings", style.tied)?;
        let lm_head = layout.has("lm_head.weight");
        if !lm_head && !tied {
            return Err(ConfigError::new(
                "lm_head.weight",
                "is missing, and config.json's tie_word_embeddings is false; a checkpoint whose head is its embedding needs \"tie_word_embeddings\": true",
            ));
        }
        let ignored = (0..layers)
            .map(|i| format!("model.layers.{i}.self_attn.rotary_emb.inv_freq"))
            .filter_map(|n| layout.shape(&n).map(|s| (n.clone(), s.to_vec())))
            .collect();

        Ok(Decoder {
            family: style.family,
            style_key: StyleKey {
                fused_qkv: style.fused_qkv,
                fused_gate_up: style.fused_gate_up,
                qk_norm: style.qk_norm,
                gemma: style.gemma,
            },
            class: config
                .architectures()
                .first()
                .map(|s| s.to_string())
                .unwrap_or_else(|| style.family.to_string()),
            vocab,
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            rotary_dim,
            rope,
            eps,
            activation,
            windows,
            biases,
            lm_head,
            ignored,
            pad_token_id: config.pad_token_id()?,
            trained_positions: config.opt_positive("max_position_embeddings")?,
        })
    }

    /// The configuration as an [`Architecture`].
    pub fn into_arch(self) -> Arc<dyn Architecture> {
        Arc::new(self)
    }
}

/// Settings this implementation does not have, refused by key.
fn refuse_unsupported(config: &HfConfig, style: &Style) -> std::result::Result<(), ConfigError> {
    if config.has("quantization_config") {
        return Err(ConfigError::new(
            key_name("quantization_config"),
            "is set; soup-eval evaluates unquantised float checkpoints only",
        ));
    }
    for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
        config.refuse_unless(
            key,
            &[],
            "logit soft-capping (Gemma 2) is not implemented; this family has none",
        )?;
    }
    config.refuse_unless(
        "use_bidirectional_attention",
        &[Value::Bool(false)],
        "only causal attention is implemented",
    )?;
    if style.gemma {
        config.refuse_unless(
            "hidden_activation",
            &[
                Value::from("gelu_pytorch_tanh"),
                Value::from("gelu"),
                Value::from("gelu_new"),
            ],
            "Gemma's MLP is implemented with the tanh GELU only",
        )?;
    }
    Ok(())
}

/// How RoPE's frequencies are scaled (transformers' `rope_type`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Unscaled: `inv_freq[i] = 1 / theta^(2i / d)`.
    Default,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3` (Llama 3.1 and later): long wavelengths divided by `factor`, short ones kept,
    /// the band between smoothly interpolated.
    Llama3 {
        /// The divisor of the long wavelengths.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context (`original_max_position_embeddings`).
        original: f64,
    },
}

/// A decoder's rotary embedding settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// The base.
    pub theta: f64,
    /// The fraction of each head that is rotated (Phi-3's `partial_rotary_factor`).
    pub partial: f64,
    /// The frequency scaling.
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// The inverse frequencies of `rotary_dim` rotated dimensions, in f32 as transformers
    /// computes them (`_compute_default_rope_parameters`, `_compute_linear_scaling_...`,
    /// `_compute_llama3_parameters`).
    pub fn inv_freq(&self, rotary_dim: usize) -> Vec<f32> {
        let base = (0..rotary_dim / 2)
            .map(|i| 1.0f32 / (self.theta as f32).powf((2 * i) as f32 / rotary_dim as f32));
        match self.scaling {
            RopeScaling::Default => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original,
            } => {
                let (factor, low, high, original) =
                    (factor as f32, low as f32, high as f32, original as f32);
                let low_wavelen = original / low;
                let high_wavelen = original / high;
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen >= high_wavelen && wavelen <= low_wavelen {
                        let smooth = (original / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect()
            }
        }
    }
}

/// The RoPE settings, from `rope_parameters` (transformers 5) or the older `rope_theta` and
/// `rope_scaling` keys. Unscaled, `linear` and `llama3` RoPE are implemented; any other type
/// (`dynamic`, `yarn`, `longrope`, ...) is an error naming the key.
fn rope(config: &HfConfig, style: &Style) -> std::result::Result<RopeConfig, ConfigError> {
    let mut rope = RopeConfig {
        theta: config.positive_number_or("rope_theta", 10000.0)?,
        partial: if style.partial_rotary {
            config.positive_number_or("partial_rotary_factor", 1.0)?
        } else {
            1.0
        },
        scaling: RopeScaling::Default,
    };
    for key in ["rope_parameters", "rope_scaling"] {
        let Some(value) = config.get(key) else {
            continue;
        };
        let Value::Object(params) = value else {
            return Err(ConfigError::new(
                key_name(key),
                format!("is {value}; it must be an object"),
            ));
        };
        let number = |name: &str| -> std::result::Result<Option<f64>, ConfigError> {
            params
                .get(name)
                .filter(|v| !v.is_null())
                .map(|v| {
                    v.as_f64()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| {
                            ConfigError::new(
                                key_name(&format!("{key}.{name}")),
                                format!("is {v}; it must be a positive number"),
                            )
                        })
                })
                .transpose()
        };
        let required = |name: &str| -> std::result::Result<f64, ConfigError> {
            number(name)?.ok_or_else(|| {
                ConfigError::new(
                    key_name(&format!("{key}.{name}")),
                    "is missing; this rope type needs it",
                )
            })
        };
        if let Some(theta) = number("rope_theta")? {
            rope.theta = theta;
        }
        if style.partial_rotary {
            if let Some(p) = number("partial_rotary_factor")? {
                rope.partial = p;
            }
        }
        let kind = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .filter(|v| !v.is_null());
        rope.scaling = match kind.map(|k| (k, k.as_str())) {
            None | Some((_, Some("default"))) => rope.scaling,
            Some((_, Some("linear"))) => RopeScaling::Linear {
                factor: required("factor")?,
            },
            Some((_, Some("llama3"))) => {
                let original = match number("original_max_position_embeddings")? {
                    Some(n) => n,
                    None => config
                        .opt_usize("original_max_position_embeddings")?
                        .or(config.opt_usize("max_position_embeddings")?)
                        .ok_or_else(|| {
                            ConfigError::new(
                                key_name(&format!("{key}.original_max_position_embeddings")),
                                "is missing; llama3 rope scaling needs it",
                            )
                        })? as f64,
                };
                let (low, high) = (required("low_freq_factor")?, required("high_freq_factor")?);
                if high <= low {
                    return Err(ConfigError::new(
                        key_name(&format!("{key}.high_freq_factor")),
                        format!("is {high}; it must be above low_freq_factor {low}"),
                    ));
                }
                RopeScaling::Llama3 {
                    factor: required("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original,
                }
            }
            Some((kind, _)) => {
                return Err(ConfigError::new(
                    key_name(key),
                    format!(
                        "asks for rope type {kind}; soup-eval implements \"default\", \"linear\" and \"llama3\" rotary embeddings only"
                    ),
                ))
            }
        };
    }
    if rope.partial > 1.0 {
        return Err(ConfigError::new(
            key_name("partial_rotary_factor"),
            format!("is {}; it must be a number in (0, 1]", rope.partial),
        ));
    }
    Ok(rope)
}

/// Each layer's attention window.
fn windows(
    config: &HfConfig,
    rule: Windows,
    layers: usize,
) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
    let window = |default: Option<usize>| -> std::result::Result<Option<usize>, ConfigError> {
        match config.get("sliding_window") {
            None if config.has_key("sliding_window") => Ok(None),
            None => Ok(default),
            Some(_) => config.opt_usize("sliding_window").and_then(|w| match w {
                Some(0) => Err(ConfigError::new(
                    key_name("sliding_window"),
                    "is 0; it must be a positive number of tokens or null",
                )),
                w => Ok(w),
            }),
        }
    };
    match rule {
        Windows::Full => Ok(vec![None; layers]),
        Windows::Global { default } => Ok(vec![window(default)?; layers]),
        Windows::PerLayer => {
            // Qwen2Config and Qwen3Config default `sliding_window` to 4096, used when
            // `use_sliding_window` is on and the key is absent.
            let w = if config.bool_or("use_sliding_window", false)? {
                window(Some(4096))?
            } else {
                None
            };
            match config.get("layer_types") {
                Some(Value::Array(types)) => {
                    if types.len() != layers {
                        return Err(ConfigError::new(
                            key_name("layer_types"),
                            format!(
                                "lists {} layers, but the checkpoint has {layers}",
                                types.len()
                            ),
                        ));
                    }
                    types
                        .iter()
                        .map(|t| match t.as_str() {
                            Some("full_attention") => Ok(None),
                            Some("sliding_attention") => Ok(w),
                            _ => Err(ConfigError::new(
                                key_name("layer_types"),
                                format!("has {t}; only \"full_attention\" and \"sliding_attention\" are implemented"),
                            )),
                        })
                        .collect()
                }
                Some(other) => Err(ConfigError::new(
                    key_name("layer_types"),
                    format!("is {other}; it must be a list"),
                )),
                None => {
                    let first = config.positive_or("max_window_layers", 28)?;
                    Ok((0..layers)
                        .map(|i| if i >= first { w } else { None })
                        .collect())
                }
            }
        }
    }
}

impl Architecture for Decoder {
    fn family(&self) -> &'static str {
        self.family
    }

    fn describe(&self) -> String {
        let window = match self.windows.iter().flatten().next() {
            Some(w) => format!(", sliding window {w}"),
            None => String::new(),
        };
        format!(
            "{} ({}, {} layers, hidden {}, {} heads, {} key/value heads, head dim {}, mlp {}, vocab {}{window})",
            self.family,
            self.class,
            self.layers,
            self.hidden,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.intermediate,
            self.vocab
        )
    }

    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: self.vocab,
            // RoPE has no hard limit; `max_position_embeddings` is only the training length,
            // which bounds the defaults.
            max_positions: None,
            trained_positions: self.trained_positions,
            pad_token_id: self.pad_token_id,
            segments: 1,
        })
    }

    fn output(&self) -> Output {
        Output::NextToken(self.vocab)
    }

    fn tensors(&self) -> Vec<TensorSpec> {
        let (h, hd, i) = (self.hidden, self.head_dim, self.intermediate);
        let [qkv_bias, o_bias, mlp_bias] = self.biases;
        let s = self.style_key;
        let mut out = vec![TensorSpec::float(
            "model.embed_tokens.weight",
            &[self.vocab, h],
        )];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push(TensorSpec::float(
                &format!("{p}.input_layernorm.weight"),
                &[h],
            ));
            out.push(TensorSpec::float(
                &format!("{p}.post_attention_layernorm.weight"),
                &[h],
            ));
            let a = format!("{p}.self_attn");
            if s.fused_qkv {
                let rows = (self.heads + 2 * self.kv_heads) * hd;
                linear_specs(&format!("{a}.qkv_proj"), h, rows, qkv_bias, &mut out);
            } else {
                linear_specs(
                    &format!("{a}.q_proj"),
                    h,
                    self.heads * hd,
                    qkv_bias,
                    &mut out,
                );
                linear_specs(
                    &format!("{a}.k_proj"),
                    h,
                    self.kv_heads * hd,
                    qkv_bias,
                    &mut out,
                );
                linear_specs(
                    &format!("{a}.v_proj"),
                    h,
                    self.kv_heads * hd,
                    qkv_bias,
                    &mut out,
                );
            }
            linear_specs(&format!("{a}.o_proj"), self.heads * hd, h, o_bias, &mut out);
            if s.qk_norm {
                out.push(TensorSpec::float(&format!("{a}.q_norm.weight"), &[hd]));
                out.push(TensorSpec::float(&format!("{a}.k_norm.weight"), &[hd]));
            }
            let m = format!("{p}.mlp");
            if s.fused_gate_up {
                linear_specs(&format!("{m}.gate_up_proj"), h, 2 * i, mlp_bias, &mut out);
            } else {
                linear_specs(&format!("{m}.gate_proj"), h, i, mlp_bias, &mut out);
                linear_specs(&format!("{m}.up_proj"), h, i, mlp_bias, &mut out);
            }
            linear_specs(&format!("{m}.down_proj"), i, h, mlp_bias, &mut out);
        }
        out.push(TensorSpec::float("model.norm.weight", &[h]));
        if self.lm_head {
            out.push(TensorSpec::float("lm_head.weight", &[self.vocab, h]));
        }
        for (name, shape) in &self.ignored {
            out.push(TensorSpec::float(name, shape));
        }
        out
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn Model>> {
        let (h, hd, i) = (self.hidden, self.head_dim, self.intermediate);
        let [qkv_bias, o_bias, mlp_bias] = self.biases;
        let s = self.style_key;
        let m = vb.pp("model");
        let embed = m.get((self.vocab, h), "embed_tokens.weight")?;
        let norm =
            |dim: usize, vb: VarBuilder| RmsNorm::new(vb.get(dim, "weight")?, self.eps, s.gemma);
        let mut layers = Vec::with_capacity(self.layers);
        for (l, window) in self.windows.iter().enumerate() {
            let p = m.pp(format!("layers.{l}"));
            let a = p.pp("self_attn");
            let qkv = if s.fused_qkv {
                let rows = (self.heads + 2 * self.kv_heads) * hd;
                Qkv::Fused(linear(h, rows, qkv_bias, a.pp("qkv_proj"))?)
            } else {
                Qkv::Separate(
                    linear(h, self.heads * hd, qkv_bias, a.pp("q_proj"))?,
                    linear(h, self.kv_heads * hd, qkv_bias, a.pp("k_proj"))?,
                    linear(h, self.kv_heads * hd, qkv_bias, a.pp("v_proj"))?,
                )
            };
            let qk_norm = if s.qk_norm {
                Some((norm(hd, a.pp("q_norm"))?, norm(hd, a.pp("k_norm"))?))
            } else {
                None
            };
            let mp = p.pp("mlp");
            let gate_up = if s.fused_gate_up {
                GateUp::Fused(linear(h, 2 * i, mlp_bias, mp.pp("gate_up_proj"))?)
            } else {
                GateUp::Separate(
                    linear(h, i, mlp_bias, mp.pp("gate_proj"))?,
                    linear(h, i, mlp_bias, mp.pp("up_proj"))?,
                )
            };
            layers.push(Layer {
                input_norm: norm(h, p.pp("input_layernorm"))?,
                qkv,
                qk_norm,
                o_proj: linear(self.heads * hd, h, o_bias, a.pp("o_proj"))?,
                post_norm: norm(h, p.pp("post_attention_layernorm"))?,
                gate_up,
                down: linear(i, h, mlp_bias, mp.pp("down_proj"))?,
                window: *window,
            });
        }
        let head = if self.lm_head {
            vb.get((self.vocab, h), "lm_head.weight")?
        } else {
            embed.clone()
        };
        Ok(Box::new(DecoderModel {
            config: self.clone(),
            embed,
            layers,
            norm: norm(h, m.pp("norm"))?,
            head: Linear::new(head, None),
        }))
    }
}

/// q, k and v projections.
enum Qkv {
    Separate(Linear, Linear, Linear),
    Fused(Linear),
}

/// The MLP's gate and up projections.
enum GateUp {
    Separate(Linear, Linear),
    /// Phi-3's `gate_up_proj`: the gate's rows first, then the up projection's.
    Fused(Linear),
}

struct Layer {
    input_norm: RmsNorm,
    qkv: Qkv,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    o_proj: Linear,
    post_norm: RmsNorm,
    gate_up: GateUp,
    down: Linear,
    window: Option<usize>,
}

struct DecoderModel {
    config: Decoder,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: Linear,
}

impl DecoderModel {
    fn attention(&self, layer: &Layer, x: &Tensor, rope: &Rope, mask: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, t, _) = x.dims3()?;
        let (q, k, v) = match &layer.qkv {
            Qkv::Separate(q, k, v) => (x.apply(q)?, x.apply(k)?, x.apply(v)?),
            Qkv::Fused(qkv) => {
                let y = x.apply(qkv)?;
                let (nq, nk) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
                (
                    y.narrow(2, 0, nq)?,
                    y.narrow(2, nq, nk)?,
                    y.narrow(2, nq + nk, nk)?,
                )
            }
        };
        let (q, k) = match &layer.qk_norm {
            Some((qn, kn)) => (
                qn.forward(&q.reshape((b, t, c.heads, c.head_dim))?)?
                    .reshape((b, t, c.heads * c.head_dim))?,
                kn.forward(&k.reshape((b, t, c.kv_heads, c.head_dim))?)?
                    .reshape((b, t, c.kv_heads * c.head_dim))?,
            ),
            None => (q, k),
        };
        let q = rope.apply(&split_heads(&q, c.heads, c.head_dim)?)?;
        let k = rope.apply(&split_heads(&k, c.kv_heads, c.head_dim)?)?;
        let v = split_heads(&v, c.kv_heads, c.head_dim)?;
        let y = attend(&q, &k, &v, mask, (c.head_dim as f64).powf(-0.5))?;
        y.apply(&layer.o_proj)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let (gate, up) = match &layer.gate_up {
            GateUp::Separate(g, u) => (x.apply(g)?, x.apply(u)?),
            GateUp::Fused(gu) => {
                let y = x.apply(gu)?;
                let i = self.config.intermediate;
                (y.narrow(2, 0, i)?, y.narrow(2, i, i)?)
            }
        };
        (self.config.activation.apply(&gate)? * up)?.apply(&layer.down)
    }
}

impl Model for DecoderModel {
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let c = &self.config;
        let ids = batch.inputs;
        check_ids(ids, c.vocab)?;
        let (b, t) = ids.dims2()?;
        let device = ids.device();
        let dtype = self.embed.dtype();
        // Right padding: the causal mask already hides later padding from every real
        // position; masking padded keys too makes left-padded batches match transformers.
        let padding = padding_mask(&mask_or_ones(ids, batch.attention_mask)?)?;
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for layer in &self.layers {
            if !masks.iter().any(|(w, _)| *w == layer.window) {
                let m = causal_mask(t, layer.window, device)?.broadcast_add(&padding)?;
                masks.push((layer.window, m));
            }
        }
        let rope = Rope::new(
            t,
            &c.rope.inv_freq(c.rotary_dim),
            c.rotary_dim,
            device,
            dtype,
        )?;

        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, c.hidden))?;
        if self.config.style_key.gemma {
            // transformers multiplies by sqrt(hidden) rounded to the model's dtype.
            x = (x * (c.hidden as f64).sqrt())?;
        }
        for layer in &self.layers {
            let mask = &masks
                .iter()
                .find(|(w, _)| *w == layer.window)
                .expect("a mask was made for every window")
                .1;
            let y = self.attention(layer, &layer.input_norm.forward(&x)?, &rope, mask)?;
            x = (x + y)?;
            let y = self.mlp(layer, &layer.post_norm.forward(&x)?)?;
            x = (x + y)?;
        }
        self.head.forward(&self.norm.forward(&x)?)
    }
}

/// RoPE's cos and sin tables for positions 0..T, computed in f32 as transformers does
/// (angle = position · inv_freq) and rounded to the model's dtype.
struct Rope {
    cos: Tensor,
    sin: Tensor,
    rotary_dim: usize,
}

impl Rope {
    fn new(
        t: usize,
        inv_freq: &[f32],
        rotary_dim: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Rope> {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for p in 0..t {
            for f in inv_freq {
                let angle = p as f32 * f;
                cos.push((angle as f64).cos() as f32);
                sin.push((angle as f64).sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (t, half), device)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, (t, half), device)?.to_dtype(dtype)?,
            rotary_dim,
        })
    }

    /// Rotates the first `rotary_dim` dimensions of each head of `x` [B, H, T, D].
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(3)?;
        if self.rotary_dim == d {
            return candle_nn::rotary_emb::rope(x, &self.cos, &self.sin);
        }
        let rotated = candle_nn::rotary_emb::rope(
            &x.narrow(3, 0, self.rotary_dim)?.contiguous()?,
            &self.cos,
            &self.sin,
        )?;
        Tensor::cat(
            &[
                &rotated,
                &x.narrow(3, self.rotary_dim, d - self.rotary_dim)?,
            ],
            3,
        )
    }
}
