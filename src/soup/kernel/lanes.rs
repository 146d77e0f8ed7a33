//! The task-vector kernel in registers, for its common shape: one to four models whose inputs
//! (base included) are all aligned bf16 or all f32, combined in f32. The generic kernel
//! ([`super::task_vectors`]) makes a pass over a tile of every buffer for each step (decode,
//! subtract, trim, sum, elect, scale), and that traffic, not arithmetic, was most of TIES'
//! combining time. Here each group of eight elements goes through every step in registers.
//! The operations, and their order, are the generic kernel's, so the bytes are the same: the
//! tests compare the two on every trim and shape.

use multiversion::multiversion;

use super::{pack_flags, Scratch, TaskVectorMix, CHUNK_ELEMENTS, WORK_TILE};
use crate::format::{Accumulator, Dtype};
use crate::soup::method::draws::{self, Cutoff};
use crate::soup::method::sparsify::{Bounds, Keep, TieCounts, Trim};

/// Elements per group: a word of a mask (and of [`pack_flags`]), and eight AVX2 registers of
/// f32, few enough that a group's buffers stay in the first-level cache.
const LANES: usize = 64;
type Lanes = [f32; LANES];

/// The most models the kernel takes: their terms, the base and the election's sums stay in
/// sixteen registers.
const MAX_MODELS: usize = 4;

/// An input's elements of a chunk, read a group at a time.
trait Load: Copy {
    /// Elements `j..j + len` as f32, zeros past `len`, as [`super::decode`] gives them.
    fn lanes(self, j: usize, len: usize) -> Lanes;
    /// Elements `at..at + len`: a tile.
    fn part(self, at: usize, len: usize) -> Self;
}

/// Aligned little-endian bf16.
#[derive(Clone, Copy)]
struct Bf16<'a>(&'a [u16]);

impl Load for Bf16<'_> {
    #[inline(always)]
    fn lanes(self, j: usize, len: usize) -> Lanes {
        let mut out = [0.0; LANES];
        for (o, &h) in out.iter_mut().zip(&self.0[j..j + len]) {
            let h = u16::from_le(h) as u32;
            // A NaN gets its quiet bit, as the half crate (and so `decode`) gives it.
            let quiet = if h & 0x7FFF > 0x7F80 { 0x40 } else { 0 };
            *o = f32::from_bits((h | quiet) << 16);
        }
        out
    }
    fn part(self, at: usize, len: usize) -> Self {
        Bf16(&self.0[at..at + len])
    }
}

/// Aligned f32, as it is.
#[derive(Clone, Copy)]
struct F32<'a>(&'a [f32]);

impl Load for F32<'_> {
    #[inline(always)]
    fn lanes(self, j: usize, len: usize) -> Lanes {
        let mut out = [0.0; LANES];
        out[..len].copy_from_slice(&self.0[j..j + len]);
        out
    }
    fn part(self, at: usize, len: usize) -> Self {
        F32(&self.0[at..at + len])
    }
}

/// A model's trim over one tile.
#[derive(Clone, Copy)]
enum Cut<'a> {
    All,
    /// The mask's words from the tile's first element (a tile starts on a word).
    Bits(&'a [u64]),
    /// The tile's draws: one run (a tile never crosses a block of the stream).
    Drawn(draws::Run, Cutoff),
    /// Keys above `low` and at most `at_most`, and the thresholds' own values for ties (-1,
    /// which no key is, for a missing one). Keys are magnitudes, below 2^31, so they compare
    /// as i32.
    Bounds {
        bounds: &'a Bounds,
        low: i32,
        at_most: i32,
        ties: [i32; 2],
    },
}

/// One model of a tile.
#[derive(Clone, Copy)]
struct Model<'a, L> {
    x: L,
    weight: f32,
    scale: f32,
    cut: Cut<'a>,
}

/// The mix's settings, as the generic kernel has them.
#[derive(Clone, Copy)]
struct Settings {
    consensus: bool,
    normalize: bool,
    divisor: f32,
    lambda: f32,
}

