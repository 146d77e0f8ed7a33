//! soup-eval on the real fixtures: the greedy soup's guarantees, the written file against
//! soup-merge, report against score, the ensemble against a manual average, and the broken
//! soup of the different-init pair.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use model_soup::format::Checkpoint;
use serde_json::Value;
use soup_eval::arch;
use soup_eval::dataset::Dataset;
use soup_eval::evaluator::Evaluator;
use soup_eval::score::{argmax, softmax};
use soup_eval::weights::Weights;

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join("fixtures")
        .join(name)
}

/// The eight f32 fine-tunes of base, the poor one included: the README's main job.
const INGREDIENTS: [&str; 8] = [
    "ft-lr2e-3",
    "ft-lr1e-3",
    "ft-lr5e-4",
    "ft-lr1e-3-shift",
    "ft-lr1e-3-smooth",
    "ft-lr2e-3-long",
    "ft-lr3e-3-shift-smooth",
    "ft-lr3e-1-poor",
];

fn model(name: &str) -> PathBuf {
    fixture(&format!("models/{name}.safetensors"))
}

fn soup_eval(command: &str, models: &[PathBuf], extra: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    cmd.arg(command)
        .args(["--arch", "digits-cnn", "--val"])
        .arg(fixture("digits/val.safetensors"))
        .arg("--test")
        .arg(fixture("digits/test.safetensors"))
        .args(models);
    for e in extra {
        cmd.arg(e.as_ref());
    }
    cmd.output().expect("run soup-eval")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "soup-eval failed: {}",
        common::stderr(out)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn ingredients() -> Vec<PathBuf> {
    INGREDIENTS.iter().map(|n| model(n)).collect()
}

fn correct_of(score: &Value) -> u64 {
    score["correct"].as_u64().expect("a score")
}

#[test]
fn greedy_soup_beats_or_matches_every_ingredient_on_val() {
    let report = json(&soup_eval("greedy", &ingredients(), &[&"--json"]));
    let greedy = &report["greedy"];
    let best = report["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| correct_of(&r["val"]))
        .max()
        .unwrap();
    assert!(correct_of(&greedy["row"]["val"]) >= best);
    assert!(correct_of(&greedy["search"]["val"]) >= best);
    // On these fixtures the search keeps more than one ingredient and rejects the poor one.
    let members: Vec<&str> = greedy["row"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(members.len() >= 2, "greedy soup is {members:?}");
    assert!(!members.contains(&"ft-lr3e-1-poor.safetensors"));
    let poor_step = greedy["search"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["candidate"] == 7)
        .expect("the poor ingredient was tried");
    assert_eq!(poor_step["kept"], false);
}

#[test]
fn written_greedy_soup_equals_soup_merge_of_its_ingredients() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("greedy.safetensors");
    let report = json(&soup_eval(
        "greedy",
        &ingredients(),
        &[&"--json", &"-q", &"-o", &ours],
    ));
    let members: Vec<PathBuf> = report["greedy"]["row"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| fixture(&format!("models/{}", m.as_str().unwrap())))
        .collect();
    assert!(members.len() >= 2);
    let theirs = dir.path().join("merged.safetensors");
    let out = common::soup_merge()
        .args(&members)
        .arg("-o")
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
        "soup-eval's greedy soup and soup-merge's differ"
    );
    // And the command soup-eval prints is that merge.
    let command = report["greedy"]["merge_command"].as_str().unwrap();
    assert!(command.starts_with("soup-merge "), "{command}");
    assert_eq!(command.matches(".safetensors").count(), members.len() + 1);
}

#[test]
fn report_greedy_accuracy_equals_score_of_the_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let soup = dir.path().join("greedy.safetensors");
    let plot = dir.path().join("plot.svg");
    let report = json(&soup_eval(
        "report",
        &ingredients(),
        &[&"--json", &"-o", &soup, &"--plot", &plot],
    ));
    let scored = json(&soup_eval(
        "score",
        std::slice::from_ref(&soup),
        &[&"--json"],
    ));
    let row = &scored["ingredients"][0];
    let greedy = &report["greedy"]["row"];
    assert_eq!(row["val"], greedy["val"], "val scores differ");
    assert_eq!(row["test"], greedy["test"], "test scores differ");

    // The uniform soup row equals score of soup-merge of all the ingredients.
    let uniform = dir.path().join("uniform.safetensors");
    let out = common::soup_merge()
        .args(ingredients())
        .arg("-o")
        .arg(&uniform)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let scored = json(&soup_eval("score", &[uniform], &[&"--json"]));
    assert_eq!(scored["ingredients"][0]["test"], report["uniform"]["test"]);

    // Each ingredient row equals its own score.
    let scored = json(&soup_eval("score", &ingredients(), &[&"--json"]));
    assert_eq!(scored["ingredients"], report["ingredients"]);

    let svg = std::fs::read_to_string(&plot).unwrap();
    // The tool's mark, an XML comment, then the SVG.
    assert!(
        svg.starts_with("<!-- written by model-soup -->\n<svg"),
        "{svg}"
    );
    for label in ["greedy soup", "uniform soup", "ensemble", "ft-lr2e-3-long"] {
        assert!(svg.contains(label), "the plot lacks '{label}'");
    }
}

