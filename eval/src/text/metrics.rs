//! Language-modelling and multiple-choice metrics (spec §3) from each sequence's token statistics.

use super::data::Question;
use super::tokens::TokenStats;
use crate::score::{argmax, Metric, Metrics, Score, Task};

/// Loss, perplexity and next-token accuracy over every scored token of every window.
pub fn language_modelling(stats: &[TokenStats], metric: Metric) -> Metrics {
    let (mut log_prob, mut tokens, mut correct) = (0f64, 0u64, 0u64);
    for s in stats {
        log_prob += s.log_prob;
        tokens += s.tokens;
        correct += s.correct;
    }
    let score = Score::from_sums(correct, tokens, -log_prob);
    Metrics {
        task: Task::LanguageModelling,
        metric,
        score,
        perplexity: Some(score.loss.exp()),
        acc_norm: None,
        correct_norm: None,
    }
}

/// Accuracy (the choice with the highest summed log-probability), `acc_norm` (divided by the
/// choice's length in characters) and the cross-entropy of the answer among the choices.
/// `stats` has one entry per sequence, the questions' choices in order.
pub fn multiple_choice(questions: &[Question], stats: &[TokenStats], metric: Metric) -> Metrics {
    let (mut correct, mut correct_norm, mut loss) = (0u64, 0u64, 0f64);
    for q in questions {
        let scores: Vec<f64> = stats[q.first..q.first + q.chars.len()]
            .iter()
            .map(|s| s.log_prob)
            .collect();
        let normed: Vec<f64> = scores
            .iter()
            .zip(&q.chars)
            .map(|(s, &n)| s / n.max(1) as f64)
            .collect();
        if argmax(&scores) == q.answer {
            correct += 1;
        }
        if argmax(&normed) == q.answer {
            correct_norm += 1;
        }
        let max = scores.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
        let log_sum = scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln() + max;
        loss += log_sum - scores[q.answer];
    }
    let n = questions.len() as u64;
    Metrics {
        task: Task::MultipleChoice,
        metric,
        score: Score::from_sums(correct, n, loss),
        perplexity: None,
        acc_norm: Some(correct_norm as f64 / n.max(1) as f64),
        correct_norm: Some(correct_norm),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(log_prob: f64, tokens: u64, correct: u64) -> TokenStats {
        TokenStats {
            log_prob,
            tokens,
            correct,
        }
    }

    #[test]
    fn language_modelling_averages_over_tokens_not_windows() {
        let m = language_modelling(&[st(-3.0, 2, 1), st(-1.0, 6, 3)], Metric::Loss);
        assert_eq!((m.correct, m.total), (4, 8));
        assert!((m.loss - 0.5).abs() < 1e-15);
        assert!((m.perplexity.unwrap() - 0.5f64.exp()).abs() < 1e-15);
        assert_eq!(m.accuracy, 0.5);
    }

    #[test]
    fn multiple_choice_normalises_by_characters_and_takes_the_first_maximum() {
        // Choice 0: -4 over 2 chars (-2/char); choice 1: -6 over 6 chars (-1/char).
        let q = Question {
            first: 0,
            chars: vec![2, 6],
            answer: 1,
        };
        let m = multiple_choice(
            std::slice::from_ref(&q),
            &[st(-4.0, 1, 0), st(-6.0, 3, 0)],
            Metric::AccNorm,
        );
        assert_eq!(
            (m.correct, m.acc_norm, m.correct_norm),
            (0, Some(1.0), Some(1))
        );
        let loss = (((-4f64).exp() + (-6f64).exp()).ln()) + 6.0;
        assert!((m.loss - loss).abs() < 1e-12);
        // Equal scores: the first choice wins.
        let tie = multiple_choice(&[q], &[st(-6.0, 1, 0), st(-6.0, 3, 0)], Metric::Accuracy);
        assert_eq!(tie.correct, 0);
    }
}
