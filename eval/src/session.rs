//! One evaluation run: ingredients opened and checked once, datasets loaded once, each
//! ingredient's logits computed once and reused by the ensemble; soups built through the core.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;

use model_soup::format::Checkpoint;
use model_soup::soup::{
    self, display_name, Merge, MergeRequest, Plan, PlanOptions, RunOptions, Warning,
};

use super::arch::Architecture;
use super::dataset::Dataset;
use super::ensemble::{self, Mode};
use super::error::{Error, Result};
use super::evaluator::Evaluator;
use super::greedy::{self, Candidates, Trial};
use super::images::{LoadOptions, Samples};
use super::report::{Ensemble, Greedy, Kind, Row};
use super::score::Score;
use super::weights::{check_fits, RunningSum, Weights};

/// A dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Held-out data used to rank and choose ingredients.
    Val,
    /// Data used only to report the final numbers.
    Test,
}

/// Ingredients, datasets and an evaluator, with per-ingredient logits cached.
pub struct Session {
    evaluator: Evaluator,
    paths: Vec<PathBuf>,
    /// `None` only while a plan holds the checkpoint (see [`Session::with_plan`]).
    pool: Vec<Option<Checkpoint>>,
    val: Option<Dataset>,
    test: Option<Dataset>,
    /// Each split's inputs on a GPU, uploaded once: `[val, test]` (none on the CPU).
    inputs: [Option<Tensor>; 2],
    /// Logits per ingredient: `[val, test]`.
    logits: Vec<[Option<Vec<f32>>; 2]>,
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
        if ingredients.is_empty() {
            return Err(Error::NoIngredients);
        }
        let arch = &*evaluator.arch;
        let mut pool = Vec::with_capacity(ingredients.len());
        for path in ingredients {
            let checkpoint = Checkpoint::open(path)?;
            check_fits(&checkpoint, arch)?;
            pool.push(Some(checkpoint));
        }
        let val = val
            .map(|p| Dataset::open_with(p, arch, images))
            .transpose()?;
        let test = test
            .map(|p| Dataset::open_with(p, arch, images))
            .transpose()?;
        if let (Some(v), Some(t)) = (&val, &test) {
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
        let mut warnings = Vec::new();
        for data in val.iter().chain(&test) {
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
        let upload = |d: &Option<Dataset>| {
            d.as_ref()
                .filter(|d| !evaluator.device.is_cpu() && matches!(d.inputs, Samples::Memory(_)))
                .map(|d| evaluator.upload(d))
                .transpose()
        };
        let inputs = [upload(&val)?, upload(&test)?];
        Ok(Session {
            evaluator,
            paths: ingredients.to_vec(),
            logits: vec![[None, None]; pool.len()],
            pool,
            val,
            test,
            inputs,
            warnings,
        })
    }

    /// The architecture models are built as.
    pub fn arch(&self) -> &dyn Architecture {
        &*self.evaluator.arch
    }

    /// The evaluator, for its progress bar.
    pub fn evaluator(&self) -> &Evaluator {
        &self.evaluator
    }

    /// The ingredients' display names (file names), in command-line order.
    pub fn names(&self) -> Vec<String> {
        self.paths.iter().map(|p| display_name(p)).collect()
    }

    /// Whether a split was given.
    pub fn has(&self, split: Split) -> bool {
        self.data(split).is_some()
    }

    fn data(&self, split: Split) -> Option<&Dataset> {
        match split {
            Split::Val => self.val.as_ref(),
            Split::Test => self.test.as_ref(),
        }
    }

    /// A split's data, with its inputs on the device when they were uploaded.
    fn on_device(&self, split: Split) -> Option<(&Dataset, Option<&Tensor>)> {
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
            let seen = self
                .warnings
                .iter()
                .any(|old| *old == w || (w.kind == "batches-tracked-differ" && old.kind == w.kind));
            if !seen {
                self.warnings.push(w);
            }
        }
    }