/// Per-model probabilities, computed here through the library, averaged by hand.
fn manual_ensemble(models: &[PathBuf], logits_mode: bool) -> (u64, f64) {
    let arch = arch::digits_cnn::arch();
    let data = Dataset::open(&fixture("digits/test.safetensors"), &*arch).unwrap();
    let evaluator = Evaluator::new(arch.clone(), candle_core::Device::Cpu, 64);
    let mut sum = vec![0f64; data.len() * 10];
    for m in models {
        let weights =
            Weights::from_checkpoint(&Checkpoint::open(m).unwrap(), &candle_core::Device::Cpu)
                .unwrap();
        let logits = evaluator.logits(&weights, &data).unwrap();
        if logits_mode {
            for (s, x) in sum.iter_mut().zip(&logits) {
                *s += *x as f64;
            }
        } else {
            for (s, p) in sum.iter_mut().zip(softmax(&logits, 10)) {
                *s += p;
            }
        }
    }
    let n = models.len() as f64;
    let mut correct = 0;
    let mut loss = 0.0;
    for (row, &label) in sum.chunks(10).zip(&data.labels) {
        let mean: Vec<f64> = row.iter().map(|s| s / n).collect();
        if argmax(&mean) == label {
            correct += 1;
        }
        if !logits_mode {
            loss -= mean[label].ln();
        }
    }
    (correct, loss / data.len() as f64)
}

#[test]
fn ensemble_equals_a_manual_average_of_probabilities() {
    let models = ingredients();
    let report = json(&soup_eval("ensemble", &models, &[&"--json"]));
    let test = &report["ensemble"]["row"]["test"];
    let (correct, loss) = manual_ensemble(&models, false);
    assert_eq!(correct_of(test), correct);
    assert!((test["loss"].as_f64().unwrap() - loss).abs() < 1e-12);
    assert_eq!(report["ensemble"]["mode"], "probs");

    let report = json(&soup_eval(
        "ensemble",
        &models,
        &[&"--json", &"--mode", &"logits"],
    ));
    let (correct, _) = manual_ensemble(&models, true);
    assert_eq!(correct_of(&report["ensemble"]["row"]["test"]), correct);
    assert_eq!(report["ensemble"]["mode"], "logits");
}

#[test]
fn different_init_pair_gives_a_poor_uniform_soup_and_the_report_shows_it() {
    let pair = [model("scratch-a"), model("scratch-b")];
    let report = json(&soup_eval("report", &pair, &[&"--json"]));
    let alone: Vec<f64> = report["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test"]["accuracy"].as_f64().unwrap())
        .collect();
    let uniform = report["uniform"]["test"]["accuracy"].as_f64().unwrap();
    assert!(alone.iter().all(|a| *a > 0.95), "{alone:?}");
    assert!(uniform < 0.8, "the different-init soup scores {uniform}");
    // Greedy refuses to average them.
    assert_eq!(
        report["greedy"]["row"]["members"].as_array().unwrap().len(),
        1
    );

    // The table for people shows the broken soup's accuracy too.
    let out = soup_eval("report", &pair, &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let table = common::stdout(&out);
    let line = table
        .lines()
        .find(|l| l.starts_with("uniform soup (2)"))
        .expect("a uniform soup row");
    let shown = format!("{:.4}%", 100.0 * uniform);
    assert!(line.contains(&shown), "{line} lacks {shown}");
}

