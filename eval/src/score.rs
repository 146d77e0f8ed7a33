//! Scores and metrics: each task's metrics (accuracy and cross-entropy for classifiers; loss, perplexity and next-token accuracy for language models; accuracy and length-normalised accuracy for multiple choice), which way each is better, and the one that ranks.

use serde::Serialize;

use super::greedy::Goal;

/// How well one model (or soup, or ensemble) does on one dataset split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Score {
    /// Examples whose highest-scoring class is the label (the first of equal maxima).
    pub correct: u64,
    /// Examples evaluated.
    pub total: u64,
    /// `correct / total`, in [0, 1].
    pub accuracy: f64,
    /// Mean cross-entropy (natural log) of the label under the predicted distribution.
    pub loss: f64,
}

impl Score {
    /// Scores row-major logits `[labels.len(), classes]`; the loss is softmax cross-entropy.
    pub fn from_logits(logits: &[f32], classes: usize, labels: &[usize]) -> Score {
        let mut correct = 0u64;
        let mut loss = 0f64;
        for (row, &label) in logits.chunks_exact(classes).zip(labels) {
            if argmax(row) == label {
                correct += 1;
            }
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let log_sum = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            loss += log_sum - row[label] as f64;
        }
        Score::new(correct, labels.len(), loss)
    }

    /// Scores row-major class probabilities; the loss is `-ln p(label)`.
    pub fn from_probabilities(probs: &[f64], classes: usize, labels: &[usize]) -> Score {
        let mut correct = 0u64;
        let mut loss = 0f64;
        for (row, &label) in probs.chunks_exact(classes).zip(labels) {
            if argmax(row) == label {
                correct += 1;
            }
            loss -= row[label].ln();
        }
        Score::new(correct, labels.len(), loss)
    }

    fn new(correct: u64, total: usize, loss_sum: f64) -> Score {
        Score::from_sums(correct, total as u64, loss_sum)
    }

    /// A score from `correct` of `total` and the sum of the losses (0 when `total` is 0).
    pub fn from_sums(correct: u64, total: u64, loss_sum: f64) -> Score {
        let n = total.max(1) as f64;
        Score {
            correct,
            total,
            accuracy: correct as f64 / n,
            loss: loss_sum / n,
        }
    }

    /// Accuracy in percent.
    pub fn percent(&self) -> f64 {
        100.0 * self.accuracy
    }
}

/// What one split's score is made of, so that the greedy search, the table and the plot work
/// alike for the built-in models ([`Metrics`], [`Score`]) and for an external scorer's number
/// (`f64`).
pub trait Measure: Copy + std::fmt::Debug + PartialEq + Serialize {
    /// Column titles for one split, after the split's name ("val acc", "val", "val loss"),
    /// with the least width of each column's cells.
    fn columns(&self) -> &'static [(&'static str, usize)];
    /// What the two timings of a greedy step measure: building a candidate, then scoring it.
    const TIMINGS: [&'static str; 2];
    /// The number that ranks ingredients and decides acceptance.
    fn value(&self) -> f64;
    /// The table cells for this score, one per column.
    fn cells(&self) -> Vec<String>;
    /// A [`Measure::value`] of this kind of score as people read it.
    fn show(&self, value: f64) -> String;
}

/// A classifier's columns: accuracy, correct/total, cross-entropy.
const CLASSIFICATION_COLUMNS: &[(&str, usize)] = &[("acc", 9), ("", 9), ("loss", 8)];

impl Measure for Score {
    fn columns(&self) -> &'static [(&'static str, usize)] {
        CLASSIFICATION_COLUMNS
    }
    const TIMINGS: [&'static str; 2] = ["merge", "forward"];

    fn value(&self) -> f64 {
        self.accuracy
    }

    fn cells(&self) -> Vec<String> {
        vec![
            format!("{:.4}%", self.percent()),
            format!("{}/{}", self.correct, self.total),
            format!("{:.4}", self.loss),
        ]
    }

    fn show(&self, value: f64) -> String {
        Metric::Accuracy.show(value)
    }
}

/// An external scorer's number, as it printed it (`soup-eval --scorer`).
impl Measure for f64 {
    fn columns(&self) -> &'static [(&'static str, usize)] {
        &[("score", 9)]
    }
    const TIMINGS: [&'static str; 2] = ["write", "scorer"];

    fn value(&self) -> f64 {
        *self
    }

    fn cells(&self) -> Vec<String> {
        vec![self.show(*self)]
    }

    fn show(&self, value: f64) -> String {
        // The shortest text that reads back as the same number: what the scorer printed.
        format!("{value}")
    }
}

