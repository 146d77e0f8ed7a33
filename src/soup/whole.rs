//! The whole-tensor half of a method's work: the statistics (dot products per vector) or the
//! trims (a bitmask or thresholds, and a scale, per model) that must see a whole tensor before
//! its first output chunk can be computed. Partial results are combined in a fixed order, so
//! nothing depends on the thread count. Memory beyond the inputs' pages of the tensor: a bit
//! per element per model for masks, the keys near a threshold for thresholds (a few percent of
//! the elements, at most one key per element when ties fill the window), and a few f64 per
//! row for statistics.

use std::ops::Range;

use multiversion::multiversion;
use rayon::prelude::*;

use super::kernel::{
    self, Input, Real, Scratch, Source, TaskVectorInput, TaskVectorMix, CHUNK_ELEMENTS,
};
use super::method::{
    sparsify, Combination, Gram, Grouping, Sparsify, TaskVector, TaskVectors, Work,
};
use super::plan::{Plan, TensorPlan, Whole};
use crate::format::Dtype;

/// What a whole tensor needs before its chunks: per-group combinations, or per-model trims.
pub enum Prepared {
    /// One combination per group (one group for a flat tensor).
    Combinations {
        grouping: Grouping,
        combinations: Vec<Combination>,
    },
    /// Per model, its surviving elements and their scale, or `None` when it keeps all.
    Trims(Vec<Option<sparsify::Trim>>),
}

fn inputs<'p>(plan: &'p Plan, tensor: &TensorPlan, whole: &Whole) -> Vec<Input<'p>> {
    whole
        .inputs
        .iter()
        .map(|&i| {
            let t = plan.ingredients[i].tensor(&tensor.name).expect("planned");
            Input {
                dtype: t.info.dtype,
                data: t.data,
            }
        })
        .collect()
}

/// Maps the pages of elements `range` of every input in one call before a pass reads them,
/// instead of a fault per page; the output pass releases them.
fn populate(plan: &Plan, tensor: &TensorPlan, whole: &Whole, range: Range<usize>) {
    for &i in &whole.inputs {
        let ck = &plan.ingredients[i];
        let t = ck.tensor(&tensor.name).expect("planned");
        let size = t.info.dtype.size();
        ck.populate(&t, range.start * size..range.end * size);
    }
}

/// Computes a whole tensor's statistics or trims.
pub fn prepare(plan: &Plan, tensor: &TensorPlan, whole: &Whole) -> Prepared {
    let inputs = inputs(plan, tensor, whole);
    let n = tensor.elements() as usize;
    match &*whole.work {
        Work::Linear(_) => unreachable!("linear work is planned as an average"),
        Work::Statistics {
            grouping,
            vectors,
            finish,
        } => {
            let populate = |range: Range<usize>| populate(plan, tensor, whole, range);
            let grams = grams(&inputs, vectors, *grouping, n, &populate);
            Prepared::Combinations {
                grouping: *grouping,
                combinations: grams.iter().map(finish).collect(),
            }
        }
        Work::TaskVectors(tv) => {
            // Every model's trim reads the base: each trim mapping the pages it reads, as the
            // statistics pass does, had them contend for the base's page-table locks. All are
            // mapped once, up front, in parallel over chunks; they stay mapped until the output
            // pass releases them. Trims that read nothing (DARE without rescale) leave the
            // output pass to stream.
            let reads = tv.sparsify.is_some_and(|s| s.reads_ahead(tv.rescale))
                && tv.models.iter().any(|m| m.density < 1.0);
            if reads {
                (0..n.div_ceil(CHUNK_ELEMENTS))
                    .into_par_iter()
                    .for_each(|c| {
                        let range = c * CHUNK_ELEMENTS..((c + 1) * CHUNK_ELEMENTS).min(n);
                        populate(plan, tensor, whole, range)
                    });
            }
            if whole.wide {
                Prepared::Trims(trims::<f64>(&inputs, tv, &tensor.shape, n))
            } else {
                Prepared::Trims(trims::<f32>(&inputs, tv, &tensor.shape, n))
            }
        }
    }
}

