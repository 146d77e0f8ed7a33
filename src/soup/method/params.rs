//! Parameter settings as given (flags or a recipe) and as resolved for one tensor: mergekit's
//! scalars, per-layer gradient lists and name filters, checked against a method's declared
//! parameters.

use std::collections::BTreeMap;

use super::{Kind, Method, Param, Scope};

/// One parameter's setting, in mergekit's syntax.
#[derive(Debug, Clone, PartialEq)]
pub enum Setting {
    /// `t: 0.5`, `normalize: true` (bools are 1 or 0).
    Value(f64),
    /// `t: [0, 0.5, 1]`: interpolated linearly over the layer position.
    Gradient(Vec<f64>),
    /// `t: [{filter: self_attn, value: 0.3}, {value: 0.5}]`: the first entry whose filter is
    /// absent, `*`, or a substring of the tensor name applies; when none does, the next level
    /// (top-level parameters, then the default) decides.
    Conditional(Vec<(Option<String>, Setting)>),
}

impl Setting {
    /// The value for a tensor named `tensor` at layer position `t` in [0, 1]. A `discrete`
    /// (true/false) parameter's list steps, `list[floor(t * (len - 1))]`, as mergekit selects
    /// booleans; a number's list is interpolated.
    pub fn evaluate(&self, tensor: &str, t: f64, discrete: bool) -> Option<f64> {
        match self {
            Setting::Value(v) => Some(*v),
            Setting::Gradient(list) if discrete => {
                Some(list[((t * (list.len() - 1) as f64) as usize).min(list.len() - 1)])
            }
            Setting::Gradient(list) => {
                let scaled = t * (list.len() - 1) as f64;
                let i0 = scaled as usize;
                let i1 = (i0 + 1).min(list.len() - 1);
                let frac = scaled - i0 as f64;
                Some((1.0 - frac) * list[i0] + frac * list[i1])
            }
            Setting::Conditional(entries) => entries
                .iter()
                .find(|(filter, _)| match filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => tensor.contains(f),
                })
                .and_then(|(_, s)| s.evaluate(tensor, t, discrete)),
        }
    }

    /// Every number it can produce at a list's points, for range checks: interpolation between
    /// valid points stays valid, since every range is an interval.
    fn values(&self) -> Vec<f64> {
        match self {
            Setting::Value(v) => vec![*v],
            Setting::Gradient(list) => list.clone(),
            Setting::Conditional(entries) => entries.iter().flat_map(|(_, s)| s.values()).collect(),
        }
    }

    /// The longest gradient list inside.
    fn longest_gradient(&self) -> usize {
        match self {
            Setting::Value(_) => 0,
            Setting::Gradient(list) => list.len(),
            Setting::Conditional(entries) => entries
                .iter()
                .map(|(_, s)| s.longest_gradient())
                .max()
                .unwrap_or(0),
        }
    }

    /// For metadata and model cards; `flag` writes values as true or false.
    pub fn to_json(&self, flag: bool) -> serde_json::Value {
        match self {
            Setting::Value(v) if flag => serde_json::json!(*v != 0.0),
            Setting::Value(v) => serde_json::json!(v),
            Setting::Gradient(list) if flag => {
                serde_json::json!(list.iter().map(|v| *v != 0.0).collect::<Vec<_>>())
            }
            Setting::Gradient(list) => serde_json::json!(list),
            Setting::Conditional(entries) => serde_json::Value::Array(
                entries
                    .iter()
                    .map(|(f, s)| match f {
                        Some(f) => serde_json::json!({"filter": f, "value": s.to_json(flag)}),
                        None => serde_json::json!({"value": s.to_json(flag)}),
                    })
                    .collect(),
            ),
        }
    }
}

/// A setting and where it was given (`--t`, `parameters.t`, `models[1].parameters.weight`), so
/// that errors name the flag or key to fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Given {
    pub setting: Setting,
    pub at: String,
}

/// Every parameter setting of a merge: top-level ones, and one map per model besides the base.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub global: BTreeMap<String, Given>,
    pub models: Vec<BTreeMap<String, Given>>,
    /// Where a recipe gave each model (`models[2]`, `slices[0].sources[1]`, `base_model`), for
    /// messages: the index in `models` skips the base, which recipes list among the models
    /// too. Empty for the command line.
    pub given_at: Vec<String>,
}

/// One tensor's parameters, resolved: every declared parameter has a number.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorParams {
    base: bool,
    global: BTreeMap<&'static str, f64>,
    models: Vec<BTreeMap<&'static str, f64>>,
}

