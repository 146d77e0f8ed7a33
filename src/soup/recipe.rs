//! mergekit recipe files (`--config recipe.yaml`): a linear merge's YAML validated into a
//! `Recipe`. A key, value or method soup-merge doesn't support is an error naming it, never
//! silently ignored.
//!
//! The keys read are mergekit's own, with its meanings and defaults:
//!
//! ```yaml
//! merge_method: linear          # the only method supported
//! base_model: ./base            # optional: model card and config/tokenizer source
//! models:
//!   - model: ./fine-tune-a      # a local .safetensors file or model directory
//!     parameters:
//!       weight: 0.7
//!   - model: ./fine-tune-b
//!     parameters:
//!       weight: 0.3
//! parameters:
//!   normalize: true             # mergekit's default: divide by the sum of the weights
//!   weight: 1.0                 # optional default for models without their own weight
//! dtype: bfloat16               # output dtype, unless out_dtype is given
//! out_dtype: bfloat16
//! ```

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::error::{Error, Result};
use crate::format::Dtype;

/// The keys soup-merge reads at the top of a recipe.
const TOP_KEYS: &[&str] = &[
    "merge_method",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "base_model",
];

/// mergekit keys that exist but that soup-merge doesn't implement.
const UNSUPPORTED_KEYS: &[&str] = &[
    "slices",
    "modules",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
];

/// A validated linear-merge recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The ingredients, as written (relative paths are relative to the working directory, as
    /// in mergekit).
    pub models: Vec<PathBuf>,
    /// One weight per model, as written.
    pub weights: Vec<f64>,
    /// `parameters.normalize`: divide the weights by their sum. mergekit's default is true.
    pub normalize: bool,
    /// The output dtype: `out_dtype`, else `dtype`.
    pub dtype: Option<Dtype>,
    /// `base_model`, as written.
    pub base_model: Option<String>,
    /// The file's text, kept for the output's metadata and model card.
    pub text: String,
}

