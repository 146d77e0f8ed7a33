//! Parity with PyTorch: candle's logits for tiny torchvision models (fixtures/vision, made by
//! make_vision_fixtures.py with torchvision's own classes) against PyTorch's eval-mode logits.
//!
//! Tolerance, in f32: every logit within 1e-4 of the largest PyTorch logit's magnitude.

use std::path::{Path, PathBuf};

use model_soup::format::Checkpoint;
use soup_eval::arch::{Options, Selection};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::weights::{check_fits, Weights};

/// Relative tolerance on f32 logits.
const TOLERANCE: f32 = 1e-4;

/// How far `--eval-dtype f16` logits may lie from PyTorch's f32 ones, relative to the largest
/// (the worst fixture, densenet-small, measured 1.8e-3 on the CPU).
const F16_TOLERANCE: f32 = 1e-2;

/// Cases whose own conditioning needs a looser f16 bound, with the bound. The mnasnet fixture's
/// logits cancel heavily (1280 pooled features into 5 classes): PyTorch itself, on the CPU, is
/// 5.8e-6 from a float64 forward pass in f32 and 2.6e-2 in f16 (measured with torch 2.15).
const F16_LOOSER: &[(&str, f32)] = &[("mnasnet", 5e-2)];

/// Every case the generator makes, with the family it belongs to and the description
/// `--arch auto` must give.
const CASES: &[(&str, &str, &str)] = &[
    (
        "resnet-basic",
        "resnet",
        "resnet (basic blocks 2-1-1-1, widths 8-16-32-64, groups 1, 5 classes)",
    ),
    (
        "resnet-bottleneck",
        "resnet",
        "resnet (bottleneck blocks 1-2-1-1, widths 8-16-32-64, groups 1, 7 classes)",
    ),
    (
        "resnext",
        "resnet",
        "resnet (bottleneck blocks 1-1-1-1, widths 16-32-64-128, groups 4, 6 classes)",
    ),
    (
        "wide-resnet",
        "resnet",
        "resnet (bottleneck blocks 1-1-1-1, widths 16-32-64-128, groups 1, 5 classes)",
    ),
    (
        "densenet-small",
        "densenet",
        "densenet (growth 8, blocks 2-2-2, 16 initial features, bottleneck 32, 5 classes)",
    ),
    (
        "densenet-4blocks",
        "densenet",
        "densenet (growth 6, blocks 1-2-3-1, 12 initial features, bottleneck 12, 10 classes)",
    ),
    (
        "vgg",
        "vgg",
        "vgg (8 M 16 M 16 16 M, classifier 32-24, 5 classes)",
    ),
    (
        "vgg-bn",
        "vgg",
        "vgg_bn (8 8 M 16 M 24 M, classifier 16-16, 6 classes)",
    ),
    (
        "vit",
        "vit",
        "vit (patch 8, image 32, 2 layers, width 64, mlp 96, 1 heads, 6 classes)",
    ),
    (
        "vit-heads3-repr",
        "vit",
        "vit (patch 6, image 24, 3 layers, width 48, mlp 64, 3 heads, 5 classes)",
    ),
    (
        "convnext",
        "convnext",
        "convnext (widths 16-32-48, depths 1-2-1, 5 classes)",
    ),
    (
        "efficientnet",
        "efficientnet",
        "efficientnet (stem 8, stages 1x8 1x8 1x16 2x24 2x32 2x48 1x80, head 320, 5 classes)",
    ),
    (
        "efficientnet-3stages-eps",
        "efficientnet",
        "efficientnet (stem 8, stages 1x8 2x16 1x24, head 96, 6 classes)",
    ),
    (
        "mobilenet-v2",
        "mobilenet_v2",
        "mobilenet_v2 (stem 8, blocks 8-8-8-8-8-8-16-16-16-16-24-24-24-40-40-40-80, last 1280, 5 classes)",
    ),
    (
        "mobilenet-v2-custom",
        "mobilenet_v2",
        "mobilenet_v2 (stem 32, blocks 8-16-16-24, last 1280, 4 classes)",
    ),
    (
        "mobilenet-v3-small",
        "mobilenet_v3",
        "mobilenet_v3 (stem 8, blocks 8se-8-8-16sehs-16sehs-16sehs-16sehs-16sehs-24sehs-24sehs-24sehs, last 144, hidden 256, 5 classes)",
    ),
    (
        "mobilenet-v3-large",
        "mobilenet_v3",
        "mobilenet_v3 (stem 8, blocks 8-8-8-16se-16se-16se-24hs-24hs-24hs-24hs-32sehs-32sehs-24sehs-24sehs-24sehs, last 144, hidden 160, 6 classes)",
    ),
    (
        "mobilenet-v3-custom",
        "mobilenet_v3",
        "mobilenet_v3 (stem 16, blocks 16se-24hs-24sehs, last 144, hidden 40, 4 classes)",
    ),
    (
        "mnasnet",
        "mnasnet",
        "mnasnet (stem 8-8, stacks 3x8 3x16 3x24 2x24 4x48 1x80, last 1280, 5 classes)",
    ),
];

