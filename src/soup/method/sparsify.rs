//! Trimming a task vector (mergekit's `sparsify`): which elements each model keeps, and the
//! factor that restores its L1 norm. Random drops come from a counter-based stream keyed by the
//! seed, the tensor's name and the model, so the kept set never depends on the thread count or
//! on the order tensors are processed in.
//!
//! A trim keeps, per model, either a bitmask (one bit per element: DARE, DELLA) or one or two
//! magnitude thresholds that the output kernel applies as it combines (TIES, breadcrumbs), and
//! a scale. Thresholds are exact order statistics found without sorting or copying the tensor:
//! a sample places a narrow window of keys around each rank, one pass counts the keys above it
//! and gathers those inside, and selection (`select_nth_unstable`) among the gathered few
//! finds the value. DELLA's ranks within a row are bounded by a histogram of the row's keys;
//! only the few elements whose bounds don't decide them are ranked exactly.

use std::ops::Range;

use multiversion::multiversion;
use rayon::prelude::*;

use super::draws::{self, Cutoff};
use crate::soup::kernel::{self, pack_flags, RankKey, Real, CHUNK_ELEMENTS};

/// How a task vector is trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsify {
    /// Keep the `floor(density * n)` largest magnitudes, at least one (TIES; mergekit keeps one
    /// of a tensor too small for the density). Among equal magnitudes at the threshold the
    /// lower flat indices are kept (torch's unstable sort leaves this open).
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
    /// Whether a trim reads the task vector before the output pass: every kind but DARE
    /// without rescale, whose drops come from the random stream alone.
    pub fn reads_ahead(self, rescale: bool) -> bool {
        rescale || self != Sparsify::Random
    }

    /// Checks the parameters for a tensor of `n` elements shaped `shape`, from headers alone.
    pub fn check(
        self,
        shape: &[u64],
        n: u64,
        density: f64,
        gamma: f64,
        epsilon: f64,
    ) -> Result<(), String> {
        if density >= 1.0 || n == 0 {
            return Ok(());
        }
        let (row, _) = row_layout(shape, n as usize);
        match self {
            // A row is ranked with 32-bit positions and ranks (`RankKey::pack`): a longer one
            // would wrap them and rank the wrong elements, silently.
            Sparsify::DellaMagprune if row as u64 > u64::from(u32::MAX) => Err(format!(
                "its rows (along dimension 1; a tensor of fewer than two dimensions is one row) have {row} elements, and DELLA ranks rows of at most {} elements; give this tensor density 1 (a filter entry in a --config recipe) or use another method",
                u32::MAX
            )),
            Sparsify::DellaMagprune if density + epsilon >= 1.0 || density - epsilon <= 0.0 => {
                Err(format!(
                    "epsilon {} with density {} gives keep probabilities outside (0, 1); choose epsilon below min(density, 1 - density)",
                    super::shown(epsilon),
                    super::shown(density)
                ))
            }
            _ => {
                let _ = gamma;
                Ok(())
            }
        }
    }
}

/// One model's trim: which elements survive, and the factor that the survivors are multiplied
/// by.
pub struct Trim {
    pub keep: Keep,
    pub scale: f64,
}

/// Which elements of a task vector survive.
pub enum Keep {
    /// Bit `e % 64` of word `e / 64` (random drops, DELLA).
    Bits(Vec<u64>),
    /// Magnitude thresholds, decided from each element's key as it is combined (TIES,
    /// breadcrumbs): no per-element state at all.
    Bounds(Bounds),
    /// Random drops without a rescale: drawn from the stream (key, cutoff) as each element is
    /// combined, so the merge is one pass, like a linear one.
    Drawn(u64, Cutoff),
}

/// A magnitude threshold: keys beyond `value` pass it, and of the keys equal to it, those
/// whose ordinal in flat order is in `ties`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub value: u64,
    pub ties: Range<usize>,
    /// Per chunk of `CHUNK_ELEMENTS`, the number of keys equal to `value` before it.
    pub offsets: Vec<usize>,
}

/// The survivors of a magnitude trim: keys above `low` and below `high` (either may be absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    pub low: Option<Cut>,
    pub high: Option<Cut>,
}

/// The running tie ordinals of [`Bounds::decide`] within one chunk.
pub struct TieCounts {
    low: usize,
    high: usize,
}

impl Bounds {
    /// The tie ordinals at the start of chunk `chunk`.
    pub fn start(&self, chunk: usize) -> TieCounts {
        TieCounts {
            low: self.low.as_ref().map_or(0, |c| c.offsets[chunk]),
            high: self.high.as_ref().map_or(0, |c| c.offsets[chunk]),
        }
    }

    /// Sets `kept[j]` to 1 or 0 for the consecutive elements with magnitude keys `keys`, the
    /// next ones of a chunk whose ordinals are `ties`. A vectorisable pass decides every key
    /// not equal to a threshold; keys equal to one are then placed in flat order.
    pub fn decide<A: Real>(&self, keys: &[A::Key], ties: &mut TieCounts, kept: &mut [A]) {
        let low = self.low.as_ref().map(|c| A::Key::from_u64(c.value));
        let high = self.high.as_ref().map(|c| A::Key::from_u64(c.value));
        let one = |b: bool| if b { A::ONE } else { A::ZERO };
        let any_tie = decide_untied::<A>(low, high, keys, kept);
        if !any_tie {
            return;
        }
        let (l, h) = (low.unwrap_or(A::Key::MAX), high.unwrap_or(A::Key::MAX));
        for (g, group) in keys.chunks(64).enumerate() {
            // Ties are a few keys at random places: visit only them, in order.
            let mut m = tie_flags(group, l, h);
            while m != 0 {
                let j = g * 64 + m.trailing_zeros() as usize;
                m &= m - 1;
                kept[j] = one(self.tied(keys[j], low, high, ties));
            }
        }
    }

    /// Whether key `k`, equal to a threshold (`low` or `high`, this trim's values as keys),
    /// survives: the next of its ties in flat order, so keys equal to a threshold must be
    /// decided in that order.
    #[inline]
    pub fn tied<K: RankKey>(
        &self,
        k: K,
        low: Option<K>,
        high: Option<K>,
        ties: &mut TieCounts,
    ) -> bool {
        let (at_low, at_high) = (Some(k) == low, Some(k) == high);
        let above_low = match (&self.low, low) {
            (Some(c), _) if at_low => {
                ties.low += 1;
                c.ties.contains(&(ties.low - 1))
            }
            (_, Some(l)) => k > l,
            _ => true,
        };
        let below_high = match (&self.high, high) {
            (Some(c), _) if at_high => {
                ties.high += 1;
                c.ties.contains(&(ties.high - 1))
            }
            (_, Some(h)) => k < h,
            _ => true,
        };
        above_low && below_high
    }
}

/// The keys of `group` (at most 64) equal to `low` or `high`, as bits. A missing threshold is
/// passed as the largest key, which no magnitude of a trimmed tensor has (NaN magnitudes are
/// below it).
#[inline]
fn tie_flags<K: RankKey>(group: &[K], low: K, high: K) -> u64 {
    let mut flags = [0u8; 64];
    for (f, &k) in flags.iter_mut().zip(group) {
        *f = ((k == low) | (k == high)) as u8;
    }
    pack_flags(&flags)
}

