//! Layer positions from tensor names, for per-layer gradient parameters: mergekit interpolates
//! a list such as `t: [0, 0.5, 1]` over the layer index, at `index / (layers - 1)`.

use std::collections::BTreeMap;

/// The layer stacks of a model, read from its tensor names: `model.layers.7.mlp.up.weight` is
/// layer 7 of the stack `model.layers`. A name's first all-digit dotted component is its layer
/// index; the part before it names the stack, and a stack has as many layers as its largest
/// index plus one (mergekit reads the count from the architecture; the names say the same for
/// every transformers model). Tensors outside any stack (embeddings, the final norm) sit at
/// position 0, as mergekit's pre- and post-layer weights do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layers {
    stacks: BTreeMap<String, u64>,
}

/// A tensor's stack and index, if it is in one.
fn position(name: &str) -> Option<(&str, u64)> {
    let mut start = 0;
    for part in name.split('.') {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && start > 0 {
            let index = part.parse().ok()?;
            return Some((&name[..start - 1], index));
        }
        start += part.len() + 1;
    }
    None
}

impl Layers {
    /// The stacks in these tensor names.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Layers {
        let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
        for name in names {
            if let Some((stack, index)) = position(name) {
                let n = stacks.entry(stack.to_string()).or_default();
                *n = (*n).max(index.saturating_add(1));
            }
        }
        Layers { stacks }
    }

    /// The most layers any stack has (0 when no name has a layer index).
    pub fn most(&self) -> u64 {
        self.stacks.values().copied().max().unwrap_or(0)
    }

    /// Where a tensor sits for gradient interpolation, in [0, 1]: `index / (layers - 1)`, 1 for
    /// a stack of one layer, 0 outside any stack.
    pub fn position(&self, name: &str) -> f64 {
        match position(name) {
            Some((stack, index)) => {
                let layers = self.stacks.get(stack).copied().unwrap_or(1);
                if layers > 1 {
                    index as f64 / (layers - 1) as f64
                } else {
                    1.0
                }
            }
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_counted_apart() {
        let l = Layers::from_names([
            "model.embed_tokens.weight",
            "model.layers.0.mlp.weight",
            "model.layers.2.mlp.weight",
            "model.layers.10.mlp.experts.3.weight",
            "vision.blocks.0.attn.weight",
            "vision.blocks.1.attn.weight",
            "lm_head.weight",
            "3.weight",
        ]);
        assert_eq!(l.most(), 11);
        assert_eq!(l.position("model.layers.0.mlp.weight"), 0.0);
        assert_eq!(l.position("model.layers.10.mlp.experts.3.weight"), 1.0);
        assert_eq!(l.position("model.layers.5.x"), 0.5);
        assert_eq!(l.position("vision.blocks.1.attn.weight"), 1.0);
        assert_eq!(l.position("lm_head.weight"), 0.0);
        // A leading number is a name, not a layer of an unnamed stack.
        assert_eq!(l.position("3.weight"), 0.0);
    }

    #[test]
    fn one_layer_sits_at_the_end() {
        let l = Layers::from_names(["h.0.w"]);
        assert_eq!(l.position("h.0.w"), 1.0);
    }
}