impl Recipe {
    /// Reads and validates a recipe file: a regular file of at most `MAX_RECIPE_BYTES`.
    pub fn read(path: &Path) -> Result<Recipe> {
        let bytes = crate::format::small_file::read(path, MAX_RECIPE_BYTES, "recipe")?;
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
        check_nesting(text).map_err(fail)?;
        let doc: Value =
            serde_yaml::from_str(text).map_err(|e| fail(format!("is not valid YAML: {e}")))?;
        let top = doc.as_mapping().ok_or_else(|| {
            fail("is not a mergekit recipe: expected a mapping with merge_method and models".into())
        })?;
        for key in keys(top, "").map_err(fail)? {
            if UNSUPPORTED_KEYS.contains(&key.as_str()) {
                return Err(fail(format!(
                    "key '{key}' is not supported; soup-merge reads linear merges with {}; remove it or run mergekit",
                    TOP_KEYS.join(", ")
                )));
            }
            if !TOP_KEYS.contains(&key.as_str()) {
                return Err(fail(format!(
                    "unknown key '{key}'; soup-merge reads {}",
                    TOP_KEYS.join(", ")
                )));
            }
        }
        match top.get("merge_method") {
            Some(Value::String(m)) if m == "linear" => {}
            Some(Value::String(m)) => {
                return Err(fail(format!(
                    "merge_method '{m}' is not supported; soup-merge does linear merges (weighted averages) only: use merge_method: linear, or run mergekit"
                )))
            }
            Some(_) => return Err(fail("merge_method must be a string such as linear".into())),
            None => return Err(fail("has no merge_method; add merge_method: linear".into())),
        }

        let mut normalize = true;
        let mut default_weight = None;
        if let Some(params) = top.get("parameters") {
            let params = params
                .as_mapping()
                .ok_or_else(|| fail("parameters must be a mapping".into()))?;
            for key in keys(params, "parameters.").map_err(fail)? {
                let value = &params[key.as_str()];
                match key.as_str() {
                    "normalize" => {
                        normalize = value.as_bool().ok_or_else(|| {
                            fail(format!("parameters.normalize is {}, not true or false", show(value)))
                        })?
                    }
                    "weight" => default_weight = Some(number(value, "parameters.weight").map_err(fail)?),
                    other => {
                        return Err(fail(format!(
                            "parameters.{other} is not supported; a linear merge takes parameters.normalize and parameters.weight"
                        )))
                    }
                }
            }
        }

        let models = top
            .get("models")
            .ok_or_else(|| fail("has no models; list the ingredients under models: with model: and parameters: weight:".into()))?
            .as_sequence()
            .ok_or_else(|| fail("models must be a list of entries with model: and parameters:".into()))?;
        if models.is_empty() {
            return Err(fail("models is empty; list at least one ingredient".into()));
        }
        let mut paths = Vec::new();
        let mut weights = Vec::new();
        for (i, entry) in models.iter().enumerate() {
            let at = format!("models[{i}]");
            let entry = entry.as_mapping().ok_or_else(|| {
                fail(format!(
                    "{at} must be a mapping with model: and parameters:"
                ))
            })?;
            let mut weight = default_weight;
            let mut model = None;
            for key in keys(entry, &format!("{at}.")).map_err(fail)? {
                let value = &entry[key.as_str()];
                match key.as_str() {
                    "model" => {
                        model = Some(model_path(value, &format!("{at}.model")).map_err(fail)?)
                    }
                    "parameters" => {
                        let params = value
                            .as_mapping()
                            .ok_or_else(|| fail(format!("{at}.parameters must be a mapping")))?;
                        for pk in keys(params, &format!("{at}.parameters.")).map_err(fail)? {
                            if pk != "weight" {
                                return Err(fail(format!(
                                    "{at}.parameters.{pk} is not supported; a linear merge takes a weight per model"
                                )));
                            }
                            weight = Some(
                                number(&params["weight"], &format!("{at}.parameters.weight"))
                                    .map_err(fail)?,
                            );
                        }
                    }
                    other => {
                        return Err(fail(format!(
                        "{at}.{other} is not supported; a model entry takes model: and parameters:"
                    )))
                    }
                }
            }
            paths.push(model.ok_or_else(|| fail(format!("{at} has no model:")))?);
            weights.push(weight.ok_or_else(|| {
                fail(format!(
                    "{at} has no parameters.weight (and there is no default parameters.weight)"
                ))
            })?);
        }

        let dtype = |key: &str| -> Result<Option<Dtype>> {
            match top.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => torch_dtype(s).map(Some).ok_or_else(|| {
                    fail(format!(
                        "{key} '{s}' is not supported; use float32, float16, bfloat16 or float64"
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
        let base_model = match top.get("base_model") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                model_path(v, "base_model")
                    .map_err(fail)?
                    .to_string_lossy()
                    .into_owned(),
            ),
        };
        if normalize {
            let sum: f64 = weights.iter().sum();
            if sum == 0.0 || !sum.is_finite() {
                return Err(fail(format!(
                    "the weights sum to {sum}, so parameters.normalize (true by default) can't divide by it; set normalize: false or change the weights"
                )));
            }
        }
        Ok(Recipe {
            models: paths,
            weights,
            normalize,
            dtype,
            base_model,
            text: text.to_string(),
        })
    }

    /// The weights the merge uses: as written, or divided by their sum under `normalize`.
    /// mergekit divides the weighted sum by the sum of the weights; dividing the weights first
    /// is the same result up to rounding.
    pub fn effective_weights(&self) -> Result<Vec<f64>> {
        super::weights::resolve(
            "the recipe's weights",
            Some(&self.weights),
            self.weights.len(),
            self.normalize,
        )
    }
}

/// The largest recipe read: real ones are a few KB.
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;

/// The deepest nesting of brackets or indentation accepted: real recipes nest four or five
/// levels. The YAML parser's time grows with the square of the nesting, so a deep file is
/// refused before it is parsed.
const MAX_NESTING: usize = 32;

fn check_nesting(text: &str) -> std::result::Result<(), String> {
    let mut depth = 0usize;
    let mut deepest = 0usize;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        deepest = deepest.max(indent / 2);
        for c in line.chars() {
            match c {
                '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if deepest > MAX_NESTING {
            return Err(format!(
                "nests deeper than {MAX_NESTING} levels; a mergekit recipe nests a few levels: is this the right file?"
            ));
        }
    }
    Ok(())
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

fn number(v: &Value, at: &str) -> std::result::Result<f64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{at} is {n}, not a finite number")),
        Value::Sequence(_) => Err(format!(
            "{at} is a list (a per-layer gradient); soup-merge takes one number per model"
        )),
        other => Err(format!("{at} is {}, not a number", show(other))),
    }
}

fn model_path(v: &Value, at: &str) -> std::result::Result<PathBuf, String> {
    match v {
        Value::String(s) if s.contains('+') && !Path::new(s).exists() => Err(format!(
            "{at} '{s}' applies a LoRA (model+lora), which is not supported; merge the adapter first"
        )),
        Value::String(s) if !s.is_empty() => Ok(PathBuf::from(s)),
        Value::Mapping(_) => Err(format!(
            "{at} is a mapping (a model reference with path/revision/lora); give a local path string"
        )),
        other => Err(format!("{at} is {}, not a path", show(other))),
    }
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

fn show(v: &Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().replace('\n', " "))
        .unwrap_or_else(|_| "?".into())
}

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
        let r = parse(
            "merge_method: linear\nbase_model: b\nmodels:\n  - model: x\n    parameters:\n      weight: 3\n  - model: y\n    parameters: {weight: 1.0}\ndtype: bfloat16\n",
        )
        .unwrap();
        assert_eq!(r.models, [PathBuf::from("x"), PathBuf::from("y")]);
        assert_eq!(r.weights, [3.0, 1.0]);
        assert!(r.normalize);
        assert_eq!(r.effective_weights().unwrap(), [0.75, 0.25]);
        assert_eq!(r.dtype, Some(Dtype::BF16));
        assert_eq!(r.base_model.as_deref(), Some("b"));
        let r = parse("merge_method: linear\nparameters: {normalize: false, weight: 2}\nmodels: [{model: x}, {model: y}]\ndtype: float16\nout_dtype: float32\n").unwrap();
        assert_eq!(r.effective_weights().unwrap(), [2.0, 2.0]);
        assert_eq!(r.dtype, Some(Dtype::F32));
    }

