//! Results as data: the structs behind both the table for people and `--json`.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::ensemble::Mode;
use super::greedy::Search;
use super::score::Score;

/// What a row stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// One checkpoint as given.
    Ingredient,
    /// The uniform average of every ingredient.
    UniformSoup,
    /// The greedy soup.
    GreedySoup,
    /// Soft voting over every ingredient.
    Ensemble,
}

/// One model, soup or ensemble and how it scores.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// What the row stands for.
    pub kind: Kind,
    /// The ingredient's file name, or a short description of the soup or ensemble.
    pub name: String,
    /// For soups and ensembles, the ingredients (file names) they are made of, in merge order.
    pub members: Vec<String>,
    /// Score on the validation split, if one was given.
    pub val: Option<Score>,
    /// Score on the test split, if one was given.
    pub test: Option<Score>,
}

/// The greedy soup and how it was found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Greedy {
    /// The final soup, merged by the core exactly as written, scored on val and test.
    pub row: Row,
    /// Ranking, every candidate tried (with merge and forward timings) and the choice.
    pub search: Search,
    /// Whether a candidate that ties the soup's validation accuracy was kept (`--accept-ties`).
    pub accept_ties: bool,
    /// Where the soup was written (`-o`), if it was.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub output: Option<PathBuf>,
    /// The `soup-merge` command that writes the same file.
    pub merge_command: String,
}

/// The ensemble and how its members were combined.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ensemble {
    /// The ensemble's scores.
    pub row: Row,
    /// Mean of probabilities (`probs`) or of logits (`logits`).
    pub mode: Mode,
}

/// Everything one `soup-eval` command measured. Sections a command doesn't compute are null.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The `--arch` models were built as.
    pub arch: String,
    /// Where the models ran (`cpu` or `cuda:N`; `--device auto` resolved).
    pub device: String,
    /// The dtype the models computed in (`--eval-dtype`).
    pub eval_dtype: String,
    /// The validation split (`--val`), if given.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub val_data: Option<PathBuf>,
    /// The test split (`--test`), if given.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub test_data: Option<PathBuf>,
    /// One row per ingredient, in command-line order (empty for `uniform`).
    pub ingredients: Vec<Row>,
    /// The uniform soup, for `uniform` and `report`.
    pub uniform: Option<Row>,
    /// The greedy soup, for `greedy` and `report`.
    pub greedy: Option<Greedy>,
    /// The ensemble, for `ensemble` and `report`.
    pub ensemble: Option<Ensemble>,
    /// Warnings from the core's merges, such as integer buffers that differ between
    /// ingredients (the first ingredient's are kept).
    pub warnings: Vec<model_soup::soup::Warning>,
}

impl Report {
    /// Every row, in table order: ingredients, uniform soup, greedy soup, ensemble.
    pub fn rows(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self.ingredients.iter().collect();
        rows.extend(self.uniform.as_ref());
        rows.extend(self.greedy.as_ref().map(|g| &g.row));
        rows.extend(self.ensemble.as_ref().map(|e| &e.row));
        rows
    }

    /// The table for people: accuracy to four decimals in percent, correct/total counts and
    /// mean cross-entropy, then the greedy soup's members and steps.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>8}  {:>9}  {:>9}  {:>8}",
            "model", "val acc", "val", "val loss", "test acc", "test", "test loss"
        );
        for row in &rows {
            let _ = writeln!(
                out,
                "{:<width$}  {}  {}",
                row.name,
                cells(row.val.as_ref()),
                cells(row.test.as_ref())
            );
        }
        if let Some(g) = &self.greedy {
            let _ = writeln!(out, "\ngreedy soup: {}", g.row.members.join(" + "));
            let names: Vec<&str> = self.ingredients.iter().map(|r| r.name.as_str()).collect();
            let rule = if g.accept_ties { ">=" } else { ">" };
            for step in &g.search.steps {
                let name = names.get(step.candidate).copied().unwrap_or("?");
                let _ = writeln!(
                    out,
                    "  {} {:<width$}  soup of {}: val {:.4}% {} {:.4}%? {}  (merge {:.2} ms, forward {:.2} ms)",
                    if step.kept { "+" } else { "-" },
                    name,
                    step.soup_size,
                    100.0 * step.trial.val.accuracy,
                    rule,
                    100.0 * step.previous_accuracy,
                    if step.kept { "kept" } else { "rejected" },
                    1e3 * step.trial.merge_seconds,
                    1e3 * step.trial.eval_seconds,
                );
            }
            match &g.output {
                Some(p) => {
                    let _ = writeln!(
                        out,
                        "  written to {} (same as: {})",
                        p.display(),
                        g.merge_command
                    );
                }
                None => {
                    let _ = writeln!(out, "  write it with -o PATH, or: {}", g.merge_command);
                }
            }
        }
        out
    }
}

fn cells(score: Option<&Score>) -> String {
    match score {
        Some(s) => format!(
            "{:>8.4}%  {:>9}  {:>8.4}",
            s.percent(),
            format!("{}/{}", s.correct, s.total),
            s.loss
        ),
        None => format!("{:>9}  {:>9}  {:>8}", "-", "-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(correct: u64) -> Score {
        Score {
            correct,
            total: 359,
            accuracy: correct as f64 / 359.0,
            loss: 0.125,
        }
    }

    fn report() -> Report {
        let row = |kind, name: &str, val, test| Row {
            kind,
            name: name.into(),
            members: vec![],
            val,
            test,
        };
        Report {
            arch: "digits-cnn".into(),
            device: "cpu".into(),
            eval_dtype: "f32".into(),
            val_data: None,
            test_data: None,
            ingredients: vec![
                row(
                    Kind::Ingredient,
                    "a.safetensors",
                    Some(s(352)),
                    Some(s(353)),
                ),
                row(Kind::Ingredient, "b.safetensors", Some(s(350)), None),
            ],
            uniform: Some(row(
                Kind::UniformSoup,
                "uniform soup (2)",
                Some(s(26)),
                Some(s(42)),
            )),
            greedy: None,
            ensemble: Some(Ensemble {
                row: row(
                    Kind::Ensemble,
                    "ensemble (2, probs)",
                    Some(s(351)),
                    Some(s(353)),
                ),
                mode: Mode::Probs,
            }),
            warnings: vec![],
        }
    }

    #[test]
    fn table_has_a_row_per_model_with_counts_and_four_decimals() {
        let table = report().table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("model"));
        assert!(
            lines[1].starts_with("a.safetensors")
                && lines[1].contains("98.0501%")
                && lines[1].contains("352/359")
        );
        assert!(lines[2].contains("b.safetensors") && lines[2].trim_end().ends_with('-'));
        assert!(lines[3].starts_with("uniform soup (2)") && lines[3].contains("7.2423%"));
        assert!(lines[4].starts_with("ensemble (2, probs)"));
    }

    #[test]
    fn json_has_every_section() {
        let v = serde_json::to_value(report()).unwrap();
        assert_eq!(v["ingredients"][0]["val"]["correct"], 352);
        assert_eq!(v["uniform"]["kind"], "uniform-soup");
        assert!(v["greedy"].is_null());
        assert_eq!(v["ensemble"]["mode"], "probs");
    }

    #[test]
    fn plot_is_an_svg_with_every_marked_row() {
        let svg = crate::plot::svg(&report(), "title").unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("ensemble")
                && svg.contains("a.safetensors".trim_end_matches(".safetensors"))
        );
        // The broken uniform soup is off the focused scale, and labelled with its real numbers.
        assert!(svg.contains("off scale: val 7.2%, test 11.7%"), "{svg}");
    }
}