/// What the models are scored on: chosen from the model's output and the data (`--task`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// One label per example (images, or text for a sequence classifier).
    Classification,
    /// Every next token of a text, in windows (`--seq-len`, `--stride`).
    LanguageModelling,
    /// The most likely of several continuations of a context, as lm-evaluation-harness
    /// scores log-likelihood tasks.
    MultipleChoice,
}

impl Task {
    /// Every task, in `--task`'s order.
    pub const ALL: [Task; 3] = [
        Task::Classification,
        Task::LanguageModelling,
        Task::MultipleChoice,
    ];

    /// The name `--task` takes.
    pub fn name(self) -> &'static str {
        match self {
            Task::Classification => "classification",
            Task::LanguageModelling => "lm",
            Task::MultipleChoice => "mc",
        }
    }

    /// The task `--task NAME` names.
    pub fn parse(name: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The metrics the task reports, in table order.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            Task::Classification => &[Metric::Accuracy, Metric::Loss],
            Task::LanguageModelling => &[Metric::Loss, Metric::Perplexity, Metric::Accuracy],
            Task::MultipleChoice => &[Metric::Accuracy, Metric::AccNorm, Metric::Loss],
        }
    }

    /// What greedy optimises without `--metric`: accuracy, or a language model's loss.
    pub fn default_metric(self) -> Metric {
        match self {
            Task::LanguageModelling => Metric::Loss,
            Task::Classification | Task::MultipleChoice => Metric::Accuracy,
        }
    }
}

/// One number a task reports, and which way it is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Metric {
    /// Fraction whose highest-scoring class (token, choice) is the right one; maximised.
    #[serde(rename = "accuracy")]
    Accuracy,
    /// Mean cross-entropy in nats; minimised.
    #[serde(rename = "loss")]
    Loss,
    /// `exp(loss)` over every scored token; minimised.
    #[serde(rename = "perplexity")]
    Perplexity,
    /// Multiple choice: accuracy with each choice's log-likelihood divided by its length in
    /// characters; maximised.
    #[serde(rename = "acc_norm")]
    AccNorm,
}

impl Metric {
    /// Every metric, in `--metric`'s order.
    pub const ALL: [Metric; 4] = [
        Metric::Accuracy,
        Metric::Loss,
        Metric::Perplexity,
        Metric::AccNorm,
    ];

    /// The name `--metric` takes, and the report's JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::Loss => "loss",
            Metric::Perplexity => "perplexity",
            Metric::AccNorm => "acc_norm",
        }
    }

    /// The metric `--metric NAME` names.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Which way is better.
    pub fn goal(self) -> Goal {
        match self {
            Metric::Accuracy | Metric::AccNorm => Goal::Maximize,
            Metric::Loss | Metric::Perplexity => Goal::Minimize,
        }
    }

    /// A value of this metric as people read it: fractions in percent, four decimals.
    pub fn show(self, value: f64) -> String {
        match self {
            Metric::Accuracy | Metric::AccNorm => format!("{:.4}%", 100.0 * value),
            Metric::Loss | Metric::Perplexity => format!("{value:.4}"),
        }
    }
}

/// Every metric of one model on one split, and the one that ranks (`--metric`).
///
/// Serialised as [`Score`]'s fields (`correct`, `total`, `accuracy`, `loss`), then
/// `perplexity` (language modelling) and `acc_norm`, `correct_norm` (multiple choice) where
/// the task has them, so a classifier's JSON is exactly a [`Score`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// What was scored.
    #[serde(skip)]
    pub task: Task,
    /// The metric that ranks ingredients and decides greedy steps.
    #[serde(skip)]
    pub metric: Metric,
    /// Counts, accuracy and loss. Classification: examples. Language modelling: scored
    /// tokens, next-token accuracy and mean token cross-entropy. Multiple choice: questions,
    /// accuracy, and the cross-entropy of the answer among the choices, their summed
    /// log-likelihoods taken as logits.
    #[serde(flatten)]
    pub score: Score,
    /// Language modelling: `exp(loss)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
    /// Multiple choice: accuracy with length-normalised log-likelihoods.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acc_norm: Option<f64>,
    /// Multiple choice: questions answered right under `acc_norm`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correct_norm: Option<u64>,
}

