//! A direct depthwise convolution for the CPU (one filter per channel), where candle's grouped convolution would run one im2col + matmul per channel.
//!
//! candle splits a convolution of `groups` groups into `groups` separate convolutions and
//! concatenates them, which for a depthwise layer (MobileNet, EfficientNet, MNASNet, ConvNeXt:
//! hundreds of channels, one filter each) means hundreds of tiny matrix products. Here each
//! output plane is computed directly: for every kernel tap, one multiply-add of a shifted input
//! row into the output row (contiguous for stride 1, so it vectorises).
//!
//! Semantics are `torch.nn.Conv2d(c, c, k, stride, padding, dilation, groups=c)`: zero padding,
//! output size `(h + 2p - d(k - 1) - 1) / s + 1`. Each output element sums its taps in a fixed
//! order (rows, then columns, then the bias), whichever thread computes its plane, so the result
//! is identical at any thread count. 16-bit inputs are computed in f32 and rounded once.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape};
use rayon::prelude::*;

/// The depthwise convolution's settings and bias, applied as a candle custom op to an input
/// `[n, c, h, w]` and a weight `[c, 1, k, k]`.
#[derive(Clone, Debug)]
pub struct Depthwise {
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Dilation of the kernel taps.
    pub dilation: usize,
    /// One bias per channel, if the convolution has one.
    pub bias: Option<Vec<f32>>,
}

impl Depthwise {
    /// The output side for an input side `n` and a kernel of `k` taps, or `None` when the
    /// kernel does not fit.
    fn out_size(&self, n: usize, k: usize) -> Option<usize> {
        let span = self.dilation * (k - 1) + 1;
        (n + 2 * self.padding)
            .checked_sub(span)
            .map(|r| r / self.stride + 1)
    }

    /// One output plane `out` [oh, ow] from one input plane `x` [h, w] and its kernel `k` x `k`.
    #[allow(clippy::too_many_arguments)]
    fn plane(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        kernel: &[f32],
        k: usize,
        out: &mut [f32],
        ow: usize,
        bias: f32,
    ) {
        let (s, p, d) = (self.stride, self.padding as isize, self.dilation);
        out.fill(0.0);
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            for ky in 0..k {
                let iy = (oy * s) as isize - p + (ky * d) as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let input = &x[iy as usize * w..(iy as usize + 1) * w];
                for kx in 0..k {
                    let tap = kernel[ky * k + kx];
                    let shift = (kx * d) as isize - p;
                    // Columns ox with 0 <= ox * s + shift < w.
                    let first = if shift < 0 {
                        ((-shift) as usize).div_ceil(s)
                    } else {
                        0
                    };
                    let last = if (w as isize) - shift <= 0 {
                        0
                    } else {
                        (((w as isize - shift) as usize) - 1) / s + 1
                    };
                    let last = last.min(ow);
                    if first >= last {
                        continue;
                    }
                    let start = (first * s) as isize + shift;
                    let start = start as usize;
                    if s == 1 {
                        let src = &input[start..start + (last - first)];
                        for (o, &v) in row[first..last].iter_mut().zip(src) {
                            *o += tap * v;
                        }
                    } else {
                        for (j, o) in row[first..last].iter_mut().enumerate() {
                            *o += tap * input[start + j * s];
                        }
                    }
                }
            }
            if bias != 0.0 {
                for o in row.iter_mut() {
                    *o += bias;
                }
            }
        }
    }

    /// The convolution of `x` [n, c, h, w] by `weight` [c, 1, k, k], both contiguous f32.
    fn run(
        &self,
        x: &[f32],
        dims: [usize; 4],
        weight: &[f32],
        k: usize,
    ) -> Result<(Vec<f32>, Shape)> {
        let [n, c, h, w] = dims;
        let (Some(oh), Some(ow)) = (self.out_size(h, k), self.out_size(w, k)) else {
            candle_core::bail!(
                "depthwise convolution: a {k}x{k} kernel does not fit a {h}x{w} input"
            )
        };
        let mut out = vec![0f32; n * c * oh * ow];
        if oh * ow > 0 {
            out.par_chunks_mut(oh * ow)
                .enumerate()
                .for_each(|(plane, dst)| {
                    let ch = plane % c;
                    let src = &x[plane * h * w..(plane + 1) * h * w];
                    let kernel = &weight[ch * k * k..(ch + 1) * k * k];
                    let bias = self.bias.as_ref().map_or(0.0, |b| b[ch]);
                    self.plane(src, h, w, kernel, k, dst, ow, bias);
                });
        }
        Ok((out, Shape::from((n, c, oh, ow))))
    }
}

/// The contiguous values of a storage as f32 (a copy for 16-bit types).
fn as_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<std::borrow::Cow<'a, [f32]>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("depthwise convolution: operands must be contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => std::borrow::Cow::Borrowed(&v[start..end]),
        CpuStorage::F16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        CpuStorage::BF16(v) => v[start..end].iter().map(|x| x.to_f32()).collect(),
        other => candle_core::bail!(
            "depthwise convolution: unsupported dtype {:?}",
            other.dtype()
        ),
    })
}

