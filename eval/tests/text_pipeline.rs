//! The language-model pipeline end to end through `Session`, on two tiny test-only models
//! whose logits are easy to compute by hand: a bigram LM (the logits after token `a` are row
//! `a` of its one weight matrix) and a bag-of-tokens classifier (the sum of one row per real
//! token). Every metric is compared with a float64 reference written here from spec §3; the
//! greedy search's every decision is checked against the reference loss of its candidate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use soup_eval::arch::{Architecture, Batch, Input, Model, Output, TensorSpec, TokenInput};
use soup_eval::dataset::Data;
use soup_eval::ensemble::Mode;
use soup_eval::evaluator::Evaluator;
use soup_eval::score::{Metric, Metrics, Task};
use soup_eval::session::{DataOptions, Session, Split};
use soup_eval::text::TextOptions;

const WORDS: &[&str] = &[
    "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "it", "and", "saw",
];
/// Ids: 0 [UNK], 1 [PAD], 2 [BOS], then the words.
const V: usize = 3 + 12;
const CLASSES: usize = 3;
const BOS: u32 = 2;

/// A word's id; unknown words are [UNK], 0.
fn id(word: &str) -> u32 {
    WORDS
        .iter()
        .position(|w| *w == word)
        .map_or(0, |i| 3 + i as u32)
}

/// Whitespace-split ids, as the WordLevel tokenizer below gives them.
fn ids(text: &str) -> Vec<u32> {
    text.split_whitespace().map(id).collect()
}

/// A WordLevel tokenizer.json over WORDS; with special tokens, `[BOS]` goes first.
fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["[UNK]", "[PAD]", "[BOS]"].iter().chain(WORDS).enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 2, "content": "[BOS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[BOS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[BOS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"[BOS]": {"id": "[BOS]", "ids": [2], "tokens": ["[BOS]"]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

/// A bigram LM: logits at position t are row ids[t] of `lm.weight` [V, V].
struct Bigram;
struct BigramModel(candle_nn::Embedding);

impl Model for BigramModel {
    fn logits(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        self.0.forward(batch.inputs)
    }
}

impl Architecture for Bigram {
    fn family(&self) -> &'static str {
        "bigram"
    }
    fn describe(&self) -> String {
        "bigram".into()
    }
    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: V,
            max_positions: Some(12),
            trained_positions: None,
            pad_token_id: Some(1),
            segments: 1,
        })
    }
    fn output(&self) -> Output {
        Output::NextToken(V)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::float("lm.weight", &[V, V])]
    }
    fn build(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn Model>> {
        let w = vb.get((V, V), "lm.weight")?;
        Ok(Box::new(BigramModel(candle_nn::Embedding::new(w, V))))
    }
}

/// The bigram LM as a rotary model trained on 4 positions: no hard limit, but the defaults
/// stay within its training length.
struct Rotary;

impl Architecture for Rotary {
    fn family(&self) -> &'static str {
        "rotary"
    }
    fn describe(&self) -> String {
        "rotary".into()
    }
    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: V,
            max_positions: None,
            trained_positions: Some(4),
            pad_token_id: Some(1),
            segments: 1,
        })
    }
    fn output(&self) -> Output {
        Bigram.output()
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        Bigram.tensors()
    }
    fn build(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn Model>> {
        Bigram.build(vb)
    }
}

/// A bag of tokens: logits = the sum over real tokens of row id of `bag.weight` [V, C].
struct Bag;
struct BagModel(Tensor);

impl Model for BagModel {
    fn logits(&self, batch: &Batch) -> candle_core::Result<Tensor> {
        let (b, t) = batch.inputs.dims2()?;
        let rows = self
            .0
            .index_select(&batch.inputs.flatten_all()?, 0)?
            .reshape((b, t, CLASSES))?;
        let mask = batch
            .attention_mask
            .expect("tokens come with a mask")
            .to_dtype(DType::F32)?
            .unsqueeze(2)?;
        rows.broadcast_mul(&mask)?.sum(1)
    }
}

impl Architecture for Bag {
    fn family(&self) -> &'static str {
        "bag"
    }
    fn describe(&self) -> String {
        "bag".into()
    }
    fn input(&self) -> Input {
        Input::Tokens(TokenInput {
            vocab: V,
            max_positions: Some(6),
            trained_positions: None,
            pad_token_id: None,
            segments: 1,
        })
    }
    fn output(&self) -> Output {
        Output::Classes(CLASSES)
    }
    fn tensors(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::float("bag.weight", &[V, CLASSES])]
    }
    fn build(&self, vb: VarBuilder) -> candle_core::Result<Box<dyn Model>> {
        Ok(Box::new(BagModel(vb.get((V, CLASSES), "bag.weight")?)))
    }
}

/// Deterministic values in [-scale, scale] (SplitMix64).
fn noise(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
        })
        .collect()
}

