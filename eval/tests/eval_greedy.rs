//! The greedy-soup search as a unit, with a scripted scorer instead of models: ranking, strict
//! versus `--accept-ties`, an ingredient that hurts, one that helps, and degenerate inputs.

use std::collections::BTreeMap;

use soup_eval::greedy::{rank, search, Candidates, Trial};
use soup_eval::score::Score;

const TOTAL: u64 = 100;

fn score(correct: u64) -> Score {
    Score {
        correct,
        total: TOTAL,
        accuracy: correct as f64 / TOTAL as f64,
        loss: 0.0,
    }
}

/// Scores soups from a script: the correct count of each set of ingredients (sorted indices).
/// It keeps its own idea of the soup from `start` and `keep`, so a search that forgets to keep
/// a candidate, or keeps a rejected one, asks for sets the script doesn't have.
struct Script {
    soups: BTreeMap<Vec<usize>, u64>,
    soup: Vec<usize>,
    tried: Vec<Vec<usize>>,
    last: Option<usize>,
}

impl Script {
    fn new(soups: &[(&[usize], u64)]) -> Script {
        Script {
            soups: soups.iter().map(|(s, c)| (s.to_vec(), *c)).collect(),
            soup: Vec::new(),
            tried: Vec::new(),
            last: None,
        }
    }
}

impl Candidates for Script {
    fn start(&mut self, first: usize) -> soup_eval::Result<()> {
        assert!(self.soup.is_empty(), "started twice");
        self.soup = vec![first];
        Ok(())
    }

    fn try_with(&mut self, candidate: usize) -> soup_eval::Result<Trial> {
        let mut set = self.soup.clone();
        set.push(candidate);
        set.sort();
        let correct = *self
            .soups
            .get(&set)
            .unwrap_or_else(|| panic!("the search asked for soup {set:?}, which the script lacks"));
        self.tried.push(set);
        self.last = Some(candidate);
        Ok(Trial {
            val: score(correct),
            merge_seconds: 0.0,
            eval_seconds: 0.0,
        })
    }

    fn keep(&mut self, candidate: usize) -> soup_eval::Result<()> {
        assert_eq!(
            self.last,
            Some(candidate),
            "kept a candidate that wasn't just tried"
        );
        self.soup.push(candidate);
        Ok(())
    }
}

#[test]
fn ranking_is_by_accuracy_with_ties_in_command_line_order() {
    let val = [score(90), score(95), score(80), score(95), score(99)];
    assert_eq!(rank(&val), vec![4, 1, 3, 0, 2]);
}

#[test]
fn starts_from_the_best_and_tries_the_rest_in_rank_order() {
    // Ingredient 2 is best, then 0, then 1.
    let val = [score(90), score(85), score(93)];
    let mut script = Script::new(&[(&[0, 2], 92), (&[1, 2], 91)]);
    let result = search(&val, &mut script, false).unwrap();
    assert_eq!(result.ranking, vec![2, 0, 1]);
    assert_eq!(script.tried, vec![vec![0, 2], vec![1, 2]]);
    assert_eq!(result.chosen, vec![2]);
    assert_eq!(result.val, score(93));
}

#[test]
fn an_ingredient_that_helps_is_kept_and_one_that_hurts_is_rejected() {
    // Ranking 0 (95), 1 (94), 2 (93, but it hurts any soup), 3 (92).
    let val = [score(95), score(94), score(93), score(92)];
    let mut script = Script::new(&[
        (&[0, 1], 96),    // helps: kept
        (&[0, 1, 2], 40), // hurts: rejected
        (&[0, 1, 3], 97), // helps: kept, so the rejected 2 must not be in the soup
    ]);
    let result = search(&val, &mut script, false).unwrap();
    assert_eq!(result.chosen, vec![0, 1, 3]);
    assert_eq!(result.val, score(97));
    let kept: Vec<(usize, bool)> = result.steps.iter().map(|s| (s.candidate, s.kept)).collect();
    assert_eq!(kept, vec![(1, true), (2, false), (3, true)]);
    assert_eq!(result.steps[1].soup_size, 3);
    assert_eq!(result.steps[1].previous_accuracy, 0.96);
}

#[test]
fn a_tie_is_rejected_by_default_and_kept_with_accept_ties() {
    let val = [score(95), score(94), score(93)];
    let soups: &[(&[usize], u64)] = &[
        (&[0, 1], 95),    // ties the best alone
        (&[0, 2], 96),    // strict path: 1 was rejected
        (&[0, 1, 2], 94), // ties path: 1 was kept, 2 hurts
    ];
    let strict = search(&val, &mut Script::new(soups), false).unwrap();
    assert_eq!(strict.chosen, vec![0, 2]);
    assert_eq!(strict.val, score(96));

    let ties = search(&val, &mut Script::new(soups), true).unwrap();
    assert_eq!(ties.chosen, vec![0, 1]);
    assert_eq!(ties.val, score(95));
}

#[test]
fn the_soup_must_beat_itself_not_the_best_ingredient() {
    // After keeping 1 (soup at 97), a candidate at 96 beats the best ingredient (95) but not
    // the soup, so it is rejected.
    let val = [score(95), score(90), score(89)];
    let mut script = Script::new(&[(&[0, 1], 97), (&[0, 1, 2], 96)]);
    let result = search(&val, &mut script, false).unwrap();
    assert_eq!(result.chosen, vec![0, 1]);
    assert!(!result.steps[1].kept);
}

#[test]
fn a_single_ingredient_is_the_soup() {
    let val = [score(42)];
    let mut script = Script::new(&[]);
    let result = search(&val, &mut script, false).unwrap();
    assert_eq!(result.chosen, vec![0]);
    assert!(result.steps.is_empty());
    assert!(script.tried.is_empty());
    assert_eq!(result.val, score(42));
}

#[test]
fn no_ingredients_give_an_empty_search() {
    let mut script = Script::new(&[]);
    let result = search(&[], &mut script, false).unwrap();
    assert!(result.chosen.is_empty());
    assert!(result.steps.is_empty());
}
