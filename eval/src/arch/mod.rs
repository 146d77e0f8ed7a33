//! The architecture registry: the model families `--arch` can build, each configured from a checkpoint's own tensor names and shapes.
//!
//! Three steps turn `--arch` and a checkpoint into a model:
//!
//! 1. [`Selection::parse`] reads `--arch`: `auto`, a family (`resnet`), or a standard variant
//!    of one (`resnet50`).
//! 2. A [`Family`] reads its configuration (depths, widths, growth rate, classes, ...) from the
//!    checkpoint's [`Layout`] (tensor names and shapes, and `config.json` for a model
//!    directory) and returns an [`Architecture`]: one configured model.
//! 3. [`Architecture::tensors`] lists every tensor that configuration needs, which
//!    [`crate::weights::check_fits`] compares with each checkpoint (missing and unknown
//!    tensors are errors naming the tensor and the family), and [`Architecture::build`] makes a
//!    [`Model`] from the weights.
//!
//! The model-building side ends at logits: datasets ([`crate::dataset`]) and scores
//! ([`crate::score`]) are separate, so another task (a language model's loss, say) can reuse
//! the registry with its own data and metric.
//!
//! # Adding an architecture
//!
//! Write one file here with a type implementing [`Family`] and one implementing
//! [`Architecture`], read the tensors through `vb.pp(..)` with the names the checkpoints use,
//! and add one line to [`FAMILIES`]. `resnet.rs` is a complete example. Settings that the
//! shapes don't reveal (a ViT's heads) take the standard variants' convention, overridable
//! through [`Options`] (`--arch-option KEY=VALUE`).
//!
//! # Adding a language model
//!
//! Text families read a Hugging Face model directory: settings from `config.json` through
//! [`hf_config::HfConfig`] (typed values, transformers' defaults, errors naming the key),
//! sizes from the shapes, checked against each other; they detect themselves with
//! [`hf_config::detect`] (`architectures`, then `model_type`). A decoder-only causal LM that
//! differs from Llama only in biases, fused projections, q/k norms, Gemma's norms and
//! embedding scale, partial rotary or sliding windows is one small file declaring a
//! [`decoder::Style`] (see `qwen2.rs`, about 40 lines) plus its line in [`FAMILIES`]; anything
//! else (another norm, a rope scaling) goes into `decoder.rs` once, behind a new `Style`
//! field, with a `config.json` key that is refused until it is implemented. A BERT-like
//! classifier reuses [`encoder::EncoderConfig`] and adds its head (see `bert.rs`). Shared
//! layers (attention with an f32 softmax, masks, RMSNorm and LayerNorm as transformers
//! computes them, activations by config name) are in `text_layers.rs`. Every new family
//! gets a fixture model in `fixtures/text/models` and parity logits in
//! `fixtures/text/parity`, which `eval/tests/text_parity.rs` checks.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use candle_core::{Result as CandleResult, Tensor};
use candle_nn::VarBuilder;

use model_soup::format::Checkpoint;

use crate::error::{Error, Result};

pub mod bert;
pub mod convnext;
pub mod decoder;
pub mod densenet;
pub mod digits_cnn;
pub mod distilbert;
pub mod efficientnet;
pub mod encoder;
pub mod encoder_classifier;
pub mod gemma;
pub mod hf_config;
pub mod hf_convnext;
pub mod hf_vit;
pub mod layers;
pub mod llama;
pub mod mnasnet;
pub mod mobilenet_v2;
pub mod mobilenet_v3;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod resnet;
pub mod roberta;
pub mod text_layers;
pub mod vgg;
pub mod vit;
pub mod wrapper;

/// Every family `--arch` accepts, in the order `--arch auto` tries them.
pub const FAMILIES: &[&dyn Family] = &[
    &digits_cnn::DigitsCnnFamily,
    &resnet::ResNetFamily,
    &densenet::DenseNetFamily,
    &vgg::VggFamily,
    &vit::VitFamily,
    &convnext::ConvNextFamily,
    &efficientnet::EfficientNetFamily,
    &mobilenet_v2::MobileNetV2Family,
    &mobilenet_v3::MobileNetV3Family,
    &mnasnet::MnasNetFamily,
    &hf_vit::HfVitFamily,
    &hf_convnext::HfConvNextFamily,
    &llama::LlamaFamily,
    &qwen2::Qwen2Family,
    &qwen3::Qwen3Family,
    &phi3::Phi3Family,
    &gemma::GemmaFamily,
    &bert::BertFamily,
    &roberta::RobertaFamily,
    &distilbert::DistilBertFamily,
];