/// Reserves, and at once releases, the largest buffers the tensor's trims will allocate (every
/// model's at once, as they run in parallel), so that a process that can't have them (a
/// memory limit such as `ulimit -v`) stops with an error naming the tensor instead of
/// aborting mid-merge on a failed allocation. Reserving maps no memory.
pub fn check_memory(tensor: &TensorPlan, whole: &Whole) -> crate::error::Result<()> {
    let Work::TaskVectors(tv) = &*whole.work else {
        return Ok(());
    };
    let Some(method) = tv.sparsify else {
        return Ok(());
    };
    let n = tensor.elements() as usize;
    let trimmed = tv.models.iter().filter(|m| m.density < 1.0).count() as u64;
    let threads = rayon::current_num_threads() as u64;
    let w = sparsify::working_bytes(method, &tensor.shape, n, whole.wide);
    // Masks stay until the output pass; the models are trimmed, and their rows ranked, on up
    // to `threads` threads at once, except thresholds, whose selections run together.
    let selecting = match method {
        Sparsify::Magnitude | Sparsify::MagnitudeOutliers => trimmed,
        _ => trimmed.min(threads),
    };
    let buffers =
        trimmed * w.mask + selecting * w.ranking + (trimmed * w.rows).min(threads) * w.sorting;
    // Small buffers come and go like any chunk's scratch.
    if buffers < 16 << 20 {
        return Ok(());
    }
    // The workers' first allocations also take address space: glibc's heaps.
    let heaps = super::room::thread_heaps(threads as usize + 1);
    let buffers = usize::try_from(buffers).unwrap_or(usize::MAX);
    let bytes = (buffers as u64).saturating_add((heaps * super::room::THREAD_HEAP) as u64);
    if super::room::fits(
        std::iter::once(buffers).chain(std::iter::repeat_n(super::room::THREAD_HEAP, heaps)),
    ) {
        return Ok(());
    }
    Err(crate::error::Error::Plan(format!(
        "tensor '{}' needs about {} MiB of working memory for {}'s trims, which this process can't allocate (a memory limit such as ulimit -v?); raise the limit or merge on a machine with more memory",
        crate::error::printable(&tensor.name),
        bytes.div_ceil(1 << 20),
        whole.method
    )))
}

/// Computes elements `range` of a prepared whole tensor.
pub fn chunk<'s>(
    plan: &Plan,
    tensor: &TensorPlan,
    whole: &Whole,
    prepared: &Prepared,
    range: Range<usize>,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let inputs = inputs(plan, tensor, whole);
    match (prepared, &*whole.work) {
        (
            Prepared::Combinations {
                grouping,
                combinations,
            },
            _,
        ) => {
            if let (Grouping::Flat, [combination]) = (grouping, combinations.as_slice()) {
                let sources: Vec<Source<'_>> = combination
                    .iter()
                    .map(|&(i, w)| Source {
                        dtype: inputs[i].dtype,
                        data: inputs[i].data,
                        weight: w,
                    })
                    .collect();
                return kernel::average(&sources, range, tensor.dtype, whole.wide, scratch);
            }
            // Every group's combination has the same inputs in the same order.
            let terms: Vec<Input<'_>> = combinations
                .first()
                .map(|c| c.iter().map(|&(i, _)| inputs[i]).collect())
                .unwrap_or_default();
            let rows: Vec<Vec<f64>> = combinations
                .iter()
                .map(|c| c.iter().map(|&(_, w)| w).collect())
                .collect();
            let groups = match grouping {
                Grouping::Flat => kernel::Groups::Rows(range.end.max(1)),
                Grouping::Rows(len) => kernel::Groups::Rows(*len as usize),
                Grouping::Columns(stride) => kernel::Groups::Columns(*stride as usize),
            };
            kernel::average_rows(
                &terms,
                &rows,
                groups,
                range,
                tensor.dtype,
                whole.wide,
                scratch,
            )
        }
        (Prepared::Trims(trims), Work::TaskVectors(tv)) => {
            let base = inputs[tv.models.len()];
            let mix = TaskVectorMix {
                base,
                models: tv
                    .models
                    .iter()
                    .zip(trims)
                    .map(|(m, trim)| TaskVectorInput {
                        input: inputs[m.input],
                        weight: m.weight,
                        trim: trim.as_ref(),
                    })
                    .collect(),
                consensus: tv.consensus,
                normalize: tv.normalize,
                lambda: tv.lambda,
            };
            kernel::task_vectors(&mix, range, tensor.dtype, whole.wide, scratch)
        }
        (Prepared::Trims(_), _) => unreachable!("trims come from task-vector work"),
    }
}

