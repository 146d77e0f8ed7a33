//! One evaluation run: ingredients opened and checked once, datasets (images or text) loaded once, each ingredient's outputs computed once and reused by the ensemble; soups built through the core.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;

use model_soup::format::Checkpoint;
use model_soup::soup::{self, Merge, MergeRequest, Plan, PlanOptions, RunOptions, Warning};

use super::arch::{Architecture, Input, Layout, Output};
use super::batch_memory::{self, Example};
use super::dataset::{Data, Dataset};
use super::ensemble::{self, Mode};
use super::error::{Error, Result};
use super::evaluator::{Evaluator, Outputs};
use super::greedy::{self, Candidates, Trial};
use super::images::{LoadOptions, Samples};
use super::report::{Ensemble, Greedy, Kind, Row};
use super::score::{Metric, Metrics, Task};
use super::shell;
use super::text::{data::choose_task, TextData, TextOptions, TextTokenizer, TokenModel};
use super::weights::{check_fits, RunningSum, Weights};

/// How a session reads its data and what it ranks by, beyond the ingredients and splits.
#[derive(Clone, Debug, Default)]
pub struct DataOptions {
    /// How image datasets are decoded and held.
    pub images: LoadOptions,
    /// How text is cut, and the task (`--task`, `--max-length`, `--seq-len`, `--stride`).
    pub text: TextOptions,
    /// The tokenizer for text data (`--tokenizer`); default: the first ingredient's
    /// `tokenizer.json`, when it is a model directory.
    pub tokenizer: Option<PathBuf>,
    /// What greedy optimises and the plot shows (`--metric`); default: the task's.
    pub metric: Option<Metric>,
}

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Held-out data used to rank and choose ingredients.
    Val,
    /// Data used only to report the final numbers.
    Test,
}

/// Ingredients, datasets and an evaluator, with per-ingredient outputs cached.
pub struct Session {
    evaluator: Evaluator,
    paths: Vec<PathBuf>,
    /// `None` only while a plan holds the checkpoint (see [`Session::with_plan`]).
    pool: Vec<Option<Checkpoint>>,
    val: Option<Data>,
    test: Option<Data>,
    /// Each image split's inputs on a GPU, uploaded once: `[val, test]` (none on the CPU).
    inputs: [Option<Tensor>; 2],
    /// Outputs per ingredient: `[val, test]` (logits `[N, classes]` of a classifier, a few
    /// numbers per sequence of a language model).
    outputs: Vec<[Option<Outputs>; 2]>,
    /// What is scored.
    task: Task,
    /// What ranks ingredients and decides greedy steps.
    metric: Metric,
    /// Whether `--metric` was given (else the task's default ranks).
    metric_given: bool,
    /// The `preprocessor_config.json` images were transformed by, when one was read.
    preprocessor: Option<PathBuf>,
    /// Warnings from the core's merges (integer buffers that differ, say), without repeats.
    pub warnings: Vec<Warning>,
}

impl Session {
    /// Opens every ingredient and dataset and checks them against the architecture, from
    /// headers and labels, before any model runs.
    pub fn open(
        evaluator: Evaluator,
        ingredients: &[PathBuf],
        val: Option<&Path>,
        test: Option<&Path>,
    ) -> Result<Session> {
        Session::open_with(evaluator, ingredients, val, test, &LoadOptions::default())
    }

    /// [`Session::open`] with how image datasets are decoded and held. Each split is
    /// decoded and transformed once, here, and reused by every evaluation of the run.
    pub fn open_with(
        evaluator: Evaluator,
        ingredients: &[PathBuf],
        val: Option<&Path>,
        test: Option<&Path>,
        images: &LoadOptions,
    ) -> Result<Session> {
        let options = DataOptions {
            images: images.clone(),
            ..DataOptions::default()
        };
        Session::open_data(evaluator, ingredients, val, test, &options)
    }