/// A model built from one set of weights: maps a batch to logits (see [`Output`]).
pub trait Model {
    /// Logits for a batch, with every normalisation layer in eval mode and no dropout.
    fn logits(&self, batch: &Batch) -> CandleResult<Tensor>;
}

/// One batch of inputs, on the evaluation device.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    /// Images: float `[B, C, H, W]` in the evaluation dtype. Tokens: U32 ids `[B, T]`,
    /// right-padded.
    pub inputs: &'a Tensor,
    /// Tokens only: U32 `[B, T]`, 1 for a real token and 0 for padding. Logits at padded
    /// positions are ignored by every caller, so a model only has to keep real positions
    /// independent of the padding (a causal mask does; an encoder masks padded keys).
    pub attention_mask: Option<&'a Tensor>,
    /// Tokens only: U32 `[B, T]` segment ids, 0 for the first text of a pair and 1 for the
    /// second, as the tokenizer's `type_ids` give them (transformers' `token_type_ids`).
    /// Only models with segment embeddings (BERT) read them; `None` means segment 0
    /// everywhere.
    pub token_type_ids: Option<&'a Tensor>,
}

impl<'a> Batch<'a> {
    /// A batch of images (or any input without a mask).
    pub fn images(inputs: &'a Tensor) -> Self {
        Batch {
            inputs,
            attention_mask: None,
            token_type_ids: None,
        }
    }

    /// A batch of token ids with their attention mask, all in segment 0.
    pub fn tokens(ids: &'a Tensor, attention_mask: Option<&'a Tensor>) -> Self {
        Batch {
            inputs: ids,
            attention_mask,
            token_type_ids: None,
        }
    }
}

/// What a model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Images of this shape.
    Image(InputShape),
    /// Token ids.
    Tokens(TokenInput),
}

impl From<InputShape> for Input {
    fn from(shape: InputShape) -> Input {
        Input::Image(shape)
    }
}

/// The token sequences a language model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenInput {
    /// Embedding rows: every id must be below it.
    pub vocab: usize,
    /// The longest sequence the model takes, when it has a limit (learned position
    /// embeddings); `None` for rotary models.
    pub max_positions: Option<usize>,
    /// A model without a hard limit: the length it was trained on (a rotary model's
    /// `max_position_embeddings`). Default windows and contexts stay within it, as
    /// lm-evaluation-harness's do, and `--seq-len` or `--max-length` may not pass it (an
    /// extended context is the config's own, through `rope_scaling`).
    pub trained_positions: Option<usize>,
    /// The padding id `config.json` names, if any.
    pub pad_token_id: Option<u32>,
    /// How many segment ids (`token_type_ids`) the model reads: BERT's `type_vocab_size`;
    /// 1 for a model that takes every token as segment 0.
    pub segments: usize,
}

/// What a model's logits mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// One row of class logits per example: `[B, classes]`.
    Classes(usize),
    /// Next-token logits at every position: `[B, T, vocab]`.
    NextToken(usize),
}

impl Output {
    /// The width of a row of logits: classes, or the vocabulary.
    pub fn width(&self) -> usize {
        match *self {
            Output::Classes(n) | Output::NextToken(n) => n,
        }
    }
}

/// Whether a tensor is a learned float parameter / statistic, or an integer buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// A float tensor the model reads (weights, biases, running statistics).
    Float,
    /// An integer buffer the model may ignore, such as batch norm's `num_batches_tracked`.
    /// It is optional in a checkpoint.
    Buffer,
}

/// One tensor an architecture expects in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// The tensor's name, exactly as checkpoints spell it.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Float parameter or integer buffer.
    pub kind: TensorKind,
}

impl TensorSpec {
    /// A float tensor the model needs.
    pub fn float(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind: TensorKind::Float,
        }
    }

    /// An optional integer buffer.
    pub fn buffer(name: &str, shape: &[usize]) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            kind: TensorKind::Buffer,
        }
    }
}