    /// Scores `weights` on each split given.
    fn score_splits(&self, weights: &Weights) -> Result<(Option<Score>, Option<Score>)> {
        let score = |split| {
            self.on_device(split)
                .map(|(d, x)| self.evaluator.score_with(weights, d, x))
                .transpose()
        };
        Ok((score(Split::Val)?, score(Split::Test)?))
    }

    /// Logits of ingredient `i` on `split` (computed once).
    fn ingredient_logits(&mut self, i: usize, split: Split) -> Result<Option<&[f32]>> {
        let slot = split as usize;
        if self.logits[i][slot].is_none() {
            let Some((data, inputs)) = self.on_device(split) else {
                return Ok(None);
            };
            let weights = Weights::from_checkpoint(self.checkpoint(i), &self.evaluator.device)?;
            let logits = self.evaluator.logits_with(&weights, data, inputs)?;
            self.logits[i][slot] = Some(logits);
        }
        Ok(self.logits[i][slot].as_deref())
    }

    /// Ingredient `i`'s score on `split`, if that split was given.
    pub fn ingredient_score(&mut self, i: usize, split: Split) -> Result<Option<Score>> {
        let classes = self.arch().output().width();
        let Some(logits) = self.ingredient_logits(i, split)? else {
            return Ok(None);
        };
        let logits = logits.to_vec();
        let labels = &self.data(split).expect("has logits").labels;
        Ok(Some(Score::from_logits(&logits, classes, labels)))
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
                soup: None,
                pending: None,
            };
            greedy::search(
                &val_scores,
                &mut candidates,
                greedy::Rule {
                    goal: greedy::Goal::Maximize,
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
        let merge_command = format!(
            "soup-merge {} -o {}",
            chosen
                .iter()
                .map(|&i| shell_word(&self.paths[i].display().to_string()))
                .collect::<Vec<_>>()
                .join(" "),
            output
                .and_then(|r| r.output.as_deref())
                .map_or("SOUP.safetensors".to_string(), |p| shell_word(
                    &p.display().to_string()
                ))
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
            goal: greedy::Goal::Maximize,
            accept_ties,
            output: output.and_then(|r| r.output.clone()),
            merge_command,
        })
    }

    /// The ensemble of every ingredient, from their cached logits.
    pub fn ensemble(&mut self, mode: Mode) -> Result<Ensemble> {
        let classes = self.arch().output().width();
        let mut scores = [None, None];
        for split in [Split::Val, Split::Test] {
            if !self.has(split) {
                continue;
            }
            for i in 0..self.pool.len() {
                self.ingredient_logits(i, split)?;
            }
            let logits: Vec<&[f32]> = self
                .logits
                .iter()
                .map(|l| l[split as usize].as_deref().expect("computed above"))
                .collect();
            let labels = &self.data(split).expect("has").labels;
            scores[split as usize] = Some(ensemble::score(&logits, classes, labels, mode));
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

/// Quotes a path for the shell when it needs it.
pub(crate) fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+=:,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Greedy candidates from a running sum of the chosen ingredients ([`RunningSum`]): on the
/// CPU the members by reference, read when a candidate is averaged; on a GPU their f64 sums
/// kept on the device, so that a step uploads the candidate ingredient once and reads back
/// only logits.
struct SumCandidates<'a> {
    checkpoints: &'a [&'a Checkpoint],
    evaluator: &'a Evaluator,
    val: &'a Dataset,
    val_inputs: Option<&'a Tensor>,
    soup: Option<RunningSum<'a>>,
    /// The last candidate tried and its sum, so that keeping it costs nothing.
    pending: Option<(usize, RunningSum<'a>)>,
}

impl Candidates for SumCandidates<'_> {
    fn start(&mut self, first: usize) -> Result<()> {
        self.soup = Some(RunningSum::new(
            self.checkpoints[first],
            &self.evaluator.device,
        )?);
        Ok(())
    }

    fn try_with(&mut self, candidate: usize) -> Result<Trial> {
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
            .score_with(&weights, self.val, self.val_inputs)?;
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
