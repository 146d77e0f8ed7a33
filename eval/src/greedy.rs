//! Greedy soup search (Wortsman et al. 2022, "Model soups", Algorithm 1), apart from how
//! candidates are built and scored, so that the logic is tested with a scripted scorer.
//!
//! 1. Rank the ingredients by validation score, best first; ties keep command-line order.
//! 2. Start the soup with the best.
//! 3. For each next ingredient, score the uniform average of the soup plus it on validation.
//! 4. Keep it only if that is strictly better than the soup so far (`>=` with `accept_ties`).
//!
//! With speculation the next K candidates are scored at once, as if none were kept; when one
//! is kept, the trials after it were of soups that no longer exist and are thrown away, so the
//! steps and the soup are exactly those of the one-at-a-time search.

use serde::Serialize;

use super::error::Result;
use super::score::{Measure, Score};

/// What [`search`] needs from the world: a way to try candidates and to keep one.
pub trait Candidates<M: Measure = Score> {
    /// Starts the soup with ingredient `first`.
    fn start(&mut self, first: usize) -> Result<()>;
    /// Scores, on validation, the uniform soup of the chosen ingredients plus `candidate`.
    fn try_with(&mut self, candidate: usize) -> Result<Trial<M>>;
    /// Scores the soup of the chosen ingredients plus each of `candidates`, separately (none
    /// joins the soup), each with its own outcome: a failed trial fails the search only if
    /// the one-at-a-time search would have run it too, that is when no earlier candidate of
    /// the batch is kept. The outer error is for what stops everything (Ctrl-C). One at a
    /// time unless the implementation can do better.
    fn try_each(&mut self, candidates: &[usize]) -> Result<Vec<Result<Trial<M>>>> {
        Ok(candidates.iter().map(|&c| self.try_with(c)).collect())
    }
    /// Adds `candidate`, tried since the last change to the soup, to the soup.
    fn keep(&mut self, candidate: usize) -> Result<()>;
}

/// Which way is better.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Goal {
    /// Higher is better (accuracy, most scorers).
    #[default]
    Maximize,
    /// Lower is better (a loss, a perplexity; `--minimize`).
    Minimize,
}

/// When a candidate joins the soup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Which way is better.
    pub goal: Goal,
    /// Keep a candidate that ties the soup (`>=` rather than `>`).
    pub accept_ties: bool,
}

impl Rule {
    /// Whether `new` beats `old` under this rule.
    pub fn accepts(&self, new: f64, old: f64) -> bool {
        // A NaN score (a diverged model's loss) is the worst there is under either goal: never
        // accepted, and beaten by any number.
        if new.is_nan() {
            return false;
        }
        if old.is_nan() {
            return true;
        }
        let (new, old) = match self.goal {
            Goal::Maximize => (new, old),
            Goal::Minimize => (old, new),
        };
        if self.accept_ties {
            new >= old
        } else {
            new > old
        }
    }
}

/// The outcome of trying one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Trial<M = Score> {
    /// The candidate soup's validation score.
    pub val: M,
    /// Seconds spent building the candidate's weights (the running sum and the mean, or
    /// writing the candidate for an external scorer).
    pub merge_seconds: f64,
    /// Seconds spent evaluating it (model build and forward passes, or the scorer's run).
    pub eval_seconds: f64,
}

/// One step of the search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step<M = Score> {
    /// The ingredient tried (index in command-line order).
    pub candidate: usize,
    /// Size of the candidate soup (chosen so far plus this one).
    pub soup_size: usize,
    /// How the candidate soup did.
    pub trial: Trial<M>,
    /// The value the candidate had to beat: the soup's validation accuracy before this step
    /// for the built-in models, the scorer's number with `--scorer`.
    pub previous: f64,
    /// Whether the candidate joined the soup.
    pub kept: bool,
}

