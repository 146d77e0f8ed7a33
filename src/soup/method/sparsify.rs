//! Trimming a task vector (mergekit's `sparsify`): which elements each model keeps, and the
//! factor that restores its L1 norm. Thresholds come from selection (`select_nth_unstable`),
//! random drops from a counter-based stream keyed by the seed, the tensor's name and the model,
//! so the kept set never depends on the thread count or on the order tensors are processed in.
//!
//! Every trim works on the whole tensor but keeps only a bitmask (one bit per element) and one
//! scale per model; the combination then streams chunk by chunk.

use std::ops::Range;

use rayon::prelude::*;

use crate::soup::kernel::{Real, CHUNK_ELEMENTS};

/// How a task vector is trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep the `floor(density * n)` largest magnitudes (TIES). Among equal magnitudes at the
    /// threshold the lower flat indices are kept (torch's unstable sort leaves this open).
    Magnitude,
    /// Keep each element with probability `density` (DARE).
    Random,
    /// Drop the `floor(gamma * n)` largest magnitudes and enough of the smallest to keep
    /// `floor(density * n)` (Model Breadcrumbs). Ties at either threshold are ranked by flat
    /// index, lower first, as a stable ascending sort ranks them.
    MagnitudeOutliers,
    /// Keep each element with a probability from `density - epsilon` (smallest magnitude of
    /// its row) to `density + epsilon` (largest), linear in its rank (DELLA's MagPrune). Rows
    /// run along dimension 1, as in mergekit; a tensor of fewer than two dimensions is one row.
    DellaMagprune,
}

impl Sparsify {
    /// Checks the parameters for a tensor of `n` elements, from headers alone.
    pub fn check(self, n: u64, density: f64, gamma: f64, epsilon: f64) -> Result<(), String> {
        if density >= 1.0 || n == 0 {
            return Ok(());
        }
        match self {
            Sparsify::Magnitude if ((density * n as f64) as u64) == 0 => Err(format!(
                "density {density} keeps no element of a tensor of {n}; raise density to at least {}",
                1.0 / n as f64
            )),
            Sparsify::DellaMagprune if density + epsilon >= 1.0 || density - epsilon <= 0.0 => {
                Err(format!(
                    "epsilon {epsilon} with density {density} gives keep probabilities outside (0, 1); choose epsilon below min(density, 1 - density)"
                ))
            }
            _ => {
                let _ = gamma;
                Ok(())
            }
        }
    }
}

/// SplitMix64's finaliser: a bijection of u64 that mixes every bit into every other.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The key of model `model`'s random stream in tensor `tensor`:
/// `mix(mix(seed ^ fnv1a64(name)) ^ (model + 1))`, with FNV-1a over the name's UTF-8 bytes.
/// The test reference (tests/reference/methods_ref.py) derives the same stream independently.
pub fn random_stream(seed: u64, tensor: &str, model: usize) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in tensor.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(mix(seed ^ h) ^ (model as u64 + 1))
}

/// Element `index`'s uniform number in [0, 1) from stream `key`:
/// `(mix(key + (index + 1) * GOLDEN) >> 11) / 2^53`.
pub fn uniform(key: u64, index: u64) -> f64 {
    let z = mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// One model's trim: which elements survive (bit `e % 64` of word `e / 64`), and the factor
/// that the survivors are multiplied by.
pub struct Trim {
    pub keep: Vec<u64>,
    pub scale: f64,
}

impl Trim {
    /// Whether element `e` survives.
    pub fn kept(&self, e: usize) -> bool {
        self.keep[e / 64] >> (e % 64) & 1 == 1
    }
}

/// A model's trim parameters for one tensor.
pub struct TrimSpec<'a> {
    pub method: Sparsify,
    pub density: f64,
    pub gamma: f64,
    pub epsilon: f64,
    pub stream: u64,
    pub rescale: bool,
    pub shape: &'a [u64],
}

/// Fills `out` with the task vector's elements `range`, in the working precision.
pub type Deltas<'a, A> = dyn Fn(Range<usize>, &mut [A]) + Sync + 'a;

/// The rank boundary of an ascending order by magnitude: elements below it are those of
/// magnitude `< value`, plus `ties_below` of those equal to it.
struct Boundary<K> {
    value: K,
    ties_below: usize,
    ties: usize,
    /// Whether equal magnitudes rank by ascending flat index (else descending).
    ascending_ties: bool,
    /// Per chunk, the number of equal magnitudes before it.
    tie_offsets: Vec<usize>,
}

