//! Greedy soup search (Wortsman et al. 2022, "Model soups", Algorithm 1), apart from how
//! candidates are built and scored, so that the logic is tested with a scripted scorer.
//!
//! 1. Rank the ingredients by validation accuracy, best first; ties keep command-line order.
//! 2. Start the soup with the best.
//! 3. For each next ingredient, score the uniform average of the soup plus it on validation.
//! 4. Keep it only if that is strictly better than the soup so far (`>=` with `accept_ties`).

use serde::Serialize;

use super::error::Result;
use super::score::Score;

/// What [`search`] needs from the world: a way to try candidates and to keep one.
pub trait Candidates {
    /// Starts the soup with ingredient `first`.
    fn start(&mut self, first: usize) -> Result<()>;
    /// Scores, on validation, the uniform soup of the chosen ingredients plus `candidate`.
    fn try_with(&mut self, candidate: usize) -> Result<Trial>;
    /// Adds `candidate`, just tried, to the soup.
    fn keep(&mut self, candidate: usize) -> Result<()>;
}

/// The outcome of trying one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Trial {
    /// The candidate soup's validation score.
    pub val: Score,
    /// Seconds spent building the candidate's weights (the running sum and the mean).
    pub merge_seconds: f64,
    /// Seconds spent evaluating it (model build and forward passes).
    pub eval_seconds: f64,
}

/// One step of the search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// The ingredient tried (index in command-line order).
    pub candidate: usize,
    /// Size of the candidate soup (chosen so far plus this one).
    pub soup_size: usize,
    /// How the candidate soup did.
    pub trial: Trial,
    /// Validation accuracy of the soup before this step, which the candidate had to beat.
    pub previous_accuracy: f64,
    /// Whether the candidate joined the soup.
    pub kept: bool,
}

/// The result of a greedy search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Search {
    /// Ingredient indices, best validation accuracy first.
    pub ranking: Vec<usize>,
    /// The ingredients of the greedy soup, in the order they joined.
    pub chosen: Vec<usize>,
    /// Every candidate tried, in order.
    pub steps: Vec<Step>,
    /// Validation score of the final soup as the search measured it.
    pub val: Score,
}

/// Ranks ingredients by validation accuracy, best first; equal accuracies keep their order.
pub fn rank(val: &[Score]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..val.len()).collect();
    order.sort_by(|&a, &b| val[b].accuracy.total_cmp(&val[a].accuracy));
    order
}

/// Runs the greedy search over ingredients whose validation scores are `val`.
/// An empty `val` gives an empty soup.
pub fn search(
    val: &[Score],
    candidates: &mut impl Candidates,
    accept_ties: bool,
) -> Result<Search> {
    let ranking = rank(val);
    let Some(&best) = ranking.first() else {
        return Ok(Search {
            ranking,
            chosen: Vec::new(),
            steps: Vec::new(),
            val: Score::from_logits(&[], 1, &[]),
        });
    };
    candidates.start(best)?;
    let mut chosen = vec![best];
    let mut current = val[best];
    let mut steps = Vec::new();
    for &candidate in &ranking[1..] {
        let trial = candidates.try_with(candidate)?;
        let better = if accept_ties {
            trial.val.accuracy >= current.accuracy
        } else {
            trial.val.accuracy > current.accuracy
        };
        steps.push(Step {
            candidate,
            soup_size: chosen.len() + 1,
            trial,
            previous_accuracy: current.accuracy,
            kept: better,
        });
        if better {
            candidates.keep(candidate)?;
            chosen.push(candidate);
            current = trial.val;
        }
    }
    Ok(Search {
        ranking,
        chosen,
        steps,
        val: current,
    })
}
