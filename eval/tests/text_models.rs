//! The language models against careless and hostile model directories, and the properties their
//! logits must have: each broken fixture gives one error naming the tensor or `config.json`
//! key and the family; padding never changes a real position's logits; settings that matter
//! (Mistral's window, a tied head) really change the numbers.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use model_soup::format::Checkpoint;
use serde_json::Value;
use soup_eval::arch::{Batch, Options, Output, Selection};
use soup_eval::weights::{check_fits, Weights};

fn model_dir(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/text/models"
    ))
    .join(name)
}

/// A copy of fixture model `name` in a temporary directory, with its config and tensors edited.
fn edited(
    name: &str,
    edit_config: impl FnOnce(&mut serde_json::Map<String, Value>),
    edit_tensors: impl FnOnce(&mut Vec<common::Spec>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir(name);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    edit_config(config.as_object_mut().unwrap());
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let mut tensors: Vec<common::Spec> = common::read(&src.join("model.safetensors"))
        .into_iter()
        .map(|(n, (dtype, shape, data))| common::spec(&n, dtype, &shape, data))
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    edit_tensors(&mut tensors);
    common::write(&dir.path().join("model.safetensors"), &tensors);
    dir
}

/// The error `--arch arch` gives for the model directory at `dir`, from configuration or the
/// tensor check, as the user sees it.
fn error(dir: &Path, arch: &str) -> String {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let result = Selection::parse(arch)
        .unwrap()
        .configure(&checkpoint, &Options::default())
        .and_then(|a| check_fits(&checkpoint, &*a));
    match result {
        Ok(()) => panic!("{}: accepted", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(message: &str, needles: &[&str]) {
    for n in needles {
        assert!(message.contains(n), "'{message}' lacks '{n}'");
    }
}

#[test]
fn a_missing_tensor_is_named_with_the_family() {
    for (name, tensor, family) in [
        ("llama", "model.layers.1.mlp.up_proj.weight", "llama"),
        ("qwen2", "model.layers.0.self_attn.k_proj.bias", "qwen2"),
        ("qwen3", "model.layers.1.self_attn.q_norm.weight", "qwen3"),
        ("bert-cls", "bert.pooler.dense.weight", "bert"),
        ("roberta-cls", "classifier.dense.bias", "roberta"),
        ("distilbert-cls", "pre_classifier.weight", "distilbert"),
    ] {
        let dir = edited(name, |_| {}, |t| t.retain(|s| s.name != tensor));
        let err = error(dir.path(), "auto");
        assert_mentions(&err, &[tensor, "is missing", family]);
    }
}

#[test]
fn an_extra_tensor_is_named_with_the_family() {
    let dir = edited(
        "mistral",
        |_| {},
        |t| {
            t.push(common::spec(
                "model.layers.0.self_attn.rotary.weight",
                safetensors::Dtype::F32,
                &[2],
                vec![0; 8],
            ))
        },
    );
    let err = error(dir.path(), "auto");
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.rotary.weight",
            "not part of",
            "llama",
        ],
    );
}

#[test]
fn a_config_that_disagrees_with_the_shapes_names_the_key() {
    for (name, key, family) in [
        ("llama", "hidden_size", "llama"),
        ("gemma", "intermediate_size", "gemma"),
        ("phi3", "num_hidden_layers", "phi3"),
        ("bert-cls", "hidden_size", "bert"),
        ("distilbert-cls", "dim", "distilbert"),
    ] {
        let dir = edited(
            name,
            |c| {
                let n = c[key].as_u64().unwrap();
                c.insert(key.into(), Value::from(n * 2));
            },
            |_| {},
        );
        let err = error(dir.path(), "auto");
        assert_mentions(&err, &[&format!("config.json:{key}"), "disagree", family]);
    }
    // Heads that don't fit the projections' rows.
    let dir = edited(
        "qwen3",
        |c| {
            c.insert("num_attention_heads".into(), Value::from(8));
        },
        |_| {},
    );
    assert_mentions(
        &error(dir.path(), "auto"),
        &["q_proj.weight", "8 query", "qwen3"],
    );
    // A classifier whose labels don't match its head.
    let dir = edited(
        "roberta-cls",
        |c| {
            c.insert("id2label".into(), serde_json::json!({"0": "a"}));
        },
        |_| {},
    );
    assert_mentions(
        &error(dir.path(), "auto"),
        &["config.json:id2label", "roberta"],
    );
}

#[test]
fn settings_soup_eval_does_not_implement_are_refused_by_key() {
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "llama",
            "rope_parameters",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}),
            "yarn",
        ),
        (
            "mistral",
            "rope_scaling",
            serde_json::json!({"type": "dynamic", "factor": 2.0}),
            "dynamic",
        ),
        (
            "phi3",
            "rope_scaling",
            serde_json::json!({"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
            "longrope",
        ),
        (
            "llama",
            "rope_parameters",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0, "rope_theta": 10000.0}),
            "low_freq_factor",
        ),
        (
            "qwen2",
            "hidden_act",
            Value::from("quick_gelu"),
            "quick_gelu",
        ),
        (
            "gemma",
            "final_logit_softcapping",
            Value::from(30.0),
            "soft-capping",
        ),
        (
            "gemma",
            "use_bidirectional_attention",
            Value::Bool(true),
            "causal",
        ),
        (
            "bert-cls",
            "position_embedding_type",
            Value::from("relative_key"),
            "absolute",
        ),
        (
            "llama",
            "quantization_config",
            serde_json::json!({"quant_method": "gptq"}),
            "unquantised",
        ),
        (
            "qwen2",
            "layer_types",
            serde_json::json!(["full_attention", "chunked_attention"]),
            "chunked_attention",
        ),
    ];
    for (name, key, value, says) in cases {
        let dir = edited(
            name,
            |c| {
                c.insert(key.into(), value.clone());
            },
            |_| {},
        );
        let err = error(dir.path(), "auto");
        assert_mentions(&err, &[&format!("config.json:{key}"), says]);
    }
}

