//! `preprocessor_config.json` files that transformers' own processors read differently from
//! their common spelling: each is read as `ViTImageProcessor` / `ConvNextImageProcessor`
//! (transformers 5.24, PIL backend) reads it, or refused, naming the key.

use soup_eval::transform::{Interpolation, Resize, Transform};

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
