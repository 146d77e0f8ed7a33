//! `della` and `della_linear`: drops with probabilities ranked by magnitude.

use super::common::*;
use super::{Param, Sparsify};

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
pub const DELLA: Trimmed = Trimmed {
    name: "della",
    paper: "https://arxiv.org/abs/2406.11617",
    params: DELLA_PARAMS,
    sparsify: Sparsify::DellaMagprune,
    elect_sign: true,
};

/// DELLA without the sign election; see [`DELLA`].
pub const DELLA_LINEAR: Trimmed = Trimmed {
    name: "della_linear",
    paper: "https://arxiv.org/abs/2406.11617",
    params: DELLA_LINEAR_PARAMS,
    sparsify: Sparsify::DellaMagprune,
    elect_sign: false,
};

const DELLA_PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    EPSILON,
    LAMBDA,
    normalize(true),
    rescale(true),
    INT8_MASK,
];

const DELLA_LINEAR_PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    EPSILON,
    LAMBDA,
    normalize(false),
    rescale(true),
    INT8_MASK,
];
