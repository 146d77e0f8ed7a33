//! `breadcrumbs` and `breadcrumbs_ties`: drop the largest and the smallest magnitudes.

use super::common::*;
use super::{Param, Sparsify};

/// Model Breadcrumbs: each task vector drops its `floor(gamma * n)` largest magnitudes and
/// enough of its smallest to keep `floor(density * n)`; when `gamma` leaves too few, fewer
/// large ones are dropped. `breadcrumbs` sums the weighted vectors, `breadcrumbs_ties` elects
/// a sign first; neither normalizes nor rescales by default.
///
/// Davari and Belilovsky 2024, "Model Breadcrumbs: scaling multi-task model merging with sparse
/// masks", which masks per layer as here (per tensor) with its `beta` as `gamma`. When
/// `floor(gamma * n)` is 0 (a tensor under 100 elements at the default 0.01), no large
/// magnitude is dropped and the smallest are, as the paper intends and as mergekit 0.1.5 does
/// (older mergekit sliced `indices[n_bot:-0]` and dropped the whole task vector).
pub const BREADCRUMBS: Trimmed = Trimmed {
    name: "breadcrumbs",
    paper: "https://arxiv.org/abs/2312.06795",
    params: PARAMS,
    sparsify: Sparsify::MagnitudeOutliers,
    elect_sign: false,
};

/// Breadcrumbs with TIES' sign election; see [`BREADCRUMBS`].
pub const BREADCRUMBS_TIES: Trimmed = Trimmed {
    name: "breadcrumbs_ties",
    paper: "https://arxiv.org/abs/2312.06795",
    params: PARAMS,
    sparsify: Sparsify::MagnitudeOutliers,
    elect_sign: true,
};

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    GAMMA,
    LAMBDA,
    normalize(false),
    rescale(false),
    INT8_MASK,
];