impl<K: Ord + Copy + Send + Sync> Boundary<K> {
    /// The boundary at ascending rank `rank` (< n) of `keys`, using `scratch` for selection.
    fn at(keys: &[K], scratch: &mut Vec<K>, rank: usize, ascending_ties: bool) -> Boundary<K> {
        scratch.clear();
        scratch.extend_from_slice(keys);
        let (below, value, _) = scratch.select_nth_unstable(rank);
        let value = *value;
        let less = below.iter().filter(|k| **k < value).count();
        // Ties only need placing when some but not all of them are below.
        let mut tie_offsets = Vec::new();
        let ties_below = rank - less;
        let counts: Vec<usize> = keys
            .par_chunks(CHUNK_ELEMENTS)
            .map(|c| c.iter().filter(|k| **k == value).count())
            .collect();
        let ties = counts.iter().sum();
        let mut acc = 0;
        for c in counts {
            tie_offsets.push(acc);
            acc += c;
        }
        Boundary {
            value,
            ties_below,
            ties,
            ascending_ties,
            tie_offsets,
        }
    }

    /// Whether the element with magnitude `key`, which is the `tie`-th equal one in flat order
    /// when `key == value`, is below the boundary.
    fn below(&self, key: K, tie: usize) -> bool {
        if key != self.value {
            return key < self.value;
        }
        if self.ascending_ties {
            tie < self.ties_below
        } else {
            tie >= self.ties - self.ties_below
        }
    }
}

/// Computes a model's trim of a tensor of `n` elements.
pub fn trim<A: Real>(spec: &TrimSpec<'_>, n: usize, deltas: &Deltas<'_, A>) -> Trim {
    let words = n.div_ceil(64);
    let mut keep = vec![0u64; words];
    let keys = || {
        let mut keys = vec![A::Key::default(); n];
        keys.par_chunks_mut(CHUNK_ELEMENTS)
            .enumerate()
            .for_each_init(Vec::new, |buf: &mut Vec<A>, (c, out)| {
                let start = c * CHUNK_ELEMENTS;
                buf.resize(out.len(), A::ZERO);
                deltas(start..start + out.len(), buf);
                for (k, d) in out.iter_mut().zip(buf.iter()) {
                    *k = d.magnitude();
                }
            });
        keys
    };
    // Each rule says whether element `e` (magnitude `key`, and per boundary its tie position)
    // survives; the pass below applies it chunk by chunk, in parallel, and sums the L1 norms
    // before and after in chunk order.
    let (before, after) = match spec.method {
        Sparsify::Random => {
            let p = spec.density;
            mask_pass(&mut keep, n, |range, bits, sums| {
                // Tiles on the stack: no allocation per chunk.
                const TILE: usize = 4096;
                let mut buf = [A::ZERO; TILE];
                for (t, bits) in bits.chunks_mut(TILE / 64).enumerate() {
                    let start = range.start + t * TILE;
                    let len = TILE.min(range.end - start);
                    deltas(start..start + len, &mut buf[..len]);
                    set_bits(bits, len, |j| uniform(spec.stream, (start + j) as u64) < p);
                    add_l1(|j| buf[j].abs(), len, bits, sums);
                }
            })
        }
        Sparsify::Magnitude | Sparsify::MagnitudeOutliers => {
            let keys = keys();
            let mut scratch = Vec::new();
            let kept = (spec.density * n as f64) as usize;
            if kept == 0 {
                // Only breadcrumbs gets here (the plan refuses it for TIES): nothing survives.
                return Trim { keep, scale: 1.0 };
            }
            let (low, high) = if spec.method == Sparsify::Magnitude {
                // The `kept` largest, equal magnitudes ranked by descending index so the lower
                // indices count as larger.
                let low =
                    (n - kept < n).then(|| Boundary::at(&keys, &mut scratch, n - kept, false));
                (low, None)
            } else {
                let mut top = (spec.gamma * n as f64) as usize;
                let bottom = match n.checked_sub(kept + top) {
                    Some(b) => b,
                    None => {
                        top = n - kept;
                        0
                    }
                };
                let low = (bottom > 0).then(|| Boundary::at(&keys, &mut scratch, bottom, true));
                let high = (top > 0).then(|| Boundary::at(&keys, &mut scratch, n - top, true));
                (low, high)
            };
            drop(scratch);
            mask_pass(&mut keep, n, |range, bits, sums| {
                let chunk = range.start / CHUNK_ELEMENTS;
                let mut tie_low = low.as_ref().map_or(0, |b| b.tie_offsets[chunk]);
                let mut tie_high = high.as_ref().map_or(0, |b| b.tie_offsets[chunk]);
                let keys = &keys[range.clone()];
                set_bits(bits, range.len(), |j| {
                    let k = keys[j];
                    let above_low = match &low {
                        Some(b) if k == b.value => {
                            tie_low += 1;
                            !b.below(k, tie_low - 1)
                        }
                        Some(b) => k > b.value,
                        None => true,
                    };
                    let below_high = match &high {
                        Some(b) if k == b.value => {
                            tie_high += 1;
                            b.below(k, tie_high - 1)
                        }
                        Some(b) => k < b.value,
                        None => true,
                    };
                    above_low && below_high
                });
                add_l1(|j| A::from_magnitude(keys[j]), range.len(), bits, sums);
            })
        }
        Sparsify::DellaMagprune => {
            let keys = keys();
            let ranks = row_ranks(&keys, spec.shape);
            let (low, width) = (spec.density - spec.epsilon, 2.0 * spec.epsilon);
            mask_pass(&mut keep, n, |range, bits, sums| {
                let ranks = &ranks[range.clone()];
                set_bits(bits, range.len(), |j| {
                    let (rank, len) = ranks[j];
                    let p = if len > 1 {
                        low + (rank as f64 / (len - 1) as f64) * width
                    } else {
                        spec.density
                    };
                    uniform(spec.stream, (range.start + j) as u64) < p
                });
                let keys = &keys[range.clone()];
                add_l1(|j| A::from_magnitude(keys[j]), range.len(), bits, sums);
            })
        }
    };
    // mergekit's rescaled_masked_tensor: match the L1 norm, unless either norm is below 1e-7.
    let scale = if spec.rescale && before >= 1e-7 && after >= 1e-7 {
        before / after
    } else {
        1.0
    };
    Trim { keep, scale }
}