/// The images a model takes: channels, and a height and width when the model fixes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputShape {
    /// Colour channels (3 for RGB).
    pub channels: usize,
    /// `Some([h, w])` for models that accept one size only (a ViT's position embedding, a
    /// flatten into a linear head); `None` for fully convolutional models.
    pub size: Option<[usize; 2]>,
    /// A fully convolutional model's smallest height and width: its strided and unpadded
    /// layers leave nothing of a smaller input ([`layers::min_side`]), and candle then fails
    /// mid-forward with an internal error, or panics. 1 when every layer is padded.
    pub min: usize,
}

impl InputShape {
    /// Whether one sample of shape `shape` (without the batch dimension) fits.
    pub fn accepts(&self, shape: &[usize]) -> bool {
        match (shape, self.size) {
            ([c, h, w], Some(size)) => *c == self.channels && [*h, *w] == size,
            ([c, h, w], None) => *c == self.channels && (*h).min(*w) >= self.min.max(1),
            _ => false,
        }
    }
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some([h, w]) => write!(f, "[N, {}, {h}, {w}]", self.channels),
            None if self.min > 1 => write!(
                f,
                "[N, {}, H, W] with H and W at least {}",
                self.channels, self.min
            ),
            None => write!(f, "[N, {}, H, W]", self.channels),
        }
    }
}

/// One configured model: a family with every setting fixed.
pub trait Architecture: Send + Sync {
    /// The family's `--arch` name (`resnet`).
    fn family(&self) -> &'static str;
    /// A short description for reports: the standard variant's name when the configuration
    /// is one (`resnet50`), else the family with its settings.
    fn describe(&self) -> String;
    /// The standard variant this configuration is (`densenet121`), whatever the number of
    /// classes; `None` for a non-standard one.
    fn variant(&self) -> Option<String> {
        None
    }
    /// The inputs the model takes.
    fn input(&self) -> Input;
    /// What its logits are.
    fn output(&self) -> Output;
    /// Every tensor a checkpoint must (Float) or may (Buffer) hold, and no other.
    fn tensors(&self) -> Vec<TensorSpec>;
    /// Builds the model from tensors named as in [`Architecture::tensors`], which `vb` hands
    /// out on the evaluation device in the evaluation dtype (f32 unless `--eval-dtype`); inputs
    /// arrive in that dtype too.
    fn build(&self, vb: VarBuilder) -> CandleResult<Box<dyn Model>>;
}

/// Why a checkpoint can't configure a family: the tensor at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The tensor (or `config.json` key, or option) at fault.
    pub tensor: String,
    /// What is wrong, lowercase.
    pub reason: String,
}

impl ConfigError {
    /// A configuration error about `tensor`.
    pub fn new(tensor: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}

/// What a family configures itself from: the checkpoint's tensor names and shapes, and the
/// model directory's `config.json` when there is one.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    shapes: BTreeMap<String, Vec<usize>>,
    /// A model directory's parsed `config.json`.
    pub config: Option<serde_json::Value>,
}

impl Layout {
    /// The layout of `checkpoint`, with `config.json` read when it is a model directory.
    pub fn of(checkpoint: &Checkpoint) -> Result<Layout> {
        let shapes = checkpoint
            .tensors()
            .map(|t| {
                let shape = t.info.shape.iter().map(|&d| d as usize).collect();
                (t.name().to_string(), shape)
            })
            .collect();
        let dir = checkpoint.path();
        let config_path = dir.join("config.json");
        let config = if dir.is_dir() && crate::dataset::present(&config_path, "config")? {
            let text = crate::dataset::read_config(&config_path, "config")?;
            let value = serde_json::from_str(&text).map_err(|e| Error::Dataset {
                path: config_path.clone(),
                reason: format!("is not valid JSON ({e}); fix or remove it"),
            })?;
            Some(value)
        } else {
            None
        };
        Ok(Layout { shapes, config })
    }

