//! Text datasets for language models (spec §3): classification JSONL/CSV, language-modelling text cut into windows, multiple-choice JSONL, and pre-tokenised safetensors, all read into token sequences with what each sequence scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::Value;

use model_soup::format::Checkpoint;

use super::records::{self, Record};
use super::tokenizer::TextTokenizer;
use crate::error::{Error, Result};
use crate::score::Task;

/// What reading text data needs to know about the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenModel {
    /// Embedding rows: every id must be below it.
    pub vocab: usize,
    /// The longest sequence the model takes, if it has a limit.
    pub max_positions: Option<usize>,
    /// A model without a limit: the length it was trained on, which `--seq-len` and
    /// `--max-length` (and their defaults) stay within.
    pub trained_positions: Option<usize>,
    /// `Some(n)` for a classifier of `n` classes, `None` for a next-token model.
    pub classes: Option<usize>,
    /// `config.json`'s `bos_token_id`, prepended to language-modelling documents and to
    /// multiple-choice contexts.
    pub bos: Option<u32>,
    /// `config.json`'s `label2id`: class names to indices.
    pub label2id: Option<BTreeMap<String, usize>>,
    /// The id batches are padded with (spec §3): `config.json`'s `pad_token_id`, else the
    /// tokenizer's padding token, else 0.
    pub pad_id: u32,
    /// How many segment ids the model reads (BERT's `type_vocab_size`); 0 or 1 when it reads
    /// every token as segment 0.
    pub segments: usize,
}

impl TokenModel {
    /// The longest sequence the defaults give: the model's limit, or the length it was
    /// trained on.
    fn default_positions(&self) -> Option<usize> {
        self.max_positions.or(self.trained_positions)
    }

    /// Where [`TokenModel::default_positions`] comes from, for messages: nothing to add for a
    /// model with learned positions, `config.json`'s key for a rotary one.
    fn positions_source(&self) -> &'static str {
        if self.max_positions.is_none() && self.trained_positions.is_some() {
            " (config.json's max_position_embeddings)"
        } else {
            ""
        }
    }

    /// Reads `bos_token_id` and `label2id` from a parsed `config.json` (absent keys, or
    /// values of the wrong kind, count as absent; a `label2id` index out of range is an error
    /// when a label names it).
    pub fn with_config(mut self, config: Option<&Value>) -> TokenModel {
        let Some(config) = config else {
            return self;
        };
        self.bos = config
            .get("bos_token_id")
            .and_then(Value::as_u64)
            .and_then(|b| u32::try_from(b).ok());
        self.label2id = crate::dataset::label2id(config);
        self
    }
}

/// How text is cut and which task is scored: `--task`, `--max-length`, `--seq-len`,
/// `--stride`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextOptions {
    /// The task, when the model and data leave it open (`--task`).
    pub task: Option<Task>,
    /// Classification: tokens per example, special tokens included (default: the model's max
    /// positions, at most 512). Multiple choice: the longest input, whose tokens predict one
    /// more, as in lm-evaluation-harness (default: the model's max positions).
    pub max_length: Option<usize>,
    /// Language modelling: tokens per window (default: the model's max positions, at most
    /// 512).
    pub seq_len: Option<usize>,
    /// Language modelling: tokens between window starts (default: `seq_len`).
    pub stride: Option<usize>,
}

/// A tokenised classification example: ids, segment ids, label.
type Example = (Vec<u32>, Vec<u32>, usize);

/// Longest default sequence when the model allows more (or has no limit).
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// A stretch of one token source that the model reads as one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Which source (document, example or choice) it is cut from.
    pub source: usize,
    /// Its first token in the source.
    pub begin: usize,
    /// One past its last token in the source.
    pub end: usize,
    /// Language modelling and multiple choice: the first position (within the sequence, at
    /// least 1) whose token is scored, each from the logits of the position before it; every
    /// later position is scored too. Classification: 0.
    pub score_from: usize,
}

impl Sequence {
    /// Tokens read.
    pub fn len(&self) -> usize {
        self.end - self.begin
    }

    /// Whether it has no token.
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }
}

/// A multiple-choice question: its choices are consecutive sequences.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Index of the first choice's sequence.
    pub first: usize,
    /// Each choice's length in Unicode characters, without the whitespace before it (moved
    /// from the context or written into the choice), for `acc_norm`.
    pub chars: Vec<usize>,
    /// The right choice.
    pub answer: usize,
}