/// Whether the mix has the kernel's shape over `range`: one to four models, and every input
/// aligned bf16, or every input f32.
pub fn takes(mix: &TaskVectorMix<'_>, range: &std::ops::Range<usize>) -> bool {
    let k = mix.models.len();
    let dtype = mix.base.dtype;
    let aligned = |data: &[u8]| match dtype {
        Dtype::BF16 => {
            bytemuck::try_cast_slice::<u8, u16>(&data[range.start * 2..range.end * 2]).is_ok()
        }
        Dtype::F32 => {
            bytemuck::try_cast_slice::<u8, f32>(&data[range.start * 4..range.end * 4]).is_ok()
        }
        _ => false,
    };
    // Random drops take one run of the stream per tile: chunks start at multiples of the
    // tile, so a tile never crosses a block of 2^32 elements, unless a caller hands a range
    // that does (the generic kernel splits runs).
    let one_block = range.is_empty() || range.start >> 32 == (range.end - 1) >> 32;
    let drawn = mix.models.iter().any(|m| {
        matches!(
            m.trim,
            Some(Trim {
                keep: Keep::Drawn(..),
                ..
            })
        )
    });
    (1..=MAX_MODELS).contains(&k)
        && (one_block || !drawn)
        && mix.models.iter().all(|m| m.input.dtype == dtype)
        && aligned(mix.base.data)
        && mix.models.iter().all(|m| aligned(m.input.data))
}

/// Elements `range` of the mix into `scratch`'s output, for a mix the kernel [`takes`].
pub fn task_vectors<'a, 's>(
    mix: &TaskVectorMix<'a>,
    range: std::ops::Range<usize>,
    out_dtype: Dtype,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let bytes = |data: &'a [u8], size: usize| &data[range.start * size..range.end * size];
    if mix.base.dtype == Dtype::BF16 {
        let cast = |data: &'a [u8]| Bf16(bytemuck::cast_slice(bytes(data, 2)));
        dispatch(mix, cast, range.clone(), out_dtype, scratch)
    } else {
        let cast = |data: &'a [u8]| F32(bytemuck::cast_slice(bytes(data, 4)));
        dispatch(mix, cast, range.clone(), out_dtype, scratch)
    }
}

