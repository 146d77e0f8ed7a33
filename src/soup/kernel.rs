//! The element-wise kernels: a fixed-size chunk of one output tensor from its inputs. The
//! weighted sum (every linear method, and the statistics methods once their coefficients are
//! known), the same with coefficients per row, and the task-vector combination.
//!
//! Each output element depends only on the same element of the inputs (and on per-tensor or
//! per-row values computed before), combined in input order, so results don't depend on how
//! chunks are spread over threads.

use std::ops::Range;

use multiversion::multiversion;

use crate::format::{Accumulator, Dtype};
use crate::soup::method::draws::{self, Cutoff};
use crate::soup::method::sparsify::{Keep, TieCounts, Trim};

mod lanes;

/// Elements per chunk, the unit of work handed to a thread and of I/O: 1 MiB of bf16 output,
/// so the per-chunk system calls (a positioned write, page advice for each input) stay few.
pub const CHUNK_ELEMENTS: usize = 1 << 19;

/// Elements per tile of the weighted sum, the unit of its arithmetic inside a chunk: small
/// enough that the accumulator and a decoded input stay in L1 (2 × 8 KiB in f32). L2-sized
/// tiles (64 Ki elements) made a 3 × 1 GiB bf16 merge 20% slower; anything from 512 to 2048
/// elements measured the same.
const TILE_ELEMENTS: usize = 1 << 11;

/// Elements per tile of the per-row and task-vector kernels, the length of each of
/// [`Buffers`]' tiles: the task-vector kernel keeps a tile per model and five more beside it,
/// small enough for all of them to stay in L2 (2048 and 4096 measured the same).
const WORK_TILE: usize = 1 << 13;

/// One weighted input of a tensor: its dtype, all its bytes, and its weight.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub dtype: Dtype,
    pub data: &'a [u8],
    pub weight: f64,
}

/// Buffers a thread reuses for every chunk, so the hot loop never allocates.
pub struct Scratch {
    acc32: Vec<f32>,
    x32: Vec<f32>,
    acc64: Vec<f64>,
    x64: Vec<f64>,
    /// Output bytes, held as u64 so every dtype's view of it is aligned.
    out: Vec<u64>,
    /// Buffers of the per-row and task-vector kernels, allocated on first use.
    work32: Buffers<f32>,
    work64: Buffers<f64>,
}

/// A thread's buffers for the kernels beyond the weighted sum, in one working precision.
pub struct Buffers<A: Real> {
    base: Vec<A>,
    acc: Vec<A>,
    x: Vec<A>,
    /// One tile per model: the weighted, trimmed task vectors.
    terms: Vec<A>,
    sum: Vec<A>,
    div: Vec<A>,
    /// A tile's magnitude keys and kept flags (0 or 1), for trims by threshold.
    keys: Vec<A::Key>,
    kept: Vec<A>,
}

impl<A: Real> Default for Buffers<A> {
    fn default() -> Self {
        Buffers {
            base: Vec::new(),
            acc: Vec::new(),
            x: Vec::new(),
            terms: Vec::new(),
            sum: Vec::new(),
            div: Vec::new(),
            keys: Vec::new(),
            kept: Vec::new(),
        }
    }
}

impl<A: Real> Buffers<A> {
    fn ready(&mut self, models: usize) {
        if self.acc.is_empty() {
            self.base = vec![A::ZERO; WORK_TILE];
            self.acc = vec![A::ZERO; WORK_TILE];
            self.x = vec![A::ZERO; WORK_TILE];
            self.sum = vec![A::ZERO; WORK_TILE];
            self.div = vec![A::ZERO; WORK_TILE];
            self.keys = vec![A::Key::default(); WORK_TILE];
            self.kept = vec![A::ZERO; WORK_TILE];
        }
        if self.terms.len() < models * WORK_TILE {
            self.terms = vec![A::ZERO; models * WORK_TILE];
        }
    }
}