/// The result of a greedy search.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Search<M = Score> {
    /// Ingredient indices, best validation score first.
    pub ranking: Vec<usize>,
    /// The ingredients of the greedy soup, in the order they joined.
    pub chosen: Vec<usize>,
    /// Every candidate tried, in order.
    pub steps: Vec<Step<M>>,
    /// Validation score of the final soup as the search measured it (`None` for no ingredients).
    pub val: Option<M>,
    /// Speculative trials thrown away because an earlier candidate joined the soup.
    pub discarded: usize,
}

/// Ranks ingredients by validation score, best first under `goal`; equal scores (-0 and +0
/// among them) keep their order, and NaN scores come last whatever their sign bit (`total_cmp` alone put the NaN of
/// `inf - inf`, whose sign bit is set, before every loss).
pub fn rank<M: Measure>(val: &[M], goal: Goal) -> Vec<usize> {
    let mut order: Vec<usize> = (0..val.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (val[a].value(), val[b].value());
        if x.is_nan() || y.is_nan() {
            return x.is_nan().cmp(&y.is_nan());
        }
        // `partial_cmp`, not `total_cmp`: -0 and +0 are equal scores, as `Rule::accepts`
        // has them, so they keep command-line order (NaN is handled above).
        let order = match goal {
            Goal::Maximize => y.partial_cmp(&x),
            Goal::Minimize => x.partial_cmp(&y),
        };
        order.unwrap_or(std::cmp::Ordering::Equal)
    });
    order
}