/// The vectorisable part of [`Bounds::decide`]: every key not equal to a threshold, and
/// whether any is.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn decide_untied<A: Real>(
    low: Option<A::Key>,
    high: Option<A::Key>,
    keys: &[A::Key],
    kept: &mut [A],
) -> bool {
    let one = |b: bool| if b { A::ONE } else { A::ZERO };
    match (low, high) {
        (Some(l), Some(h)) => {
            let mut any = false;
            for (o, &k) in kept.iter_mut().zip(keys) {
                *o = one(k > l && k < h);
                any |= (k == l) | (k == h);
            }
            any
        }
        (Some(l), None) => {
            let mut any = false;
            for (o, &k) in kept.iter_mut().zip(keys) {
                *o = one(k > l);
                any |= k == l;
            }
            any
        }
        (None, Some(h)) => {
            let mut any = false;
            for (o, &k) in kept.iter_mut().zip(keys) {
                *o = one(k < h);
                any |= k == h;
            }
            any
        }
        (None, None) => {
            kept.fill(A::ONE);
            false
        }
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

/// Fills `out` with the magnitude keys ([`Real::magnitude`]) of the task vector's elements
/// `range`, in the working precision. Every trim decides on magnitudes alone, and the norms of
/// rescales sum them: no trim needs a sign.
pub type Magnitudes<'a, K> = dyn Fn(Range<usize>, &mut [K]) + Sync + 'a;

/// Elements per tile inside a chunk: the unit of the random drops' L1 sums (and so fixed:
/// the sums' order depends on it), and of decoding everywhere here.
const TILE: usize = 4096;

/// The L1 norms of a task vector before and after its trim, summed in a fixed order: element
/// `e` goes to lane `e % 8`, the lanes are summed into the totals at each [`L1::flush`], and
/// chunks' totals in chunk order. The loop vectorises, and the result doesn't depend on
/// threads.
#[derive(Default)]
struct L1 {
    before: [f64; 8],
    after: [f64; 8],
    sums: (f64, f64),
}

impl L1 {
    /// Adds the magnitudes `a` of consecutive elements starting on lane 0, with `kept` 0 or 1.
    fn add<A: Real>(&mut self, a: &[A], kept: &[A]) {
        l1_add(&mut self.before, &mut self.after, a, kept);
    }

    /// Like [`L1::add`], from the magnitudes' keys, with the kept flags as bits: bit `j % 64`
    /// of `words[j / 64]`.
    fn add_keys<A: Real>(&mut self, keys: &[A::Key], words: &[u64]) {
        let magnitude = |k: A::Key| A::from_magnitude(k).to_f64();
        l1_add_masked(&mut self.before, &mut self.after, keys, words, magnitude);
    }

    fn flush(&mut self) {
        self.sums.0 += self.before.iter().sum::<f64>();
        self.sums.1 += self.after.iter().sum::<f64>();
        self.before = [0.0; 8];
        self.after = [0.0; 8];
    }
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn l1_add<A: Real>(before: &mut [f64; 8], after: &mut [f64; 8], a: &[A], kept: &[A]) {
    let (mut b, mut s) = (*before, *after);
    let (a8, k8) = (a.chunks_exact(8), kept.chunks_exact(8));
    let (ar, kr) = (a8.remainder(), k8.remainder());
    for (a, k) in a8.zip(k8) {
        for l in 0..8 {
            let x = a[l].to_f64();
            b[l] += x;
            s[l] += x * k[l].to_f64();
        }
    }
    for (l, (a, k)) in ar.iter().zip(kr).enumerate() {
        let x = a.to_f64();
        b[l] += x;
        s[l] += x * k.to_f64();
    }
    (*before, *after) = (b, s);
}

/// Adds `magnitude(item)` of consecutive items starting on lane 0, with the kept factor of
/// lane `l` of each group of eight from its bit of the mask word (see [`kernel::kept`]). The
/// lanes are summed in locals: through the `&mut` arrays every addition was a store, and
/// nothing vectorised.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn l1_add_masked<T: Copy, M: Fn(T) -> f64>(
    before: &mut [f64; 8],
    after: &mut [f64; 8],
    items: &[T],
    words: &[u64],
    magnitude: M,
) {
    let (mut b, mut a) = (*before, *after);
    for (items, &w) in items.chunks(64).zip(words) {
        let halves = items.chunks_exact(32);
        let (rest, full) = (halves.remainder(), halves.len());
        for (h, items) in halves.enumerate() {
            let bits = (w >> (32 * h)) as u32;
            for g in 0..4 {
                for l in 0..8 {
                    let j = 8 * g + l;
                    let x = magnitude(items[j]);
                    b[l] += x;
                    a[l] += x * kernel::kept::<f64>(bits, j as u32);
                }
            }
        }
        let bits = w.checked_shr(32 * full as u32).unwrap_or(0) as u32;
        for (j, &item) in rest.iter().enumerate() {
            let x = magnitude(item);
            b[j % 8] += x;
            a[j % 8] += x * kernel::kept::<f64>(bits, j as u32);
        }
    }
    (*before, *after) = (b, a);
}

/// Sums per-chunk L1 partials in chunk order.
fn total(partials: &[(f64, f64)]) -> (f64, f64) {
    partials
        .iter()
        .fold((0.0, 0.0), |acc, p| (acc.0 + p.0, acc.1 + p.1))
}

/// mergekit's rescaled_masked_tensor: match the L1 norm, unless either norm is below 1e-7.
/// Written as mergekit's test (`before < eps or after < eps` skips), so that a NaN norm, from a
/// NaN in the task vector, still rescales and spreads its NaN as mergekit's does, rather than
/// quietly leaving that model's kept elements unscaled.
fn scale(rescale: bool, (before, after): (f64, f64)) -> f64 {
    if rescale && !(before < 1e-7 || after < 1e-7) {
        before / after
    } else {
        1.0
    }
}

/// The chunk ranges of a tensor of `n` elements.
fn chunk_ranges(n: usize) -> impl IndexedParallelIterator<Item = (usize, Range<usize>)> {
    (0..n.div_ceil(CHUNK_ELEMENTS))
        .into_par_iter()
        .map(move |c| (c, c * CHUNK_ELEMENTS..((c + 1) * CHUNK_ELEMENTS).min(n)))
}

/// Computes a model's trim of a tensor of `n` elements.
pub fn trim<A: Real>(spec: &TrimSpec<'_>, n: usize, magnitudes: &Magnitudes<'_, A::Key>) -> Trim {
    match spec.method {
        Sparsify::Random => random::<A>(spec, n, magnitudes),
        Sparsify::Magnitude | Sparsify::MagnitudeOutliers => magnitude::<A>(spec, n, magnitudes),
        Sparsify::DellaMagprune => della::<A>(spec, n, magnitudes),
    }
}

/// DARE: each element kept with probability `density`, from the stream alone.
fn random<A: Real>(spec: &TrimSpec<'_>, n: usize, magnitudes: &Magnitudes<'_, A::Key>) -> Trim {
    if !spec.rescale {
        return Trim {
            keep: Keep::Drawn(spec.stream, Cutoff::of(spec.density)),
            scale: 1.0,
        };
    }
    let one = |range: Range<usize>, out: &mut [A::Key]| magnitudes(range, out);
    random_trims::<A>(std::slice::from_ref(spec), n, &one)
        .pop()
        .expect("one model")
}

/// DARE with rescale for the models `specs` of one tensor of `n` elements at once (all
/// `Random` with `rescale`, in the order of `magnitudes`' models): each model's bits from its
/// stream, and its L1 norms from one pass shared by all of them, which reads each tile of
/// the base once. Each model's bits and scale are what it would get alone.
pub fn random_trims<A: Real>(
    specs: &[TrimSpec<'_>],
    n: usize,
    magnitudes: &ModelMagnitudes<'_, A::Key>,
) -> Vec<Trim> {
    debug_assert!(specs
        .iter()
        .all(|s| s.method == Sparsify::Random && s.rescale));
    let models = specs.len();
    let cutoffs: Vec<Cutoff> = specs.iter().map(|s| Cutoff::of(s.density)).collect();
    let mut keep: Vec<Vec<u64>> = (0..models).map(|_| vec![0u64; n.div_ceil(64)]).collect();
    // Per chunk, every model's words of it.
    let mut words: Vec<Vec<&mut [u64]>> = (0..n.div_ceil(CHUNK_ELEMENTS))
        .map(|_| Vec::with_capacity(models))
        .collect();
    for bits in &mut keep {
        for (c, w) in bits.chunks_mut(CHUNK_ELEMENTS / 64).enumerate() {
            words[c].push(w);
        }
    }
    let partials: Vec<Vec<(f64, f64)>> = words
        .into_par_iter()
        .zip(chunk_ranges(n))
        .map_init(
            || vec![A::Key::default(); models * TILE],
            |keys, (mut bits, (_, range))| {
                for ((spec, cutoff), bits) in specs.iter().zip(&cutoffs).zip(&mut bits) {
                    draws::keep_bits(spec.stream, range.start as u64, range.len(), *cutoff, bits);
                }
                // The norms: each tile its own lane sum (as the sums were defined).
                let mut l1: Vec<L1> = (0..models).map(|_| L1::default()).collect();
                let mut start = range.start;
                while start < range.end {
                    let len = TILE.min(range.end - start);
                    let t = (start - range.start) / TILE;
                    magnitudes(start..start + len, &mut keys[..models * len]);
                    for ((keys, bits), l1) in
                        keys[..models * len].chunks(len).zip(&bits).zip(&mut l1)
                    {
                        l1.add_keys::<A>(keys, &bits[t * TILE / 64..]);
                        l1.flush();
                    }
                    start += len;
                }
                l1.iter().map(|l| l.sums).collect()
            },
        )
        .collect();
    keep.into_iter()
        .enumerate()
        .map(|(m, keep)| {
            let sums: Vec<(f64, f64)> = partials.iter().map(|p| p[m]).collect();
            Trim {
                keep: Keep::Bits(keep),
                scale: scale(true, total(&sums)),
            }
        })
        .collect()
}

/// Fills `out` with several models' magnitude keys ([`Real::magnitude`]) at elements `range`,
/// model after model: model `m`'s at `out[m * range.len()..(m + 1) * range.len()]`. Trims by
/// magnitude share their passes over a tensor through this: each tile of the base is read
/// once for every model, while it is in cache, instead of once per model's pass.
pub type ModelMagnitudes<'a, K> = dyn Fn(Range<usize>, &mut [K]) + Sync + 'a;

/// Elements per tile of the shared passes: every model's keys of a tile stay in the first-level
/// cache while they are tallied. A multiple of 64 (the tally's groups) and of 8 (the lanes of
/// [`L1`], which start each tile on lane 0), so the sums don't depend on it.
const SHARED_TILE: usize = 1024;

/// TIES (`Magnitude`) and breadcrumbs (`MagnitudeOutliers`) for one model.
fn magnitude<A: Real>(spec: &TrimSpec<'_>, n: usize, magnitudes: &Magnitudes<'_, A::Key>) -> Trim {
    let one = |range: Range<usize>, out: &mut [A::Key]| magnitudes(range, out);
    magnitude_trims::<A>(std::slice::from_ref(spec), n, &one)
        .pop()
        .expect("one model")
}

/// A boundary: its ascending rank, and which ties pass it given (ties below it, ties).
type Rule = fn(usize, usize) -> Range<usize>;
type Target = Option<(usize, Rule)>;

/// A magnitude trim's low and high boundaries in a tensor of `n` elements, or `None` when
/// nothing survives it (only breadcrumbs gets there).
fn targets(spec: &TrimSpec<'_>, n: usize) -> Option<(Target, Target)> {
    let mut kept = (spec.density * n as f64) as usize;
    if spec.method == Sparsify::Magnitude && n > 0 {
        kept = kept.max(1);
    }
    if kept == 0 {
        return None;
    }
    Some(if spec.method == Sparsify::Magnitude {
        // The `kept` largest, equal magnitudes ranked by descending index so the lower
        // indices count as larger: the first `ties - below` equal ones pass.
        (
            Some((n - kept, (|below, ties| 0..ties - below) as Rule)),
            None,
        )
    } else {
        let mut top = (spec.gamma * n as f64) as usize;
        let bottom = match n.checked_sub(kept + top) {
            Some(b) => b,
            None => {
                top = n - kept;
                0
            }
        };
        // Equal magnitudes ranked by ascending index: above the low boundary are the equal
        // ones after the first `below`; under the high one, the first `below`.
        (
            (bottom > 0).then_some((bottom, (|below, ties| below..ties) as Rule)),
            (top > 0).then_some((n - top, (|below, _| 0..below) as Rule)),
        )
    })
}

/// TIES (`Magnitude`) and breadcrumbs (`MagnitudeOutliers`): one or two thresholds by rank
/// per model, for the models `specs` of one tensor of `n` elements at once, in the order of
/// `magnitudes`' models. Each pass over the tensor (the selection's, and the rescale's) is
/// shared by all of them; each model's thresholds and scale are what it would get alone.
pub fn magnitude_trims<A: Real>(
    specs: &[TrimSpec<'_>],
    n: usize,
    magnitudes: &ModelMagnitudes<'_, A::Key>,
) -> Vec<Trim> {
    let targets: Vec<Option<(Target, Target)>> = specs.iter().map(|s| targets(s, n)).collect();
    let ranks: Vec<Vec<usize>> = targets
        .iter()
        .map(|t| match t {
            Some((low, high)) => low.iter().chain(high.iter()).map(|t| t.0).collect(),
            None => Vec::new(),
        })
        .collect();
    let found = select::<A>(n, magnitudes, &ranks);
    let bounds: Vec<Option<Bounds>> = targets
        .iter()
        .zip(found)
        .map(|(t, found)| {
            let (low, high) = (*t)?;
            let mut found = found.into_iter();
            let mut cut = |t: Target| {
                t.map(|(rank, rule)| {
                    let f = found.next().expect("one per target");
                    Cut {
                        value: f.value,
                        ties: rule(rank - f.less, f.ties),
                        offsets: f.offsets,
                    }
                })
            };
            Some(Bounds {
                low: cut(low),
                high: cut(high),
            })
        })
        .collect();
    let scales = rescales::<A>(specs, n, magnitudes, &bounds);
    bounds
        .into_iter()
        .zip(scales)
        .map(|(bounds, scale)| match bounds {
            Some(bounds) => Trim {
                keep: Keep::Bounds(bounds),
                scale,
            },
            // Nothing survives.
            None => Trim {
                keep: Keep::Bits(vec![0; n.div_ceil(64)]),
                scale: 1.0,
            },
        })
        .collect()
}

/// The scales of the models whose trims rescale (1 for the others), from one pass that sums
/// every such model's L1 norms before and after its trim, each in [`L1`]'s fixed order.
fn rescales<A: Real>(
    specs: &[TrimSpec<'_>],
    n: usize,
    magnitudes: &ModelMagnitudes<'_, A::Key>,
    bounds: &[Option<Bounds>],
) -> Vec<f64> {
    let models = specs.len();
    let wanted: Vec<bool> = specs
        .iter()
        .zip(bounds)
        .map(|(s, b)| s.rescale && b.is_some())
        .collect();
    if !wanted.contains(&true) {
        return vec![1.0; models];
    }
    let partials: Vec<Vec<(f64, f64)>> = chunk_ranges(n)
        .map_init(
            || vec![A::Key::default(); models * SHARED_TILE],
            |keys, (c, range)| {
                let mut d = [A::ZERO; SHARED_TILE];
                let mut kept = [A::ZERO; SHARED_TILE];
                let mut ties: Vec<Option<TieCounts>> = bounds
                    .iter()
                    .map(|b| b.as_ref().map(|b| b.start(c)))
                    .collect();
                let mut l1: Vec<L1> = (0..models).map(|_| L1::default()).collect();
                let mut start = range.start;
                while start < range.end {
                    let len = SHARED_TILE.min(range.end - start);
                    magnitudes(start..start + len, &mut keys[..models * len]);
                    for (m, keys) in keys[..models * len].chunks(len).enumerate() {
                        let (Some(b), Some(ties), true) = (&bounds[m], &mut ties[m], wanted[m])
                        else {
                            continue;
                        };
                        for (a, k) in d[..len].iter_mut().zip(keys) {
                            *a = A::from_magnitude(*k);
                        }
                        b.decide::<A>(keys, ties, &mut kept[..len]);
                        l1[m].add(&d[..len], &kept[..len]);
                    }
                    start += len;
                }
                l1.iter_mut()
                    .map(|l| {
                        l.flush();
                        l.sums
                    })
                    .collect()
            },
        )
        .collect();
    (0..models)
        .map(|m| {
            let sums: Vec<(f64, f64)> = partials.iter().map(|p| p[m]).collect();
            scale(wanted[m], total(&sums))
        })
        .collect()
}

/// The key at an ascending rank, with what places its ties.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    value: u64,
    /// Keys below `value`.
    less: usize,
    /// Keys equal to `value`.
    ties: usize,
    /// Per chunk, keys equal to `value` before it.
    offsets: Vec<usize>,
}

/// A model's selection windows, one per rank, each the range of keys (lowest, highest) that
/// holds it, or `None` once its key is found.
type Windows<K> = Vec<Option<(K, K)>>;

/// What one chunk's pass finds for one window.
#[derive(Clone, Default)]
struct Gathered<K> {
    /// Keys above the window.
    above: usize,
    /// Keys inside it.
    inside: usize,
    /// Those keys, `keys[..inside]`, when the window spans several values (for a window of
    /// one value, only their number is needed); the rest is room for the next tile's.
    keys: Vec<K>,
}

impl<K> Gathered<K> {
    /// The keys gathered inside a window that spans several values.
    fn keys(&self) -> &[K] {
        &self.keys[..self.inside]
    }
}

/// Blocks and block length of the sample that places the selection windows.
const SAMPLE_BLOCKS: usize = 256;
const SAMPLE_BLOCK: usize = 256;
/// Sample positions on either side of a rank's estimate that its window spans: about 3% of
/// the elements fall in a window, and the rank falls outside it only when a 4-sigma event
/// happens in the sample (then one more pass finds it).
const MARGIN: usize = 1024;

/// The first element of sample block `b` of a tensor of `n` elements (more than the sample):
/// the blocks are spread evenly, the first at the start and the last at the end.
fn sample_start(b: usize, n: usize) -> usize {
    b * (n - SAMPLE_BLOCK) / (SAMPLE_BLOCKS - 1)
}

/// Adds a tile's keys to each open window's tally: the keys above it, and those inside it
/// (or, for a window of one value, their number).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn tally<K: RankKey + Default>(keys: &[K], windows: &[Option<(K, K)>], out: &mut [Gathered<K>]) {
    for (w, g) in windows.iter().zip(out.iter_mut()) {
        let Some((lo, hi)) = *w else { continue };
        let width = hi.wrapping_sub(lo);
        if lo == hi {
            g.above += keys.iter().filter(|&&k| k > hi).count();
            g.inside += keys.iter().filter(|&&k| k == hi).count();
        } else {
            // A few percent fall inside, at random places: whole groups of 64 keys are
            // flagged, and the keys above counted (in 32-bit lanes), in one vectorised loop.
            // The flagged keys are written into room made for the whole tile: a group's first
            // four without branches, then the rest (rarely any) in a loop. A loop over them
            // all mispredicted its exit in nearly every group. The room grows by doubling:
            // made afresh for each tile, its zeroing cost more than the writes.
            let mut used = g.inside;
            if g.keys.len() < used + keys.len() {
                let room = (used + keys.len()).max(2 * g.keys.len());
                g.keys.resize(room, K::default());
            }
            let whole = keys.len() / 64 * 64;
            let mut over = 0u32;
            for group in keys[..whole].chunks_exact(64) {
                let group: &[K; 64] = group.try_into().expect("64 keys");
                let mut flags = [0u8; 64];
                for (f, k) in flags.iter_mut().zip(group) {
                    *f = (k.wrapping_sub(lo) <= width) as u8;
                    over += (*k > hi) as u32;
                }
                let mut m = pack_flags(&flags);
                let flagged = m.count_ones() as usize;
                // At most the group's 64 keys from `used` on: inside the room, as `used` is
                // at most the tile's keys before this group.
                let room: &mut [K; 64] =
                    (&mut g.keys[used..used + 64]).try_into().expect("64 slots");
                // Past the flagged ones these write copies of `group[0]` that `used` leaves
                // out.
                for slot in &mut room[..4] {
                    *slot = group[(m.trailing_zeros() & 63) as usize];
                    m &= m.wrapping_sub(1);
                }
                let mut slot = 4;
                while m != 0 {
                    room[slot] = group[m.trailing_zeros() as usize];
                    slot += 1;
                    m &= m - 1;
                }
                used += flagged;
            }
            for &k in &keys[whole..] {
                if k.wrapping_sub(lo) <= width {
                    g.keys[used] = k;
                    used += 1;
                }
                over += (k > hi) as u32;
            }
            g.above += over as usize;
            g.inside = used;
        }
    }
}

/// For each model, the keys at ascending ranks `ranks[m]` (each < n) of its task vector's
/// magnitudes, exactly: a sorted sample of the keys places a window of keys around each
/// rank; one pass counts the keys above each window and gathers those inside it (or, when a
/// window is one value, only counts them), chunk by chunk in parallel, every model's tiles
/// together; selection among the gathered keys then finds the value, and per-chunk counts
/// place its ties. A rank that falls outside its window (rare) gets an exact window on the
/// side it fell and another pass.
fn select<A: Real>(
    n: usize,
    magnitudes: &ModelMagnitudes<'_, A::Key>,
    ranks: &[Vec<usize>],
) -> Vec<Vec<Found>> {
    let models = ranks.len();
    if ranks.iter().all(Vec::is_empty) {
        return vec![Vec::new(); models];
    }
    let full = n <= SAMPLE_BLOCKS * SAMPLE_BLOCK;
    let mut samples: Vec<Vec<A::Key>> = vec![Vec::new(); models];
    if full {
        let mut all = vec![A::Key::default(); models * n];
        magnitudes(0..n, &mut all);
        for (s, keys) in samples.iter_mut().zip(all.chunks(n)) {
            s.extend_from_slice(keys);
        }
    } else {
        let mut block = vec![A::Key::default(); models * SAMPLE_BLOCK];
        for s in &mut samples {
            s.reserve_exact(SAMPLE_BLOCKS * SAMPLE_BLOCK);
        }
        for b in 0..SAMPLE_BLOCKS {
            let start = sample_start(b, n);
            magnitudes(start..start + SAMPLE_BLOCK, &mut block);
            for (s, keys) in samples.iter_mut().zip(block.chunks(SAMPLE_BLOCK)) {
                s.extend_from_slice(keys);
            }
        }
    }
    samples
        .par_iter_mut()
        .zip(ranks)
        .filter(|(_, r)| !r.is_empty())
        .for_each(|(s, _)| s.sort_unstable());
    let mut windows: Vec<Windows<A::Key>> = samples
        .iter()
        .zip(ranks)
        .map(|(sample, ranks)| {
            let s = sample.len();
            ranks
                .iter()
                .map(|&r| {
                    Some(if full {
                        (sample[r], sample[r])
                    } else {
                        let i = ((r as f64 / n as f64) * s as f64) as usize;
                        let lo = if i >= MARGIN {
                            sample[i - MARGIN]
                        } else {
                            A::Key::default()
                        };
                        let hi = if i + MARGIN < s {
                            sample[i + MARGIN]
                        } else {
                            A::Key::MAX
                        };
                        (lo, hi)
                    })
                })
                .collect()
        })
        .collect();
    drop(samples);
    let mut found: Vec<Vec<Option<Found>>> = ranks.iter().map(|r| vec![None; r.len()]).collect();
    let open = |windows: &[Windows<A::Key>]| windows.iter().flatten().any(Option::is_some);
    while open(&windows) {
        // Per chunk, per model, per window: keys above it, and the keys in it (or their
        // number).
        // Each thread tallies into its own room, which it keeps from chunk to chunk: room
        // made afresh for each chunk was mapped, faulted in and zeroed each time. A chunk's
        // gathered keys are copied out of it, a few percent of its elements.
        let per_chunk: Vec<Vec<Vec<Gathered<A::Key>>>> = chunk_ranges(n)
            .map_init(
                || {
                    let rooms: Vec<Vec<Gathered<A::Key>>> = windows
                        .iter()
                        .map(|w| w.iter().map(|_| Gathered::default()).collect())
                        .collect();
                    (vec![A::Key::default(); models * SHARED_TILE], rooms)
                },
                |(keys, rooms), (_, range)| {
                    for g in rooms.iter_mut().flatten() {
                        (g.above, g.inside) = (0, 0);
                    }
                    let mut start = range.start;
                    while start < range.end {
                        let len = SHARED_TILE.min(range.end - start);
                        magnitudes(start..start + len, &mut keys[..models * len]);
                        for ((keys, windows), rooms) in keys[..models * len]
                            .chunks(len)
                            .zip(&windows)
                            .zip(&mut *rooms)
                        {
                            if windows.iter().any(Option::is_some) {
                                tally(keys, windows, rooms);
                            }
                        }
                        start += len;
                    }
                    rooms
                        .iter()
                        .zip(&windows)
                        .map(|(rooms, windows)| {
                            rooms
                                .iter()
                                .zip(windows)
                                .map(|(g, w)| Gathered {
                                    above: g.above,
                                    inside: g.inside,
                                    keys: match w {
                                        Some((lo, hi)) if lo != hi => g.keys().to_vec(),
                                        _ => Vec::new(),
                                    },
                                })
                                .collect()
                        })
                        .collect()
                },
            )
            .collect();
        // The models' selections in parallel: each is serial, and one model's would leave
        // the other threads idle.
        windows
            .par_iter_mut()
            .zip(found.par_iter_mut())
            .enumerate()
            .for_each(|(m, (windows, found))| {
                for (w, window) in windows.iter_mut().enumerate() {
                    let Some((lo, hi)) = *window else { continue };
                    let r = ranks[m][w];
                    let gathered = || per_chunk.iter().map(|c| &c[m][w]);
                    let above: usize = gathered().map(|g| g.above).sum();
                    let inside: usize = gathered().map(|g| g.inside).sum();
                    let below = n - above - inside;
                    if r < below {
                        // Some key is below `lo`, so `lo > 0`.
                        *window = Some((A::Key::default(), A::Key::from_u64(lo.to_u64() - 1)));
                        continue;
                    }
                    if r >= below + inside {
                        *window = Some((A::Key::from_u64(hi.to_u64() + 1), A::Key::MAX));
                        continue;
                    }
                    let (value, less, counts): (A::Key, usize, Vec<usize>) = if lo == hi {
                        (lo, below, gathered().map(|g| g.inside).collect())
                    } else {
                        let mut all: Vec<A::Key> =
                            gathered().flat_map(|g| g.keys().iter().copied()).collect();
                        let (smaller, value, _) = all.select_nth_unstable(r - below);
                        let value = *value;
                        let less = below + smaller.iter().filter(|k| **k < value).count();
                        let counts = gathered()
                            .map(|g| g.keys().iter().filter(|k| **k == value).count())
                            .collect();
                        (value, less, counts)
                    };
                    let mut offsets = Vec::with_capacity(counts.len());
                    let mut acc = 0;
                    for c in counts {
                        offsets.push(acc);
                        acc += c;
                    }
                    found[w] = Some(Found {
                        value: value.to_u64(),
                        less,
                        ties: acc,
                        offsets,
                    });
                    *window = None;
                }
            });
    }
    found
        .into_iter()
        .map(|f| {
            f.into_iter()
                .map(|f| f.expect("every window resolves"))
                .collect()
        })
        .collect()
}

/// DELLA's rows of a tensor of `n` elements: their length (dimension 1) and the stride
/// between a row's elements (the product of the dimensions after it). A tensor of fewer than
/// two dimensions is one row.
fn row_layout(shape: &[u64], n: usize) -> (usize, usize) {
    if shape.len() < 2 {
        (n, 1)
    } else {
        (
            shape[1] as usize,
            shape[2..].iter().product::<u64>() as usize,
        )
    }
}

/// The largest buffers a trim of a tensor of `n` elements (shaped `shape`) allocates, in
/// bytes.
pub struct Working {
    /// Kept until the output pass: the model's bitmask.
    pub mask: u64,
    /// Held while one model is trimmed: for DELLA rows longer than a chunk, a key and a rank
    /// per element, and for shorter ones the keep rule's cut per rank (8 bytes a row
    /// position); for TIES and breadcrumbs, the sample and the keys gathered in each
    /// threshold's window.
    pub ranking: u64,
    /// Held by each thread while it ranks a row: the row's packed keys.
    pub sorting: u64,
    /// The rows ranked that way (0 when none is).
    pub rows: u64,
}

pub fn working_bytes(method: Sparsify, shape: &[u64], n: usize, wide: bool) -> Working {
    let mask = n.div_ceil(64) as u64 * 8;
    let (len, inner) = row_layout(shape, n);
    let block = len * inner;
    let (key, packed) = if wide { (8, 16) } else { (4, 8) };
    match method {
        Sparsify::DellaMagprune if block > CHUNK_ELEMENTS => Working {
            mask,
            ranking: n as u64 * (key + 4),
            sorting: len as u64 * packed,
            rows: (n / block * inner) as u64,
        },
        Sparsify::DellaMagprune => Working {
            mask,
            ranking: len as u64 * 8,
            sorting: 0,
            rows: 0,
        },
        Sparsify::Random => Working {
            mask,
            ranking: 0,
            sorting: 0,
            rows: 0,
        },
        Sparsify::Magnitude | Sparsify::MagnitudeOutliers => {
            // `select`'s sample, and per threshold (breadcrumbs has two) the keys inside its
            // window, about 2 MARGIN of the sample's positions (3% of the elements): copied
            // per chunk out of each thread's room (a chunk's worth, grown by doubling), then
            // into one for the selection, so up to about three times that. These were not counted, and on a 256 MiB
            // tensor under `ulimit -v` breadcrumbs aborted on a failed allocation of its
            // windows instead of stopping at the memory check. Equal magnitudes can fill a
            // window beyond this; the count is for ordinary tensors, like the README's.
            let thresholds = if method == Sparsify::Magnitude { 1 } else { 2 };
            let sampled = SAMPLE_BLOCKS * SAMPLE_BLOCK;
            let sample = n.min(sampled) as u64 * key;
            let window = if n <= sampled {
                0
            } else {
                (n as u64 * (2 * MARGIN as u64 + 1)).div_ceil(sampled as u64) * key * 3
            };
            Working {
                mask: 0,
                ranking: sample + thresholds * window,
                sorting: 0,
                rows: 0,
            }
        }
    }
}

/// DELLA's MagPrune: each element kept with a probability linear in its magnitude's rank in
/// its row (along dimension 1).
fn della<A: Real>(spec: &TrimSpec<'_>, n: usize, magnitudes: &Magnitudes<'_, A::Key>) -> Trim {
    let shape = spec.shape;
    let (len, inner) = row_layout(shape, n);
    let slab = len * inner;
    let rule = Magprune::new(spec, len, slab <= CHUNK_ELEMENTS);
    let mut keep = vec![0u64; n.div_ceil(64)];
    if n == 0 {
        return Trim {
            keep: Keep::Bits(keep),
            scale: 1.0,
        };
    }
    let partials: Vec<(f64, f64)> = if slab <= CHUNK_ELEMENTS {
        // Each chunk ranks the rows of the slabs it overlaps (one at either end shared with
        // the neighbour, ranked by both), and decides its own elements.
        keep.par_chunks_mut(CHUNK_ELEMENTS / 64)
            .zip(chunk_ranges(n))
            .map_init(RowScratch::<A>::default, |rs, (bits, (_, range))| {
                let first = range.start / slab;
                let last = range.end.div_ceil(slab);
                let (from, to) = (first * slab, (last * slab).min(n));
                rs.keys.resize(to - from, A::Key::default());
                magnitudes(from..to, &mut rs.keys);
                bits.fill(0);
                for a in first..last {
                    for c in 0..inner {
                        rule.row(rs, a * slab + c, inner, from, &range, bits);
                    }
                }
                let mut l1 = L1::default();
                l1.add_keys::<A>(&rs.keys[range.start - from..range.end - from], bits);
                l1.flush();
                l1.sums
            })
            .collect()
    } else {
        // Rows longer than a chunk: rank every row first (a key and a rank per element),
        // then decide chunk by chunk.
        let mut keys = vec![A::Key::default(); n];
        keys.par_chunks_mut(CHUNK_ELEMENTS)
            .zip(chunk_ranges(n))
            .for_each(|(out, (_, range))| magnitudes(range, out));
        let (ranks, _) = row_ranks(&keys, shape);
        keep.par_chunks_mut(CHUNK_ELEMENTS / 64)
            .zip(chunk_ranges(n))
            .map(|(bits, (_, range))| {
                for (w, word) in bits.iter_mut().enumerate() {
                    let start = range.start + w * 64;
                    let mut x = 0u64;
                    let end = (start + 64).min(range.end);
                    for (j, &rank) in ranks[start..end].iter().enumerate() {
                        let h = draws::draw(spec.stream, (start + j) as u64);
                        x |= (rule.keep(h, rank as usize) as u64) << j;
                    }
                    *word = x;
                }
                let mut l1 = L1::default();
                let mut a = [A::ZERO; TILE];
                let mut k = [A::ZERO; TILE];
                let mut start = range.start;
                while start < range.end {
                    let len = TILE.min(range.end - start);
                    for j in 0..len {
                        let e = start + j;
                        a[j] = A::from_magnitude(keys[e]);
                        let o = e - range.start;
                        k[j] = A::from_f32(((bits[o / 64] >> (o % 64)) & 1) as f32);
                    }
                    l1.add(&a[..len], &k[..len]);
                    start += len;
                }
                l1.flush();
                l1.sums
            })
            .collect()
    };
    Trim {
        keep: Keep::Bits(keep),
        scale: scale(spec.rescale, total(&partials)),
    }
}

/// A thread's buffers for DELLA's rows.
struct RowScratch<A: Real> {
    keys: Vec<A::Key>,
    /// A strided row's keys, gathered (a row of stride 1 is read where it lies).
    row: Vec<A::Key>,
    /// The draws of a row's elements inside the chunk.
    drawn: Vec<u32>,
    /// Row positions and draws of the elements `p(0)` and `p(len - 1)` don't decide.
    undecided: Vec<(u32, u32)>,
    /// Those of them whose rank bounds don't decide them either.
    straddling: Vec<(u32, u32)>,
    /// Per bin, the keys counted in it; after [`accumulate`], the keys in the bins below.
    hist: Box<[u32; MAX_BINS + 1]>,
    /// The bins that hold an element needing an exact rank, and those bins' members packed
    /// as (key, row position).
    needed: Vec<bool>,
    members: Vec<<A::Key as RankKey>::Packed>,
}

impl<A: Real> Default for RowScratch<A> {
    fn default() -> Self {
        RowScratch {
            keys: Vec::new(),
            row: Vec::new(),
            drawn: Vec::new(),
            undecided: Vec::new(),
            straddling: Vec::new(),
            hist: Box::new([0; MAX_BINS + 1]),
            needed: Vec::new(),
            members: Vec::new(),
        }
    }
}

/// DELLA's keep rule for rows of `len` elements: element `e` of rank `rank` in its row is
/// kept when its draw `u` (see [`draws`]) is below `p(rank)`, `p(rank) = low + rank / (len - 1) * width`
/// (`density` for a row of one).
struct Magprune {
    density: f64,
    low: f64,
    width: f64,
    len: usize,
    stream: u64,
    /// `p` as draws, by rank: an element of rank `r` is kept when its draw is below `cut[r]`
    /// ([`Cutoff::bound`] of `p(r)`, so the same test as [`Magprune::keep`]). In rows within
    /// a chunk, an element that `p(0)`, `p(len - 1)` and its rank's bounds leave open is
    /// decided by an integer comparison against its exact rank's cut. Empty for rows longer
    /// than a chunk, which are ranked whole and use `keep`.
    cut: Vec<u64>,
}

impl Magprune {
    /// The rule for rows of `len`; `ranked_by_row` when [`Magprune::row`] will decide them
    /// (rows within a chunk), which builds the cuts.
    fn new(spec: &TrimSpec<'_>, len: usize, ranked_by_row: bool) -> Magprune {
        let mut rule = Magprune {
            density: spec.density,
            low: spec.density - spec.epsilon,
            width: 2.0 * spec.epsilon,
            len,
            stream: spec.stream,
            cut: Vec::new(),
        };
        if ranked_by_row {
            rule.cut = (0..len).map(|r| Cutoff::of(rule.p(r)).bound()).collect();
        }
        rule
    }

    fn p(&self, rank: usize) -> f64 {
        if self.len > 1 {
            self.low + (rank as f64 / (self.len - 1) as f64) * self.width
        } else {
            self.density
        }
    }

    /// Whether an element of rank `rank` whose draw is `h` is kept.
    fn keep(&self, h: u32, rank: usize) -> bool {
        // u = h / 2^32 is exact in f64, so this is the definition's `u < p` itself.
        (h as f64) * (1.0 / (1u64 << 32) as f64) < self.p(rank)
    }

    /// Decides the elements of the row that starts at element `first` (stride `stride`)
    /// whose indices are in `range`, into `bits` (which start at `range.start`). `rs.keys`
    /// holds the keys from element `from` on.
    ///
    /// `p` never decreases with the rank, so an element whose `u` is below `p(0)` is kept and
    /// one whose `u` is at least `p(len - 1)` dropped, whatever its rank; most are decided so.
    /// For the rest, a histogram of the row's keys bounds each rank to its bin's; an element
    /// whose bounds don't decide it gets its exact rank from its bin when the bin holds one
    /// key, else by counting the row, or, when too many need one, from its bin's members,
    /// sorted.
    ///
    /// The bins are as narrow as the histogram allows over the top eight binades of the row's
    /// keys, and the keys below those share bin 0. A task vector's magnitudes sit within a
    /// few binades below the row's largest, and the smallest (down to the zeros of unchanged
    /// weights) are few: bins over the whole key range from zero put a binade in 16 bins, a
    /// few dozen elements in each, and 8 to 15 per row then straddled; these bins hold one or
    /// two distinct keys each, and what still straddles is mostly ties.
    fn row<A: Real>(
        &self,
        rs: &mut RowScratch<A>,
        first: usize,
        stride: usize,
        from: usize,
        range: &Range<usize>,
        bits: &mut [u64],
    ) {
        let len = self.len;
        let cut = &self.cut[..len];
        let RowScratch {
            keys,
            row: gathered,
            drawn,
            undecided,
            straddling,
            hist,
            needed,
            members,
        } = rs;
        let row: &[A::Key] = if stride == 1 {
            &keys[first - from..first - from + len]
        } else {
            gathered.clear();
            gathered.extend((0..len).map(|b| keys[first - from + b * stride]));
            gathered
        };
        let set = |bits: &mut [u64], e: usize| {
            let o = e - range.start;
            bits[o / 64] |= 1 << (o % 64);
        };
        let (keep_all, drop_all) = (cut[0], cut[len - 1]);
        // The row's elements inside `range`: b with first + b * stride in it.
        let b0 = range.start.saturating_sub(first).div_ceil(stride);
        let b1 = range.end.saturating_sub(first).div_ceil(stride).min(len);
        let count = b1.saturating_sub(b0);
        drawn.resize(count, 0);
        if stride == 1 {
            draws::fill(self.stream, (first + b0) as u64, drawn);
        } else {
            for (i, h) in drawn.iter_mut().enumerate() {
                *h = draws::draw(self.stream, (first + (b0 + i) * stride) as u64);
            }
        }
        undecided.resize(count, (0, 0));
        let open = if stride == 1 {
            let o = first + b0 - range.start;
            classify_run(drawn, keep_all, drop_all, o, b0, bits, undecided)
        } else {
            // Without branches: which way a draw falls is a coin toss.
            let (drawn, pending) = (&drawn[..count], &mut undecided[..count]);
            let mut open = 0;
            let mut o = first + b0 * stride - range.start;
            for (i, &h) in drawn.iter().enumerate() {
                let h64 = h as u64;
                bits[o / 64] |= ((h64 < keep_all) as u64) << (o % 64);
                pending[open] = ((b0 + i) as u32, h);
                open += (h64 >= keep_all && h64 < drop_all) as usize;
                o += stride;
            }
            open
        };
        let undecided = &undecided[..open];
        if undecided.is_empty() {
            return;
        }
        let (kmin, kmax) = key_range(row);
        if kmin == kmax {
            // All equal: ranks are the indices.
            for &(b, h) in undecided {
                if (h as u64) < cut[b as usize] {
                    set(bits, first + b as usize * stride);
                }
            }
            return;
        }
        let bins = Bins::spanning(len, kmin, kmax);
        let bin = |k: A::Key| bins.of(k);
        let hist = &mut **hist;
        hist[..bins.count + 1].fill(0);
        count_bins(bins, row, hist);
        accumulate(&mut hist[..bins.count + 1]);
        let hist = &*hist;
        straddling.resize(undecided.len(), (0, 0));
        // The row's first element sits before `range` when the row began in the chunk before.
        let o = first.wrapping_sub(range.start);
        let line = RankLine::new(self);
        let count = bound(
            bins,
            row,
            undecided,
            hist,
            &line,
            (o, stride),
            bits,
            straddling,
        );
        if count == 0 {
            return;
        }
        // Task vectors of 16-bit weights take few distinct magnitudes (differences on a coarse
        // grid), so most of those that straddle share their key with dozens of others, which
        // no bin can tell apart. A bin that holds one key ranks them exactly: the keys in lower
        // bins plus the equal keys before. A bin holds one key when the row has as many
        // elements of that key as the bin has members: one count of the row per such bin
        // (rows' ties gather in a few), and one of the equal keys before per element, where an
        // exact rank compares every key of the row twice.
        let mut left = 0;
        let mut known: [(usize, bool); 4] = [(usize::MAX, false); 4];
        for s in 0..count {
            let (b, h) = straddling[s];
            let k = row[b as usize];
            let i = bin(k);
            let one = match known.iter().find(|&&(bin, _)| bin == i) {
                Some(&(_, one)) => one,
                None => {
                    let members = (hist[i + 1] - hist[i]) as usize;
                    let one = count_equal(row, k) == members;
                    known.rotate_right(1);
                    known[0] = (i, one);
                    one
                }
            };
            if one {
                let place = count_equal(&row[..b as usize], k);
                if (h as u64) < cut[hist[i] as usize + place] {
                    set(bits, first + b as usize * stride);
                }
            } else {
                straddling[left] = (b, h);
                left += 1;
            }
        }
        let exact = &straddling[..left];
        if exact.is_empty() {
            return;
        }
        // Keys below, plus equal keys before: `<=` before `b`, `<` from `b` on.
        if exact.len() <= 16 {
            for &(b, h) in exact {
                if (h as u64) < cut[rank_in_row(row, b as usize)] {
                    set(bits, first + b as usize * stride);
                }
            }
            return;
        }
        // Many elements need an exact rank (a row of many equal keys): their ranks come from
        // their bins. An element's rank is the keys in the bins below its own (the histogram)
        // plus, in its own bin, the keys below it and the equal keys before it. One pass
        // gathers the members of the bins that hold such an element, packed as (key, index)
        // so that sorting them orders equal keys by index; each rank is then two binary
        // searches. Sorting only these few costs less than sorting the row.
        needed.clear();
        needed.resize(bins.count, false);
        for &(b, _) in exact {
            needed[bin(row[b as usize])] = true;
        }
        members.clear();
        members.resize(len, A::Key::default().pack(0));
        let mut gathered = 0;
        for (j, &k) in row.iter().enumerate() {
            members[gathered] = k.pack(j as u32);
            gathered += needed[bin(k)] as usize;
        }
        let members = &mut members[..gathered];
        members.sort_unstable();
        for &(b, h) in exact {
            let k = row[b as usize];
            let i = bin(k);
            // The smallest key bin `i` can hold: members packed below it are in lower bins.
            let least = if i == 0 {
                0
            } else {
                bins.floor + ((i as u64) << bins.shift)
            };
            let least = A::Key::from_u64(least).pack(0);
            let below = |p| members.partition_point(|&m| m < p);
            let within = below(k.pack(b)) - below(least);
            if (h as u64) < cut[hist[i] as usize + within] {
                set(bits, first + b as usize * stride);
            }
        }
    }
}

/// DELLA's keep rule as a line in rank space: `u < p(rank)` is `rank > xi(u)` with
/// `xi(u) = (u - low) (len - 1) / width`. `at` computes `xi` with a multiply and an add instead of
/// `p`'s division per element; its error and `p`'s rounding together stay far below `margin`, so
/// a rank more than `margin` above or below it is decided by the comparison alone, and only one
/// within `margin` (which almost never happens) needs `p` itself (its [`Magprune::cut`]).
/// Bounding by the table of cuts instead measured the same.
struct RankLine {
    slope: f64,
    offset: f64,
    margin: f64,
}

impl RankLine {
    fn new(rule: &Magprune) -> RankLine {
        let span = (rule.len.max(2) - 1) as f64 / rule.width;
        RankLine {
            slope: span / (1u64 << 32) as f64,
            offset: -rule.low * span,
            // Rounding of `p` (a few ulps of 1, scaled by `span`) and of `at` (a few ulps of
            // `len`), with a wide factor: 1e-10 ranks for typical rows.
            margin: 1e-9 + 1e-14 * (rule.len as f64 + span),
        }
    }

    fn at(&self, h: u32) -> f64 {
        h as f64 * self.slope + self.offset
    }

    /// Whether `rank` surely keeps an element at `x`.
    fn above(&self, x: f64, rank: usize) -> bool {
        rank as f64 > x + self.margin
    }

    /// Whether `rank` surely drops it.
    fn below(&self, x: f64, rank: usize) -> bool {
        (rank as f64) < x - self.margin
    }
}

/// The most bins of a DELLA row's histogram.
const MAX_BINS: usize = 8192;

/// The bins of a DELLA row's keys: `count` of them, at most [`MAX_BINS`], each `1 << shift`
/// keys wide from `floor` (bin 0 also takes every key below it).
#[derive(Clone, Copy)]
struct Bins {
    floor: u64,
    shift: u32,
    count: usize,
}

impl Bins {
    /// A bin for every two to four of a row's `len` elements, spanning its keys from `kmin`
    /// to `kmax` or, when those spread wider, the eight binades below the largest.
    fn spanning<K: RankKey>(len: usize, kmin: K, kmax: K) -> Bins {
        // Half the largest power of two not above `len`: the next one up made rows of 5632
        // count into 8192 bins, whose counts (and their running total, a store per bin) cost
        // more than the few more elements that then share a bin.
        let count = (1usize << len.ilog2() >> 1).clamp(64, MAX_BINS);
        let (lowest, highest) = (kmin.to_u64(), kmax.to_u64());
        let log = count.trailing_zeros();
        let spanned = (64 - (highest - lowest).leading_zeros()).saturating_sub(log);
        let shift = spanned.min((K::FRACTION + 3).saturating_sub(log));
        let floor = lowest.max(highest.saturating_sub(((count as u64) << shift) - 1));
        Bins {
            floor,
            shift,
            count,
        }
    }

    /// The bin of key `k`, one of the row's. The mask never changes it (the largest key
    /// lands in the last bin); it spares the bounds checks.
    #[inline(always)]
    fn of<K: RankKey>(self, k: K) -> usize {
        (k.to_u64().saturating_sub(self.floor) >> self.shift) as usize & (MAX_BINS - 1)
    }
}

/// The smallest and largest of `keys` (not empty), vectorised: inlined into the row's
/// closure, it ran on SSE2.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn key_range<K: RankKey>(keys: &[K]) -> (K, K) {
    K::min_max(keys)
}

/// Counts `row`'s keys into `hist` (bin `i`'s in `hist[i + 1]`, which starts at zero). A
/// function of its own: inside the row's, the loop's bounds and shift lived on the stack.
/// Noting each element's place among its bin's here, a second store per element, cost more
/// than counting it for the few that need it.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn count_bins<K: RankKey>(bins: Bins, row: &[K], hist: &mut [u32; MAX_BINS + 1]) {
    for &k in row {
        hist[bins.of(k) + 1] += 1;
    }
}

/// Turns counts per bin (bin `i`'s in `hist[i + 1]`) into the counts of the bins below:
/// `hist[i]`, and `hist[i + 1] - hist[i]` is bin `i`'s. The running total is kept in a
/// register: `hist[i] += hist[i - 1]` waited on the store of the bin before, bin after bin.
fn accumulate(hist: &mut [u32]) {
    let mut below = 0;
    for h in hist.iter_mut() {
        below += *h;
        *h = below;
    }
}

/// Bounds each undecided element's rank (`undecided`: row position, draw) by its bin's (its
/// ranks from `hist` after [`accumulate`]), and decides those its
/// bounds decide: kept when the lowest rank keeps it, dropped when the highest drops it.
/// Sets the kept ones' bits (row position `b` at offset `o + b * stride` of `bits`,
/// wrapping: `o` is below zero for a row that began before them) and lists the rest in
/// `straddling`; returns how many were listed.
///
/// Which way an element falls is a coin toss, so the common cases set no branch. The kept
/// bits of one word are gathered in a register: or-ing each into `bits` made every element
/// wait on the store of the one before, a dozen to a word.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn bound<K: RankKey>(
    bins: Bins,
    row: &[K],
    undecided: &[(u32, u32)],
    hist: &[u32; MAX_BINS + 1],
    line: &RankLine,
    (o, stride): (usize, usize),
    bits: &mut [u64],
    straddling: &mut [(u32, u32)],
) -> usize {
    let mut count = 0;
    let (mut word, mut gathered) = (0, 0u64);
    for &(b, h) in undecided {
        let i = bins.of(row[b as usize]);
        let (lo, hi) = (hist[i] as usize, hist[i + 1] as usize - 1);
        let x = line.at(h);
        let (kept, dropped) = (line.above(x, lo), line.below(x, hi));
        let at = o.wrapping_add(b as usize * stride);
        if at / 64 != word {
            bits[word] |= gathered;
            (word, gathered) = (at / 64, 0);
        }
        gathered |= (kept as u64) << (at % 64);
        // Written for every element, kept only for those that straddle: a branch here, though
        // seldom taken, made this loop three times slower.
        straddling[count] = (b, h);
        count += (!kept & !dropped) as usize;
    }
    bits[word] |= gathered;
    count
}