/// A model directory with one f32 tensor, a config.json and the tokenizer.
fn model_dir(
    root: &Path,
    name: &str,
    tensor: &str,
    shape: &[usize],
    values: &[f32],
    config: serde_json::Value,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &bytes)
            .unwrap();
    safetensors::serialize_to_file([(tensor, view)], None, &dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
    dir
}

fn open(
    arch: Arc<dyn Architecture>,
    dirs: &[PathBuf],
    val: &Path,
    test: Option<&Path>,
    batch: usize,
    options: DataOptions,
) -> soup_eval::Result<Session> {
    let evaluator = Evaluator::new(arch, Device::Cpu, batch);
    Session::open_data(evaluator, dirs, Some(val), test, &options)
}

fn lm_options(seq_len: usize, stride: usize, metric: Option<Metric>) -> DataOptions {
    DataOptions {
        text: TextOptions {
            seq_len: Some(seq_len),
            stride: Some(stride),
            ..TextOptions::default()
        },
        metric,
        ..DataOptions::default()
    }
}

// ----- float64 references, from spec §3 -----

fn row(w: &[f64], width: usize, r: u32) -> &[f64] {
    &w[r as usize * width..(r as usize + 1) * width]
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn first_max(x: &[f64]) -> usize {
    let mut best = 0;
    for i in 1..x.len() {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

/// (position, previous token, token) of every scored token of a document (spec §3 windows).
fn scored(doc: &[u32], l: usize, s: usize) -> Vec<(u32, u32)> {
    let n = doc.len();
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    let (mut begin, mut prev_end) = (0, 0);
    loop {
        let end = (begin + l).min(n);
        for p in prev_end.max(begin + 1)..end {
            out.push((doc[p - 1], doc[p]));
        }
        if end == n {
            return out;
        }
        prev_end = end;
        begin += s;
    }
}

/// Loss and accuracy of the mixture of `models` (one: the model itself) on `pairs`.
fn lm_reference(models: &[Vec<f64>], pairs: &[(u32, u32)]) -> (f64, f64) {
    let (mut loss, mut right) = (0.0, 0);
    for &(prev, tok) in pairs {
        let mut mix = vec![0.0; V];
        for w in models {
            for (m, p) in mix.iter_mut().zip(softmax(row(w, V, prev))) {
                *m += p / models.len() as f64;
            }
        }
        loss -= mix[tok as usize].ln();
        if first_max(&mix) == tok as usize {
            right += 1;
        }
    }
    (loss / pairs.len() as f64, right as f64 / pairs.len() as f64)
}

/// The uniform soup's weights as the evaluator builds them: an f64 mean rounded to f32.
fn soup(models: &[&Vec<f32>]) -> Vec<f64> {
    (0..models[0].len())
        .map(|i| {
            let s: f64 = models.iter().map(|m| m[i] as f64).sum();
            (s / models.len() as f64) as f32 as f64
        })
        .collect()
}

fn wide(w: &[f32]) -> Vec<f64> {
    w.iter().map(|&x| x as f64).collect()
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 2e-6 * b.abs().max(1.0),
        "{what}: {a} vs reference {b}"
    );
}

const VAL: &str = "the cat sat on the mat and the dog saw the cat\nit ran to the mat";
const TEST: &str = "a dog sat on a mat and it saw the cat ran";

/// Weights close to the bigram log-frequencies of the validation text (good fine-tunes), or
/// random (a bad one).
fn bigram_weights(seed: u64, good: bool) -> Vec<f32> {
    let mut w = noise(seed, V * V, if good { 2.0 } else { 3.0 });
    if good {
        let doc: Vec<u32> = std::iter::once(BOS)
            .chain(ids(&VAL.replace('\n', " ")))
            .collect();
        for p in doc.windows(2) {
            w[p[0] as usize * V + p[1] as usize] += 3.0;
        }
    }
    w
}

struct LmFixture {
    _dir: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    weights: Vec<Vec<f32>>,
    val: PathBuf,
    test: PathBuf,
}

fn lm_fixture() -> LmFixture {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"bos_token_id": BOS, "pad_token_id": 1});
    let weights = vec![
        bigram_weights(1, true),
        bigram_weights(2, true),
        bigram_weights(3, false),
        bigram_weights(4, true),
    ];
    let dirs = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            model_dir(
                dir.path(),
                &format!("ft-{i}"),
                "lm.weight",
                &[V, V],
                w,
                config.clone(),
            )
        })
        .collect();
    let val = dir.path().join("val.txt");
    std::fs::write(&val, VAL).unwrap();
    let test = dir.path().join("test.jsonl");
    std::fs::write(
        &test,
        TEST.split(" and ")
            .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    LmFixture {
        _dir: dir,
        dirs,
        weights,
        val,
        test,
    }
}

/// The val text file is one document; the test .jsonl has one document per line; both get BOS.
fn val_doc() -> Vec<u32> {
    std::iter::once(BOS).chain(ids(VAL)).collect()
}