/// A working precision of the kernels beyond the weighted sum: f32 for 16-bit outputs, f64
/// otherwise, as for the sum.
pub trait Real:
    Accumulator + std::ops::Sub<Output = Self> + std::ops::Div<Output = Self> + PartialOrd
{
    /// `|x|` as an unsigned integer that orders like `|x|`, NaN above infinity: the bits with
    /// the sign cleared. Thresholds select on these.
    type Key: RankKey + Default + Send + Sync + std::fmt::Debug;
    const ZERO: Self;
    const ONE: Self;
    /// The NaN the kernels write wherever TIES' election gives one: a quiet NaN, positive.
    const NAN: Self;
    fn magnitude(self) -> Self::Key;
    /// The `|x|` a key stands for.
    fn from_magnitude(key: Self::Key) -> Self;
    fn abs(self) -> Self;
    fn is_nan(self) -> bool;
    fn to_f64(self) -> f64;
    /// This precision's buffers in `scratch`, and its output buffer.
    fn buffers(scratch: &mut Scratch) -> (&mut Buffers<Self>, &mut Vec<u64>);
}

/// A magnitude key packed with an index into one integer, so that ranking a row is a sort of
/// plain integers (by key, then index).
pub trait RankKey: Ord + Copy {
    type Packed: Ord + Copy + Send;
    /// The largest key.
    const MAX: Self;
    /// The fraction bits of the float whose magnitude the key is: a key's top bits are its
    /// exponent, so `1 << FRACTION` keys span one binade.
    const FRACTION: u32;
    fn pack(self, index: u32) -> Self::Packed;
    fn index(packed: Self::Packed) -> u32;
    /// The key as a u64, for thresholds kept independent of the working precision.
    fn to_u64(self) -> u64;
    /// The inverse of [`RankKey::to_u64`], for values it made.
    fn from_u64(v: u64) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    /// The smallest and largest of `keys` (not empty), which are magnitudes: their top bit is
    /// clear, so they compare as signed integers, which vectorises on every x86-64.
    fn min_max(keys: &[Self]) -> (Self, Self);
}

/// The two key widths differ only in their types: the key, its signed twin (for
/// [`RankKey::min_max`]) and the integer a key packs into with a 32-bit index.
macro_rules! rank_key {
    ($key:ty, $signed:ty, $packed:ty, $fraction:expr) => {
        impl RankKey for $key {
            type Packed = $packed;
            const MAX: $key = <$key>::MAX;
            const FRACTION: u32 = $fraction;
            fn to_u64(self) -> u64 {
                self as u64
            }
            fn from_u64(v: u64) -> $key {
                v as $key
            }
            fn wrapping_sub(self, other: $key) -> $key {
                <$key>::wrapping_sub(self, other)
            }
            fn min_max(keys: &[$key]) -> ($key, $key) {
                let (mut lo, mut hi) = (<$signed>::MAX, <$signed>::MIN);
                for &k in keys {
                    lo = lo.min(k as $signed);
                    hi = hi.max(k as $signed);
                }
                (lo as $key, hi as $key)
            }
            fn pack(self, index: u32) -> $packed {
                (self as $packed) << 32 | index as $packed
            }
            fn index(packed: $packed) -> u32 {
                packed as u32
            }
        }
    };
}

rank_key!(u32, i32, u64, f32::MANTISSA_DIGITS - 1);
rank_key!(u64, i64, u128, f64::MANTISSA_DIGITS - 1);

/// Bit `j` of `bits` as a factor, 0 or 1. Masks are applied by multiplying (a dropped NaN
/// stays NaN, as mergekit has it); a shift per lane vectorises (AVX2 shifts 32-bit lanes by a
/// vector of counts) where a branch or a table lookup per element kept the loops scalar.
#[inline(always)]
pub fn kept<A: Accumulator>(bits: u32, j: u32) -> A {
    A::from_f32(((bits >> j) & 1) as f32)
}

