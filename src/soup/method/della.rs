//! `della` and `della_linear`: drops with probabilities ranked by magnitude.

use super::common::*;
use super::{BaseUse, Method, Param, Sparsify, TensorInfo, TensorParams, Work};

/// DELLA: within each row (along dimension 1) of each task vector, elements are kept with
/// probabilities from `density - epsilon` (smallest magnitude) to `density + epsilon`
/// (largest), linear in rank; with `rescale` (default true) the survivors are scaled back to
/// the vector's L1 norm. `della` then elects a sign and divides by the agreeing weights
/// (`normalize` default true); `della_linear` sums the weighted vectors (`normalize` false).
///
/// Deep et al. 2024, "DELLA-Merging: reducing interference in model merging through
/// magnitude-based sampling". The paper rescales each survivor by its own `1 / p`; mergekit
/// (followed here) matches the L1 norm of the whole vector. Equal magnitudes in a row are
/// ranked by index (torch's sort leaves it open). A row of one element, where mergekit's rank
/// normalisation divides by zero, gets probability `density`. Drops are seeded as DARE's.
pub struct Della;

/// DELLA without the sign election; see [`Della`].
pub struct DellaLinear;

const DELLA: &[Param] = &[
    WEIGHT,
    DENSITY,
    EPSILON,
    LAMBDA,
    normalize(true),
    rescale(true),
    INT8_MASK,
];

const DELLA_LINEAR: &[Param] = &[
    WEIGHT,
    DENSITY,
    EPSILON,
    LAMBDA,
    normalize(false),
    rescale(true),
    INT8_MASK,
];

impl Method for Della {
    fn name(&self) -> &'static str {
        "della"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2406.11617"
    }
    fn params(&self) -> &'static [Param] {
        DELLA
    }
    fn base(&self) -> BaseUse {
        BaseUse::Required
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        check_task_vector_models(models)
    }
    fn work(&self, t: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        task_vectors(t, p, Some(Sparsify::DellaMagprune), true)
    }
}

impl Method for DellaLinear {
    fn name(&self) -> &'static str {
        "della_linear"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2406.11617"
    }
    fn params(&self) -> &'static [Param] {
        DELLA_LINEAR
    }
    fn base(&self) -> BaseUse {
        BaseUse::Required
    }
    fn check_models(&self, models: usize, _: bool) -> Result<(), String> {
        check_task_vector_models(models)
    }
    fn work(&self, t: &TensorInfo<'_>, p: &TensorParams) -> Result<Work, String> {
        task_vectors(t, p, Some(Sparsify::DellaMagprune), false)
    }
}
