//! Safetensors element types, and the conversions between float tensors' bytes and accumulators.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

#[cfg(target_endian = "big")]
compile_error!("safetensors data is little-endian; model-soup supports little-endian hosts only");

/// An element type, spelled in files as safetensors spells it ("BF16", "I64", ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
    C64,
}

impl Dtype {
    const ALL: [Dtype; 17] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
        Dtype::C64,
    ];

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
            Dtype::C64 => "C64",
        }
    }

    /// Parses a header's dtype name; `None` for names this tool doesn't know (F4, F6_*, ...).
    pub fn parse(name: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 | Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 => {
                1
            }
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 | Dtype::C64 => 8,
        }
    }

    /// Whether soups average this type. Integers, bools, 8-bit floats and complex numbers are
    /// copied instead: averaging a step counter or a quantised code is never what the user meant.
    pub fn is_averaged(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
    }

    /// The float dtype that holds both `self` and `other` (two float dtypes) exactly, as
    /// torch's `promote_types` has it: the wider, and f32 for bf16 with f16.
    pub fn promoted(self, other: Dtype) -> Dtype {
        match (self, other) {
            (a, b) if a == b => a,
            (Dtype::F64, _) | (_, Dtype::F64) => Dtype::F64,
            _ => Dtype::F32,
        }
    }

    /// `bytes`, elements of this type, as integers, if it is an integer type or bool: labels
    /// and token ids as numpy and torch save them (int64 by default, int32 from many
    /// tokenisers and `np.int32`, uint8 or bool for masks). A u64 above `i64::MAX` saturates,
    /// out of range for every use of these values.
    pub fn integers(self, bytes: &[u8]) -> Option<Vec<i64>> {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> i64) -> Vec<i64> {
            bytes
                .chunks_exact(N)
                .map(|b| f(b.try_into().expect("chunks of N")))
                .collect()
        }
        Some(match self {
            Dtype::Bool | Dtype::U8 => each(bytes, |[b]: [u8; 1]| i64::from(b)),
            Dtype::I8 => each(bytes, |b| i64::from(i8::from_le_bytes(b))),
            Dtype::I16 => each(bytes, |b| i64::from(i16::from_le_bytes(b))),
            Dtype::U16 => each(bytes, |b| i64::from(u16::from_le_bytes(b))),
            Dtype::I32 => each(bytes, |b| i64::from(i32::from_le_bytes(b))),
            Dtype::U32 => each(bytes, |b| i64::from(u32::from_le_bytes(b))),
            Dtype::I64 => each(bytes, i64::from_le_bytes),
            Dtype::U64 => each(bytes, |b| {
                i64::try_from(u64::from_le_bytes(b)).unwrap_or(i64::MAX)
            }),
            _ => return None,
        })
    }

    /// Whether `bytes`, elements of this float type, hold a NaN or an infinity: a test of the
    /// exponent bits, cheap enough to run on every chunk the kernel writes.
    pub fn any_non_finite(self, bytes: &[u8]) -> bool {
        match self {
            Dtype::F16 => any_exponent_all_ones::<u16>(bytes, 0x7C00),
            Dtype::BF16 => any_exponent_all_ones::<u16>(bytes, 0x7F80),
            Dtype::F32 => any_exponent_all_ones::<u32>(bytes, 0x7F80_0000),
            Dtype::F64 => any_exponent_all_ones::<u64>(bytes, 0x7FF0_0000_0000_0000),
            _ => false,
        }
    }
}

