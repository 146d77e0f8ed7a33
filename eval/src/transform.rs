//! torchvision's evaluation transform on decoded images: resize the short side (bilinear, antialiased, as PIL computes it), center-crop, scale to [0, 1], normalise.
//!
//! torchvision's `ImageClassification` preset (what `weights.transforms()` returns, and the
//! usual `Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)`) applied to the PIL
//! images `ImageFolder` loads. Each step follows the code that runs there:
//!
//! - **resize** (`Resize(256)`): the short side becomes `size`, the long side
//!   `int(size * long / short)` (truncated). PIL resamples: a horizontal pass, then a vertical
//!   one, each with a triangle filter stretched by the scale factor when shrinking
//!   (antialiasing), coefficients normalised then rounded to 22-bit fixed point, and every
//!   output rounded and clamped to 8 bits. This file does the same integer arithmetic, so
//!   resized pixels equal PIL's.
//! - **center crop** (`CenterCrop(224)`): offset `round((h - crop) / 2)` with Python's
//!   round-half-to-even; a crop larger than the image pads with zeros, as torchvision does.
//! - **scale**: 8-bit values divided by 255.
//! - **normalise**: `(x - mean[c]) / std[c]`, ImageNet's by default.

use image::RgbImage;

/// The steps of the transform; each can be turned off.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// Resize so that the short side is this many pixels (`None`: keep the size).
    pub resize: Option<usize>,
    /// Center-crop to this square size (`None`: no crop).
    pub crop: Option<usize>,
    /// Per-channel mean and standard deviation to normalise with (`None`: [0, 1] values).
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// ImageNet's channel means, as torchvision's presets use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Default for Transform {
    /// torchvision's default: resize 256, crop 224, ImageNet normalisation.
    fn default() -> Self {
        Transform {
            resize: Some(256),
            crop: Some(224),
            normalize: Some((IMAGENET_MEAN, IMAGENET_STD)),
        }
    }
}

impl Transform {
    /// Height and width of the output for an image of `h` x `w` pixels.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = match self.resize {
            Some(size) => resized_size(h, w, size),
            None => (h, w),
        };
        match self.crop {
            Some(c) => (c, c),
            None => (h, w),
        }
    }

    /// Applies the transform, writing channel-major f32 values [3, H, W] into `out`, whose
    /// length must be `3 * H * W` for the [`Transform::output_size`] of the image.
    pub fn apply(&self, image: &RgbImage, out: &mut [f32]) {
        let resized;
        let image = match self.resize {
            Some(size) => {
                let (h, w) = resized_size(image.height() as usize, image.width() as usize, size);
                resized = resize_bilinear(image, h, w);
                &resized
            }
            None => image,
        };
        let (h, w) = (image.height() as usize, image.width() as usize);
        let (oh, ow) = self.crop.map_or((h, w), |c| (c, c));
        let top = crop_offset(h, oh);
        let left = crop_offset(w, ow);
        let (mean, std) = self.normalize.unwrap_or(([0.0; 3], [1.0; 3]));
        let plane = oh * ow;
        assert_eq!(out.len(), 3 * plane, "output buffer of the wrong size");
        for y in 0..oh {
            let sy = y as isize + top;
            for x in 0..ow {
                let sx = x as isize + left;
                let inside = sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w;
                let pixel = if inside {
                    image.get_pixel(sx as u32, sy as u32).0
                } else {
                    [0, 0, 0]
                };
                for c in 0..3 {
                    let v = pixel[c] as f32 / 255.0;
                    out[c * plane + y * ow + x] = (v - mean[c]) / std[c];
                }
            }
        }
    }
}

/// torchvision's `Resize(size)` output for an `h` x `w` image: the short side becomes `size`,
/// the long side `int(size * long / short)`.
pub fn resized_size(h: usize, w: usize, size: usize) -> (usize, usize) {
    if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    }
}

/// The crop's offset in a dimension of `len` pixels: `round((len - crop) / 2)`, halves to
/// even as Python rounds; negative when the crop is larger (torchvision pads with zeros).
fn crop_offset(len: usize, crop: usize) -> isize {
    if crop <= len {
        ((len - crop) as f64 / 2.0).round_ties_even() as isize
    } else {
        -(((crop - len) / 2) as isize)
    }
}

