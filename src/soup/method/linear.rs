//! `linear`: the weighted average, the model soup itself.

use super::{BaseUse, Kind, Method, Param, Scope, TensorInfo, TensorParams, Work};

/// `sum_i w_i * x_i`, divided by `sum_i w_i` under `normalize` (mergekit's default; the flags
/// use the weights as given unless `--normalize`).
///
/// Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves
/// accuracy without increasing inference time". mergekit divides the weighted sum by the sum of
/// the weights; dividing the weights first, as here, differs only in rounding.
pub struct Linear;

const PARAMS: &[Param] = &[
    Param {
        name: "weight",
        scope: Scope::PerModel,
        kind: Kind::ANY,
        default: None,
        doc: "the model's weight",
    },
    Param {
        name: "normalize",
        scope: Scope::Global,
        kind: Kind::Bool,
        default: Some(1.0),
        doc: "divide by the sum of the weights",
    },
];

impl Method for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2203.05482"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Unused
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        if models == 0 {
            return Err("needs at least one model".into());
        }
        Ok(())
    }
    fn work(&self, _: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        let weights: Vec<f64> = (0..p.models()).map(|m| p.model(m, "weight")).collect();
        let sum: f64 = weights.iter().sum();
        let div = if p.flag("normalize") {
            if sum == 0.0 || !sum.is_finite() {
                return Err(format!(
                    "the weights sum to {sum}, so normalize can't divide by it; set normalize: false or change the weights"
                ));
            }
            sum
        } else {
            1.0
        };
        Ok(Work::Linear(
            weights
                .iter()
                .enumerate()
                .map(|(m, w)| (m, w / div))
                .collect(),
        ))
    }
}
