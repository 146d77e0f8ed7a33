//! Results as data: the structs behind both the table for people and `--json`.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::ensemble::Mode;
use super::greedy::{Goal, Search};
use super::score::{Measure, Metric, Metrics};

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
pub struct Row<M = Metrics> {
    /// What the row stands for.
    pub kind: Kind,
    /// The ingredient's file name, or a short description of the soup or ensemble.
    pub name: String,
    /// For soups and ensembles, the ingredients (file names) they are made of, in merge order.
    pub members: Vec<String>,
    /// Score on the validation split, if one was given (the scorer's number with `--scorer`).
    pub val: Option<M>,
    /// Score on the test split, if one was given.
    pub test: Option<M>,
}

/// The greedy soup and how it was found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Greedy<M = Metrics> {
    /// The final soup, merged by the core exactly as written, scored on val and test.
    pub row: Row<M>,
    /// Ranking, every candidate tried (with merge and forward timings) and the choice.
    pub search: Search<M>,
    /// Which way is better (`--minimize` for an external scorer whose number is a loss).
    pub goal: Goal,
    /// The metric the search ranked and chose by (`--metric`); absent for a `--scorer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
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
pub struct Ensemble<M = Metrics> {
    /// The ensemble's scores.
    pub row: Row<M>,
    /// Mean of probabilities (`probs`) or of logits (`logits`).
    pub mode: Mode,
}

/// How an external scorer ran: the command, the parallelism, and what it saved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScorerRun {
    /// The `--scorer` template as given.
    pub command: String,
    /// Scorers run at once at most (`--jobs`).
    pub jobs: usize,
    /// Greedy candidates scored at once (`--speculate`).
    pub speculate: usize,
    /// Scorer runs that produced a score in this invocation (retries not counted).
    pub scored: usize,
    /// Candidates whose score came from the `--resume` log instead of a run.
    pub resumed: usize,
    /// Failed runs that were retried (`--retries`).
    pub retried: usize,
    /// Seconds of scorer time in this invocation: the sum of every run's wall time.
    pub scorer_seconds: f64,
    /// Scorer seconds of the runs that a one-at-a-time search would also have made: every
    /// candidate except speculative trials thrown away and scores taken from the log.
    pub sequential_seconds: f64,
    /// Wall seconds from the first candidate to the last score.
    pub wall_seconds: f64,
    /// `sequential_seconds / wall_seconds`: what `--jobs` and `--speculate` bought over
    /// scoring one candidate at a time (about 1 when they were not used).
    pub speedup: f64,
    /// The JSON Lines log of every scored candidate (`--log` or `--resume`), if any.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub log: Option<PathBuf>,
    /// The folder `--keep-candidates` left the candidates in (`--work-dir`, or the new
    /// temporary folder when none was given); null when no candidate was kept.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub kept_in: Option<PathBuf>,
}

/// Everything one `soup-eval` command measured. Sections a command doesn't compute are null.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report<M = Metrics> {
    /// The `--arch` models were built as, or `scorer` for an external `--scorer`.
    pub arch: String,
    /// Where the models ran (`cpu` or `cuda:N`; `--device auto` resolved); null with
    /// `--scorer`, whose command runs the models.
    pub device: Option<String>,
    /// The dtype the models computed in (`--eval-dtype`); null with `--scorer`.
    pub eval_dtype: Option<String>,
    /// The validation split (`--val`), if given.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub val_data: Option<PathBuf>,
    /// The test split (`--test`), if given.
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub test_data: Option<PathBuf>,
    /// The first model directory's `preprocessor_config.json`, when images were transformed
    /// as it says (the flags given replacing its steps).
    #[serde(serialize_with = "model_soup::json_path::option")]
    pub preprocessor: Option<PathBuf>,
    /// One row per ingredient, in command-line order (empty for `uniform`).
    pub ingredients: Vec<Row<M>>,
    /// The uniform soup, for `uniform` and `report`.
    pub uniform: Option<Row<M>>,
    /// The greedy soup, for `greedy` and `report`.
    pub greedy: Option<Greedy<M>>,
    /// The ensemble, for `ensemble` and `report` (never with `--scorer`: an ensemble needs
    /// each model's outputs, which a scorer doesn't give).
    pub ensemble: Option<Ensemble<M>>,
    /// How an external `--scorer` ran, when one did.
    pub scorer: Option<ScorerRun>,
    /// Warnings from the core's merges, such as integer buffers that differ between
    /// ingredients (the first ingredient's are kept).
    pub warnings: Vec<model_soup::soup::Warning>,
}

/// Reads one split's score from a row.
type SplitOf<M> = fn(&Row<M>) -> Option<&M>;

impl<M: Measure> Report<M> {
    /// Every row, in table order: ingredients, uniform soup, greedy soup, ensemble.
    pub fn rows(&self) -> Vec<&Row<M>> {
        let mut rows: Vec<&Row<M>> = self.ingredients.iter().collect();
        rows.extend(self.uniform.as_ref());
        rows.extend(self.greedy.as_ref().map(|g| &g.row));
        rows.extend(self.ensemble.as_ref().map(|e| &e.row));
        rows
    }