/// Runs the greedy search over ingredients whose validation scores are `val`, trying up to
/// `speculate` candidates at once (1: one at a time). An empty `val` gives an empty soup.
pub fn search<M: Measure>(
    val: &[M],
    candidates: &mut impl Candidates<M>,
    rule: Rule,
    speculate: usize,
) -> Result<Search<M>> {
    let ranking = rank(val, rule.goal);
    let Some(&best) = ranking.first() else {
        return Ok(Search {
            ranking,
            chosen: Vec::new(),
            steps: Vec::new(),
            val: None,
            discarded: 0,
        });
    };
    candidates.start(best)?;
    let mut chosen = vec![best];
    let mut current = val[best];
    let mut steps = Vec::new();
    let mut discarded = 0;
    let mut next = 1;
    while next < ranking.len() {
        // Saturating: `--speculate 18446744073709551615` wrapped to a batch that ended before
        // it started, and the search panicked once every ingredient was scored.
        let batch = &ranking[next..ranking.len().min(next.saturating_add(speculate.max(1)))];
        let trials = if batch.len() == 1 {
            vec![candidates.try_with(batch[0])]
        } else {
            candidates.try_each(batch)?
        };
        for (j, (&candidate, trial)) in batch.iter().zip(trials).enumerate() {
            // Reached only while no earlier candidate of the batch was kept: the sequential
            // search runs this trial too, so its failure is the search's. A failure after a
            // kept one is thrown away with its batch, as its score would have been.
            let trial = trial?;
            next += 1;
            let kept = rule.accepts(trial.val.value(), current.value());
            steps.push(Step {
                candidate,
                soup_size: chosen.len() + 1,
                trial,
                previous: current.value(),
                kept,
            });
            if kept {
                candidates.keep(candidate)?;
                chosen.push(candidate);
                current = trial.val;
                // The rest of the batch was scored against the soup before this one.
                discarded += batch.len() - j - 1;
                break;
            }
        }
    }
    Ok(Search {
        ranking,
        chosen,
        steps,
        val: Some(current),
        discarded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_zero_and_zero_tie_and_keep_command_line_order() {
        assert_eq!(rank(&[-0.0, 0.0, -1.0], Goal::Maximize), [0, 1, 2]);
        assert_eq!(rank(&[0.0, -0.0, -1.0], Goal::Maximize), [0, 1, 2]);
        assert_eq!(rank(&[0.0, -0.0, 1.0], Goal::Minimize), [0, 1, 2]);
        assert_eq!(rank(&[-0.0, 0.0, 1.0], Goal::Minimize), [0, 1, 2]);
    }

    /// Scores from a table by member list; the soups listed in `failing` fail.
    struct Scripted {
        chosen: Vec<usize>,
        score: fn(&[usize]) -> f64,
        failing: Vec<Vec<usize>>,
        tried: Vec<Vec<usize>>,
    }

    impl Candidates<f64> for Scripted {
        fn start(&mut self, first: usize) -> Result<()> {
            self.chosen = vec![first];
            Ok(())
        }
        fn try_with(&mut self, candidate: usize) -> Result<Trial<f64>> {
            let mut members = self.chosen.clone();
            members.push(candidate);
            self.tried.push(members.clone());
            if self.failing.contains(&members) {
                return Err(crate::Error::Plot(format!("{members:?} failed")));
            }
            Ok(Trial {
                val: (self.score)(&members),
                merge_seconds: 0.0,
                eval_seconds: 0.0,
            })
        }
        fn keep(&mut self, candidate: usize) -> Result<()> {
            self.chosen.push(candidate);
            Ok(())
        }
    }

    #[test]
    fn a_failed_trial_after_a_kept_one_is_thrown_away_and_one_before_fails_the_search() {
        // Ranking 0, 1, 2; {0,1} is kept; {0,2} fails, and only speculation tries it.
        let score = |m: &[usize]| match m {
            [0, 1] => 0.95,
            _ => 0.1,
        };
        let val = [0.9, 0.5, 0.4];
        let rule = Rule::default();
        let mut outcomes = Vec::new();
        for speculate in [1, 2, 3] {
            let mut c = Scripted {
                chosen: Vec::new(),
                score,
                failing: vec![vec![0, 2]],
                tried: Vec::new(),
            };
            let s = search(&val, &mut c, rule, speculate).unwrap();
            assert_eq!(s.chosen, [0, 1]);
            outcomes.push((s.chosen, s.steps, s.val));
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
        // A failure the sequential search meets fails every search.
        for speculate in [1, 2, 3] {
            let mut c = Scripted {
                chosen: Vec::new(),
                score,
                failing: vec![vec![0, 1]],
                tried: Vec::new(),
            };
            let e = search(&val, &mut c, rule, speculate).unwrap_err();
            assert!(e.to_string().contains("[0, 1] failed"), "{e}");
        }
    }

    #[test]
    fn any_speculation_up_to_usize_max_is_the_one_at_a_time_search() {
        let score = |m: &[usize]| match m {
            [0, 1] => 0.95,
            [0, 1, 3] => 0.97,
            _ => 0.1,
        };
        let val = [0.9, 0.5, 0.4, 0.3];
        let mut outcomes = Vec::new();
        for speculate in [1, 2, usize::MAX - 1, usize::MAX] {
            let mut c = Scripted {
                chosen: Vec::new(),
                score,
                failing: Vec::new(),
                tried: Vec::new(),
            };
            let s = search(&val, &mut c, Rule::default(), speculate).unwrap();
            assert_eq!(s.chosen, [0, 1, 3], "--speculate {speculate}");
            outcomes.push((s.chosen, s.steps, s.val));
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn nan_scores_rank_last_and_never_win_under_either_goal() {
        let negative_nan = f64::from_bits(f64::NAN.to_bits() | 1 << 63);
        let val = [2.5, negative_nan, 0.5, f64::NAN, 1.5];
        assert_eq!(rank(&val, Goal::Minimize), [2, 4, 0, 1, 3]);
        assert_eq!(rank(&val, Goal::Maximize), [0, 4, 2, 1, 3]);
        for goal in [Goal::Minimize, Goal::Maximize] {
            for accept_ties in [false, true] {
                let rule = Rule { goal, accept_ties };
                for nan in [f64::NAN, negative_nan] {
                    assert!(!rule.accepts(nan, 1.0));
                    assert!(!rule.accepts(nan, nan));
                    assert!(rule.accepts(1.0, nan));
                }
            }
        }
    }
}