impl Real for f32 {
    type Key = u32;
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const NAN: f32 = f32::NAN;
    fn magnitude(self) -> u32 {
        self.to_bits() & 0x7FFF_FFFF
    }
    fn from_magnitude(key: u32) -> f32 {
        f32::from_bits(key)
    }
    fn abs(self) -> f32 {
        f32::abs(self)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn buffers(scratch: &mut Scratch) -> (&mut Buffers<f32>, &mut Vec<u64>) {
        (&mut scratch.work32, &mut scratch.out)
    }
}

impl Real for f64 {
    type Key = u64;
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const NAN: f64 = f64::NAN;
    fn magnitude(self) -> u64 {
        self.to_bits() & 0x7FFF_FFFF_FFFF_FFFF
    }
    fn from_magnitude(key: u64) -> f64 {
        f64::from_bits(key)
    }
    fn abs(self) -> f64 {
        f64::abs(self)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn buffers(scratch: &mut Scratch) -> (&mut Buffers<f64>, &mut Vec<u64>) {
        (&mut scratch.work64, &mut scratch.out)
    }
}

/// 64 flags of 0 or 1 as the bits of a word (flag `j` is bit `j`): eight at a time, by a
/// multiply that gathers the low bit of each byte into the top byte.
#[inline(always)]
pub fn pack_flags(flags: &[u8; 64]) -> u64 {
    let mut x = 0u64;
    for (g, f) in flags.chunks_exact(8).enumerate() {
        let b = u64::from_le_bytes(f.try_into().expect("eight"));
        x |= (b.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * g);
    }
    x
}

/// Decodes elements `range` of a tensor's bytes into `out`.
pub fn load_range<A: Accumulator>(dtype: Dtype, data: &[u8], range: Range<usize>, out: &mut [A]) {
    let size = dtype.size();
    A::load(dtype, &data[range.start * size..range.end * size], out);
}

/// `x - base` at elements `range`, in `A`, as [`decode`] would give both.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
pub fn decode_delta<A: Accumulator + std::ops::Sub<Output = A>>(
    x: Input<'_>,
    base: Input<'_>,
    range: Range<usize>,
    out: &mut [A],
) {
    if x.dtype == Dtype::BF16 && base.dtype == Dtype::BF16 {
        let xs = &x.data[range.start * 2..range.end * 2];
        let bs = &base.data[range.start * 2..range.end * 2];
        if let (Ok(xs), Ok(bs)) = (
            bytemuck::try_cast_slice::<u8, u16>(xs),
            bytemuck::try_cast_slice::<u8, u16>(bs),
        ) {
            for (o, (x, b)) in out.iter_mut().zip(xs.iter().zip(bs)) {
                *o = widen_bf16::<A>(u16::from_le(*x)) - widen_bf16::<A>(u16::from_le(*b));
            }
            return;
        }
    }
    // The base in tiles on the stack: no allocation per call.
    const TILE: usize = 1024;
    let mut b = [A::default(); TILE];
    decode(x.dtype, x.data, range.clone(), out);
    for (t, out) in out.chunks_mut(TILE).enumerate() {
        let start = range.start + t * TILE;
        let b = &mut b[..out.len()];
        decode(base.dtype, base.data, start..start + out.len(), b);
        for (o, b) in out.iter_mut().zip(b.iter()) {
            *o = *o - *b;
        }
    }
}

/// The magnitude keys ([`Real::magnitude`]) of `x - base` at elements `range`, as
/// [`decode_delta`] would give the differences: what every trim reads. bf16 is decoded,
/// subtracted and keyed in one loop, with no buffer between.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
pub fn decode_magnitudes<A: Real>(
    x: Input<'_>,
    base: Input<'_>,
    range: Range<usize>,
    out: &mut [A::Key],
) {
    if x.dtype == Dtype::BF16 && base.dtype == Dtype::BF16 {
        let xs = &x.data[range.start * 2..range.end * 2];
        let bs = &base.data[range.start * 2..range.end * 2];
        if let (Ok(xs), Ok(bs)) = (
            bytemuck::try_cast_slice::<u8, u16>(xs),
            bytemuck::try_cast_slice::<u8, u16>(bs),
        ) {
            for (o, (x, b)) in out.iter_mut().zip(xs.iter().zip(bs)) {
                let d = widen_bf16::<A>(u16::from_le(*x)) - widen_bf16::<A>(u16::from_le(*b));
                *o = d.magnitude();
            }
            return;
        }
    }
    // The differences in tiles on the stack: no allocation per call.
    const TILE: usize = 1024;
    let mut d = [A::default(); TILE];
    for (t, out) in out.chunks_mut(TILE).enumerate() {
        let start = range.start + t * TILE;
        let d = &mut d[..out.len()];
        decode_delta(x, base, start..start + out.len(), d);
        for (o, d) in out.iter_mut().zip(d.iter()) {
            *o = d.magnitude();
        }
    }
}

/// A bf16 value's bits as `A`, NaNs quieted as the half crate quiets them.
#[inline]
fn widen_bf16<A: Accumulator>(h: u16) -> A {
    let h = h as u32;
    let quiet = if h & 0x7FFF > 0x7F80 { 0x40 } else { 0 };
    A::from_f32(f32::from_bits((h | quiet) << 16))
}

/// Like [`load_range`], with bf16 decoded in a loop that vectorises at any alignment. The
/// values, NaN bits included, are the half crate's (a NaN gets its quiet bit), so the whole-tensor
/// kernels' results don't depend on which of the two decoded them.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
pub fn decode<A: Accumulator>(dtype: Dtype, data: &[u8], range: Range<usize>, out: &mut [A]) {
    if dtype != Dtype::BF16 {
        return load_range(dtype, data, range, out);
    }
    let bytes = &data[range.start * 2..range.end * 2];
    let widen = widen_bf16::<A>;
    match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(bits) => {
            for (o, &h) in out.iter_mut().zip(bits) {
                *o = widen(u16::from_le(h));
            }
        }
        // Files whose header length isn't a multiple of 8 put the data at odd addresses.
        Err(_) => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = widen(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::try_new().unwrap_or_else(|| {
            std::alloc::handle_alloc_error(std::alloc::Layout::new::<[u64; CHUNK_ELEMENTS]>())
        })
    }
}

impl Scratch {
    /// Like `default`, or `None` when the memory can't be had (a `ulimit -v`), where
    /// `default` would abort.
    pub fn try_new() -> Option<Scratch> {
        fn zeros<T: Clone + Default>(n: usize) -> Option<Vec<T>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).ok()?;
            v.resize(n, T::default());
            Some(v)
        }
        Some(Scratch {
            acc32: zeros(TILE_ELEMENTS)?,
            x32: zeros(TILE_ELEMENTS)?,
            acc64: Vec::new(),
            x64: Vec::new(),
            out: zeros(CHUNK_ELEMENTS)?,
            work32: Buffers::default(),
            work64: Buffers::default(),
        })
    }

