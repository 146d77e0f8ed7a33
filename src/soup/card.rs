//! The README.md model card of a merged model directory: YAML front matter for the Hugging Face
//! Hub (`base_model`, `tags`), then the recipe in words and numbers.

use std::path::Path;

use serde::Serialize;

use super::plan::{display_name, tool_version, Plan, META_PARAMETERS};

/// What the card says about a merge.
#[derive(Debug, Clone)]
pub struct Card {
    /// The model's name: the output directory's name.
    pub title: String,
    /// `base_model` in the front matter: the recipe's base model, else every ingredient.
    pub base_models: Vec<String>,
    /// Each ingredient's name and the weight actually used.
    pub ingredients: Vec<(String, f64)>,
    /// The output dtype of averaged tensors, or how each gets its own (promoted from its
    /// inputs'); `None` when each keeps the first input's.
    pub dtype: Option<String>,
    /// How tensors missing from some ingredients were handled (`error`, `skip`, ...).
    pub on_missing: String,
    /// Tensors not in every ingredient.
    pub missing: usize,
    /// The recipe file's text, when the merge came from `--config`.
    pub recipe: Option<String>,
    /// The merge method's name, and for methods other than linear its paper and parameters
    /// (JSON) and the base ingredient's name.
    pub method: String,
    pub paper: Option<String>,
    pub parameters: Option<String>,
    pub base: Option<String>,
}

#[derive(Serialize)]
struct FrontMatter<'a> {
    base_model: &'a [String],
    library_name: &'static str,
    tags: [&'static str; 2],
}

impl Card {
    /// A card for `plan`, with the ingredients named as the Hub would name them where the path
    /// shows it (a Hugging Face cache snapshot), else by their file or directory name. A
    /// `base_model` that is not a local path is taken as a Hub id, as written.
    pub fn for_plan(plan: &Plan, title: &str, base_model: Option<&str>) -> Card {
        let ingredients: Vec<(String, f64)> = plan
            .ingredients
            .iter()
            .zip(&plan.weights)
            .map(|(c, &w)| (model_name(c.path()), w))
            .collect();
        let base_models = match base_model {
            // A Hub id (not a local path) is already what the Hub calls it.
            Some(b) if !Path::new(b).exists() => vec![b.to_string()],
            Some(b) => vec![model_name(Path::new(b))],
            None => ingredients.iter().map(|(n, _)| n.clone()).collect(),
        };
        let linear = plan.method == "linear";
        Card {
            title: title.to_string(),
            base_models,
            ingredients,
            dtype: None,
            on_missing: "error".into(),
            missing: plan.missing.len(),
            recipe: None,
            method: plan.method.to_string(),
            paper: (!linear)
                .then(|| super::method::find(plan.method).map(|m| m.paper().to_string()))
                .flatten(),
            parameters: (!linear)
                .then(|| plan.metadata.get(META_PARAMETERS).cloned())
                .flatten(),
            base: plan.base.map(|b| model_name(plan.ingredients[b].path())),
        }
    }

    /// The card's text.
    pub fn render(&self) -> String {
        let front = serde_yaml::to_string(&FrontMatter {
            base_model: &self.base_models,
            library_name: "transformers",
            tags: ["merge", "model-soup"],
        })
        .expect("strings serialise");
        let mut s = format!("---\n{front}---\n\n# {}\n\n", self.title);
        if self.method == "linear" {
            s += &format!(
                "This model is a weighted average of {} fine-tuned models (a model soup, \
                 [Wortsman et al., 2022](https://arxiv.org/abs/2203.05482)), made with {}.\n\n",
                self.ingredients.len(),
                tool_version()
            );
            s += "## Recipe\n\n";
            s +=
                "Method: linear. Every floating-point tensor is `sum_i w_i * x_i`, accumulated in \
                  f32 (f64 for f32/f64 outputs) in input order and rounded once; other tensors are \
                  copied from the first model.\n\n";
        } else {
            s += &format!(
                "This model merges {} models with the {} method{}, made with {}.\n\n",
                self.ingredients.len(),
                self.method,
                self.paper
                    .as_ref()
                    .map_or_else(String::new, |p| format!(" ({p})")),
                tool_version()
            );
            s += "## Recipe\n\n";
            s += &format!(
                "Method: {}. Floating-point tensors are computed in f32 (f64 for f32/f64 \
                 outputs) and rounded once; other tensors are copied from {}.\n\n",
                self.method,
                self.base.as_deref().unwrap_or("the first model")
            );
            if let Some(p) = &self.parameters {
                s += &format!("Parameters: `{p}`\n\n");
            }
        }
        s += "| # | model | weight |\n|---|---|---|\n";
        for (i, (name, w)) in self.ingredients.iter().enumerate() {
            let w = if self.base.as_deref() == Some(name.as_str()) && i == 0 {
                "base".to_string()
            } else if w.is_finite() {
                w.to_string()
            } else {
                "see parameters".to_string()
            };
            s += &format!("| {i} | {} | {w} |\n", name.replace('|', "\\|"));
        }
        s += &format!(
            "\nOutput dtype: {}. Tensors not in every model: {} (--on-missing {}).\n",
            self.dtype.as_deref().unwrap_or("as the first model's"),
            self.missing,
            self.on_missing
        );
        if let Some(recipe) = &self.recipe {
            s += &format!(
                "\n### Configuration\n\n```yaml\n{}\n```\n",
                recipe.trim_end()
            );
        }
        s += &format!("\nTool: {}.\n", tool_version());
        s
    }
}

/// How a model is named on the Hub: `org/name` for a Hugging Face cache snapshot
/// (`.../models--org--name/snapshots/REV`), else the file or directory name.
pub fn model_name(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if let Some(pos) = parts.iter().rposition(|p| p == "snapshots") {
        if let Some(repo) = pos
            .checked_sub(1)
            .and_then(|i| parts[i].strip_prefix("models--"))
        {
            return repo.replacen("--", "/", 1);
        }
    }
    display_name(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_yaml_with_tags_and_base_models() {
        let card = Card {
            title: "soup".into(),
            base_models: vec!["a: odd".into(), "org/b".into()],
            ingredients: vec![("a: odd".into(), 0.5), ("org/b".into(), 0.5)],
            dtype: Some("bfloat16".into()),
            on_missing: "error".into(),
            missing: 0,
            recipe: Some("merge_method: linear\n".into()),
            method: "linear".into(),
            paper: None,
            parameters: None,
            base: None,
        };
        let text = card.render();
        let front = text
            .strip_prefix("---\n")
            .unwrap()
            .split("---\n")
            .next()
            .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(front).unwrap();
        assert_eq!(v["base_model"][0].as_str(), Some("a: odd"));
        assert_eq!(v["tags"][0].as_str(), Some("merge"));
        assert_eq!(v["tags"][1].as_str(), Some("model-soup"));
        assert!(text.contains("| 1 | org/b | 0.5 |"), "{text}");
        assert!(
            text.contains("```yaml\nmerge_method: linear\n```"),
            "{text}"
        );
    }

    #[test]
    fn names_cache_snapshots_by_repo() {
        let p = Path::new("/h/hub/models--meta-llama--Llama-3--8B/snapshots/abc123");
        assert_eq!(model_name(p), "meta-llama/Llama-3--8B");
        assert_eq!(model_name(Path::new("runs/ft1")), "ft1");
    }
}
