//! mergekit recipe files (`--config recipe.yaml`): a merge's YAML validated into a `Recipe`
//! against the registered method's parameters. A key, value or method soup-merge doesn't
//! support is an error naming it, never silently ignored. Values mean what they mean to
//! mergekit: the text is YAML 1.1 as PyYAML reads it (`yaml`), and each parameter's value is
//! converted for its type as pydantic converts it (`pydantic`).
//!
//! The keys read are mergekit's own, with its meanings and defaults:
//!
//! ```yaml
//! merge_method: ties            # any registered method (soup-merge --help lists them)
//! base_model: ./base            # the base of methods that use one; else one more model (as
//!                               # mergekit merges it), and the config source
//! models:
//!   - model: ./fine-tune-a      # a local .safetensors file or model directory (or the long
//!                               # form {model: ./fine-tune-a}, or {model: {path: ...}})
//!     parameters:
//!       weight: 0.7
//!       density: [0.3, 0.5, 0.7]          # a gradient over the layers
//!   - model: ./fine-tune-b
//!     parameters:
//!       weight:
//!         - filter: self_attn             # first matching filter (a substring of the name)
//!           value: 0.2
//!         - value: 0.3
//! parameters:                   # the method's global parameters, and per-model defaults
//!   normalize: true
//! dtype: bfloat16               # output dtype, unless out_dtype is given (neither: each
//!                               # tensor's inputs' promoted dtype, as in mergekit)
//! out_dtype: bfloat16
//! tokenizer_source: base        # the only value supported: the base model's tokenizer (the
//!                               # first model's without a base_model; mergekit's pick is
//!                               # arbitrary then), or the path of one of the models
//! random_seed: 42               # the seed of DARE's and DELLA's drops (soup-merge's own key)
//! chat_template: auto           # the template most models have, or a template's own text
//! ```
//!
//! Instead of `models`, one slice whose sources each take every layer, which mergekit merges
//! as the `models` form (LazyMergekit writes its recipes so):
//!
//! ```yaml
//! slices:
//!   - sources:
//!       - model: ./fine-tune-a
//!         layer_range: [0, 32]  # checked against the layers the tensor names show
//!       - model: ./fine-tune-b
//!         layer_range: [0, 32]
//!     parameters: {}            # between a source's parameters and the top-level ones
//! ```

mod pydantic;
mod yaml;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::method::{self, Kind, Layers, Method, Setting, Settings};
use crate::error::{Error, Result};
use crate::format::model_dir::model_key;
use crate::format::Checkpoint;
use crate::format::{same_file, Dtype};

/// The keys soup-merge reads at the top of a recipe.
const TOP_KEYS: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "chat_template",
    "parameters",
    "dtype",
    "out_dtype",
    "base_model",
    "tokenizer_source",
    "random_seed",
];

/// mergekit keys that exist but that soup-merge doesn't implement.
const UNSUPPORTED_KEYS: &[&str] = &["modules", "tokenizer"];

/// A recipe's `chat_template`, as mergekit reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatTemplate {
    /// `auto`: the template most of the models' tokenizers have.
    Auto,
    /// The template's Jinja text itself.
    Text(String),
}

/// A validated recipe.
#[derive(Clone)]
pub struct Recipe {
    pub method: &'static dyn Method,
    /// The ingredients besides the base, as written (relative paths are relative to the
    /// working directory, as in mergekit).
    pub models: Vec<PathBuf>,
    /// The parameters as written: top level, and per entry of `models`.
    pub settings: Settings,
    /// The output dtype: `out_dtype`, else `dtype`.
    pub dtype: Option<Dtype>,
    /// `base_model`, as written. For a method that uses a base it is that base (and a `models`
    /// entry naming it is the base, not another model); for one that doesn't, mergekit's
    /// one more model, already in `models`.
    pub base_model: Option<String>,
    /// `random_seed`.
    pub seed: Option<u64>,
    /// `tokenizer_source` naming a model other than the one whose companion files are
    /// copied: the model whose tokenizer files a directory output gets instead.
    pub tokenizer_source: Option<PathBuf>,
    /// `chat_template`: the template a directory output's tokenizer gets.
    pub chat_template: Option<ChatTemplate>,
    /// For a recipe written with `slices`: the layer count its sources' `layer_range` says
    /// every model has, and where. It is checked against the inputs' tensor names.
    pub slice_layers: Option<(u64, String)>,
    /// The file's text, kept for the output's metadata and model card.
    pub text: String,
}

