//! Hugging Face vision classifiers: tiny `ViTForImageClassification` and
//! `ConvNextForImageClassification` model directories (fixtures/vision/hf-*, saved with
//! transformers' own `save_pretrained` by make_vision_fixtures.py) against PyTorch's logits;
//! scored through the soup-eval binary on an image folder with the normalisation their
//! `preprocessor_config.json` names; and their `config.json` given wrong.
//!
//! Tolerance, in f32: every logit within 1e-4 of the largest PyTorch logit's magnitude.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use model_soup::format::Checkpoint;
use serde_json::Value;
use soup_eval::arch::{Options, Selection};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::weights::{check_fits, Weights};

const TOLERANCE: f32 = 1e-4;

/// f16 against PyTorch's f32, relative to the largest logit.
const F16_TOLERANCE: f32 = 1e-2;

/// Case, family, the description `--arch auto` must give.
const CASES: &[(&str, &str, &str)] = &[
    (
        "hf-vit",
        "hf_vit",
        "hf_vit (patch 8, image 32x32, 2 layers, hidden 48, intermediate 96, 3 heads, 10 classes)",
    ),
    (
        "hf-vit-nobias",
        "hf_vit",
        "hf_vit (patch 6, image 24x24, 1 layers, hidden 32, intermediate 40, 2 heads, 5 classes)",
    ),
    (
        "hf-convnext",
        "hf_convnext",
        "hf_convnext (patch 4, widths 8-16-24, depths 1-2-1, 10 classes)",
    ),
    (
        "hf-convnext-noscale",
        "hf_convnext",
        "hf_convnext (patch 2, widths 8-16, depths 2-1, 4 classes)",
    ),
];

fn vision(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/vision")).join(name)
}

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

/// candle's logits for the model at `model` (directory or file) on `case`'s inputs, in
/// `dtype`, with PyTorch's, and the description.
fn logits(
    model: &Path,
    case: &str,
    arch: &str,
    options: &[&str],
    dtype: candle_core::DType,
) -> (String, Vec<f32>, Vec<f32>) {
    let weights = Checkpoint::open(model).unwrap();
    let io = Checkpoint::open(&vision(&format!("{case}.io.safetensors"))).unwrap();
    let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
    let arch = Selection::parse(arch)
        .unwrap()
        .configure(&weights, &Options::parse(&options).unwrap())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    check_fits(&weights, &*arch).unwrap_or_else(|e| panic!("{case}: {e}"));
    let (shape, inputs) = read_f32(&io, "inputs");
    let (_, expected) = read_f32(&io, "logits");
    let data = Dataset::in_memory(vision(case), inputs, shape[1..].to_vec(), vec![0; shape[0]]);
    let mut evaluator = Evaluator::new(arch.clone(), candle_core::Device::Cpu, 2);
    evaluator.dtype = dtype;
    let got = evaluator
        .logits(
            &Weights::from_checkpoint(&weights, &candle_core::Device::Cpu).unwrap(),
            &data,
        )
        .unwrap();
    (arch.describe(), got, expected)
}

/// max |got - expected| / max |expected|.
fn relative(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0);
    got.iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn candle_matches_transformers_on_every_model_directory() {
    for (case, family, description) in CASES {
        for arch in ["auto", family] {
            let (described, got, expected) =
                logits(&vision(case), case, arch, &[], candle_core::DType::F32);
            assert_eq!(&described, description, "{case} --arch {arch}");
            let worst = relative(&got, &expected);
            eprintln!("{case}: max |candle - torch| / max |torch| = {worst:.2e}");
            assert!(worst <= TOLERANCE, "{case}: {worst:e}");
            // The comparison can fail: one logit moved by twice the tolerance.
            let mut moved = got.clone();
            moved[0] += 2.0 * TOLERANCE * expected.iter().fold(0f32, |m, x| m.max(x.abs()));
            assert!(relative(&moved, &expected) > TOLERANCE);
        }
    }
}

#[test]
fn every_model_directory_runs_in_f16() {
    for (case, family, _) in CASES {
        let (_, got, expected) = logits(&vision(case), case, family, &[], candle_core::DType::F16);
        let worst = relative(&got, &expected);
        eprintln!("{case}: f16 max |candle - torch| / max |torch| = {worst:.2e}");
        assert!(worst <= F16_TOLERANCE, "{case}: f16 {worst:e}");
        assert!(worst > TOLERANCE, "{case}: f16 as close as f32");
    }
}