/// Lanes per pair sum: position `j` of a group goes to lane `j % LANES`, each lane summed in
/// position order, then the lanes are combined by [`combine`]. Eight lanes are two AVX2
/// registers per pair: enough independent chains that the additions' latency does not bound the
/// loop, as it did with four.
const LANES: usize = 8;
type Lanes = [f64; LANES];

/// The lanes' total, in a fixed tree.
fn combine(l: &Lanes) -> f64 {
    0.0 + (((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])))
}

/// Elements per tile of the statistics pass: the decoded inputs and the vectors of one tile
/// stay in the first-level cache. A multiple of [`LANES`], so every tile starts on lane 0.
const STAT_TILE: usize = 256;

/// A thread's buffers for [`Tiles::fill`]: one decoded input each, and one per vector.
struct Tiles {
    needed: Vec<bool>,
    decoded: Vec<Vec<f64>>,
    vectors: Vec<Vec<f64>>,
}

impl Tiles {
    fn new(inputs: usize, vectors: &[Combination], len: usize) -> Tiles {
        let mut needed = vec![false; inputs];
        for v in vectors {
            for &(i, _) in v {
                needed[i] = true;
            }
        }
        Tiles {
            decoded: needed
                .iter()
                .map(|&n| vec![0.0; if n { len } else { 0 }])
                .collect(),
            vectors: vec![vec![0.0; len]; vectors.len()],
            needed,
        }
    }

    /// The values of `vectors` (combinations of `inputs`) at elements `range`, in f64, into
    /// `self.vectors[v][..range.len()]`: each term `c * x` added in the combination's order.
    fn fill(&mut self, inputs: &[Input<'_>], vectors: &[Combination], range: Range<usize>) {
        let len = range.len();
        for (i, d) in self.decoded.iter_mut().enumerate() {
            if self.needed[i] {
                if d.len() < len {
                    d.resize(len, 0.0);
                }
                kernel::decode(
                    inputs[i].dtype,
                    inputs[i].data,
                    range.clone(),
                    &mut d[..len],
                );
            }
        }
        for (out, v) in self.vectors.iter_mut().zip(vectors) {
            if out.len() < len {
                out.resize(len, 0.0);
            }
            for (k, &(i, c)) in v.iter().enumerate() {
                add_term(&mut out[..len], c, &self.decoded[i][..len], k == 0);
            }
        }
    }
}

/// `out = c * xs` (`first`) or `out += c * xs`.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn add_term(out: &mut [f64], c: f64, xs: &[f64], first: bool) {
    if first {
        for (o, x) in out.iter_mut().zip(xs) {
            *o = c * x;
        }
    } else {
        for (o, x) in out.iter_mut().zip(xs) {
            *o += c * x;
        }
    }
}

