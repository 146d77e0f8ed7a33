//! Checkpoints that are not a model's own state dict, recognised so that the error names the
//! fix: tensor names under a training wrapper's prefix (DataParallel's `module.`, Lightning's
//! `model.`, PEFT's `base_model.model.`, torch.compile's `_orig_mod.`), and LoRA adapters.
//!
//! Nothing here changes what is read: a prefixed checkpoint is still refused (its soup would
//! keep the prefix, and no loader of the plain model would read it), but the refusal says
//! which prefix to strip instead of only that `conv1.weight` is missing.

use std::collections::HashSet;

use super::{Layout, FAMILIES};

/// The dotted prefixes every name shares, shortest first: `module.` and `module.model.` for
/// names that all start with `module.model.`. Empty when the names share none (or there are
/// none).
fn shared_prefixes<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names = names.into_iter();
    let Some(first) = names.next() else {
        return Vec::new();
    };
    // The longest dotted prefix of the first name that every other name has too.
    let mut common: Vec<&str> = first.split('.').collect();
    common.pop(); // A whole name is not a prefix.
    for name in names {
        let parts: Vec<&str> = name.split('.').collect();
        let shared = common
            .iter()
            .zip(&parts[..parts.len() - 1])
            .take_while(|(a, b)| a == b)
            .count();
        common.truncate(shared);
        if common.is_empty() {
            return Vec::new();
        }
    }
    (1..=common.len())
        .map(|n| format!("{}.", common[..n].join(".")))
        .collect()
}

/// What to do with a checkpoint whose names all start with `prefix`.
fn strip_advice(prefix: &str) -> String {
    format!(
        "its tensor names all start with '{prefix}', a training wrapper's prefix (DataParallel's module., Lightning's model., PEFT's base_model.model.); save the state dict without it: {{k.removeprefix(\"{prefix}\"): v for k, v in state_dict.items()}}"
    )
}

/// Whether the names are a LoRA adapter's factors rather than a model's weights.
fn is_lora<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| {
        n.contains("lora_A.")
            || n.contains("lora_B.")
            || n.contains(".lora_down.")
            || n.contains(".lora_up.")
    })
}

/// What to do with a LoRA adapter given as a model.
const LORA_ADVICE: &str = "it is a LoRA adapter (lora_A/lora_B factors), not a model: merge it into its base model first (peft: PeftModel.from_pretrained(base, ADAPTER_DIR).merge_and_unload().save_pretrained(OUT_DIR)) and pass OUT_DIR";

/// Why a checkpoint with these `names` lacks `tensor`, when the reason is a wrapper's prefix
/// (the tensor is there under it) or a LoRA adapter; `None` for a checkpoint that is simply
/// another model.
pub fn missing_hint(names: &[&str], tensor: &str) -> Option<String> {
    if is_lora(names.iter().copied()) {
        return Some(LORA_ADVICE.to_string());
    }
    let all: HashSet<&str> = names.iter().copied().collect();
    shared_prefixes(names.iter().copied())
        .into_iter()
        .find(|p| all.contains(format!("{p}{tensor}").as_str()))
        .map(|p| strip_advice(&p))
}

/// Why `--arch auto` recognises no family in `layout`, when a fix is known: a LoRA adapter, or
/// a wrapper's prefix without which a family would recognise it.
pub fn detect_hint(layout: &Layout) -> Option<String> {
    if is_lora(layout.names()) {
        return Some(LORA_ADVICE.to_string());
    }
    shared_prefixes(layout.names()).into_iter().find_map(|p| {
        let stripped = Layout {
            shapes: layout
                .shapes
                .iter()
                .map(|(n, s)| (n[p.len()..].to_string(), s.clone()))
                .collect(),
            config: layout.config.clone(),
        };
        let family = FAMILIES.iter().find(|f| f.detect(&stripped))?;
        Some(format!(
            "{}; without it, it is a {} checkpoint",
            strip_advice(&p),
            family.name()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_prefixes_are_whole_dotted_components() {
        assert_eq!(
            shared_prefixes(["module.model.a.weight", "module.model.b.weight"]),
            ["module.", "module.model."]
        );
        assert_eq!(shared_prefixes(["module.a", "module.b.c"]), ["module."]);
        // `model_a.` and `model_b.` share no component.
        assert!(shared_prefixes(["model_a.x", "model_b.x"]).is_empty());
        // A whole name is never a prefix of itself.
        assert!(shared_prefixes(["fc.weight"]) == ["fc."]);
        assert!(shared_prefixes(["weight", "bias"]).is_empty());
        assert!(shared_prefixes(Vec::<&str>::new()).is_empty());
    }

    #[test]
    fn a_missing_tensor_under_a_shared_prefix_names_the_prefix() {
        let names = ["module.conv1.weight", "module.fc.weight"];
        let hint = missing_hint(&names, "conv1.weight").unwrap();
        assert!(hint.contains("start with 'module.'"), "{hint}");
        // A tensor that is absent under the prefix too is another model, not a wrapper.
        assert_eq!(missing_hint(&names, "bn1.weight"), None);
        // A tied Llama's names all start with model. legitimately: no hint.
        assert_eq!(
            missing_hint(
                &["model.embed_tokens.weight", "model.norm.weight"],
                "lm_head.weight"
            ),
            None
        );
        let peft = [
            "base_model.model.model.embed_tokens.weight",
            "base_model.model.lm_head.weight",
        ];
        let hint = missing_hint(&peft, "model.embed_tokens.weight").unwrap();
        assert!(hint.contains("'base_model.model.'"), "{hint}");
    }

    #[test]
    fn lora_factors_are_named_as_an_adapter() {
        let names = [
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        ];
        let hint = missing_hint(&names, "model.embed_tokens.weight").unwrap();
        assert!(hint.contains("LoRA adapter"), "{hint}");
        let layout = Layout::from_shapes(names.iter().map(|n| (*n, vec![4, 4])));
        assert!(detect_hint(&layout).unwrap().contains("merge_and_unload"));
    }
}
