//! `passthrough`: one model's tensors, optionally scaled.

use super::{BaseUse, Kind, Method, Param, Scope, TensorInfo, TensorParams, Work};

/// Copies the one model's tensors, multiplied by `scale` (default 1). mergekit uses it to
/// stack layer slices; soup-merge has no slices, so it converts or scales one model (with
/// `filter`s, a scale per tensor).
pub struct Passthrough;

const PARAMS: &[Param] = &[Param {
    name: "scale",
    scope: Scope::PerModel,
    kind: Kind::ANY,
    default: Some(1.0),
    doc: "factor the tensors are multiplied by",
}];

impl Method for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }
    fn paper(&self) -> &'static str {
        "https://github.com/arcee-ai/mergekit"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Unused
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        if models != 1 {
            return Err(format!("takes exactly one model, not {models}"));
        }
        Ok(())
    }
    fn work(&self, _: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        Ok(Work::Linear(vec![(0, p.model(0, "scale"))]))
    }
}
