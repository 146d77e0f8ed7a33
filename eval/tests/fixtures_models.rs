//! The committed fixtures: the data splits, the checkpoints against the digits-cnn definition,
//! the accuracies fixtures/README.md records, the size budget, and the generator itself (its
//! fast variant, run twice: it must train models that beat chance widely, byte-identically).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use model_soup::format::{Checkpoint, Dtype};
use soup_eval::arch::{self, TensorKind};
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::weights::{check_fits, Weights};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn fixtures() -> PathBuf {
    root().join("fixtures")
}

/// Every committed checkpoint and its float dtype.
const MODELS: [(&str, Dtype); 14] = [
    ("base", Dtype::F32),
    ("half/base.f16", Dtype::F16),
    ("ft-lr2e-3", Dtype::F32),
    ("half/ft-lr2e-3.f16", Dtype::F16),
    ("ft-lr1e-3", Dtype::F32),
    ("ft-lr5e-4", Dtype::F32),
    ("ft-lr1e-3-shift", Dtype::F32),
    ("half/ft-lr1e-3-shift.bf16", Dtype::BF16),
    ("ft-lr1e-3-smooth", Dtype::F32),
    ("ft-lr2e-3-long", Dtype::F32),
    ("ft-lr3e-3-shift-smooth", Dtype::F32),
    ("ft-lr3e-1-poor", Dtype::F32),
    ("scratch-a", Dtype::F32),
    ("scratch-b", Dtype::F32),
];

fn digits_cnn() -> std::sync::Arc<dyn arch::Architecture> {
    arch::digits_cnn::arch()
}

fn batches_tracked(c: &Checkpoint) -> i64 {
    let t = c.tensor("bn1.num_batches_tracked").expect("present");
    i64::from_le_bytes(t.data.try_into().expect("one i64"))
}

#[test]
fn data_splits_have_the_documented_shapes_and_labels() {
    for (split, n) in [("train", 1079), ("val", 359), ("test", 359)] {
        let path = fixtures().join(format!("digits/{split}.safetensors"));
        let data = Dataset::open(&path, &*digits_cnn()).unwrap();
        assert_eq!(data.len(), n, "{split}");
        assert_eq!(data.sample_shape, vec![1, 8, 8]);
        let inputs = data.batch(0, data.len()).unwrap();
        assert!(
            inputs.iter().all(|x| (0.0..=1.0).contains(x)),
            "{split}: inputs outside [0, 1]"
        );
        assert!(inputs.contains(&1.0), "{split}: not scaled by 16?");
        let mut counts = [0usize; 10];
        data.labels.iter().for_each(|l| counts[*l] += 1);
        assert!(
            counts.iter().all(|c| *c >= 20),
            "{split}: class counts {counts:?}"
        );
        let file = Checkpoint::open(&path).unwrap();
        assert_eq!(file.tensor("inputs").unwrap().info.dtype, Dtype::F32);
        assert_eq!(file.tensor("labels").unwrap().info.dtype, Dtype::I64);
    }
}