#[test]
fn an_untied_model_without_a_head_is_refused_and_a_missing_config_is_explained() {
    let dir = edited(
        "llama",
        |_| {},
        |t| t.retain(|s| s.name != "lm_head.weight"),
    );
    assert_mentions(
        &error(dir.path(), "llama"),
        &["lm_head.weight", "tie_word_embeddings"],
    );
    // The same weights without config.json: --arch auto recognises nothing, and a named
    // family explains what it needs.
    let dir = edited("llama", |_| {}, |_| {});
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_mentions(
        &error(dir.path(), "auto"),
        &["--arch auto recognises no architecture"],
    );
    assert_mentions(
        &error(dir.path(), "llama"),
        &["config.json", "is missing", "model directory"],
    );
}

/// Logits of `dir`'s model (configured by `--arch auto`) for `ids` with `mask`, flattened, with
/// what they mean.
fn run(dir: &Path, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> (Vec<f32>, Output) {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&checkpoint, &Options::default())
        .unwrap();
    check_fits(&checkpoint, &*arch).unwrap();
    let weights = Weights::from_checkpoint(&checkpoint, &Device::Cpu).unwrap();
    let model = arch.build(weights.var_builder(DType::F32)).unwrap();
    let ids = Tensor::new(ids.to_vec(), &Device::Cpu).unwrap();
    let mask = Tensor::new(mask.to_vec(), &Device::Cpu).unwrap();
    let values = model
        .logits(&Batch::tokens(&ids, Some(&mask)))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    (values, arch.output())
}

fn logits(dir: &Path, ids: &[Vec<u32>], mask: &[Vec<u32>]) -> Vec<f32> {
    run(dir, ids, mask).0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A sequence of `n` ids that avoids the low (special) ids, deterministic.
fn sequence(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 5 + (i * 37 + seed * 11) % 200)
        .collect()
}

#[test]
fn padding_never_changes_the_logits_of_real_positions() {
    for name in [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "bert-cls",
        "roberta-cls",
        "xlm-roberta-cls",
        "distilbert-cls",
    ] {
        let dir = model_dir(name);
        let config: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let pad = config["pad_token_id"].as_u64().unwrap_or(0) as u32;
        let short = sequence(7, 1);
        let alone = logits(&dir, std::slice::from_ref(&short), &[vec![1; 7]]);
        let mut padded = short.clone();
        padded.resize(19, pad);
        let mut mask = vec![1; 7];
        mask.resize(19, 0);
        let (batch, output) = run(&dir, &[sequence(19, 2), padded], &[vec![1; 19], mask]);
        // Row 1 of the batch: its class logits, or an LM's logits at its 7 real positions.
        let row = match output {
            Output::Classes(c) => batch[c..2 * c].to_vec(),
            Output::NextToken(v) => batch[19 * v..(19 + 7) * v].to_vec(),
        };
        let diff = max_diff(&row, &alone);
        assert!(diff < 1e-4, "{name}: padding moved a real logit by {diff}");
    }
}