fn vision(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vision")).join(name)
}

/// f32 values of one tensor of a safetensors file, with its shape.
fn read_f32(file: &Checkpoint, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = file.tensor(name).unwrap_or_else(|| panic!("no '{name}'"));
    let shape = t.info.shape.iter().map(|&d| d as usize).collect();
    let values = t
        .data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (shape, values)
}

/// The `--arch-option`s the generator recorded for a case (settings not in the shapes).
fn options(weights: &Checkpoint) -> Options {
    let given: Vec<String> = weights
        .metadata()
        .get("arch_options")
        .map(|o| o.split(' ').map(str::to_string).collect())
        .unwrap_or_default();
    Options::parse(&given).unwrap()
}

/// candle's logits and PyTorch's for one case, configured with `--arch arch`.
fn logits(case: &str, arch: &str) -> (String, Vec<f32>, Vec<f32>) {
    let weights = Checkpoint::open(&vision(&format!("{case}.safetensors"))).unwrap();
    let io = Checkpoint::open(&vision(&format!("{case}.io.safetensors"))).unwrap();
    let model = Selection::parse(arch)
        .unwrap()
        .configure(&weights, &options(&weights))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    check_fits(&weights, &*model).unwrap_or_else(|e| panic!("{case}: {e}"));
    let (shape, inputs) = read_f32(&io, "inputs");
    let (_, expected) = read_f32(&io, "logits");
    let data = Dataset::in_memory(vision(case), inputs, shape[1..].to_vec(), vec![0; shape[0]]);
    let evaluator = Evaluator::new(model.clone(), candle_core::Device::Cpu, 2);
    let got = evaluator
        .logits(
            &Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap(),
            &data,
        )
        .unwrap();
    (model.describe(), got, expected)
}

fn assert_close(case: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{case}: logit count");
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "{case}: PyTorch's logits are all zero");
    let worst = got
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!(
        "{case}: max |candle - torch| / max |torch| = {:.2e}",
        worst / scale
    );
    assert!(
        worst <= TOLERANCE * scale,
        "{case}: max |candle - torch| = {worst:e}, more than {TOLERANCE:e} x {scale}"
    );
}

#[test]
fn candle_matches_pytorch_on_every_vision_fixture() {
    for (case, family, description) in CASES {
        let (described, got, expected) = logits(case, family);
        eprintln!("{case}: {described}");
        assert_eq!(&described, description, "{case}");
        assert_close(case, &got, &expected);
    }
}

#[test]
fn auto_detects_each_fixture_family() {
    for (case, family, _) in CASES {
        let weights = Checkpoint::open(&vision(&format!("{case}.safetensors"))).unwrap();
        assert_eq!(
            weights.metadata().get("family").map(String::as_str),
            Some(*family),
            "{case}: generator metadata"
        );
        let model = Selection::parse("auto")
            .unwrap()
            .configure(&weights, &options(&weights))
            .unwrap();
        assert_eq!(model.family(), *family, "{case}");
    }
}

#[test]
fn the_comparison_can_fail() {
    // A perturbed weight must move the logits beyond the tolerance, or the test proves nothing.
    let case = "densenet-small";
    let (_, _, expected) = logits(case, "densenet");
    let mut moved = expected.clone();
    moved[0] += 2.0 * TOLERANCE * expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    let result = std::panic::catch_unwind(|| assert_close(case, &moved, &expected));
    assert!(result.is_err());
}

