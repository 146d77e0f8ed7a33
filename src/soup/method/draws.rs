//! The random numbers behind DARE's and DELLA's drops: a counter-based stream, so element
//! `e`'s number is a function of the seed, the tensor's name, the model and `e` alone, never of
//! the thread that draws it or the order tensors are processed in.
//!
//! Definition (also in README.md and in the test reference, tests/reference/methods_ref.py):
//!
//! - the model's key is `mix(mix(seed ^ fnv1a64(name)) ^ (model + 1))`, with `mix` SplitMix64's
//!   finaliser and FNV-1a over the name's UTF-8 bytes;
//! - element `e` lies in block `b = e >> 32` at offset `j = e mod 2^32`; the block's two 32-bit
//!   keys are the low and high halves of `mix(key + (b + 1) * GOLDEN)`;
//! - its number is `h = H(H(j ^ k0) + k1)` (32-bit wrapping), with `H` the two-multiply
//!   integer hash "lowbias32", and `u = h / 2^32`; the element is kept when `u < p`.
//!
//! `H` works on 32-bit lanes, so a block of draws vectorises (eight lanes with AVX2, chosen at
//! run time; SSE4.1 and plain x86-64 otherwise), where a 64-bit hash per element could not; the
//! bytes are the same whichever instructions ran.

use multiversion::multiversion;

use crate::soup::kernel::pack_flags;

/// SplitMix64's finaliser: a bijection of u64 that mixes every bit into every other.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The key of model `model`'s random stream in tensor `tensor`.
pub fn random_stream(seed: u64, tensor: &str, model: usize) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in tensor.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(mix(seed ^ h) ^ (model as u64 + 1))
}

/// lowbias32 (Chris Wellons' hash prospector): a bijection of u32 with low avalanche bias.
#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The two 32-bit keys of block `block` (elements `block << 32 ..`) of stream `key`.
fn block_keys(key: u64, block: u64) -> (u32, u32) {
    let z = mix(key.wrapping_add(block.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z as u32, (z >> 32) as u32)
}

#[inline(always)]
fn hash(j: u32, (k0, k1): (u32, u32)) -> u32 {
    lowbias32(lowbias32(j ^ k0).wrapping_add(k1))
}

/// Element `e`'s number of stream `key`, as an integer over 2^32.
pub fn draw(key: u64, e: u64) -> u32 {
    hash(e as u32, block_keys(key, e >> 32))
}

/// Element `e`'s uniform number in [0, 1) of stream `key`.
pub fn uniform(key: u64, e: u64) -> f64 {
    draw(key, e) as f64 * (1.0 / (1u64 << 32) as f64)
}

/// `u < p` as a comparison of the integer draw: `h / 2^32 < p` is `h < ceil(p * 2^32)`
/// (exact: the product is a power-of-two scaling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// `p <= 0`: nothing is kept.
    None,
    /// Kept when the draw is below this.
    Below(u32),
    /// `p >= 1 - 2^-32` or so: every draw is below it.
    All,
}

impl Cutoff {
    pub fn of(p: f64) -> Cutoff {
        let c = (p * (1u64 << 32) as f64).ceil();
        if c.is_nan() || c <= 0.0 {
            Cutoff::None
        } else if c >= (1u64 << 32) as f64 {
            Cutoff::All
        } else {
            Cutoff::Below(c as u32)
        }
    }

    /// The cutoff as one number: a draw is kept when it is below it (as a u64).
    pub fn bound(self) -> u64 {
        match self {
            Cutoff::None => 0,
            Cutoff::Below(c) => c as u64,
            Cutoff::All => 1 << 32,
        }
    }

    /// Whether draw `h` is kept.
    #[inline(always)]
    pub fn keeps(self, h: u32) -> bool {
        match self {
            Cutoff::None => false,
            Cutoff::Below(c) => h < c,
            Cutoff::All => true,
        }
    }
}

/// Calls `f` with runs of consecutive elements `start..end` that share a block, and their keys.
fn by_block(key: u64, start: u64, end: u64, mut f: impl FnMut(u64, u64, (u32, u32))) {
    let mut s = start;
    while s < end {
        let block = s >> 32;
        let e = end.min((block + 1) << 32);
        f(s, e, block_keys(key, block));
        s = e;
    }
}

