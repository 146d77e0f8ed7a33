//! `ties`: trim, elect a sign, take the disjoint mean.

use super::common::*;
use super::{BaseUse, Method, Param, Sparsify, TensorInfo, TensorParams, Work};

/// TIES-Merging: each task vector keeps its `density` largest magnitudes; each element's sign
/// is the sign of the weighted sum of the trimmed vectors; the terms of that sign are summed
/// and, under `normalize` (default true), divided by the sum of their weights.
///
/// Yadav et al. 2023, "TIES-Merging: resolving interference when merging models". mergekit
/// (followed here) elects the sign of the *weighted* sum of the trimmed vectors, where the
/// paper sums the unweighted ones, and divides by the sum of the agreeing weights, where the
/// paper divides by their count.
pub struct Ties;

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    LAMBDA,
    normalize(true),
    rescale(false),
    INT8_MASK,
];

impl Method for Ties {
    fn name(&self) -> &'static str {
        "ties"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2306.01708"
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
    fn work(&self, t: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        task_vectors(t, p, Some(Sparsify::Magnitude), true)
    }
}