    /// A layout from names and shapes alone (tests, and tools that only have a header).
    pub fn from_shapes<'a>(shapes: impl IntoIterator<Item = (&'a str, Vec<usize>)>) -> Layout {
        Layout {
            shapes: shapes
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect(),
            config: None,
        }
    }

    /// The shape of `name`, if the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.shapes.get(name).map(Vec::as_slice)
    }

    /// Whether the checkpoint has `name`.
    pub fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// The shape of `name`, which must have `rank` dimensions.
    pub fn require(&self, name: &str, rank: usize) -> std::result::Result<&[usize], ConfigError> {
        let shape = self
            .shape(name)
            .ok_or_else(|| ConfigError::new(name, "is missing"))?;
        if shape.len() != rank {
            return Err(ConfigError::new(
                name,
                format!("has shape {shape:?}; it must have {rank} dimensions"),
            ));
        }
        Ok(shape)
    }

    /// Counts `prefix{i}suffix` for i = first, first+1, ... until one is missing.
    pub fn count(&self, prefix: &str, first: usize, suffix: &str) -> usize {
        (first..)
            .take_while(|i| self.has(&format!("{prefix}{i}{suffix}")))
            .count()
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }
}

/// Settings the shapes don't reveal, given as `--arch-option KEY=VALUE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<String, String>,
}

impl Options {
    /// Parses `KEY=VALUE` pairs; a repeated key or one without `=` is an error.
    pub fn parse(pairs: &[String]) -> Result<Options> {
        let mut values = BTreeMap::new();
        for pair in pairs {
            let (k, v) = pair.split_once('=').ok_or_else(|| Error::Option {
                option: pair.clone(),
                reason: "must be KEY=VALUE".into(),
            })?;
            if values.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::Option {
                    option: pair.clone(),
                    reason: format!("'{k}' is given twice"),
                });
            }
        }
        Ok(Options { values })
    }

    /// The value of `key` as a positive integer, if given.
    pub fn positive(&self, key: &str) -> std::result::Result<Option<usize>, ConfigError> {
        self.values
            .get(key)
            .map(|v| {
                v.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                    ConfigError::new(
                        format!("--arch-option {key}"),
                        format!("is '{v}'; it must be a positive integer"),
                    )
                })
            })
            .transpose()
    }

    /// The value of `key` as a comma-separated list of positive integers, if given.
    pub fn list(&self, key: &str) -> std::result::Result<Option<Vec<usize>>, ConfigError> {
        self.values
            .get(key)
            .map(|v| {
                v.split(',')
                    .map(|x| x.trim().parse::<usize>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("--arch-option {key}"),
                            format!("is '{v}'; it must be positive integers separated by commas"),
                        )
                    })
            })
            .transpose()
    }

    /// The value of `key` as a positive finite number, if given.
    pub fn float(&self, key: &str) -> std::result::Result<Option<f64>, ConfigError> {
        self.values
            .get(key)
            .map(|v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| {
                        ConfigError::new(
                            format!("--arch-option {key}"),
                            format!("is '{v}'; it must be a positive number"),
                        )
                    })
            })
            .transpose()
    }

    /// The value of `key` as given, if given.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The keys given.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// A model family: how to recognise its checkpoints and read their configuration.
pub trait Family: Send + Sync {
    /// The `--arch` name of the family.
    fn name(&self) -> &'static str;
    /// One line for `--help`.
    fn summary(&self) -> &'static str;
    /// Standard variants, each also accepted by `--arch` and checked against the checkpoint.
    fn variants(&self) -> &'static [&'static str] {
        &[]
    }
    /// `--arch-option` keys this family reads, with what each sets.
    fn options(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }
    /// Whether a checkpoint looks like this family, for `--arch auto`: from `config.json`'s
    /// `architectures` for a model directory, else from characteristic tensor names.
    fn detect(&self, layout: &Layout) -> bool;
    /// Reads the configuration from `layout`; `options` holds only keys of
    /// [`Family::options`].
    fn configure(
        &self,
        layout: &Layout,
        options: &Options,
    ) -> std::result::Result<Arc<dyn Architecture>, ConfigError>;
}