    /// The output buffer, as `len` bytes.
    pub fn out(&mut self, len: usize) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.out)[..len]
    }
}

/// Computes elements `range` (at most `CHUNK_ELEMENTS`) of `sum(weight * source)` into
/// `scratch`'s output buffer, as `out_dtype`, accumulating in f64 when `wide`. Returns the
/// encoded bytes.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
pub fn average<'s>(
    sources: &[Source<'_>],
    range: std::ops::Range<usize>,
    out_dtype: Dtype,
    wide: bool,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    assert!(
        range.len() <= CHUNK_ELEMENTS,
        "chunks are at most CHUNK_ELEMENTS"
    );
    let size = out_dtype.size();
    let out = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch.out)[..range.len() * size];
    if wide && scratch.acc64.is_empty() {
        scratch.acc64 = vec![0.0; TILE_ELEMENTS];
        scratch.x64 = vec![0.0; TILE_ELEMENTS];
    }
    for (t, tile) in out.chunks_mut(TILE_ELEMENTS * size).enumerate() {
        let start = range.start + t * TILE_ELEMENTS;
        let n = tile.len() / size;
        if wide {
            sum_into(
                sources,
                start..start + n,
                &mut scratch.acc64[..n],
                &mut scratch.x64[..n],
            );
            f64::store(out_dtype, &scratch.acc64[..n], tile);
        } else {
            sum_into(
                sources,
                start..start + n,
                &mut scratch.acc32[..n],
                &mut scratch.x32[..n],
            );
            f32::store(out_dtype, &scratch.acc32[..n], tile);
        }
    }
    out
}

/// One input of the per-row and task-vector kernels: its dtype and all its bytes.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub dtype: Dtype,
    pub data: &'a [u8],
}

