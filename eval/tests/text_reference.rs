//! soup-eval's language-model pipeline against PyTorch and Python's `tokenizers`, on the
//! fixtures of fixtures/text (made by fixtures/text/make_text_fixtures.py):
//!
//! - token ids equal to the Python `tokenizers` package's, exactly, for every sentence of
//!   parity/tokens.jsonl (with and without special tokens, pairs, truncation, non-ASCII);
//! - every metric of parity/metrics.json (PyTorch, float64-accumulated, spec §3 definitions),
//!   per model and for the ensembles, within 1e-4 relative, with the token and question counts
//!   exact; and per window (language modelling) and per choice (multiple choice) too.

use std::path::{Path, PathBuf};

use candle_core::Device;
use model_soup::format::Checkpoint;
use serde_json::Value;
use soup_eval::arch::{Options, Selection};
use soup_eval::ensemble::Mode;
use soup_eval::evaluator::{Evaluator, Outputs};
use soup_eval::score::{Metric, Metrics, Score, Task};
use soup_eval::session::{DataOptions, Session, Split};
use soup_eval::text::{TextOptions, TextTokenizer};

/// The bar: relative error of each metric.
const TOLERANCE: f64 = 1e-4;

fn text_fixture(path: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/text")).join(path)
}

/// A fixture model's directory: `models/NAME`, or `e2e/NAME` for the trained ones.
fn model_dir(name: &str) -> PathBuf {
    if name.starts_with("e2e/") {
        text_fixture(name)
    } else {
        text_fixture(&format!("models/{name}"))
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn token_ids_equal_python_tokenizers() {
    let cases = lines(&text_fixture("parity/tokens.jsonl"));
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let (mut pairs, mut truncated, mut non_ascii) = (0, 0, 0);
    for case in &cases {
        let model = case["model"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let pair = case.get("text_pair").and_then(Value::as_str);
        let special = case["add_special_tokens"].as_bool().unwrap();
        let mut tokenizer =
            TextTokenizer::open(&text_fixture(&format!("models/{model}/tokenizer.json"))).unwrap();
        if let Some(max) = case.get("max_length").and_then(Value::as_u64) {
            tokenizer = tokenizer.truncated(max as usize).unwrap();
            truncated += 1;
        }
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tokenizer.encode(text, pair, special).unwrap();
        assert_eq!(
            ids, expected,
            "{model}: {text:?} / {pair:?}, special tokens {special}"
        );
        pairs += pair.is_some() as usize;
        non_ascii += (!text.is_ascii()) as usize;
    }
    assert!(
        pairs > 0 && truncated > 0 && non_ascii > 0,
        "{pairs} {truncated} {non_ascii}"
    );
}

fn close(ours: f64, theirs: f64, what: &str) -> f64 {
    let err = (ours - theirs).abs() / theirs.abs().max(1e-12);
    assert!(
        err <= TOLERANCE || (ours - theirs).abs() < 1e-12,
        "{what}: soup-eval {ours} vs PyTorch {theirs} (relative {err:.2e})"
    );
    err
}

/// Opens a session over `models` (fixture model names) on `data` with the entry's options.
fn session(models: &[String], data: &str, task: Task, options: &Value) -> Session {
    session_on(
        models,
        &text_fixture(&format!("data/{data}")),
        task,
        options,
    )
}

fn session_on(models: &[String], data: &Path, task: Task, options: &Value) -> Session {
    let dirs: Vec<PathBuf> = models.iter().map(|m| model_dir(m)).collect();
    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&Checkpoint::open(&dirs[0]).unwrap(), &Options::default())
        .unwrap();
    let evaluator = Evaluator::new(arch, Device::Cpu, 5);
    let get = |k: &str| options.get(k).and_then(Value::as_u64).map(|v| v as usize);
    let default_length = options.get("default_max_length").and_then(Value::as_bool) == Some(true);
    let text = TextOptions {
        task: Some(task),
        max_length: if default_length {
            None
        } else {
            get("max_length")
        },
        seq_len: get("seq_len"),
        stride: get("stride"),
    };
    let options = DataOptions {
        text,
        metric: Some(if task == Task::LanguageModelling {
            Metric::Loss
        } else {
            Metric::Accuracy
        }),
        ..DataOptions::default()
    };
    Session::open_data(evaluator, &dirs, Some(data), None, &options)
        .unwrap_or_else(|e| panic!("{models:?} on {}: {e}", data.display()))
}

/// `data/cls.jsonl`'s pairs as a pre-tokenised file (`input_ids`, `attention_mask`, labels
/// by `label2id`, and `token_type_ids` when `types`), right-padded with junk the mask hides.
fn pre_tokenised_pairs(model: &str, to: &Path, types: bool) {
    let dir = model_dir(model);
    let tokenizer = TextTokenizer::open(&dir.join("tokenizer.json"))
        .unwrap()
        .truncated(64)
        .unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let rows: Vec<(Vec<u32>, Vec<u32>, i64)> = lines(&text_fixture("data/cls.jsonl"))
        .iter()
        .map(|r| {
            let pair = r.get("text_pair").and_then(Value::as_str);
            let (ids, segments) = tokenizer
                .encode_with_types(r["text"].as_str().unwrap(), pair, true)
                .unwrap();
            let label = config["label2id"][r["label"].as_str().unwrap()]
                .as_i64()
                .unwrap();
            (ids, segments, label)
        })
        .collect();
    // A tokenizer that gives every token segment 0 (RoBERTa's): mark each row's last token
    // as segment 1, as a user's own pipeline might.
    let marked = !rows.iter().any(|(_, s, _)| s.iter().any(|&t| t != 0));
    let t = rows.iter().map(|r| r.0.len()).max().unwrap() + 3;
    let (mut ids, mut mask, mut segments) = (vec![], vec![], vec![]);
    for (i, s, _) in &rows {
        for p in 0..t {
            ids.push(i.get(p).map_or(5, |&x| x as i64));
            mask.push((p < i.len()) as i64);
            // Junk types under the mask, too.
            let last = marked && p + 1 == i.len();
            segments.push(s.get(p).map_or(1, |&x| (x as i64).max(last as i64)));
        }
    }
    let labels: Vec<i64> = rows.iter().map(|r| r.2).collect();
    let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ib, mb, sb, lb) = (bytes(&ids), bytes(&mask), bytes(&segments), bytes(&labels));
    fn view(b: &[u8], shape: Vec<usize>) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, shape, b).unwrap()
    }
    let n = rows.len();
    let mut tensors = vec![
        ("input_ids", view(&ib, vec![n, t])),
        ("attention_mask", view(&mb, vec![n, t])),
        ("labels", view(&lb, vec![n])),
    ];
    if types {
        tensors.push(("token_type_ids", view(&sb, vec![n, t])));
    }
    safetensors::serialize_to_file(tensors, None, to).unwrap();
}

