//! `ties`: trim, elect a sign, take the disjoint mean.

use super::common::*;
use super::{Param, Sparsify};

/// TIES-Merging: each task vector keeps its `density` largest magnitudes; each element's sign
/// is the sign of the weighted sum of the trimmed vectors; the terms of that sign are summed
/// and, under `normalize` (default true), divided by the sum of their weights.
///
/// Yadav et al. 2023, "TIES-Merging: resolving interference when merging models". mergekit
/// (followed here) elects the sign of the *weighted* sum of the trimmed vectors, where the
/// paper sums the unweighted ones, and divides by the sum of the agreeing weights, where the
/// paper divides by their count.
pub const TIES: Trimmed = Trimmed {
    name: "ties",
    paper: "https://arxiv.org/abs/2306.01708",
    params: PARAMS,
    sparsify: Sparsify::Magnitude,
    elect_sign: true,
};

const PARAMS: &[Param] = &[
    WEIGHT,
    DENSITY,
    LAMBDA,
    normalize(true),
    rescale(false),
    INT8_MASK,
];