/// How elements map to the groups that [`average_rows`] has a combination for.
#[derive(Debug, Clone, Copy)]
pub enum Groups {
    /// Element `e` is in group `e / len`.
    Rows(usize),
    /// Element `e` is in group `e % stride`.
    Columns(usize),
}

impl Groups {
    fn of(self, e: usize) -> usize {
        match self {
            Groups::Rows(len) => e / len,
            Groups::Columns(stride) => e % stride,
        }
    }
}

/// Like [`average`], with a combination per group: element `e` is
/// `sum_i rows[groups.of(e)][i] * inputs[i][e]`.
pub fn average_rows<'s>(
    inputs: &[Input<'_>],
    rows: &[Vec<f64>],
    groups: Groups,
    range: Range<usize>,
    out_dtype: Dtype,
    wide: bool,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    if wide {
        rows_in::<f64>(inputs, rows, groups, range, out_dtype, scratch)
    } else {
        rows_in::<f32>(inputs, rows, groups, range, out_dtype, scratch)
    }
}

fn rows_in<'s, A: Real>(
    inputs: &[Input<'_>],
    rows: &[Vec<f64>],
    groups: Groups,
    range: Range<usize>,
    out_dtype: Dtype,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let size = out_dtype.size();
    let (buf, out) = A::buffers(scratch);
    buf.ready(0);
    let out = &mut bytemuck::cast_slice_mut::<u64, u8>(out)[..range.len() * size];
    for (t, tile) in out.chunks_mut(WORK_TILE * size).enumerate() {
        let start = range.start + t * WORK_TILE;
        let n = tile.len() / size;
        let acc = &mut buf.acc[..n];
        for (i, input) in inputs.iter().enumerate() {
            let x = &mut buf.x[..n];
            load_range(input.dtype, input.data, start..start + n, x);
            for (j, (a, x)) in acc.iter_mut().zip(x.iter()).enumerate() {
                let w = A::from_f64(rows[groups.of(start + j)][i]);
                *a = if i == 0 { w * *x } else { *a + w * *x };
            }
        }
        A::store(out_dtype, acc, tile);
    }
    out
}

/// One model of the task-vector kernel.
pub struct TaskVectorInput<'a> {
    pub input: Input<'a>,
    pub weight: f64,
    /// The surviving elements and their scale; `None` keeps every element unscaled.
    pub trim: Option<&'a Trim>,
}

/// What the task-vector kernel does with the trimmed task vectors (see
/// [`crate::soup::method::TaskVectors`]).
pub struct TaskVectorMix<'a> {
    pub base: Input<'a>,
    pub models: Vec<TaskVectorInput<'a>>,
    pub consensus: bool,
    pub normalize: bool,
    pub lambda: f64,
}