/// bert-cls's validation metrics on `data`.
fn bert_cls_val(data: &Path) -> Metrics {
    let models = ["bert-cls".to_string()];
    let mut s = session_on(&models, data, Task::Classification, &serde_json::json!({}));
    s.ingredients(&[Split::Val]).unwrap()[0].val.unwrap()
}

/// A pair classifier reads a pre-tokenised file's `token_type_ids` as it reads the segments
/// of the same pairs given as text: the same scores, exactly. Without them every token is
/// segment 0, which scores differently, so the check can fail.
#[test]
fn pre_tokenised_pairs_keep_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let as_text = bert_cls_val(&text_fixture("data/cls.jsonl"));
    let (typed, untyped) = (
        dir.path().join("typed.safetensors"),
        dir.path().join("untyped.safetensors"),
    );
    pre_tokenised_pairs("bert-cls", &typed, true);
    pre_tokenised_pairs("bert-cls", &untyped, false);
    assert_eq!(
        format!("{:?}", bert_cls_val(&typed)),
        format!("{as_text:?}")
    );
    assert_ne!(bert_cls_val(&untyped).loss, as_text.loss);
}

/// Segment ids a model can't read are refused, naming the row: past BERT's
/// `type_vocab_size`, and any but 0 for RoBERTa (whose one type row transformers would index
/// out of range) or a decoder.
#[test]
fn pre_tokenised_segments_a_model_cannot_read_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let typed = dir.path().join("typed.safetensors");
    pre_tokenised_pairs("roberta-cls", &typed, true);
    let open = |model: &str, task: Task| {
        let dirs = [model_dir(model)];
        let arch = Selection::parse("auto")
            .unwrap()
            .configure(&Checkpoint::open(&dirs[0]).unwrap(), &Options::default())
            .unwrap();
        let options = DataOptions {
            text: TextOptions {
                task: Some(task),
                ..TextOptions::default()
            },
            ..DataOptions::default()
        };
        Session::open_data(
            Evaluator::new(arch, Device::Cpu, 5),
            &dirs,
            Some(&typed),
            None,
            &options,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let e = open("roberta-cls", Task::Classification);
    assert!(
        e.contains("'token_type_ids' is 1 at row") && e.contains("every type must be 0"),
        "{e}"
    );
}

#[test]
fn metrics_equal_pytorch_for_every_model_and_ensemble() {
    let entries: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(text_fixture("parity/metrics.json")).unwrap(),
    )
    .unwrap();
    let mut worst: f64 = 0.0;
    let mut checked = 0;
    for e in &entries {
        let models: Vec<String> = match &e["model"] {
            Value::String(m) => vec![m.clone()],
            Value::Array(a) => a.iter().map(|m| m.as_str().unwrap().to_string()).collect(),
            other => panic!("model {other}"),
        };
        let data = e["data"].as_str().unwrap();
        let task = match e["task"].as_str().unwrap() {
            "classification" => Task::Classification,
            "lm" => Task::LanguageModelling,
            "multiple_choice" => Task::MultipleChoice,
            other => panic!("task {other}"),
        };
        let what = format!("{models:?} on {data} {}", e["options"]);
        let mut s = session(&models[..1], data, task, &e["options"]);
        let m: Metrics = if models.len() == 1 {
            s.ingredients(&[Split::Val]).unwrap()[0].val.unwrap()
        } else if task == Task::Classification {
            // Members of different architectures (BERT and DistilBERT, each with its own
            // tokenizer): no soup, so each is scored in a session of its own and the mean of
            // their softmax probabilities is taken here.
            let mut sum: Vec<f64> = Vec::new();
            let mut classes = 0;
            for m in &models {
                let mut one = session(std::slice::from_ref(m), data, task, &e["options"]);
                classes = one.arch().output().width();
                let Some(Outputs::Logits(logits)) = one.ingredient_outputs(0, Split::Val).unwrap()
                else {
                    panic!("{what}: a classifier gives logits")
                };
                let p = soup_eval::score::softmax(logits, classes);
                if sum.is_empty() {
                    sum = vec![0.0; p.len()];
                }
                sum.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
            }
            let mean: Vec<f64> = sum.iter().map(|x| x / models.len() as f64).collect();
            let Some(soup_eval::dataset::Data::Text(d)) = s.data(Split::Val) else {
                panic!("text data")
            };
            Metrics::classification(
                Score::from_probabilities(&mean, classes, &d.labels),
                Metric::Accuracy,
            )
        } else {
            // Members of different architectures (tied, untied, Mistral's window): no soup,
            // so no session over them all; the mixture of their models on the first one's data.
            mixture(&s, &models, task)
        };
        let expected = &e["metrics"];
        let n = e["per_example"].as_array().unwrap().len();
        for (key, ours) in [
            ("accuracy", m.accuracy),
            ("loss", m.loss),
            ("perplexity", m.perplexity.unwrap_or(f64::NAN)),
            ("acc_norm", m.acc_norm.unwrap_or(f64::NAN)),
        ] {
            if let Some(theirs) = expected.get(key).and_then(Value::as_f64) {
                if key.starts_with("acc") {
                    assert_eq!(ours, theirs, "{what}: {key}");
                } else {
                    worst = worst.max(close(ours, theirs, &format!("{what}: {key}")));
                }
            }
        }
        match task {
            Task::LanguageModelling => {
                assert_eq!(
                    m.total,
                    expected["tokens"].as_u64().unwrap(),
                    "{what}: tokens"
                );
            }
            _ => assert_eq!(m.total, n as u64, "{what}: examples"),
        }
        if models.len() == 1 {
            worst = worst.max(per_example(&mut s, task, &e["per_example"], &what));
        }
        if task == Task::MultipleChoice {
            // The choice cross-entropy, from PyTorch's per-choice scores.
            let mut loss = 0.0;
            let mut answers =
                std::fs::read_to_string(text_fixture(&format!("data/{data}"))).unwrap();
            answers.retain(|_| true);
            let answers: Vec<usize> = answers
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["answer"]
                        .as_u64()
                        .unwrap() as usize
                })
                .collect();
            for (q, a) in e["per_example"].as_array().unwrap().iter().zip(&answers) {
                let scores: Vec<f64> = q["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                loss += max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln() - scores[*a];
            }
            worst = worst.max(close(
                m.loss,
                loss / answers.len() as f64,
                &format!("{what}: choice loss"),
            ));
        }
        checked += 1;
    }
    assert_eq!(checked, entries.len(), "every entry is checked");
    assert!(checked >= 70, "{checked} entries");
    eprintln!("{checked} reference entries; worst relative error {worst:.2e}");
}