/// Splits elements `start..start + len` of stream `key` into runs that share a block, and
/// calls `f` with each run's offset into the range, length and [`Run`]: a kernel then draws
/// its numbers where it uses them, with no buffer between.
pub fn runs(key: u64, start: u64, len: usize, mut f: impl FnMut(usize, usize, Run)) {
    by_block(key, start, start + len as u64, |s, e, keys| {
        f(
            (s - start) as usize,
            (e - s) as usize,
            Run {
                first: s as u32,
                keys,
            },
        )
    });
}

/// Consecutive elements of one block of a stream; see [`runs`].
#[derive(Clone, Copy)]
pub struct Run {
    first: u32,
    keys: (u32, u32),
}

impl Run {
    /// The number of the run's element `j`, which [`fill`] would have drawn.
    #[inline(always)]
    pub fn draw(self, j: usize) -> u32 {
        hash(self.first.wrapping_add(j as u32), self.keys)
    }
}

/// The draws of elements `start..start + out.len()` of stream `key`.
pub fn fill(key: u64, start: u64, out: &mut [u32]) {
    let mut o = 0;
    by_block(key, start, start + out.len() as u64, |s, e, keys| {
        let n = (e - s) as usize;
        fill_block(s as u32, keys, &mut out[o..o + n]);
        o += n;
    });
}

#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn fill_block(first: u32, keys: (u32, u32), out: &mut [u32]) {
    for (j, h) in out.iter_mut().enumerate() {
        *h = hash(first.wrapping_add(j as u32), keys);
    }
}

/// Sets bit `i % 64` of `words[i / 64]` when element `start + i` of stream `key` is kept under
/// `cutoff`, for `i` in `0..len` (bits past `len` are zero). `words` holds `len.div_ceil(64)`.
pub fn keep_bits(key: u64, start: u64, len: usize, cutoff: Cutoff, words: &mut [u64]) {
    let words = &mut words[..len.div_ceil(64)];
    match cutoff {
        Cutoff::None => words.fill(0),
        Cutoff::All => {
            words.fill(!0);
            if !len.is_multiple_of(64) {
                *words.last_mut().expect("len > 0") = (1u64 << (len % 64)) - 1;
            }
        }
        Cutoff::Below(below) => {
            for (w, word) in words.iter_mut().enumerate() {
                let s = start + w as u64 * 64;
                let e = (s + 64).min(start + len as u64);
                let mut x = 0u64;
                by_block(key, s, e, |bs, be, keys| {
                    let shift = (bs - s) as u32;
                    x |= word_below(bs as u32, (be - bs) as usize, keys, below) << shift;
                });
                *word = x;
            }
        }
    }
}