impl std::fmt::Debug for Recipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recipe")
            .field("method", &self.method.name())
            .field("models", &self.models)
            .field("settings", &self.settings)
            .field("dtype", &self.dtype)
            .field("base_model", &self.base_model)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Recipe {
    /// Reads and validates a recipe file: a regular file of at most `MAX_RECIPE_BYTES`.
    pub fn read(path: &Path) -> Result<Recipe> {
        // A recipe that can't be read as one (a FIFO, a directory, too large) is a recipe
        // error like any other, for pipelines that branch on `--json`'s kind; a missing or
        // unreadable file stays an I/O error.
        let bytes = crate::format::small_file::read(path, MAX_RECIPE_BYTES, "recipe").map_err(
            |e| match e {
                Error::Header { path, reason } => Error::Recipe { path, reason },
                e => e,
            },
        )?;
        let text = String::from_utf8(bytes).map_err(|_| Error::Recipe {
            path: path.to_path_buf(),
            reason: "is not UTF-8 text; a recipe is a YAML file".into(),
        })?;
        Recipe::parse(path, &text)
    }

    /// Validates a recipe's text. `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Recipe> {
        let fail = |reason: String| Error::Recipe {
            path: path.to_path_buf(),
            reason,
        };
        // Editors on Windows start UTF-8 files with a byte-order mark, which PyYAML (and so
        // mergekit) skips.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let doc = yaml::load(text).map_err(fail)?;
        let top = doc.as_mapping().ok_or_else(|| {
            fail("is not a mergekit recipe: expected a mapping with merge_method and models".into())
        })?;
        // mergekit-moe's configs are YAML of another shape, whose keys would each be
        // "unknown" here with advice to remove them; the one they all have says what the
        // file is.
        if top.contains_key("experts") && !top.contains_key("merge_method") {
            return Err(fail(
                "is a mergekit-moe config (key 'experts'), which builds a mixture of experts from the models; soup-merge merges models into one of the same shape: run mergekit-moe for it".into(),
            ));
        }
        for key in keys(top, "").map_err(fail)? {
            if UNSUPPORTED_KEYS.contains(&key.as_str()) {
                return Err(fail(format!(
                    "key '{key}' is not supported; soup-merge reads {}; remove it or run mergekit",
                    TOP_KEYS.join(", ")
                )));
            }
            if !TOP_KEYS.contains(&key.as_str()) {
                return Err(fail(format!(
                    "unknown key '{key}'; soup-merge reads {}: fix its spelling or remove it (mergekit would silently ignore it)",
                    TOP_KEYS.join(", ")
                )));
            }
        }
        let method = match top.get("merge_method") {
            Some(Value::String(m)) => method::find(m).ok_or_else(|| {
                fail(format!(
                    "merge_method '{}' is not supported; soup-merge runs {}",
                    cut(m),
                    method::names()
                ))
            })?,
            Some(_) => return Err(fail("merge_method must be a string such as linear".into())),
            None => return Err(fail("has no merge_method; add merge_method: linear".into())),
        };

        let ingredients = Ingredients::read(top, method).map_err(fail)?;
        let base_model = match (top.get("base_model"), ingredients.base_model) {
            (None | Some(Value::Null), None) => None,
            (Some(v), None) | (None | Some(Value::Null), Some((v, _))) => {
                let at = ingredients.base_model.map_or("base_model", |(_, at)| at);
                Some(
                    model_path(v, at)
                        .map_err(fail)?
                        .to_string_lossy()
                        .into_owned(),
                )
            }
            // Both naming one model is the same recipe (a tool that writes the slice out in
            // full repeats the base there); two different ones are a conflict to report.
            (Some(top_base), Some((slice_base, at))) => {
                let top_base = model_path(top_base, "base_model").map_err(fail)?;
                let slice_base = model_path(slice_base, at).map_err(fail)?;
                if model_key(&top_base) != model_key(&slice_base) {
                    return Err(fail(format!(
                        "has both base_model and {at}, naming different models; give the base once (the slice's would win in mergekit)"
                    )));
                }
                Some(slice_base.to_string_lossy().into_owned())
            }
        };
        let base_used = method.base() != method::BaseUse::Unused;

        let mut global = match top.get("parameters") {
            Some(params) => parameters(params, "parameters", method, true).map_err(fail)?,
            None => Vec::new(),
        };

        // A slice's parameters rank between a model's and the top-level ones; with one slice
        // covering every layer they apply to every tensor, so they are top-level ones, unless
        // both levels name a parameter and the slice's filters can leave a tensor to the top.
        for (key, setting, at) in ingredients.parameters {
            match global.iter().position(|(k, _, _)| *k == key) {
                None => global.push((key, setting, at)),
                Some(i) if decides_every_tensor(&setting) => global[i] = (key, setting, at),
                Some(i) => {
                    return Err(fail(format!(
                        "{at} and {} both set {key}, and the slice's filters leave some tensors to the top level, an order soup-merge does not keep; give {key} in one place",
                        global[i].2
                    )))
                }
            }
        }
        let models = &ingredients.entries;
        let mut paths: Vec<PathBuf> = Vec::new();
        let mut given_at: Vec<String> = Vec::new();
        let mut per_model = Vec::new();
        // Each model's index in `models`, for messages (the base's own entry is skipped).
        let mut listed_at = HashMap::new();
        let base_key = base_model.as_deref().map(|b| model_key(Path::new(b)));
        let mut base_at = None;
        for (i, entry) in models.iter().enumerate() {
            let at = format!("{}[{i}]", ingredients.at);
            let entry = entry.as_mapping().ok_or_else(|| {
                fail(format!(
                    "{at} must be a mapping with model: and parameters:"
                ))
            })?;
            let mut model = None;
            let mut params = None;
            for key in keys(entry, &format!("{at}.")).map_err(fail)? {
                let value = &entry[key.as_str()];
                match key.as_str() {
                    "model" => {
                        model = Some(model_path(value, &format!("{at}.model")).map_err(fail)?)
                    }
                    // Read once the entry is known to be the base or not.
                    "parameters" => params = Some(value),
                    // Checked with the slice, which needs every source's.
                    "layer_range" if ingredients.slice_layers.is_some() => {}
                    other => {
                        return Err(fail(format!(
                        "{at}.{other} is not supported; a model entry takes model: and parameters:{}",
                        if ingredients.slice_layers.is_some() { " (and layer_range:)" } else { "" }
                    )))
                    }
                }
            }
            let model = model.ok_or_else(|| fail(format!("{at} has no model:")))?;
            let key = model_key(&model);
            let params_at = format!("{at}.parameters");
            // mergekit lists the base among the models too; that entry is the base.
            if base_used && base_key.as_ref() == Some(&key) {
                if let Some(j) = &base_at {
                    return Err(fail(format!(
                        "{at}.model {} is the base_model again, as {j} is; mergekit refuses a model listed twice: list the base once",
                        model.display()
                    )));
                }
                // Its parameters change nothing (mergekit reads a model's parameters for the
                // models besides the base, so it never validates their values), and recipes
                // copied around carry them, so they are accepted; a name the method doesn't
                // know is still a typo to report.
                if let Some(params) = params {
                    parameters(params, &params_at, method, false).map_err(|e| {
                        fail(format!("{e} (the base's own parameters are not used)"))
                    })?;
                }
                base_at = Some(at);
                continue;
            }
            // mergekit refuses a repeated input; merging it twice would silently double its
            // weight in a method that normalises, and skew TIES' sign election.
            if let Some(j) = listed_at.get(&key) {
                return Err(fail(format!(
                    "{at}.model {} is the same model as {j}; mergekit refuses a model listed twice: list it once, with the weight you want",
                    model.display(),
                )));
            }
            listed_at.insert(key, at.clone());
            paths.push(model);
            given_at.push(at);
            per_model.push(match params {
                Some(params) => parameters(params, &params_at, method, true).map_err(fail)?,
                None => Vec::new(),
            });
        }
        // mergekit merges a base_model that the method doesn't use as one more model, after
        // the listed ones, with the top-level parameters only (its normalize_config), unless
        // a models entry already names it.
        let mut base_added = false;
        if let Some(b) = base_model.as_deref().filter(|_| !base_used) {
            if !paths.iter().any(|p| same_file(Path::new(b), p)) {
                paths.push(PathBuf::from(b));
                given_at.push("base_model".into());
                per_model.push(Vec::new());
                base_added = true;
            }
        }

        let mut settings = Settings::new(paths.len());
        settings.given_at = given_at;
        for (name, s, at) in global {
            settings.set_global(&name, s, at);
        }
        for (m, params) in per_model.into_iter().enumerate() {
            for (name, s, at) in params {
                settings.set_model(m, &name, s, at);
            }
        }
        // Layer counts are only known from the inputs' headers; the plan checks gradient
        // lengths against them.
        settings.check(method, u64::MAX).map_err(fail)?;
        let as_one_more =
            "base_model is merged as one more model, as mergekit does for a method without a base";
        if method.name() == "linear" {
            for (model, at) in settings.models.iter().zip(&settings.given_at) {
                if !model.contains_key("weight") && !settings.global.contains_key("weight") {
                    return Err(fail(if at == "base_model" {
                        format!("{as_one_more}, and it has no weight: give a top-level parameters.weight, list it under models with its weight, or leave base_model out")
                    } else {
                        format!("{at} has no parameters.weight (and there is no default parameters.weight)")
                    }));
                }
            }
        }
        let has_base = base_used && base_model.is_some();
        method.check_models(paths.len(), has_base).map_err(|e| {
            let why = if base_added {
                format!(" ({as_one_more}; leave base_model out)")
            } else {
                String::new()
            };
            fail(format!("merge_method {}: {e}{why}", method.name()))
        })?;
        if method.base() == method::BaseUse::Required && base_model.is_none() {
            return Err(fail(format!(
                "merge_method {} needs a base_model",
                method.name()
            )));
        }

        // The model whose tokenizer is copied: by default the base_model's (the first model's
        // without one), whose other companion files (config.json) come along anyway.
        let copied = base_model
            .as_deref()
            .map(PathBuf::from)
            .or(paths.first().cloned());
        let tokenizer_source = match top.get("tokenizer_source") {
            None | Some(Value::Null) => None,
            // Without a base_model, "base" is the first model, whose tokenizer soup-merge
            // copies anyway (mergekit takes the first of an unordered set of the models).
            Some(Value::String(s)) if s == "base" => None,
            // A model of the recipe named by its path, as mergekit's generated recipes do.
            Some(v) => {
                let named = model_path(v, "tokenizer_source").ok().and_then(|p| {
                    let key = model_key(&p);
                    copied
                        .iter()
                        .chain(&paths)
                        .find(|m| model_key(m) == key)
                        .cloned()
                });
                match named {
                    Some(m) if copied.as_ref() == Some(&m) => None,
                    Some(m) => Some(m),
                    None => {
                        return Err(fail(format!(
                            "key 'tokenizer_source' is not supported with value {}; soup-merge copies the tokenizer of one of the recipe's models: name one (by its path as the recipe writes it), use base, or leave it out ('union' builds a new vocabulary, which it does not do)",
                            show(v)
                        )))
                    }
                }
            }
        };
        let chat_template = match top.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "auto" => Some(ChatTemplate::Auto),
            // mergekit takes a string of at least 20 characters with a `{` as the template
            // itself; a shorter one names a template file it carries.
            Some(Value::String(s)) if s.chars().count() >= 20 && s.contains('{') => {
                Some(ChatTemplate::Text(s.clone()))
            }
            Some(Value::String(s)) => {
                return Err(fail(format!(
                    "chat_template '{}' names one of mergekit's bundled templates, which soup-merge does not carry; give auto (the template most of the models have), or the template's Jinja text",
                    cut(s)
                )))
            }
            Some(v) => {
                return Err(fail(format!(
                    "chat_template is {}, not auto or a template's text",
                    show(v)
                )))
            }
        };
        let seed = match top.get("random_seed") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            Some(v) => {
                return Err(fail(format!(
                    "random_seed is {}, not a whole number of at least 0",
                    show(v)
                )))
            }
        };

        let dtype = |key: &str| -> Result<Option<Dtype>> {
            match top.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => torch_dtype(s).map(Some).ok_or_else(|| {
                    fail(format!(
                        "{key} '{}' is not supported; use float32, float16, bfloat16 or float64",
                        cut(s)
                    ))
                }),
                Some(v) => Err(fail(format!(
                    "{key} is {}, not a dtype name such as bfloat16",
                    show(v)
                ))),
            }
        };
        let out_dtype = dtype("out_dtype")?;
        let dtype = out_dtype.or(dtype("dtype")?);
        let recipe = Recipe {
            method,
            models: paths,
            settings,
            dtype,
            base_model,
            seed,
            tokenizer_source,
            chat_template,
            slice_layers: ingredients.slice_layers,
            text: text.to_string(),
        };
        if let Some(weights) = recipe.linear_weights_as_written() {
            let normalize = recipe.linear_normalize();
            let sum: f64 = weights.iter().sum();
            if normalize && (sum == 0.0 || !sum.is_finite()) {
                return Err(fail(format!(
                    "the weights sum to {sum}, so parameters.normalize (true by default) can't divide by it; set normalize: false or change the weights"
                )));
            }
        }
        Ok(recipe)
    }

    /// Checks a slice's `layer_range` against the layers each input's tensor names show
    /// (a recipe with `models` has nothing to check).
    pub fn check_slice_layers(&self, inputs: &[Checkpoint]) -> std::result::Result<(), String> {
        let Some((layers, at)) = &self.slice_layers else {
            return Ok(());
        };
        for input in inputs {
            let has = Layers::from_names(input.tensors().map(|t| t.name())).most();
            if has != *layers {
                let path = input.path().display();
                return Err(if has == 0 {
                    format!("{at} is [0, {layers}], but no tensor name of {path} has a layer index; list the models under models: instead of slices:")
                } else {
                    format!("{at} is [0, {layers}], but {path} has {has} layers; soup-merge merges every layer of each model: give [0, {has}] (mergekit would take part of the layers)")
                });
            }
        }
        Ok(())
    }

    /// Whether the base model is the merge's base (the method uses one and the recipe names
    /// it), an ingredient besides `models`.
    pub fn base_is_ingredient(&self) -> bool {
        self.method.base() != method::BaseUse::Unused && self.base_model.is_some()
    }

    /// For a linear merge whose weights are plain numbers: the weights the merge uses, as
    /// written or divided by their sum under `normalize` (mergekit divides the weighted sum by
    /// the sum of the weights; dividing the weights first is the same up to rounding). `None`
    /// for other methods and for per-layer or filtered weights.
    /// The weights are checked like `--weights`, with the same wording.
    pub fn linear_weights(&self) -> Option<Result<Vec<f64>>> {
        let weights = self.linear_weights_as_written()?;
        Some(super::weights::resolve(
            "the recipe's weights",
            Some(&weights),
            weights.len(),
            self.linear_normalize(),
        ))
    }

    fn linear_weights_as_written(&self) -> Option<Vec<f64>> {
        if self.method.name() != "linear" {
            return None;
        }
        let scalar = |g: Option<&method::Given>| match g.map(|g| &g.setting) {
            Some(Setting::Value(v)) => Some(*v),
            _ => None,
        };
        if self.settings.global.contains_key("normalize")
            && scalar(self.settings.global.get("normalize")).is_none()
        {
            return None;
        }
        // A model's own weight overrides the top-level one, whatever its form: a filtered or
        // per-layer weight is not plain, even where a plain top-level weight stands behind it
        // (that one only applies where the model's filters match nothing).
        self.settings
            .models
            .iter()
            .map(|m| {
                scalar(
                    m.get("weight")
                        .or_else(|| self.settings.global.get("weight")),
                )
            })
            .collect()
    }

    fn linear_normalize(&self) -> bool {
        match self.settings.global.get("normalize").map(|g| &g.setting) {
            Some(Setting::Value(v)) => *v != 0.0,
            _ => true,
        }
    }
}

