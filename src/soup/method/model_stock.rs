//! `model_stock`: the base pulled toward the fine-tunes' average by their angle.

use super::{BaseUse, Gram, Grouping, Kind, Method, Param, Scope, TensorInfo, TensorParams, Work};

/// Model Stock: with the task vectors `o_i = x_i - base` of `N >= 2` fine-tunes and `cos` the
/// mean over pairs of `<o_i, o_j> / max(|o_i| |o_j|, 1e-6)` (each clamped to [-1, 1]),
/// `t = N cos / (1 + (N - 1) cos)` and `out = t * mean(x_i) + (1 - t) * base`, with `t = 0`
/// (the base) where `|1 + (N - 1) cos| < 1e-6`, as mergekit guards it. Per tensor, or per row
/// of the last dimension with `filter_wise: true`.
///
/// Jang et al. 2024, "Model Stock: all we need is just a few fine-tuned models". The paper
/// derives `t` for one angle shared by every pair; mergekit (followed here) averages the
/// pairwise cosines when there are more than two fine-tunes.
pub struct ModelStock;

const PARAMS: &[Param] = &[Param {
    name: "filter_wise",
    scope: Scope::Global,
    kind: Kind::Bool,
    default: Some(0.0),
    doc: "one angle per row of the last dimension instead of per tensor",
}];

impl Method for ModelStock {
    fn name(&self) -> &'static str {
        "model_stock"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2403.19522"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Required
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        if models < 2 {
            return Err(format!(
                "needs the base and at least two fine-tunes (the angle between their task vectors sets the ratio), but got {models}"
            ));
        }
        Ok(())
    }
    fn work(&self, tensor: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        let n = p.models();
        // Inputs 0..n are the fine-tunes, input n the base.
        let vectors = (0..n).map(|i| vec![(i, 1.0), (n, -1.0)]).collect();
        let grouping = if p.flag("filter_wise") && tensor.shape.len() >= 2 {
            Grouping::Rows(*tensor.shape.last().expect("2 or more dims"))
        } else {
            Grouping::Flat
        };
        let finish = move |g: &Gram| {
            let mut sum = 0.0;
            let mut pairs = 0;
            for i in 0..n {
                for j in i + 1..n {
                    let norms = g.dot(i, i).sqrt() * g.dot(j, j).sqrt();
                    sum += (g.dot(i, j) / norms.max(1e-6)).clamp(-1.0, 1.0);
                    pairs += 1;
                }
            }
            let cos = sum / pairs as f64;
            // Opposite task vectors leave the ratio no finite value: the base is kept, as
            // mergekit does, instead of an update amplified without bound.
            let denominator = 1.0 + (n as f64 - 1.0) * cos;
            let t = if denominator.abs() < 1e-6 {
                0.0
            } else {
                n as f64 * cos / denominator
            };
            let mut c: Vec<(usize, f64)> = (0..n).map(|i| (i, t / n as f64)).collect();
            c.push((n, 1.0 - t));
            c
        };
        Ok(Work::Statistics {
            grouping,
            vectors,
            finish: Box::new(finish),
        })
    }
}
