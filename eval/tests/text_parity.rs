//! Parity with PyTorch for the language models: candle's logits for the tiny Hugging Face model
//! directories in fixtures/text/models (made by fixtures/text/make_text_fixtures.py with
//! transformers' own classes; the decoder variants llama-bias-rope3, qwen2-window-linear and
//! phi3-partial by
//! make_lm_variant_fixtures.py) against transformers' eval-mode logits in
//! fixtures/text/parity/<name>.safetensors, at every real (mask = 1) position.
//!
//! Tolerances, relative to the largest |PyTorch logit|: 1e-4 in f32; in f16 and bf16 (weights
//! and activations rounded, softmax and norms in f32 as transformers computes them) the
//! constants below, a little above the worst measured case.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use model_soup::format::Checkpoint;
use soup_eval::arch::{Batch, Input, Options, Output, Selection};
use soup_eval::weights::{check_fits, Weights};

/// Relative tolerance on f32 logits (the bar).
const TOLERANCE: f32 = 1e-4;
/// Relative tolerance in f16.
const F16_TOLERANCE: f32 = 1e-2;
/// Relative tolerance in bf16 (8 mantissa bits against f16's 11).
const BF16_TOLERANCE: f32 = 5e-2;

/// Every fixture model, with the family `--arch auto` must pick.
const CASES: &[(&str, &str)] = &[
    ("llama", "llama"),
    ("llama-tied", "llama"),
    ("llama-tied-head", "llama"),
    ("mistral", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("phi3", "phi3"),
    ("gemma", "gemma"),
    ("llama-bias-rope3", "llama"),
    ("qwen2-window-linear", "qwen2"),
    ("phi3-partial", "phi3"),
    ("bert-cls", "bert"),
    ("roberta-cls", "roberta"),
    ("xlm-roberta-cls", "roberta"),
    ("distilbert-cls", "distilbert"),
];

fn text(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/text")).join(rel)
}

/// An integer tensor of a parity file as U32 on `device` (ids and masks are small and
/// non-negative; the file stores them as I64, as PyTorch does).
fn read_ids(file: &Checkpoint, name: &str, device: &Device) -> Tensor {
    let t = file.tensor(name).unwrap_or_else(|| panic!("no '{name}'"));
    let shape: Vec<usize> = t.info.shape.iter().map(|&d| d as usize).collect();
    let values: Vec<u32> = t
        .data
        .chunks_exact(8)
        .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
        .collect();
    Tensor::from_vec(values, shape, device).unwrap()
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

/// The logits candle and PyTorch give at the real positions of the parity batch, as
/// (candle, pytorch), with the family `--arch auto` chose.
fn compare(name: &str, dtype: DType, device: &Device) -> (String, Vec<f32>, Vec<f32>) {
    compare_dir(&text(&format!("models/{name}")), name, dtype, device)
}

/// [`compare`] for the model directory `dir` against fixture `name`'s parity logits.
fn compare_dir(
    dir: &Path,
    name: &str,
    dtype: DType,
    device: &Device,
) -> (String, Vec<f32>, Vec<f32>) {
    let checkpoint = Checkpoint::open(dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&checkpoint, &Options::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    check_fits(&checkpoint, &*arch).unwrap_or_else(|e| panic!("{name}: {e}"));
    let parity = Checkpoint::open(&text(&format!("parity/{name}.safetensors"))).unwrap();
    let ids = read_ids(&parity, "input_ids", device);
    let mask = read_ids(&parity, "attention_mask", device);
    let (shape, expected) = read_f32(&parity, "logits");
    let weights = Weights::from_checkpoint(&checkpoint, device).unwrap();
    let model = arch.build(weights.var_builder(dtype)).unwrap();
    let got = model
        .logits(&Batch::tokens(&ids, Some(&mask)))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(got.dims(), shape.as_slice(), "{name}: logits shape");
    let got: Vec<f32> = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let (b, width) = (shape[0], *shape.last().unwrap());
    let (got, expected) = match arch.output() {
        Output::Classes(c) => {
            assert_eq!(shape, vec![b, c]);
            (got, expected)
        }
        Output::NextToken(v) => {
            assert_eq!(width, v);
            let real: Vec<u32> = mask.flatten_all().unwrap().to_vec1().unwrap();
            let keep = |x: &[f32]| -> Vec<f32> {
                x.chunks_exact(v)
                    .zip(&real)
                    .filter(|(_, &m)| m == 1)
                    .flat_map(|(row, _)| row.iter().copied())
                    .collect()
            };
            (keep(&got), keep(&expected))
        }
    };
    (arch.family().to_string(), got, expected)
}

/// The largest |candle - torch| relative to the largest |torch|.
fn relative_error(got: &[f32], expected: &[f32]) -> f32 {
    assert_eq!(got.len(), expected.len());
    assert!(!got.is_empty());
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.0, "PyTorch's logits are all zero");
    let worst = got
        .iter()
        .zip(expected)
        .map(|(a, b)| {
            if a.is_finite() {
                (a - b).abs()
            } else {
                f32::INFINITY
            }
        })
        .fold(0f32, f32::max);
    worst / scale
}

fn check_all(dtype: DType, tolerance: f32) {
    for &(name, family) in CASES {
        let (chosen, got, expected) = compare(name, dtype, &Device::Cpu);
        assert_eq!(chosen, family, "{name}: --arch auto");
        let err = relative_error(&got, &expected);
        eprintln!("{name} {dtype:?}: max |candle - torch| / max |torch| = {err:.2e}");
        assert!(
            err <= tolerance,
            "{name} {dtype:?}: relative error {err:e} above {tolerance:e}"
        );
    }
}

#[test]
fn candle_matches_transformers_in_f32_on_every_text_fixture() {
    check_all(DType::F32, TOLERANCE);
}

#[test]
fn candle_matches_transformers_in_f16_within_its_tolerance() {
    check_all(DType::F16, F16_TOLERANCE);
}

#[test]
fn candle_matches_transformers_in_bf16_within_its_tolerance() {
    check_all(DType::BF16, BF16_TOLERANCE);
}

#[test]
fn every_fixture_with_a_parity_file_is_a_case() {
    let mut listed: Vec<String> = std::fs::read_dir(text("parity"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".safetensors").map(str::to_string))
        .filter(|n| text(&format!("models/{n}")).is_dir())
        .collect();
    listed.sort();
    let mut cases: Vec<String> = CASES.iter().map(|(n, _)| n.to_string()).collect();
    cases.sort();
    assert_eq!(listed, cases);
}

#[test]
fn the_comparison_can_fail() {
    // A logit moved by twice the tolerance must fail the check, or the test proves nothing.
    let (_, _, expected) = compare("llama", DType::F32, &Device::Cpu);
    let mut moved = expected.clone();
    let scale = expected.iter().fold(0f32, |m, x| m.max(x.abs()));
    moved[17] += 2.0 * TOLERANCE * scale;
    assert!(relative_error(&moved, &expected) > TOLERANCE);
}

#[test]
fn text_models_declare_token_inputs_and_their_outputs() {
    let checkpoint = Checkpoint::open(&text("models/llama")).unwrap();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&checkpoint, &Options::default())
        .unwrap();
    let Input::Tokens(tokens) = arch.input() else {
        panic!("a causal LM reads tokens");
    };
    let embed = checkpoint.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!(tokens.vocab as u64, embed.info.shape[0]);
    assert_eq!(arch.output(), Output::NextToken(tokens.vocab));
}

/// A copy of the fixture model `name` (config and weights) with its config.json changed by
/// `edit`.
fn with_config(name: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = text(&format!("models/{name}"));
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    dir
}

#[test]
fn the_variants_settings_matter() {
    // Each variant's distinguishing setting, switched off in a copy of its config.json, must
    // move the logits far beyond the tolerance: the parity test really checks it.
    for (name, key, off) in [
        (
            "phi3-partial",
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}),
        ),
        (
            "qwen2-window-linear",
            "use_sliding_window",
            serde_json::json!(false),
        ),
        (
            "qwen2-window-linear",
            "rope_scaling",
            serde_json::Value::Null,
        ),
        ("mistral", "sliding_window", serde_json::Value::Null),
        (
            "llama-bias-rope3",
            "rope_parameters",
            serde_json::json!({"rope_type": "default", "rope_theta": 10000.0}),
        ),
    ] {
        let dir = with_config(name, |config| {
            assert!(config.get(key).is_some(), "{name} has no {key}");
            config[key] = off.clone();
        });
        let (_, got, expected) = compare_dir(dir.path(), name, DType::F32, &Device::Cpu);
        let err = relative_error(&got, &expected);
        assert!(
            err > 100.0 * TOLERANCE,
            "{name} without {key}: error only {err:e}"
        );
    }
}