fn test_pairs(l: usize, s: usize) -> Vec<(u32, u32)> {
    TEST.split(" and ")
        .flat_map(|t| {
            let doc: Vec<u32> = std::iter::once(BOS).chain(ids(t)).collect();
            scored(&doc, l, s)
        })
        .collect()
}

fn check_lm(m: &Metrics, models: &[Vec<f64>], pairs: &[(u32, u32)], what: &str) {
    let (loss, acc) = lm_reference(models, pairs);
    assert_eq!(m.task, Task::LanguageModelling);
    assert_eq!(m.total, pairs.len() as u64, "{what}: scored tokens");
    close(m.loss, loss, &format!("{what} loss"));
    close(
        m.perplexity.unwrap(),
        loss.exp(),
        &format!("{what} perplexity"),
    );
    close(m.accuracy, acc, &format!("{what} accuracy"));
}

#[test]
fn language_modelling_metrics_soups_and_mixture_match_the_reference() {
    let f = lm_fixture();
    for (l, s, batch) in [(12, 12, 8), (5, 2, 3), (4, 4, 1), (2, 1, 2)] {
        let mut session = open(
            Arc::new(Bigram),
            &f.dirs,
            &f.val,
            Some(&f.test),
            batch,
            lm_options(l, s, None),
        )
        .unwrap();
        assert_eq!(
            (session.task(), session.metric()),
            (Task::LanguageModelling, Metric::Loss)
        );
        let rows = session.ingredients(&[Split::Val, Split::Test]).unwrap();
        let val_pairs = scored(&val_doc(), l, s);
        for (i, r) in rows.iter().enumerate() {
            let w = [wide(&f.weights[i])];
            check_lm(
                r.val.as_ref().unwrap(),
                &w,
                &val_pairs,
                &format!("L{l} S{s} val {i}"),
            );
            check_lm(
                r.test.as_ref().unwrap(),
                &w,
                &test_pairs(l, s),
                &format!("L{l} S{s} test {i}"),
            );
        }
        let uniform = session.uniform().unwrap();
        let all: Vec<&Vec<f32>> = f.weights.iter().collect();
        check_lm(
            uniform.val.as_ref().unwrap(),
            &[soup(&all)],
            &val_pairs,
            "uniform",
        );
        let ensemble = session.ensemble(Mode::Probs).unwrap();
        let every: Vec<Vec<f64>> = f.weights.iter().map(|w| wide(w)).collect();
        check_lm(
            ensemble.row.val.as_ref().unwrap(),
            &every,
            &val_pairs,
            "mixture val",
        );
        check_lm(
            ensemble.row.test.as_ref().unwrap(),
            &every,
            &test_pairs(l, s),
            "mixture test",
        );
    }
}

#[test]
fn greedy_minimises_loss_and_each_step_agrees_with_the_reference() {
    let f = lm_fixture();
    let (l, s) = (6, 3);
    let pairs = scored(&val_doc(), l, s);
    let mut session = open(
        Arc::new(Bigram),
        &f.dirs,
        &f.val,
        None,
        4,
        lm_options(l, s, None),
    )
    .unwrap();
    session.check_soup().unwrap();
    let greedy = session.greedy(false, None).unwrap();
    assert_eq!(greedy.goal, soup_eval::greedy::Goal::Minimize);
    assert_eq!(greedy.metric, Some(Metric::Loss));
    // The ranking is by loss, lowest first.
    let losses: Vec<f64> = f
        .weights
        .iter()
        .map(|w| lm_reference(&[wide(w)], &pairs).0)
        .collect();
    let mut order: Vec<usize> = (0..4).collect();
    order.sort_by(|&a, &b| losses[a].total_cmp(&losses[b]));
    assert_eq!(greedy.search.ranking, order);
    let mut chosen = vec![order[0]];
    let mut current = losses[order[0]];
    for step in &greedy.search.steps {
        let mut members: Vec<&Vec<f32>> = chosen.iter().map(|&i| &f.weights[i]).collect();
        members.push(&f.weights[step.candidate]);
        let (loss, _) = lm_reference(&[soup(&members)], &pairs);
        close(step.trial.val.loss, loss, "candidate loss");
        assert_eq!(step.kept, loss < current, "step {step:?}");
        if step.kept {
            chosen.push(step.candidate);
            current = loss;
        }
    }
    assert_eq!(greedy.search.chosen, chosen);
    assert!(
        !chosen.contains(&2),
        "the random ingredient must be rejected: {chosen:?}"
    );
    assert!(chosen.len() >= 2, "{chosen:?}");
    // --metric accuracy ranks by next-token accuracy instead, maximised.
    let mut by_acc = open(
        Arc::new(Bigram),
        &f.dirs,
        &f.val,
        None,
        4,
        lm_options(l, s, Some(Metric::Accuracy)),
    )
    .unwrap();
    let g = by_acc.greedy(false, None).unwrap();
    assert_eq!(g.goal, soup_eval::greedy::Goal::Maximize);
    let table = soup_eval::report::Report {
        arch: "bigram".into(),
        device: None,
        eval_dtype: None,
        val_data: None,
        test_data: None,
        preprocessor: None,
        ingredients: by_acc.ingredients(&[Split::Val]).unwrap(),
        uniform: None,
        greedy: Some(g),
        ensemble: None,
        scorer: None,
        warnings: vec![],
    }
    .table();
    assert!(table.lines().next().unwrap().contains("val ppl"), "{table}");
    assert!(
        table.contains("by val accuracy (higher is better)"),
        "{table}"
    );
}