/// One split of text data, tokenised, with what each sequence is scored on.
#[derive(Clone, Debug)]
pub struct TextData {
    /// The file it came from.
    pub path: PathBuf,
    /// What is scored.
    pub task: Task,
    sources: Vec<Vec<u32>>,
    /// Each source's segment ids (0 for a pair's first text, 1 for its second); empty for a
    /// source that is all segment 0, which is every source but a classification pair.
    segments: Vec<Vec<u32>>,
    /// What the model reads, in order.
    pub sequences: Vec<Sequence>,
    /// Classification: the class of each sequence.
    pub labels: Vec<usize>,
    /// Multiple choice: the questions, in order.
    pub questions: Vec<Question>,
    /// The id sequences are padded with in a batch.
    pub pad_id: u32,
}

/// The file formats text data comes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextFormat {
    Jsonl,
    Csv,
    Tokens,
    Plain,
}

impl TextFormat {
    fn of(path: &Path) -> TextFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("jsonl") => TextFormat::Jsonl,
            Some("csv") => TextFormat::Csv,
            Some("safetensors") => TextFormat::Tokens,
            _ => TextFormat::Plain,
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The task for `model` on `path`: a classifier's is classification; a next-token model's is
/// multiple choice when the data is JSONL with `choices`, else language modelling. `asked`
/// (`--task`) settles it, and must fit the model.
pub fn choose_task(path: &Path, model: &TokenModel, asked: Option<Task>) -> Result<Task> {
    match (model.classes, asked) {
        (Some(_), None | Some(Task::Classification)) => Ok(Task::Classification),
        (Some(c), Some(task)) => Err(bad(
            path,
            format!(
                "--task {} needs a causal language model, but the model is a classifier of {c} classes; use --task classification (or leave --task out)",
                task.name()
            ),
        )),
        (None, Some(Task::Classification)) => Err(bad(
            path,
            "--task classification needs a sequence classifier, but the model predicts next tokens; use --task lm or mc (or leave --task out)",
        )),
        (None, Some(task)) => Ok(task),
        (None, None) => {
            if TextFormat::of(path) == TextFormat::Jsonl {
                let text = crate::dataset::read_text(path, "dataset")?;
                let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(first) {
                    if o.contains_key("choices") {
                        return Ok(Task::MultipleChoice);
                    }
                }
            }
            Ok(Task::LanguageModelling)
        }
    }
}

impl TextData {
    /// Reads `path` for `task` (see [`choose_task`]), tokenised by `tokenizer` unless it is
    /// pre-tokenised, and checks every id against the model's vocabulary and every label
    /// against its classes.
    pub fn open(
        path: &Path,
        task: Task,
        model: &TokenModel,
        tokenizer: Option<&TextTokenizer>,
        options: &TextOptions,
    ) -> Result<TextData> {
        let format = TextFormat::of(path);
        let need_tokenizer = || {
            tokenizer.ok_or_else(|| {
                bad(
                    path,
                    "is text, but there is no tokenizer: the first ingredient has no tokenizer.json; pass --tokenizer PATH, or give pre-tokenised .safetensors data",
                )
            })
        };
        let mut data = TextData {
            path: path.to_path_buf(),
            task,
            sources: Vec::new(),
            segments: Vec::new(),
            sequences: Vec::new(),
            labels: Vec::new(),
            questions: Vec::new(),
            pad_id: model.pad_id,
        };
        match (task, format) {
            (Task::Classification, TextFormat::Tokens) => {
                let limit = classification_length(path, model, options)?;
                data.read_token_rows(model, true, Some(limit))?;
            }
            (Task::Classification, TextFormat::Jsonl | TextFormat::Csv) => {
                let limit = classification_length(path, model, options)?;
                let tokenizer = need_tokenizer()?.truncated(limit)?;
                data.read_classification(model, &tokenizer, format)?;
            }
            (Task::Classification, TextFormat::Plain) => {
                return Err(bad(
                    path,
                    "classification data must be .jsonl ({\"text\", \"text_pair\", \"label\"}), .csv (text,label columns) or pre-tokenised .safetensors",
                ))
            }
            (Task::LanguageModelling, TextFormat::Tokens) => {
                data.read_token_rows(model, false, None)?;
                data.cut_windows(model, options)?;
            }
            (Task::LanguageModelling, TextFormat::Csv) => {
                return Err(bad(
                    path,
                    "language-modelling data is a text file, .jsonl ({\"text\": ...} per document) or pre-tokenised .safetensors, not .csv",
                ))
            }
            (Task::LanguageModelling, TextFormat::Jsonl | TextFormat::Plain) => {
                data.read_documents(model, need_tokenizer()?, format)?;
                data.cut_windows(model, options)?;
            }
            (Task::MultipleChoice, TextFormat::Jsonl) => {
                let limit = options.max_length.or(model.default_positions());
                if let (Some(l), Some(m)) = (options.max_length, model.default_positions()) {
                    if l > m {
                        return Err(bad(
                            path,
                            format!(
                                "--max-length {l} is more than the model's {m} positions{}; pass at most {m}",
                                model.positions_source()
                            ),
                        ));
                    }
                }
                data.read_choices(model, need_tokenizer()?, limit)?;
            }
            (Task::MultipleChoice, _) => {
                return Err(bad(
                    path,
                    "multiple-choice data must be .jsonl with {\"context\", \"choices\", \"answer\"} per line",
                ))
            }
        }
        if data.sequences.is_empty() {
            return Err(bad(
                path,
                match task {
                    Task::LanguageModelling => "has no token to score (every document has fewer than 2 tokens); give it text".to_string(),
                    _ => "has no examples; the split needs at least one".to_string(),
                },
            ));
        }
        Ok(data)
    }