#[test]
fn bert_reads_the_second_segment_of_a_pair_through_its_token_types() {
    // parity/bert-cls-pairs: bert-cls on text pairs with the tokenizer's type ids (1 for the
    // second text). With them candle matches transformers; without them (every token type 0)
    // the logits move, so the segment embedding is really read.
    let device = Device::Cpu;
    let dir = text("models/bert-cls");
    let checkpoint = Checkpoint::open(&dir).unwrap();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&checkpoint, &Options::default())
        .unwrap();
    let parity = Checkpoint::open(&text("parity/bert-cls-pairs.safetensors")).unwrap();
    let ids = read_ids(&parity, "input_ids", &device);
    let mask = read_ids(&parity, "attention_mask", &device);
    let types = read_ids(&parity, "token_type_ids", &device);
    let (_, expected) = read_f32(&parity, "logits");
    let weights = Weights::from_checkpoint(&checkpoint, &device).unwrap();
    let model = arch.build(weights.var_builder(DType::F32)).unwrap();
    let batch = Batch::tokens(&ids, Some(&mask));
    let values = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let typed = Batch {
        token_type_ids: Some(&types),
        ..batch
    };
    let with = values(model.logits(&typed).unwrap());
    let err = relative_error(&with, &expected);
    eprintln!("bert-cls pairs F32: max |candle - torch| / max |torch| = {err:.2e}");
    assert!(err <= TOLERANCE, "with token types: {err:e}");
    let without = values(model.logits(&batch).unwrap());
    assert!(relative_error(&without, &expected) > 100.0 * TOLERANCE);
    // A type id the embedding doesn't have is an error, not a wrong row.
    let bad = (types.clone() * 2.0).unwrap();
    let err = model
        .logits(&Batch {
            token_type_ids: Some(&bad),
            ..batch
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("type_vocab_size"), "{err}");
    // A model without segment embeddings ignores them.
    let distil = Checkpoint::open(&text("models/distilbert-cls")).unwrap();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&distil, &Options::default())
        .unwrap();
    let model = arch
        .build(
            Weights::from_checkpoint(&distil, &device)
                .unwrap()
                .var_builder(DType::F32),
        )
        .unwrap();
    assert_eq!(
        values(model.logits(&typed).unwrap()),
        values(model.logits(&batch).unwrap())
    );
}