/// Where a recipe lists its ingredients: `models`, or the sources of its one slice.
struct Ingredients<'a> {
    /// The entries, each a mapping with `model:` and `parameters:` (and, in a slice,
    /// `layer_range:`).
    entries: &'a [Value],
    /// Their key, for messages: `models` or `slices[0].sources`.
    at: &'static str,
    /// The slice's own parameters, with where each was given.
    parameters: Vec<(String, Setting, String)>,
    /// The slice's `base_model`, and where.
    base_model: Option<(&'a Value, &'static str)>,
    /// The layer count every source's `layer_range` covers, and where.
    slice_layers: Option<(u64, String)>,
}

impl<'a> Ingredients<'a> {
    /// The ingredients of a recipe's top level. mergekit takes exactly one of `models` and
    /// `slices`, and turns `models` into one slice whose sources take every layer of each
    /// model (its `normalize_config`); so one slice of such sources is the same merge, and is
    /// how many published recipes (LazyMergekit's SLERP, say) are written. Several slices, or
    /// sources with part of the layers, build a model from parts of others (a "frankenmerge"),
    /// which is not a soup: refused, naming the key.
    fn read(top: &'a Mapping, method: &dyn Method) -> std::result::Result<Ingredients<'a>, String> {
        let list = |v: &'a Value, at: &str| -> std::result::Result<&'a [Value], String> {
            match v.as_sequence() {
                Some(l) if !l.is_empty() => Ok(l),
                Some(_) => Err(format!("{at} is empty; list at least one ingredient")),
                None => Err(format!(
                    "{at} must be a list of entries with model: and parameters:"
                )),
            }
        };
        let slices = match (top.get("models"), top.get("slices")) {
            (Some(_), Some(_)) => {
                return Err("has both models and slices; mergekit takes one of them: list the ingredients under models:, or as one slice's sources".into())
            }
            (Some(models), None) => {
                return Ok(Ingredients {
                    entries: list(models, "models")?,
                    at: "models",
                    parameters: Vec::new(),
                    base_model: None,
                    slice_layers: None,
                })
            }
            (None, None) => {
                return Err(
                    "has no models; list the ingredients under models: with model: and parameters:"
                        .into(),
                )
            }
            (None, Some(slices)) => slices.as_sequence().ok_or(
                "slices must be a list of slices, each with sources: (model: and layer_range:)",
            )?,
        };
        let slice = match slices.as_slice() {
            [one] => one.as_mapping().ok_or(
                "slices[0] must be a mapping with sources: (model: and layer_range:)",
            )?,
            [] => return Err("slices is empty; list the ingredients under models:".into()),
            _ => {
                return Err(format!(
                    "slices has {} entries; several slices build one model from layers of others (a frankenmerge), which soup-merge does not do: it merges whole models, given under models: or as the sources of one slice that take every layer; use mergekit for this recipe",
                    slices.len()
                ))
            }
        };
        let mut read = Ingredients {
            entries: &[],
            at: "slices[0].sources",
            parameters: Vec::new(),
            base_model: None,
            slice_layers: None,
        };
        for key in keys(slice, "slices[0].")? {
            let value = &slice[key.as_str()];
            match key.as_str() {
                "sources" => read.entries = list(value, "slices[0].sources")?,
                "parameters" => {
                    read.parameters = parameters(value, "slices[0].parameters", method, true)?
                }
                "base_model" if value.is_null() => {}
                "base_model" => read.base_model = Some((value, "slices[0].base_model")),
                "residual_weight" => {
                    return Err("slices[0].residual_weight is not supported; remove it or use mergekit".into())
                }
                other => {
                    return Err(format!(
                        "slices[0].{other} is not supported; a slice takes sources:, parameters: and base_model:"
                    ))
                }
            }
        }
        if read.entries.is_empty() {
            return Err("slices[0] has no sources; list the models under sources: with model: and layer_range:".into());
        }
        // Every source's range: [0, layers], the same for all (mergekit requires equal
        // lengths).
        for (i, source) in read.entries.iter().enumerate() {
            let at = format!("slices[0].sources[{i}].layer_range");
            let Some(range) = source.as_mapping().map(|m| m.get("layer_range")) else {
                continue; // The entry itself is refused with the models.
            };
            let Some(range) = range else {
                return Err(format!(
                    "slices[0].sources[{i}] has no layer_range; give [0, LAYERS] to merge every layer"
                ));
            };
            // mergekit's `Tuple[int, int]`, which takes ["0", "8"] and [0, 8.0] as [0, 8].
            let bounds = range
                .as_sequence()
                .filter(|r| r.len() == 2)
                .and_then(|r| Some((pydantic::int(&r[0])?, pydantic::int(&r[1])?)));
            let end = match bounds {
                Some((0, end)) if end > 0 => end as u64,
                Some((start, end)) if 0 <= start && start <= end => {
                    return Err(format!(
                        "{at} is [{start}, {end}], part of the layers; soup-merge merges whole models: give [0, LAYERS], or use mergekit to build a model from some layers"
                    ))
                }
                Some((start, end)) => {
                    return Err(format!(
                        "{at} is [{start}, {end}], no range of layers: give [0, LAYERS]"
                    ))
                }
                None => {
                    return Err(format!(
                        "{at} is {}, not two whole numbers such as [0, 32]",
                        show(range)
                    ))
                }
            };
            match &read.slice_layers {
                Some((first, first_at)) if *first != end => {
                    return Err(format!(
                        "{at} ends at {end}, and {first_at} at {first}; mergekit requires the same number of layers from every source, and soup-merge every layer of each: give [0, LAYERS] to each"
                    ))
                }
                Some(_) => {}
                None => read.slice_layers = Some((end, at)),
            }
        }
        Ok(read)
    }
}

/// A `parameters:` mapping given at `at`, each name one of `method`'s and each value read for
/// its type; with `read` false, one mergekit never reads (the base model's own), whose values
/// only need to be scalars or lists of them.
fn parameters(
    v: &Value,
    at: &str,
    method: &dyn Method,
    read: bool,
) -> std::result::Result<Vec<(String, Setting, String)>, String> {
    // An empty `parameters:` is null, which mergekit reads as no parameters (its own examples
    // have one).
    if v.is_null() {
        return Ok(Vec::new());
    }
    let map = v
        .as_mapping()
        .ok_or_else(|| format!("{at} must be a mapping"))?;
    keys(map, &format!("{at}."))?
        .into_iter()
        .map(|name| {
            let at = format!("{at}.{name}");
            let param = method::declared(method, &name, &at)?;
            let setting = setting(&map[name.as_str()], &at, read.then_some(param.kind))?;
            Ok((name, setting, at))
        })
        .collect()
}

/// Whether a setting gives a value for every tensor, so that nothing falls through to the
/// level below it (a filter list without a catch-all entry leaves the unmatched tensors).
fn decides_every_tensor(setting: &Setting) -> bool {
    match setting {
        Setting::Value(_) | Setting::Gradient(_) => true,
        Setting::Conditional(entries) => {
            entries.iter().all(|(_, s)| decides_every_tensor(s))
                && entries
                    .iter()
                    .any(|(f, _)| f.is_none() || f.as_deref() == Some("*"))
        }
    }
}

/// One parameter's value in mergekit's syntax: a number, a bool, a list of them (a gradient over
/// the layers), or a list of `{filter, value}` entries. Each number is read as mergekit's pydantic
/// reads it for the parameter's `kind` (see [`scalar`]).
fn setting(v: &Value, at: &str, kind: Option<Kind>) -> std::result::Result<Setting, String> {
    match v {
        // One {filter, value} entry on its own, as mergekit takes it: a list of one.
        Value::Mapping(_) => setting(&Value::Sequence(vec![v.clone()]), at, kind),
        Value::Sequence(items) if items.is_empty() => Err(format!("{at} is an empty list")),
        // Numbers, or true/false for a flag's list (mergekit steps through those).
        Value::Sequence(items)
            if items
                .iter()
                .all(|x| !matches!(x, Value::Mapping(_) | Value::Sequence(_))) =>
        {
            items
                .iter()
                .enumerate()
                .map(|(i, x)| scalar(x, &format!("{at}[{i}]"), kind))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(Setting::Gradient)
        }
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("{at}[{i}]");
                let map = item.as_mapping().ok_or_else(|| {
                    format!(
                        "{at} is {}; a list holds numbers (a gradient) or filter/value entries",
                        show(item)
                    )
                })?;
                let mut filter = None;
                let mut value = None;
                for key in keys(map, &format!("{at}."))? {
                    match key.as_str() {
                        "filter" => match &map["filter"] {
                            Value::String(s) => filter = Some(s.clone()),
                            Value::Null => {}
                            other => {
                                return Err(format!("{at}.filter is {}, not a string", show(other)))
                            }
                        },
                        "value" => {
                            let v = setting(&map["value"], &format!("{at}.value"), kind)?;
                            if matches!(v, Setting::Conditional(_)) {
                                return Err(format!(
                                    "{at}.value nests filters; give a number or a list of numbers"
                                ));
                            }
                            value = Some(v);
                        }
                        other => {
                            return Err(format!(
                                "{at}.{other} is not supported; an entry takes filter: and value:"
                            ))
                        }
                    }
                }
                Ok((
                    filter,
                    value.ok_or_else(|| {
                        format!(
                            "{at} has no value; give one, as in {{filter: self_attn, value: 0.5}}"
                        )
                    })?,
                ))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Setting::Conditional),
        scalar_value => scalar(scalar_value, at, kind).map(Setting::Value),
    }
}

