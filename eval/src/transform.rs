//! The evaluation transform on decoded images: resize (the short side, or to an exact size),
//! center-crop, scale to [0, 1], normalise; as torchvision's presets and Hugging Face's image
//! processors (their PIL path) compute it.
//!
//! torchvision's `ImageClassification` preset (what `weights.transforms()` returns, and the
//! usual `Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)`) applied to the PIL
//! images `ImageFolder` loads, or a `preprocessor_config.json` read by [`crate::preprocessor`].
//! Each step follows the code that runs there:
//!
//! - **resize** (`Resize(256)`): the short side becomes `size`, the long side
//!   `int(size * long / short)` (truncated); or an exact size. PIL resamples: one pass per
//!   axis, with a triangle (bilinear) or cubic (bicubic) filter stretched by the scale factor
//!   when shrinking (antialiasing), coefficients normalised then rounded to 22-bit fixed
//!   point, and every output rounded and clamped to 8 bits. This file does the same integer
//!   arithmetic, in the same pass order, so resized pixels equal PIL's.
//! - **center crop** (`CenterCrop(224)`): offset `round((h - crop) / 2)` with Python's
//!   round-half-to-even (transformers floors it); a crop larger than the image pads with
//!   zeros, as both do.
//! - **scale**: 8-bit values divided by 255.
//! - **normalise**: `(x - mean[c]) / std[c]`, ImageNet's by default.

use image::RgbImage;

/// The steps of the transform; each can be turned off.
#[derive(Clone, Debug, PartialEq)]
pub struct Transform {
    /// How to resize (`None`: keep the size).
    pub resize: Option<Resize>,
    /// PIL's resampling filter for the resize.
    pub interpolation: Interpolation,
    /// Center-crop to this square size (`None`: no crop).
    pub crop: Option<usize>,
    /// How the crop's offset is rounded.
    pub crop_rounding: CropRounding,
    /// Per-channel mean and standard deviation to normalise with (`None`: [0, 1] values).
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

/// A resize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// The short side becomes this many pixels, the long side in proportion (torchvision's
    /// `Resize(n)`, Hugging Face's `shortest_edge`).
    ShortSide(usize),
    /// Exactly this height and width, whatever the aspect (Hugging Face's
    /// `{"height", "width"}`, as a ViT processor resizes).
    Exact(usize, usize),
}

/// PIL's resampling filters that evaluation presets use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// A triangle filter (`Image.BILINEAR`, torchvision's default).
    Bilinear,
    /// Keys' cubic convolution with a = -0.5 (`Image.BICUBIC`: torchvision's EfficientNet
    /// presets, Hugging Face's ConvNeXt processor).
    Bicubic,
}

/// Where a center crop starts when the margin is odd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropRounding {
    /// torchvision: `round((len - crop) / 2)`, halves to even.
    HalfToEven,
    /// transformers' `center_crop`: `(len - crop) // 2`.
    Floor,
}

/// The parts of a transform given on the command line; the others come from the model's
/// `preprocessor_config.json` when it has one, else from torchvision's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Given {
    /// `--resize`: `Some(None)` is `none`.
    pub resize: Option<Option<Resize>>,
    /// `--interpolation`.
    pub interpolation: Option<Interpolation>,
    /// `--crop`: `Some(None)` is `none`.
    pub crop: Option<Option<usize>>,
    /// `--mean`.
    pub mean: Option<[f32; 3]>,
    /// `--std`.
    pub std: Option<[f32; 3]>,
    /// `--no-normalize`.
    pub no_normalize: bool,
}

impl Given {
    /// Whether these parts settle the whole transform, so that a model's own
    /// preprocessing, even one soup-eval can't reproduce, is not needed.
    pub fn complete(&self) -> bool {
        let filter = self.interpolation.is_some() || self.resize == Some(None);
        let normalize = self.no_normalize || (self.mean.is_some() && self.std.is_some());
        self.resize.is_some() && filter && self.crop.is_some() && normalize
    }