impl Metrics {
    /// A classifier's metrics, ranked by `metric` (accuracy or loss).
    pub fn classification(score: Score, metric: Metric) -> Metrics {
        Metrics {
            task: Task::Classification,
            metric,
            score,
            perplexity: None,
            acc_norm: None,
            correct_norm: None,
        }
    }

    /// The value of `metric`, NaN where the task doesn't have it.
    pub fn get(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Accuracy => self.score.accuracy,
            Metric::Loss => self.score.loss,
            Metric::Perplexity => self.perplexity.unwrap_or(f64::NAN),
            Metric::AccNorm => self.acc_norm.unwrap_or(f64::NAN),
        }
    }
}

impl std::ops::Deref for Metrics {
    type Target = Score;

    fn deref(&self) -> &Score {
        &self.score
    }
}

/// Language modelling's columns: loss, perplexity, next-token accuracy, correct/total tokens.
const LM_COLUMNS: &[(&str, usize)] = &[("loss", 8), ("ppl", 10), ("acc", 9), ("tokens", 15)];
/// Multiple choice's columns: accuracy, correct/total, acc_norm, the choice cross-entropy.
const MC_COLUMNS: &[(&str, usize)] = &[("acc", 9), ("", 9), ("acc_norm", 9), ("loss", 8)];

impl Measure for Metrics {
    fn columns(&self) -> &'static [(&'static str, usize)] {
        match self.task {
            Task::Classification => CLASSIFICATION_COLUMNS,
            Task::LanguageModelling => LM_COLUMNS,
            Task::MultipleChoice => MC_COLUMNS,
        }
    }
    const TIMINGS: [&'static str; 2] = ["merge", "forward"];

    fn value(&self) -> f64 {
        self.get(self.metric)
    }

    fn cells(&self) -> Vec<String> {
        let s = &self.score;
        match self.task {
            Task::Classification => s.cells(),
            Task::LanguageModelling => vec![
                format!("{:.4}", s.loss),
                format!("{:.4}", self.get(Metric::Perplexity)),
                format!("{:.4}%", s.percent()),
                format!("{}/{}", s.correct, s.total),
            ],
            Task::MultipleChoice => vec![
                format!("{:.4}%", s.percent()),
                format!("{}/{}", s.correct, s.total),
                format!("{:.4}%", 100.0 * self.get(Metric::AccNorm)),
                format!("{:.4}", s.loss),
            ],
        }
    }

    fn show(&self, value: f64) -> String {
        self.metric.show(value)
    }
}

/// Index of the first maximum; NaN never wins (an all-NaN row gives 0).
pub fn argmax<T: Copy + Into<f64>>(row: &[T]) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in row.iter().enumerate() {
        let x: f64 = (*x).into();
        if !x.is_nan() && best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// Row-wise softmax of `[rows, classes]` logits, in f64.
pub fn softmax(logits: &[f32], classes: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(classes) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = exps.iter().sum();
        out.extend(exps.iter().map(|e| e / sum));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logits_give_accuracy_and_cross_entropy() {
        // Two examples, three classes: the first right, the second wrong.
        let logits = [2.0f32, 0.0, 0.0, 0.0, 1.0, 0.0];
        let s = Score::from_logits(&logits, 3, &[0, 2]);
        assert_eq!((s.correct, s.total), (1, 2));
        assert_eq!(s.accuracy, 0.5);
        let l0 = (2f64.exp() + 2.0).ln() - 2.0;
        let l1 = (1f64.exp() + 2.0).ln();
        assert!((s.loss - (l0 + l1) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn probabilities_give_negative_log_likelihood() {
        let probs = [0.7, 0.2, 0.1, 0.25, 0.25, 0.5];
        let s = Score::from_probabilities(&probs, 3, &[0, 1]);
        assert_eq!(s.correct, 1);
        assert!((s.loss - (-(0.7f64).ln() - (0.25f64).ln()) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_skips_nan() {
        assert_eq!(argmax(&[1.0f32, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.2]), 1);
        assert_eq!(argmax(&[f64::NAN, f64::NAN]), 0);
    }

    #[test]
    fn softmax_rows_sum_to_one_even_for_large_logits() {
        let p = softmax(&[1000.0, 1000.0, -1000.0], 3);
        assert!((p[0] - 0.5).abs() < 1e-12 && (p[1] - 0.5).abs() < 1e-12 && p[2] == 0.0);
    }
}