/// One value of a parameter, read as mergekit's pydantic validates it for the parameter's type
/// (it keeps the YAML scalar and validates it when a tensor needs it): a bool for a
/// true/false `kind` (as 1 or 0), else a float, which soup-merge also requires to be finite.
/// A `kind` of `None` is a value mergekit never reads (the base model's own parameters): any
/// scalar is taken, as 0.
fn scalar(v: &Value, at: &str, kind: Option<Kind>) -> std::result::Result<f64, String> {
    let scalar = matches!(v, Value::Bool(_) | Value::Number(_) | Value::String(_));
    // A string is quoted in the message: `weight: "yes"` is the string, `weight: yes` is 1.
    let shown = match v {
        Value::String(s) => format!("the string {:?}", cut(s)),
        v => show(v),
    };
    match kind {
        _ if !scalar => Err(format!(
            "{at} is {}, not a number, true/false or a list",
            show(v)
        )),
        None => Ok(0.0),
        Some(Kind::Bool) => pydantic::boolean(v).map(f64::from).ok_or_else(|| {
            format!(
                "{at} is {shown}, not true or false (mergekit also takes 1/0, yes/no, on/off): give true or false"
            )
        }),
        Some(Kind::Number { .. }) => match pydantic::float(v) {
            Some(x) if x.is_finite() => Ok(x),
            // pydantic takes them, and mergekit would write infinite or NaN tensors.
            Some(_) => Err(format!(
                "{at} is {shown}, not a finite number: give a finite number"
            )),
            None => Err(format!(
                "{at} is {shown}, which mergekit refuses for a number: give a number such as 0.5"
            )),
        },
    }
}

/// A mapping's keys, which must be strings.
fn keys(map: &Mapping, at: &str) -> std::result::Result<Vec<String>, String> {
    map.keys()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("key {at}{} is not a string", show(k)))
        })
        .collect()
}

/// A model reference as mergekit takes one: a path string, or its long form.
fn model_path(v: &Value, at: &str) -> std::result::Result<PathBuf, String> {
    match v {
        Value::String(s) if s.contains('+') && !Path::new(s).exists() => Err(format!(
            "{at} '{}' applies a LoRA (model+lora), which is not supported; merge the adapter first",
            cut(s)
        )),
        Value::String(s) if !s.is_empty() => local_path(s, at),
        Value::Mapping(map) => model_reference(map, at),
        other => Err(format!("{at} is {}, not a path", show(other))),
    }
}