    /// [`Session::open`] with every data option: images or text, whichever the architecture
    /// reads. Text is tokenised once per split, here.
    pub fn open_data(
        evaluator: Evaluator,
        ingredients: &[PathBuf],
        val: Option<&Path>,
        test: Option<&Path>,
        options: &DataOptions,
    ) -> Result<Session> {
        if ingredients.is_empty() {
            return Err(Error::NoIngredients);
        }
        let arch = &*evaluator.arch;
        let mut pool = Vec::with_capacity(ingredients.len());
        let mut warnings = Vec::new();
        for path in ingredients {
            let checkpoint = Checkpoint::open(path)?;
            check_fits(&checkpoint, arch)?;
            warnings.extend(super::weights::non_finite(&checkpoint));
            pool.push(Some(checkpoint));
        }
        warnings.extend(model_soup::soup::repeated_models(ingredients));
        warnings.extend(test_is_val(val, test));
        check_head(pool[0].as_ref().expect("opened above"), arch)?;
        check_label_order(&pool)?;
        let mut preprocessor = None;
        let (val, test, task) = match arch.input() {
            Input::Image(shape) => {
                // A Hugging Face model directory's own preprocessing, unless flags say otherwise.
                let (images, source) = options.images.for_models(ingredients)?;
                images.check_size(source.as_deref(), shape.size, &arch.describe())?;
                preprocessor = source;
                let batch = Some(evaluator.batch_size);
                // Class names are numbered as the first model's label2id does when they are
                // exactly its classes, else in sorted order (warned when only some are).
                let label2id = Layout::of(pool[0].as_ref().expect("opened above"))?
                    .config
                    .as_ref()
                    .and_then(crate::dataset::label2id);
                let mut open = |p: Option<&Path>| -> Result<Option<Data>> {
                    let Some(p) = p else { return Ok(None) };
                    let mut data = Dataset::open_batched(p, arch, &images, batch)?;
                    if let Some(message) = label2id.as_ref().and_then(|m| data.follow_label2id(m)) {
                        warnings.push(Warning::general(
                            "classes-unmatched",
                            Some(data.path.clone()),
                            message,
                        ));
                    }
                    Ok(Some(Data::Images(data)))
                };
                (open(val)?, open(test)?, Task::Classification)
            }
            Input::Tokens(_) => {
                let first = pool[0].as_ref().expect("opened above");
                let (val, test, task) = open_text(first, arch, val, test, options)?;
                for data in val.iter().chain(&test) {
                    // A batch is padded to its longest sequence: at most this many tokens each.
                    let longest = data.sequences.iter().map(|s| s.len()).max().unwrap_or(0);
                    let example = Example {
                        path: &data.path,
                        bytes: longest as u64 * batch_memory::TOKEN_BYTES,
                        at_least: false,
                        what: format!("sequences of up to {longest} tokens"),
                        shrink: "a smaller --seq-len or --max-length",
                    };
                    batch_memory::check(evaluator.batch_size, data.sequences.len(), &example)?;
                }
                (val.map(Data::Text), test.map(Data::Text), task)
            }
        };
        let metric = options.metric.unwrap_or(task.default_metric());
        if !task.metrics().contains(&metric) {
            let names: Vec<&str> = task.metrics().iter().map(|m| m.name()).collect();
            return Err(Error::Dataset {
                path: PathBuf::from("--metric"),
                reason: format!(
                    "{} is not a metric of {}; it has: {}",
                    metric.name(),
                    task.name(),
                    names.join(", ")
                ),
            });
        }
        if let (Some(v), Some(t)) = (images(&val), images(&test)) {
            if let (Some(a), Some(b)) = (&v.classes, &t.classes) {
                if a != b {
                    let first = a
                        .iter()
                        .zip(b)
                        .position(|(x, y)| x != y)
                        .unwrap_or(a.len().min(b.len()));
                    return Err(Error::Dataset {
                        path: t.path.clone(),
                        reason: format!(
                            "its classes differ from --val {}'s: class {first} is {:?} here and {:?} there; both splits need the same class names",
                            v.path.display(),
                            b.get(first).map_or("absent", String::as_str),
                            a.get(first).map_or("absent", String::as_str),
                        ),
                    });
                }
            }
        }
        for data in images(&val).into_iter().chain(images(&test)) {
            if let Some((path, reason)) = data.skipped.first() {
                warnings.push(Warning::general(
                    "images-skipped",
                    Some(data.path.clone()),
                    format!(
                        "{}: skipped {} image(s) that could not be decoded (--skip-bad-images); first: {}: {reason}",
                        data.path.display(),
                        data.skipped.len(),
                        path.display()
                    ),
                ));
            }
        }
        // On a GPU each split's inputs cross to the device once, for every model of the run;
        // the CPU reads them batch by batch from where they are, with no second copy (nor
        // does a split too large for memory, held in a cache file, go to the device whole).
        let upload = |d: &Option<Data>| {
            images(d)
                .filter(|d| !evaluator.device.is_cpu() && matches!(d.inputs, Samples::Memory(_)))
                .map(|d| evaluator.upload(d))
                .transpose()
        };
        let inputs = [upload(&val)?, upload(&test)?];
        Ok(Session {
            evaluator,
            paths: ingredients.to_vec(),
            outputs: vec![[None, None]; pool.len()],
            pool,
            val,
            test,
            inputs,
            task,
            metric,
            metric_given: options.metric.is_some(),
            preprocessor,
            warnings,
        })
    }