#[test]
fn results_do_not_depend_on_the_batch_size() {
    let f = lm_fixture();
    let score = |batch| {
        let mut s = open(
            Arc::new(Bigram),
            &f.dirs[..1],
            &f.val,
            None,
            batch,
            lm_options(5, 3, None),
        )
        .unwrap();
        s.ingredients(&[Split::Val]).unwrap()[0].val.unwrap()
    };
    assert_eq!(score(1), score(7));
}

#[test]
fn pre_tokenised_rows_score_like_the_same_tokens_as_text() {
    let f = lm_fixture();
    // Two rows, right-padded with junk that the mask hides: the documents of test.jsonl.
    let docs: Vec<Vec<u32>> = TEST
        .split(" and ")
        .map(|t| std::iter::once(BOS).chain(ids(t)).collect())
        .collect();
    let t = docs.iter().map(Vec::len).max().unwrap() + 2;
    let (mut input, mut mask) = (Vec::new(), Vec::new());
    for d in &docs {
        for p in 0..t {
            input.push(*d.get(p).unwrap_or(&7) as i64);
            mask.push((p < d.len()) as i64);
        }
    }
    let path = f.dirs[0].parent().unwrap().join("test.safetensors");
    let bytes = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (ib, mb) = (bytes(&input), bytes(&mask));
    safetensors::serialize_to_file(
        [
            (
                "input_ids",
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2, t], &ib)
                    .unwrap(),
            ),
            (
                "attention_mask",
                safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2, t], &mb)
                    .unwrap(),
            ),
        ],
        None,
        &path,
    )
    .unwrap();
    let score = |p: &Path| {
        let mut s = open(
            Arc::new(Bigram),
            &f.dirs[..1],
            p,
            None,
            3,
            lm_options(5, 2, None),
        )
        .unwrap();
        s.ingredients(&[Split::Val]).unwrap()[0].val.unwrap()
    };
    assert_eq!(score(&path), score(&f.test));
}

/// Choices start with a space, as in lm-evaluation-harness, except after a context that ends
/// with whitespace, which moves to them; acc_norm divides by the choice's characters without
/// that space, as lm-evaluation-harness divides by `len(choice)`. In "it saws a" the choice's
/// tokens are those after the context's length: "a" alone, after the unknown "saws".
const MC: &[(&str, &[&str], usize)] = &[
    ("the cat sat on the  ", &["mat", "dog ran"], 0),
    ("it saw", &[" the cat", "s a", " the dog and the mat"], 2),
    ("a dog ran to", &[" the mat", " it"], 1),
];

#[test]
fn multiple_choice_scores_like_lm_evaluation_harness() {
    let f = lm_fixture();
    let path = f.dirs[0].parent().unwrap().join("mc.jsonl");
    let text: String = MC
        .iter()
        .map(|(c, ch, a)| {
            serde_json::json!({"context": c, "choices": ch, "answer": a}).to_string() + "\n"
        })
        .collect();
    std::fs::write(&path, text).unwrap();
    let options = |metric| DataOptions {
        metric,
        ..DataOptions::default()
    };
    let mut session = open(
        Arc::new(Bigram),
        &f.dirs,
        &path,
        None,
        2,
        options(Some(Metric::AccNorm)),
    )
    .unwrap();
    assert_eq!(session.task(), Task::MultipleChoice);
    let rows = session.ingredients(&[Split::Val]).unwrap();
    let ensemble = session.ensemble(Mode::Probs).unwrap();
    // Reference: each choice's summed log-probability given [BOS] + context.
    let reference = |models: &[Vec<f64>]| {
        let (mut acc, mut norm, mut loss) = (0.0, 0.0, 0.0);
        for (context, choices, answer) in MC {
            let trimmed = context.trim_end();
            let space = &context[trimmed.len()..];
            let ctx: Vec<u32> = std::iter::once(BOS).chain(ids(trimmed)).collect();
            let (mut scores, mut normed) = (Vec::new(), Vec::new());
            for choice in *choices {
                let moved = format!("{space}{choice}");
                // lm-evaluation-harness's len(choice): without the delimiter before it.
                let chars = moved.trim_start().chars().count();
                let whole: Vec<u32> = std::iter::once(BOS)
                    .chain(ids(&format!("{trimmed}{moved}")))
                    .collect();
                let mut s = 0.0;
                for i in ctx.len()..whole.len() {
                    let mut mix = 0.0;
                    for w in models {
                        mix += softmax(row(w, V, whole[i - 1]))[whole[i] as usize]
                            / models.len() as f64;
                    }
                    s += mix.ln();
                }
                scores.push(s);
                normed.push(s / chars as f64);
            }
            acc += (first_max(&scores) == *answer) as u8 as f64;
            norm += (first_max(&normed) == *answer) as u8 as f64;
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            loss += m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln() - scores[*answer];
        }
        let n = MC.len() as f64;
        (acc / n, norm / n, loss / n)
    };
    let check = |m: &Metrics, models: &[Vec<f64>], what: &str| {
        let (acc, norm, loss) = reference(models);
        assert_eq!(m.total, MC.len() as u64);
        close(m.accuracy, acc, &format!("{what} accuracy"));
        close(m.acc_norm.unwrap(), norm, &format!("{what} acc_norm"));
        close(m.loss, loss, &format!("{what} loss"));
    };
    for (i, r) in rows.iter().enumerate() {
        check(
            r.val.as_ref().unwrap(),
            &[wide(&f.weights[i])],
            &format!("ingredient {i}"),
        );
    }
    let every: Vec<Vec<f64>> = f.weights.iter().map(|w| wide(w)).collect();
    check(ensemble.row.val.as_ref().unwrap(), &every, "mixture");
}

