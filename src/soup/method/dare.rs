//! `dare_linear` and `dare_ties`: random drops, rescaled.

use super::common::*;
use super::{Param, Sparsify};

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
pub const DARE_LINEAR: Trimmed = Trimmed {
    name: "dare_linear",
    paper: "https://arxiv.org/abs/2311.03099",
    params: PARAMS,
    sparsify: Sparsify::Random,
    elect_sign: false,
};

/// DARE with TIES' sign election; see [`DARE_LINEAR`].
pub const DARE_TIES: Trimmed = Trimmed {
    name: "dare_ties",
    paper: "https://arxiv.org/abs/2311.03099",
    params: PARAMS,
    sparsify: Sparsify::Random,
    elect_sign: true,
};

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    LAMBDA,
    normalize(false),
    rescale(true),
    INT8_MASK,
];
