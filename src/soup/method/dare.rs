//! `dare_linear` and `dare_ties`: random drops, rescaled.

use super::common::*;
use super::{BaseUse, Method, Param, Sparsify, TensorInfo, TensorParams, Work};

/// DARE: each element of each task vector is kept with probability `density`; with `rescale`
/// (default true) the survivors are scaled back up. `dare_linear` then sums the weighted
/// vectors, `dare_ties` elects a sign first as TIES does. `normalize` defaults to false for both.
///
/// Yu et al. 2024, "Language models are Super Mario: absorbing abilities from homologous models
/// as a free lunch". The paper rescales by `1 / density`; mergekit (followed here) scales each
/// trimmed vector so that its L1 norm matches the untrimmed one's. The drops come from a
/// stream keyed by `--seed`, the tensor's name and the model (see `random_stream`), so the
/// same seed gives the same bytes at any thread count; the bytes differ from mergekit's, whose
/// drops come from torch's generator.
pub struct DareLinear;

/// DARE with TIES' sign election; see [`DareLinear`].
pub struct DareTies;

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    LAMBDA,
    normalize(false),
    rescale(true),
    INT8_MASK,
];

impl Method for DareLinear {
    fn name(&self) -> &'static str {
        "dare_linear"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2311.03099"
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
        task_vectors(t, p, Some(Sparsify::Random), false)
    }
}

impl Method for DareTies {
    fn name(&self) -> &'static str {
        "dare_ties"
    }
    fn paper(&self) -> &'static str {
        "https://arxiv.org/abs/2311.03099"
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
        task_vectors(t, p, Some(Sparsify::Random), true)
    }
}