/// A copy of a fixture's model directory in `dir`, with `edit` applied to its config.json
/// (`None`: no config.json at all).
fn copy_model(dir: &Path, case: &str, edit: Option<&dyn Fn(&mut Value)>) -> PathBuf {
    let to = dir.join(case);
    std::fs::create_dir_all(&to).unwrap();
    std::fs::copy(
        vision(case).join("model.safetensors"),
        to.join("model.safetensors"),
    )
    .unwrap();
    if let Some(edit) = edit {
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(vision(case).join("config.json")).unwrap())
                .unwrap();
        edit(&mut config);
        std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    }
    to
}

#[test]
fn without_config_json_the_shapes_and_transformers_defaults_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    // ConvNeXt: everything is in the shapes (and the default final eps, 1e-12, is this one's).
    let model = copy_model(dir.path(), "hf-convnext", None);
    let (described, got, expected) =
        logits(&model, "hf-convnext", "auto", &[], candle_core::DType::F32);
    assert_eq!(described, CASES[2].2);
    assert!(relative(&got, &expected) <= TOLERANCE);
    // ViT: the heads are not in the shapes; with the option it is the model again.
    let model = copy_model(dir.path(), "hf-vit", None);
    let (described, got, expected) = logits(
        &model,
        "hf-vit",
        "auto",
        &["heads=3"],
        candle_core::DType::F32,
    );
    assert_eq!(described, CASES[0].2);
    assert!(relative(&got, &expected) <= TOLERANCE);
    let (described, got, expected) =
        logits(&model, "hf-vit", "hf_vit", &[], candle_core::DType::F32);
    assert!(described.contains("1 heads"), "{described}");
    assert!(
        relative(&got, &expected) > TOLERANCE,
        "one head matched three"
    );
}

#[test]
fn config_json_given_wrong_is_an_error_naming_the_key_or_tensor() {
    let dir = tempfile::tempdir().unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    // Case, family, the edit, what the error must say.
    let cases: Vec<(&str, &str, Edit, Vec<&str>)> = vec![
        (
            "hf-vit",
            "hf_vit",
            Box::new(|c| c["hidden_act"] = "mish".into()),
            vec!["config.json:hidden_act", "mish", "gelu"],
        ),
        (
            "hf-vit",
            "hf_vit",
            Box::new(|c| c["num_attention_heads"] = 5.into()),
            vec!["num_attention_heads", "48"],
        ),
        (
            "hf-vit",
            "hf_vit",
            Box::new(|c| c["image_size"] = 20.into()),
            vec!["image_size", "patch size 8"],
        ),
        (
            "hf-vit",
            "hf_vit",
            Box::new(|c| c["hidden_size"] = "wide".into()),
            vec!["config.json:hidden_size", "positive integer"],
        ),
        (
            "hf-convnext",
            "hf_convnext",
            Box::new(|c| c["num_stages"] = 4.into()),
            vec!["num_stages", "hidden_sizes has 3"],
        ),
    ];
    for (i, (case, family, edit, expect)) in cases.iter().enumerate() {
        let model = copy_model(&dir.path().join(i.to_string()), case, Some(&**edit));
        let weights = Checkpoint::open(&model).unwrap();
        let err = Selection::parse(family)
            .unwrap()
            .configure(&weights, &Options::default())
            .err()
            .unwrap_or_else(|| panic!("case {i} configured"))
            .to_string();
        for e in expect {
            assert!(err.contains(e), "case {i}: {err}");
        }
        assert!(err.contains(family), "case {i}: {err}");
    }
    // A config.json that disagrees with the tensors: configured, then refused by the check,
    // naming the tensor.
    let model = copy_model(
        &dir.path().join("depth"),
        "hf-vit",
        Some(&|c: &mut Value| c["num_hidden_layers"] = 3.into()),
    );
    let weights = Checkpoint::open(&model).unwrap();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&weights, &Options::default())
        .unwrap();
    let err = check_fits(&weights, &*arch).unwrap_err().to_string();
    assert!(err.contains("vit.encoder.layer.2"), "{err}");
    // A config.json for another class is not detected as a classifier.
    let model = copy_model(
        &dir.path().join("other"),
        "hf-vit",
        Some(&|c: &mut Value| c["architectures"] = serde_json::json!(["ViTModel"])),
    );
    assert!(Selection::parse("auto")
        .unwrap()
        .configure(&Checkpoint::open(&model).unwrap(), &Options::default())
        .is_err());
}