/// Adds the pairwise products of `values` at positions `0..len` to `lanes` (one [`Lanes`] per
/// pair, in pair order). For two vectors (SLERP, NuSLERP, Model Stock with two fine-tunes) the
/// three pairs share one loop, so their sums are independent chains rather than one after
/// another, in the same order.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn add_lanes(values: &[Vec<f64>], len: usize, lanes: &mut [Lanes]) {
    if let ([x, y], [xx, xy, yy]) = (values, &mut *lanes) {
        let (x, y) = (&x[..len], &y[..len]);
        let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
        let (xr, yr) = (xs.remainder(), ys.remainder());
        let (mut a, mut b, mut c) = (*xx, *xy, *yy);
        for (x, y) in xs.zip(ys) {
            for l in 0..LANES {
                a[l] += x[l] * x[l];
                b[l] += x[l] * y[l];
                c[l] += y[l] * y[l];
            }
        }
        for (j, (x, y)) in xr.iter().zip(yr).enumerate() {
            a[j] += x * x;
            b[j] += x * y;
            c[j] += y * y;
        }
        (*xx, *xy, *yy) = (a, b, c);
        return;
    }
    let m = values.len();
    let mut p = 0;
    for a in 0..m {
        for b in a..m {
            let mut l = lanes[p];
            let (x, y) = (&values[a][..len], &values[b][..len]);
            let (xs, ys) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
            let (xr, yr) = (xs.remainder(), ys.remainder());
            for (x, y) in xs.zip(ys) {
                for k in 0..LANES {
                    l[k] += x[k] * y[k];
                }
            }
            for (j, (x, y)) in xr.iter().zip(yr).enumerate() {
                l[j] += x * y;
            }
            lanes[p] = l;
            p += 1;
        }
    }
}

/// The sums of the pairs' products over `range`, each in [`LANES`] lanes then combined.
fn pair_sums(
    inputs: &[Input<'_>],
    vectors: &[Combination],
    range: Range<usize>,
    tiles: &mut Tiles,
) -> Vec<f64> {
    let mut lanes = vec![[0f64; LANES]; Gram::pairs(vectors.len())];
    if !pair_lanes_bf16(inputs, vectors, range.clone(), &mut lanes) {
        let mut start = range.start;
        while start < range.end {
            let end = (start + STAT_TILE).min(range.end);
            tiles.fill(inputs, vectors, start..end);
            add_lanes(&tiles.vectors, end - start, &mut lanes);
            start = end;
        }
    }
    lanes.iter().map(combine).collect()
}

/// The lanes of [`pair_sums`] for its common shape, two vectors of bf16 inputs with the same
/// number of terms (SLERP, NuSLERP, Model Stock with two fine-tunes), decoded and combined in
/// registers instead of through the tiles' buffers. The operations and their order are those of
/// [`Tiles::fill`] then [`add_lanes`], so the sums are the same bits. False, with `lanes`
/// untouched, for any other shape or for bf16 data at odd addresses.
fn pair_lanes_bf16(
    inputs: &[Input<'_>],
    vectors: &[Combination],
    range: Range<usize>,
    lanes: &mut [Lanes],
) -> bool {
    let ([v0, v1], [xx, xy, yy]) = (vectors, &mut *lanes) else {
        return false;
    };
    let bits = |i: usize| -> Option<&[u16]> {
        let input = inputs[i];
        if input.dtype != Dtype::BF16 {
            return None;
        }
        bytemuck::try_cast_slice(&input.data[range.start * 2..range.end * 2]).ok()
    };
    fn terms<'a, const T: usize>(
        v: &[(usize, f64)],
        bits: &impl Fn(usize) -> Option<&'a [u16]>,
    ) -> Option<[(&'a [u16], f64); T]> {
        let mut out = [(&[][..], 0.0); T];
        for (o, &(i, c)) in out.iter_mut().zip(v) {
            *o = (bits(i)?, c);
        }
        (v.len() == T).then_some(out)
    }
    let mut pairs = [*xx, *xy, *yy];
    let done = match (v0.len(), v1.len()) {
        (1, 1) => terms(v0, &bits)
            .zip(terms(v1, &bits))
            .map(|(a, b)| fused_pairs::<1>([a, b], &mut pairs)),
        (2, 2) => terms(v0, &bits)
            .zip(terms(v1, &bits))
            .map(|(a, b)| fused_pairs::<2>([a, b], &mut pairs)),
        _ => None,
    };
    [*xx, *xy, *yy] = pairs;
    done.is_some()
}

/// Adds `x * x`, `x * y` and `y * y` to `pairs`, `x` and `y` the two vectors' values: each
/// `sum_k c_k * widen(bits_k[j])`, in term order. An input in both vectors (the base of two
/// task vectors) is widened twice: that is cheaper than indexing an array of widened inputs.
/// No closures: they would not inherit the clone's target features, and would not be inlined.
/// Unlike [`kernel::decode`], the widening does not set a NaN's quiet bit: the first
/// multiplication sets it, so the sums keep the same bits.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn fused_pairs<const T: usize>(vectors: [[(&[u16], f64); T]; 2], pairs: &mut [Lanes; 3]) {
    let len = vectors[0][0].0.len();
    let whole = len - len % LANES;
    let [mut xx, mut xy, mut yy] = *pairs;
    for j in (0..whole).step_by(LANES) {
        let mut values = [[0f64; LANES]; 2];
        for (v, out) in vectors.iter().zip(&mut values) {
            for (k, &(bits, c)) in v.iter().enumerate() {
                let bits: &[u16; LANES] = bits[j..j + LANES].try_into().expect("a lane each");
                for l in 0..LANES {
                    let term = c * widen(bits[l]);
                    out[l] = if k == 0 { term } else { out[l] + term };
                }
            }
        }
        let [x, y] = values;
        for l in 0..LANES {
            xx[l] += x[l] * x[l];
            xy[l] += x[l] * y[l];
            yy[l] += y[l] * y[l];
        }
    }
    for (l, j) in (whole..len).enumerate() {
        let mut values = [0f64; 2];
        for (v, out) in vectors.iter().zip(&mut values) {
            for (k, &(bits, c)) in v.iter().enumerate() {
                let term = c * widen(bits[j]);
                *out = if k == 0 { term } else { *out + term };
            }
        }
        let [x, y] = values;
        xx[l] += x * x;
        xy[l] += x * y;
        yy[l] += y * y;
    }
    *pairs = [xx, xy, yy];
}

/// A little-endian bf16's value, its NaNs as they are (see [`fused_pairs`]).
#[inline(always)]
fn widen(h: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(u16::from_le(h)) << 16))
}