    /// The tokens of one sequence.
    pub fn ids(&self, s: &Sequence) -> &[u32] {
        &self.sources[s.source][s.begin..s.end]
    }

    /// The segment ids of one sequence, `None` when it is all segment 0.
    pub fn segments(&self, s: &Sequence) -> Option<&[u32]> {
        self.segments
            .get(s.source)
            .filter(|t| !t.is_empty())
            .map(|t| &t[s.begin..s.end])
    }

    /// Examples: sequences for classification and language modelling (windows), questions
    /// for multiple choice.
    pub fn len(&self) -> usize {
        match self.task {
            Task::MultipleChoice => self.questions.len(),
            _ => self.sequences.len(),
        }
    }

    /// Whether there is nothing to score.
    pub fn is_empty(&self) -> bool {
        self.sequences.is_empty()
    }

    /// Tokens scored over the whole split (language modelling, multiple choice).
    pub fn scored_tokens(&self) -> usize {
        self.sequences.iter().map(|s| s.len() - s.score_from).sum()
    }

    /// Checks that every id of `ids` is below the vocabulary.
    fn check_ids(&self, model: &TokenModel, ids: &[u32], what: impl Fn() -> String) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= model.vocab) {
            return Err(bad(
                &self.path,
                format!(
                    "{}: token id {id} is not below the model's vocabulary size {}; the tokenizer (or the pre-tokenised data) doesn't belong to this model",
                    what(),
                    model.vocab
                ),
            ));
        }
        Ok(())
    }

    /// Classification records: `text`, optional `text_pair`, `label`.
    fn read_classification(
        &mut self,
        model: &TokenModel,
        tokenizer: &TextTokenizer,
        format: TextFormat,
    ) -> Result<()> {
        let text = crate::dataset::read_text(&self.path, "dataset")?;
        // What a record looks like, for "no 'text' field": a CSV's fields are its columns.
        let example = match format {
            TextFormat::Csv => "a header line naming the columns text,label (text_pair optional)",
            _ => r#"{"text": "...", "label": 0}"#,
        };
        let rows = match format {
            TextFormat::Csv => records::csv(&self.path, &text)?,
            _ => records::jsonl(&self.path, &text, example)?,
        };
        let classes = model.classes.unwrap_or(0);
        let path = &self.path;
        let encoded: Vec<Result<Example>> = rows
            .par_iter()
            .map(|r| {
                let at = |what: String| bad(path, format!("line {}: {what}", r.line));
                let text = string_field(r, "text", example).map_err(at)?;
                // An empty pair (a CSV's empty cell) is no pair.
                let pair = match r.fields.get("text_pair") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if s.is_empty() => None,
                    Some(Value::String(s)) => Some(s.as_str()),
                    Some(other) => {
                        return Err(at(format!(
                            "'text_pair' is a {}; it must be a string (or absent)",
                            records::kind(other)
                        )))
                    }
                };
                let label = label_of(r, model, classes, format == TextFormat::Csv).map_err(at)?;
                let (ids, types) = tokenizer
                    .encode_with_types(text, pair, true)
                    .map_err(|e| at(format!("cannot tokenise: {e}")))?;
                if ids.is_empty() {
                    return Err(at("tokenises to nothing; give it some text".into()));
                }
                Ok((ids, types, label))
            })
            .collect();
        for (r, item) in rows.iter().zip(encoded) {
            let (ids, types, label) = item?;
            self.check_ids(model, &ids, || format!("line {}", r.line))?;
            self.push_whole(ids, 0);
            self.set_segments(types);
            self.labels.push(label);
        }
        Ok(())
    }

    /// Language-modelling documents: the whole text file, or each JSONL line's `text`,
    /// tokenised without special tokens, after the model's `bos_token_id` if it has one.
    fn read_documents(
        &mut self,
        model: &TokenModel,
        tokenizer: &TextTokenizer,
        format: TextFormat,
    ) -> Result<()> {
        let text = crate::dataset::read_text(&self.path, "dataset")?;
        let docs: Vec<(usize, String)> = match format {
            TextFormat::Jsonl => {
                let example = r#"{"text": "..."}"#;
                records::jsonl(&self.path, &text, example)?
                    .iter()
                    .map(|r| {
                        string_field(r, "text", example)
                            .map(|t| (r.line, t.to_string()))
                            .map_err(|e| bad(&self.path, format!("line {}: {e}", r.line)))
                    })
                    .collect::<Result<_>>()?
            }
            _ => vec![(1, text)],
        };
        let path = &self.path;
        let encoded: Vec<Result<Vec<u32>>> = docs
            .par_iter()
            .map(|(line, text)| {
                let mut ids: Vec<u32> = model.bos.into_iter().collect();
                ids.extend(
                    tokenizer
                        .encode(text, None, false)
                        .map_err(|e| bad(path, format!("line {line}: cannot tokenise: {e}")))?,
                );
                Ok(ids)
            })
            .collect();
        for ((line, _), ids) in docs.iter().zip(encoded) {
            let ids = ids?;
            self.check_ids(model, &ids, || match format {
                TextFormat::Jsonl => format!("line {line}"),
                _ => "the text".to_string(),
            })?;
            self.sources.push(ids);
        }
        Ok(())
    }

    /// Cuts every source into language-modelling windows (spec §3), replacing the sequences.
    fn cut_windows(&mut self, model: &TokenModel, options: &TextOptions) -> Result<()> {
        let path = &self.path;
        // A rotary model's trained length bounds it too: its attention is [T, T] per head, so a
        // window far past it only fills the memory (1e6 asked for terabytes).
        let seq_len = match (options.seq_len, model.default_positions()) {
            (Some(l), Some(m)) if l > m => {
                return Err(bad(
                    path,
                    format!(
                        "--seq-len {l} is more than the model's {m} positions{}; pass at most {m}",
                        model.positions_source()
                    ),
                ))
            }
            (Some(l), _) => l,
            (None, _) => model
                .default_positions()
                .unwrap_or(DEFAULT_MAX_LENGTH)
                .min(DEFAULT_MAX_LENGTH),
        };
        if seq_len < 2 {
            return Err(bad(
                path,
                format!("--seq-len {seq_len} leaves no token to predict from; pass at least 2"),
            ));
        }
        let stride = options.stride.unwrap_or(seq_len);
        if stride == 0 || stride > seq_len {
            return Err(bad(
                path,
                format!("--stride {stride} must be from 1 to --seq-len ({seq_len}), so that every token is scored once"),
            ));
        }
        self.sequences.clear();
        for (source, ids) in self.sources.iter().enumerate() {
            for (begin, end, from) in windows(ids.len(), seq_len, stride) {
                self.sequences.push(Sequence {
                    source,
                    begin,
                    end,
                    score_from: from - begin,
                });
            }
        }
        Ok(())
    }

    /// Multiple-choice records: `context`, `choices`, `answer` (spec §3).
    fn read_choices(
        &mut self,
        model: &TokenModel,
        tokenizer: &TextTokenizer,
        limit: Option<usize>,
    ) -> Result<()> {
        let text = crate::dataset::read_text(&self.path, "dataset")?;
        let example = r#"{"context": "...", "choices": ["...", "..."], "answer": 0}"#;
        let rows = records::jsonl(&self.path, &text, example)?;
        let path = &self.path;
        // Per choice (ids, first id read, characters), the context's tokens, the answer.
        type Choices = (Vec<(Vec<u32>, usize, usize)>, usize, usize);
        let encoded: Vec<Result<Choices>> = rows
            .par_iter()
            .map(|r| {
                let at = |what: String| bad(path, format!("line {}: {what}", r.line));
                let context = string_field(r, "context", example).map_err(at)?;
                let choices = match r.fields.get("choices") {
                    Some(Value::Array(a)) if a.len() >= 2 => a
                        .iter()
                        .enumerate()
                        .map(|(i, c)| {
                            c.as_str().ok_or_else(|| {
                                at(format!(
                                    "choice {i} is a {}; choices are strings",
                                    records::kind(c)
                                ))
                            })
                        })
                        .collect::<Result<Vec<&str>>>()?,
                    Some(Value::Array(_)) => {
                        return Err(at("'choices' needs at least two strings".into()))
                    }
                    Some(other) => {
                        return Err(at(format!(
                            "'choices' is a {}; it must be an array of strings",
                            records::kind(other)
                        )))
                    }
                    None => return Err(at(format!("no 'choices' field; expected {example}"))),
                };
                let answer = match r.fields.get("answer") {
                    // `1.0` from pandas (an integer column with a gap), `"1"` from a CSV
                    // turned into JSON: the index as labels take it.
                    Some(v) => whole_index(v).filter(|&a| a < choices.len()).ok_or_else(|| {
                        at(format!(
                            "'answer' is {v}; it must be the index of the right choice, 0 to {}",
                            choices.len() - 1
                        ))
                    })?,
                    None => return Err(at(format!("no 'answer' field; expected {example}"))),
                };
                // lm-evaluation-harness: the context's trailing whitespace starts each choice.
                let kept = context.trim_end().len();
                let (context, space) = context.split_at(kept);
                let encode = |s: &str| {
                    let mut ids: Vec<u32> = model.bos.into_iter().collect();
                    ids.extend(
                        tokenizer
                            .encode(s, None, false)
                            .map_err(|e| at(format!("cannot tokenise: {e}")))?,
                    );
                    Ok::<_, Error>(ids)
                };
                let ctx = encode(context)?.len();
                if ctx == 0 {
                    return Err(at(
                        "the context is empty and config.json has no bos_token_id, so a choice's first token has nothing to be predicted from; give a context".into(),
                    ));
                }
                let mut out = Vec::with_capacity(choices.len());
                for (i, choice) in choices.iter().enumerate() {
                    let choice = format!("{space}{choice}");
                    let whole = encode(&format!("{context}{choice}"))?;
                    if whole.len() <= ctx {
                        return Err(at(format!(
                            "choice {i} ({choice:?}) tokenises to nothing after the context; give it some text"
                        )));
                    }
                    // Too long: cut the context from the left, keeping one token of it. As
                    // in lm-evaluation-harness (`[-(max_length + 1):][:-1]`), the last token
                    // is only predicted, never read for a prediction, so `limit` tokens
                    // predict `limit + 1`: a causal model's logits before the last token
                    // don't depend on it, and a model without a hard position limit (every
                    // rotary decoder) reads it at position `limit`, whose logits are unused.
                    let window = match model.max_positions {
                        None => limit.map(|l| l + 1),
                        Some(_) => limit,
                    };
                    let begin = match window {
                        Some(window) if whole.len() > window => {
                            let cut = whole.len() - window;
                            if cut >= ctx {
                                return Err(at(format!(
                                    "choice {i} has {} tokens, more than the model's {} positions can predict after one token of context; shorten it (or raise --max-length)",
                                    whole.len() - ctx,
                                    limit.unwrap_or(window)
                                )));
                            }
                            cut
                        }
                        _ => 0,
                    };
                    // acc_norm's denominator, as lm-evaluation-harness counts it: the
                    // choice's characters without the delimiter before it (the moved
                    // whitespace, or a leading space written into the choice).
                    out.push((whole, begin, choice.trim_start().chars().count().max(1)));
                }
                Ok((out, ctx, answer))
            })
            .collect();
        for (r, item) in rows.iter().zip(encoded) {
            let (choices, ctx, answer) = item?;
            let first = self.sequences.len();
            let mut chars = Vec::with_capacity(choices.len());
            for (whole, begin, n) in choices {
                self.check_ids(model, &whole, || format!("line {}", r.line))?;
                self.push_whole(whole, ctx);
                let last = self.sequences.last_mut().expect("just pushed");
                last.begin = begin;
                last.score_from = ctx - begin;
                chars.push(n);
            }
            self.questions.push(Question {
                first,
                chars,
                answer,
            });
        }
        Ok(())
    }

    /// Pre-tokenised rows: `input_ids` I64 [N, T], optional `attention_mask` [N, T] (the
    /// tokens are those where it is 1), for classification `labels` I64 [N], and optional
    /// `token_type_ids` [N, T] (a pair's segments, as the tokenizer gives them).
    fn read_token_rows(
        &mut self,
        model: &TokenModel,
        classification: bool,
        limit: Option<usize>,
    ) -> Result<()> {
        let path = self.path.clone();
        let file = Checkpoint::open(&path)?;
        let layout = "a pre-tokenised file holds 'input_ids' (integers [N, T]), optionally 'attention_mask' (integers or bool [N, T], 1 for real tokens) and 'token_type_ids' (integers [N, T], a pair's segments) and, for classification, 'labels' (integers [N])";
        let ids = file
            .tensor("input_ids")
            .ok_or_else(|| bad(&path, format!("no 'input_ids' tensor; {layout}")))?;
        let integer = |t: &model_soup::format::Tensor<'_>, name: &str| -> Result<Vec<i64>> {
            t.info
                .dtype
                .integers(t.data)
                .ok_or_else(|| bad(&path, format!("'{name}' is {}; {layout}", t.info.dtype)))
        };
        let shape: Vec<usize> = ids.info.shape.iter().map(|&d| d as usize).collect();
        let [n, t] = shape[..] else {
            return Err(bad(
                &path,
                format!("'input_ids' has shape {shape:?}; {layout}"),
            ));
        };
        let values = integer(&ids, "input_ids")?;
        let beside_ids = |name: &str| -> Result<Option<Vec<i64>>> {
            let Some(m) = file.tensor(name) else {
                return Ok(None);
            };
            if m.info.shape != ids.info.shape {
                return Err(bad(
                    &path,
                    format!(
                        "'{name}' has shape {:?}, unlike 'input_ids' {shape:?}; {layout}",
                        m.info.shape
                    ),
                ));
            }
            Ok(Some(integer(&m, name)?))
        };
        let mask = beside_ids("attention_mask")?;
        let types = beside_ids("token_type_ids")?;
        let labels = if classification {
            let l = file.tensor("labels").ok_or_else(|| {
                bad(
                    &path,
                    format!("no 'labels' tensor, which classification needs; {layout}"),
                )
            })?;
            if l.info.shape != [n as u64] {
                return Err(bad(
                    &path,
                    format!(
                        "'labels' has shape {:?}; it must be [{n}], one per row",
                        l.info.shape
                    ),
                ));
            }
            Some(integer(&l, "labels")?)
        } else {
            None
        };
        for row in 0..n {
            let mut tokens = Vec::with_capacity(t);
            let mut segments = Vec::new();
            for col in 0..t {
                let keep = match &mask {
                    Some(m) => match m[row * t + col] {
                        0 => false,
                        1 => true,
                        other => {
                            return Err(bad(
                                &path,
                                format!("'attention_mask' is {other} at row {row}, position {col}; it must be 0 or 1"),
                            ))
                        }
                    },
                    None => true,
                };
                if keep {
                    let id = values[row * t + col];
                    if id < 0 || id as u64 >= model.vocab as u64 {
                        return Err(bad(
                            &path,
                            format!(
                                "'input_ids' is {id} at row {row}, position {col}; ids must be from 0 to the model's vocabulary size {} - 1",
                                model.vocab
                            ),
                        ));
                    }
                    tokens.push(id as u32);
                    if let Some(types) = &types {
                        let ty = types[row * t + col];
                        // A model without segment embeddings takes every token as segment 0.
                        let limit = model.segments.max(1);
                        if ty < 0 || ty as u64 >= limit as u64 {
                            return Err(bad(
                                &path,
                                format!(
                                    "'token_type_ids' is {ty} at row {row}, position {col}; {}",
                                    if limit == 1 {
                                        "the model has one segment type, so every type must be 0 (or drop token_type_ids)".to_string()
                                    } else {
                                        format!(
                                            "the model's segments are 0 to {} (type_vocab_size)",
                                            limit - 1
                                        )
                                    }
                                ),
                            ));
                        }
                        segments.push(ty as u32);
                    }
                }
            }
            if let Some(labels) = &labels {
                if tokens.is_empty() {
                    return Err(bad(
                        &path,
                        format!("row {row} has no token (its attention_mask is all 0)"),
                    ));
                }
                if let Some(limit) = limit {
                    if tokens.len() > limit {
                        return Err(bad(
                            &path,
                            format!(
                                "row {row} has {} tokens, more than --max-length {limit} (the model's positions, at most {DEFAULT_MAX_LENGTH}, by default); truncate the rows or raise --max-length",
                                tokens.len()
                            ),
                        ));
                    }
                }
                let label = labels[row];
                let classes = model.classes.unwrap_or(0);
                if label < 0 || label as u64 >= classes as u64 {
                    return Err(bad(
                        &path,
                        format!(
                            "'labels' is {label} at row {row}; the model has classes 0 to {}",
                            classes.saturating_sub(1)
                        ),
                    ));
                }
                self.labels.push(label as usize);
                self.push_whole(tokens, 0);
                self.set_segments(segments);
            } else {
                self.sources.push(tokens);
            }
        }
        Ok(())
    }

    /// The segment ids of the last source, kept only when some are not 0 (a source without
    /// any is all segment 0).
    fn set_segments(&mut self, types: Vec<u32>) {
        if types.iter().any(|&t| t != 0) {
            let last = self.sources.len() - 1;
            self.segments.resize(last, Vec::new());
            self.segments.push(types);
        }
    }

    /// Adds `ids` as a source read whole.
    fn push_whole(&mut self, ids: Vec<u32>, score_from: usize) {
        self.sequences.push(Sequence {
            source: self.sources.len(),
            begin: 0,
            end: ids.len(),
            score_from,
        });
        self.sources.push(ids);
    }
}