/// The kept bits of `len <= 64` consecutive elements from offset `first` of a block.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn word_below(first: u32, len: usize, keys: (u32, u32), below: u32) -> u64 {
    if len == 64 {
        let mut flags = [0u8; 64];
        for (j, f) in flags.iter_mut().enumerate() {
            *f = (hash(first.wrapping_add(j as u32), keys) < below) as u8;
        }
        return pack_flags(&flags);
    }
    let mut x = 0u64;
    for j in 0..len {
        x |= ((hash(first.wrapping_add(j as u32), keys) < below) as u64) << j;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bit(words: &[u64], i: usize) -> bool {
        words[i / 64] >> (i % 64) & 1 == 1
    }

    #[test]
    fn bits_fill_runs_and_uniform_agree_across_block_boundaries() {
        let key = random_stream(3, "model.layers.0.mlp.up_proj.weight", 1);
        // Elements around 2^32, where the block keys change, and an unaligned start.
        for start in [0u64, 5, (1 << 32) - 100] {
            let len: usize = 300;
            for p in [0.0, 1e-9, 0.3, 0.5, 0.999, 1.0] {
                let cutoff = Cutoff::of(p);
                let mut words = vec![0u64; len.div_ceil(64)];
                keep_bits(key, start, len, cutoff, &mut words);
                let mut drawn = vec![0u32; len];
                fill(key, start, &mut drawn);
                let mut ran = vec![None; len];
                runs(key, start, len, |at, n, run| {
                    for j in 0..n {
                        ran[at + j] = Some(run.draw(j));
                    }
                });
                assert_eq!(ran, drawn.iter().map(|&h| Some(h)).collect::<Vec<_>>());
                for (i, &h) in drawn.iter().enumerate() {
                    let e = start + i as u64;
                    assert_eq!(h, draw(key, e));
                    assert_eq!(bit(&words, i), uniform(key, e) < p, "p {p} e {e}");
                    assert_eq!(cutoff.keeps(h), uniform(key, e) < p);
                }
                assert_eq!(words.last().unwrap() >> (len % 64), 0, "bits past len");
            }
        }
        assert_ne!(
            draw(key, 7),
            draw(key, 7 + (1 << 32)),
            "blocks have their own keys"
        );
    }

    #[test]
    fn the_stream_is_the_documented_one() {
        // Printed by tests/reference/methods_ref.py's `uniforms` (times 2^32), which follows
        // the definition in README.md independently of this code.
        let key = random_stream(3, "model.layers.0.mlp.up_proj.weight", 1);
        let drawn: Vec<u32> = (0..5).map(|e| draw(key, e)).collect();
        assert_eq!(
            drawn,
            [2111416165, 387228136, 1004686848, 1917544687, 455606869]
        );
    }

    #[test]
    fn the_cutoff_is_the_float_comparison_at_its_edges() {
        for h in [0u32, 1, 2, 1 << 31, u32::MAX - 1, u32::MAX] {
            let u = h as f64 / (1u64 << 32) as f64;
            for p in [0.0, u, u + 1e-12, u - 1e-12, 1.0, 1.5, -0.5, f64::NAN] {
                assert_eq!(Cutoff::of(p).keeps(h), u < p, "h {h} p {p}");
            }
        }
    }

    #[test]
    fn streams_are_uniform_and_independent() {
        // One million draws per stream: the kept fraction within 5 sigma of p, and neither the
        // next element of the same stream nor the same element of another model's stream
        // predicts a draw (correlation of the kept flags within 5 sigma of 0).
        let n = 1 << 20;
        let a = random_stream(0, "w", 0);
        let b = random_stream(0, "w", 1);
        let (mut da, mut db) = (vec![0u32; n], vec![0u32; n]);
        fill(a, 0, &mut da);
        fill(b, 0, &mut db);
        for p in [0.1, 0.5, 0.9] {
            let c = Cutoff::of(p);
            let fa: Vec<f64> = da.iter().map(|&h| c.keeps(h) as u8 as f64).collect();
            let fb: Vec<f64> = db.iter().map(|&h| c.keeps(h) as u8 as f64).collect();
            let mean = fa.iter().sum::<f64>() / n as f64;
            let sigma = (p * (1.0 - p) / n as f64).sqrt();
            assert!((mean - p).abs() < 5.0 * sigma, "p {p}: kept {mean}");
            let corr = |x: &[f64], y: &[f64]| {
                let m = x.len() as f64;
                let (mx, my) = (x.iter().sum::<f64>() / m, y.iter().sum::<f64>() / m);
                let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
                let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
                let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
                cov / (vx * vy).sqrt()
            };
            let bound = 5.0 / (n as f64).sqrt();
            assert!(corr(&fa, &fb).abs() < bound, "models correlate at p {p}");
            assert!(
                corr(&fa[1..], &fa[..n - 1]).abs() < bound,
                "neighbours correlate"
            );
        }
    }

    #[test]
    fn streams_differ_by_seed_name_and_model() {
        let s = random_stream(1, "a.weight", 0);
        assert_ne!(s, random_stream(2, "a.weight", 0));
        assert_ne!(s, random_stream(1, "b.weight", 0));
        assert_ne!(s, random_stream(1, "a.weight", 1));
        let us: Vec<f64> = (0..1000).map(|i| uniform(s, i)).collect();
        assert!(us.iter().all(|u| (0.0..1.0).contains(u)));
    }
}
