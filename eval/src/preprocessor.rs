//! A Hugging Face model directory's `preprocessor_config.json`, read into the [`Transform`] its
//! image processor applies, so that a ViT or ConvNeXt folder is scored on the inputs
//! transformers gives it (its PIL path: the "slow" processors, whose arithmetic
//! [`crate::transform`] follows).
//!
//! What each key means follows transformers' image processors:
//!
//! - `size` `{"height", "width"}` resizes to exactly that (a ViT's); `{"shortest_edge": s}`
//!   resizes the short side, and for a ConvNeXt processor below 384 pixels to `s / crop_pct`
//!   first and then center-crops `s` (at 384 and above it resizes to `s` x `s`, as
//!   `ConvNextImageProcessor` does); a bare number is the legacy spelling of either;
//! - `resample` is PIL's filter number (2 bilinear, 3 bicubic); without it, the processor's
//!   default (bicubic for ConvNeXt, bilinear otherwise);
//! - `do_center_crop` with `crop_size` center-crops, offset rounded down as transformers does
//!   (after the resize, for a ConvNeXt too, as transformers 5 does);
//! - `do_rescale` with `rescale_factor` 1/255, `do_normalize` with `image_mean`/`image_std`.
//!
//! Anything that would change the pixels in a way the transform can't reproduce (another
//! filter, padding, a longest edge, a rectangular crop) is an error naming the key, so a run
//! never silently scores other inputs than transformers would.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::transform::{CropRounding, Interpolation, Resize, Transform};

/// The file's name in a model directory.
pub const FILE: &str = "preprocessor_config.json";

/// The transform that `dir`'s `preprocessor_config.json` describes, or `None` when `dir` is
/// not a directory or has none.
pub fn read(dir: &Path) -> Result<Option<Transform>> {
    let path = dir.join(FILE);
    if !dir.is_dir() || !crate::dataset::present(&path, "image processor configuration")? {
        return Ok(None);
    }
    let text = crate::dataset::read_config(&path, "image processor configuration")?;
    let bad = |reason: String| {
        Error::Dataset {
        path: path.clone(),
        reason: format!("{reason}; pass --resize, --crop, --interpolation, --mean and --std to preprocess as you choose"),
    }
    };
    let config: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("is not valid JSON ({e})")))?;
    parse(&config).map(Some).map_err(bad)
}

/// The largest side a resize or crop may give, as `--resize` and `--crop` allow.
const MAX_SIDE: usize = 16384;

/// A side in pixels from `value` (named `key` in messages): a whole number from 1 to
/// [`MAX_SIDE`].
fn side(key: &str, value: &Value) -> std::result::Result<usize, String> {
    match value.as_u64() {
        Some(n) if n >= 1 && n as usize <= MAX_SIDE => Ok(n as usize),
        _ => Err(format!(
            "{key} is {value}, not a size from 1 to {MAX_SIDE} pixels"
        )),
    }
}

