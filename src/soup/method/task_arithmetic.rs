//! `task_arithmetic`: the base plus the weighted sum of the task vectors.

use super::common::*;
use super::{BaseUse, Method, Param, TensorInfo, TensorParams, Work};

/// `base + lambda * sum_i w_i (x_i - base)`, divided by `sum_i w_i` under `normalize` (default
/// false): task vectors with no trim and no election, which the planner folds into one linear
/// combination of the inputs (see [`super::TaskVectors::folded`]), so it runs on the fused
/// streaming kernel.
///
/// Ilharco et al. 2023, "Editing models with task arithmetic". mergekit runs it as generalized
/// task arithmetic with no trimming, so it declares `density`, `rescale` and `int8_mask` too;
/// they are accepted and have no effect here either.
pub struct TaskArithmetic;

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    LAMBDA,
    normalize(false),
    rescale(false),
    INT8_MASK,
];

impl Method for TaskArithmetic {
    fn name(&self) -> &'static str {
        "task_arithmetic"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2212.04089"
    }
    fn params(&self) -> &'static [Param] {
        PARAMS
    }
    fn base(&self) -> BaseUse {
        BaseUse::Required
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        check_task_vector_models(models)
    }
    fn work(&self, tensor: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        task_vectors(tensor, p, None, false)
    }
}