/// Whether any element has every exponent bit set. A branch-free OR over the slice, so it
/// vectorises (at AVX2's width where the CPU has it: whole-tensor methods scan every input
/// chunk, and at SSE2's the scan was 6% of a Model Stock merge); unaligned bytes go through a
/// copy.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx512dq+avx2",
    "x86_64+avx2",
    "x86_64+sse4.1"
))]
fn any_exponent_all_ones<T>(bytes: &[u8], mask: T) -> bool
where
    T: bytemuck::Pod + std::ops::BitAnd<Output = T> + PartialEq,
{
    let mut scratch = Vec::new();
    view::<T>(bytes, &mut scratch)
        .iter()
        .fold(0u8, |any, &x| any | u8::from(x & mask == mask))
        != 0
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A float type that sums are accumulated in: f32 for 16-bit outputs, f64 otherwise.
///
/// One implementation per accumulator, one `match` on the stored dtype per chunk, so the inner
/// loops are monomorphic and vectorise.
pub trait Accumulator:
    Copy
    + Default
    + Send
    + Sync
    + bytemuck::Pod
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// The stored dtype that is this type, whose aligned bytes the kernel reads in place.
    const DTYPE: Dtype;

    /// The weight as this type. Weights are kept as f64 and narrowed once per tensor.
    fn from_f64(w: f64) -> Self;

    /// Decodes `bytes` (little-endian, `dtype`) into `out`, whose length is the element count.
    fn load(dtype: Dtype, bytes: &[u8], out: &mut [Self]);

    /// Encodes `acc` as `dtype` into `bytes`, rounding to nearest even.
    fn store(dtype: Dtype, acc: &[Self], bytes: &mut [u8]);

    /// `acc[i] += w * x[i]`, the kernel's inner loop.
    fn axpy(acc: &mut [Self], w: Self, x: &[Self]);

    /// `acc[i] = w * x[i]`, the first term: no zeroing pass.
    fn scale(acc: &mut [Self], w: Self, x: &[Self]);

    /// An f32 as this type, exactly.
    fn from_f32(x: f32) -> Self;

    /// `axpy` straight from bf16 bits, which are the top half of an f32: exact for every value,
    /// NaN and infinities included, and vectorisable, with no decoded copy.
    fn axpy_bf16(acc: &mut [Self], w: Self, bits: &[u16]) {
        for (a, b) in acc.iter_mut().zip(bits) {
            *a = *a + w * Self::from_f32(f32::from_bits((*b as u32) << 16));
        }
    }

    /// `scale` straight from bf16 bits.
    fn scale_bf16(acc: &mut [Self], w: Self, bits: &[u16]) {
        for (a, b) in acc.iter_mut().zip(bits) {
            *a = w * Self::from_f32(f32::from_bits((*b as u32) << 16));
        }
    }
}

/// Reinterprets `bytes` as `T` when aligned; otherwise decodes through a copy into `scratch`.
fn view<'a, T: bytemuck::Pod>(bytes: &'a [u8], scratch: &'a mut Vec<T>) -> &'a [T] {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => s,
        Err(_) => {
            // Files whose header length isn't a multiple of 8 put the data at odd addresses.
            scratch.clear();
            scratch.resize(bytes.len() / std::mem::size_of::<T>(), T::zeroed());
            bytemuck::cast_slice_mut::<T, u8>(scratch).copy_from_slice(bytes);
            scratch
        }
    }
}

fn view_mut<T: bytemuck::Pod>(bytes: &mut [u8]) -> &mut [T] {
    // The executors hand out buffers from Vec<u64>, so this cast only fails on a logic error.
    bytemuck::cast_slice_mut(bytes)
}

impl Accumulator for f32 {
    const DTYPE: Dtype = Dtype::F32;

    fn from_f32(x: f32) -> Self {
        x
    }

    fn from_f64(w: f64) -> Self {
        w as f32
    }

    fn load(dtype: Dtype, bytes: &[u8], out: &mut [f32]) {
        match dtype {
            Dtype::F32 => out.copy_from_slice(view::<f32>(bytes, &mut Vec::new())),
            Dtype::F16 => view::<f16>(bytes, &mut Vec::new()).convert_to_f32_slice(out),
            Dtype::BF16 => view::<bf16>(bytes, &mut Vec::new()).convert_to_f32_slice(out),
            Dtype::F64 => {
                let mut s = Vec::new();
                for (o, x) in out.iter_mut().zip(view::<f64>(bytes, &mut s)) {
                    *o = *x as f32;
                }
            }
            other => unreachable!("the plan only averages float tensors, not {other}"),
        }
    }

