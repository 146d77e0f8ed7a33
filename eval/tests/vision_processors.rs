//! `preprocessor_config.json` files that transformers' own processors read differently from
//! their common spelling: each is read as `ViTImageProcessor` / `ConvNextImageProcessor`
//! (transformers 5.24, PIL backend) reads it, or refused, naming the key.

use soup_eval::transform::{CropRounding, Interpolation, Resize, Transform};

/// The transform soup-eval reads from a directory holding `config`, or its error.
fn read(config: &str) -> Result<Transform, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("preprocessor_config.json"), config).unwrap();
    soup_eval::preprocessor::read(dir.path())
        .map(|t| t.expect("a preprocessor_config.json"))
        .map_err(|e| e.to_string())
}

const CONVNEXT: &str = r#""image_processor_type": "ConvNextImageProcessor", "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]"#;

/// Without `resample`, `ConvNextImageProcessor` resizes with its default, bicubic (a ViT's is
/// bilinear); bilinear here made pixels up to 25 levels off transformers'.
#[test]
fn a_missing_resample_is_the_processors_own_default() {
    let convnext = read(&format!(
        r#"{{{CONVNEXT}, "size": {{"shortest_edge": 64}}}}"#
    ))
    .unwrap();
    assert_eq!(convnext.interpolation, Interpolation::Bicubic);
    assert_eq!(convnext.resize, Some(Resize::ShortSide(73)));
    let vit = read(r#"{"image_processor_type": "ViTImageProcessor", "size": {"height": 64, "width": 64}, "image_mean": 0.5, "image_std": 0.5}"#).unwrap();
    assert_eq!(vit.interpolation, Interpolation::Bilinear);
}

/// transformers 5's `ConvNextImageProcessor` center-crops after its resize when
/// `do_center_crop` is true (it was ignored here, so the inputs kept the resize's size): at 384
/// and above after the square resize; below, after crop_pct's crop, which is reproduced only
/// when the two crops are one.
#[test]
fn a_convnext_center_crop_is_applied_or_refused() {
    let crop = |size: u32, crop: &str| {
        read(&format!(
            r#"{{{CONVNEXT}, "size": {{"shortest_edge": {size}}}, "do_center_crop": true{crop}}}"#
        ))
    };
    let square = crop(384, r#", "crop_size": {"height": 320, "width": 320}"#).unwrap();
    assert_eq!(square.resize, Some(Resize::Exact(384, 384)));
    assert_eq!(square.crop, Some(320));
    assert_eq!(square.crop_rounding, CropRounding::Floor);
    let same = crop(64, r#", "crop_size": 64"#).unwrap();
    assert_eq!(
        (same.resize, same.crop),
        (Some(Resize::ShortSide(73)), Some(64))
    );
    for (size, extra, key) in [
        (64, r#", "crop_size": 50"#, "do_center_crop crops 50"),
        (64, "", "no crop_size"),
        (384, "", "no crop_size"),
    ] {
        let err = crop(size, extra).unwrap_err();
        assert!(err.contains(key), "{size} {extra}: {err}");
    }
}
