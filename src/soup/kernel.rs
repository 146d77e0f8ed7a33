//! The one weighted-sum kernel: a fixed-size chunk of one output tensor from its weighted inputs.
//!
//! Each output element depends only on the same element of the inputs, summed in input order,
//! so results don't depend on how chunks are spread over threads.

use crate::format::{Accumulator, Dtype};

/// Elements per chunk, the unit of work handed to a thread and of I/O: 1 MiB of bf16 output,
/// so the per-chunk system calls (a positioned write, page advice for each input) stay few.
pub const CHUNK_ELEMENTS: usize = 1 << 19;

/// Elements per tile, the unit of the arithmetic inside a chunk: small enough that the
/// accumulator and one decoded input stay in L2 (2 × 256 KiB in f32).
const TILE_ELEMENTS: usize = 1 << 16;

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
            acc32: vec![0.0; TILE_ELEMENTS],
            x32: vec![0.0; TILE_ELEMENTS],
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

/// Computes elements `range` (at most `CHUNK_ELEMENTS`) of `sum(weight * source)` into
/// `scratch`'s output buffer, as `out_dtype`, accumulating in f64 when `wide`. Returns the
/// encoded bytes.
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