/// Elements `range` of `base + lambda * mix(w_i * trim(x_i - base))`.
pub fn task_vectors<'s>(
    mix: &TaskVectorMix<'_>,
    range: Range<usize>,
    out_dtype: Dtype,
    wide: bool,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    if wide {
        return task_vectors_in::<f64>(mix, range, out_dtype, scratch);
    }
    // Borrowed only when the fast kernel takes the mix (a conditional return of the borrow
    // is rejected by today's borrow checker).
    if lanes::takes(mix, &range) {
        return lanes::task_vectors(mix, range, out_dtype, scratch);
    }
    task_vectors_in::<f32>(mix, range, out_dtype, scratch)
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn task_vectors_in<'s, A: Real>(
    mix: &TaskVectorMix<'_>,
    range: Range<usize>,
    out_dtype: Dtype,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let size = out_dtype.size();
    let k = mix.models.len();
    let (buf, out) = A::buffers(scratch);
    buf.ready(k);
    let out = &mut bytemuck::cast_slice_mut::<u64, u8>(out)[..range.len() * size];
    // Without an election the divisor is one number: the sum of the weights, 1 when it is
    // (nearly) zero, as mergekit has it.
    let total: f64 = mix.models.iter().map(|m| m.weight).sum();
    let divisor = A::from_f64(if total.abs() < 1e-8 { 1.0 } else { total });
    let lambda = A::from_f64(mix.lambda);
    // Tie ordinals of threshold trims run through the chunk, which is one chunk of the tensor.
    let chunk = range.start / CHUNK_ELEMENTS;
    let mut ties: Vec<Option<TieCounts>> = mix
        .models
        .iter()
        .map(|m| match m.trim {
            Some(Trim {
                keep: Keep::Bounds(b),
                ..
            }) => Some(b.start(chunk)),
            _ => None,
        })
        .collect();
    for (t, tile) in out.chunks_mut(WORK_TILE * size).enumerate() {
        let start = range.start + t * WORK_TILE;
        let n = tile.len() / size;
        let Buffers {
            base,
            acc,
            terms,
            sum,
            div,
            keys: keybuf,
            kept: keptbuf,
            ..
        } = &mut *buf;
        let base = &mut base[..n];
        decode(mix.base.dtype, mix.base.data, start..start + n, base);
        for (i, m) in mix.models.iter().enumerate() {
            let w = A::from_f64(m.weight);
            let terms = &mut terms[i * WORK_TILE..i * WORK_TILE + n];
            // The task vector, decoded into its own tile: the base is already decoded once
            // for every model.
            decode(m.input.dtype, m.input.data, start..start + n, terms);
            for (d, b) in terms.iter_mut().zip(base.iter()) {
                *d = *d - *b;
            }
            match m.trim {
                None => {
                    for d in terms.iter_mut() {
                        *d = w * *d;
                    }
                }
                // Multiplied by the mask, as mergekit does (a dropped NaN stays NaN).
                Some(Trim {
                    keep: Keep::Bits(keep),
                    scale,
                }) => {
                    // Tiles start on a word of the mask.
                    let words = &keep[start / 64..];
                    masked_terms(terms, words, w, A::from_f64(*scale));
                }
                Some(Trim {
                    keep: Keep::Drawn(stream, cutoff),
                    scale,
                }) => {
                    let scale = A::from_f64(*scale);
                    draws::runs(*stream, start as u64, n, |at, len, run| {
                        let d = &mut terms[at..at + len];
                        match *cutoff {
                            Cutoff::Below(c) => drawn_terms(d, run, w, scale, |h| h < c),
                            Cutoff::None => drawn_terms(d, run, w, scale, |_| false),
                            Cutoff::All => drawn_terms(d, run, w, scale, |_| true),
                        }
                    });
                }
                Some(Trim {
                    keep: Keep::Bounds(bounds),
                    scale,
                }) => {
                    let scale = A::from_f64(*scale);
                    let keys = &mut keybuf[..n];
                    for (k, d) in keys.iter_mut().zip(terms.iter()) {
                        *k = d.magnitude();
                    }
                    let kept = &mut keptbuf[..n];
                    let ties = ties[i].as_mut().expect("made for every threshold trim");
                    bounds.decide::<A>(keys, ties, kept);
                    for (d, k) in terms.iter_mut().zip(kept.iter()) {
                        *d = w * (*d * *k * scale);
                    }
                }
            }
        }
        let term = |i: usize| &terms[i * WORK_TILE..i * WORK_TILE + n];
        // The plain sum of the terms in model order; an election reads it from `sum` and
        // writes its own mix to `acc`.
        let total = if mix.consensus {
            &mut sum[..n]
        } else {
            &mut acc[..n]
        };
        if k == 1 {
            total.copy_from_slice(term(0));
        } else {
            for ((t, a), b) in total.iter_mut().zip(term(0)).zip(term(1)) {
                *t = *a + *b;
            }
            for i in 2..k {
                for (t, d) in total.iter_mut().zip(term(i)) {
                    *t = *t + *d;
                }
            }
        }
        let mixed = &mut acc[..n];
        if mix.consensus {
            // TIES' election: the sign of the summed terms (>= 0 is positive); only terms of that
            // sign count, and only their weights divide. Each sum starts from +0, as a zeroed
            // accumulator would (so a lone -0 term gives +0). A losing term adds itself times
            // 0, as mergekit's `delta * mask` does: nothing for a number, NaN for a NaN or an
            // infinity, which the soup then holds, as the non-finite warning says.
            let sum = &sum[..n];
            let weights = &mut div[..n];
            for (i, model) in mix.models.iter().enumerate() {
                let w = A::from_f64(model.weight);
                let agreeing = |s: A, d: A| {
                    let agree = if s >= A::ZERO {
                        d > A::ZERO
                    } else {
                        d < A::ZERO
                    };
                    if agree {
                        (d, w)
                    } else {
                        (d * A::ZERO, A::ZERO)
                    }
                };
                let lanes = mixed
                    .iter_mut()
                    .zip(weights.iter_mut())
                    .zip(sum.iter().zip(term(i)));
                if i == 0 {
                    for ((m, v), (s, d)) in lanes {
                        let (dm, dv) = agreeing(*s, *d);
                        *m = A::ZERO + dm;
                        *v = A::ZERO + dv;
                    }
                } else {
                    for ((m, v), (s, d)) in lanes {
                        let (dm, dv) = agreeing(*s, *d);
                        *m = *m + dm;
                        *v = *v + dv;
                    }
                }
            }
            if mix.normalize {
                for (m, v) in mixed.iter_mut().zip(weights.iter()) {
                    *m = *m / if *v == A::ZERO { A::ONE } else { *v };
                }
            }
        } else if mix.normalize {
            for m in mixed.iter_mut() {
                *m = *m / divisor;
            }
        }
        for (m, b) in mixed.iter_mut().zip(base.iter()) {
            *m = *b + *m * lambda;
        }
        if mix.consensus {
            // One NaN, whatever NaNs met there: the bits of a sum of two NaNs are the operand's
            // the instruction takes first, an order each kernel's compiled code picks for
            // itself.
            for m in mixed.iter_mut() {
                if m.is_nan() {
                    *m = A::NAN;
                }
            }
        }
        A::store(out_dtype, mixed, tile);
    }
    out
}

