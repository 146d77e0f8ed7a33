//! The greedy-soup search as a unit, with a scripted scorer instead of models: ranking, strict
//! versus `--accept-ties`, an ingredient that hurts, one that helps, and degenerate inputs.

use std::collections::BTreeMap;

use soup_eval::greedy::{rank, search, Candidates, Goal, Rule, Trial};
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

fn rule(accept_ties: bool) -> Rule {
    Rule {
        goal: Goal::Maximize,
        accept_ties,
    }
}

/// Scores soups from a script: the correct count of each set of ingredients (sorted indices),
/// or, for sets it lacks, `fallback` of the set if there is one. It keeps its own idea of the
/// soup from `start` and `keep`, so a search that forgets to keep a candidate, or keeps a
/// rejected one, asks for sets the script doesn't have.
struct Script {
    soups: BTreeMap<Vec<usize>, u64>,
    fallback: Option<fn(&[usize]) -> u64>,
    soup: Vec<usize>,
    tried: Vec<Vec<usize>>,
    /// Candidates tried since the soup last changed: the ones `keep` may take.
    since_keep: Vec<usize>,
}

impl Script {
    fn new(soups: &[(&[usize], u64)]) -> Script {
        Script {
            soups: soups.iter().map(|(s, c)| (s.to_vec(), *c)).collect(),
            fallback: None,
            soup: Vec::new(),
            tried: Vec::new(),
            since_keep: Vec::new(),
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
        let correct = match (self.soups.get(&set), self.fallback) {
            (Some(&c), _) => c,
            (None, Some(f)) => f(&set),
            (None, None) => panic!("the search asked for soup {set:?}, which the script lacks"),
        };
        self.tried.push(set);
        self.since_keep.push(candidate);
        Ok(Trial {
            val: score(correct),
            merge_seconds: 0.0,
            eval_seconds: 0.0,
        })
    }

    fn keep(&mut self, candidate: usize) -> soup_eval::Result<()> {
        assert!(
            self.since_keep.contains(&candidate),
            "kept a candidate that wasn't tried against this soup"
        );
        self.since_keep.clear();
        self.soup.push(candidate);
        Ok(())
    }
}

#[test]
fn ranking_is_by_accuracy_with_ties_in_command_line_order() {
    let val = [score(90), score(95), score(80), score(95), score(99)];
    assert_eq!(rank(&val, Goal::Maximize), vec![4, 1, 3, 0, 2]);
    assert_eq!(rank(&val, Goal::Minimize), vec![2, 0, 1, 3, 4]);
}

#[test]
fn starts_from_the_best_and_tries_the_rest_in_rank_order() {
    // Ingredient 2 is best, then 0, then 1.
    let val = [score(90), score(85), score(93)];
    let mut script = Script::new(&[(&[0, 2], 92), (&[1, 2], 91)]);
    let result = search(&val, &mut script, rule(false), 1).unwrap();
    assert_eq!(result.ranking, vec![2, 0, 1]);
    assert_eq!(script.tried, vec![vec![0, 2], vec![1, 2]]);
    assert_eq!(result.chosen, vec![2]);
    assert_eq!(result.val, Some(score(93)));
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
    let result = search(&val, &mut script, rule(false), 1).unwrap();
    assert_eq!(result.chosen, vec![0, 1, 3]);
    assert_eq!(result.val, Some(score(97)));
    let kept: Vec<(usize, bool)> = result.steps.iter().map(|s| (s.candidate, s.kept)).collect();
    assert_eq!(kept, vec![(1, true), (2, false), (3, true)]);
    assert_eq!(result.steps[1].soup_size, 3);
    assert_eq!(result.steps[1].previous, 0.96);
}

#[test]
fn a_tie_is_rejected_by_default_and_kept_with_accept_ties() {
    let val = [score(95), score(94), score(93)];
    let soups: &[(&[usize], u64)] = &[
        (&[0, 1], 95),    // ties the best alone
        (&[0, 2], 96),    // strict path: 1 was rejected
        (&[0, 1, 2], 94), // ties path: 1 was kept, 2 hurts
    ];
    let strict = search(&val, &mut Script::new(soups), rule(false), 1).unwrap();
    assert_eq!(strict.chosen, vec![0, 2]);
    assert_eq!(strict.val, Some(score(96)));

    let ties = search(&val, &mut Script::new(soups), rule(true), 1).unwrap();
    assert_eq!(ties.chosen, vec![0, 1]);
    assert_eq!(ties.val, Some(score(95)));
}

#[test]
fn the_soup_must_beat_itself_not_the_best_ingredient() {
    // After keeping 1 (soup at 97), a candidate at 96 beats the best ingredient (95) but not
    // the soup, so it is rejected.
    let val = [score(95), score(90), score(89)];
    let mut script = Script::new(&[(&[0, 1], 97), (&[0, 1, 2], 96)]);
    let result = search(&val, &mut script, rule(false), 1).unwrap();
    assert_eq!(result.chosen, vec![0, 1]);
    assert!(!result.steps[1].kept);
}

#[test]
fn a_single_ingredient_is_the_soup() {
    let val = [score(42)];
    let mut script = Script::new(&[]);
    let result = search(&val, &mut script, rule(false), 1).unwrap();
    assert_eq!(result.chosen, vec![0]);
    assert!(result.steps.is_empty());
    assert!(script.tried.is_empty());
    assert_eq!(result.val, Some(score(42)));
}

#[test]
fn no_ingredients_give_an_empty_search() {
    let mut script = Script::new(&[]);
    let result = search(&[], &mut script, rule(false), 1).unwrap();
    assert!(result.chosen.is_empty());
    assert!(result.steps.is_empty());
}

/// A score for any set, pseudo-random but fixed: a hash of the sorted members.
fn hashed(set: &[usize]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &m in set {
        h = (h ^ m as u64).wrapping_mul(0x100_0000_01b3);
    }
    50 + (h >> 33) % 50
}

#[test]
fn speculation_gives_exactly_the_sequential_search() {
    // Many random worlds: every speculation depth must try the same soups in the same order
    // (speculative extras aside), keep the same ones and end with the same soup.
    for seed in 0..200u64 {
        let n = 2 + (seed % 9) as usize;
        let val: Vec<Score> = (0..n)
            .map(|i| score(hashed(&[i, seed as usize + 1000])))
            .collect();
        let world = |k: usize| {
            let mut script = Script::new(&[]);
            script.fallback = Some(|set: &[usize]| hashed(set));
            let result = search(&val, &mut script, rule(seed % 3 == 0), k).unwrap();
            (result, script)
        };
        let (sequential, seq_script) = world(1);
        assert_eq!(sequential.discarded, 0);
        for k in 2..=6 {
            let (speculated, script) = world(k);
            assert_eq!(speculated.chosen, sequential.chosen, "seed {seed}, k {k}");
            assert_eq!(speculated.steps, sequential.steps, "seed {seed}, k {k}");
            assert_eq!(speculated.val, sequential.val, "seed {seed}, k {k}");
            assert_eq!(script.soup, seq_script.soup, "seed {seed}, k {k}");
            // Every soup tried one at a time was tried speculating, plus the discarded ones.
            assert_eq!(
                script.tried.len(),
                seq_script.tried.len() + speculated.discarded,
                "seed {seed}, k {k}"
            );
            for set in &seq_script.tried {
                assert!(script.tried.contains(set));
            }
        }
    }
}

#[test]
fn speculation_discards_what_an_acceptance_invalidates() {
    // Ranking 0, 1, 2, 3; with k = 3, {0,1}, {0,2}, {0,3} are scored together; 1 is kept, so
    // {0,2} and {0,3} are thrown away and {0,1,2}, {0,1,3} are scored next.
    let val = [score(95), score(94), score(93), score(92)];
    let mut script = Script::new(&[
        (&[0, 1], 96),
        (&[0, 2], 99),
        (&[0, 3], 99),
        (&[0, 1, 2], 90),
        (&[0, 1, 3], 97),
    ]);
    let result = search(&val, &mut script, rule(false), 3).unwrap();
    assert_eq!(result.chosen, vec![0, 1, 3]);
    assert_eq!(result.discarded, 2);
    assert_eq!(
        script.tried,
        vec![
            vec![0, 1],
            vec![0, 2],
            vec![0, 3],
            vec![0, 1, 2],
            vec![0, 1, 3]
        ]
    );
}

#[test]
fn minimize_ranks_lowest_first_and_keeps_what_lowers_the_score() {
    // As losses: 0 is best (lowest), then 2, then 1.
    let val = [score(10), score(30), score(20)];
    let mut script = Script::new(&[(&[0, 2], 5), (&[0, 1, 2], 7)]);
    let rule = Rule {
        goal: Goal::Minimize,
        accept_ties: false,
    };
    let result = search(&val, &mut script, rule, 1).unwrap();
    assert_eq!(result.ranking, vec![0, 2, 1]);
    assert_eq!(result.chosen, vec![0, 2]);
    let kept: Vec<bool> = result.steps.iter().map(|s| s.kept).collect();
    assert_eq!(kept, vec![true, false]);
    assert_eq!(result.val, Some(score(5)));
}