/// mergekit's long form of a model reference, `{model: PATH}` or `{model: {path: PATH}}`
/// (what its own config dump writes for a reference with extra fields), read as the path.
/// Its other fields change which weights are read, so each is refused by name rather than
/// dropped: a LoRA to apply, a Hub revision, an architecture override.
fn model_reference(map: &Mapping, at: &str) -> std::result::Result<PathBuf, String> {
    let mut path = None;
    for key in keys(map, &format!("{at}."))? {
        let value = &map[key.as_str()];
        match key.as_str() {
            _ if value.is_null() => {}
            "model" => {
                path = Some(match value {
                    // Inside `model:` a '+' is part of the path: mergekit splits a LoRA off
                    // only the short form.
                    Value::String(s) if !s.is_empty() => local_path(s, &format!("{at}.model"))?,
                    Value::Mapping(inner) => model_path_fields(inner, &format!("{at}.model"))?,
                    other => {
                        return Err(format!("{at}.model is {}, not a path", show(other)));
                    }
                })
            }
            "lora" => {
                return Err(format!(
                    "{at}.lora applies a LoRA, which is not supported; merge the adapter into the model first"
                ))
            }
            "override_architecture" => {
                return Err(format!(
                    "{at}.override_architecture is not supported; soup-merge reads tensors by name, whatever the architecture: remove it"
                ))
            }
            other => {
                return Err(format!(
                    "{at}.{other} is not supported; a model reference takes model: (a local path)"
                ))
            }
        }
    }
    path.ok_or_else(|| format!("{at} has no model:; give the path, as in {{model: ./fine-tune}}"))
}

/// The `{path, revision}` mapping inside a long model reference.
fn model_path_fields(map: &Mapping, at: &str) -> std::result::Result<PathBuf, String> {
    let mut path = None;
    for key in keys(map, &format!("{at}."))? {
        let value = &map[key.as_str()];
        match key.as_str() {
            _ if value.is_null() => {}
            "path" => match value {
                Value::String(s) if !s.is_empty() => {
                    path = Some(local_path(s, &format!("{at}.path"))?)
                }
                other => return Err(format!("{at}.path is {}, not a path", show(other))),
            },
            "revision" => {
                return Err(format!(
                    "{at}.revision names a Hub revision, which is not supported; download that revision and give its local path"
                ))
            }
            other => {
                return Err(format!(
                    "{at}.{other} is not supported; a model path takes path: (a local path)"
                ))
            }
        }
    }
    path.ok_or_else(|| format!("{at} has no path:; give one, as in {{path: ./fine-tune}}"))
}

/// A path string, short form or long.
fn local_path(s: &str, at: &str) -> std::result::Result<PathBuf, String> {
    // A shell expands `~`; a YAML file reaches us with it as written (mergekit doesn't
    // expand it either), and the missing path would read as a model to download.
    if s.starts_with('~') && !Path::new(s).exists() {
        return Err(format!(
            "{at} '{}' starts with ~, which is not expanded in a recipe; write the path in full (or relative to the working directory)",
            cut(s)
        ));
    }
    Ok(PathBuf::from(s))
}

/// PyTorch dtype names, as mergekit reads them.
fn torch_dtype(name: &str) -> Option<Dtype> {
    match name.strip_prefix("torch.").unwrap_or(name) {
        "float32" => Some(Dtype::F32),
        "float16" => Some(Dtype::F16),
        "bfloat16" => Some(Dtype::BF16),
        "float64" => Some(Dtype::F64),
        _ => None,
    }
}

/// A value as messages quote it: one line, cut short, since a value can be a list of a
/// million numbers and the message is one line on a terminal.
fn show(v: &Value) -> String {
    if let Value::Tagged(t) = v {
        // `yaml::load`'s tag for what PyYAML reads as a date.
        if t.tag == "timestamp" {
            return format!(
                "{} (a date in YAML 1.1, as mergekit reads it; quote it for text)",
                cut(t.value.as_str().unwrap_or_default())
            );
        }
    }
    cut(&serde_yaml::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_else(|_| "?".into()))
}