#[test]
fn uniform_soup_of_fine_tunes_without_the_poor_one_works() {
    let good: Vec<PathBuf> = INGREDIENTS[..7].iter().map(|n| model(n)).collect();
    let report = json(&soup_eval("uniform", &good, &[&"--json"]));
    assert!(report["uniform"]["test"]["accuracy"].as_f64().unwrap() > 0.95);
    // With the poor one, the uniform soup breaks: what greedy soup protects against.
    let report = json(&soup_eval("uniform", &ingredients(), &[&"--json"]));
    assert!(report["uniform"]["test"]["accuracy"].as_f64().unwrap() < 0.5);
}

#[test]
fn half_precision_ingredients_mix_with_f32_ones() {
    let models = [
        model("half/ft-lr2e-3.f16"),
        model("ft-lr2e-3-long"),
        model("half/ft-lr1e-3-shift.bf16"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let soup = dir.path().join("g.safetensors");
    let report = json(&soup_eval(
        "report",
        &models,
        &[&"--json", &"-o", &soup, &"--accept-ties"],
    ));
    assert_eq!(report["greedy"]["accept_ties"], true);
    // The first member is f16, so the soup is f16, like soup-merge's.
    let file = common::read(&soup);
    assert_eq!(file["fc.weight"].0, safetensors::Dtype::F16);
    assert_eq!(file["bn1.num_batches_tracked"].0, safetensors::Dtype::I64);
    let scored = json(&soup_eval("score", &[soup], &[&"--json"]));
    assert_eq!(
        scored["ingredients"][0]["test"],
        report["greedy"]["row"]["test"]
    );
}

#[test]
fn table_shows_counts_and_four_decimals() {
    let out = soup_eval("score", &[model("base")], &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let table = common::stdout(&out);
    let line = table
        .lines()
        .find(|l| l.starts_with("base.safetensors"))
        .unwrap();
    assert!(line.contains("/359"), "{line}");
    assert!(
        line.split_whitespace()
            .any(|w| w.ends_with('%') && w.split('.').nth(1).map(|d| d.len()) == Some(5)),
        "{line}"
    );
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    let mut files = Vec::new();
    for threads in ["1", "2"] {
        let soup = dir.path().join(format!("greedy-{threads}.safetensors"));
        let mut report = json(&soup_eval(
            "report",
            &ingredients(),
            &[&"--json", &"--threads", &threads, &"-o", &soup],
        ));
        // Timings and the output path are allowed to differ.
        for step in report["greedy"]["search"]["steps"].as_array_mut().unwrap() {
            step["trial"]["merge_seconds"] = Value::Null;
            step["trial"]["eval_seconds"] = Value::Null;
        }
        report["greedy"]["output"] = Value::Null;
        report["greedy"]["merge_command"] = Value::Null;
        reports.push(report);
        files.push(std::fs::read(&soup).unwrap());
    }
    assert_eq!(reports[0], reports[1]);
    assert!(
        files[0] == files[1],
        "the greedy soup's bytes depend on --threads"
    );
}

/// A report with its timings and output path blanked, for comparing runs.
#[cfg(not(feature = "cuda"))]
fn without_timings(mut report: Value) -> Value {
    for step in report["greedy"]["search"]["steps"].as_array_mut().unwrap() {
        step["trial"]["merge_seconds"] = Value::Null;
        step["trial"]["eval_seconds"] = Value::Null;
    }
    report
}

#[cfg(not(feature = "cuda"))]
#[test]
fn device_auto_is_the_default_and_the_cpu_in_a_cpu_build() {
    let models = [
        model("ft-lr2e-3"),
        model("ft-lr3e-1-poor"),
        model("ft-lr5e-4"),
    ];
    let default = without_timings(json(&soup_eval("report", &models, &[&"--json"])));
    let auto = without_timings(json(&soup_eval(
        "report",
        &models,
        &[&"--json", &"--device", &"auto"],
    )));
    let cpu = without_timings(json(&soup_eval(
        "report",
        &models,
        &[&"--json", &"--device", &"cpu"],
    )));
    assert_eq!(default["device"], "cpu");
    assert_eq!(default["eval_dtype"], "f32");
    assert_eq!(default, auto);
    assert_eq!(default, cpu);
}