    /// The `preprocessor_config.json` the images were transformed by, when one was read.
    pub fn preprocessor(&self) -> Option<&Path> {
        self.preprocessor.as_deref()
    }

    /// The architecture models are built as.
    pub fn arch(&self) -> &dyn Architecture {
        &*self.evaluator.arch
    }

    /// What is scored: classification, language modelling or multiple choice.
    pub fn task(&self) -> Task {
        self.task
    }

    /// The metric that ranks ingredients and decides greedy steps.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The evaluator, for its progress bar.
    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// The ingredients' display names (file names), in command-line order.
    pub fn names(&self) -> Vec<String> {
        soup::display_names(&self.paths.iter().map(|p| p.as_path()).collect::<Vec<_>>())
    }

    /// Whether a split was given.
    pub fn has(&self, split: Split) -> bool {
        self.data(split).is_some()
    }

    /// A split's data, if it was given.
    pub fn data(&self, split: Split) -> Option<&Data> {
        match split {
            Split::Val => self.val.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }

    /// A split's data, with its inputs on the device when they were uploaded.
    fn on_device(&self, split: Split) -> Option<(&Data, Option<&Tensor>)> {
        let inputs = self.inputs[split as usize].as_ref();
        self.data(split).map(|d| (d, inputs))
    }

    fn checkpoint(&self, i: usize) -> &Checkpoint {
        self.pool[i]
            .as_ref()
            .expect("checkpoints are returned after each plan")
    }

    /// Checks, from headers alone, that the ingredients can be averaged together: the core's
    /// plan of their uniform soup. Run it before any evaluation when a soup will be made.
    pub fn check_soup(&mut self) -> Result<()> {
        let all: Vec<usize> = (0..self.pool.len()).collect();
        self.with_plan(&all, |_| Ok(()))
    }

    /// Builds the core's plan for the uniform soup of `members` (in that order, weights 1/k,
    /// default options: exactly what `soup-merge` of those files does) and runs `f` on it.
    fn with_plan<T>(&mut self, members: &[usize], f: impl FnOnce(&Plan) -> Result<T>) -> Result<T> {
        let k = members.len();
        let checkpoints: Vec<Checkpoint> = members
            .iter()
            .map(|&i| {
                self.pool[i]
                    .take()
                    .expect("each ingredient joins a plan once")
            })
            .collect();
        let plan = match Plan::new(
            checkpoints,
            vec![1.0 / k as f64; k],
            &PlanOptions::default(),
        ) {
            Ok(plan) => plan,
            Err(e) => {
                // The failed plan took the checkpoints with it: map them again, so that the
                // session stays usable after the error.
                for &i in members {
                    self.pool[i] = Some(Checkpoint::open(&self.paths[i])?);
                }
                return Err(e.into());
            }
        };
        let result = f(&plan);
        for (&i, checkpoint) in members.iter().zip(plan.ingredients) {
            self.pool[i] = Some(checkpoint);
        }
        result
    }

    /// The uniform soup of `members`, merged in memory by the core, as f32 weights on the
    /// evaluation device.
    fn core_soup(&mut self, members: &[usize]) -> Result<Weights> {
        let device = self.evaluator.device.clone();
        let (weights, warnings) = self.with_plan(members, |plan| {
            let (soup, warnings) = soup::to_memory(plan, RunOptions::default())?;
            Ok((Weights::from_soup(&soup, &device)?, warnings))
        })?;
        self.note(warnings);
        Ok(weights)
    }

    /// Keeps each warning once per run, however many soups the run merges: BatchNorm's step
    /// counters, which differ between any two fine-tunes, get one line in all.
    fn note(&mut self, warnings: impl IntoIterator<Item = Warning>) {
        for w in warnings {
            // An ingredient's NaN was said when it was opened, once for all its tensors.
            let same_input = |old: &Warning| {
                w.kind == "non-finite-input" && old.kind == w.kind && old.input == w.input
            };
            let seen = self.warnings.iter().any(|old| {
                *old == w
                    || (w.kind == "batches-tracked-differ" && old.kind == w.kind)
                    || same_input(old)
            });
            if !seen {
                self.warnings.push(w);
            }
        }
    }

    /// Scores `weights` on each split given.
    fn score_splits(&self, weights: &Weights) -> Result<(Option<Metrics>, Option<Metrics>)> {
        let score = |split| {
            self.on_device(split)
                .map(|(d, x)| self.evaluator.metrics(weights, d, x, self.metric))
                .transpose()
        };
        Ok((score(Split::Val)?, score(Split::Test)?))
    }

    /// Outputs of ingredient `i` on `split` (computed once): logits, or each sequence's
    /// token statistics (language-modelling windows, or multiple-choice choices, in order).
    pub fn ingredient_outputs(&mut self, i: usize, split: Split) -> Result<Option<&Outputs>> {
        let slot = split as usize;
        if self.outputs[i][slot].is_none() {
            let Some((data, inputs)) = self.on_device(split) else {
                return Ok(None);
            };
            let weights = Weights::from_checkpoint(self.checkpoint(i), &self.evaluator.device)?;
            let outputs = self.evaluator.outputs(&weights, data, inputs)?;
            self.outputs[i][slot] = Some(outputs);
        }
        Ok(self.outputs[i][slot].as_ref())
    }

    /// Ingredient `i`'s metrics on `split`, if that split was given.
    pub fn ingredient_score(&mut self, i: usize, split: Split) -> Result<Option<Metrics>> {
        let classes = self.arch().output().width();
        let metric = self.metric;
        if self.ingredient_outputs(i, split)?.is_none() {
            return Ok(None);
        }
        let outputs = self.outputs[i][split as usize].as_ref().expect("computed");
        let data = self.data(split).expect("has outputs");
        Ok(Some(outputs.metrics(data, classes, metric)))
    }

    /// One row per ingredient, scored on the splits given (`splits` limits which).
    pub fn ingredients(&mut self, splits: &[Split]) -> Result<Vec<Row>> {
        let names = self.names();
        let mut rows = Vec::with_capacity(names.len());
        for (i, name) in names.into_iter().enumerate() {
            let val = if splits.contains(&Split::Val) {
                self.ingredient_score(i, Split::Val)?
            } else {
                None
            };
            let test = if splits.contains(&Split::Test) {
                self.ingredient_score(i, Split::Test)?
            } else {
                None
            };
            rows.push(Row {
                kind: Kind::Ingredient,
                name,
                members: Vec::new(),
                val,
                test,
            });
        }
        Ok(rows)
    }

    /// The uniform soup of every ingredient, in command-line order, merged by the core.
    pub fn uniform(&mut self) -> Result<Row> {
        let all: Vec<usize> = (0..self.pool.len()).collect();
        let weights = self.core_soup(&all)?;
        let (val, test) = self.score_splits(&weights)?;
        Ok(Row {
            kind: Kind::UniformSoup,
            name: format!("uniform soup ({})", all.len()),
            members: self.names(),
            val,
            test,
        })
    }

    /// The greedy soup: search on validation with in-memory candidates, then the chosen soup
    /// merged by the core and scored. With `output` (a request whose output, `--force` and the
    /// run's other reads and writes are set), the soup is written by `soup::Merge` exactly as
    /// `soup-merge` of the chosen ingredients would write it: a file, or a model directory.
    pub fn greedy(&mut self, accept_ties: bool, output: Option<&MergeRequest>) -> Result<Greedy> {
        if !self.has(Split::Val) {
            return Err(Error::Dataset {
                path: PathBuf::from("--val"),
                reason: "greedy search needs a validation split; pass --val PATH".into(),
            });
        }
        let mut val_scores = Vec::with_capacity(self.pool.len());
        for i in 0..self.pool.len() {
            val_scores.push(self.ingredient_score(i, Split::Val)?.expect("val given"));
        }
        // NaN ranks last and never wins, so a search where every ingredient scores NaN would
        // keep nothing and return the first one as if it had been chosen.
        if val_scores
            .iter()
            .all(|s| !super::score::Measure::value(s).is_finite())
        {
            let overflow = match super::device::dtype_name(self.evaluator.dtype) {
                "f32" => String::new(),
                dtype => format!(", or the model overflows {dtype} (try --eval-dtype f32)"),
            };
            return Err(Error::Dataset {
                path: self.data(Split::Val).expect("val given").path().to_path_buf(),
                reason: format!(
                    "the {} of every ingredient on this split is NaN or infinite, so no greedy soup can be chosen by it: their weights hold NaN or infinite values (see the warnings){overflow}; soup-eval score shows each one's metrics",
                    self.metric.name()
                ),
            });
        }
        let search = {
            let checkpoints: Vec<&Checkpoint> = self
                .pool
                .iter()
                .map(|c| c.as_ref().expect("returned"))
                .collect();
            let (val, val_inputs) = self.on_device(Split::Val).expect("val given");
            let mut candidates = SumCandidates {
                checkpoints: &checkpoints,
                evaluator: &self.evaluator,
                val,
                val_inputs,
                metric: self.metric,
                soup: None,
                pending: None,
            };
            greedy::search(
                &val_scores,
                &mut candidates,
                greedy::Rule {
                    goal: self.metric.goal(),
                    accept_ties,
                },
                1,
            )?
        };
        let chosen = search.chosen.clone();
        let weights = self.core_soup(&chosen)?;
        let (val, test) = self.score_splits(&weights)?;
        if let Some(template) = output {
            let request = MergeRequest {
                inputs: chosen.iter().map(|&i| self.paths[i].clone()).collect(),
                weights: None,
                ..template.clone()
            };
            let written = Merge::plan(&request)?.run(&|_| {})?;
            self.note(written.warnings);
        }
        let names = self.names();
        let members: Vec<String> = chosen.iter().map(|&i| names[i].clone()).collect();
        let merge_command = shell::merge_command(
            chosen.iter().map(|&i| self.paths[i].as_path()),
            output.and_then(|r| r.output.as_deref()),
            "SOUP.safetensors",
        );
        Ok(Greedy {
            row: Row {
                kind: Kind::GreedySoup,
                name: format!("greedy soup ({})", chosen.len()),
                members,
                val,
                test,
            },
            search,
            goal: self.metric.goal(),
            // Named when it isn't the image classifier's accuracy, whose report predates it.
            metric: (self.metric_given
                || self.task != Task::Classification
                || matches!(self.val, Some(Data::Text(_))))
            .then_some(self.metric),
            accept_ties,
            output: output.and_then(|r| r.output.clone()),
            merge_command,
        })
    }

    /// The ensemble of every ingredient: a classifier's from their cached logits; a
    /// language model's from the members run together, batch by batch (see
    /// [`Evaluator::token_stats`] for the memory it takes).
    pub fn ensemble(&mut self, mode: Mode) -> Result<Ensemble> {
        let classes = self.arch().output().width();
        let mut scores = [None, None];
        for split in [Split::Val, Split::Test] {
            if !self.has(split) {
                continue;
            }
            let score = match self.data(split).expect("has") {
                Data::Text(text) if text.task != Task::Classification => {
                    let members = self
                        .pool
                        .iter()
                        .map(|c| {
                            Weights::from_checkpoint(
                                c.as_ref().expect("returned"),
                                &self.evaluator.device,
                            )
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let members: Vec<&Weights> = members.iter().collect();
                    let stats = self.evaluator.token_stats(&members, text, mode)?;
                    Outputs::Tokens(stats).metrics(
                        self.data(split).expect("has"),
                        classes,
                        self.metric,
                    )
                }
                _ => {
                    for i in 0..self.pool.len() {
                        self.ingredient_outputs(i, split)?;
                    }
                    let logits: Vec<&[f32]> = self
                        .outputs
                        .iter()
                        .map(|o| match &o[split as usize] {
                            Some(Outputs::Logits(l)) => l.as_slice(),
                            _ => unreachable!("a classifier's outputs are logits"),
                        })
                        .collect();
                    let labels = match self.data(split).expect("has") {
                        Data::Images(d) => &d.labels,
                        Data::Text(t) => &t.labels,
                    };
                    Metrics::classification(
                        ensemble::score(&logits, classes, labels, mode),
                        self.metric,
                    )
                }
            };
            scores[split as usize] = Some(score);
        }
        Ok(Ensemble {
            row: Row {
                kind: Kind::Ensemble,
                name: format!("ensemble ({}, {mode})", self.pool.len()),
                members: self.names(),
                val: scores[0],
                test: scores[1],
            },
            mode,
        })
    }
}

/// A warning when `--test` is `--val` (by any path to it): the greedy soup is chosen on
/// validation, so its test numbers would not be held out, and look better than they are.
fn test_is_val(val: Option<&Path>, test: Option<&Path>) -> Option<Warning> {
    let (val, test) = (val?, test?);
    let same = match (std::fs::canonicalize(val), std::fs::canonicalize(test)) {
        (Ok(a), Ok(b)) => a == b,
        _ => val == test,
    };
    same.then(|| {
        Warning::general(
            "test-is-val",
            Some(test.to_path_buf()),
            format!(
                "--test {} is --val {}: the soups are chosen on it, so the test numbers are not held out; give a separate test split",
                test.display(),
                val.display()
            ),
        )
    })
}

/// A split's image dataset, if it is one.
fn images(d: &Option<Data>) -> Option<&Dataset> {
    match d {
        Some(Data::Images(d)) => Some(d),
        _ => None,
    }
}

/// Greedy candidates from a running sum of the chosen ingredients ([`RunningSum`]): on the
/// CPU the members by reference, read when a candidate is averaged; on a GPU their f64 sums
/// kept on the device, so that a step uploads the candidate ingredient once and reads back
/// only logits.
struct SumCandidates<'a> {
    checkpoints: &'a [&'a Checkpoint],
    evaluator: &'a Evaluator,
    val: &'a Data,
    val_inputs: Option<&'a Tensor>,
    metric: Metric,
    soup: Option<RunningSum<'a>>,
    /// The last candidate tried and its sum, so that keeping it costs nothing.
    pending: Option<(usize, RunningSum<'a>)>,
}

impl Candidates<Metrics> for SumCandidates<'_> {
    fn start(&mut self, first: usize) -> Result<()> {
        self.soup = Some(RunningSum::new(
            self.checkpoints[first],
            &self.evaluator.device,
        )?);
        Ok(())
    }

    fn try_with(&mut self, candidate: usize) -> Result<Trial<Metrics>> {
        let started = Instant::now();
        let sum = self
            .soup
            .as_ref()
            .expect("started")
            .plus(self.checkpoints[candidate])?;
        let weights = sum.mean()?;
        // A GPU runs the sum asynchronously: wait for it, so the timings split where the work does.
        self.evaluator.synchronize()?;
        let merged = Instant::now();
        let val = self
            .evaluator
            .metrics(&weights, self.val, self.val_inputs, self.metric)?;
        let done = Instant::now();
        self.pending = Some((candidate, sum));
        Ok(Trial {
            val,
            merge_seconds: (merged - started).as_secs_f64(),
            eval_seconds: (done - merged).as_secs_f64(),
        })
    }

    fn keep(&mut self, candidate: usize) -> Result<()> {
        let soup = match self.pending.take() {
            Some((tried, sum)) if tried == candidate => sum,
            // Another candidate was tried since (speculation): add this one again.
            _ => self
                .soup
                .as_ref()
                .expect("started")
                .plus(self.checkpoints[candidate])?,
        };
        self.soup = Some(soup);
        Ok(())
    }
}

/// Refuses a classifier that is not one: a head of one output, or `config.json`'s
/// `problem_type` `regression` (transformers' reading of `num_labels` = 1), or
/// `multi_label_classification`. A softmax over one logit is 1, so every example of class 0
/// would count as right with loss 0, and every soup would tie; a multi-label head's outputs
/// are independent sigmoids, trained with binary cross-entropy against a set of labels, which
/// one label per example and a softmax would score wrongly without saying so.
fn check_head(first: &Checkpoint, arch: &dyn Architecture) -> Result<()> {
    let Output::Classes(classes) = arch.output() else {
        return Ok(());
    };
    let layout = Layout::of(first)?;
    let problem = layout
        .config
        .as_ref()
        .and_then(|c| c.get("problem_type"))
        .and_then(|p| p.as_str());
    let (regression, multi_label) = (
        problem == Some("regression"),
        problem == Some("multi_label_classification"),
    );
    if classes >= 2 && !regression && !multi_label {
        return Ok(());
    }
    // The head's weight: the last one with a row per class.
    let tensor = arch
        .tensors()
        .into_iter()
        .rev()
        .find(|t| t.name.ends_with("weight") && t.shape.len() == 2 && t.shape[0] == classes)
        .map_or_else(|| "the classifier".to_string(), |t| t.name);
    let rows = match classes {
        1 => "has one output row".to_string(),
        n => format!("has {n} output rows"),
    };
    let reason = if multi_label {
        format!("{rows}, and config.json's problem_type is \"multi_label_classification\": independent sigmoids scored against sets of labels, not one class per example")
    } else if regression {
        format!("{rows}, and config.json's problem_type is \"regression\": a regression or reward head, not a classifier")
    } else {
        format!("{rows}: a regression or reward head, not a classifier (a softmax over one output is always 1)")
    };
    Err(Error::Head {
        path: first.path().to_path_buf(),
        tensor,
        reason,
    })
}

/// Refuses ingredients whose `config.json` numbers the same class names differently: their
/// heads' rows are other classes, so a soup would average unrelated rows and every score would
/// hold them to the first ingredient's labels. (Names that differ, `LABEL_0` against `cat`,
/// don't say how the rows relate, and pass.)
fn check_label_order(pool: &[Option<Checkpoint>]) -> Result<()> {
    let label2id = |c: &Checkpoint| -> Result<Option<std::collections::BTreeMap<String, usize>>> {
        Ok(Layout::of(c)?
            .config
            .as_ref()
            .and_then(crate::dataset::label2id))
    };
    let mut checkpoints = pool.iter().flatten();
    let Some(first) = checkpoints.next() else {
        return Ok(());
    };
    let Some(expected) = label2id(first)? else {
        return Ok(());
    };
    for other in checkpoints {
        let Some(found) = label2id(other)? else {
            continue;
        };
        if found.keys().eq(expected.keys()) && found != expected {
            let (name, id) = found
                .iter()
                .find(|(name, id)| expected.get(*name) != Some(id))
                .expect("the maps differ on a shared key");
            return Err(Error::Dataset {
                path: other.path().join("config.json"),
                reason: format!(
                    "its label2id numbers {name:?} {id}, but {}'s numbers it {}: the models' output rows are other classes, so they can't be souped or scored on one set of labels; permute the head's rows (and label2id) to the first model's order",
                    first.path().join("config.json").display(),
                    expected[name]
                ),
            });
        }
    }
    Ok(())
}

/// Opens the text splits of a language model: the model's vocabulary, positions, classes and
/// `config.json` (from the first ingredient), its tokenizer when the data needs one, and the
/// task both splits share.
fn open_text(
    first: &Checkpoint,
    arch: &dyn Architecture,
    val: Option<&Path>,
    test: Option<&Path>,
    options: &DataOptions,
) -> Result<(Option<TextData>, Option<TextData>, Task)> {
    let Input::Tokens(input) = arch.input() else {
        unreachable!("called for token models")
    };
    let layout = Layout::of(first)?;
    let tokenizer_path = match &options.tokenizer {
        Some(path) => Some(path.clone()),
        None => {
            let dir = first.path();
            let path = dir.join("tokenizer.json");
            (dir.is_dir() && crate::dataset::present(&path, "tokenizer")?).then_some(path)
        }
    };
    let tokenizer = tokenizer_path
        .as_deref()
        .map(TextTokenizer::open)
        .transpose()?;
    if let Some(t) = &tokenizer {
        if t.vocab_size() > input.vocab {
            return Err(Error::Dataset {
                path: t.path().to_path_buf(),
                reason: format!(
                    "has {} tokens, but {} has {} embedding rows; use the tokenizer saved with this model (--tokenizer PATH)",
                    t.vocab_size(),
                    first.path().display(),
                    input.vocab
                ),
            });
        }
    }
    let model = TokenModel {
        vocab: input.vocab,
        max_positions: input.max_positions,
        trained_positions: input.trained_positions,
        classes: match arch.output() {
            Output::Classes(n) => Some(n),
            Output::NextToken(_) => None,
        },
        pad_id: input
            .pad_token_id
            .or_else(|| tokenizer.as_ref().and_then(TextTokenizer::padding_id))
            .unwrap_or(0),
        segments: input.segments,
        ..TokenModel::default()
    }
    .with_config(layout.config.as_ref());
    // Special ids from config.json name embedding rows: one past the vocabulary would fail
    // mid-forward with a message blaming the data.
    for (key, id) in [
        (
            "pad_token_id",
            Some(model.pad_id).filter(|_| input.pad_token_id.is_some()),
        ),
        ("bos_token_id", model.bos),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= model.vocab) {
            return Err(Error::Dataset {
                path: first.path().join("config.json"),
                reason: format!(
                    "{key} is {id}, but the model has {} embedding rows, so it is no token id; fix config.json",
                    model.vocab
                ),
            });
        }
    }
    let mut tasks = Vec::new();
    for path in val.iter().chain(test.iter()) {
        tasks.push((path, choose_task(path, &model, options.text.task)?));
    }
    if let [(a, ta), (b, tb)] = tasks[..] {
        if ta != tb {
            return Err(Error::Dataset {
                path: b.to_path_buf(),
                reason: format!(
                    "is {} data, but --val {} is {} data; give both splits one task (or --task)",
                    tb.name(),
                    a.display(),
                    ta.name()
                ),
            });
        }
    }
    let task = tasks.first().map_or(Task::LanguageModelling, |(_, t)| *t);
    let open = |p: Option<&Path>| {
        p.map(|p| TextData::open(p, task, &model, tokenizer.as_ref(), &options.text))
            .transpose()
    };
    Ok((open(val)?, open(test)?, task))
}
