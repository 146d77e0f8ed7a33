//! Preprocessing parity: soup-eval's decode + resize + crop + normalise against torchvision's
//! ImageNet preset on real photographs (fixtures/vision/photos, from scikit-image's data
//! module; fixtures/vision/make_preprocess_fixtures.py wrote torchvision's tensors).
//!
//! PNG decoding is exact and the resize does PIL's integer arithmetic, so PNGs must match to
//! float rounding. JPEG decoders differ (zune-jpeg here, libjpeg-turbo in Pillow) by a level
//! or two per pixel; the bound below allows that, and the top-1 check shows it doesn't change a
//! prediction.

use std::path::{Path, PathBuf};

use model_soup::format::Checkpoint;
use soup_eval::arch::{Options, Selection};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::images::{load, ImageList, LoadOptions};
use soup_eval::score::argmax;
use soup_eval::weights::Weights;

fn vision(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vision")).join(name)
}

/// rocket-tall.png is more than twice as tall as wide, which Pillow 13 resizes vertical pass
/// first (the others horizontal first).
const PHOTOS: &[&str] = &[
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "rocket-tall.png",
    "rocket.jpg",
];

/// One normalised step (1/255 divided by the smallest std) in value units.
const LEVEL: f32 = 1.0 / 255.0 / 0.224;

/// The photographs `names`, as a list of images of class 0.
fn photos(names: &[&str]) -> ImageList {
    ImageList {
        entries: names
            .iter()
            .map(|p| (vision(&format!("photos/{p}")), 0))
            .collect(),
        classes: None,
    }
}

/// Ours and torchvision's inputs, [photos, 3, 224, 224] each.
fn both() -> (Vec<f32>, Vec<f32>) {
    let list = photos(PHOTOS);
    let loaded = load(&list, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.sample_shape, [3, 224, 224]);
    let ours = match loaded.samples {
        soup_eval::images::Samples::Memory(v) => v,
        soup_eval::images::Samples::Cache(_) => panic!("five photos fit in memory"),
    };
    let reference = Checkpoint::open(&vision("preprocess.safetensors")).unwrap();
    let mut theirs = Vec::new();
    for p in PHOTOS {
        let t = reference.tensor(p).unwrap();
        assert_eq!(t.info.shape, [3, 224, 224]);
        theirs.extend(
            t.data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
        );
    }
    (ours, theirs)
}

#[test]
fn our_transform_matches_torchvisions_on_real_photographs() {
    let (ours, theirs) = both();
    let per = 3 * 224 * 224;
    for (i, photo) in PHOTOS.iter().enumerate() {
        let a = &ours[i * per..(i + 1) * per];
        let b = &theirs[i * per..(i + 1) * per];
        let diffs: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
        let max = diffs.iter().fold(0f32, |m, &d| m.max(d));
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / per as f64;
        let off = diffs.iter().filter(|&&d| d > 1e-5).count();
        eprintln!(
            "{photo}: max |ours - torchvision| = {max:.3e} ({:.2} levels), mean {mean:.3e}, values differing {off}/{per}",
            max / LEVEL
        );
        if photo.ends_with(".png") {
            assert!(max <= 1e-6, "{photo}: max difference {max}");
        } else {
            assert!(max <= 8.0 * LEVEL, "{photo}: max difference {max}");
            assert!(
                mean <= 0.5 * LEVEL as f64,
                "{photo}: mean difference {mean}"
            );
        }
    }
}

#[test]
fn a_fixture_model_predicts_the_same_class_from_both() {
    let (ours, theirs) = both();
    let weights = Checkpoint::open(&vision("resnet-basic.safetensors")).unwrap();
    let model = Selection::parse("resnet")
        .unwrap()
        .configure(&weights, &Options::default())
        .unwrap();
    let evaluator = Evaluator::new(model.clone(), candle_core::Device::Cpu, 4);
    let w = Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap();
    let classes = model.output().width();
    let n = PHOTOS.len();
    let run = |inputs: Vec<f32>| {
        let data = Dataset::in_memory(PathBuf::new(), inputs, vec![3, 224, 224], vec![0; n]);
        evaluator.logits(&w, &data).unwrap()
    };
    let (a, b) = (run(ours), run(theirs));
    for (i, photo) in PHOTOS.iter().enumerate() {
        let (ra, rb) = (&a[i * classes..][..classes], &b[i * classes..][..classes]);
        assert_eq!(argmax(ra), argmax(rb), "{photo}: {ra:?} vs {rb:?}");
    }
}