/// Language modelling: each window's summed log-probability and token count; multiple choice:
/// each choice's summed log-probability. Returns the worst relative error.
fn per_example(s: &mut Session, task: Task, expected: &Value, what: &str) -> f64 {
    let Some(Outputs::Tokens(stats)) = s.ingredient_outputs(0, Split::Val).unwrap() else {
        return 0.0;
    };
    let mut worst: f64 = 0.0;
    match task {
        Task::LanguageModelling => {
            let windows: Vec<&Value> = expected
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["count"].as_u64().unwrap() > 0)
                .collect();
            assert_eq!(stats.len(), windows.len(), "{what}: windows");
            for (i, (ours, theirs)) in stats.iter().zip(windows).enumerate() {
                assert_eq!(
                    ours.tokens,
                    theirs["count"].as_u64().unwrap(),
                    "{what}: window {i}"
                );
                let err = (ours.log_prob - theirs["sum_logprob"].as_f64().unwrap()).abs()
                    / theirs["sum_logprob"].as_f64().unwrap().abs().max(1.0);
                assert!(
                    err <= TOLERANCE,
                    "{what}: window {i}: {} vs {}",
                    ours.log_prob,
                    theirs["sum_logprob"]
                );
                worst = worst.max(err);
            }
        }
        Task::MultipleChoice => {
            let scores: Vec<f64> = expected
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|q| {
                    q["scores"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap())
                })
                .collect();
            assert_eq!(stats.len(), scores.len(), "{what}: choices");
            for (i, (ours, theirs)) in stats.iter().zip(scores).enumerate() {
                let err = (ours.log_prob - theirs).abs() / theirs.abs().max(1.0);
                assert!(
                    err <= TOLERANCE,
                    "{what}: choice {i}: {} vs {theirs}",
                    ours.log_prob
                );
                worst = worst.max(err);
            }
        }
        Task::Classification => {}
    }
    worst
}