fn parse(config: &Value) -> std::result::Result<Transform, String> {
    if !config.is_object() {
        return Err("is not a JSON object of settings".into());
    }
    let kind = config
        .get("image_processor_type")
        .or_else(|| config.get("feature_extractor_type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let convnext = kind.starts_with("ConvNext");
    let flag = |key: &str, default: bool| -> std::result::Result<bool, String> {
        match config.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("{key} is {v}, not true or false")),
        }
    };
    if flag("do_pad", false)? {
        return Err("do_pad is true: padding is not reproduced".into());
    }
    let interpolation = match config.get("resample") {
        // Each processor's own default: ConvNextImageProcessor's is bicubic.
        None | Some(Value::Null) if convnext => Interpolation::Bicubic,
        None | Some(Value::Null) => Interpolation::Bilinear,
        Some(v) => match v.as_u64() {
            Some(2) => Interpolation::Bilinear,
            Some(3) => Interpolation::Bicubic,
            _ => {
                return Err(format!(
                "resample {v} is not bilinear (2) or bicubic (3), the filters soup-eval reproduces"
            ))
            }
        },
    };
    let mut crop = None;
    let resize = if flag("do_resize", true)? {
        let size = config
            .get("size")
            .ok_or("do_resize is true but there is no size")?;
        let (edge, height, width) = match size {
            Value::Number(_) => {
                let n = side("size", size)?;
                if convnext {
                    (Some(n), None, None)
                } else {
                    (None, Some(n), Some(n))
                }
            }
            Value::Object(map) => {
                if map.contains_key("longest_edge") {
                    return Err(format!(
                        "size {size} has a longest_edge, which soup-eval doesn't reproduce"
                    ));
                }
                let get = |key: &str| {
                    map.get(key)
                        .filter(|v| !v.is_null())
                        .map(|v| side(&format!("size.{key}"), v))
                        .transpose()
                };
                (get("shortest_edge")?, get("height")?, get("width")?)
            }
            _ => return Err(format!("size {size} is not a number or an object")),
        };
        match (edge, height, width) {
            (Some(s), None, None) if convnext && s < 384 => {
                let crop_pct = match config.get("crop_pct") {
                    None | Some(Value::Null) => 224.0 / 256.0,
                    Some(v) => v
                        .as_f64()
                        .filter(|p| *p > 0.0 && *p <= 1.0)
                        .ok_or(format!("crop_pct {v} is not in (0, 1]"))?,
                };
                let resized = s as f64 / crop_pct;
                if resized > MAX_SIDE as f64 {
                    return Err(format!(
                        "crop_pct {crop_pct} resizes the short side to {resized:.0} pixels, more than {MAX_SIDE}"
                    ));
                }
                crop = Some(s);
                Some(Resize::ShortSide(resized as usize))
            }
            (Some(s), None, None) if convnext => Some(Resize::Exact(s, s)),
            (Some(s), None, None) => Some(Resize::ShortSide(s)),
            (None, Some(h), Some(w)) if !convnext => Some(Resize::Exact(h, w)),
            _ => {
                return Err(format!(
                    "size {size} is neither {{\"shortest_edge\": N}} nor {{\"height\": H, \"width\": W}}{}",
                    if convnext { " (a ConvNeXt processor takes shortest_edge)" } else { "" }
                ))
            }
        }
    } else {
        None
    };
    if flag("do_center_crop", false)? {
        let size = config
            .get("crop_size")
            .ok_or("do_center_crop is true but there is no crop_size")?;
        let square = match size {
            Value::Number(_) => Some(size),
            Value::Object(_) => match (size.get("height"), size.get("width")) {
                (Some(h), Some(w)) if h == w => Some(h),
                _ => None,
            },
            _ => None,
        };
        let square = square.ok_or(format!(
            "crop_size {size} is not a square, the crops soup-eval reproduces"
        ))?;
        let size = side("crop_size", square)?;
        // ConvNeXt's processor (transformers 5) center-crops after its own resize, which below
        // 384 pixels already cropped to shortest_edge: one crop unless the sizes differ.
        match crop {
            Some(first) if first != size => {
                return Err(format!(
                    "do_center_crop crops {size} pixels from the {first} that crop_pct's crop leaves, two crops soup-eval doesn't reproduce"
                ))
            }
            _ => crop = Some(size),
        }
    }
    if flag("do_rescale", true)? {
        if let Some(v) = config.get("rescale_factor").filter(|v| !v.is_null()) {
            let factor = v
                .as_f64()
                .ok_or(format!("rescale_factor {v} is not a number"))?;
            if (factor * 255.0 - 1.0).abs() > 1e-9 {
                return Err(format!(
                    "rescale_factor {v} is not 1/255, the scaling soup-eval reproduces"
                ));
            }
        }
    } else {
        return Err("do_rescale is false: 0-255 inputs are not reproduced".into());
    }
    let normalize = if flag("do_normalize", true)? {
        let triple = |key: &str| -> std::result::Result<[f32; 3], String> {
            let v = config
                .get(key)
                .ok_or(format!("do_normalize is true but there is no {key}"))?;
            let values: Vec<f32> = match v {
                Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN) as f32; 3],
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect(),
                _ => vec![],
            };
            match values[..] {
                [r, g, b] if values.iter().all(|x| x.is_finite()) => Ok([r, g, b]),
                _ => Err(format!("{key} {v} is not three numbers")),
            }
        };
        let std = triple("image_std")?;
        if std.iter().any(|&s| s <= 0.0) {
            return Err("image_std has a value that is not positive".into());
        }
        Some((triple("image_mean")?, std))
    } else {
        None
    };
    Ok(Transform {
        resize,
        interpolation,
        crop,
        crop_rounding: CropRounding::Floor,
        normalize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(text: &str) -> std::result::Result<Transform, String> {
        parse(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn reads_vit_and_convnext_processors_as_transformers_does() {
        let vit = parse_json(r#"{"image_processor_type": "ViTImageProcessor", "do_resize": true, "size": {"height": 224, "width": 224}, "resample": 2, "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}"#).unwrap();
        assert_eq!(vit.resize, Some(Resize::Exact(224, 224)));
        assert_eq!(vit.crop, None);
        assert_eq!(vit.normalize, Some(([0.5; 3], [0.5; 3])));
        let convnext = parse_json(r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#).unwrap();
        assert_eq!(convnext.resize, Some(Resize::ShortSide(256)));
        assert_eq!(convnext.crop, Some(224));
        assert_eq!(convnext.interpolation, Interpolation::Bicubic);
        assert_eq!(convnext.crop_rounding, CropRounding::Floor);
        let large = parse_json(r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 384}, "image_mean": 0.5, "image_std": 0.5}"#).unwrap();
        assert_eq!(large.resize, Some(Resize::Exact(384, 384)));
        assert_eq!(large.crop, None);
        let deit = parse_json(r#"{"size": {"shortest_edge": 256}, "do_center_crop": true, "crop_size": {"height": 224, "width": 224}, "do_normalize": false}"#).unwrap();
        assert_eq!(deit.resize, Some(Resize::ShortSide(256)));
        assert_eq!(deit.crop, Some(224));
        assert_eq!(deit.normalize, None);
    }

    #[test]
    fn names_what_it_cannot_reproduce() {
        for (text, key) in [
            (r#"{"size": 224, "resample": 1}"#, "resample 1"),
            (
                r#"{"size": {"shortest_edge": 224, "longest_edge": 1333}}"#,
                "longest_edge",
            ),
            (r#"{"size": 224, "do_pad": true}"#, "do_pad"),
            (r#"{"size": 224, "rescale_factor": 0.5}"#, "rescale_factor"),
            (r#"{"size": 224, "do_rescale": false}"#, "do_rescale"),
            (
                r#"{"size": 224, "do_center_crop": true, "crop_size": {"height": 200, "width": 100}}"#,
                "crop_size",
            ),
            (
                r#"{"size": 224, "image_mean": [0.5, 0.5], "image_std": 0.5}"#,
                "image_mean",
            ),
            (
                r#"{"size": 224, "image_mean": 0.5, "image_std": 0}"#,
                "image_std",
            ),
            (r#"{"do_resize": true}"#, "no size"),
            (
                r#"{"size": {"height": 100000, "width": 100000}}"#,
                "size.height",
            ),
            (
                r#"{"size": {"height": 18446744073709551615, "width": 1}}"#,
                "size.height",
            ),
            (r#"{"size": {"height": 0, "width": 0}}"#, "size.height"),
            (
                r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 224}, "crop_pct": 1e-300}"#,
                "crop_pct",
            ),
            (
                r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 4000000000}}"#,
                "shortest_edge",
            ),
            (
                r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"shortest_edge": 0}}"#,
                "shortest_edge",
            ),
            (
                r#"{"image_processor_type": "ConvNextImageProcessor", "size": {"height": 224, "width": 224}}"#,
                "ConvNeXt",
            ),
            (
                r#"{"size": 224, "do_center_crop": true, "crop_size": 0}"#,
                "crop_size",
            ),
            (r#"[1, 2]"#, "JSON object"),
        ] {
            let e = parse_json(text).unwrap_err();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