/// Sets bit `j` of `bits` to `keep(j)` for `j < len`, in element order, a word at a time.
fn set_bits(bits: &mut [u64], len: usize, mut keep: impl FnMut(usize) -> bool) {
    for (w, word) in bits.iter_mut().enumerate() {
        let start = w * 64;
        let mut x = 0u64;
        for j in start..(start + 64).min(len) {
            x |= (keep(j) as u64) << (j - start);
        }
        *word = x;
    }
}

/// Adds the L1 norms of a chunk before and after its trim to `sums`: eight f64 lanes summed in
/// a fixed order, so the loop vectorises and the result doesn't depend on threads.
fn add_l1<A: Real>(
    magnitude: impl Fn(usize) -> A,
    len: usize,
    bits: &[u64],
    sums: &mut (f64, f64),
) {
    let mut before = [0f64; 8];
    let mut after = [0f64; 8];
    for j in 0..len {
        let a = magnitude(j).to_f64();
        let kept = ((bits[j >> 6] >> (j & 63)) & 1) as f64;
        before[j & 7] += a;
        after[j & 7] += a * kept;
    }
    sums.0 += before.iter().sum::<f64>();
    sums.1 += after.iter().sum::<f64>();
}

/// Runs `rule` over fixed chunks in parallel; each chunk sets its own bits of `keep` and adds
/// its L1 norms (before, after) to a partial that is summed in chunk order.
fn mask_pass(
    keep: &mut [u64],
    n: usize,
    rule: impl Fn(Range<usize>, &mut [u64], &mut (f64, f64)) + Sync,
) -> (f64, f64) {
    let partials: Vec<(f64, f64)> = keep
        .par_chunks_mut(CHUNK_ELEMENTS / 64)
        .enumerate()
        .map(|(c, bits)| {
            let start = c * CHUNK_ELEMENTS;
            let end = (start + CHUNK_ELEMENTS).min(n);
            let mut sums = (0.0, 0.0);
            rule(start..end, bits, &mut sums);
            sums
        })
        .collect();
    partials
        .iter()
        .fold((0.0, 0.0), |acc, p| (acc.0 + p.0, acc.1 + p.1))
}

