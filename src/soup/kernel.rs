//! The one weighted-sum kernel: a fixed-size chunk of one output tensor from its weighted inputs.
//!
//! Each output element depends only on the same element of the inputs, summed in input order,
//! so results don't depend on how chunks are spread over threads.

use crate::format::{Accumulator, Dtype};

/// Elements per chunk: big enough to amortise the per-chunk work, small enough that the
/// accumulator and one decoded input stay in L2 (2 × 256 KiB in f32).
pub const CHUNK_ELEMENTS: usize = 1 << 16;

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
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            acc32: vec![0.0; CHUNK_ELEMENTS],
            x32: vec![0.0; CHUNK_ELEMENTS],
            acc64: Vec::new(),
            x64: Vec::new(),
            out: vec![0; CHUNK_ELEMENTS],
        }
    }
}

impl Scratch {
    /// The output buffer, as `len` bytes.
    pub fn out(&mut self, len: usize) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.out)[..len]
    }
}

/// Computes elements `range` of `sum(weight * source)` into `scratch`'s output buffer, as
/// `out_dtype`, accumulating in f64 when `wide`. Returns the encoded bytes.
pub fn average<'s>(
    sources: &[Source<'_>],
    range: std::ops::Range<usize>,
    out_dtype: Dtype,
    wide: bool,
    scratch: &'s mut Scratch,
) -> &'s [u8] {
    let n = range.len();
    debug_assert!(n <= CHUNK_ELEMENTS);
    let out_len = n * out_dtype.size();
    let out = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut scratch.out)[..out_len];
    if wide {
        if scratch.acc64.is_empty() {
            scratch.acc64 = vec![0.0; CHUNK_ELEMENTS];
            scratch.x64 = vec![0.0; CHUNK_ELEMENTS];
        }
        sum_into(
            sources,
            range,
            &mut scratch.acc64[..n],
            &mut scratch.x64[..n],
        );
        f64::store(out_dtype, &scratch.acc64[..n], out);
    } else {
        sum_into(
            sources,
            range,
            &mut scratch.acc32[..n],
            &mut scratch.x32[..n],
        );
        f32::store(out_dtype, &scratch.acc32[..n], out);
    }
    out
}

fn sum_into<A: Accumulator>(
    sources: &[Source<'_>],
    range: std::ops::Range<usize>,
    acc: &mut [A],
    x: &mut [A],
) {
    for (k, source) in sources.iter().enumerate() {
        let size = source.dtype.size();
        let bytes = &source.data[range.start * size..range.end * size];
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
        let w = A::from_f64(source.weight);
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