/// `--max-length` for classification: default the model's positions, at most 512; never
/// more than the model's positions.
fn classification_length(path: &Path, model: &TokenModel, options: &TextOptions) -> Result<usize> {
    let max = model.max_positions;
    match (options.max_length, max) {
        (Some(l), Some(m)) if l > m => Err(bad(
            path,
            format!("--max-length {l} is more than the model's {m} positions; pass at most {m}"),
        )),
        (Some(0), _) => Err(bad(path, "--max-length 0 leaves no token; pass at least 1")),
        (Some(l), _) => Ok(l),
        (None, m) => Ok(m.unwrap_or(DEFAULT_MAX_LENGTH).min(DEFAULT_MAX_LENGTH)),
    }
}

/// The string field `name` of a record.
fn string_field<'a>(
    r: &'a Record,
    name: &str,
    example: &str,
) -> std::result::Result<&'a str, String> {
    match r.fields.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(format!(
            "'{name}' is a {}; it must be a string",
            records::kind(other)
        )),
        None => Err(format!("no '{name}' field; expected {example}")),
    }
}

/// A record's label: an integer class, or a name from `config.json`'s `label2id`. A string
/// (every CSV field is one) that `label2id` names is that name (sentiment classes `-1`, `0`,
/// `1` and ratings `1` to `5` are common names); any other that reads as an integer is a class
/// index, in JSONL as in CSV.
/// A JSON value that is a whole, non-negative number (`2`, `2.0`) or a string holding one
/// (`"2"`), as an index.
fn whole_index(v: &Value) -> Option<usize> {
    match v {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(i), _) => usize::try_from(i).ok(),
            (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < u32::MAX as f64 => {
                Some(f as usize)
            }
            _ => None,
        },
        Value::String(s) => s.trim().parse::<usize>().ok(),
        _ => None,
    }
}