/// DELLA's first decision for a run of consecutive row elements (positions `b0..`, bits from
/// offset `o` of `bits`): draws below `keep_all` are kept, those from `keep_all` up to
/// `drop_all` are listed in `undecided` (position, draw), the rest dropped; returns how many
/// were listed. Flags are computed 64 at a time and packed, so only the undecided are visited
/// one by one.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn classify_run(
    drawn: &[u32],
    keep_all: u64,
    drop_all: u64,
    o: usize,
    b0: usize,
    bits: &mut [u64],
    undecided: &mut [(u32, u32)],
) -> usize {
    // `h < bound` as a comparison of u32 lanes, which AVX2 does eight at a time where u64
    // lanes took four and a sign flip: `h <= bound - 1`, and nothing is below a bound of 0.
    let under = |bound: u64| {
        (
            (bound.max(1) - 1).min(u32::MAX as u64) as u32,
            (bound > 0) as u8,
        )
    };
    let ((keep_last, keeps), (open_last, opens)) = (under(keep_all), under(drop_all));
    let mut listed = 0;
    for (c, hs) in drawn.chunks(64).enumerate() {
        let (mut keep, mut open) = ([0u8; 64], [0u8; 64]);
        for ((k, u), &h) in keep.iter_mut().zip(open.iter_mut()).zip(hs) {
            let kept = (h <= keep_last) as u8 & keeps;
            *k = kept;
            *u = ((h <= open_last) as u8 & opens) & (kept ^ 1);
        }
        let (kept, mut open) = (pack_flags(&keep), pack_flags(&open));
        let at = o + c * 64;
        let (word, shift) = (at / 64, at % 64);
        bits[word] |= kept << shift;
        if shift != 0 && kept >> (64 - shift) != 0 {
            bits[word + 1] |= kept >> (64 - shift);
        }
        while open != 0 {
            let j = open.trailing_zeros() as usize;
            open &= open - 1;
            undecided[listed] = ((b0 + c * 64 + j) as u32, hs[j]);
            listed += 1;
        }
    }
    listed
}