    /// The table for people: each split's columns (accuracy to four decimals in percent,
    /// correct/total counts and mean cross-entropy for the built-in models; the number for a
    /// scorer), then the greedy soup's members and steps. A split no row has is left out.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(5).max(5);
        // The columns are those of the first score: every score of one report has one task.
        let Some(first) = rows.iter().find_map(|r| r.val.as_ref().or(r.test.as_ref())) else {
            return self.empty_table(&rows, width);
        };
        let columns = first.columns();
        let splits: Vec<(&str, SplitOf<M>)> = [
            ("val", (|r: &Row<M>| r.val.as_ref()) as SplitOf<M>),
            ("test", |r: &Row<M>| r.test.as_ref()),
        ]
        .into_iter()
        .filter(|(_, get)| rows.iter().any(|r| get(r).is_some()))
        .collect();
        let mut out = String::new();
        let mut header = format!("{:<width$}", "model");
        for (split, _) in &splits {
            for (c, w) in columns {
                let title = if c.is_empty() {
                    split.to_string()
                } else {
                    format!("{split} {c}")
                };
                let _ = write!(header, "  {title:>w$}");
            }
        }
        let _ = writeln!(out, "{}", header.trim_end());
        for row in &rows {
            let mut line = format!("{:<width$}", row.name);
            for (_, get) in &splits {
                let cells = get(row).map_or_else(|| vec!["-".to_string(); columns.len()], M::cells);
                for ((_, w), cell) in columns.iter().zip(cells) {
                    let _ = write!(line, "  {cell:>w$}");
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if let Some(g) = &self.greedy {
            let _ = writeln!(out, "\ngreedy soup: {}", g.row.members.join(" + "));
            if let Some(metric) = g.metric {
                let _ = writeln!(
                    out,
                    "  by val {} ({})",
                    metric.name(),
                    match metric.goal() {
                        Goal::Maximize => "higher is better",
                        Goal::Minimize => "lower is better",
                    }
                );
            }
            let names: Vec<&str> = self.ingredients.iter().map(|r| r.name.as_str()).collect();
            let rule = match (g.goal, g.accept_ties) {
                (Goal::Maximize, false) => ">",
                (Goal::Maximize, true) => ">=",
                (Goal::Minimize, false) => "<",
                (Goal::Minimize, true) => "<=",
            };
            let [build, score] = M::TIMINGS;
            for step in &g.search.steps {
                let name = names.get(step.candidate).copied().unwrap_or("?");
                let _ = writeln!(
                    out,
                    "  {} {:<width$}  soup of {}: val {} {} {}? {}  ({build} {:.2} ms, {score} {:.2} ms)",
                    if step.kept { "+" } else { "-" },
                    name,
                    step.soup_size,
                    first.show(step.trial.val.value()),
                    rule,
                    first.show(step.previous),
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
        if let Some(run) = &self.scorer {
            let _ = writeln!(
                out,
                "\nscorer: {} runs ({} from the log, {} retried), {:.1} s of scorer time ({:.1} s one at a time) in {:.1} s: {:.2}x with --jobs {} --speculate {}",
                run.scored,
                run.resumed,
                run.retried,
                run.scorer_seconds,
                run.sequential_seconds,
                run.wall_seconds,
                run.speedup,
                run.jobs,
                run.speculate,
            );
            if let Some(dir) = &run.kept_in {
                let _ = writeln!(out, "  candidates kept in {}", dir.display());
            }
            if let Some(g) = &self.greedy {
                if g.search.discarded > 0 {
                    let _ = writeln!(
                        out,
                        "  {} speculative trials thrown away after an acceptance",
                        g.search.discarded
                    );
                }
            }
        }
        out
    }

    /// The table when no row has a score: the names alone.
    fn empty_table(&self, rows: &[&Row<M>], width: usize) -> String {
        let mut out = format!("{:<width$}\n", "model").trim_end().to_string() + "\n";
        for row in rows {
            out.push_str(&row.name);
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::score::Score;

    fn s(correct: u64) -> Metrics {
        Metrics::classification(
            Score {
                correct,
                total: 359,
                accuracy: correct as f64 / 359.0,
                loss: 0.125,
            },
            Metric::Accuracy,
        )
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
            device: Some("cpu".into()),
            eval_dtype: Some("f32".into()),
            preprocessor: None,
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
            scorer: None,
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
        let svg = svg
            .strip_prefix(model_soup::format::PLOT_MARK)
            .expect("the plot starts with the tool's mark");
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("ensemble")
                && svg.contains("a.safetensors".trim_end_matches(".safetensors"))
        );
        // The broken uniform soup is off the focused scale, and labelled with its real numbers.
        assert!(svg.contains("off scale: val 7.2%, test 11.7%"), "{svg}");
    }
}