    /// `base` with the given parts replaced. A crop given here is centred as torchvision
    /// centres it.
    pub fn over(&self, base: &Transform) -> Transform {
        let (mean, std) = base.normalize.unwrap_or((IMAGENET_MEAN, IMAGENET_STD));
        Transform {
            resize: self.resize.unwrap_or(base.resize),
            interpolation: self.interpolation.unwrap_or(base.interpolation),
            crop: self.crop.unwrap_or(base.crop),
            crop_rounding: if self.crop.is_some() {
                CropRounding::HalfToEven
            } else {
                base.crop_rounding
            },
            normalize: if self.no_normalize {
                None
            } else if self.mean.is_none() && self.std.is_none() {
                base.normalize
            } else {
                Some((self.mean.unwrap_or(mean), self.std.unwrap_or(std)))
            },
        }
    }
}

/// ImageNet's channel means, as torchvision's presets use them.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Default for Transform {
    /// torchvision's default: resize 256, crop 224, ImageNet normalisation.
    fn default() -> Self {
        Transform {
            resize: Some(Resize::ShortSide(256)),
            interpolation: Interpolation::Bilinear,
            crop: Some(224),
            crop_rounding: CropRounding::HalfToEven,
            normalize: Some((IMAGENET_MEAN, IMAGENET_STD)),
        }
    }
}

impl Transform {
    /// Height and width of an `h` x `w` image after the resize.
    pub fn resized(&self, h: usize, w: usize) -> (usize, usize) {
        match self.resize {
            Some(Resize::ShortSide(size)) => resized_size(h, w, size),
            Some(Resize::Exact(rh, rw)) => (rh, rw),
            None => (h, w),
        }
    }

    /// Height and width of the output for an image of `h` x `w` pixels.
    pub fn output_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (h, w) = self.resized(h, w);
        match self.crop {
            Some(c) => (c, c),
            None => (h, w),
        }
    }

    /// The smallest output size any image can have, and whether images can come out larger
    /// (a short-side resize without a crop makes the square or larger); `None` when only the
    /// images tell (no resize, no crop).
    pub fn least_size(&self) -> Option<((usize, usize), bool)> {
        match (self.fixed_size(), self.resize) {
            (Some(size), _) => Some((size, false)),
            (None, Some(Resize::ShortSide(n))) => Some(((n, n), true)),
            _ => None,
        }
    }

    /// The output size whatever the image's, when the transform fixes it.
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        match (self.crop, self.resize) {
            (Some(c), _) => Some((c, c)),
            (None, Some(Resize::Exact(h, w))) => Some((h, w)),
            _ => None,
        }
    }

    /// Applies the transform, writing channel-major f32 values [3, H, W] into `out`, whose
    /// length must be `3 * H * W` for the [`Transform::output_size`] of the image.
    pub fn apply(&self, image: &RgbImage, out: &mut [f32]) {
        let resized;
        let image = if self.resize.is_some() {
            let (h, w) = self.resized(image.height() as usize, image.width() as usize);
            resized = resize(image, h, w, self.interpolation);
            &resized
        } else {
            image
        };
        let (h, w) = (image.height() as usize, image.width() as usize);
        let (oh, ow) = self.crop.map_or((h, w), |c| (c, c));
        let top = crop_offset(h, oh, self.crop_rounding);
        let left = crop_offset(w, ow, self.crop_rounding);
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

/// The crop's offset in a dimension of `len` pixels; negative when the crop is larger, where
/// both libraries pad with zeros (torchvision the smaller margin first, transformers the
/// larger).
fn crop_offset(len: usize, crop: usize, rounding: CropRounding) -> isize {
    match (crop <= len, rounding) {
        (true, CropRounding::HalfToEven) => ((len - crop) as f64 / 2.0).round_ties_even() as isize,
        (true, CropRounding::Floor) => ((len - crop) / 2) as isize,
        (false, CropRounding::HalfToEven) => -(((crop - len) / 2) as isize),
        (false, CropRounding::Floor) => -((crop - len).div_ceil(2) as isize),
    }
}

/// Fixed-point precision of PIL's 8-bit resampling coefficients.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's filter for `interpolation`, and its support (in input pixels, before stretching).
fn filter(interpolation: Interpolation) -> (fn(f64) -> f64, f64) {
    fn triangle(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
    fn cubic(x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * A
        } else {
            0.0
        }
    }
    match interpolation {
        Interpolation::Bilinear => (triangle, 1.0),
        Interpolation::Bicubic => (cubic, 2.0),
    }
}

/// PIL's resampling coefficients for one axis: for each output pixel, the first input pixel
/// and the fixed-point weights of the inputs it reads. The filter is stretched by the scale
/// when shrinking (antialiasing), its weights normalised, then rounded to fixed point.
fn coefficients(
    input: usize,
    output: usize,
    interpolation: Interpolation,
) -> Vec<(usize, Vec<i32>)> {
    let (kernel, support) = filter(interpolation);
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = support * filter_scale;
    // PIL multiplies by the reciprocal; dividing instead can change a weight's last bit.
    let inverse = 1.0 / filter_scale;
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as isize).max(0) as usize;
            let last = ((center + support + 0.5) as isize).min(input as isize) as usize;
            let weights: Vec<f64> = (first..last)
                .map(|i| kernel((i as f64 - center + 0.5) * inverse))
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

/// PIL's `Image.resize((w, h), filter)` of an 8-bit RGB image: one pass per axis that
/// changes, each rounded to 8 bits. Pillow 13 runs the vertical pass first when the height
/// loses more than twice the pixels the width does (`in_h - out_h > 2 (in_w - out_w)`, which
/// is cheaper for a tall image shrunk to its short side), the horizontal first otherwise, as
/// every Pillow did before; the order changes pixels by one level, so it is followed exactly.
pub fn resize(
    image: &RgbImage,
    out_h: usize,
    out_w: usize,
    interpolation: Interpolation,
) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let src = image.as_raw();
    let shrunk_h = in_h as isize - out_h as isize;
    let shrunk_w = in_w as isize - out_w as isize;
    let pixels = if shrunk_h > 0 && shrunk_h > 2 * shrunk_w {
        let vertical = resample_rows(src, in_w, in_h, out_h, interpolation);
        resample_columns(&vertical, in_w, out_h, out_w, interpolation)
    } else {
        let horizontal = resample_columns(src, in_w, in_h, out_w, interpolation);
        resample_rows(&horizontal, out_w, in_h, out_h, interpolation)
    };
    RgbImage::from_raw(out_w as u32, out_h as u32, pixels).expect("buffer matches the size")
}