fn label_of(
    r: &Record,
    model: &TokenModel,
    classes: usize,
    csv: bool,
) -> std::result::Result<usize, String> {
    let range = |label: String| {
        format!(
            "label {label} is out of range; the model has classes 0 to {}",
            classes.saturating_sub(1)
        )
    };
    let by_name = |name: &str| -> std::result::Result<usize, String> {
        let Some(map) = &model.label2id else {
            return Err(format!(
                "label {name:?} is a name, but config.json has no label2id to map it; use class indices"
            ));
        };
        match map.get(name) {
            Some(&i) if i < classes => Ok(i),
            Some(&i) => Err(format!("label {name:?} maps to {i} in config.json's label2id, but the model has {classes} classes")),
            None => {
                let mut known: Vec<&str> = map.keys().map(String::as_str).collect();
                known.truncate(10);
                Err(format!(
                    "label {name:?} is not in config.json's label2id ({}); use one of those names or a class index",
                    known.join(", ")
                ))
            }
        }
    };
    match r.fields.get("label") {
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(i), _) if (i as u128) < classes as u128 => Ok(i as usize),
            // pandas writes an integer column that had a missing value as floats (`2.0`):
            // a whole number is that index.
            (None, Some(f)) if f.fract() == 0.0 && f >= 0.0 && f < classes as f64 => Ok(f as usize),
            (None, Some(f)) if f.fract() != 0.0 => Err(format!(
                "label {n} is not a whole number; a class index is an integer from 0 to {}",
                classes.saturating_sub(1)
            )),
            _ => Err(range(n.to_string())),
        },
        // A string is a name when label2id has it, else an index when it reads as one
        // (`"2"`, as CSV holds every label), else a name that must be in label2id.
        Some(Value::String(s)) => {
            let s = if csv { s.trim() } else { s.as_str() };
            if model.label2id.as_ref().is_some_and(|m| m.contains_key(s)) {
                return by_name(s);
            }
            match s.parse::<i64>() {
                Ok(i) if i >= 0 && (i as u64) < classes as u64 => Ok(i as usize),
                Ok(i) => Err(range(i.to_string())),
                Err(_) => by_name(s),
            }
        }
        Some(other) => Err(format!(
            "'label' is a {}; it must be a class index or name",
            records::kind(other)
        )),
        None => Err("no 'label' field; each example needs one (a class index or name)".into()),
    }
}