/// The longest sequence each split's sequences have.
fn longest(session: &Session) -> usize {
    let Some(Data::Text(data)) = session.data(Split::Val) else {
        panic!("text data")
    };
    data.sequences.iter().map(|s| s.len()).max().unwrap()
}

/// A rotary model's training length bounds the default windows and contexts (as the help
/// and lm-evaluation-harness have it); explicit flags may pass it.
#[test]
fn defaults_stay_within_a_rotary_models_training_length() {
    let f = lm_fixture();
    let lm = |text: TextOptions| {
        let options = DataOptions {
            text,
            ..DataOptions::default()
        };
        open(Arc::new(Rotary), &f.dirs, &f.val, None, 2, options).unwrap()
    };
    let default = lm(TextOptions::default());
    assert_eq!(longest(&default), 4);
    let explicit = lm(TextOptions {
        seq_len: Some(4),
        ..TextOptions::default()
    });
    let (Some(Data::Text(a)), Some(Data::Text(b))) =
        (default.data(Split::Val), explicit.data(Split::Val))
    else {
        panic!("text data")
    };
    assert_eq!(a.sequences, b.sequences);
    // Past the trained length is refused, as BERT's --max-length past its positions is: a
    // --seq-len of 1e6 once asked for a whole document's [T, T] attention at once.
    let refused = |result: soup_eval::Result<Session>, flag: &str| {
        let e = result.err().expect("refused").to_string();
        for needle in [
            format!("{flag} 12 is more than the model's 4 positions"),
            "max_position_embeddings".to_string(),
            "pass at most 4".to_string(),
        ] {
            assert!(e.contains(&needle), "{needle:?} not in {e}");
        }
    };
    refused(
        open(
            Arc::new(Rotary),
            &f.dirs,
            &f.val,
            None,
            2,
            lm_options(12, 12, None),
        ),
        "--seq-len",
    );

    let path = f.dirs[0].parent().unwrap().join("long.jsonl");
    let line = serde_json::json!({"context": "the cat sat on the mat and the dog", "choices": [" saw", " ran"], "answer": 0});
    std::fs::write(&path, line.to_string() + "\n").unwrap();
    let mc = |max_length| {
        let options = DataOptions {
            text: TextOptions {
                max_length,
                ..TextOptions::default()
            },
            ..DataOptions::default()
        };
        open(Arc::new(Rotary), &f.dirs, &path, None, 2, options)
    };
    // [BOS] + 9 words + the choice: 11 tokens, cut from the left to the 4 trained positions
    // of input and the token they predict (as lm-evaluation-harness cuts: the last token is
    // never read for a prediction, so its position's logits are unused).
    assert_eq!(longest(&mc(None).unwrap()), 5);
    assert_eq!(longest(&mc(Some(3)).unwrap()), 4);
    refused(mc(Some(12)), "--max-length");
}

// ----- classification -----

const CLS: &[(&str, Option<&str>, &str)] = &[
    ("the cat sat", None, "pos"),
    (
        "a dog ran to the mat and it saw the cat",
        Some("the dog"),
        "neg",
    ),
    ("it", None, "mid"),
    ("the mat", Some("cat"), "pos"),
    ("dog dog dog", None, "neg"),
];

fn cls_config() -> serde_json::Value {
    serde_json::json!({"label2id": {"pos": 0, "neg": 1, "mid": 2}, "id2label": {"0": "pos", "1": "neg", "2": "mid"}})
}