/// The horizontal pass: `h` rows of `w` RGB pixels resampled to `out_w` each.
fn resample_columns(
    src: &[u8],
    w: usize,
    h: usize,
    out_w: usize,
    interpolation: Interpolation,
) -> Vec<u8> {
    if out_w == w {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(w, out_w, interpolation);
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
fn resample_rows(
    src: &[u8],
    w: usize,
    h: usize,
    out_h: usize,
    interpolation: Interpolation,
) -> Vec<u8> {
    if out_h == h {
        return src.to_vec();
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let coeffs = coefficients(h, out_h, interpolation);
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
        let even = CropRounding::HalfToEven;
        assert_eq!(crop_offset(341, 224, even), 58); // 58.5 -> 58
        assert_eq!(crop_offset(343, 224, even), 60); // 59.5 -> 60
        assert_eq!(crop_offset(256, 224, even), 16);
        assert_eq!(crop_offset(5, 8, even), -1);
        let floor = CropRounding::Floor;
        assert_eq!(crop_offset(343, 224, floor), 59);
        assert_eq!(crop_offset(5, 8, floor), -2);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (input, output, f) in [(640, 341), (100, 256), (7, 3), (3, 7)]
            .into_iter()
            .flat_map(|(i, o)| [Interpolation::Bilinear, Interpolation::Bicubic].map(|f| (i, o, f)))
        {
            for (first, w) in coefficients(input, output, f) {
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
            resize: Some(Resize::ShortSide(16)),
            crop: Some(12),
            normalize: Some(([0.5; 3], [0.25; 3])),
            ..Transform::default()
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