/// Language-modelling windows of a document of `n` tokens (spec §3): `(begin, end,
/// first scored position)`, all absolute. Windows start at 0, `stride`, `2 stride`, ...;
/// each scores the positions from the previous window's end (or its own second token) to
/// its end; the last is the one that reaches `n`. Windows that would score nothing are left
/// out. Needs `2 <= seq_len` and `1 <= stride <= seq_len`.
pub fn windows(n: usize, seq_len: usize, stride: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    let (mut begin, mut prev_end) = (0, 0);
    loop {
        let end = (begin + seq_len).min(n);
        let from = prev_end.max(begin + 1);
        if from < end {
            out.push((begin, end, from));
        }
        if end == n {
            return out;
        }
        prev_end = end;
        begin += stride;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every position 1..n scored at most once, and the windows as spec §3 defines them.
    #[test]
    fn windows_score_each_token_once() {
        assert_eq!(windows(10, 4, 4), vec![(0, 4, 1), (4, 8, 5), (8, 10, 9)]);
        assert_eq!(
            windows(10, 4, 2),
            vec![(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
        );
        assert_eq!(windows(3, 8, 8), vec![(0, 3, 1)]);
        assert_eq!(windows(1, 8, 8), vec![]);
        // Stride = seq-len: each window's first token has no context and is not scored; a
        // last window of one token scores nothing and is dropped.
        assert_eq!(windows(9, 4, 4), vec![(0, 4, 1), (4, 8, 5)]);
        for n in 0..40 {
            for l in 2..9 {
                for s in 1..=l {
                    let mut seen = vec![0; n];
                    for (b, e, f) in windows(n, l, s) {
                        assert!(b < f && f < e + 1 && e <= n && e - b <= l, "{n} {l} {s}");
                        for count in &mut seen[f..e] {
                            *count += 1;
                        }
                    }
                    assert!(seen.iter().all(|&c| c <= 1), "{n} {l} {s}");
                    if s < l && n >= 2 {
                        // Overlapping windows score every token but the first.
                        assert!(seen[1..].iter().all(|&c| c == 1), "{n} {l} {s}");
                    }
                }
            }
        }
    }

    /// JSONL labels as pandas and hand-written files give them: `2.0` (an integer column with
    /// a gap is float) and `"2"` are index 2, as the CSV field `2` is; they were refused as
    /// "label 2.0 is out of range" (it isn't) and "not in config.json's label2id".
    #[test]
    fn whole_float_and_numeric_string_labels_are_indices_in_jsonl_too() {
        let model = TokenModel {
            label2id: Some(
                [("negative", 0), ("neutral", 1), ("positive", 2), ("-1", 0)]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            ),
            ..TokenModel::default()
        };
        let label = |json: &str, csv: bool| {
            let record = Record {
                line: 1,
                fields: serde_json::from_str(&format!(r#"{{"label": {json}}}"#)).unwrap(),
            };
            label_of(&record, &model, 3, csv)
        };
        for csv in [false, true] {
            assert_eq!(label(r#""2""#, csv), Ok(2));
            assert_eq!(label(r#""positive""#, csv), Ok(2));
            // A name label2id has wins over the index it reads as.
            assert_eq!(label(r#""-1""#, csv), Ok(0));
        }
        assert_eq!(label("2.0", false), Ok(2));
        assert_eq!(label("2", false), Ok(2));
        let half = label("1.5", false).unwrap_err();
        assert!(half.contains("not a whole number"), "{half}");
        let big = label("3.0", false).unwrap_err();
        assert!(big.contains("out of range"), "{big}");
        let unknown = label(r#""Positive""#, false).unwrap_err();
        assert!(
            unknown.contains("not in config.json's label2id"),
            "{unknown}"
        );
    }
}