/// Fixed-point precision of PIL's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bilinear resampling coefficients for one axis: for each output pixel, the first input
/// pixel and the fixed-point weights of the inputs it reads.
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // the triangle filter's support (1) stretched when shrinking
                                // PIL multiplies by the reciprocal; dividing instead can change a weight's last bit.
    let inverse = 1.0 / filter_scale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as isize).max(0) as usize;
            let last = ((center + support + 0.5) as isize).min(input as isize) as usize;
            let weights: Vec<f64> = (first..last)
                .map(|i| {
                    let t = ((i as f64 - center + 0.5) * inverse).abs();
                    if t < 1.0 {
                        1.0 - t
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            let fixed = weights
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (first, fixed)
        })
        .collect()
}

/// Rounds a fixed-point sum (which started at one half) to 8 bits, clamped.
fn clip8(sum: i64) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL's `Image.resize((w, h), Image.BILINEAR)` of an 8-bit RGB image: one pass per axis that
/// changes, each rounded to 8 bits. Pillow 13 runs the vertical pass first when the height
/// loses more than twice the pixels the width does (`in_h - out_h > 2 (in_w - out_w)`, which
/// is cheaper for a tall image shrunk to its short side), the horizontal first otherwise, as
/// every Pillow did before; the order changes pixels by one level, so it is followed exactly.
pub fn resize_bilinear(image: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw();
    let shrunk_h = in_h as isize - out_h as isize;
    let shrunk_w = in_w as isize - out_w as isize;
    let pixels = if shrunk_h > 0 && shrunk_h > 2 * shrunk_w {
        let vertical = resample_rows(src, in_w, in_h, out_h);
        resample_columns(&vertical, in_w, out_h, out_w)
    } else {
        let horizontal = resample_columns(src, in_w, in_h, out_w);
        resample_rows(&horizontal, out_w, in_h, out_h)
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, pixels).expect("buffer matches the size")
}

/// The horizontal pass: `h` rows of `w` RGB pixels resampled to `out_w` each.
fn resample_columns(src: &[u8], w: usize, h: usize, out_w: usize) -> Vec<u8> {
    if out_w == w {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(w, out_w);
    let mut out = vec![0u8; h * out_w * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for (x, (first, weights)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let mut sum = half;
                for (k, wt) in weights.iter().enumerate() {
                    sum += row[(first + k) * 3 + c] as i64 * *wt as i64;
                }
                out[(y * out_w + x) * 3 + c] = clip8(sum);
            }
        }
    }
    out
}

/// The vertical pass: `h` rows of `w` RGB pixels resampled to `out_h` rows.
fn resample_rows(src: &[u8], w: usize, h: usize, out_h: usize) -> Vec<u8> {
    if out_h == h {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(h, out_h);
    let mut out = vec![0u8; out_h * w * 3];
    for (y, (first, weights)) in coeffs.iter().enumerate() {
        for i in 0..w * 3 {
            let mut sum = half;
            for (k, wt) in weights.iter().enumerate() {
                sum += src[(first + k) * w * 3 + i] as i64 * *wt as i64;
            }
            out[y * w * 3 + i] = clip8(sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resized_size_truncates_the_long_side_like_torchvision() {
        assert_eq!(resized_size(480, 640, 256), (256, 341));
        assert_eq!(resized_size(640, 480, 256), (341, 256));
        assert_eq!(resized_size(300, 300, 256), (256, 256));
    }

    #[test]
    fn crop_offsets_round_half_to_even_and_pad_when_too_small() {
        assert_eq!(crop_offset(341, 224), 58); // 58.5 -> 58
        assert_eq!(crop_offset(343, 224), 60); // 59.5 -> 60
        assert_eq!(crop_offset(256, 224), 16);
        assert_eq!(crop_offset(5, 8), -1);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (input, output) in [(640, 341), (100, 256), (7, 3), (3, 7)] {
            for (first, w) in coefficients(input, output) {
                let sum: i64 = w.iter().map(|&x| x as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i64,
                    "{input}->{output}"
                );
                assert!(first + w.len() <= input);
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_normalises() {
        let image = RgbImage::from_pixel(50, 30, image::Rgb([255, 0, 128]));
        let t = Transform {
            resize: Some(16),
            crop: Some(12),
            normalize: Some(([0.5; 3], [0.25; 3])),
        };
        assert_eq!(t.output_size(30, 50), (12, 12));
        let mut out = vec![0f32; 3 * 144];
        t.apply(&image, &mut out);
        assert!(out[..144].iter().all(|&v| v == 2.0));
        assert!(out[144..288].iter().all(|&v| v == -2.0));
        let mid = (128.0 / 255.0 - 0.5) / 0.25;
        assert!(out[288..].iter().all(|&v| (v - mid).abs() < 1e-6));
    }
}