/// Text from the recipe as messages quote it: its first 60 characters.
fn cut(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

/// The largest recipe read: real ones are a few KB.
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe> {
        Recipe::parse(Path::new("r.yaml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn reads_a_linear_recipe_with_mergekit_defaults() {
        let two = "models:\n  - model: x\n    parameters:\n      weight: 3\n  - model: y\n    parameters: {weight: 1.0}\n";
        let r = parse(&format!("merge_method: linear\n{two}dtype: bfloat16\n")).unwrap();
        assert_eq!(r.models, [PathBuf::from("x"), PathBuf::from("y")]);
        assert_eq!(r.linear_weights().unwrap().unwrap(), [0.75, 0.25]);
        assert_eq!(r.dtype, Some(Dtype::BF16));
        // A base_model that linear doesn't use is one more model, as mergekit merges it, with
        // the top-level parameters; without a weight for it, that is an error.
        let e = err(&format!("merge_method: linear\nbase_model: b\n{two}"));
        assert!(
            e.contains("one more model") && e.contains("no weight"),
            "{e}"
        );
        let r = parse(&format!(
            "merge_method: linear\nbase_model: b\nparameters: {{weight: 1}}\n{two}"
        ))
        .unwrap();
        assert_eq!(r.models, ["x", "y", "b"].map(PathBuf::from));
        assert_eq!(r.linear_weights().unwrap().unwrap(), [0.6, 0.2, 0.2]);
        assert_eq!(r.base_model.as_deref(), Some("b"));
        assert!(!r.base_is_ingredient());
        // Listed among the models, it is merged once.
        let r = parse("merge_method: linear\nbase_model: y\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: 1}}]\n").unwrap();
        assert_eq!(r.models, ["x", "y"].map(PathBuf::from));
        // passthrough takes one model, so a base_model is refused, naming why.
        let e = err("merge_method: passthrough\nbase_model: b\nmodels: [{model: x}]\n");
        assert!(e.contains("one more model"), "{e}");
        let r = parse("merge_method: linear\nparameters: {normalize: false, weight: 2}\nmodels: [{model: x}, {model: y}]\ndtype: float16\nout_dtype: float32\n").unwrap();
        assert_eq!(r.linear_weights().unwrap().unwrap(), [2.0, 2.0]);
        assert_eq!(r.dtype, Some(Dtype::F32));
    }

    /// Recipes as mergekit's own examples and Windows editors write them: a byte-order mark,
    /// an empty `parameters:`, a `<<:` merge key, and `tokenizer_source: base` with no base.
    #[test]
    fn reads_what_pyyaml_and_mergekit_accept() {
        let plain = "merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n  - model: x\n    parameters: {weight: 1, density: 0.5}\n";
        let text = |r: &Recipe| format!("{:?}", r.settings.models);
        let want = text(&parse(plain).unwrap());
        let bom = parse(&format!("\u{feff}{plain}")).unwrap();
        assert_eq!(text(&bom), want);
        // Null parameters, at the top and in an entry, are no parameters.
        let empty = "merge_method: ties\nbase_model: b\nparameters:\ndtype: bfloat16\nmodels:\n  - model: b\n    parameters:\n  - model: x\n    parameters: {weight: 1, density: 0.5}\n";
        let r = parse(empty).unwrap();
        assert_eq!(text(&r), want);
        assert!(r.settings.global.is_empty());
        // A merge key copies the anchored mapping; the entry's own keys win.
        let merged = "merge_method: ties\nbase_model: b\nmodels:\n  - model: x\n    parameters: &p\n      weight: 1.0\n      density: 0.5\n  - model: y\n    parameters:\n      <<: *p\n      weight: 0.8\n";
        let r = parse(merged).unwrap();
        let value = |m: usize, k: &str| match &r.settings.models[m][k].setting {
            Setting::Value(v) => *v,
            other => panic!("{other:?}"),
        };
        assert_eq!((value(1, "weight"), value(1, "density")), (0.8, 0.5));
        assert_eq!((value(0, "weight"), value(0, "density")), (1.0, 0.5));
        // Without a base_model, "base" is the first model's tokenizer.
        let r = parse("merge_method: passthrough\nmodels: [{model: x}]\ntokenizer_source: base\ndtype: bfloat16\n").unwrap();
        assert_eq!(r.base_model, None);
        // A merge key of something other than a mapping is an error.
        assert!(
            err("merge_method: linear\nmodels:\n  - model: x\n    parameters:\n      <<: 3\n")
                .contains("YAML")
        );
    }

    #[test]
    fn reads_methods_gradients_filters_and_the_base() {
        let r = parse(
            "merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n  - model: x\n    parameters:\n      weight: [0.1, 0.9]\n      density:\n        - filter: mlp\n          value: 0.3\n        - value: 0.5\nparameters: {normalize: false, weight: 1}\nrandom_seed: 7\ntokenizer_source: base\n",
        )
        .unwrap();
        assert_eq!(r.method.name(), "ties");
        // The models entry that is the base is the base, not a model.
        assert_eq!(r.models, [PathBuf::from("x")]);
        assert!(r.base_is_ingredient());
        assert_eq!(r.seed, Some(7));
        assert!(r.linear_weights().is_none());
        let w = &r.settings.models[0]["weight"].setting;
        assert_eq!(w, &Setting::Gradient(vec![0.1, 0.9]));
        let d = &r.settings.models[0]["density"].setting;
        assert_eq!(d.evaluate("layers.0.mlp.w", 0.0, false), Some(0.3));
        assert_eq!(d.evaluate("layers.0.attn.w", 0.0, false), Some(0.5));
    }

    /// LazyMergekit's SLERP recipe, as published: one slice whose sources take every layer.
    const SLICED_SLERP: &str = "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 32]\n      - model: b\n        layer_range: [0, 32]\nmerge_method: slerp\nbase_model: a\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\ndtype: bfloat16\n";

    #[test]
    fn one_slice_of_whole_models_is_the_models_recipe() {
        let sliced = parse(SLICED_SLERP).unwrap();
        let listed = parse(&SLICED_SLERP.replace(
            "slices:\n  - sources:\n      - model: a\n        layer_range: [0, 32]\n      - model: b\n        layer_range: [0, 32]\n",
            "models:\n  - model: a\n  - model: b\n",
        ))
        .unwrap();
        assert_eq!(sliced.models, listed.models);
        assert_eq!(sliced.models, [PathBuf::from("b")]);
        assert_eq!(sliced.base_model, listed.base_model);
        assert_eq!(
            sliced.settings.global["t"].setting,
            listed.settings.global["t"].setting
        );
        assert_eq!(
            sliced.slice_layers,
            Some((32, "slices[0].sources[0].layer_range".into()))
        );
        assert_eq!(listed.slice_layers, None);
        assert_eq!(sliced.settings.given_at, ["slices[0].sources[1]"]);

        // A source's parameters are that model's; the slice's rank between them and the top
        // level, and its base_model is the base.
        let r = parse("merge_method: ties\nslices:\n  - base_model: b\n    parameters: {density: 0.4}\n    sources:\n      - {model: b, layer_range: [0, 4]}\n      - {model: x, layer_range: [0, 4], parameters: {weight: 0.7}}\n      - {model: y, layer_range: [0, 4], parameters: {weight: 0.3, density: 0.9}}\nparameters: {normalize: false}\n").unwrap();
        assert_eq!(r.base_model.as_deref(), Some("b"));
        assert_eq!(r.models, [PathBuf::from("x"), PathBuf::from("y")]);
        assert_eq!(r.settings.models[0]["weight"].setting, Setting::Value(0.7));
        assert_eq!(r.settings.models[1]["density"].setting, Setting::Value(0.9));
        assert_eq!(r.settings.global["density"].setting, Setting::Value(0.4));
        assert_eq!(
            r.settings.global["density"].at,
            "slices[0].parameters.density"
        );
        assert_eq!(r.settings.global["normalize"].setting, Setting::Value(0.0));
        // The same base at both levels is that base.
        let r = parse("merge_method: ties\nbase_model: b\nslices:\n  - base_model: b\n    sources:\n      - {model: b, layer_range: [0, 4]}\n      - {model: x, layer_range: [0, 4], parameters: {weight: 1}}\n").unwrap();
        assert_eq!(r.base_model.as_deref(), Some("b"));
        assert_eq!(r.models, [PathBuf::from("x")]);
        // A slice's value that decides every tensor shadows the top level's, as in mergekit;
        // one whose filters can fall through to it is refused rather than misordered.
        let both = |slice: &str| {
            parse(&format!("merge_method: ties\nbase_model: b\nslices:\n  - parameters: {{density: {slice}}}\n    sources:\n      - {{model: b, layer_range: [0, 4]}}\n      - {{model: x, layer_range: [0, 4], parameters: {{weight: 1}}}}\nparameters: {{density: 0.2}}\n"))
        };
        assert_eq!(
            both("0.4").unwrap().settings.global["density"].setting,
            Setting::Value(0.4)
        );
        let e = both("[{filter: mlp, value: 0.4}]").unwrap_err().to_string();
        assert!(
            e.contains("slices[0].parameters.density")
                && e.contains("parameters.density")
                && e.contains("one place"),
            "{e}"
        );
    }

    /// mergekit's `layer_range` is pydantic's `Tuple[int, int]`: quoted whole numbers, floats
    /// without a fraction and bools are its ints. Quoted ones used to be refused.
    #[test]
    fn a_layer_range_takes_the_whole_numbers_mergekit_takes() {
        for range in [
            "[0, 32]",
            "['0', '32']",
            "[\"0\", \" 32 \"]",
            "[0, 32.0]",
            "['0', '32.0']",
            "[false, '3_2']",
            "[0x0, 0x20]",
            "[0, 040]",
        ] {
            let r = parse(&SLICED_SLERP.replace("[0, 32]", range)).unwrap();
            assert_eq!(
                r.slice_layers,
                Some((32, "slices[0].sources[0].layer_range".into())),
                "{range}"
            );
        }
    }

    #[test]
    fn a_tokenizer_source_names_one_of_the_models() {
        let with = |extra: &str| {
            parse(&format!("merge_method: ties\nbase_model: org/base\nmodels:\n  - model: org/base\n  - {{model: org/ft, parameters: {{weight: 1, density: 0.5}}}}\n{extra}"))
        };
        with("tokenizer_source: org/base\n").unwrap();
        with("tokenizer_source: {model: org/base}\n").unwrap();
        assert_eq!(
            with("tokenizer_source: org/base\n")
                .unwrap()
                .tokenizer_source,
            None
        );
        // Another of the models: its tokenizer instead.
        let r = with("tokenizer_source: org/ft\n").unwrap();
        assert_eq!(r.tokenizer_source, Some(PathBuf::from("org/ft")));
        let e = with("tokenizer_source: org/other\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer_source") && e.contains("one of the recipe's models"),
            "{e}"
        );
        assert!(with("tokenizer_source: union\n").is_err());
        // Without a base_model, the first model's tokenizer is copied.
        let first = |name: &str| {
            parse(&format!("merge_method: linear\nparameters: {{weight: 1}}\nmodels: [{{model: a}}, {{model: b}}]\ntokenizer_source: {name}\n"))
        };
        assert_eq!(first("a").unwrap().tokenizer_source, None);
        assert_eq!(
            first("b").unwrap().tokenizer_source,
            Some(PathBuf::from("b"))
        );
        assert!(first("c").is_err());
    }

    #[test]
    fn slices_that_are_not_whole_models_are_refused_naming_the_key() {
        let sources = |ranges: &[&str]| {
            let mut s = String::from(
                "merge_method: linear\nparameters: {weight: 1}\nslices:\n  - sources:\n",
            );
            for (i, r) in ranges.iter().enumerate() {
                s += &format!("      - {{model: m{i}, {r}}}\n");
            }
            s
        };
        for (text, needles) in [
            // A frankenmerge: layers of two models stacked.
            (
                format!("{}  - sources:\n      - {{model: m1, layer_range: [0, 4]}}\n", sources(&["layer_range: [0, 4]"])),
                &["slices has 2 entries", "frankenmerge", "mergekit"][..],
            ),
            (sources(&["layer_range: [0, 4]", "layer_range: [0, 6]"]), &["slices[0].sources[1].layer_range ends at 6", "slices[0].sources[0].layer_range at 4"][..]),
            (sources(&["layer_range: [2, 4]"]), &["slices[0].sources[0].layer_range is [2, 4]", "part of the layers"][..]),
            (sources(&["layer_range: [0, 0]"]), &["part of the layers"][..]),
            (sources(&["layer_range: [0]"]), &["not two whole numbers"][..]),
            (sources(&["layer_range: [0, -1]"]), &["is [0, -1], no range of layers: give [0, LAYERS]"][..]),
            (sources(&["layer_range: [0, 4.5]"]), &["not two whole numbers"][..]),
            (sources(&["layer_range: ['0', 'four']"]), &["not two whole numbers"][..]),
            (sources(&["layer_range: ['0', '4', '8']"]), &["not two whole numbers"][..]),
            (sources(&["layer_range: '0, 4'"]), &["not two whole numbers"][..]),
            (sources(&["layer_range: [0, 4]", "layer_range: ['0', '6']"]), &["slices[0].sources[1].layer_range ends at 6"][..]),
            (sources(&["layer_range: 4"]), &["not two whole numbers"][..]),
            (sources(&["parameters: {weight: 1}"]), &["slices[0].sources[0] has no layer_range"][..]),
            (sources(&["layer_range: [0, 4], revision: main"]), &["slices[0].sources[0].revision is not supported"][..]),
            ("merge_method: linear\nslices: []\n".into(), &["slices is empty"][..]),
            ("merge_method: linear\nslices: {sources: []}\n".into(), &["slices must be a list"][..]),
            ("merge_method: linear\nslices:\n  - sources: []\n".into(), &["slices[0].sources is empty"][..]),
            ("merge_method: linear\nslices:\n  - parameters: {weight: 1}\n".into(), &["slices[0] has no sources"][..]),
            (format!("{}    residual_weight: 0.5\n", sources(&["layer_range: [0, 4]"])), &["slices[0].residual_weight is not supported"][..]),
            (format!("{}    extra: 1\n", sources(&["layer_range: [0, 4]"])), &["slices[0].extra is not supported"][..]),
            (format!("{}models: [{{model: m0}}]\n", sources(&["layer_range: [0, 4]"])), &["both models and slices"][..]),
            (
                "merge_method: ties\nbase_model: b\nslices:\n  - base_model: c\n    sources:\n      - {model: x, layer_range: [0, 4]}\n".into(),
                &["both base_model and slices[0].base_model, naming different models"][..],
            ),
            (
                "merge_method: linear\nparameters: {weight: 1}\nslices:\n  - sources:\n      - {model: x, layer_range: [0, 4]}\n      - {model: x, layer_range: [0, 4]}\n".into(),
                &["slices[0].sources[1].model", "same model as slices[0].sources[0]"][..],
            ),
        ] {
            let e = err(&text);
            for n in needles {
                assert!(e.contains(n), "{text}\n{e}");
            }
        }
    }

    #[test]
    fn reads_values_as_mergekit_does_through_pyyaml_and_pydantic() {
        let r = parse(
            "merge_method: ties\nbase_model: b\nmodels:\n  - model: x\n    parameters:\n      weight: {filter: mlp, value: '0.25'}\nparameters: {normalize: 'off', density: '0.5', weight: 1}\n",
        )
        .unwrap();
        let get = |m: Option<usize>, k: &str, name: &str| {
            let s = match m {
                Some(m) => &r.settings.models[m][k].setting,
                None => &r.settings.global[k].setting,
            };
            s.evaluate(name, 0.0, false)
        };
        assert_eq!(get(None, "normalize", "w"), Some(0.0));
        assert_eq!(get(None, "density", "w"), Some(0.5));
        assert_eq!(get(Some(0), "weight", "layers.0.mlp.w"), Some(0.25));
        assert_eq!(get(Some(0), "weight", "layers.0.attn.w"), None);
        let e = err("merge_method: linear\nparameters: {weight: lots}\nmodels: [{model: x}]\n");
        assert!(
            e.contains("parameters.weight") && e.contains("refuses for a number"),
            "{e}"
        );
    }

    /// A number spelt as mergekit 0.1.5 takes it (PyYAML's YAML 1.1 resolves the unquoted
    /// ones; pydantic reads a string as a float): the value mergekit uses, or refused naming
    /// the key where mergekit refuses. A quoted "yes" used to be read as 1.
    #[test]
    fn a_number_is_read_as_mergekit_reads_it() {
        let weight = |w: &str| {
            parse(&format!("merge_method: linear\nparameters: {{normalize: false}}\nmodels:\n  - model: x\n    parameters:\n      weight: {w}\n  - model: y\n    parameters: {{weight: 1}}\n"))
                .map(|r| r.linear_weights().unwrap().unwrap()[0])
        };
        for (w, want) in [
            ("0.5", 0.5),
            ("'0.5'", 0.5),
            ("\" 0.5 \"", 0.5),
            ("'1e-1'", 0.1),
            ("1e-1", 0.1),
            ("'.5'", 0.5),
            (".5", 0.5),
            ("1_000", 1000.0),
            ("'1_000'", 1000.0),
            ("010", 8.0),
            ("'010'", 10.0),
            ("0x10", 16.0),
            ("+1", 1.0),
            ("'+1'", 1.0),
            ("1.", 1.0),
            ("'1'", 1.0),
            ("1:30", 90.0),
            ("yes", 1.0),
            ("on", 1.0),
            ("Off", 0.0),
            ("true", 1.0),
            ("FALSE", 0.0),
        ] {
            assert_eq!(weight(w).unwrap(), want, "{w}");
        }
        for (w, says) in [
            (
                "'yes'",
                "is the string \"yes\", which mergekit refuses for a number",
            ),
            ("\"true\"", "is the string \"true\", which"),
            ("y", "is the string \"y\", which"),
            ("t", "is the string \"t\", which"),
            ("'t'", "is the string \"t\", which"),
            ("0o10", "is the string \"0o10\", which"),
            ("'0x10'", "is the string \"0x10\", which"),
            ("'1:30'", "is the string \"1:30\", which"),
            ("'_1'", "is the string \"_1\", which"),
            ("'1 000'", "is the string \"1 000\", which"),
            ("2024-01-31", "is 2024-01-31 (a date in YAML 1.1"),
            ("'inf'", "is the string \"inf\", not a finite number"),
            (".inf", "is .inf, not a finite number"),
            (".nan", "not a finite number"),
            ("1e400", "not a finite number"),
            (
                "[0.5, 'on']",
                "models[0].parameters.weight[1] is the string \"on\", which",
            ),
        ] {
            let e = weight(w).unwrap_err().to_string();
            assert!(
                e.contains("models[0].parameters.weight") && e.contains(says),
                "{w}: {e}"
            );
        }
        // In a filter's value, and in the top-level default, alike.
        let e = err("merge_method: linear\nparameters: {weight: 'yes'}\nmodels: [{model: x}]\n");
        assert!(
            e.contains("parameters.weight is the string \"yes\", which"),
            "{e}"
        );
        let e = err("merge_method: ties\nbase_model: b\nmodels: [{model: x, parameters: {weight: 1, density: [{filter: mlp, value: 'on'}]}}]\n");
        assert!(
            e.contains("models[0].parameters.density[0].value is the string \"on\", which"),
            "{e}"
        );
    }

    /// true/false parameters spelt as mergekit 0.1.5 takes them: PyYAML's unquoted
    /// yes/no/on/off, and pydantic's strings (t/f and y/n among them, in any case) and 0/1.
    /// t and f used to be refused.
    #[test]
    fn a_true_false_parameter_is_read_as_mergekit_reads_it() {
        let recipes = [
            ("normalize", "merge_method: linear\nmodels: [{model: x, parameters: {weight: 1}}]\n"),
            ("normalize", "merge_method: ties\nbase_model: b\nmodels: [{model: x, parameters: {weight: 1}}]\n"),
            ("rescale", "merge_method: dare_ties\nbase_model: b\nmodels: [{model: x, parameters: {weight: 1}}]\n"),
            ("int8_mask", "merge_method: task_arithmetic\nbase_model: b\nmodels: [{model: x, parameters: {weight: 1}}]\n"),
            ("filter_wise", "merge_method: model_stock\nbase_model: b\nmodels: [{model: x}, {model: y}]\n"),
            ("nuslerp_flatten", "merge_method: nuslerp\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: 1}}]\n"),
            ("nuslerp_row_wise", "merge_method: nuslerp\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: 1}}]\n"),
        ];
        let read = |name: &str, recipe: &str, v: &str| {
            parse(&format!("{recipe}parameters:\n  {name}: {v}\n"))
                .map(|r| r.settings.global[name].setting.clone())
        };
        for (name, recipe) in recipes {
            for (v, want) in [
                ("true", true),
                ("false", false),
                ("True", true),
                ("FALSE", false),
                ("yes", true),
                ("no", false),
                ("on", true),
                ("off", false),
                ("y", true),
                ("n", false),
                ("t", true),
                ("f", false),
                ("T", true),
                ("'t'", true),
                ("'f'", false),
                ("'yes'", true),
                ("'Off'", false),
                ("1", true),
                ("0", false),
                ("'1'", true),
                ("'0'", false),
                ("1.0", true),
                ("0.0", false),
                ("[t, f]", true),
            ] {
                let got = read(name, recipe, v).unwrap();
                let want = f64::from(u8::from(want));
                match got {
                    Setting::Gradient(list) => assert_eq!(list, [1.0, 0.0], "{name}: {v}"),
                    got => assert_eq!(got, Setting::Value(want), "{name}: {v}"),
                }
            }
            for v in [
                "2", "-1", "0.5", "'1.0'", "'2'", "' yes'", "'yes '", "maybe", "''", "null",
            ] {
                let e = read(name, recipe, v).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("parameters.{name} is")) && e.contains("not true or false")
                        || v == "null" && e.contains("not a number, true/false or a list"),
                    "{name}: {v}: {e}"
                );
            }
        }
    }

    /// mergekit never reads the base model's own parameters (they are the models' besides the
    /// base), so it takes any scalar there; a name the method lacks is still a typo.
    #[test]
    fn the_base_entrys_values_are_not_read_as_in_mergekit() {
        let r = parse("merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n    parameters: {weight: 'yes', density: t}\n  - model: x\n    parameters: {weight: 1}\n").unwrap();
        assert_eq!(r.models, [PathBuf::from("x")]);
        let e = err("merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n    parameters: {weight: null}\n  - model: x\n    parameters: {weight: 1}\n");
        assert!(e.contains("models[0].parameters.weight is null"), "{e}");
    }

    #[test]
    fn names_what_it_does_not_support() {
        let base = "models: [{model: x, parameters: {weight: 1}}]\n";
        assert!(err(&format!("merge_method: karcher\n{base}")).contains("merge_method 'karcher'"));
        assert!(
            err(&format!("merge_method: linear\n{base}modules: {{}}\n")).contains("key 'modules'")
        );
        let e = err(&format!("merge_method: linear\n{base}foo: 1\n"));
        assert!(
            e.contains("unknown key 'foo'") && e.contains("remove it"),
            "{e}"
        );
        assert!(err(
            "merge_method: linear\nmodels: [{model: x, parameters: {weight: 1, density: 0.5}}]\n"
        )
        .contains("models[0].parameters.density is not a parameter of linear"));
        assert!(err("merge_method: linear\nmodels: [{model: x}]\n")
            .contains("models[0] has no parameters.weight"));
        assert!(err(&format!("merge_method: linear\n{base}dtype: int8\n")).contains("dtype 'int8'"));
        assert!(err(&format!(
            "merge_method: linear\n{base}parameters: {{epsilon: 1}}\n"
        ))
        .contains("parameters.epsilon"));
        assert!(err(base).contains("no merge_method"));
        let e = err("base_model: b\ngate_mode: hidden\nexperts:\n  - source_model: x\n    positive_prompts: [chat]\n");
        assert!(
            e.contains("mergekit-moe config (key 'experts')") && !e.contains("gate_mode"),
            "{e}"
        );
        assert!(err("merge_method: linear\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: -1}}]\n").contains("sum to 0"));
        assert!(err("merge_method: linear\nmerge_method: linear\nmodels: []\n").contains("YAML"));
        let e = err("name: first\nmerge_method: linear\nmodels: [{model: x, parameters: {weight: 1}}]\n---\nmerge_method: linear\nmodels: [{model: first, parameters: {weight: 1}}]\n");
        assert!(
            e.contains("several YAML documents") && e.contains("mergekit-multi"),
            "{e}"
        );
        let two =
            "models: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: 1}}]\n";
        assert!(err(&format!("merge_method: ties\n{two}")).contains("needs a base_model"));
        assert!(err(&format!(
            "merge_method: ties\nbase_model: b\n{two}parameters: {{density: 0}}\n"
        ))
        .contains("parameters.density is 0, outside (0, 1]"));
        assert!(err(&format!(
            "merge_method: ties\nbase_model: b\n{two}parameters: {{density: 1.5}}\n"
        ))
        .contains("outside (0, 1]"));
        let bare = "models: [{model: x}, {model: y}]\n";
        assert!(err(&format!(
            "merge_method: slerp\nbase_model: b\n{bare}parameters: {{t: 0.5}}\n"
        ))
        .contains("exactly two models"));
        assert!(err(&format!(
            "merge_method: slerp\nbase_model: x\n{two}parameters: {{t: 0.5}}\n"
        ))
        .contains("models[0].parameters.weight is not a parameter of slerp"));
        assert!(err(&format!(
            "merge_method: slerp\nbase_model: x\n{bare}parameters: {{t: [0, 1.5]}}\n"
        ))
        .contains("parameters.t is 1.5, outside [0, 1]"));
        assert!(err(&format!(
            "merge_method: slerp\nbase_model: x\n{bare}parameters: {{t: -0.1}}\n"
        ))
        .contains("outside [0, 1]"));
        assert!(
            err("merge_method: model_stock\nbase_model: b\nmodels: [{model: x}]\n")
                .contains("at least two fine-tunes")
        );
        assert!(err(&format!("merge_method: slerp\nbase_model: x\n{bare}parameters: {{t: 0.5}}\ntokenizer_source: union\n"))
            .contains("key 'tokenizer_source'"));
        assert!(err(&format!(
            "merge_method: ties\nbase_model: b\n{two}random_seed: -1\n"
        ))
        .contains("random_seed"));
        assert!(err(&format!(
            "merge_method: ties\nbase_model: b\n{two}parameters: {{weight: [{{filter: a}}]}}\n"
        ))
        .contains("has no value; give one, as in {filter: self_attn, value: 0.5}"));
        assert!(err("merge_method: slerp\nbase_model: x\nmodels: [{model: x}, {model: y, parameters: {t: 0.5}}]\n")
            .contains("one value for the merge"));
    }

    /// The base's own entry may carry the method's parameters, which change nothing (as in
    /// mergekit); a name the method doesn't take is refused there as everywhere else. It used
    /// to be dropped unread.
    #[test]
    fn the_base_entry_takes_known_parameters_and_names_a_typo() {
        let r = parse("merge_method: ties\nbase_model: b\nmodels:\n  - model: b\n    parameters: {weight: 0.5, density: 0.5}\n  - model: x\n    parameters: {weight: 1}\n").unwrap();
        assert_eq!(r.models, [PathBuf::from("x")]);
        let e = err("merge_method: task_arithmetic\nbase_model: b\nmodels:\n  - model: b\n    parameters: {wieght: 1}\n  - model: x\n    parameters: {weight: 1}\n");
        assert!(
            e.contains("models[0].parameters.wieght is not a parameter of task_arithmetic"),
            "{e}"
        );
    }

    #[test]
    fn refuses_a_model_listed_twice_as_mergekit_does() {
        let e = err("merge_method: linear\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: 1}}, {model: x, parameters: {weight: 2}}]\n");
        assert!(
            e.contains("models[2].model x is the same model as models[0]"),
            "{e}"
        );
        // The base's own entry doesn't shift the index named.
        let e = err("merge_method: ties\nbase_model: b\nmodels: [{model: b}, {model: x}, {model: y}, {model: x}]\n");
        assert!(
            e.contains("models[3].model x is the same model as models[1]"),
            "{e}"
        );
        // The base listed among the models is its own entry, not a duplicate.
        parse("merge_method: ties\nbase_model: b\nmodels: [{model: b}, {model: x}, {model: y}]\n")
            .unwrap();
    }
}