/// Reference: [BOS] + text (+ pair), truncated to 6 tokens (the model's positions) longest
/// first; logits are the sum of the rows.
fn cls_reference(models: &[Vec<f64>], mode: Mode) -> (f64, f64) {
    let (mut right, mut loss) = (0, 0.0);
    for (text, pair, label) in CLS {
        let label = ["pos", "neg", "mid"]
            .iter()
            .position(|l| l == label)
            .unwrap();
        let (mut a, mut b) = (ids(text), pair.map(ids).unwrap_or_default());
        while 1 + a.len() + b.len() > 6 {
            if a.len() >= b.len() {
                a.pop();
            } else {
                b.pop();
            }
        }
        let seq: Vec<u32> = std::iter::once(BOS).chain(a).chain(b).collect();
        let logits = |w: &Vec<f64>| -> Vec<f64> {
            (0..CLASSES)
                .map(|c| seq.iter().map(|&t| row(w, CLASSES, t)[c]).sum())
                .collect()
        };
        let probs: Vec<f64> = match mode {
            Mode::Probs => {
                let mut p = vec![0.0; CLASSES];
                for w in models {
                    for (x, q) in p.iter_mut().zip(softmax(&logits(w))) {
                        *x += q / models.len() as f64;
                    }
                }
                p
            }
            Mode::Logits => {
                let mut l = vec![0.0; CLASSES];
                for w in models {
                    for (x, q) in l.iter_mut().zip(logits(w)) {
                        *x += q / models.len() as f64;
                    }
                }
                softmax(&l)
            }
        };
        right += (first_max(&probs) == label) as usize;
        loss -= probs[label].ln();
    }
    (right as f64 / CLS.len() as f64, loss / CLS.len() as f64)
}

#[test]
fn classification_from_jsonl_names_and_csv_indices_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let weights: Vec<Vec<f32>> = (0..3).map(|i| noise(10 + i, V * CLASSES, 1.0)).collect();
    let dirs: Vec<PathBuf> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            model_dir(
                dir.path(),
                &format!("cls-{i}"),
                "bag.weight",
                &[V, CLASSES],
                w,
                cls_config(),
            )
        })
        .collect();
    let jsonl = dir.path().join("val.jsonl");
    std::fs::write(
        &jsonl,
        CLS.iter()
            .map(|(t, p, l)| {
                match p {
                    Some(p) => serde_json::json!({"text": t, "text_pair": p, "label": l}),
                    None => serde_json::json!({"text": t, "label": l}),
                }
                .to_string()
                    + "\n"
            })
            .collect::<String>(),
    )
    .unwrap();
    let csv = dir.path().join("test.csv");
    let mut text = "label,text,text_pair\n".to_string();
    for (t, p, l) in CLS {
        let i = ["pos", "neg", "mid"].iter().position(|x| x == l).unwrap();
        text += &format!("{i},\"{t}\",{}\n", p.unwrap_or(""));
    }
    std::fs::write(&csv, text).unwrap();
    for batch in [1, 2, 8] {
        let mut session = open(
            Arc::new(Bag),
            &dirs,
            &jsonl,
            Some(&csv),
            batch,
            DataOptions::default(),
        )
        .unwrap();
        assert_eq!(session.task(), Task::Classification);
        let rows = session.ingredients(&[Split::Val, Split::Test]).unwrap();
        for (i, r) in rows.iter().enumerate() {
            let (acc, loss) = cls_reference(&[wide(&weights[i])], Mode::Probs);
            for m in [r.val.unwrap(), r.test.unwrap()] {
                close(m.accuracy, acc, "accuracy");
                close(m.loss, loss, "loss");
                assert_eq!(
                    serde_json::to_value(m).unwrap().as_object().unwrap().len(),
                    4,
                    "a classifier's JSON is a Score's"
                );
            }
        }
        let every: Vec<Vec<f64>> = weights.iter().map(|w| wide(w)).collect();
        for mode in [Mode::Probs, Mode::Logits] {
            let e = session.ensemble(mode).unwrap();
            let (acc, loss) = cls_reference(&every, mode);
            close(e.row.val.unwrap().accuracy, acc, "ensemble accuracy");
            close(e.row.val.unwrap().loss, loss, "ensemble loss");
        }
    }
}