/// Element `b`'s rank in `row`: the keys below it, plus equal keys before it (`<=` before
/// `b`, `<` from `b` on).
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn rank_in_row<K: RankKey>(row: &[K], b: usize) -> usize {
    let k = row[b];
    let before: u32 = row[..b].iter().map(|&x| (x <= k) as u32).sum();
    let after: u32 = row[b..].iter().map(|&x| (x < k) as u32).sum();
    (before + after) as usize
}

/// How many of `row`'s keys equal `k`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn count_equal<K: RankKey>(row: &[K], k: K) -> usize {
    row.iter().map(|&x| (x == k) as u32).sum::<u32>() as usize
}

/// Each element's rank by magnitude within its row along dimension 1 (ascending, equal
/// magnitudes by index), and the rows' length.
fn row_ranks<K: RankKey + Send + Sync>(keys: &[K], shape: &[u64]) -> (Vec<u32>, usize) {
    let n = keys.len();
    let (len, inner) = row_layout(shape, n);
    let mut ranks = vec![0u32; n];
    if n == 0 {
        return (ranks, len);
    }
    let block = len * inner;
    ranks.par_chunks_mut(block).enumerate().for_each_init(
        Vec::new,
        |row: &mut Vec<K::Packed>, (a, out)| {
            for c in 0..inner {
                row.clear();
                row.extend((0..len).map(|b| keys[a * block + b * inner + c].pack(b as u32)));
                row.sort_unstable();
                for (rank, &p) in row.iter().enumerate() {
                    out[K::index(p) as usize * inner + c] = rank as u32;
                }
            }
        },
    );
    (ranks, len)
}

