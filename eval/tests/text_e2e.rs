//! The README's language-model run, end to end through the `soup-eval` binary: tiny Llama
//! fine-tunes of one base (fixtures/text/e2e, trained by fixtures/text/make_text_fixtures.py on
//! Debian's license texts, one fine-tune deliberately poor), scored on held-out text. Every
//! ingredient's, the uniform soup's, the greedy soup's and the ensemble's validation and test
//! loss must equal PyTorch's (e2e/expected.json) within 1e-4 relative, the greedy search must
//! rank and keep the same fine-tunes, and the soup written with -o must score what the report
//! says.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn e2e() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/text/e2e")).to_path_buf()
}

fn close(ours: &Value, theirs: &Value, what: &str) {
    let (a, b) = (ours.as_f64().unwrap(), theirs.as_f64().unwrap());
    assert!(
        (a - b).abs() <= TOLERANCE * b.abs(),
        "{what}: soup-eval {a} vs PyTorch {b}"
    );
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn greedy_uniform_and_ensemble_match_pytorch_on_held_out_text() {
    let dir = e2e();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).expect(
            "fixtures/text/e2e/expected.json (made by fixtures/text/make_text_fixtures.py)",
        ))
        .unwrap();
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap().to_string_lossy().starts_with("ft-"))
        .collect();
    models.sort();
    assert!(models.len() >= 4, "{models:?}");
    let out = tempfile::tempdir().unwrap();
    let soup = out.path().join("greedy");
    let seq_len = expected["seq_len"].to_string();
    let stride = expected["stride"].to_string();
    let (val, test) = (dir.join("val.txt"), dir.join("test.txt"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"report",
        &"--val",
        &val,
        &"--test",
        &test,
        &"--seq-len",
        &seq_len,
        &"--stride",
        &stride,
        &"--json",
        &"-o",
        &soup,
    ];
    for m in &models {
        args.push(m);
    }
    let report = run(&args);
    let name = |v: &Value| v.as_str().unwrap().to_string();
    for row in report["ingredients"].as_array().unwrap() {
        let n = name(&row["name"]);
        for split in ["val", "test"] {
            close(
                &row[split]["loss"],
                &expected["models"][&n][split]["loss"],
                &format!("{n} {split}"),
            );
            close(
                &row[split]["perplexity"],
                &expected["models"][&n][split]["perplexity"],
                &format!("{n} {split} perplexity"),
            );
        }
    }
    for (ours, theirs) in [("uniform", "uniform_soup"), ("ensemble", "ensemble")] {
        let row = if ours == "uniform" {
            &report[ours]
        } else {
            &report[ours]["row"]
        };
        for split in ["val", "test"] {
            close(
                &row[split]["loss"],
                &expected[theirs][split]["loss"],
                &format!("{ours} {split}"),
            );
        }
    }
    let greedy = &report["greedy"];
    assert_eq!(greedy["goal"], "minimize");
    assert_eq!(greedy["metric"], "loss");
    let names: Vec<String> = report["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| name(&r["name"]))
        .collect();
    let ranking: Vec<String> = greedy["search"]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| names[i.as_u64().unwrap() as usize].clone())
        .collect();
    let expected_ranking: Vec<String> = expected["greedy_soup"]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(name)
        .collect();
    assert_eq!(ranking, expected_ranking);
    let members: Vec<String> = greedy["row"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(name)
        .collect();
    let expected_members: Vec<String> = expected["greedy_soup"]["ingredients"]
        .as_array()
        .unwrap()
        .iter()
        .map(name)
        .collect();
    assert_eq!(members, expected_members);
    for (step, theirs) in greedy["search"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["greedy_soup"]["steps"].as_array().unwrap())
    {
        close(
            &step["trial"]["val"]["loss"],
            &theirs["val_loss"],
            "greedy step",
        );
        assert_eq!(step["kept"], theirs["kept"]);
    }
    for split in ["val", "test"] {
        close(
            &greedy["row"][split]["loss"],
            &expected["greedy_soup"][split]["loss"],
            &format!("greedy {split}"),
        );
    }
    // The written soup is a model directory that scores what the report says.
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(soup.join(f).is_file(), "{f} missing from the greedy soup");
    }
    let rescored = run(&[
        &"score",
        &"--val",
        &val,
        &"--seq-len",
        &seq_len,
        &"--stride",
        &stride,
        &"--json",
        &soup,
    ]);
    assert_eq!(rescored["ingredients"][0]["val"], greedy["row"]["val"]);
}
