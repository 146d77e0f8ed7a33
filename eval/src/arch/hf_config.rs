//! A Hugging Face `config.json`, read key by key: typed values, transformers' defaults for absent keys, and errors that name the key.
//!
//! Text families configure themselves from the model directory's `config.json` (heads,
//! epsilons, rope settings) and check it against the tensor shapes; the Hugging Face vision
//! families read it when there is one and fall back on the shapes otherwise
//! ([`HfConfig::optional`]). Every error here is a [`ConfigError`] whose "tensor" is
//! `config.json:KEY`, so the user sees which key to fix.

use serde_json::Value;

use super::{ConfigError, Layout};

/// The parsed `config.json` of a model directory, or none ([`HfConfig::optional`] for a lone
/// safetensors file): then every getter finds its key absent.
#[derive(Clone, Copy, Debug)]
pub struct HfConfig<'a> {
    value: Option<&'a serde_json::Map<String, Value>>,
}

/// The name errors give a `config.json` key.
pub fn key_name(key: &str) -> String {
    format!("config.json:{key}")
}

impl<'a> HfConfig<'a> {
    /// The `config.json` of `layout`'s model directory; an error when there is none (text
    /// models need it: heads and other settings are not in the shapes).
    pub fn of(layout: &'a Layout) -> Result<HfConfig<'a>, ConfigError> {
        match Self::optional(layout)? {
            HfConfig { value: None } => Err(ConfigError::new(
                "config.json",
                "is missing; a language model is read from a Hugging Face model directory (config.json next to the safetensors files)",
            )),
            config => Ok(config),
        }
    }

    /// The `config.json` of `layout`'s model directory when it has one; without one, a
    /// configuration in which every key is absent (a lone safetensors file).
    pub fn optional(layout: &'a Layout) -> Result<HfConfig<'a>, ConfigError> {
        match &layout.config {
            Some(Value::Object(value)) => Ok(HfConfig { value: Some(value) }),
            Some(_) => Err(ConfigError::new(
                "config.json",
                "is not a JSON object; it must be the model directory's Hugging Face config",
            )),
            None => Ok(HfConfig { value: None }),
        }
    }

    /// Whether there is a `config.json`.
    pub fn present(&self) -> bool {
        self.value.is_some()
    }

    /// The raw value of `key`, treating JSON `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// Whether `key` is present and not `null`.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Whether `config.json` has `key` at all, `null` included.
    pub fn has_key(&self, key: &str) -> bool {
        self.value.is_some_and(|m| m.contains_key(key))
    }

    /// `key` as a non-negative integer, if present.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(key, v, "a non-negative integer"))
            })
            .transpose()
    }

    /// `key` as a positive integer; an error when absent.
    pub fn positive(&self, key: &str) -> Result<usize, ConfigError> {
        match self.opt_positive(key)? {
            Some(n) => Ok(n),
            None => Err(ConfigError::new(
                key_name(key),
                "is missing; the model's config.json must give it",
            )),
        }
    }

    /// `key` as a positive integer, or `default` when absent.
    pub fn positive_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        Ok(self.opt_positive(key)?.unwrap_or(default))
    }

    /// `key` as a positive integer, if present.
    pub fn opt_positive(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .filter(|&n| n > 0)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad(key, v, "a positive integer"))
            })
            .transpose()
    }

    /// `key` as a finite number, or `default` when absent.
    pub fn number_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(key, v, "a finite number")),
        }
    }

    /// `key` as a non-negative finite number, or `default` when absent.
    pub fn non_negative_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        let x = self.number_or(key, default)?;
        if x >= 0.0 {
            Ok(x)
        } else {
            Err(bad(key, &Value::from(x), "a non-negative number"))
        }
    }

    /// `key` as one positive integer or a pair of equal ones (a square patch), or `default`
    /// when absent.
    pub fn square_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            Some(v @ Value::Array(_)) => match self.size_or(key, default)? {
                [h, w] if h == w => Ok(h),
                _ => Err(bad(key, v, "a positive integer or a pair of equal ones")),
            },
            _ => self.positive_or(key, default),
        }
    }

    /// `key` as a height and width (one positive integer for both, or a pair), or `default`
    /// for both when absent.
    pub fn size_or(&self, key: &str, default: usize) -> Result<[usize; 2], ConfigError> {
        match self.get(key) {
            Some(v @ Value::Array(_)) => match self.positives_or(key, &[])?.as_slice() {
                &[h, w] => Ok([h, w]),
                _ => Err(bad(key, v, "a positive integer or [height, width]")),
            },
            _ => self.positive_or(key, default).map(|n| [n, n]),
        }
    }

    /// `key` as a non-empty list of positive integers, or `default` when absent.
    pub fn positives_or(&self, key: &str, default: &[usize]) -> Result<Vec<usize>, ConfigError> {
        let Some(v) = self.get(key) else {
            return Ok(default.to_vec());
        };
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| {
                        x.as_u64()
                            .filter(|&n| n > 0)
                            .and_then(|n| usize::try_from(n).ok())
                    })
                    .collect::<Option<Vec<_>>>()
            })
            .filter(|l| !l.is_empty())
            .ok_or_else(|| bad(key, v, "a list of positive integers"))
    }

    /// `key` as a positive finite number, or `default` when absent.
    pub fn positive_number_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        let x = self.number_or(key, default)?;
        if x > 0.0 {
            Ok(x)
        } else {
            Err(bad(key, &Value::from(x), "a positive number"))
        }
    }

    /// `key` as a boolean, or `default` when absent.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| bad(key, v, "true or false")),
        }
    }

    /// `key` as a string, if present.
    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| bad(key, v, "a string")))
            .transpose()
    }

    /// `key` as a token id (a non-negative integer below 2^32), if present.
    pub fn token_id(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(key, v, "a token id (a non-negative integer)"))
            })
            .transpose()
    }

    /// `pad_token_id` as a token id, if present. A negative one (`-1` in some converted
    /// LLaMA configs) means the model has no padding token: transformers builds such a model
    /// (the id only marks an embedding row that gets no gradient), so batches are padded as
    /// for a config without the key.
    pub fn pad_token_id(&self) -> Result<Option<u32>, ConfigError> {
        match self.get("pad_token_id") {
            Some(v) if v.as_i64().is_some_and(|n| n < 0) => Ok(None),
            _ => self.token_id("pad_token_id"),
        }
    }

    /// Checks that `key`, when present, equals `found` (a size read from a tensor's shape):
    /// the error names the key, its value and the tensor that disagrees.
    pub fn agrees(&self, key: &str, found: usize, tensor: &str) -> Result<(), ConfigError> {
        match self.opt_usize(key)? {
            Some(n) if n != found => Err(ConfigError::new(
                key_name(key),
                format!("is {n}, but tensor '{tensor}' says {found}; config.json and the weights disagree"),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a setting this implementation does not have: `key` must be absent, `null`,
    /// or one of `allowed` (compared as JSON).
    pub fn refuse_unless(
        &self,
        key: &str,
        allowed: &[Value],
        what: &str,
    ) -> Result<(), ConfigError> {
        match self.get(key) {
            Some(v) if !allowed.contains(v) => {
                Err(ConfigError::new(key_name(key), format!("is {v}; {what}")))
            }
            _ => Ok(()),
        }
    }

    /// The classes `architectures` lists.
    pub fn architectures(&self) -> Vec<&'a str> {
        match self.get("architectures") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
}

/// Whether `layout` is a model directory whose `config.json` names one of `classes` in
/// `architectures`, or, when it lists none, has one of `model_types` as `model_type`. This is
/// how every text family implements [`super::Family::detect`].
pub fn detect(layout: &Layout, classes: &[&str], model_types: &[&str]) -> bool {
    let Ok(config) = HfConfig::of(layout) else {
        return false;
    };
    let listed = config.architectures();
    if !listed.is_empty() {
        return listed.iter().any(|a| classes.contains(a));
    }
    config
        .opt_str("model_type")
        .ok()
        .flatten()
        .is_some_and(|t| model_types.contains(&t))
}

fn bad(key: &str, value: &Value, want: &str) -> ConfigError {
    ConfigError::new(key_name(key), format!("is {value}; it must be {want}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(config: Value) -> Layout {
        let mut l = Layout::from_shapes(std::iter::empty());
        l.config = Some(config);
        l
    }

    #[test]
    fn values_are_typed_and_errors_name_the_key() {
        let l = layout(serde_json::json!({
            "hidden_size": 64, "eps": 1e-5, "name": "x", "neg": -3, "nothing": null, "flag": true
        }));
        let c = HfConfig::of(&l).unwrap();
        assert_eq!(c.positive("hidden_size").unwrap(), 64);
        assert_eq!(c.number_or("eps", 0.0).unwrap(), 1e-5);
        assert_eq!(c.positive_or("nothing", 7).unwrap(), 7);
        assert!(c.bool_or("flag", false).unwrap());
        let err = c.positive("neg").unwrap_err();
        assert_eq!(err.tensor, "config.json:neg");
        assert!(err.reason.contains("-3"), "{}", err.reason);
        assert_eq!(
            c.positive("absent").unwrap_err().tensor,
            "config.json:absent"
        );
        assert_eq!(c.positive("name").unwrap_err().tensor, "config.json:name");
        let err = c.agrees("hidden_size", 48, "w").unwrap_err();
        assert!(
            err.reason.contains("64") && err.reason.contains("48") && err.reason.contains("'w'")
        );
    }

    #[test]
    fn vision_sizes_and_an_absent_config_take_the_defaults() {
        let l = layout(serde_json::json!({
            "patch_size": [8, 8], "image_size": [32, 24], "odd": [4, 5], "depths": [3, 3, 9],
            "empty": [], "zero": [2, 0], "eps": 1e-6, "neg": -1e-6
        }));
        let c = HfConfig::optional(&l).unwrap();
        assert!(c.present());
        assert_eq!(c.square_or("patch_size", 16).unwrap(), 8);
        assert_eq!(c.square_or("absent", 16).unwrap(), 16);
        assert_eq!(c.size_or("image_size", 224).unwrap(), [32, 24]);
        assert_eq!(c.size_or("absent", 224).unwrap(), [224, 224]);
        assert_eq!(c.positives_or("depths", &[1]).unwrap(), [3, 3, 9]);
        assert_eq!(c.non_negative_or("eps", 1e-12).unwrap(), 1e-6);
        for bad_square in ["odd", "depths", "empty", "zero"] {
            let err = c.square_or(bad_square, 1).unwrap_err();
            assert_eq!(err.tensor, format!("config.json:{bad_square}"));
        }
        assert!(c.size_or("depths", 1).is_err());
        assert!(c.positives_or("empty", &[1]).is_err());
        assert!(c.positives_or("zero", &[1]).is_err());
        assert!(c.non_negative_or("neg", 1.0).is_err());
        let none = Layout::default();
        let c = HfConfig::optional(&none).unwrap();
        assert!(!c.present());
        assert_eq!(c.positive_or("hidden_size", 768).unwrap(), 768);
        assert_eq!(c.size_or("image_size", 224).unwrap(), [224, 224]);
        assert!(c.architectures().is_empty());
        assert!(HfConfig::of(&none).is_err());
        assert!(HfConfig::optional(&layout(serde_json::json!([1]))).is_err());
    }

    #[test]
    fn detection_prefers_architectures_over_model_type() {
        let l = layout(
            serde_json::json!({"architectures": ["LlamaForSequenceClassification"], "model_type": "llama"}),
        );
        assert!(!detect(&l, &["LlamaForCausalLM"], &["llama"]));
        let l = layout(serde_json::json!({"model_type": "llama"}));
        assert!(detect(&l, &["LlamaForCausalLM"], &["llama"]));
        assert!(!detect(
            &Layout::default(),
            &["LlamaForCausalLM"],
            &["llama"]
        ));
    }
}
