//! Reading a Hugging Face model directory's `config.json`: typed keys with the configuration class's defaults, and errors naming the key.

use serde_json::Value;

use crate::arch::{ConfigError, Layout};

/// A model directory's `config.json`, or none (a single safetensors file): every getter then
/// returns the default given, which is the transformers configuration class's own.
#[derive(Clone, Copy)]
pub struct HfConfig<'a>(Option<&'a Value>);

impl<'a> HfConfig<'a> {
    /// The configuration of `layout`'s model directory, if it has one.
    pub fn of(layout: &'a Layout) -> HfConfig<'a> {
        HfConfig(layout.config.as_ref())
    }

    /// Whether there is a `config.json`.
    pub fn present(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `architectures` lists `name`.
    pub fn names_architecture(&self, name: &str) -> bool {
        self.0
            .and_then(|c| c.get("architectures"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(name)))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.and_then(|c| c.get(key)).filter(|v| !v.is_null())
    }

    fn error(key: &str, value: &Value, expected: &str) -> ConfigError {
        ConfigError::new(
            format!("config.json {key}"),
            format!("is {value}; it must be {expected}"),
        )
    }

    /// A positive integer.
    pub fn positive(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0 && n < 1 << 31)
                .map(|n| n as usize)
                .ok_or_else(|| Self::error(key, v, "a positive integer")),
        }
    }

    /// A positive integer given either as one number or as a pair of equal numbers (a square
    /// patch); `Err` for an unequal pair.
    pub fn square(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.get(key) {
            Some(Value::Array(a)) => match a.as_slice() {
                [x, y] if x == y && x.as_u64().is_some_and(|n| n > 0 && n < 1 << 31) => {
                    Ok(x.as_u64().unwrap_or(0) as usize)
                }
                _ => Err(Self::error(
                    key,
                    &Value::Array(a.clone()),
                    "a positive integer (square)",
                )),
            },
            _ => self.positive(key, default),
        }
    }

    /// A height and width given as one number or a pair.
    pub fn size(&self, key: &str, default: usize) -> Result<[usize; 2], ConfigError> {
        match self.get(key) {
            Some(Value::Array(a)) => {
                let dims: Option<Vec<usize>> = a
                    .iter()
                    .map(|x| {
                        x.as_u64()
                            .filter(|&n| n > 0 && n < 1 << 31)
                            .map(|n| n as usize)
                    })
                    .collect();
                match dims.as_deref() {
                    Some(&[h, w]) => Ok([h, w]),
                    _ => Err(Self::error(
                        key,
                        &Value::Array(a.clone()),
                        "a size or [height, width]",
                    )),
                }
            }
            _ => self.positive(key, default).map(|n| [n, n]),
        }
    }

    /// A list of positive integers, or `default` when absent.
    pub fn positives(&self, key: &str, default: &[usize]) -> Result<Vec<usize>, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| {
                            x.as_u64()
                                .filter(|&n| n > 0 && n < 1 << 31)
                                .map(|n| n as usize)
                        })
                        .collect::<Option<Vec<_>>>()
                })
                .filter(|l| !l.is_empty())
                .ok_or_else(|| Self::error(key, v, "a list of positive integers")),
        }
    }

    /// A non-negative finite number.
    pub fn number(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .ok_or_else(|| Self::error(key, v, "a non-negative number")),
        }
    }

    /// A boolean.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| Self::error(key, v, "true or false")),
        }
    }

    /// A string.
    pub fn text(&self, key: &str, default: &'a str) -> Result<&'a str, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| Self::error(key, v, "a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(json: &str) -> Layout {
        let mut l = Layout::from_shapes([]);
        l.config = Some(serde_json::from_str(json).unwrap());
        l
    }

    #[test]
    fn values_defaults_and_errors_name_the_key() {
        let l = layout(
            r#"{"architectures": ["ViTForImageClassification"], "hidden_size": 48, "patch_size": [8, 8], "image_size": [32, 24], "layer_norm_eps": 1e-6, "qkv_bias": false, "hidden_act": "gelu", "bad": -3, "odd": [4, 5], "pooler_output_size": null}"#,
        );
        let c = HfConfig::of(&l);
        assert!(c.names_architecture("ViTForImageClassification"));
        assert!(!c.names_architecture("ViTModel"));
        assert_eq!(c.positive("hidden_size", 768).unwrap(), 48);
        assert_eq!(c.positive("num_hidden_layers", 12).unwrap(), 12);
        assert_eq!(c.positive("pooler_output_size", 7).unwrap(), 7);
        assert_eq!(c.square("patch_size", 16).unwrap(), 8);
        assert_eq!(c.size("image_size", 224).unwrap(), [32, 24]);
        assert_eq!(c.number("layer_norm_eps", 1e-12).unwrap(), 1e-6);
        assert!(!c.flag("qkv_bias", true).unwrap());
        assert_eq!(c.text("hidden_act", "relu").unwrap(), "gelu");
        let err = c.positive("bad", 1).unwrap_err();
        assert_eq!(err.tensor, "config.json bad");
        assert!(c.square("odd", 1).is_err());
        assert!(c.flag("hidden_act", true).is_err());
        let none = Layout::from_shapes([]);
        assert_eq!(
            HfConfig::of(&none).positive("hidden_size", 768).unwrap(),
            768
        );
        assert!(!HfConfig::of(&none).present());
    }
}