/// `--resize/--crop/--mean/--std` from a model directory's `preprocessor_config.json`, as the
/// README tells a user to pass them.
fn processor_flags(dir: &Path) -> Vec<String> {
    let p: Value =
        serde_json::from_slice(&std::fs::read(dir.join("preprocessor_config.json")).unwrap())
            .unwrap();
    let size = &p["size"];
    let side = size["height"]
        .as_u64()
        .or(size["shortest_edge"].as_u64())
        .unwrap();
    let triple = |k: &str| {
        p[k].as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        "--resize".into(),
        side.to_string(),
        "--crop".into(),
        side.to_string(),
        "--mean".into(),
        triple("image_mean"),
        "--std".into(),
        triple("image_std"),
    ]
}

#[test]
fn soup_eval_scores_model_directories_on_an_image_folder_as_pytorch_does() {
    let val = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/digits-images/val"
    ));
    for case in ["hf-vit", "hf-convnext"] {
        let model = vision(case);
        let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--val"])
            .arg(val)
            .arg(&model)
            .args(processor_flags(&model))
            .output()
            .unwrap();
        assert!(out.status.success(), "{case}: {}", common::stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let meta = Checkpoint::open(&vision(&format!("{case}.io.safetensors")))
            .unwrap()
            .metadata()
            .clone();
        let score = &r["ingredients"][0]["val"];
        assert_eq!(
            score["correct"].as_u64().unwrap(),
            meta["torch_val_correct"].parse::<u64>().unwrap(),
            "{case}"
        );
        assert_eq!(score["total"], 359);
        let torch_loss: f64 = meta["torch_val_loss"].parse().unwrap();
        let loss = score["loss"].as_f64().unwrap();
        assert!(
            (loss - torch_loss).abs() < 1e-5,
            "{case}: {loss} vs {torch_loss}"
        );
        assert!(r["arch"]
            .as_str()
            .unwrap()
            .starts_with(&case.replace('-', "_")));
    }
    // Without flags, the ViT's own preprocessor_config.json (32 x 32, mean and std 0.5) is
    // what PyTorch's inputs were made with: the same loss. With torchvision's ImageNet
    // normalisation instead, the same ViT sees other inputs: the loss moves (so the flags
    // matter and the check can fail).
    let meta = Checkpoint::open(&vision("hf-vit.io.safetensors"))
        .unwrap()
        .metadata()
        .clone();
    let torch_loss: f64 = meta["torch_val_loss"].parse().unwrap();
    let loss_with = |flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--val"])
            .arg(val)
            .arg(vision("hf-vit"))
            .args(flags)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        r["ingredients"][0]["val"]["loss"].as_f64().unwrap()
    };
    let own = loss_with(&[]);
    assert!((own - torch_loss).abs() < 1e-5, "{own} vs {torch_loss}");
    let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
        .args(["score", "--json", "-q", "--val"])
        .arg(val)
        .arg(vision("hf-vit"))
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["preprocessor"].as_str(),
        Some(
            vision("hf-vit")
                .join("preprocessor_config.json")
                .to_str()
                .unwrap()
        )
    );
    let imagenet = loss_with(&["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]);
    assert!(
        (imagenet - torch_loss).abs() > 1e-5,
        "{imagenet} vs {torch_loss}"
    );
}

/// A `preprocessor_config.json` that soup-eval can't reproduce stops the run naming the file
/// and the key, unless the flags settle every step of the transform.
#[test]
fn a_preprocessor_config_it_cannot_reproduce_is_named_unless_flags_replace_it() {
    let val = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/digits-images/val"
    ));
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path(), "hf-vit", Some(&|_: &mut Value| {}));
    let path = model.join("preprocessor_config.json");
    let mut p: Value = serde_json::from_slice(
        &std::fs::read(vision("hf-vit").join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    p["resample"] = 1.into();
    std::fs::write(&path, p.to_string()).unwrap();
    let run = |flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--val"])
            .arg(val)
            .arg(&model)
            .args(flags)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("preprocessor_config.json")
            && err.contains("resample 1")
            && err.contains("--interpolation"),
        "{err}"
    );
    let out = run(&[
        "--resize",
        "32x32",
        "--interpolation",
        "bilinear",
        "--crop",
        "none",
        "--mean",
        "0.5,0.5,0.5",
        "--std",
        "0.5,0.5,0.5",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

#[test]
fn a_greedy_soup_of_model_directories_is_a_model_directory() {
    // Two ingredients (the same directory twice, under two names): greedy runs through the
    // HF family and writes a model directory that scores as the ingredient does.
    let dir = tempfile::tempdir().unwrap();
    let a = copy_model(
        &dir.path().join("a"),
        "hf-convnext",
        Some(&|_: &mut Value| {}),
    );
    let b = copy_model(
        &dir.path().join("b"),
        "hf-convnext",
        Some(&|_: &mut Value| {}),
    );
    let val = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/digits-images/val"
    ));
    let soup = dir.path().join("soup");
    let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
        .args([
            "greedy", "--json", "-q", "--resize", "32", "--crop", "32", "--val",
        ])
        .arg(val)
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&soup)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(soup.join("config.json").is_file() && soup.join("model.safetensors").is_file());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["greedy"]["row"]["val"]["correct"],
        r["ingredients"][0]["val"]["correct"]
    );
}