/// The mixture ensemble of `models` (fixture names) on the session's validation data.
fn mixture(s: &Session, models: &[String], task: Task) -> Metrics {
    let Some(soup_eval::dataset::Data::Text(data)) = s.data(Split::Val) else {
        panic!("text data")
    };
    let built: Vec<Box<dyn soup_eval::arch::Model>> = models
        .iter()
        .map(|m| {
            let c = Checkpoint::open(&model_dir(m)).unwrap();
            let arch = Selection::parse("auto")
                .unwrap()
                .configure(&c, &Options::default())
                .unwrap();
            let w = soup_eval::weights::Weights::from_checkpoint(&c, &Device::Cpu).unwrap();
            arch.build(w.var_builder(candle_core::DType::F32)).unwrap()
        })
        .collect();
    let stats = s
        .evaluator()
        .model_stats(&built, data, Mode::Probs)
        .unwrap();
    let metric = if task == Task::LanguageModelling {
        Metric::Loss
    } else {
        Metric::Accuracy
    };
    Outputs::Tokens(stats).metrics(s.data(Split::Val).unwrap(), 0, metric)
}

/// Pre-tokenised data of any integer type scores as I64 does: ids, segments and labels as
/// I32 (what many tokenisers and `np.int32` give) and the mask as bool (torch's `mask > 0`).
/// Anything but I64 was refused.
#[test]
fn pre_tokenised_integers_of_any_type_score_as_i64_does() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("i64.safetensors");
    pre_tokenised_pairs("bert-cls", &wide, true);
    let bytes = std::fs::read(&wide).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let narrowed: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()));
            let (dtype, data): (_, Vec<u8>) = if name == "attention_mask" {
                (safetensors::Dtype::BOOL, values.map(|v| v as u8).collect())
            } else {
                let narrow = values.map(|v| i32::try_from(v).unwrap().to_le_bytes());
                (safetensors::Dtype::I32, narrow.flatten().collect())
            };
            (name, dtype, t.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = narrowed
        .iter()
        .map(|(name, dtype, shape, data)| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
            (name.clone(), view.unwrap())
        })
        .collect();
    let narrow = dir.path().join("i32.safetensors");
    safetensors::serialize_to_file(views, None, &narrow).unwrap();
    assert_eq!(
        format!("{:?}", bert_cls_val(&narrow)),
        format!("{:?}", bert_cls_val(&wide))
    );
}