#[cfg(test)]
mod tests {
    use super::draws::uniform;
    use super::*;

    /// Each element's fate under `spec`, and the scale, decided as the kernels decide them.
    fn run(spec: &TrimSpec<'_>, values: &[f64]) -> (Vec<bool>, f64) {
        let magnitudes = |r: Range<usize>, out: &mut [u64]| {
            for (o, v) in out.iter_mut().zip(&values[r]) {
                *o = v.magnitude();
            }
        };
        let t = trim::<f64>(spec, values.len(), &magnitudes);
        (kept_of(&t, values), t.scale)
    }

    /// Each element's fate under trim `t` of `values`, decided as the kernels decide them.
    fn kept_of(t: &Trim, values: &[f64]) -> Vec<bool> {
        let n = values.len();
        match &t.keep {
            Keep::Bits(bits) => (0..n).map(|e| bits[e / 64] >> (e % 64) & 1 == 1).collect(),
            Keep::Drawn(stream, cutoff) => {
                let mut bits = vec![0u64; n.div_ceil(64)];
                draws::keep_bits(*stream, 0, n, *cutoff, &mut bits);
                (0..n).map(|e| bits[e / 64] >> (e % 64) & 1 == 1).collect()
            }
            Keep::Bounds(b) => {
                let mut kept = Vec::with_capacity(n);
                for (c, chunk) in values.chunks(CHUNK_ELEMENTS).enumerate() {
                    let keys: Vec<u64> = chunk.iter().map(|x| x.magnitude()).collect();
                    let mut k = vec![0.0; keys.len()];
                    let mut ties = b.start(c);
                    // In two calls, as a kernel's tiles would.
                    let half = keys.len() / 2;
                    b.decide::<f64>(&keys[..half], &mut ties, &mut k[..half]);
                    b.decide::<f64>(&keys[half..], &mut ties, &mut k[half..]);
                    kept.extend(k.iter().map(|x| *x == 1.0));
                }
                kept
            }
        }
    }