impl Settings {
    /// Settings for `models` models with nothing given.
    pub fn new(models: usize) -> Settings {
        Settings {
            global: BTreeMap::new(),
            models: vec![BTreeMap::new(); models],
            given_at: Vec::new(),
        }
    }

    /// Sets a top-level parameter.
    pub fn set_global(&mut self, name: &str, setting: Setting, at: impl Into<String>) {
        self.global.insert(
            name.to_string(),
            Given {
                setting,
                at: at.into(),
            },
        );
    }

    /// Sets one model's parameter.
    pub fn set_model(&mut self, model: usize, name: &str, setting: Setting, at: impl Into<String>) {
        self.models[model].insert(
            name.to_string(),
            Given {
                setting,
                at: at.into(),
            },
        );
    }

    /// Checks every setting against `method`'s parameters: known names, the right scope,
    /// values in range, gradient lists no longer than the model's `layers` (or 1 value when
    /// the names show no layers). Errors name the flag or key.
    pub fn check(&self, method: &dyn Method, layers: u64) -> Result<(), String> {
        let all = self
            .global
            .iter()
            .map(|(n, g)| (n, g, false))
            .chain(self.models.iter().flatten().map(|(n, g)| (n, g, true)));
        for (name, given, per_model) in all {
            let param = declared(method, name, &given.at)?;
            if per_model && param.scope == Scope::Global {
                return Err(format!(
                    "{} is set per model, but {}'s {name} is one value for the merge; give it under the top-level parameters",
                    given.at,
                    method.name()
                ));
            }
            for v in given.setting.values() {
                if param.kind == Kind::Bool && v != 0.0 && v != 1.0 {
                    return Err(format!("{} must be true or false", given.at));
                }
                param
                    .kind
                    .check(v)
                    .map_err(|e| format!("{} {e}", given.at))?;
            }
            let len = given.setting.longest_gradient() as u64;
            if len > layers.max(1) {
                return Err(if layers == 0 {
                    format!(
                        "{} is a list of {len} values, but no tensor name has a layer index to interpolate over; give one value",
                        given.at
                    )
                } else {
                    format!(
                        "{} is a list of {len} values, longer than the model's {layers} layers; give at most {layers}",
                        given.at
                    )
                });
            }
        }
        Ok(())
    }

    /// The parameters of tensor `tensor` at layer position `t`.
    /// `base` says whether the merge has a base model (after the models in input order).
    pub fn resolve(
        &self,
        method: &dyn Method,
        tensor: &str,
        t: f64,
        base: bool,
    ) -> Result<TensorParams, String> {
        let mut global = BTreeMap::new();
        let mut models = vec![BTreeMap::new(); self.models.len()];
        for p in method.params() {
            let discrete = p.kind == Kind::Bool;
            let eval = |g: Option<&Given>| g.and_then(|g| g.setting.evaluate(tensor, t, discrete));
            match p.scope {
                Scope::Global => {
                    let v = eval(self.global.get(p.name))
                        .or(p.default)
                        .ok_or_else(|| missing(method, p, None))?;
                    global.insert(p.name, v);
                }
                Scope::PerModel => {
                    for (m, given) in self.models.iter().enumerate() {
                        let v = eval(given.get(p.name))
                            .or_else(|| eval(self.global.get(p.name)))
                            .or(p.default)
                            .ok_or_else(|| {
                                missing(
                                    method,
                                    p,
                                    Some((m, self.given_at.get(m).map(String::as_str))),
                                )
                            })?;
                        models[m].insert(p.name, v);
                    }
                }
            }
        }
        Ok(TensorParams {
            base,
            global,
            models,
        })
    }

    /// Every setting as JSON, for the output's metadata (bool parameters of `method` as
    /// true or false).
    pub fn to_json(&self, method: &dyn Method) -> serde_json::Value {
        let flag = |k: &str| {
            method
                .params()
                .iter()
                .any(|p| p.name == k && p.kind == Kind::Bool)
        };
        let map = |m: &BTreeMap<String, Given>| {
            serde_json::Value::Object(
                m.iter()
                    .map(|(k, g)| (k.clone(), g.setting.to_json(flag(k))))
                    .collect(),
            )
        };
        serde_json::json!({
            "parameters": map(&self.global),
            "models": self.models.iter().map(map).collect::<Vec<_>>(),
        })
    }
}