/// Every ingredient is scored on one set of inputs: model directories whose
/// `preprocessor_config.json` files describe other transforms are refused, naming both, unless
/// flags settle the transform; files that agree are fine.
#[test]
fn ingredients_whose_preprocessing_disagrees_are_refused() {
    let val = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/digits-images/val"
    ));
    let dir = tempfile::tempdir().unwrap();
    let processor: Value = serde_json::from_slice(
        &std::fs::read(vision("hf-vit").join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let mut models = Vec::new();
    for (name, mean) in [("a", 0.5), ("b", 0.5), ("c", 0.4)] {
        let m = copy_model(&dir.path().join(name), "hf-vit", Some(&|_: &mut Value| {}));
        let mut p = processor.clone();
        p["image_mean"] = serde_json::json!([mean, mean, mean]);
        std::fs::write(m.join("preprocessor_config.json"), p.to_string()).unwrap();
        models.push(m);
    }
    let run = |models: &[PathBuf], flags: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--val"])
            .arg(val)
            .args(models)
            .args(flags)
            .output()
            .unwrap()
    };
    let agree = run(&models[..2], &[]);
    assert!(agree.status.success(), "{}", common::stderr(&agree));
    let out = run(&models, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(
        err.contains("c/hf-vit/preprocessor_config.json")
            && err.contains("a/hf-vit/preprocessor_config.json")
            && err.contains("same inputs"),
        "{err}"
    );
    // The disagreeing step given by a flag settles it.
    let out = run(&models, &["--mean", "0.5,0.5,0.5"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// An image folder of one class whose only image is not a PNG at all: any run that reads an
/// image fails on it, so a refusal that names something else came before any image was read
/// (and an old build that transformed first fails here quickly, without the 3 GiB per image).
fn unreadable_images(dir: &Path) -> PathBuf {
    let val = dir.join("val");
    for class in 0..10 {
        std::fs::create_dir_all(val.join(class.to_string())).unwrap();
        std::fs::write(val.join(format!("{class}/a.png")), b"not a png").unwrap();
    }
    val
}

#[test]
fn target_sizes_too_big_for_memory_or_for_the_model_are_refused_before_any_image_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let val = unreadable_images(dir.path());
    let model = dir.path().join("vit");
    std::fs::create_dir(&model).unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(vision("hf-vit").join(name), model.join(name)).unwrap();
    }
    let processor = model.join("preprocessor_config.json");
    let original: Value = serde_json::from_slice(&std::fs::read(&processor).unwrap()).unwrap();
    let run = |flags: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--threads", "1", "--val"])
            .arg(&val)
            .arg(&model)
            .args(flags)
            .output()
            .unwrap();
        let err = common::stderr(&out);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(!err.contains("panicked") && !err.contains("a.png"), "{err}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), errors[0].to_string(), v["kind"].clone())
    };
    // A flag's size: a usage error naming the flag, the size and the fix (16384 is within the
    // flags' range, and made every 8x8 image a 3 GiB tensor).
    for (flags, needle) in [
        (
            &["--resize", "16384x16384", "--crop", "none"][..],
            "--resize 16384x16384",
        ),
        (
            &["--resize", "16384", "--crop", "16384"][..],
            "--crop 16384",
        ),
        (
            &["--resize", "16384", "--crop", "none"][..],
            "16384x16384 or more",
        ),
    ] {
        let (code, line, kind) = run(flags);
        assert_eq!(code, Some(2), "{line}");
        assert_eq!(kind, "usage", "{line}");
        for n in [
            needle,
            "3.0 GiB",
            "1.0 GiB",
            "pass a smaller --resize or --crop",
        ] {
            assert!(line.contains(n), "{n:?} not in {line}");
        }
    }
    // The same size from the model's preprocessor_config.json names that file.
    let mut huge = original.clone();
    huge["size"] = serde_json::json!({"height": 16384, "width": 16384});
    std::fs::write(&processor, huge.to_string()).unwrap();
    let (code, line, kind) = run(&[]);
    assert_eq!((code, kind), (Some(1), "dataset".into()), "{line}");
    for n in ["preprocessor_config.json", "16384x16384", "3.0 GiB"] {
        assert!(line.contains(n), "{n:?} not in {line}");
    }
    // A ViT reads one size: a processor size that differs from config.json's image_size is
    // refused, naming both, before any image is decoded.
    let mut other = original.clone();
    other["size"] = serde_json::json!({"height": 64, "width": 64});
    std::fs::write(&processor, other.to_string()).unwrap();
    let (code, line, _) = run(&[]);
    assert_eq!(code, Some(1), "{line}");
    for n in [
        "preprocessor_config.json",
        "64x64",
        "32x32",
        "image_size",
        "--resize 32x32 --crop none",
    ] {
        assert!(line.contains(n), "{n:?} not in {line}");
    }
    // The processor's own size goes on to the images (and fails on them, as it should).
    std::fs::write(&processor, original.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
        .args(["score", "-q", "--val"])
        .arg(&val)
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        common::stderr(&out).contains("a.png"),
        "{}",
        common::stderr(&out)
    );
}

/// An image folder whose class folders are the model's `label2id` names is numbered as the
/// model numbers them, not in sorted order: "zero" ... "nine" sort as eight, five, four, ...,
/// which scored every image against another class's label without a word. Folders named
/// only partly as the model's classes keep the sorted order, with a warning.
#[test]
fn class_folders_named_as_label2id_are_numbered_as_the_model_numbers_them() {
    let names = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(
        dir.path(),
        "hf-vit",
        Some(&|c: &mut Value| {
            c["id2label"] = names
                .iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), Value::from(*n)))
                .collect();
            c["label2id"] = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.to_string(), Value::from(i)))
                .collect();
        }),
    );
    std::fs::copy(
        vision("hf-vit").join("preprocessor_config.json"),
        model.join("preprocessor_config.json"),
    )
    .unwrap();
    let digits = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/digits-images/val"
    ));
    let folder = |name: &str, class: &dyn Fn(usize) -> String| {
        let root = dir.path().join(name);
        for (i, _) in names.iter().enumerate() {
            let to = root.join(class(i));
            std::fs::create_dir_all(&to).unwrap();
            for image in std::fs::read_dir(digits.join(i.to_string())).unwrap() {
                let image = image.unwrap().path();
                std::fs::copy(&image, to.join(image.file_name().unwrap())).unwrap();
            }
        }
        root
    };
    let score = |val: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "--json", "-q", "--val"])
            .arg(val)
            .arg(&model)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let torch_loss: f64 = Checkpoint::open(&vision("hf-vit.io.safetensors"))
        .unwrap()
        .metadata()["torch_val_loss"]
        .parse()
        .unwrap();
    let words = score(&folder("words", &|i| names[i].to_string()));
    let loss = words["ingredients"][0]["val"]["loss"].as_f64().unwrap();
    assert!((loss - torch_loss).abs() < 1e-5, "{loss} vs {torch_loss}");
    assert_eq!(words["warnings"], serde_json::json!([]));
    // One folder named otherwise: sorted order, and a warning naming it.
    let mixed = score(&folder("mixed", &|i| {
        if i == 0 {
            "0".to_string()
        } else {
            names[i].to_string()
        }
    }));
    let warning = &mixed["warnings"][0];
    assert_eq!(warning["kind"], "classes-unmatched", "{mixed}");
    let message = warning["message"].as_str().unwrap();
    assert!(
        message.contains("9 of its 10 class names are in config.json's label2id, but not 0"),
        "{message}"
    );
}
