//! Decoding parity: every small image in fixtures/vision/decode (PNGs of each colour type and
//! bit depth, with and without transparency, interlaced; colour, grey, CMYK, progressive and
//! EXIF-rotated JPEGs) gives the 8-bit RGB pixels that torchvision's `ImageFolder` loads
//! (`PIL.Image.open(path).convert("RGB")`, stored by make_decode_fixtures.py), and the files
//! Pillow refuses (truncated JPEGs) are refused, not scored.

use std::path::{Path, PathBuf};

use model_soup::format::Checkpoint;
use soup_eval::images::{load, ImageList, LoadOptions, Samples};
use soup_eval::transform::Transform;

fn vision(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vision")).join(name)
}

/// `name`'s 8-bit levels [3, H, W] with no resize, crop or normalisation, or the error.
fn decoded(name: &str) -> Result<(Vec<usize>, Vec<u8>), String> {
    let list = ImageList {
        entries: vec![(vision(&format!("decode/{name}")), 0)],
        classes: None,
    };
    let options = LoadOptions {
        transform: Transform {
            resize: None,
            crop: None,
            normalize: None,
            ..Transform::default()
        },
        ..LoadOptions::default()
    };
    let loaded = load(&list, &options).map_err(|e| e.to_string())?;
    let Samples::Memory(values) = loaded.samples else {
        panic!("one small image is in memory")
    };
    let levels = values.iter().map(|v| (v * 255.0).round() as u8).collect();
    Ok((loaded.sample_shape, levels))
}

/// Largest difference a JPEG may show: zune-jpeg and Pillow's libjpeg-turbo round their
/// chroma upsampling differently (README, "Preprocessing parity").
const JPEG_LEVELS: u8 = 4;

#[test]
fn every_image_gives_the_pixels_pillow_gives_imagefolder() {
    let reference = Checkpoint::open(&vision("decode.safetensors")).unwrap();
    let mut names: Vec<String> = reference.tensors().map(|t| t.name().to_string()).collect();
    names.sort();
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        let theirs = reference.tensor(name).unwrap();
        let [h, w, 3] = theirs.info.shape[..] else {
            panic!("{name}: {:?}", theirs.info.shape)
        };
        let (h, w) = (h as usize, w as usize);
        let (shape, ours) = decoded(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(shape, [3, h, w], "{name}");
        let plane = h * w;
        let mut max = 0u8;
        let mut off = 0;
        for (i, &b) in theirs.data.iter().enumerate() {
            let (pixel, c) = (i / 3, i % 3);
            let d = ours[c * plane + pixel].abs_diff(b);
            max = max.max(d);
            off += usize::from(d > 0);
        }
        eprintln!(
            "{name}: max {max} levels, {off}/{} values differ",
            3 * plane
        );
        let allowed = if name.ends_with(".jpg") {
            JPEG_LEVELS
        } else {
            0
        };
        assert!(
            max <= allowed,
            "{name}: {off} values differ from Pillow's, by up to {max} levels"
        );
    }
}

#[test]
fn images_pillow_refuses_are_refused() {
    let reference = Checkpoint::open(&vision("decode.safetensors")).unwrap();
    let refused = &reference.metadata()["refused"];
    let refused: Vec<&str> = refused.split(',').collect();
    assert_eq!(
        refused,
        [
            "no_end_marker.jpg",
            "truncated.jpg",
            "truncated_marker_inside.jpg"
        ]
    );
    for name in refused {
        let err = match decoded(name) {
            Ok((shape, _)) => panic!("{name}: decoded as {shape:?}, but Pillow refuses it"),
            Err(e) => e,
        };
        assert!(
            err.contains(name) && err.contains("truncated"),
            "{name}: {err}"
        );
    }
}