    // Inlined into the multiversioned kernels, which round their sums here at their width.
    #[inline(always)]
    fn store(dtype: Dtype, acc: &[f32], bytes: &mut [u8]) {
        match dtype {
            Dtype::F32 => view_mut::<f32>(bytes).copy_from_slice(acc),
            Dtype::F16 => view_mut::<f16>(bytes).convert_from_f32_slice(acc),
            Dtype::BF16 => view_mut::<bf16>(bytes).convert_from_f32_slice(acc),
            Dtype::F64 => {
                for (o, x) in view_mut::<f64>(bytes).iter_mut().zip(acc) {
                    *o = *x as f64;
                }
            }
            other => unreachable!("the plan only averages float tensors, not {other}"),
        }
    }

    fn axpy(acc: &mut [f32], w: f32, x: &[f32]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a += w * *x;
        }
    }

    fn scale(acc: &mut [f32], w: f32, x: &[f32]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a = w * *x;
        }
    }
}

/// f64 → f32 rounding to odd: truncate, then set the last bit if anything was cut off. A
/// second rounding to any format with at least two fewer significant bits (f16, bf16) is then
/// correctly rounded, as if done directly from f64.
fn f32_round_to_odd(x: f64) -> f32 {
    let t = x as f32;
    if t as f64 == x || x.is_nan() {
        return t;
    }
    let toward_zero = if (t as f64).abs() > x.abs() {
        f32::from_bits(t.to_bits() - 1)
    } else {
        t
    };
    f32::from_bits(toward_zero.to_bits() | 1)
}

/// f64 sums to 16-bit floats, rounded once. `half`'s own f64 conversion goes through f32 with
/// round-to-nearest on CPUs with F16C, which rounds twice.
fn store_narrow<T>(acc: &[f64], out: &mut [T])
where
    [T]: HalfFloatSliceExt,
{
    const BLOCK: usize = 256;
    let mut odd = [0f32; BLOCK];
    for (a, o) in acc.chunks(BLOCK).zip(out.chunks_mut(BLOCK)) {
        for (d, x) in odd.iter_mut().zip(a) {
            *d = f32_round_to_odd(*x);
        }
        o.convert_from_f32_slice(&odd[..a.len()]);
    }
}

impl Accumulator for f64 {
    const DTYPE: Dtype = Dtype::F64;

    fn from_f32(x: f32) -> Self {
        x as f64
    }

    fn from_f64(w: f64) -> Self {
        w
    }

    fn load(dtype: Dtype, bytes: &[u8], out: &mut [f64]) {
        match dtype {
            Dtype::F64 => out.copy_from_slice(view::<f64>(bytes, &mut Vec::new())),
            Dtype::F32 => {
                for (o, x) in out.iter_mut().zip(view::<f32>(bytes, &mut Vec::new())) {
                    *o = *x as f64;
                }
            }
            Dtype::F16 => view::<f16>(bytes, &mut Vec::new()).convert_to_f64_slice(out),
            Dtype::BF16 => view::<bf16>(bytes, &mut Vec::new()).convert_to_f64_slice(out),
            other => unreachable!("the plan only averages float tensors, not {other}"),
        }
    }

    fn store(dtype: Dtype, acc: &[f64], bytes: &mut [u8]) {
        match dtype {
            Dtype::F64 => view_mut::<f64>(bytes).copy_from_slice(acc),
            Dtype::F32 => {
                for (o, x) in view_mut::<f32>(bytes).iter_mut().zip(acc) {
                    *o = *x as f32;
                }
            }
            Dtype::F16 => store_narrow(acc, view_mut::<f16>(bytes)),
            Dtype::BF16 => store_narrow(acc, view_mut::<bf16>(bytes)),
            other => unreachable!("the plan only averages float tensors, not {other}"),
        }
    }