    /// `reads_ahead` decides whether the preparing pass maps a tensor's pages before the
    /// output pass: it must say false only for a trim that really reads nothing (otherwise the
    /// trim faults every page in one by one), and true for every trim that reads.
    #[test]
    fn reads_ahead_says_which_trims_read_the_task_vector() {
        let values: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64 - 50.0).collect();
        let kinds = [
            Sparsify::Magnitude,
            Sparsify::Random,
            Sparsify::MagnitudeOutliers,
            Sparsify::DellaMagprune,
        ];
        for method in kinds {
            for rescale in [false, true] {
                let spec = TrimSpec {
                    method,
                    density: 0.5,
                    gamma: 0.1,
                    epsilon: 0.1,
                    stream: 3,
                    rescale,
                    shape: &[values.len() as u64],
                };
                let reads = std::sync::atomic::AtomicUsize::new(0);
                let magnitudes = |r: Range<usize>, out: &mut [u64]| {
                    reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    for (o, v) in out.iter_mut().zip(&values[r]) {
                        *o = v.magnitude();
                    }
                };
                trim::<f64>(&spec, values.len(), &magnitudes);
                let read = reads.into_inner() > 0;
                assert_eq!(
                    method.reads_ahead(rescale),
                    read,
                    "{method:?}, rescale {rescale}"
                );
            }
        }
    }

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
        run(&spec, values).0
    }

    /// Ascending order by magnitude, equal magnitudes by index: the reference ranking.
    fn ascending(values: &[f64]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..values.len()).collect();
        order.sort_by(|&a, &b| values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b)));
        order
    }

    /// TIES by sorting: the `kept` largest (at least one), lower indices first among equals.
    fn magnitude_by_sorting(values: &[f64], density: f64) -> Vec<bool> {
        let n = values.len();
        let kept = ((density * n as f64) as usize).max(1);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()).then(a.cmp(&b)));
        let mut out = vec![false; n];
        for &e in &order[..kept] {
            out[e] = true;
        }
        out
    }

    /// Breadcrumbs by sorting: drop the `bottom` smallest and `top` largest ascending ranks.
    fn outliers_by_sorting(values: &[f64], density: f64, gamma: f64) -> Vec<bool> {
        let n = values.len();
        let kept = (density * n as f64) as usize;
        let mut top = (gamma * n as f64) as usize;
        let bottom = n.checked_sub(kept + top).unwrap_or_else(|| {
            top = n - kept;
            0
        });
        let mut out = vec![false; n];
        for (rank, &e) in ascending(values).iter().enumerate() {
            out[e] = rank >= bottom && rank < n - top;
        }
        out
    }

    /// Values with many exact ties (a few distinct magnitudes, both signs), `n` of them.
    fn tied(n: usize, distinct: u64, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|e| {
                let z = draws::draw(seed, e as u64) as u64;
                let m = (z % distinct) as f64 * 0.25;
                if z >> 31 == 1 {
                    -m
                } else {
                    m
                }
            })
            .collect()
    }

    /// Values spread widely, with no two magnitudes alike except by chance.
    fn spread(n: usize, seed: u64) -> Vec<f64> {
        (0..n)
            .map(|e| (uniform(seed, e as u64) - 0.5) * (1.0 + uniform(seed + 1, e as u64) * 30.0))
            .collect()
    }

    #[test]
    fn magnitude_thresholds_agree_with_sorting_across_chunks_and_ties() {
        // Large enough for the sampled windows and several chunks; a tied threshold that
        // spans chunks; and a tensor that is all one value.
        let n = 2 * CHUNK_ELEMENTS + 12_345;
        for (values, density) in [
            (spread(n, 3), 0.3),
            (tied(n, 7, 5), 0.5),
            (tied(n, 7, 5), 0.9999),
            (vec![0.0; n], 0.4),
            (tied(5000, 3, 9), 0.37),
            // Too small a density for the tensor: the largest magnitude is kept, as mergekit
            // keeps one.
            (spread(7, 11), 0.1),
            (spread(1, 12), 0.5),
        ] {
            let want = magnitude_by_sorting(&values, density);
            assert_eq!(
                trim_of(Sparsify::Magnitude, &values, density, 0.0),
                want,
                "density {density}"
            );
        }
        for (values, density, gamma) in [
            (spread(n, 4), 0.5, 0.01),
            (tied(n, 5, 6), 0.5, 0.1),
            (tied(n, 5, 6), 0.2, 0.9),
            (vec![1.0; 1000], 0.5, 0.2),
        ] {
            let want = outliers_by_sorting(&values, density, gamma);
            assert_eq!(
                trim_of(Sparsify::MagnitudeOutliers, &values, density, gamma),
                want,
                "density {density} gamma {gamma}"
            );
        }
    }

    /// `n` values, small where the sample of a tensor of `n` elements looks and of magnitude
    /// `far.abs()` and more (with `far`'s sign) everywhere else: the sample misses the
    /// thresholds.
    fn sample_misses(n: usize, far: f64) -> Vec<f64> {
        let mut sampled = vec![false; n];
        for b in 0..SAMPLE_BLOCKS {
            let start = sample_start(b, n);
            sampled[start..start + SAMPLE_BLOCK].fill(true);
        }
        (0..n)
            .map(|e| {
                if sampled[e] {
                    0.001 * (e % 97) as f64
                } else {
                    far + far.signum() * (e % 89) as f64
                }
            })
            .collect()
    }

    #[test]
    fn a_sample_that_misses_the_threshold_costs_a_pass_not_a_wrong_answer() {
        // Every sampled block holds small values and everything else is large, so the sample
        // puts the window far below the true threshold (and, for the other target, above).
        let n = 3 * SAMPLE_BLOCKS * SAMPLE_BLOCK;
        let low = sample_misses(n, 5.0);
        let high: Vec<f64> = low.iter().map(|x| 100.0 - x).collect();
        for values in [&low, &high] {
            for density in [0.2, 0.5, 0.9] {
                assert_eq!(
                    trim_of(Sparsify::Magnitude, values, density, 0.0),
                    magnitude_by_sorting(values, density)
                );
            }
            assert_eq!(
                trim_of(Sparsify::MagnitudeOutliers, values, 0.5, 0.05),
                outliers_by_sorting(values, 0.5, 0.05)
            );
        }
    }

    /// DELLA by sorting each row along dimension 1.
    fn della_by_sorting(values: &[f64], shape: &[u64], density: f64, epsilon: f64) -> Vec<bool> {
        let n = values.len();
        let (len, inner) = if shape.len() < 2 {
            (n, 1)
        } else {
            (
                shape[1] as usize,
                shape[2..].iter().product::<u64>() as usize,
            )
        };
        let mut out = vec![false; n];
        for a in 0..n / (len * inner) {
            for c in 0..inner {
                let idx: Vec<usize> = (0..len).map(|b| a * len * inner + b * inner + c).collect();
                let row: Vec<f64> = idx.iter().map(|&e| values[e]).collect();
                for (rank, &b) in ascending(&row).iter().enumerate() {
                    let p = if len > 1 {
                        (density - epsilon) + (rank as f64 / (len - 1) as f64) * (2.0 * epsilon)
                    } else {
                        density
                    };
                    out[idx[b]] = uniform(11, idx[b] as u64) < p;
                }
            }
        }
        out
    }

    #[test]
    fn della_agrees_with_sorting_rows_in_every_layout() {
        // Rows within a chunk, rows straddling chunks, a strided inner dimension, rows longer
        // than a chunk (the fallback), ties, all-equal rows and rows of one.
        let cases: Vec<(Vec<u64>, Vec<f64>)> = vec![
            (vec![300, 2048], spread(300 * 2048, 1)),
            (vec![3, 300_000], spread(900_000, 2)),
            (vec![7, 40, 9], tied(7 * 40 * 9, 5, 3)),
            (vec![600_000], spread(600_000, 4)),
            (vec![1, 600_000, 2], tied(1_200_000, 1000, 5)),
            (vec![64, 512], tied(64 * 512, 3, 6)),
            (vec![16, 256], vec![0.5; 16 * 256]),
            (vec![500, 1], spread(500, 7)),
        ];
        for (shape, values) in &cases {
            // A tiny epsilon puts the cuts of many ranks on one draw.
            for (density, epsilon) in [
                (0.5, 0.1),
                (0.3, 0.2),
                (0.5, 0.0),
                (0.37, 0.123),
                (0.5, 1e-13),
            ] {
                let spec = TrimSpec {
                    method: Sparsify::DellaMagprune,
                    density,
                    gamma: 0.0,
                    epsilon,
                    stream: 11,
                    rescale: true,
                    shape,
                };
                let (kept, scale) = run(&spec, values);
                let want = della_by_sorting(values, shape, density, epsilon);
                assert!(
                    kept == want,
                    "shape {shape:?} density {density} epsilon {epsilon}"
                );
                let before: f64 = values.iter().map(|x| x.abs()).sum();
                let after: f64 = values
                    .iter()
                    .zip(&kept)
                    .filter(|(_, k)| **k)
                    .map(|(x, _)| x.abs())
                    .sum();
                if after > 1e-7 {
                    assert!((scale - before / after).abs() <= 1e-9 * scale, "{scale}");
                }
            }
        }
    }

    /// A task vector of bf16 weights as f64: differences of bf16 values, a few binades below
    /// the largest and on a coarse grid, so rows hold dozens of elements of one magnitude;
    /// with `unchanged` of the elements (in 256ths) left at zero, as fine-tuning leaves many.
    fn bf16_deltas(n: usize, unchanged: u32, seed: u64) -> Vec<f64> {
        let bf16 = |x: f32| f32::from_bits(x.to_bits() & 0xFFFF_0000) as f64;
        (0..n)
            .map(|e| {
                let base = (uniform(seed, e as u64) as f32 - 0.5) * 0.05;
                let step = (uniform(seed + 1, e as u64) as f32 - 0.5) * 0.006;
                if draws::draw(seed + 2, e as u64) >> 24 < unchanged {
                    0.0
                } else {
                    bf16(base + step) - bf16(base)
                }
            })
            .collect()
    }

    #[test]
    fn della_ranks_rows_of_many_ties_exactly_in_both_precisions() {
        // Rows whose bins mostly hold one key (ranked from the bin), rows of mostly zeros
        // (one large bin of one key), few distinct values (every bin one key), all-equal
        // rows, strided rows of a 3-D tensor, rows straddling chunks, and rows longer than
        // the histogram's bins.
        let cases: Vec<(Vec<u64>, Vec<f64>)> = vec![
            (vec![64, 2048], bf16_deltas(64 * 2048, 8, 21)),
            (vec![3, 5632], bf16_deltas(3 * 5632, 8, 22)),
            (vec![40, 2048], bf16_deltas(40 * 2048, 200, 23)),
            (vec![6, 120_000], bf16_deltas(720_000, 8, 24)),
            (vec![4, 300, 3], bf16_deltas(3600, 8, 25)),
            (vec![5, 20_000], bf16_deltas(100_000, 8, 26)),
            (vec![32, 1000], tied(32_000, 4, 27)),
            (vec![8, 777], vec![-0.25; 8 * 777]),
        ];
        for (shape, values) in &cases {
            for (density, epsilon) in [(0.5, 0.1), (0.5, 0.15), (0.3, 0.2)] {
                let want = della_by_sorting(values, shape, density, epsilon);
                let spec = TrimSpec {
                    method: Sparsify::DellaMagprune,
                    density,
                    gamma: 0.0,
                    epsilon,
                    stream: 11,
                    rescale: false,
                    shape,
                };
                assert!(
                    run(&spec, values).0 == want,
                    "f64, shape {shape:?} density {density} epsilon {epsilon}"
                );
                // The same values in f32 (exact: each is a difference of two bf16 values).
                let magnitudes = |r: Range<usize>, out: &mut [u32]| {
                    for (o, v) in out.iter_mut().zip(&values[r]) {
                        *o = (*v as f32).magnitude();
                    }
                };
                let n = values.len();
                let Keep::Bits(bits) = trim::<f32>(&spec, n, &magnitudes).keep else {
                    panic!("DELLA keeps a bitmask");
                };
                let kept: Vec<bool> = (0..n).map(|e| bits[e / 64] >> (e % 64) & 1 == 1).collect();
                assert!(
                    kept == want,
                    "f32, shape {shape:?} density {density} epsilon {epsilon}"
                );
            }
        }
    }

    #[test]
    fn rescaled_magnitude_trims_restore_the_l1_norm() {
        let values = tied(CHUNK_ELEMENTS + 999, 9, 12);
        let spec = TrimSpec {
            method: Sparsify::Magnitude,
            density: 0.4,
            gamma: 0.0,
            epsilon: 0.0,
            stream: 0,
            rescale: true,
            shape: &[values.len() as u64],
        };
        let (kept, scale) = run(&spec, &values);
        assert_eq!(kept, magnitude_by_sorting(&values, 0.4));
        let before: f64 = values.iter().map(|x| x.abs()).sum();
        let after: f64 = values
            .iter()
            .zip(&kept)
            .filter(|(_, k)| **k)
            .map(|(x, _)| x.abs())
            .sum();
        assert!((scale - before / after).abs() <= 1e-12 * scale);
    }

    /// Several models' trims by magnitude from their shared passes: each model's kept set
    /// is the sorting one, and its scale is what it gets trimmed alone, whatever the other
    /// models are: tied and untied values, thresholds in different chunks, one model whose
    /// sample misses its threshold (costing the others nothing but a pass they ignore), and a
    /// model of which nothing survives.
    #[test]
    fn shared_passes_give_each_model_its_own_trim() {
        let n = 2 * CHUNK_ELEMENTS + 12_345;
        let missed = sample_misses(n, -5.0);
        let models: Vec<(Vec<f64>, Sparsify, f64, f64)> = vec![
            (spread(n, 21), Sparsify::Magnitude, 0.3, 0.0),
            (tied(n, 7, 22), Sparsify::Magnitude, 0.5, 0.0),
            (missed, Sparsify::Magnitude, 0.2, 0.0),
            (tied(n, 5, 23), Sparsify::MagnitudeOutliers, 0.5, 0.1),
            (spread(n, 24), Sparsify::MagnitudeOutliers, 0.6, 0.05),
            (spread(n, 25), Sparsify::MagnitudeOutliers, 0.0, 0.5),
        ];
        let shape = [n as u64];
        for rescale in [false, true] {
            let specs: Vec<TrimSpec<'_>> = models
                .iter()
                .enumerate()
                .map(|(m, (_, method, density, gamma))| TrimSpec {
                    method: *method,
                    density: *density,
                    gamma: *gamma,
                    epsilon: 0.0,
                    stream: m as u64,
                    rescale,
                    shape: &shape,
                })
                .collect();
            let magnitudes = |r: Range<usize>, out: &mut [u64]| {
                if r.is_empty() {
                    return;
                }
                for ((values, ..), out) in models.iter().zip(out.chunks_mut(r.len())) {
                    for (o, v) in out.iter_mut().zip(&values[r.clone()]) {
                        *o = v.magnitude();
                    }
                }
            };
            let trims = magnitude_trims::<f64>(&specs, n, &magnitudes);
            for ((trim, spec), (values, method, density, gamma)) in
                trims.iter().zip(&specs).zip(&models)
            {
                let want = match method {
                    Sparsify::Magnitude => magnitude_by_sorting(values, *density),
                    _ => outliers_by_sorting(values, *density, *gamma),
                };
                let case = format!("{method:?} density {density} rescale {rescale}");
                assert_eq!(kept_of(trim, values), want, "{case}");
                let (alone, scale) = run(spec, values);
                assert_eq!(alone, want, "{case}");
                assert_eq!(trim.scale.to_bits(), scale.to_bits(), "{case}");
                if rescale && want.contains(&true) {
                    let restores = l1_restored(values, &want);
                    assert!((trim.scale - restores).abs() <= 1e-12 * trim.scale);
                } else {
                    assert_eq!(trim.scale, 1.0, "{case}");
                }
            }
        }
    }

    /// DARE's rescale for several models from one shared pass: each model keeps the bits of
    /// its own stream, and its scale restores its own L1 norm, with the same bits as alone.
    #[test]
    fn shared_dare_norms_are_each_models_own() {
        let n = 2 * CHUNK_ELEMENTS + 4097;
        let values = [spread(n, 31), tied(n, 9, 32), spread(n, 33)];
        let shape = [n as u64];
        let specs: Vec<TrimSpec<'_>> = [0.3, 0.5, 0.9]
            .iter()
            .enumerate()
            .map(|(m, &density)| TrimSpec {
                method: Sparsify::Random,
                density,
                gamma: 0.0,
                epsilon: 0.0,
                stream: 40 + m as u64,
                rescale: true,
                shape: &shape,
            })
            .collect();
        let magnitudes = |r: Range<usize>, out: &mut [u64]| {
            for (values, out) in values.iter().zip(out.chunks_mut(r.len().max(1))) {
                for (o, v) in out.iter_mut().zip(&values[r.clone()]) {
                    *o = v.magnitude();
                }
            }
        };
        let trims = random_trims::<f64>(&specs, n, &magnitudes);
        for ((trim, spec), values) in trims.iter().zip(&specs).zip(&values) {
            let mut bits = vec![0u64; n.div_ceil(64)];
            draws::keep_bits(spec.stream, 0, n, Cutoff::of(spec.density), &mut bits);
            let want: Vec<bool> = (0..n).map(|e| bits[e / 64] >> (e % 64) & 1 == 1).collect();
            assert_eq!(kept_of(trim, values), want);
            let (alone, scale) = run(spec, values);
            assert_eq!(alone, want);
            assert_eq!(trim.scale.to_bits(), scale.to_bits());
            let restores = l1_restored(values, &want);
            assert!((trim.scale - restores).abs() <= 1e-12 * trim.scale);
        }
    }

    /// The factor that restores the L1 norm of `values` after only the `kept` survive.
    fn l1_restored(values: &[f64], kept: &[bool]) -> f64 {
        let before: f64 = values.iter().map(|x| x.abs()).sum();
        let after: f64 = values
            .iter()
            .zip(kept)
            .filter(|(_, k)| **k)
            .map(|(x, _)| x.abs())
            .sum();
        before / after
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
    fn della_ranks_run_along_dimension_one() {
        let keys = [5u32, 1, 3, 2, 2, 9];
        // [2, 3]: rows [5 1 3] and [2 2 9].
        assert_eq!(row_ranks(&keys, &[2, 3]), (vec![2, 0, 1, 0, 1, 2], 3));
        // [1, 3, 2]: rows along dim 1 are (5, 3, 2) and (1, 2, 9).
        assert_eq!(row_ranks(&keys, &[1, 3, 2]), (vec![2, 0, 1, 1, 0, 2], 3));
    }
}
