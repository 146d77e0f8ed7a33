//! What the `--scorer` tests share: a world of ingredients whose greedy soup is known in advance
//! (designed around a hidden target), the known-answer scorer, and running soup-eval.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "../../../tests/common/mod.rs"]
pub mod common;

use safetensors::Dtype as StDtype;

/// The hidden target: three float parameters, in two tensors.
pub const TARGET: [f64; 3] = [0.5, -0.25, 1.0];

/// Each ingredient's offset from the target, by letter. Their scores (minus the squared
/// distance) rank them A, B, C, D, E; the greedy soup keeps A, B and D: {A,B} beats A, {A,B,C}
/// is worse than {A,B}, {A,B,D} beats {A,B}, {A,B,D,E} is worse. Every margin is over 0.05.
pub const OFFSETS: [(&str, [f64; 3]); 5] = [
    ("A", [1.75, -1.25, -0.5]),
    ("B", [1.5, 0.25, -2.0]),
    ("C", [1.5, -1.5, -1.75]),
    ("D", [0.25, 2.0, 2.0]),
    ("E", [2.0, 2.0, -2.0]),
];

/// The command-line order of the ingredients (letters), so that rank order is not it.
pub const ORDER: [&str; 5] = ["D", "A", "E", "C", "B"];

/// The expected ranking, as command-line indices: A, B, C, D, E.
pub const RANKING: [usize; 5] = [1, 4, 3, 0, 2];
/// The expected greedy soup, in join order: A, B, D.
pub const CHOSEN: [usize; 3] = [1, 4, 0];
/// The expected steps: (candidate, kept).
pub const STEPS: [(usize, bool); 4] = [(4, true), (3, false), (0, true), (2, false)];

/// The offset of the ingredient at command-line index `i`.
pub fn offset(i: usize) -> [f64; 3] {
    OFFSETS
        .iter()
        .find(|(l, _)| *l == ORDER[i])
        .expect("letter")
        .1
}

/// Minus the squared distance of the uniform soup of `members` to the target, in f64 from the
/// design (the soup's f32 rounding is within the tests' tolerance).
pub fn expected_score(members: &[usize]) -> f64 {
    let k = members.len() as f64;
    -(0..3)
        .map(|d| {
            let mean: f64 = members.iter().map(|&m| offset(m)[d]).sum::<f64>() / k;
            mean * mean
        })
        .sum::<f64>()
}

/// A designed world on disk.
pub struct World {
    pub dir: tempfile::TempDir,
    /// Ingredients in command-line order.
    pub ingredients: Vec<PathBuf>,
    pub target: PathBuf,
}

fn tensors(values: [f64; 3]) -> Vec<common::Spec> {
    let f32s = |v: &[f64]| v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    vec![
        common::spec("a.weight", StDtype::F32, &[2], f32s(&values[..2])),
        common::spec("b.bias", StDtype::F32, &[1], f32s(&values[2..])),
        // Not averaged: copied, identical everywhere.
        common::spec("steps", StDtype::I64, &[1], 7i64.to_le_bytes().to_vec()),
    ]
}

fn at_target(offset: [f64; 3]) -> [f64; 3] {
    [
        TARGET[0] + offset[0],
        TARGET[1] + offset[1],
        TARGET[2] + offset[2],
    ]
}

impl World {
    /// The ingredients as .safetensors files, in a folder whose name has a space and a quote.
    pub fn files() -> World {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("it's models");
        std::fs::create_dir(&models).unwrap();
        let ingredients = (0..5)
            .map(|i| {
                let p = models.join(format!("ft-{}.safetensors", ORDER[i].to_lowercase()));
                common::write(&p, &tensors(at_target(offset(i))));
                p
            })
            .collect();
        let target = dir.path().join("target.safetensors");
        common::write(&target, &tensors(TARGET));
        World {
            dir,
            ingredients,
            target,
        }
    }

    /// The ingredients as Hugging Face model directories with a config.
    pub fn dirs() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ingredients = (0..5)
            .map(|i| {
                let p = dir.path().join(format!("ft-{}", ORDER[i].to_lowercase()));
                std::fs::create_dir(&p).unwrap();
                common::write(&p.join("model.safetensors"), &tensors(at_target(offset(i))));
                std::fs::write(
                    p.join("config.json"),
                    format!("{{\"model_type\": \"toy\", \"name\": \"{}\"}}", ORDER[i]),
                )
                .unwrap();
                p
            })
            .collect();
        let target = dir.path().join("target.safetensors");
        common::write(&target, &tensors(TARGET));
        World {
            dir,
            ingredients,
            target,
        }
    }

    /// The known-answer scorer's template for `python`, with extra flags.
    pub fn scorer(&self, python: &Path, flags: &str) -> String {
        format!(
            "{} {} {{checkpoint}} {} {flags}",
            quote(python),
            quote(&common::repo_root().join("eval/tests/scorers/distance.py")),
            quote(&self.target)
        )
    }

    /// A fresh folder inside the world.
    pub fn folder(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// `p` single-quoted for a --scorer template.
pub fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// soup-eval with `args`, then the ingredients.
pub fn soup_eval(args: &[&str], ingredients: &[PathBuf]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    cmd.args(args).args(ingredients);
    cmd
}

/// Runs it and parses `--json` output, failing with stderr on a non-zero exit.
pub fn run_json(cmd: &mut Command) -> (serde_json::Value, Output) {
    let out = cmd.output().expect("run soup-eval");
    assert!(
        out.status.success(),
        "soup-eval failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let v = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    (v, out)
}

/// The parts of a greedy search that must not depend on how it was run: ranking, chosen
/// soup, and each step's candidate, decision and scores.
pub fn search_outcome(report: &serde_json::Value) -> serde_json::Value {
    let search = &report["greedy"]["search"];
    let steps: Vec<serde_json::Value> = search["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            serde_json::json!([
                s["candidate"],
                s["kept"],
                s["trial"]["val"],
                s["previous"],
                s["soup_size"]
            ])
        })
        .collect();
    serde_json::json!({
        "ranking": search["ranking"],
        "chosen": search["chosen"],
        "val": search["val"],
        "steps": steps,
        "ingredients": report["ingredients"].as_array().unwrap().iter().map(|r| r["val"].clone()).collect::<Vec<_>>(),
    })
}

/// Files and folders left in `dir`.
pub fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A `--shell` scorer whose score is looked up by `{name}` in `table` (`default` for the
/// rest), after checking that it was given an existing checkpoint. A value may be any shell
/// command (`exit 3`) instead of a number.
pub fn table_scorer(table: &[(&str, &str)], default: &str) -> String {
    let cases: String = table
        .iter()
        .map(|(name, score)| {
            let action = if score.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                format!("echo {score}")
            } else {
                score.to_string()
            };
            format!("{name}) {action};; ")
        })
        .collect();
    format!("test -e {{checkpoint}} || exit 9; case {{name}} in {cases}*) echo {default};; esac")
}

/// Three ingredient files, digits of `World::files`, in command-line order.
pub fn three(world: &World) -> Vec<PathBuf> {
    world.ingredients[..3].to_vec()
}