/// Runs the kernel on the inputs seen through `cast`, for the number of models, which the
/// loops unroll over.
fn dispatch<'a, 's, L: Load>(
    mix: &TaskVectorMix<'a>,
    cast: impl Fn(&'a [u8]) -> L,
    range: std::ops::Range<usize>,
    out_dtype: Dtype,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let base = cast(mix.base.data);
    let xs: Vec<L> = mix.models.iter().map(|m| cast(m.input.data)).collect();
    match xs.len() {
        1 => tiles::<L, 1>(mix, base, &xs, range, out_dtype, scratch),
        2 => tiles::<L, 2>(mix, base, &xs, range, out_dtype, scratch),
        3 => tiles::<L, 3>(mix, base, &xs, range, out_dtype, scratch),
        _ => tiles::<L, 4>(mix, base, &xs, range, out_dtype, scratch),
    }
}

fn tiles<'s, L: Load, const K: usize>(
    mix: &TaskVectorMix<'_>,
    base: L,
    xs: &[L],
    range: std::ops::Range<usize>,
    out_dtype: Dtype,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let size = out_dtype.size();
    let (buf, out) = <f32 as super::Real>::buffers(scratch);
    buf.ready(K);
    let mixed = &mut buf.acc;
    let out = &mut bytemuck::cast_slice_mut::<u64, u8>(out)[..range.len() * size];
    let total: f64 = mix.models.iter().map(|m| m.weight).sum();
    let settings = Settings {
        consensus: mix.consensus,
        normalize: mix.normalize,
        divisor: if total.abs() < 1e-8 {
            1.0
        } else {
            total as f32
        },
        lambda: mix.lambda as f32,
    };
    let chunk = range.start / CHUNK_ELEMENTS;
    let mut ties: [Option<TieCounts>; K] = std::array::from_fn(|i| match mix.models[i].trim {
        Some(Trim {
            keep: Keep::Bounds(b),
            ..
        }) => Some(b.start(chunk)),
        _ => None,
    });
    for (t, tile) in out.chunks_mut(WORK_TILE * size).enumerate() {
        let at = t * WORK_TILE;
        let start = range.start + at;
        let n = tile.len() / size;
        let models: [Model<'_, L>; K] = std::array::from_fn(|i| {
            let m = &mix.models[i];
            let (cut, scale) = match m.trim {
                None => (Cut::All, 1.0),
                Some(Trim { keep, scale }) => (
                    match keep {
                        Keep::Bits(words) => Cut::Bits(&words[start / 64..]),
                        Keep::Drawn(stream, cutoff) => {
                            // `takes` saw that the range lies in one block of the stream.
                            let mut run = None;
                            draws::runs(*stream, start as u64, n, |_, _, r| {
                                run.get_or_insert(r);
                            });
                            Cut::Drawn(run.expect("a tile has draws"), *cutoff)
                        }
                        Keep::Bounds(bounds) => {
                            let key = |c: &Option<crate::soup::method::sparsify::Cut>| {
                                c.as_ref().map(|c| c.value as i32)
                            };
                            let (low, high) = (key(&bounds.low), key(&bounds.high));
                            Cut::Bounds {
                                bounds,
                                low: low.unwrap_or(-1),
                                at_most: high.map_or(i32::MAX, |h| h - 1),
                                ties: [low.unwrap_or(-1), high.unwrap_or(-1)],
                            }
                        }
                    },
                    *scale,
                ),
            };
            Model {
                x: xs[i].part(at, n),
                weight: m.weight as f32,
                scale: scale as f32,
                cut,
            }
        });
        tile_kernel::<L, K>(
            base.part(at, n),
            &models,
            settings,
            &mut ties,
            &mut mixed[..n],
            (out_dtype, tile),
        );
    }
    out
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn tile_kernel<L: Load, const K: usize>(
    base: L,
    models: &[Model<'_, L>; K],
    settings: Settings,
    ties: &mut [Option<TieCounts>; K],
    mixed: &mut [f32],
    (out_dtype, tile): (Dtype, &mut [u8]),
) {
    let n = mixed.len();
    let whole = n - n % LANES;
    for j in (0..whole).step_by(LANES) {
        let m = group::<L, K>(base, models, settings, ties, j, LANES);
        mixed[j..j + LANES].copy_from_slice(&m);
    }
    if whole < n {
        let m = group::<L, K>(base, models, settings, ties, whole, n - whole);
        mixed[whole..].copy_from_slice(&m[..n - whole]);
    }
    // Here, to be compiled into each target's clone.
    f32::store(out_dtype, mixed, tile);
}

/// `a` where `keep`, else +0 (a select on bits, which vectorises where a branch did not).
#[inline(always)]
fn select(keep: bool, a: f32) -> f32 {
    f32::from_bits(a.to_bits() & (keep as u32).wrapping_neg())
}

/// 1 or 0.
#[inline(always)]
fn one(keep: bool) -> f32 {
    keep as u32 as f32
}

/// Elements `j..j + len` (len at most [`LANES`]) of the mix; lanes past `len` are padding.
/// Every step is a loop over the group with a branch-free body, so that each vectorises.
#[inline(always)]
fn group<L: Load, const K: usize>(
    base: L,
    models: &[Model<'_, L>; K],
    s: Settings,
    ties: &mut [Option<TieCounts>; K],
    j: usize,
    len: usize,
) -> Lanes {
    let b = base.lanes(j, len);
    let mut terms = [[0f32; LANES]; K];
    for (i, m) in models.iter().enumerate() {
        let x = m.x.lanes(j, len);
        let mut d = [0f32; LANES];
        for l in 0..LANES {
            d[l] = x[l] - b[l];
        }
        let mut kept = [1f32; LANES];
        match m.cut {
            Cut::All => {
                for l in 0..LANES {
                    terms[i][l] = m.weight * d[l];
                }
                continue;
            }
            Cut::Bits(words) => {
                // 32 bits at a time: AVX2 shifts 32-bit lanes by a vector of counts.
                for (h, kept) in kept.chunks_mut(32).enumerate() {
                    let e = j + 32 * h;
                    let bits = (words[e / 64] >> (e % 64)) as u32;
                    for (l, k) in kept.iter_mut().enumerate() {
                        *k = one((bits >> l) & 1 == 1);
                    }
                }
            }
            Cut::Drawn(run, cutoff) => match cutoff {
                Cutoff::None => kept = [0.0; LANES],
                Cutoff::All => {}
                Cutoff::Below(c) => {
                    for (l, k) in kept.iter_mut().enumerate() {
                        *k = one(run.draw(j + l) < c);
                    }
                }
            },
            Cut::Bounds {
                bounds,
                low,
                at_most,
                ties: at,
            } => {
                let mut keys = [0i32; LANES];
                let mut any = false;
                for l in 0..LANES {
                    keys[l] = (d[l].to_bits() & 0x7FFF_FFFF) as i32;
                    kept[l] = one((keys[l] > low) & (keys[l] <= at_most));
                    any |= (keys[l] == at[0]) | (keys[l] == at[1]);
                }
                if any {
                    // Rare: resolved one by one, in flat order, as the generic kernel does.
                    let counts = ties[i].as_mut().expect("made for every threshold trim");
                    let threshold = |v: i32| (v >= 0).then_some(v as u32);
                    let (lo, hi) = (threshold(at[0]), threshold(at[1]));
                    // Ties can be a few percent of the keys (bf16 differences repeat): the
                    // group's are found in one vectorised pass, and only they are visited.
                    let mut flags = [0u8; LANES];
                    for l in 0..len {
                        flags[l] = ((keys[l] == at[0]) | (keys[l] == at[1])) as u8;
                    }
                    let mut m = pack_flags(&flags);
                    while m != 0 {
                        let l = m.trailing_zeros() as usize;
                        m &= m - 1;
                        kept[l] = one(bounds.tied(keys[l] as u32, lo, hi, counts));
                    }
                }
            }
        }
        for l in 0..LANES {
            terms[i][l] = m.weight * (d[l] * kept[l] * m.scale);
        }
    }
    let mut sum = terms[0];
    for t in &terms[1..] {
        for l in 0..LANES {
            sum[l] += t[l];
        }
    }
    let mut mixed = [0f32; LANES];
    // A NaN or an infinite term makes the sum of the terms NaN or infinite: only a group with
    // such a sum can hold a NaN, and only there does the election take the slower road that
    // carries one (finite terms give the same bytes either way). Without an election the sum
    // carries NaNs as it is.
    let mut finite = true;
    if s.consensus {
        for total in &sum {
            finite &= total.abs() < f32::INFINITY;
        }
        // TIES' election, as in the generic kernel: the sums start from +0, a NaN sum counts
        // as negative (it is not >= 0), and a losing term adds itself times 0.
        let mut weights = [0f32; LANES];
        for (t, m) in terms.iter().zip(models) {
            if finite {
                for l in 0..LANES {
                    let positive = sum[l] >= 0.0;
                    let agree = (positive & (t[l] > 0.0)) | (!positive & (t[l] < 0.0));
                    mixed[l] += select(agree, t[l]);
                    weights[l] += select(agree, m.weight);
                }
            } else {
                for l in 0..LANES {
                    let positive = sum[l] >= 0.0;
                    let agree = (positive & (t[l] > 0.0)) | (!positive & (t[l] < 0.0));
                    mixed[l] += t[l] * one(agree);
                    weights[l] += select(agree, m.weight);
                }
            }
        }
        if s.normalize {
            for l in 0..LANES {
                let zero = weights[l] == 0.0;
                let divisor = f32::from_bits(
                    (weights[l].to_bits() & (!zero as u32).wrapping_neg())
                        | (1f32.to_bits() & (zero as u32).wrapping_neg()),
                );
                mixed[l] /= divisor;
            }
        }
    } else {
        mixed = sum;
        if s.normalize {
            for m in mixed.iter_mut() {
                *m /= s.divisor;
            }
        }
    }
    for l in 0..LANES {
        mixed[l] = b[l] + mixed[l] * s.lambda;
    }
    if !finite {
        // One NaN, as in the generic kernel.
        for m in mixed.iter_mut() {
            if m.is_nan() {
                *m = f32::NAN;
            }
        }
    }
    mixed
}

#[cfg(test)]
mod tests {
    use super::super::{task_vectors_in, Input, TaskVectorInput};
    use super::*;
    use crate::soup::method::sparsify::Cut as Threshold;

    /// bf16 bits: mostly a few repeated magnitudes (so that thresholds have ties), with both
    /// zeros, infinities, a signalling and a quiet NaN, and denormals mixed in.
    fn bits(seed: u32, n: usize) -> Vec<u16> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Specials at different places in each input: inf - inf, NaN against a
                // finite value, and a lone infinity all occur.
                match (i + 3 * seed as usize) % 211 {
                    3 => 0x8000,
                    5 => 0x0000,
                    7 => 0x7F80,
                    11 => 0xFF80,
                    13 => 0x7F81,
                    17 => 0xFFC3,
                    19 => 0x0001,
                    _ => (0x3F80 + (s & 0x1F) as u16) | ((s >> 16) as u16 & 0x8000),
                }
            })
            .collect()
    }

    fn threshold(value: u32, ties: std::ops::Range<usize>) -> Threshold {
        Threshold {
            value: value as u64,
            ties,
            offsets: vec![0, 3],
        }
    }

    /// Every trim and setting through both kernels, over the first chunk and into the second
    /// (tie ordinals carried from the chunk's offset), for every number of models the fast
    /// kernel takes, from bf16 and from f32 inputs: the same bytes.
    #[test]
    fn the_register_kernel_gives_the_generic_kernels_bytes() {
        let n = CHUNK_ELEMENTS + 2 * WORK_TILE + 77;
        let raw: Vec<Vec<u16>> = (0..5).map(|i| bits(0x2545_F491 + i, n)).collect();
        let bf16: Vec<Vec<u8>> = raw
            .iter()
            .map(|r| bytemuck::cast_slice(r).to_vec())
            .collect();
        let f32: Vec<Vec<u8>> = raw
            .iter()
            .map(|r| {
                let v: Vec<f32> = r
                    .iter()
                    .map(|&h| f32::from_bits((h as u32) << 16))
                    .collect();
                bytemuck::cast_slice(&v).to_vec()
            })
            .collect();
        // A magnitude the data has often: 1.0 + 3/128 as a key.
        let key = (f32::from_bits((0x3F83u32) << 16) - 1.0).to_bits();
        let mut mask = vec![0u64; n.div_ceil(64)];
        for (w, m) in mask.iter_mut().enumerate() {
            *m = (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x0F0F;
        }
        let trims = [
            Trim {
                keep: Keep::Bits(mask),
                scale: 1.75,
            },
            Trim {
                keep: Keep::Drawn(0xDEAD_BEEF, Cutoff::of(0.4)),
                scale: 1.0,
            },
            Trim {
                keep: Keep::Drawn(7, Cutoff::None),
                scale: 1.0,
            },
            Trim {
                keep: Keep::Bounds(Bounds {
                    low: Some(threshold(key, 2..40)),
                    high: None,
                }),
                scale: 0.5,
            },
            Trim {
                keep: Keep::Bounds(Bounds {
                    low: Some(threshold(key >> 4, 0..1)),
                    high: Some(threshold(key, 0..25)),
                }),
                scale: 2.0,
            },
            Trim {
                keep: Keep::Bounds(Bounds {
                    low: None,
                    high: Some(threshold(key, 10..20)),
                }),
                scale: 1.0,
            },
        ];
        let ranges = [0..3 * WORK_TILE + 5, CHUNK_ELEMENTS..n];
        for (inputs, dtype) in [(&bf16, Dtype::BF16), (&f32, Dtype::F32)] {
            let input = |i: usize| Input {
                dtype,
                data: &inputs[i],
            };
            for k in 1..=MAX_MODELS {
                for (case, (consensus, normalize)) in
                    [(true, true), (true, false), (false, true), (false, false)]
                        .into_iter()
                        .enumerate()
                {
                    let mix = TaskVectorMix {
                        base: input(4),
                        models: (0..k)
                            .map(|i| TaskVectorInput {
                                input: input(i),
                                weight: [0.3, -0.7, 1.1, 0.0][i],
                                // None now and then: a model kept whole beside trimmed ones.
                                trim: (i + case != 2).then(|| &trims[(i + 2 * case) % trims.len()]),
                            })
                            .collect(),
                        consensus,
                        normalize,
                        lambda: [1.0, 0.6][case % 2],
                    };
                    for range in ranges.clone() {
                        assert!(takes(&mix, &range));
                        for out in [Dtype::BF16, Dtype::F32] {
                            let mut s = Scratch::default();
                            let fast = task_vectors(&mix, range.clone(), out, &mut s).to_vec();
                            let mut s = Scratch::default();
                            let generic =
                                task_vectors_in::<f32>(&mix, range.clone(), out, &mut s).to_vec();
                            assert!(
                                fast == generic,
                                "{dtype} inputs, {k} models, case {case}, {range:?}, {out} out"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A mix of `inputs[1..]` on the base `inputs[0]`, untrimmed.
    fn mix<'a>(inputs: &[Input<'a>]) -> TaskVectorMix<'a> {
        TaskVectorMix {
            base: inputs[0],
            models: inputs[1..]
                .iter()
                .map(|&input| TaskVectorInput {
                    input,
                    weight: 1.0,
                    trim: None,
                })
                .collect(),
            consensus: true,
            normalize: true,
            lambda: 1.0,
        }
    }

    /// Mixed dtypes, misaligned bf16 and five models go to the generic kernel.
    #[test]
    fn other_shapes_are_left_to_the_generic_kernel() {
        let halves = [0u16; 65];
        let bytes: &[u8] = bytemuck::cast_slice(&halves);
        let floats = [0f32; 64];
        let aligned = Input {
            dtype: Dtype::BF16,
            data: &bytes[..128],
        };
        // Odd addresses, as a header whose length is not a multiple of 8 leaves the data.
        let odd = Input {
            dtype: Dtype::BF16,
            data: &bytes[1..],
        };
        let f32 = Input {
            dtype: Dtype::F32,
            data: bytemuck::cast_slice(&floats),
        };
        let r = 0..64;
        assert!(takes(&mix(&[aligned, aligned]), &r));
        assert!(takes(&mix(&[f32; 5]), &r));
        assert!(!takes(&mix(&[aligned, f32]), &r));
        assert!(!takes(&mix(&[aligned; 6]), &r));
        assert!(!takes(&mix(&[aligned, odd]), &r));
        // Random drops over a range that crosses a block of the stream (refused before any
        // byte is looked at, so the tiny inputs don't matter).
        let drawn = Trim {
            keep: Keep::Drawn(1, Cutoff::of(0.5)),
            scale: 1.0,
        };
        let mut m = mix(&[aligned, aligned]);
        m.models[0].trim = Some(&drawn);
        assert!(!takes(&m, &((1 << 32) - 8..(1 << 32) + 8)));
        assert!(takes(&m, &r));
    }
}