    #[test]
    fn names_what_it_does_not_support() {
        let base = "models: [{model: x, parameters: {weight: 1}}]\n";
        assert!(err(&format!("merge_method: ties\n{base}")).contains("merge_method 'ties'"));
        assert!(err(&format!("merge_method: linear\n{base}slices: []\n")).contains("key 'slices'"));
        assert!(err(&format!("merge_method: linear\n{base}foo: 1\n")).contains("unknown key 'foo'"));
        assert!(err(
            "merge_method: linear\nmodels: [{model: x, parameters: {weight: 1, density: 0.5}}]\n"
        )
        .contains("models[0].parameters.density"));
        assert!(
            err("merge_method: linear\nmodels: [{model: x, parameters: {weight: [0, 1]}}]\n")
                .contains("models[0].parameters.weight is a list")
        );
        assert!(err("merge_method: linear\nmodels: [{model: x}]\n")
            .contains("models[0] has no parameters.weight"));
        assert!(err(&format!("merge_method: linear\n{base}dtype: int8\n")).contains("dtype 'int8'"));
        assert!(err(&format!(
            "merge_method: linear\n{base}parameters: {{epsilon: 1}}\n"
        ))
        .contains("parameters.epsilon"));
        assert!(err(base).contains("no merge_method"));
        assert!(err("merge_method: linear\nmodels: [{model: x, parameters: {weight: 1}}, {model: y, parameters: {weight: -1}}]\n").contains("sum to 0"));
        assert!(err("merge_method: linear\nmerge_method: linear\nmodels: []\n").contains("YAML"));
    }
}