#[test]
fn the_disk_cache_holds_the_same_inputs() {
    let list = photos(PHOTOS);
    let memory = load(&list, &LoadOptions::default()).unwrap();
    let options = LoadOptions {
        memory_limit: 1,
        ..LoadOptions::default()
    };
    let cached = load(&list, &options).unwrap();
    let (soup_eval::images::Samples::Memory(values), soup_eval::images::Samples::Cache(file)) =
        (&memory.samples, &cached.samples)
    else {
        panic!("one split in memory, the other in a cache file");
    };
    let per = 3 * 224 * 224;
    assert_eq!(file.read(per, 2 * per).unwrap(), values[per..3 * per]);
    assert!(
        file.read((PHOTOS.len() - 1) * per, 2 * per).is_err(),
        "reading past the end must fail"
    );
}

/// The photos whose pixels make_preprocess_fixtures.py stored for every other pipeline.
const COLOUR_PNGS: &[&str] = &["chelsea.png", "coffee.png", "rocket-tall.png"];

/// Our 8-bit levels (before normalisation) of [`COLOUR_PNGS`] under `transform`.
fn levels(transform: soup_eval::transform::Transform) -> Vec<Vec<u8>> {
    let list = photos(COLOUR_PNGS);
    let options = LoadOptions {
        transform: soup_eval::transform::Transform {
            normalize: None,
            ..transform
        },
        ..LoadOptions::default()
    };
    let loaded = load(&list, &options).unwrap();
    let soup_eval::images::Samples::Memory(values) = loaded.samples else {
        panic!("in memory")
    };
    values
        .chunks(3 * 224 * 224)
        .map(|c| c.iter().map(|v| (v * 255.0).round() as u8).collect())
        .collect()
}

/// torchvision's bicubic preset (EfficientNet's) and Hugging Face's ViT and ConvNeXt image
/// processors, read from their own `preprocessor_config.json`: exactly the same pixels as
/// theirs (make_preprocess_fixtures.py stored their 8-bit levels), a portrait more than twice
/// as tall as wide among them.
#[test]
fn bicubic_and_hugging_face_processors_give_their_pixels() {
    use soup_eval::transform::{Interpolation, Resize, Transform};
    let processor = |name: &str| {
        soup_eval::preprocessor::read(&vision(&format!("processors/{name}")))
            .unwrap()
            .expect("a preprocessor_config.json")
    };
    let bicubic = Transform {
        resize: Some(Resize::ShortSide(256)),
        interpolation: Interpolation::Bicubic,
        ..Transform::default()
    };
    let reference = Checkpoint::open(&vision("preprocess.safetensors")).unwrap();
    for (key, transform) in [
        ("bicubic", bicubic),
        ("hf-vit", processor("vit")),
        ("hf-convnext", processor("convnext")),
    ] {
        for (photo, ours) in COLOUR_PNGS.iter().zip(levels(transform.clone())) {
            let theirs = reference.tensor(&format!("{key}/{photo}")).unwrap();
            assert_eq!(theirs.info.shape, [3, 224, 224]);
            let diffs: Vec<u8> = ours
                .iter()
                .zip(theirs.data)
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let max = diffs.iter().max().copied().unwrap_or(0);
            let off = diffs.iter().filter(|&&d| d > 0).count();
            eprintln!("{key}/{photo}: max {max} levels, {off} values differ");
            assert_eq!(max, 0, "{key}/{photo}: {off} values differ");
        }
    }
}