/// A Qwen config that turns `use_sliding_window` on without a `sliding_window` key gets
/// transformers' default window, 4096 (Qwen2Config and Qwen3Config); it had none. `null` is
/// still no window, and `use_sliding_window: false` none whatever the key says.
#[test]
fn a_qwen_window_without_its_size_is_transformers_default() {
    let describe = |edit: &dyn Fn(&mut serde_json::Value)| {
        let dir = with_config("qwen2-window-linear", edit);
        Selection::parse("auto")
            .unwrap()
            .configure(&Checkpoint::open(dir.path()).unwrap(), &Options::default())
            .unwrap()
            .describe()
    };
    let absent = describe(&|c| {
        c.as_object_mut().unwrap().remove("sliding_window");
    });
    assert!(absent.ends_with(", sliding window 4096)"), "{absent}");
    let null = describe(&|c| c["sliding_window"] = serde_json::Value::Null);
    assert!(!null.contains("sliding window"), "{null}");
    let off = describe(&|c| {
        c.as_object_mut().unwrap().remove("sliding_window");
        c["use_sliding_window"] = false.into();
    });
    assert!(!off.contains("sliding window"), "{off}");
    let given = describe(&|_| {});
    assert!(given.ends_with(", sliding window 6)"), "{given}");
}

/// `pad_token_id: -1` (in some converted LLaMA configs) means no padding token: transformers
/// builds such a model, and its logits are the fixture's. RoBERTa counts its positions from
/// the padding id, so there a negative one stays an error naming the key.
#[test]
fn a_negative_pad_token_id_is_no_padding_token() {
    for name in ["llama", "bert-cls", "distilbert-cls"] {
        let dir = with_config(name, |c| c["pad_token_id"] = (-1).into());
        let (_, got, expected) = compare_dir(dir.path(), name, DType::F32, &Device::Cpu);
        let err = relative_error(&got, &expected);
        assert!(err <= TOLERANCE, "{name} with pad_token_id -1: {err:e}");
    }
    let dir = with_config("roberta-cls", |c| c["pad_token_id"] = (-1).into());
    let err = Selection::parse("auto")
        .unwrap()
        .configure(&Checkpoint::open(dir.path()).unwrap(), &Options::default())
        .err()
        .expect("RoBERTa with pad_token_id -1 is refused")
        .to_string();
    assert!(err.contains("pad_token_id"), "{err}");
}