impl CustomOp2 for Depthwise {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oc, one, k, k2) = l2.shape().dims4()?;
        if oc != c
            || one != 1
            || k != k2
            || k == 0
            || self.bias.as_ref().is_some_and(|b| b.len() != c)
        {
            candle_core::bail!(
                "depthwise convolution: weight {:?} does not fit input {:?}",
                l2.shape(),
                l1.shape()
            )
        }
        let x = as_f32(s1, l1)?;
        let weight = as_f32(s2, l2)?;
        let (out, shape) = self.run(&x, [n, c, h, w], &weight, k)?;
        let storage = match s1.dtype() {
            DType::F16 => CpuStorage::F16(out.iter().map(|&v| half::f16::from_f32(v)).collect()),
            DType::BF16 => CpuStorage::BF16(out.iter().map(|&v| half::bf16::from_f32(v)).collect()),
            _ => CpuStorage::F32(out),
        };
        Ok((storage, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A float64 reference straight from the definition, with PyTorch's padding and dilation.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f64],
        [n, c, h, w]: [usize; 4],
        wt: &[f64],
        k: usize,
        s: usize,
        p: usize,
        d: usize,
        bias: &[f64],
    ) -> Vec<f64> {
        let oh = (h + 2 * p - d * (k - 1) - 1) / s + 1;
        let ow = (w + 2 * p - d * (k - 1) - 1) / s + 1;
        let mut out = Vec::new();
        for b in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[ch];
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky * d) as isize - p as isize;
                                let ix = (ox * s + kx * d) as isize - p as isize;
                                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                    acc += wt[(ch * k + ky) * k + kx]
                                        * x[((b * c + ch) * h + iy as usize) * w + ix as usize];
                                }
                            }
                        }
                        out.push(acc);
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_and_candles_grouped_convolution() {
        for &(h, w, k, s, p, d) in &[
            (7, 9, 3, 1, 1, 1),
            (8, 8, 3, 2, 1, 1),
            (9, 6, 5, 2, 2, 1),
            (10, 11, 3, 1, 2, 2),
            (5, 5, 7, 1, 3, 1),
            (4, 3, 3, 2, 0, 1),
        ] {
            let (n, c) = (2, 3);
            let dims = [n, c, h, w];
            let x = values(n * c * h * w, 1 + h as u64);
            let wt = values(c * k * k, 7 + k as u64);
            let bias = values(c, 3);
            let expected = reference(&x, dims, &wt, k, s, p, d, &bias);
            let op = Depthwise {
                stride: s,
                padding: p,
                dilation: d,
                bias: Some(bias.iter().map(|&b| b as f32).collect()),
            };
            let xt = Tensor::from_vec(
                x.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                (n, c, h, w),
                &Device::Cpu,
            )
            .unwrap();
            let wtt = Tensor::from_vec(
                wt.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                (c, 1, k, k),
                &Device::Cpu,
            )
            .unwrap();
            let got = xt.apply_op2_no_bwd(&wtt, &op).unwrap();
            let candle = xt
                .conv2d(&wtt, p, s, d, c)
                .unwrap()
                .broadcast_add(
                    &Tensor::from_vec(
                        bias.iter().map(|&b| b as f32).collect::<Vec<_>>(),
                        (1, c, 1, 1),
                        &Device::Cpu,
                    )
                    .unwrap(),
                )
                .unwrap();
            assert_eq!(got.dims(), candle.dims(), "{h}x{w} k{k} s{s} p{p} d{d}");
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (*g as f64 - e).abs() < 1e-5,
                    "{h}x{w} k{k} s{s} p{p} d{d}: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn the_same_bits_at_any_thread_count_and_in_f16_within_rounding() {
        let (n, c, h, w, k) = (3, 5, 9, 7, 3);
        let x: Vec<f32> = values(n * c * h * w, 11)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let wt: Vec<f32> = values(c * k * k, 13).iter().map(|&v| v as f32).collect();
        let op = Depthwise {
            stride: 2,
            padding: 1,
            dilation: 1,
            bias: Some(vec![0.5; c]),
        };
        let run = |threads: usize, dtype: DType| -> Vec<f32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let xt = Tensor::from_vec(x.clone(), (n, c, h, w), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let wtt = Tensor::from_vec(wt.clone(), (c, 1, k, k), &Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                let y = xt.apply_op2_no_bwd(&wtt, &op).unwrap();
                assert_eq!(y.dtype(), dtype);
                y.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
        };
        let one = run(1, DType::F32);
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            run(3, DType::F32)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>()
        );
        let half = run(2, DType::F16);
        let worst = one
            .iter()
            .zip(&half)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // f16 inputs and weights (11 bits) and one rounding of the sum: a few 1e-3 here.
        assert!(worst > 0.0 && worst < 1e-2, "{worst}");
    }

    #[test]
    fn a_kernel_larger_than_the_padded_input_is_an_error() {
        let op = Depthwise {
            stride: 1,
            padding: 0,
            dilation: 1,
            bias: None,
        };
        let x = Tensor::zeros((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::zeros((2, 1, 3, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(x.apply_op2_no_bwd(&w, &op).is_err());
    }
}