/// What `--arch` asked for.
#[derive(Clone, Copy)]
pub enum Selection {
    /// Detect the family from the first checkpoint.
    Auto,
    /// A family, configured from the checkpoint.
    Family(&'static dyn Family),
    /// A standard variant, whose configuration the checkpoint must have.
    Variant(&'static dyn Family, &'static str),
}

impl Selection {
    /// Parses `--arch`: `auto`, a family name or a variant name.
    pub fn parse(name: &str) -> Result<Selection> {
        if name == "auto" {
            return Ok(Selection::Auto);
        }
        for family in FAMILIES {
            if family.name() == name {
                return Ok(Selection::Family(*family));
            }
            if let Some(v) = family.variants().iter().find(|v| **v == name) {
                return Ok(Selection::Variant(*family, v));
            }
        }
        Err(Error::UnknownArch {
            name: name.to_string(),
            known: names(),
        })
    }

    /// Configures the selected architecture from `checkpoint` (`--arch auto` detects the
    /// family first). Errors name the checkpoint, the tensor and the family tried.
    pub fn configure(
        &self,
        checkpoint: &Checkpoint,
        options: &Options,
    ) -> Result<Arc<dyn Architecture>> {
        let layout = Layout::of(checkpoint)?;
        let path = checkpoint.path().to_path_buf();
        let family = match self {
            Selection::Family(f) | Selection::Variant(f, _) => *f,
            Selection::Auto => {
                *FAMILIES
                    .iter()
                    .find(|f| f.detect(&layout))
                    .ok_or_else(|| Error::Detect {
                        path: path.clone(),
                        known: names(),
                        listed: hf_config::HfConfig::of(&layout)
                            .map(|c| c.architectures().iter().map(|a| a.to_string()).collect())
                            .unwrap_or_default(),
                        hint: wrapper::detect_hint(&layout),
                    })?
            }
        };
        let fail = |e: ConfigError| {
            // A tensor missing because the whole checkpoint sits under a wrapper's prefix, or
            // is a LoRA adapter, says so: "conv1.weight is missing" alone hides the fix.
            let hint = (!layout.has(&e.tensor))
                .then(|| {
                    wrapper::missing_hint(&layout.names().collect::<Vec<_>>(), &e.tensor).or_else(
                        || {
                            // --arch named another family than the weights are: name theirs.
                            recognise(&layout).filter(|f| *f != family.name()).map(|f| {
                                format!("it is a {f} checkpoint: pass --arch {f}, or --arch auto")
                            })
                        },
                    )
                })
                .flatten();
            Error::Arch {
                path: path.clone(),
                arch: family.name().to_string(),
                reason: match hint {
                    Some(hint) => format!("{}; {hint}", e.reason),
                    None => e.reason,
                },
                tensor: e.tensor,
            }
        };
        for key in options.keys() {
            if !family.options().iter().any(|(k, _)| *k == key) {
                let known: Vec<&str> = family.options().iter().map(|(k, _)| *k).collect();
                return Err(Error::Option {
                    option: key.to_string(),
                    reason: format!(
                        "--arch {} has no option '{key}'; it takes: {}",
                        family.name(),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
        let arch = family.configure(&layout, options).map_err(fail)?;
        if let Selection::Variant(_, variant) = self {
            if arch.variant().as_deref() != Some(*variant) {
                return Err(Error::Variant {
                    path,
                    asked: variant.to_string(),
                    found: arch.describe(),
                    family: family.name(),
                });
            }
        }
        Ok(arch)
    }
}

/// The family `--arch auto` would pick for `layout`, if any.
pub fn recognise(layout: &Layout) -> Option<&'static str> {
    FAMILIES.iter().find(|f| f.detect(layout)).map(|f| f.name())
}

/// The names `--arch` accepts, comma-separated, for error messages.
pub fn names() -> String {
    let mut all = vec!["auto".to_string()];
    for f in FAMILIES {
        all.push(f.name().to_string());
        all.extend(f.variants().iter().map(|v| v.to_string()));
    }
    all.join(", ")
}

/// `--arch`'s help: every family with its summary and variants.
pub fn help() -> String {
    let list: Vec<String> = FAMILIES
        .iter()
        .map(|f| {
            if f.variants().is_empty() {
                format!("{} ({})", f.name(), f.summary())
            } else {
                format!(
                    "{} ({}; variants {})",
                    f.name(),
                    f.summary(),
                    f.variants().join(", ")
                )
            }
        })
        .collect();
    format!(
        "Model architecture: auto (from config.json or tensor names), a family configured from the checkpoint's shapes, or a standard variant checked against it: {}",
        list.join("; ")
    )
}
