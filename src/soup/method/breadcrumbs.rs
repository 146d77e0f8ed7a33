//! `breadcrumbs` and `breadcrumbs_ties`: drop the largest and the smallest magnitudes.

use super::common::*;
use super::{BaseUse, Method, Param, Sparsify, TensorInfo, TensorParams, Work};

/// Model Breadcrumbs: each task vector drops its `floor(gamma * n)` largest magnitudes and
/// enough of its smallest to keep `floor(density * n)`; when `gamma` leaves too few, fewer
/// large ones are dropped. `breadcrumbs` sums the weighted vectors, `breadcrumbs_ties` elects
/// a sign first; neither normalizes nor rescales by default.
///
/// Davari and Belilovsky 2024, "Model Breadcrumbs: scaling multi-task model merging with sparse
/// masks", which masks per layer as here (per tensor) with its `beta` as `gamma`. One
/// difference from mergekit: when `floor(gamma * n)` is 0 (a tensor under 100 elements at the
/// default 0.01), mergekit's slice `indices[n_bot:-0]` is empty and the whole task vector is
/// dropped; here no large magnitude is dropped and the smallest are, as the paper intends.
pub struct Breadcrumbs;

/// Breadcrumbs with TIES' sign election; see [`Breadcrumbs`].
pub struct BreadcrumbsTies;

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    GAMMA,
    LAMBDA,
    normalize(false),
    rescale(false),
    INT8_MASK,
];

impl Method for Breadcrumbs {
    fn name(&self) -> &'static str {
        "breadcrumbs"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2312.06795"
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
        task_vectors(t, p, Some(Sparsify::MagnitudeOutliers), false)
    }
}

impl Method for BreadcrumbsTies {
    fn name(&self) -> &'static str {
        "breadcrumbs_ties"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2312.06795"
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
        task_vectors(t, p, Some(Sparsify::MagnitudeOutliers), true)
    }
}