/// The Gram matrix of `vectors` in each group, summed in f64 in a fixed order: per tensor,
/// each chunk in [`LANES`] lanes, then the chunks' sums in chunk order; per row, the row in
/// [`LANES`] lanes; per column, each column in row order.
fn grams(
    inputs: &[Input<'_>],
    vectors: &[Combination],
    grouping: Grouping,
    n: usize,
    populate: &(dyn Fn(Range<usize>) + Sync),
) -> Vec<Gram> {
    let m = vectors.len();
    let pairs = Gram::pairs(m);
    let gram = |values: Vec<f64>| Gram { vectors: m, values };
    let tiles = || Tiles::new(inputs.len(), vectors, STAT_TILE);
    match grouping {
        Grouping::Flat => {
            let partials: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK_ELEMENTS))
                .into_par_iter()
                .map_init(tiles, |tiles, c| {
                    let range = c * CHUNK_ELEMENTS..((c + 1) * CHUNK_ELEMENTS).min(n);
                    populate(range.clone());
                    pair_sums(inputs, vectors, range, tiles)
                })
                .collect();
            let mut total = vec![0.0; pairs];
            for p in partials {
                for (t, x) in total.iter_mut().zip(p) {
                    *t += x;
                }
            }
            vec![gram(total)]
        }
        Grouping::Rows(len) => {
            let len = len as usize;
            let rows = n.checked_div(len).unwrap_or(0);
            let per_block = (CHUNK_ELEMENTS / len.max(1)).max(1);
            let blocks: Vec<Vec<Gram>> = (0..rows.div_ceil(per_block))
                .into_par_iter()
                .map_init(tiles, |tiles, b| {
                    let first = b * per_block;
                    let last = ((b + 1) * per_block).min(rows);
                    populate(first * len..last * len);
                    (first..last)
                        .map(|r| gram(pair_sums(inputs, vectors, r * len..(r + 1) * len, tiles)))
                        .collect()
                })
                .collect();
            blocks.into_iter().flatten().collect()
        }
        Grouping::Columns(stride) => {
            let stride = stride as usize;
            let rows = n.checked_div(stride).unwrap_or(0);
            const WIDTH: usize = 4096;
            let blocks: Vec<Vec<Gram>> = (0..stride.div_ceil(WIDTH))
                .into_par_iter()
                .map_init(
                    || Tiles::new(inputs.len(), vectors, WIDTH),
                    |tiles, b| {
                        let (j0, j1) = (b * WIDTH, ((b + 1) * WIDTH).min(stride));
                        let mut sums = vec![vec![0.0; pairs]; j1 - j0];
                        for r in 0..rows {
                            tiles.fill(inputs, vectors, r * stride + j0..r * stride + j1);
                            for (j, s) in sums.iter_mut().enumerate() {
                                // One position per column and row: a sum over the rows in
                                // order.
                                let mut p = 0;
                                for a in 0..m {
                                    for b in a..m {
                                        let x = tiles.vectors[a][j] * tiles.vectors[b][j];
                                        s[p] += x;
                                        p += 1;
                                    }
                                }
                            }
                        }
                        sums.into_iter().map(gram).collect()
                    },
                )
                .collect();
            blocks.into_iter().flatten().collect()
        }
    }
}