#[test]
fn a_standard_variant_name_is_checked_against_the_checkpoint() {
    let weights = Checkpoint::open(&vision("densenet-small.safetensors")).unwrap();
    let err = Selection::parse("densenet121")
        .unwrap()
        .configure(&weights, &Options::default())
        .err()
        .expect("a tiny densenet is not densenet121")
        .to_string();
    assert!(
        err.contains("densenet121") && err.contains("growth 8") && err.contains("--arch densenet"),
        "{err}"
    );
}

#[test]
fn a_vit_with_other_heads_needs_the_option_and_differs_without_it() {
    // The shapes can't tell 3 heads of 16 from 1 head of 48 (width / 64 rounds to 0, so 1):
    // without --arch-option heads=3 the model builds, but computes something else.
    let weights = Checkpoint::open(&vision("vit-heads3-repr.safetensors")).unwrap();
    let model = Selection::parse("vit")
        .unwrap()
        .configure(&weights, &Options::default())
        .unwrap();
    assert!(model.describe().contains("1 heads"), "{}", model.describe());
    let io = Checkpoint::open(&vision("vit-heads3-repr.io.safetensors")).unwrap();
    let (shape, inputs) = read_f32(&io, "inputs");
    let (_, expected) = read_f32(&io, "logits");
    let data = Dataset::in_memory(vision("x"), inputs, shape[1..].to_vec(), vec![0; shape[0]]);
    let got = Evaluator::new(model, candle_core::Device::Cpu, 4)
        .logits(
            &Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap(),
            &data,
        )
        .unwrap();
    let result = std::panic::catch_unwind(|| assert_close("one head", &got, &expected));
    assert!(result.is_err(), "one head matched PyTorch's three");
    let bad = Options::parse(&["heads=5".to_string()]).unwrap();
    let err = Selection::parse("vit")
        .unwrap()
        .configure(&weights, &bad)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("heads") && err.contains("48"), "{err}");
}

#[test]
fn an_efficientnet_of_other_stages_needs_its_strides() {
    let weights = Checkpoint::open(&vision("efficientnet-3stages-eps.safetensors")).unwrap();
    let err = Selection::parse("efficientnet")
        .unwrap()
        .configure(&weights, &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("strides") && err.contains("3 stages"), "{err}");
}

/// `--eval-dtype f16` and the GPU's way of feeding inputs (the whole split uploaded once,
/// [`Evaluator::upload`] and [`Evaluator::logits_on`]), run on the CPU for every family.
#[test]
fn every_family_runs_in_f16_and_on_uploaded_inputs() {
    for (case, family, _) in CASES {
        let weights = Checkpoint::open(&vision(&format!("{case}.safetensors"))).unwrap();
        let io = Checkpoint::open(&vision(&format!("{case}.io.safetensors"))).unwrap();
        let model = Selection::parse(family)
            .unwrap()
            .configure(&weights, &options(&weights))
            .unwrap();
        let (shape, inputs) = read_f32(&io, "inputs");
        let (_, expected) = read_f32(&io, "logits");
        let data = Dataset::in_memory(vision(case), inputs, shape[1..].to_vec(), vec![0; shape[0]]);
        let w = Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap();
        let mut evaluator = Evaluator::new(model.clone(), candle_core::Device::Cpu, 2);
        // Uploaded inputs give the same bits as batch-by-batch reads.
        let batched = evaluator.logits(&w, &data).unwrap();
        let uploaded = evaluator
            .logits_on(&w, &data, &evaluator.upload(&data).unwrap())
            .unwrap();
        assert!(
            batched
                .iter()
                .map(|x| x.to_bits())
                .eq(uploaded.iter().map(|x| x.to_bits())),
            "{case}: uploaded inputs changed the logits"
        );
        evaluator.dtype = candle_core::DType::F16;
        let f16 = evaluator
            .logits_on(&w, &data, &evaluator.upload(&data).unwrap())
            .unwrap_or_else(|e| panic!("{case} in f16: {e}"));
        let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = f16
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        eprintln!("{case}: f16 max |candle - torch| / max |torch| = {worst:.2e}");
        // f16 keeps 11 bits: a few rounding steps per layer, and it really is coarser than f32.
        let bound = F16_LOOSER
            .iter()
            .find(|(c, _)| c == case)
            .map_or(F16_TOLERANCE, |b| b.1);
        assert!(
            worst <= bound,
            "{case}: f16 is {worst:e} from PyTorch's f32"
        );
        assert!(
            worst > TOLERANCE,
            "{case}: f16 {worst:e} is as close as f32, so the dtype did not reach the model"
        );
    }
}