/// `method`'s parameter `name`, given at `at` (a flag or a recipe's key); else the error naming
/// `at` and the parameters the method takes.
pub fn declared(method: &dyn Method, name: &str, at: &str) -> Result<&'static Param, String> {
    method
        .params()
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| {
            let known = method.params().iter().map(|p| p.name).collect::<Vec<_>>();
            format!(
                "{at} is not a parameter of {}; it takes {}",
                method.name(),
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            )
        })
}

fn missing(method: &dyn Method, p: &Param, model: Option<(usize, Option<&str>)>) -> String {
    match model {
        Some((_, Some(at))) => {
            let name = p.name;
            // A base_model merged as one more model has no parameters of its own.
            let own = if at == "base_model" {
                format!("list it under models with parameters.{name}")
            } else {
                format!("give {at}.parameters.{name}")
            };
            format!(
                "{} needs {name} for every model: {at} has none ({own}, or a top-level parameters.{name})",
                method.name(),
            )
        }
        Some((m, None)) => format!(
            "{} needs {} for every model: model {m} has none (give models[{m}].parameters.{}, a top-level parameters.{}, or the flag)",
            method.name(),
            p.name,
            p.name,
            p.name
        ),
        None => format!(
            "{} needs parameter {} (give --{} or parameters.{} in the recipe)",
            method.name(),
            p.name,
            p.name,
            p.name
        ),
    }
}

impl TensorParams {
    /// Whether the merge has a base, which is then the input after the models.
    pub fn has_base(&self) -> bool {
        self.base
    }

    /// The number of models besides the base.
    pub fn models(&self) -> usize {
        self.models.len()
    }

    /// A global parameter the method declares.
    pub fn global(&self, name: &str) -> f64 {
        *self
            .global
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} is not declared global"))
    }

    /// A declared global bool.
    pub fn flag(&self, name: &str) -> bool {
        self.global(name) != 0.0
    }

    /// A global bool, or `default` when the method doesn't declare it.
    pub fn flag_or(&self, name: &str, default: bool) -> bool {
        self.global.get(name).map_or(default, |v| *v != 0.0)
    }

    /// A per-model parameter the method declares.
    pub fn model(&self, model: usize, name: &str) -> f64 {
        *self.models[model]
            .get(name)
            .unwrap_or_else(|| panic!("parameter {name} is not declared per model"))
    }

    /// A per-model parameter, or `default` when the method doesn't declare it.
    pub fn model_or(&self, model: usize, name: &str, default: f64) -> f64 {
        self.models[model].get(name).copied().unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_false_lists_step_like_mergekit() {
        // mergekit selects a boolean's list entry at floor(t * (len - 1)), never between.
        let g = Setting::Gradient(vec![0.0, 1.0]);
        assert_eq!(g.evaluate("x", 0.0, true), Some(0.0));
        assert_eq!(g.evaluate("x", 0.99, true), Some(0.0));
        assert_eq!(g.evaluate("x", 1.0, true), Some(1.0));
        let g = Setting::Gradient(vec![1.0, 0.0, 1.0]);
        assert_eq!(g.evaluate("x", 0.4, true), Some(1.0));
        assert_eq!(g.evaluate("x", 0.6, true), Some(0.0));
    }

    #[test]
    fn gradients_interpolate_like_mergekit() {
        let g = Setting::Gradient(vec![0.0, 0.5, 1.0, 0.0]);
        assert_eq!(g.evaluate("x", 0.0, false), Some(0.0));
        assert_eq!(g.evaluate("x", 1.0, false), Some(0.0));
        assert_eq!(g.evaluate("x", 0.5, false), Some(0.75));
        assert_eq!(g.evaluate("x", 1.0 / 6.0, false), Some(0.25));
        let one = Setting::Gradient(vec![0.3]);
        assert_eq!(one.evaluate("x", 0.7, false), Some(0.3));
    }

    #[test]
    fn filters_take_the_first_match_and_fall_through() {
        let c = Setting::Conditional(vec![
            (Some("self_attn".into()), Setting::Value(0.1)),
            (Some("mlp".into()), Setting::Gradient(vec![0.0, 1.0])),
        ]);
        assert_eq!(
            c.evaluate("model.layers.0.self_attn.q.weight", 0.5, false),
            Some(0.1)
        );
        assert_eq!(
            c.evaluate("model.layers.0.mlp.up.weight", 0.5, false),
            Some(0.5)
        );
        assert_eq!(c.evaluate("model.norm.weight", 0.5, false), None);
        let star = Setting::Conditional(vec![(Some("*".into()), Setting::Value(2.0))]);
        assert_eq!(star.evaluate("anything", 0.0, false), Some(2.0));
    }
}