/// Each model's trim of a tensor of `n` elements, in working precision `A`.
fn trims<A: Real>(
    inputs: &[Input<'_>],
    tv: &TaskVectors,
    shape: &[u64],
    n: usize,
) -> Vec<Option<sparsify::Trim>> {
    let base = inputs[tv.models.len()];
    let spec = |method, m: &TaskVector| sparsify::TrimSpec {
        method,
        density: m.density,
        gamma: m.gamma,
        epsilon: m.epsilon,
        stream: m.stream,
        rescale: tv.rescale,
        shape,
    };
    let shared = match tv.sparsify {
        Some(Sparsify::Magnitude | Sparsify::MagnitudeOutliers) => true,
        Some(Sparsify::Random) => tv.rescale,
        _ => false,
    };
    if let (Some(method), true) = (tv.sparsify, shared) {
        // Thresholds, and DARE's norms: every trimmed model's passes at once, each tile of the
        // base read once for all of them (see `sparsify::magnitude_trims`).
        let trimmed: Vec<usize> = (0..tv.models.len())
            .filter(|&m| tv.models[m].density < 1.0)
            .collect();
        let xs: Vec<Input<'_>> = trimmed
            .iter()
            .map(|&m| inputs[tv.models[m].input])
            .collect();
        let specs: Vec<sparsify::TrimSpec<'_>> = trimmed
            .iter()
            .map(|&m| spec(method, &tv.models[m]))
            .collect();
        let magnitudes = |range: Range<usize>, out: &mut [A::Key]| {
            if range.is_empty() {
                return;
            }
            for (&x, out) in xs.iter().zip(out.chunks_mut(range.len())) {
                kernel::decode_magnitudes::<A>(x, base, range.clone(), out);
            }
        };
        let trims = if method == Sparsify::Random {
            sparsify::random_trims::<A>(&specs, n, &magnitudes)
        } else {
            sparsify::magnitude_trims::<A>(&specs, n, &magnitudes)
        };
        let mut found = trims.into_iter();
        return tv
            .models
            .iter()
            .map(|m| (m.density < 1.0).then(|| found.next().expect("one per trimmed model")))
            .collect();
    }
    // The models in parallel too: a trim's serial steps (sorting the sample, selecting among
    // the gathered keys) overlap another model's passes.
    tv.models
        .par_iter()
        .map(|m| {
            let method = tv.sparsify?;
            if m.density >= 1.0 {
                return None;
            }
            let x = inputs[m.input];
            let magnitudes = |range: Range<usize>, out: &mut [A::Key]| {
                kernel::decode_magnitudes::<A>(x, base, range, out);
            };
            Some(sparsify::trim::<A>(&spec(method, m), n, &magnitudes))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(data: &[u8]) -> Input<'_> {
        Input {
            dtype: Dtype::BF16,
            data,
        }
    }

    /// bf16 bits from a small generator: mostly ordinary values, with zeros of both signs,
    /// infinities and denormals mixed in.
    fn bits(seed: u32, n: usize) -> Vec<u16> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                match i % 97 {
                    13 => 0x8000,
                    29 => 0x0000,
                    41 => 0x0001,
                    _ => (0x3C00 + (s & 0x07FF) as u16) | ((s >> 16) as u16 & 0x8000),
                }
            })
            .collect()
    }

    /// The register path for bf16 and the tiles that every other input takes must give the
    /// same bits: bf16 at an odd address takes the tiles, so the two share this one order.
    #[test]
    fn the_bf16_register_path_sums_as_the_tiles_do() {
        let n = 3 * STAT_TILE + 13;
        let data: Vec<Vec<u16>> = (0..3).map(|i| bits(0x9E37 + i, n)).collect();
        let aligned: Vec<Vec<u8>> = data
            .iter()
            .map(|d| bytemuck::cast_slice(d).to_vec())
            .collect();
        // One byte in: every input's data at an odd address.
        let shifted: Vec<Vec<u8>> = aligned.iter().map(|a| [&[0u8][..], a].concat()).collect();
        let vector_sets: [Vec<Combination>; 3] = [
            vec![vec![(1, 1.0)], vec![(0, 1.0)]],
            vec![vec![(0, 1.0), (2, -1.0)], vec![(1, 1.0), (2, -1.0)]],
            vec![vec![(0, 0.3), (2, -1.7)], vec![(1, 2.5), (0, 0.25)]],
        ];
        for vectors in &vector_sets {
            for range in [0..n, 5..n - 3, 8..8 + STAT_TILE, 0..7] {
                let fast: Vec<Input<'_>> = aligned.iter().map(|a| input(a)).collect();
                let slow: Vec<Input<'_>> = shifted.iter().map(|s| input(&s[1..])).collect();
                let mut tiles = Tiles::new(3, vectors, STAT_TILE);
                let mut lanes = vec![[0f64; LANES]; 3];
                assert!(pair_lanes_bf16(&fast, vectors, range.clone(), &mut lanes));
                assert!(!pair_lanes_bf16(&slow, vectors, range.clone(), &mut lanes));
                let a = pair_sums(&fast, vectors, range.clone(), &mut tiles);
                let b = pair_sums(&slow, vectors, range.clone(), &mut tiles);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{vectors:?} {range:?}");
                assert!(a.iter().all(|x| x.is_finite() && *x != 0.0), "{a:?}");
            }
        }
    }

    /// A NaN in an input gives NaN sums on both paths, with the same bits.
    #[test]
    fn nan_inputs_give_the_same_nan_on_both_paths() {
        let n = 40;
        let mut data: Vec<Vec<u16>> = (0..3).map(|i| bits(7 + i, n)).collect();
        // A signalling NaN (quiet bit clear) and a quiet one.
        data[0][9] = 0x7F81;
        data[2][21] = 0xFFC3;
        let aligned: Vec<Vec<u8>> = data
            .iter()
            .map(|d| bytemuck::cast_slice(d).to_vec())
            .collect();
        let shifted: Vec<Vec<u8>> = aligned.iter().map(|a| [&[0u8][..], a].concat()).collect();
        let vectors = vec![vec![(0, 1.0), (2, -1.0)], vec![(1, 1.0), (2, -1.0)]];
        let fast: Vec<Input<'_>> = aligned.iter().map(|a| input(a)).collect();
        let slow: Vec<Input<'_>> = shifted.iter().map(|s| input(&s[1..])).collect();
        let mut tiles = Tiles::new(3, &vectors, STAT_TILE);
        let a = pair_sums(&fast, &vectors, 0..n, &mut tiles);
        let b = pair_sums(&slow, &vectors, 0..n, &mut tiles);
        assert!(a.iter().all(|x| x.is_nan()), "{a:?}");
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }
}
