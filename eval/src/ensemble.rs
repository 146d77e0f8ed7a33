//! Ensembles: soft voting over several models' outputs on the same examples.

use serde::Serialize;

use super::score::{softmax, Score};

/// How the models' outputs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Mean of the softmax probabilities, then argmax (soft voting, as the seed does).
    Probs,
    /// Mean of the logits, then argmax (the model-soups paper's ensemble baseline).
    Logits,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Probs => "probs",
            Mode::Logits => "logits",
        })
    }
}

/// Combines each model's row-major logits `[N, classes]` and scores the ensemble.
///
/// With [`Mode::Probs`] the loss is `-ln` of the mean probability of the label; with
/// [`Mode::Logits`] it is the cross-entropy of the mean logits.
pub fn score(logits: &[&[f32]], classes: usize, labels: &[usize], mode: Mode) -> Score {
    let n = logits.len().max(1) as f64;
    match mode {
        Mode::Probs => {
            let mut mean = vec![0f64; labels.len() * classes];
            for model in logits {
                for (m, p) in mean.iter_mut().zip(softmax(model, classes)) {
                    *m += p;
                }
            }
            mean.iter_mut().for_each(|m| *m /= n);
            Score::from_probabilities(&mean, classes, labels)
        }
        Mode::Logits => {
            let mut mean = vec![0f64; labels.len() * classes];
            for model in logits {
                for (m, &x) in mean.iter_mut().zip(model.iter()) {
                    *m += x as f64;
                }
            }
            let mean: Vec<f32> = mean.iter().map(|m| (m / n) as f32).collect();
            Score::from_logits(&mean, classes, labels)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_and_logit_averages_can_disagree() {
        // A is sure of class 0; B is against class 0 but split between 1 and 2. Mean
        // probabilities: class 0 (0.494 against 0.253 each). Mean logits (-0.5, 0, 0): class 1.
        let a = [5.0f32, 0.0, 0.0];
        let b = [-6.0f32, 0.0, 0.0];
        assert_eq!(score(&[&a, &b], 3, &[0], Mode::Probs).correct, 1);
        assert_eq!(score(&[&a, &b], 3, &[0], Mode::Logits).correct, 0);
    }

    #[test]
    fn an_ensemble_of_one_is_the_model() {
        let logits = [0.3f32, 1.2, -0.4, 2.0, 0.1, 0.0];
        let alone = Score::from_logits(&logits, 3, &[1, 2]);
        for mode in [Mode::Probs, Mode::Logits] {
            let e = score(&[&logits], 3, &[1, 2], mode);
            assert_eq!(e.correct, alone.correct);
            assert!((e.loss - alone.loss).abs() < 1e-6, "{mode}");
        }
    }
}
