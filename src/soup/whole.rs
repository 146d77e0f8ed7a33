//! The whole-tensor half of a method's work: the statistics (dot products per vector) or the
//! trims (a bitmask and a scale per model) that must see a whole tensor before its first output
//! chunk can be computed. Partial results are combined in a fixed order, so nothing depends on
//! the thread count. Memory: the trims keep one key per element of the tensor being merged
//! (4 bytes, 8 for f64 work) plus a copy for selection, and DELLA one rank per element; the
//! statistics keep a few f64 per row.

use std::ops::Range;

use rayon::prelude::*;

use super::kernel::{
    self, Input, Real, Scratch, Source, TaskVectorInput, TaskVectorMix, CHUNK_ELEMENTS,
};
use super::method::{sparsify, Combination, Gram, Grouping, TaskVectors, Work};
use super::plan::{Plan, TensorPlan, Whole};

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
            let grams = grams(&inputs, vectors, *grouping, n);
            Prepared::Combinations {
                grouping: *grouping,
                combinations: grams.iter().map(|g| finish(g)).collect(),
            }
        }
        Work::TaskVectors(tv) => {
            if whole.wide {
                Prepared::Trims(trims::<f64>(&inputs, tv, &tensor.shape, n))
            } else {
                Prepared::Trims(trims::<f32>(&inputs, tv, &tensor.shape, n))
            }
        }
    }
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
                        trim: trim.as_ref().map(|t| (t.keep.as_slice(), t.scale)),
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

/// A thread's buffers for [`vector_values`]: one decoded input each, and one per vector.
#[derive(Default)]
struct Values {
    decoded: Vec<Vec<f64>>,
    vectors: Vec<Vec<f64>>,
}

/// The values of `vectors` (combinations of `inputs`) at elements `range`, in f64, into
/// `buf.vectors`, reusing its allocations.
fn vector_values(
    inputs: &[Input<'_>],
    vectors: &[Combination],
    range: Range<usize>,
    buf: &mut Values,
) {
    let len = range.len();
    buf.decoded.resize_with(inputs.len(), Vec::new);
    let mut needed = vec![false; inputs.len()];
    for v in vectors {
        for &(i, _) in v {
            needed[i] = true;
        }
    }
    for (i, d) in buf.decoded.iter_mut().enumerate() {
        if needed[i] {
            d.resize(len, 0.0);
            kernel::load_range(
                inputs[i].dtype,
                inputs[i].data,
                range.clone(),
                &mut d[..len],
            );
        }
    }
    buf.vectors.resize_with(vectors.len(), Vec::new);
    for (out, v) in buf.vectors.iter_mut().zip(vectors) {
        out.resize(len, 0.0);
        for (k, &(i, c)) in v.iter().enumerate() {
            let xs = &buf.decoded[i][..len];
            for (o, x) in out[..len].iter_mut().zip(xs) {
                *o = if k == 0 { c * x } else { *o + c * x };
            }
        }
    }
}

/// Adds the pairwise dot products of `values` at `positions` into `sums`.
fn add_pairs(values: &[Vec<f64>], positions: Range<usize>, sums: &mut [f64]) {
    let m = values.len();
    let mut p = 0;
    for a in 0..m {
        for b in a..m {
            // Four lanes, added in a fixed order, so the loop vectorises.
            let mut lanes = [0f64; 4];
            let (x, y) = (&values[a][positions.clone()], &values[b][positions.clone()]);
            for (j, (x, y)) in x.iter().zip(y).enumerate() {
                lanes[j & 3] += x * y;
            }
            sums[p] += (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            p += 1;
        }
    }
}

/// The Gram matrix of `vectors` in each group, summed in f64 in a fixed order: per tensor,
/// chunk partials in chunk order; per row, each row in element order; per column, each column
/// in row order.
fn grams(inputs: &[Input<'_>], vectors: &[Combination], grouping: Grouping, n: usize) -> Vec<Gram> {
    let m = vectors.len();
    let pairs = Gram::pairs(m);
    let gram = |values: Vec<f64>| Gram { vectors: m, values };
    match grouping {
        Grouping::Flat => {
            let partials: Vec<Vec<f64>> = (0..n.div_ceil(CHUNK_ELEMENTS))
                .into_par_iter()
                .map_init(Values::default, |buf, c| {
                    let range = c * CHUNK_ELEMENTS..((c + 1) * CHUNK_ELEMENTS).min(n);
                    vector_values(inputs, vectors, range.clone(), buf);
                    let mut sums = vec![0.0; pairs];
                    add_pairs(&buf.vectors, 0..range.len(), &mut sums);
                    sums
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
            let rows = if len == 0 { 0 } else { n / len };
            let per_block = (CHUNK_ELEMENTS / len.max(1)).max(1);
            let blocks: Vec<Vec<Gram>> = (0..rows.div_ceil(per_block))
                .into_par_iter()
                .map_init(Values::default, |buf, b| {
                    let first = b * per_block;
                    let last = ((b + 1) * per_block).min(rows);
                    vector_values(inputs, vectors, first * len..last * len, buf);
                    (0..last - first)
                        .map(|r| {
                            let mut sums = vec![0.0; pairs];
                            add_pairs(&buf.vectors, r * len..(r + 1) * len, &mut sums);
                            gram(sums)
                        })
                        .collect()
                })
                .collect();
            blocks.into_iter().flatten().collect()
        }
        Grouping::Columns(stride) => {
            let stride = stride as usize;
            let rows = if stride == 0 { 0 } else { n / stride };
            const WIDTH: usize = 4096;
            let blocks: Vec<Vec<Gram>> = (0..stride.div_ceil(WIDTH))
                .into_par_iter()
                .map_init(Values::default, |buf, b| {
                    let (j0, j1) = (b * WIDTH, ((b + 1) * WIDTH).min(stride));
                    let mut sums = vec![vec![0.0; pairs]; j1 - j0];
                    for r in 0..rows {
                        vector_values(inputs, vectors, r * stride + j0..r * stride + j1, buf);
                        for (j, s) in sums.iter_mut().enumerate() {
                            add_pairs(&buf.vectors, j..j + 1, s);
                        }
                    }
                    sums.into_iter().map(gram).collect()
                })
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
    tv.models
        .iter()
        .map(|m| {
            let method = tv.sparsify?;
            if m.density >= 1.0 {
                return None;
            }
            let x = inputs[m.input];
            let deltas = |range: Range<usize>, out: &mut [A]| {
                // The base in tiles on the stack: no allocation per call.
                const TILE: usize = 4096;
                let mut b = [A::ZERO; TILE];
                kernel::load_range(x.dtype, x.data, range.clone(), out);
                for (t, out) in out.chunks_mut(TILE).enumerate() {
                    let start = range.start + t * TILE;
                    kernel::load_range(
                        base.dtype,
                        base.data,
                        start..start + out.len(),
                        &mut b[..out.len()],
                    );
                    for (o, b) in out.iter_mut().zip(&b) {
                        *o = *o - *b;
                    }
                }
            };
            let spec = sparsify::TrimSpec {
                method,
                density: m.density,
                gamma: m.gamma,
                epsilon: m.epsilon,
                stream: m.stream,
                rescale: tv.rescale,
                shape,
            };
            Some(sparsify::trim::<A>(&spec, n, &deltas))
        })
        .collect()
}