/// Class names that read as integers (sentiment -1/0/1) are names in CSV as in JSONL: the
/// same rows score the same in either format, and `-1` is a name, not an index out of range.
#[test]
fn csv_labels_that_label2id_names_are_names_as_in_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"label2id": {"-1": 0, "0": 1, "1": 2}, "id2label": {"0": "-1", "1": "0", "2": "1"}});
    let dirs = vec![model_dir(
        dir.path(),
        "sentiment",
        "bag.weight",
        &[V, CLASSES],
        &noise(3, V * CLASSES, 1.0),
        config,
    )];
    let rows = [
        ("the cat sat", "1"),
        ("a dog ran", "-1"),
        ("it", "0"),
        ("the mat", "1"),
    ];
    let (jsonl, csv) = (dir.path().join("val.jsonl"), dir.path().join("test.csv"));
    let mut j = String::new();
    let mut c = "text,label\n".to_string();
    for (text, label) in rows {
        j += &(serde_json::json!({"text": text, "label": label}).to_string() + "\n");
        c += &format!("{text},{label}\n");
    }
    std::fs::write(&jsonl, j).unwrap();
    std::fs::write(&csv, c).unwrap();
    let mut session = open(
        Arc::new(Bag),
        &dirs,
        &jsonl,
        Some(&csv),
        4,
        DataOptions::default(),
    )
    .unwrap();
    let row = &session.ingredients(&[Split::Val, Split::Test]).unwrap()[0];
    let (val, test) = (row.val.unwrap(), row.test.unwrap());
    assert_eq!(val.accuracy, test.accuracy);
    assert_eq!(val.loss, test.loss);
}

// ----- errors -----

fn err(arch: Arc<dyn Architecture>, dirs: &[PathBuf], data: &Path, options: DataOptions) -> String {
    match open(arch, dirs, data, None, 4, options) {
        Ok(_) => panic!("{} was accepted", data.display()),
        Err(e) => {
            let e = e.to_string();
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

#[test]
fn bad_text_data_gets_one_line_naming_the_file_the_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cls = vec![model_dir(
        dir.path(),
        "cls",
        "bag.weight",
        &[V, CLASSES],
        &noise(1, V * CLASSES, 1.0),
        cls_config(),
    )];
    let lm = vec![model_dir(
        dir.path(),
        "lm",
        "lm.weight",
        &[V, V],
        &noise(2, V * V, 1.0),
        serde_json::json!({}),
    )];
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let d = DataOptions::default;
    type Case<'a> = (
        Arc<dyn Architecture>,
        &'a Vec<PathBuf>,
        PathBuf,
        DataOptions,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (Arc::new(Bag), &cls, write("a.jsonl", "{\"text\": \"the\", \"label\": 0}\n{\"text\": \"a\", \"label\": 1,}\n"), d(), vec!["a.jsonl", "line 2", "not valid JSON"]),
        (Arc::new(Bag), &cls, write("b.jsonl", "{\"txt\": \"the\", \"label\": 0}\n"), d(), vec!["b.jsonl", "line 1", "no 'text' field"]),
        (Arc::new(Bag), &cls, write("c.jsonl", "{\"text\": \"the\", \"label\": \"happy\"}\n"), d(), vec!["line 1", "\"happy\"", "label2id", "pos"]),
        (Arc::new(Bag), &cls, write("d.jsonl", "\n{\"text\": \"the\", \"label\": 3}\n"), d(), vec!["line 2", "label 3 is out of range", "0 to 2"]),
        (Arc::new(Bag), &cls, write("e.csv", "text,label\nthe,-1\n"), d(), vec!["e.csv", "line 2", "label -1 is out of range"]),
        (Arc::new(Bag), &cls, write("f.csv", "sentence,label\nthe,1\n"), d(), vec!["f.csv", "line 2", "no 'text' field", "header line naming the columns text,label"]),
        (Arc::new(Bag), &cls, write("f.jsonl", "\n\n"), d(), vec!["f.jsonl", "no examples"]),
        (Arc::new(Bag), &cls, write("g.txt", "the cat"), d(), vec!["g.txt", "classification data must be"]),
        (Arc::new(Bag), &cls, write("h.jsonl", "{\"text\": \"the\", \"label\": 0}\n"), DataOptions { text: TextOptions { max_length: Some(7), ..TextOptions::default() }, ..d() }, vec!["--max-length 7", "6 positions"]),
        (Arc::new(Bigram), &lm, write("i.txt", "the"), d(), vec!["i.txt", "no token to score"]),
        (Arc::new(Bigram), &lm, write("j.jsonl", "{\"context\": \"the\", \"choices\": [\" cat\", \"\"], \"answer\": 0}\n"), d(), vec!["j.jsonl", "line 1", "choice 1", "tokenises to nothing"]),
        (Arc::new(Bigram), &lm, write("k.jsonl", "{\"context\": \"the\", \"choices\": [\"cat\", \"dog\"], \"answer\": 2}\n"), d(), vec!["line 1", "'answer' is 2", "0 to 1"]),
        (Arc::new(Bigram), &lm, write("l.jsonl", "{\"context\": \"\", \"choices\": [\"cat\", \"dog\"], \"answer\": 0}\n"), d(), vec!["line 1", "context is empty", "bos_token_id"]),
        (Arc::new(Bigram), &lm, write("m.jsonl", "{\"context\": \"the\", \"choices\": [\" cat the cat the cat the cat the cat the cat the\", \" dog\"], \"answer\": 0}\n"), d(), vec!["line 1", "choice 0 has 12 tokens", "12 positions"]),
        (Arc::new(Bigram), &lm, write("n.txt", "the cat sat"), DataOptions { text: TextOptions { seq_len: Some(4), stride: Some(5), ..TextOptions::default() }, ..d() }, vec!["--stride 5", "1 to --seq-len (4)"]),
        (Arc::new(Bigram), &lm, write("o.txt", "the cat sat"), DataOptions { text: TextOptions { task: Some(Task::Classification), ..TextOptions::default() }, ..d() }, vec!["--task classification", "predicts next tokens"]),
        (Arc::new(Bigram), &lm, write("p.txt", "the cat sat"), DataOptions { metric: Some(Metric::AccNorm), ..d() }, vec!["acc_norm is not a metric of lm", "loss, perplexity, accuracy"]),
        (Arc::new(Bigram), &lm, write("q.txt", "the cat \u{e9}t\u{e9}"), d(), vec![]),
    ];
    for (arch, dirs, path, options, needles) in cases {
        if needles.is_empty() {
            // Unknown words are [UNK] (id 0), which is in the vocabulary: accepted.
            open(arch, dirs, &path, None, 4, options).unwrap();
            continue;
        }
        let e = err(arch, dirs, &path, options);
        for n in needles {
            assert!(e.contains(n), "'{e}' lacks '{n}'");
        }
    }
}

#[test]
fn ids_the_model_lacks_are_refused_before_any_model_runs() {
    let dir = tempfile::tempdir().unwrap();
    let lm = vec![model_dir(
        dir.path(),
        "lm",
        "lm.weight",
        &[V, V],
        &noise(2, V * V, 1.0),
        serde_json::json!({}),
    )];
    let path = dir.path().join("ids.safetensors");
    let ids: Vec<u8> = [3i64, 4, 5, V as i64, 6, 7]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    safetensors::serialize_to_file(
        [(
            "input_ids",
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2, 3], &ids)
                .unwrap(),
        )],
        None,
        &path,
    )
    .unwrap();
    let e = err(Arc::new(Bigram), &lm, &path, DataOptions::default());
    assert!(
        e.contains(&format!("'input_ids' is {V} at row 1, position 0"))
            && e.contains("vocabulary size"),
        "{e}"
    );
    // A tokenizer with more tokens than the model's embedding rows.
    let mut big: serde_json::Value = serde_json::from_str(&tokenizer_json()).unwrap();
    big["model"]["vocab"]["extra"] = (V as u64).into();
    let tok = dir.path().join("big-tokenizer.json");
    std::fs::write(&tok, big.to_string()).unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "the cat").unwrap();
    let e = err(
        Arc::new(Bigram),
        &lm,
        &text,
        DataOptions {
            tokenizer: Some(tok),
            ..DataOptions::default()
        },
    );
    assert!(
        e.contains("big-tokenizer.json")
            && e.contains("16 tokens")
            && e.contains("15 embedding rows"),
        "{e}"
    );
}