#[test]
fn a_mobilenet_v3_of_other_blocks_needs_strides_and_activations_and_they_matter() {
    let weights = Checkpoint::open(&vision("mobilenet-v3-custom.safetensors")).unwrap();
    let err = Selection::parse("mobilenet_v3")
        .unwrap()
        .configure(&weights, &Options::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("strides") && err.contains("activations") && err.contains("3 blocks"),
        "{err}"
    );
    // The recorded options with one activation changed: the model builds, and computes
    // something else (the shapes can't tell ReLU from hardswish).
    let io = Checkpoint::open(&vision("mobilenet-v3-custom.io.safetensors")).unwrap();
    let (shape, inputs) = read_f32(&io, "inputs");
    let (_, expected) = read_f32(&io, "logits");
    for changed in [
        "activations=hardswish,hardswish,hardswish",
        "dilations=1,1,1",
    ] {
        let mut given: Vec<String> = weights.metadata()["arch_options"]
            .split(' ')
            .filter(|o| o.split('=').next() != changed.split('=').next())
            .map(str::to_string)
            .collect();
        given.push(changed.to_string());
        let model = Selection::parse("mobilenet_v3")
            .unwrap()
            .configure(&weights, &Options::parse(&given).unwrap())
            .unwrap();
        let data = Dataset::in_memory(
            vision("x"),
            inputs.clone(),
            shape[1..].to_vec(),
            vec![0; shape[0]],
        );
        let got = Evaluator::new(model, candle_core::Device::Cpu, 4)
            .logits(
                &Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap(),
                &data,
            )
            .unwrap();
        let result = std::panic::catch_unwind(|| assert_close(changed, &got, &expected));
        assert!(result.is_err(), "{changed} matched PyTorch's model");
    }
}

#[test]
fn a_tiny_mnasnet_is_no_standard_variant() {
    let weights = Checkpoint::open(&vision("mnasnet.safetensors")).unwrap();
    let err = Selection::parse("mnasnet1_0")
        .unwrap()
        .configure(&weights, &Options::default())
        .err()
        .expect("MNASNet(0.25) is not mnasnet1_0")
        .to_string();
    assert!(
        err.contains("mnasnet1_0") && err.contains("stem 8-8"),
        "{err}"
    );
}

/// Each fully convolutional fixture runs at the smallest input it claims, and candle can't run
/// it one pixel smaller (an error, or a panic for a 0-sized map): the bound in the up-front
/// refusal is exact, neither stricter than the model nor looser.
#[test]
fn each_family_runs_at_its_smallest_input_and_not_below() {
    let directories = [
        ("hf-convnext", "hf_convnext"),
        ("hf-convnext-noscale", "hf_convnext"),
    ];
    let files = CASES
        .iter()
        .map(|(case, family, _)| (format!("{case}.safetensors"), *family));
    let all = files.chain(directories.iter().map(|(d, f)| (d.to_string(), *f)));
    let mut bounded = 0;
    for (name, family) in all {
        let weights = Checkpoint::open(&vision(&name)).unwrap();
        let model = Selection::parse(family)
            .unwrap()
            .configure(&weights, &options(&weights))
            .unwrap();
        let soup_eval::arch::Input::Image(shape) = model.input() else {
            panic!("{name}: an image model")
        };
        if shape.size.is_some() {
            continue;
        }
        let w = Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap();
        let evaluator = Evaluator::new(model.clone(), candle_core::Device::Cpu, 1);
        let c = shape.channels;
        let run = |side: usize| {
            let data = Dataset::in_memory(
                vision(&name),
                vec![0.5; c * side * side],
                vec![c, side, side],
                vec![0],
            );
            evaluator.logits(&w, &data)
        };
        let min = shape.min;
        run(min).unwrap_or_else(|e| panic!("{name}: fails at its smallest input {min}: {e}"));
        assert!(shape.accepts(&[c, min, min + 3]), "{name}");
        if min > 1 {
            bounded += 1;
            assert!(!shape.accepts(&[c, min - 1, min]), "{name}");
            let below = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(min - 1)));
            assert!(
                !matches!(below, Ok(Ok(_))),
                "{name}: runs at {}, below its smallest input {min}",
                min - 1
            );
        }
    }
    // convnext, densenet x2, vgg x2, hf-convnext x2.
    assert_eq!(bounded, 7);
}