#[test]
fn the_sliding_window_changes_what_mistral_computes() {
    // The fixture's window (8) is shorter than the sequence: dropping it must change the
    // logits beyond the window and nowhere before it.
    let ids = vec![sequence(20, 3)];
    let mask = vec![vec![1; 20]];
    let windowed = logits(&model_dir("mistral"), &ids, &mask);
    let dir = edited(
        "mistral",
        |c| {
            c.insert("sliding_window".into(), Value::Null);
        },
        |_| {},
    );
    let full = logits(dir.path(), &ids, &mask);
    let v = windowed.len() / 20;
    let window = 8;
    assert!(max_diff(&windowed[..window * v], &full[..window * v]) < 1e-6);
    assert!(max_diff(&windowed[window * v..], &full[window * v..]) > 1e-3);
}

#[test]
fn a_tied_model_uses_its_file_head_when_there_is_one() {
    // transformers 5 keeps a tied model's lm_head.weight when the file has one that differs
    // from the embedding (it warns, and does not tie); without one, the head is the embedding.
    let ids = vec![sequence(6, 4)];
    let mask = vec![vec![1; 6]];
    let tied = logits(&model_dir("llama-tied"), &ids, &mask);
    let dir = edited(
        "llama-tied",
        |_| {},
        |t| {
            let embed = t
                .iter()
                .find(|s| s.name == "model.embed_tokens.weight")
                .unwrap();
            let mut head = common::spec(
                "lm_head.weight",
                embed.dtype,
                &embed.shape,
                embed.data.clone(),
            );
            // The negated embedding: flip each f32's sign bit.
            head.data
                .iter_mut()
                .skip(3)
                .step_by(4)
                .for_each(|b| *b ^= 0x80);
            t.push(head);
        },
    );
    let with_head = logits(dir.path(), &ids, &mask);
    assert!(
        max_diff(&tied, &with_head) > 1e-3,
        "the file's head was ignored"
    );
    let same = edited(
        "llama-tied",
        |_| {},
        |t| {
            let embed = t
                .iter()
                .find(|s| s.name == "model.embed_tokens.weight")
                .unwrap();
            let head = common::spec(
                "lm_head.weight",
                embed.dtype,
                &embed.shape,
                embed.data.clone(),
            );
            t.push(head);
        },
    );
    assert_eq!(logits(same.path(), &ids, &mask), tied);
}

#[test]
fn out_of_vocabulary_ids_and_overlong_sequences_are_errors_not_panics() {
    for (name, too_long) in [
        ("llama", None),
        ("bert-cls", Some(())),
        ("roberta-cls", Some(())),
    ] {
        let dir = model_dir(name);
        let checkpoint = Checkpoint::open(&dir).unwrap();
        let arch = Selection::parse("auto")
            .unwrap()
            .configure(&checkpoint, &Options::default())
            .unwrap();
        let weights = Weights::from_checkpoint(&checkpoint, &Device::Cpu).unwrap();
        let model = arch.build(weights.var_builder(DType::F32)).unwrap();
        let soup_eval::arch::Input::Tokens(tokens) = arch.input() else {
            panic!("{name} reads tokens")
        };
        let ids = Tensor::new(&[[1u32, tokens.vocab as u32]], &Device::Cpu).unwrap();
        let err = model
            .logits(&Batch::tokens(&ids, None))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outside the model's vocabulary"),
            "{name}: {err}"
        );
        if too_long.is_some() {
            let n = tokens.max_positions.unwrap() + 1;
            let ids = Tensor::new(vec![sequence(n, 5)], &Device::Cpu).unwrap();
            let err = model
                .logits(&Batch::tokens(&ids, None))
                .unwrap_err()
                .to_string();
            assert!(err.contains("longer than the model's"), "{name}: {err}");
        }
    }
}