#[test]
fn checkpoints_match_the_cnn_definition() {
    let arch = digits_cnn();
    let specs = arch.tensors();
    let base = Checkpoint::open(&fixtures().join("models/base.safetensors")).unwrap();
    for (name, float) in MODELS {
        let path = fixtures().join(format!("models/{name}.safetensors"));
        let c = Checkpoint::open(&path).unwrap();
        check_fits(&c, &*arch).unwrap();
        let names: Vec<&str> = c.tensors().map(|t| t.name()).collect();
        let expected: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let (mut a, mut b) = (names.clone(), expected.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: tensor names");
        for s in &specs {
            let t = c.tensor(&s.name).unwrap();
            let want = match s.kind {
                TensorKind::Float => float,
                TensorKind::Buffer => Dtype::I64,
            };
            assert_eq!(t.info.dtype, want, "{name}: {}", s.name);
        }
        let meta = c.metadata();
        assert_eq!(
            meta.get("arch").map(String::as_str),
            Some("digits-cnn"),
            "{name}"
        );
        if name.starts_with("ft-") {
            assert_eq!(
                meta.get("parent").map(String::as_str),
                Some("base"),
                "{name}"
            );
            // Fine-tunes continue base's batch count, as PyTorch's num_batches_tracked does.
            assert!(batches_tracked(&c) > batches_tracked(&base), "{name}");
        }
    }
}

#[test]
fn half_precision_copies_round_their_f32_originals() {
    for (copy, original) in [
        ("half/ft-lr2e-3.f16", "ft-lr2e-3"),
        ("half/ft-lr1e-3-shift.bf16", "ft-lr1e-3-shift"),
        ("half/base.f16", "base"),
    ] {
        let a = Weights::from_checkpoint(
            &Checkpoint::open(&fixtures().join(format!("models/{copy}.safetensors"))).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let b = Weights::from_checkpoint(
            &Checkpoint::open(&fixtures().join(format!("models/{original}.safetensors"))).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        for name in b.names() {
            let (a, b) = (a.values(name).unwrap(), b.values(name).unwrap());
            for (x, y) in a.unwrap().iter().zip(b.unwrap()) {
                assert!(
                    (x - y).abs() <= y.abs() / 128.0 + 1e-6,
                    "{copy}: {name}: {x} vs {y}"
                );
            }
        }
    }
}

/// The `file -> (val correct, test correct)` table between the README's markers.
fn readme_accuracies() -> BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(fixtures().join("README.md")).unwrap();
    let begin = text
        .find("<!-- accuracies:begin -->")
        .expect("begin marker");
    let end = text.find("<!-- accuracies:end -->").expect("end marker");
    let count = |cell: &str| -> u64 { cell.trim().split('/').next().unwrap().parse().unwrap() };
    text[begin..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').collect();
            let file = cells[1].trim().trim_matches('`').to_string();
            (file, (count(cells[3]), count(cells[4])))
        })
        .collect()
}

#[test]
fn readme_accuracies_match_the_evaluator() {
    let arch = digits_cnn();
    let evaluator = Evaluator::new(arch.clone(), Device::Cpu, 256);
    let val = Dataset::open(&fixtures().join("digits/val.safetensors"), &*arch).unwrap();
    let test = Dataset::open(&fixtures().join("digits/test.safetensors"), &*arch).unwrap();
    let table = readme_accuracies();
    assert_eq!(
        table.len(),
        MODELS.len(),
        "one README row per checkpoint: {table:?}"
    );
    for (name, _) in MODELS {
        let file = format!("{name}.safetensors");
        let recorded = table
            .get(&file)
            .unwrap_or_else(|| panic!("no README row for {file}"));
        let weights = Weights::from_checkpoint(
            &Checkpoint::open(&fixtures().join("models").join(&file)).unwrap(),
            &Device::Cpu,
        )
        .unwrap();
        let measured = (
            evaluator.score(&weights, &val).unwrap().correct,
            evaluator.score(&weights, &test).unwrap().correct,
        );
        assert_eq!(
            *recorded, measured,
            "{file}: README says (val, test) = {recorded:?}"
        );
    }
}

/// The vision fixtures, which have their own budget (issue 11: under 20 MB in all).
const VISION: &[&str] = &["vision", "vision-digits", "digits-images"];

/// The language-model fixtures, which have their own budget (issue 12: under 10 MB).
const TEXT: &str = "text";

#[test]
fn fixtures_stay_under_five_megabytes_vision_under_twenty_and_text_under_ten() {
    fn size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    size(&e.path())
                } else {
                    m.len()
                }
            })
            .sum()
    }
    let vision: u64 = VISION.iter().map(|d| size(&fixtures().join(d))).sum();
    let text = size(&fixtures().join(TEXT));
    let total = size(&fixtures()) - vision - text;
    assert!(
        total < 5_000_000,
        "fixtures/ holds {total} bytes besides the vision and text fixtures"
    );
    assert!(
        vision > 0 && vision < 20_000_000,
        "the vision fixtures hold {vision} bytes"
    );
    assert!(
        text > 0 && text < 10_000_000,
        "the text fixtures hold {text} bytes"
    );
}

/// The generator example, built by `cargo test` (or, when only this test was selected, built
/// here with the same cargo).
fn generator() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("make-fixtures{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args(["build", "--example", "make-fixtures"])
            .current_dir(root());
        if release {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo");
        assert!(status.success(), "cannot build the make-fixtures example");
    }
    path
}

#[test]
fn generator_fast_mode_trains_good_models_reproducibly() {
    let generator = generator();
    let runs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &runs {
        let out = Command::new(&generator)
            .args(["--fast", "--data"])
            .arg(fixtures().join("digits"))
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let arch = digits_cnn();
    let evaluator = Evaluator::new(arch.clone(), Device::Cpu, 256);
    let test = Dataset::open(&fixtures().join("digits/test.safetensors"), &*arch).unwrap();
    let mut accuracy = BTreeMap::new();
    for (name, _) in MODELS {
        let file = format!("{name}.safetensors");
        let a = std::fs::read(runs[0].path().join(&file))
            .unwrap_or_else(|_| panic!("{file} not written"));
        let b = std::fs::read(runs[1].path().join(&file)).unwrap();
        assert!(a == b, "{file}: two runs of the generator differ");
        let c = Checkpoint::open(&runs[0].path().join(&file)).unwrap();
        check_fits(&c, &*arch).unwrap();
        let score = evaluator
            .score(&Weights::from_checkpoint(&c, &Device::Cpu).unwrap(), &test)
            .unwrap();
        accuracy.insert(name, score.accuracy);
    }
    assert!(accuracy["base"] > 0.8, "base: {accuracy:?}");
    assert!(accuracy["ft-lr2e-3"] > 0.8, "{accuracy:?}");
    assert!(
        accuracy["ft-lr3e-1-poor"] < accuracy["base"] - 0.1,
        "the poor one isn't poor: {accuracy:?}"
    );
}