/// `d = w * (d * kept * scale)` for a task vector `d` of one run of a stream, `kept` 1 where
/// `keeps` says so of the element's draw: [`masked_terms`]'s operations, with each draw made and
/// compared where it is used, instead of packed into a mask word (or stored in a tile of
/// draws) and read back.
#[inline(always)]
fn drawn_terms<A: Real>(d: &mut [A], run: draws::Run, w: A, scale: A, keeps: impl Fn(u32) -> bool) {
    for (j, d) in d.iter_mut().enumerate() {
        let kept = if keeps(run.draw(j)) { A::ONE } else { A::ZERO };
        *d = w * (*d * kept * scale);
    }
}

/// `d = w * (d * kept * scale)` for a task vector `d`, with `kept` bit `j % 64` of
/// `words[j / 64]` as 0 or 1. Whole words in fixed-size groups, so the loop vectorises with no
/// bounds checks.
#[inline(always)]
fn masked_terms<A: Real>(d: &mut [A], words: &[u64], w: A, scale: A) {
    let full = d.len() / 64 * 64;
    let (dh, dt) = d.split_at_mut(full);
    for (d, &word) in dh.chunks_exact_mut(64).zip(words) {
        // In halves of 32, the lanes of one shift by a vector of counts.
        for (h, d) in d.chunks_exact_mut(32).enumerate() {
            let bits = (word >> (32 * h)) as u32;
            for (l, d) in d.iter_mut().enumerate() {
                *d = w * (*d * kept::<A>(bits, l as u32) * scale);
            }
        }
    }
    if !dt.is_empty() {
        let word = words[full / 64];
        for (j, d) in dt.iter_mut().enumerate() {
            let bits = (word >> (32 * (j / 32))) as u32;
            *d = w * (*d * kept::<A>(bits, (j % 32) as u32) * scale);
        }
    }
}