    fn axpy(acc: &mut [f64], w: f64, x: &[f64]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a += w * *x;
        }
    }

    fn scale(acc: &mut [f64], w: f64, x: &[f64]) {
        for (a, x) in acc.iter_mut().zip(x) {
            *a = w * *x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::parse(d.name()), Some(d));
        }
        assert_eq!(Dtype::parse("F4"), None);
        assert_eq!(Dtype::parse("bf16"), None);
    }

    #[test]
    fn integers_decode_from_every_integer_type_and_bool() {
        let cases: [(Dtype, Vec<u8>, Vec<i64>); 9] = [
            (Dtype::Bool, vec![0, 1], vec![0, 1]),
            (Dtype::U8, vec![7, 255], vec![7, 255]),
            (Dtype::I8, vec![7, 0xff], vec![7, -1]),
            (
                Dtype::I16,
                [300i16, -2].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![300, -2],
            ),
            (
                Dtype::U16,
                [65535u16].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![65535],
            ),
            (
                Dtype::I32,
                [-5i32, 1 << 30]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
                vec![-5, 1 << 30],
            ),
            (
                Dtype::U32,
                [u32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![i64::from(u32::MAX)],
            ),
            (
                Dtype::I64,
                [i64::MIN, 3].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![i64::MIN, 3],
            ),
            (
                Dtype::U64,
                [u64::MAX, 4].iter().flat_map(|v| v.to_le_bytes()).collect(),
                vec![i64::MAX, 4],
            ),
        ];
        for (dtype, bytes, want) in cases {
            assert_eq!(dtype.integers(&bytes), Some(want), "{dtype}");
        }
        for dtype in [Dtype::F32, Dtype::BF16, Dtype::F8E4M3, Dtype::C64] {
            assert_eq!(dtype.integers(&[0; 8]), None, "{dtype}");
        }
    }

    #[test]
    fn misaligned_bytes_decode_like_aligned_ones() {
        let values = [1.5f32, -2.25, 3.0e-3];
        let mut buf = [0u8; 13];
        buf[1..].copy_from_slice(bytemuck::cast_slice(&values));
        let mut out = [0f32; 3];
        f32::load(Dtype::F32, &buf[1..], &mut out);
        assert_eq!(out, values);
    }

    #[test]
    fn non_finite_scan_sees_every_float_kind() {
        let f16s = [half::f16::ONE, half::f16::INFINITY];
        assert!(Dtype::F16.any_non_finite(bytemuck::cast_slice(&f16s)));
        assert!(!Dtype::F16.any_non_finite(bytemuck::cast_slice(&f16s[..1])));
        let bf = [half::bf16::NAN];
        assert!(Dtype::BF16.any_non_finite(bytemuck::cast_slice(&bf)));
        assert!(Dtype::F32.any_non_finite(bytemuck::cast_slice(&[1f32, f32::NEG_INFINITY])));
        assert!(!Dtype::F32.any_non_finite(bytemuck::cast_slice(&[f32::MAX, -0.0])));
        assert!(Dtype::F64.any_non_finite(bytemuck::cast_slice(&[f64::NAN])));
        assert!(!Dtype::I64.any_non_finite(&[0xFF; 8]));
    }

    #[test]
    fn f64_to_16_bit_rounds_once() {
        // 1 + 2^-11 + 2^-40 is just above a tie in f16; via f32 it would round to the tie and
        // then to even (1.0). Rounded once it is the next f16 up.
        let x = 1.0 + 2f64.powi(-11) + 2f64.powi(-40);
        let mut out = [f16::ZERO; 2];
        store_narrow(&[x, -x], &mut out);
        assert_eq!(out, [f16::from_bits(0x3C01), f16::from_bits(0xBC01)]);
        // The same for bf16, just above the tie between 1 and 1 + 2^-7.
        let y = 1.0 + 2f64.powi(-8) + 2f64.powi(-40);
        let mut out = [bf16::ZERO; 1];
        store_narrow(&[y], &mut out);
        assert_eq!(out[0], bf16::from_bits(0x3F81));
        // Exact ties still go to even, and the edges keep their meaning.
        let mut out = [f16::ZERO; 5];
        store_narrow(
            &[1.0 + 2f64.powi(-11), 65520.0, 65519.99, f64::NAN, 1e-300],
            &mut out,
        );
        assert_eq!(out[0], f16::ONE);
        assert!(out[1].is_infinite());
        assert_eq!(out[2], f16::MAX);
        assert!(out[3].is_nan());
        assert_eq!(out[4], f16::ZERO);
    }
}