/// A multiple-choice `answer` written `2.0` (pandas' integer column with a gap) or `"2"` is
/// index 2, as a classification label is; it was refused as "not the index of the right
/// choice". `1.5`, `-1`, `"b"` and `true` are still refused.
#[test]
fn multiple_choice_answers_written_as_whole_floats_or_strings_are_indices() {
    let f = lm_fixture();
    let write = |name: &str, answer: &dyn Fn(usize) -> serde_json::Value| {
        let path = f.dirs[0].parent().unwrap().join(name);
        let text: String = MC
            .iter()
            .map(|(c, ch, a)| {
                serde_json::json!({"context": c, "choices": ch, "answer": answer(*a)}).to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let score = |path: &std::path::Path| {
        let mut session = open(
            Arc::new(Bigram),
            &f.dirs,
            path,
            None,
            2,
            DataOptions::default(),
        )?;
        Ok::<_, soup_eval::Error>(session.ingredients(&[Split::Val])?[0].val.unwrap())
    };
    let plain = score(&write("mc-int.jsonl", &|a| a.into())).unwrap();
    for (name, answer) in [
        (
            "mc-float.jsonl",
            &(|a: usize| (a as f64).into()) as &dyn Fn(usize) -> _,
        ),
        ("mc-string.jsonl", &|a: usize| a.to_string().into()),
    ] {
        assert_eq!(score(&write(name, answer)).unwrap(), plain, "{name}");
    }
    for bad in [
        serde_json::json!(1.5),
        serde_json::json!(-1),
        serde_json::json!("b"),
        serde_json::json!(true),
        serde_json::json!(7),
    ] {
        let path = write("mc-bad.jsonl", &|_| bad.clone());
        let err = score(&path).unwrap_err().to_string();
        assert!(err.contains("'answer' is"), "{bad}: {err}");
    }
}