/// Multiple choice past `--max-length`, against lm-evaluation-harness's truncation
/// (parity/mc-truncation.json, fixtures/text/make_mc_truncation_reference.py): `max_length`
/// tokens of input predict `max_length + 1` tokens, because the last token is only predicted,
/// so the context loses tokens from the left only beyond that. At 92 (the longest sequence is
/// 94 tokens) exactly one context token goes; soup-eval cut one more of every sequence longer
/// than 92 than lm-eval does, and so changed scores lm-eval doesn't cut at all.
#[test]
fn truncated_multiple_choice_scores_equal_lm_evaluation_harness() {
    let entries: Value = serde_json::from_str(
        &std::fs::read_to_string(text_fixture("parity/mc-truncation.json")).unwrap(),
    )
    .unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        let model = entry["model"].as_str().unwrap().to_string();
        let max_length = entry["max_length"].as_u64().unwrap();
        let options = serde_json::json!({ "max_length": max_length });
        let mut s = session(
            std::slice::from_ref(&model),
            entry["data"].as_str().unwrap(),
            Task::MultipleChoice,
            &options,
        );
        let what = format!("{model} on mc.jsonl at --max-length {max_length}");
        let questions: Vec<Value> = entry["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|scores| serde_json::json!({ "scores": scores }))
            .collect();
        let worst = per_example(&mut s, Task::MultipleChoice, &Value::from(questions), &what);
        assert!(worst <= TOLERANCE, "{what}: {worst:.2e}");
    }
}

/// A tokenizer_config.json with `"truncation_side": "left"` truncates classification inputs
/// from the left, as transformers' tokenizer does (parity/truncation-side.json,
/// fixtures/text/make_truncation_side_reference.py: bert-cls on cls.jsonl at --max-length 16,
/// singles and pairs). soup-eval cut from the right whatever the file said: the same accuracy
/// here but a loss of 1.2234 where transformers' is 1.2030, and other tokens.
#[test]
fn truncation_side_left_cuts_as_transformers_does() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(text_fixture("parity/truncation-side.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("bert-cls");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(model_dir("bert-cls")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let config_path = model.join("tokenizer_config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["truncation_side"] = Value::from("left");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let max_length = expected["max_length"].as_u64().unwrap() as usize;
    let tokenizer = TextTokenizer::open(&model.join("tokenizer.json"))
        .unwrap()
        .truncated(max_length)
        .unwrap();
    let rows = lines(&text_fixture("data/cls.jsonl"));
    let per_example = expected["per_example"].as_array().unwrap();
    assert_eq!(rows.len(), per_example.len());
    let mut cut = 0;
    for (row, theirs) in rows.iter().zip(per_example) {
        let text = row["text"].as_str().unwrap();
        let pair = row.get("text_pair").and_then(Value::as_str);
        let ids = tokenizer.encode(text, pair, true).unwrap();
        let want: Vec<u32> = theirs["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{text:?} / {pair:?}");
        cut += (ids.len() == max_length) as usize;
    }
    assert!(cut >= 2, "only {cut} examples were truncated");

    let arch = Selection::parse("auto")
        .unwrap()
        .configure(&Checkpoint::open(&model).unwrap(), &Options::default())
        .unwrap();
    let options = DataOptions {
        text: TextOptions {
            task: Some(Task::Classification),
            max_length: Some(max_length),
            ..TextOptions::default()
        },
        metric: Some(Metric::Accuracy),
        ..DataOptions::default()
    };
    let mut s = Session::open_data(
        Evaluator::new(arch, Device::Cpu, 5),
        &[model],
        Some(&text_fixture("data/cls.jsonl")),
        None,
        &options,
    )
    .unwrap();
    let m = s.ingredients(&[Split::Val]).unwrap()[0].val.unwrap();
    let metrics = &expected["metrics"];
    close(m.loss, metrics["loss"].as_f64().unwrap(), "loss");
    close(
        m.accuracy,
        metrics["accuracy"].as_f64().unwrap(),
        "accuracy",
    );
}