// Always inlined, like `f32::store`, so that both are compiled into the AVX2 clone of
// `average`: called, they ran at baseline SSE2 width, and the whole linear merge with them.
#[inline(always)]
fn sum_into<A: Accumulator>(
    sources: &[Source<'_>],
    range: std::ops::Range<usize>,
    acc: &mut [A],
    x: &mut [A],
) {
    for (k, source) in sources.iter().enumerate() {
        let size = source.dtype.size();
        let bytes = &source.data[range.start * size..range.end * size];
        let w = A::from_f64(source.weight);
        // bf16 is the top half of an f32, so it is decoded inside the loop, with no buffer.
        if source.dtype == Dtype::BF16 {
            if let Ok(bits) = bytemuck::try_cast_slice::<u8, u16>(bytes) {
                if k == 0 {
                    A::scale_bf16(acc, w, bits);
                } else {
                    A::axpy_bf16(acc, w, bits);
                }
                continue;
            }
        }
        let aligned = if source.dtype == A::DTYPE {
            bytemuck::try_cast_slice::<u8, A>(bytes).ok()
        } else {
            None
        };
        let xs: &[A] = match aligned {
            Some(xs) => xs,
            None => {
                A::load(source.dtype, bytes, x);
                x
            }
        };
        if k == 0 {
            A::scale(acc, w, xs);
        } else {
            A::axpy(acc, w, xs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    fn bytes<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
        bytemuck::cast_slice(v).to_vec()
    }

    #[test]
    fn bf16_inputs_accumulate_in_f32() {
        // 1 + 2^-9 is not a bf16; summing in bf16 would round each partial sum to 1.0.
        let one = bytes(&[bf16::ONE; 4]);
        let tiny = bytes(&[bf16::from_f32(2f32.powi(-8)); 4]);
        let sources = [
            Source {
                dtype: Dtype::BF16,
                data: &one,
                weight: 1.0,
            },
            Source {
                dtype: Dtype::BF16,
                data: &tiny,
                weight: 0.5,
            },
            Source {
                dtype: Dtype::BF16,
                data: &tiny,
                weight: 0.5,
            },
        ];
        let mut s = Scratch::default();
        let out = average(&sources, 0..4, Dtype::F32, false, &mut s);
        let got: &[f32] = bytemuck::cast_slice(out);
        assert_eq!(got, &[1.0 + 2f32.powi(-8); 4]);
    }

    #[test]
    fn the_fused_bf16_path_agrees_with_decoding_first() {
        // Misaligning one input forces it through the decode-then-add path.
        let n = TILE_ELEMENTS + 777;
        let values: Vec<bf16> = (0..n)
            .map(|i| bf16::from_f32((i as f32 * 0.37).sin() * 3.0))
            .collect();
        let special = [
            bf16::NAN,
            bf16::INFINITY,
            bf16::NEG_INFINITY,
            bf16::from_bits(1),
            bf16::NEG_ZERO,
        ];
        let mut values = values;
        values[..special.len()].copy_from_slice(&special);
        let aligned = bytes(&values);
        let mut shifted = vec![0u8; aligned.len() + 1];
        shifted[1..].copy_from_slice(&aligned);
        for wide in [false, true] {
            let mut s = Scratch::default();
            let fused = average(
                &[Source {
                    dtype: Dtype::BF16,
                    data: &aligned,
                    weight: 0.3,
                }],
                0..n,
                Dtype::F32,
                wide,
                &mut s,
            )
            .to_vec();
            let decoded = average(
                &[Source {
                    dtype: Dtype::BF16,
                    data: &shifted[1..],
                    weight: 0.3,
                }],
                0..n,
                Dtype::F32,
                wide,
                &mut s,
            )
            .to_vec();
            assert_eq!(fused, decoded, "wide = {wide}");
        }
    }

    #[test]
    fn mixed_dtypes_and_wide_accumulation() {
        let a = bytes(&[1.0f64, 2.0, 3.0]);
        let b = bytes(&[bf16::from_f32(3.0); 3]);
        let sources = [
            Source {
                dtype: Dtype::F64,
                data: &a,
                weight: 0.25,
            },
            Source {
                dtype: Dtype::BF16,
                data: &b,
                weight: 0.75,
            },
        ];
        let mut s = Scratch::default();
        let got: Vec<f64> =
            bytemuck::cast_slice(average(&sources, 1..3, Dtype::F64, true, &mut s)).to_vec();
        assert_eq!(got, vec![0.5 + 2.25, 0.75 + 2.25]);
    }
}