/// Each element's rank by magnitude within its row along dimension 1 (ascending, equal
/// magnitudes by index), and the row's length.
fn row_ranks<K: Ord + Copy + Send + Sync>(keys: &[K], shape: &[u64]) -> Vec<(u32, u32)> {
    let n = keys.len();
    let (outer, len, inner) = if shape.len() < 2 {
        (1, n, 1)
    } else {
        let len = shape[1] as usize;
        let inner: usize = shape[2..].iter().product::<u64>() as usize;
        (shape[0] as usize, len, inner)
    };
    let mut ranks = vec![(0u32, len as u32); n];
    if n == 0 {
        return ranks;
    }
    let block = len * inner;
    ranks.par_chunks_mut(block).enumerate().for_each_init(
        Vec::new,
        |row: &mut Vec<(K, u32)>, (a, out)| {
            for c in 0..inner {
                row.clear();
                row.extend((0..len).map(|b| (keys[a * block + b * inner + c], b as u32)));
                row.sort_unstable();
                for (rank, &(_, b)) in row.iter().enumerate() {
                    out[b as usize * inner + c].0 = rank as u32;
                }
            }
        },
    );
    let _ = outer;
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trim_of(method: Sparsify, values: &[f64], density: f64, gamma: f64) -> Vec<bool> {
        let spec = TrimSpec {
            method,
            density,
            gamma,
            epsilon: 0.0,
            stream: 7,
            rescale: false,
            shape: &[values.len() as u64],
        };
        let deltas = |r: Range<usize>, out: &mut [f64]| out.copy_from_slice(&values[r]);
        let t = trim::<f64>(&spec, values.len(), &deltas);
        (0..values.len()).map(|e| t.kept(e)).collect()
    }

    #[test]
    fn magnitude_keeps_the_largest_and_breaks_ties_by_index() {
        let kept = trim_of(
            Sparsify::Magnitude,
            &[1.0, -3.0, 2.0, -2.0, 2.0, 0.5],
            0.5,
            0.0,
        );
        assert_eq!(kept, [false, true, true, true, false, false]);
        let all = trim_of(Sparsify::Magnitude, &[0.0; 5], 0.4, 0.0);
        assert_eq!(all, [true, true, false, false, false]);
    }

    #[test]
    fn outliers_drop_both_ends() {
        // 10 elements, density 0.6 keeps 6, gamma 0.2 drops the 2 largest and the 2 smallest.
        let v: Vec<f64> = (0..10)
            .map(|i| i as f64 * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let kept = trim_of(Sparsify::MagnitudeOutliers, &v, 0.6, 0.2);
        assert_eq!(
            kept,
            [false, false, true, true, true, true, true, true, false, false]
        );
        // gamma above 1 - density is cut down to keep the density.
        let kept = trim_of(Sparsify::MagnitudeOutliers, &v, 0.6, 0.9);
        assert_eq!(kept.iter().filter(|k| **k).count(), 6);
        assert!(kept[0]);
    }

    #[test]
    fn random_drops_follow_the_stream_only() {
        let v = vec![1.0; 1000];
        let a = trim_of(Sparsify::Random, &v, 0.3, 0.0);
        let kept = a.iter().filter(|k| **k).count();
        assert!((250..350).contains(&kept), "{kept}");
        for (e, k) in a.iter().enumerate() {
            assert_eq!(*k, uniform(7, e as u64) < 0.3);
        }
    }

    #[test]
    fn streams_differ_by_seed_name_and_model() {
        let s = random_stream(1, "a.weight", 0);
        assert_ne!(s, random_stream(2, "a.weight", 0));
        assert_ne!(s, random_stream(1, "b.weight", 0));
        assert_ne!(s, random_stream(1, "a.weight", 1));
        assert!((0..1000)
            .map(|i| uniform(s, i))
            .all(|u| (0.0..1.0).contains(&u)));
    }

    #[test]
    fn della_ranks_run_along_dimension_one() {
        let keys = [5u32, 1, 3, 2, 2, 9];
        // [2, 3]: rows [5 1 3] and [2 2 9].
        let r = row_ranks(&keys, &[2, 3]);
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            [2, 0, 1, 0, 1, 2]
        );
        // [1, 3, 2]: rows along dim 1 are (5, 3, 2) and (1, 2, 9).
        let r = row_ranks(&keys, &[1, 3, 2]);
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            [2, 0, 1, 1, 0, 2]
        );
    }
}
