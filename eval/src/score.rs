//! Scores: accuracy and mean cross-entropy from logits or probabilities.

use serde::Serialize;

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
        let total = total as u64;
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
/// alike for the built-in models ([`Score`]) and for an external scorer's number (`f64`).
pub trait Measure: Copy + std::fmt::Debug + PartialEq + Serialize {
    /// Column titles for one split, after the split's name ("val acc", "val", "val loss").
    const COLUMNS: &'static [&'static str];
    /// The least width of each column's cells.
    const WIDTHS: &'static [usize];
    /// What the two timings of a greedy step measure: building a candidate, then scoring it.
    const TIMINGS: [&'static str; 2];
    /// The number that ranks ingredients and decides acceptance.
    fn value(&self) -> f64;
    /// The table cells for this score, one per column.
    fn cells(&self) -> Vec<String>;
    /// A [`Measure::value`] as people read it.
    fn show(value: f64) -> String;
}

impl Measure for Score {
    const COLUMNS: &'static [&'static str] = &["acc", "", "loss"];
    const WIDTHS: &'static [usize] = &[9, 9, 8];
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

    fn show(value: f64) -> String {
        format!("{:.4}%", 100.0 * value)
    }
}

/// An external scorer's number, as it printed it (`soup-eval --scorer`).
impl Measure for f64 {
    const COLUMNS: &'static [&'static str] = &["score"];
    const WIDTHS: &'static [usize] = &[9];
    const TIMINGS: [&'static str; 2] = ["write", "scorer"];

    fn value(&self) -> f64 {
        *self
    }

    fn cells(&self) -> Vec<String> {
        vec![Self::show(*self)]
    }

    fn show(value: f64) -> String {
        // The shortest text that reads back as the same number: what the scorer printed.
        format!("{value}")
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
