//! The end-to-end vision run: tiny torchvision ResNet fine-tunes (fixtures/vision-digits, made
//! by fixtures/make_digits_images.py) scored, souped and ensembled on the UCI digits as PNG
//! image folders (fixtures/digits-images), through the soup-eval binary; and image data given
//! wrong, as an attacker or a careless user would.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use model_soup::format::Checkpoint;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")).join(name)
}

fn models() -> Vec<PathBuf> {
    let mut m: Vec<PathBuf> = std::fs::read_dir(fixture("vision-digits"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("ft-"))
        .collect();
    m.sort();
    m
}

/// soup-eval with the README's image flags, `--json -q`.
fn soup_eval(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    let given = |flag: &str| args.iter().any(|a| a.as_ref() == flag);
    for (flag, value) in [("--resize", "32"), ("--crop", "32")] {
        if !given(flag) {
            cmd.args([flag, value]);
        }
    }
    cmd.args(["--json", "-q"]);
    cmd.output().expect("run soup-eval")
}

fn report(out: &Output) -> Value {
    assert!(out.status.success(), "{}", common::stderr(out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn correct(score: &Value) -> u64 {
    score["correct"].as_u64().unwrap()
}

/// The report without timings, which differ from run to run.
fn without_timings(mut report: Value) -> Value {
    if let Some(steps) = report["greedy"]["search"]["steps"].as_array_mut() {
        for step in steps {
            step["trial"]["merge_seconds"] = Value::Null;
            step["trial"]["eval_seconds"] = Value::Null;
        }
    }
    report
}

fn full_report(val: &Path, test: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"report", &"--arch", &"resnet", &"--val", &val, &"--test", &test,
    ];
    let models = models();
    for m in &models {
        args.push(m);
    }
    for e in extra {
        args.push(e);
    }
    without_timings(report(&soup_eval(&args)))
}

#[test]
fn scores_match_pytorchs_and_greedy_rejects_the_poor_fine_tune() {
    let r = full_report(
        &fixture("digits-images/val"),
        &fixture("digits-images/test"),
        &[],
    );
    assert_eq!(
        r["arch"],
        "resnet (basic blocks 1-1-1-1, widths 8-16-32-64, groups 1, 10 classes)"
    );
    // --device auto (the default) is the CPU in this build, and the dtype f32.
    if cfg!(not(feature = "cuda")) {
        assert_eq!(r["device"], "cpu");
    }
    assert_eq!(r["eval_dtype"], "f32");
    let rows = r["ingredients"].as_array().unwrap();
    assert_eq!(rows.len(), models().len());
    for (row, path) in rows.iter().zip(models()) {
        // PyTorch's own accuracy on the same PNGs, recorded by the generator.
        let meta = Checkpoint::open(&path).unwrap().metadata().clone();
        let torch = |k: &str| meta[k].parse::<u64>().unwrap();
        assert_eq!(
            correct(&row["val"]),
            torch("torch_val_correct"),
            "{path:?} val"
        );
        assert_eq!(
            correct(&row["test"]),
            torch("torch_test_correct"),
            "{path:?} test"
        );
        assert_eq!(row["val"]["total"], 359);
    }
    let best = rows.iter().map(|r| correct(&r["val"])).max().unwrap();
    let greedy = &r["greedy"]["row"];
    assert!(correct(&greedy["val"]) >= best);
    let members: Vec<&str> = greedy["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(members.len() >= 2, "{members:?}");
    assert!(!members.contains(&"ft-lr1e-1-poor.safetensors"));
    // The poor fine-tune ruins the uniform soup.
    assert!(correct(&r["uniform"]["val"]) < best / 2);
}

#[test]
fn lists_and_the_disk_cache_give_the_folders_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let folder = full_report(
        &fixture("digits-images/val"),
        &fixture("digits-images/test"),
        &[],
    );
    // The same images as a CSV list (class names) and a JSONL list (class indices).
    let mut csv = String::from("path,label\n");
    let mut jsonl = String::new();
    for split in ["val", "test"] {
        let root = fixture(&format!("digits-images/{split}"));
        for digit in 0..10 {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(digit.to_string()))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for f in files {
                if split == "val" {
                    csv.push_str(&format!("\"{}\",{digit}\n", f.display()));
                } else {
                    jsonl.push_str(&format!(
                        "{}\n",
                        serde_json::json!({"path": f, "label": digit})
                    ));
                }
            }
        }
    }
    let (val_csv, test_jsonl) = (dir.path().join("val.csv"), dir.path().join("test.jsonl"));
    std::fs::write(&val_csv, csv).unwrap();
    std::fs::write(&test_jsonl, jsonl).unwrap();
    let listed = full_report(&val_csv, &test_jsonl, &[]);
    for section in ["ingredients", "uniform", "greedy", "ensemble"] {
        assert_eq!(listed[section], folder[section], "{section}");
    }
    // Above --data-memory, the splits stream from a cache file (two batches each): same
    // numbers, and the cache file is gone afterwards. (Same batch size: candle's kernels block
    // a batch differently by its size, which moves losses in the ninth digit.)
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let cache_arg = cache.display().to_string();
    let streamed = full_report(
        &fixture("digits-images/val"),
        &fixture("digits-images/test"),
        &["--data-memory", "100KB", "--cache-dir", &cache_arg],
    );
    for section in ["ingredients", "uniform", "greedy", "ensemble"] {
        assert_eq!(streamed[section], folder[section], "{section}");
    }
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

/// Copies the val image folder into `dir/name` and returns it.
fn copy_val(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    for digit in 0..10 {
        let from = fixture(&format!("digits-images/val/{digit}"));
        std::fs::create_dir_all(to.join(digit.to_string())).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, to.join(digit.to_string()).join(p.file_name().unwrap())).unwrap();
        }
    }
    to
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.remove(0)
}

fn assert_error(out: &Output, needles: &[&str]) {
    let err = common::stderr(out);
    // 2 for a usage error (the command line), 1 for the rest.
    assert!(matches!(out.status.code(), Some(1 | 2)), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{err}"));
    for n in needles {
        assert!(line.contains(n), "'{line}' lacks '{n}'");
    }
}

fn score(val: &Path, extra: &[&str]) -> Output {
    let model = fixture("vision-digits/base.safetensors");
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"score", &"--val", &val, &model];
    for e in extra {
        args.push(e);
    }
    soup_eval(&args)
}

#[test]
fn a_corrupt_image_is_named_or_skipped_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let val = copy_val(dir.path(), "val");
    let bad = first_file(&val.join("3"));
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(val.join("7/notes.txt"), b"ignored: not an image extension").unwrap();
    let name = bad.file_name().unwrap().to_str().unwrap().to_string();
    assert_error(&score(&val, &[]), &[&name, "decode", "--skip-bad-images"]);
    let out = score(&val, &["--skip-bad-images"]);
    let r = report(&out);
    assert_eq!(r["ingredients"][0]["val"]["total"], 358);
    let warning = common::stderr(&out);
    assert!(
        warning.contains("skipped 1 image") && warning.contains(&name),
        "{warning}"
    );
}

#[test]
fn classes_must_match_the_head_and_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let val = copy_val(dir.path(), "val");
    let test = copy_val(dir.path(), "test");
    std::fs::rename(test.join("9"), test.join("nine")).unwrap();
    let model = fixture("vision-digits/base.safetensors");
    let out = soup_eval(&[&"score", &"--val", &val, &"--test", &test, &model]);
    assert_error(&out, &["test", "classes differ", "\"nine\"", "\"9\""]);

    std::fs::remove_dir_all(val.join("9")).unwrap();
    assert_error(&score(&val, &[]), &["has 9 classes", "head has 10"]);

    std::fs::create_dir(val.join("9")).unwrap();
    assert_error(&score(&val, &[]), &["class '9' has no images"]);
}

#[test]
fn bad_lists_and_flags_are_refused_with_the_line_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("val.csv");
    std::fs::write(&list, "path,label\nmissing.png,3\n").unwrap();
    assert_error(&score(&list, &[]), &["missing.png", "cannot open"]);
    std::fs::write(&list, "a.png,3,extra\n").unwrap();
    assert_error(&score(&list, &[]), &["val.csv", "line 1", "3 fields"]);
    std::fs::write(&list, "").unwrap();
    assert_error(&score(&list, &[]), &["val.csv", "no images"]);
    let png = first_file(&fixture("digits-images/val/0"));
    std::fs::write(&list, format!("{},12\n", png.display())).unwrap();
    assert_error(&score(&list, &[]), &["label 12", "out of range"]);

    let val = fixture("digits-images/val");
    for (flag, value) in [
        ("--crop", "0"),
        ("--resize", "big"),
        ("--resize", "0x32"),
        ("--resize", "32x"),
        ("--resize", "32x20000"),
        ("--crop", "16385"),
        ("--interpolation", "lanczos"),
        ("--mean", "1,2"),
        ("--std", "1,0,1"),
        ("--data-memory", "lots"),
    ] {
        let out = score(&val, &[flag, value]);
        assert_error(&out, &[flag]);
    }
    // A model for other inputs: both shapes are named.
    let cnn = fixture("models/base.safetensors");
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &val, &cnn]);
    assert_error(&out, &["[N, 3, 32, 32]", "[N, 1, 8, 8]"]);
}

#[test]
fn a_folder_reached_twice_through_links_is_refused_naming_the_link() {
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};
    // Two links to `.` once made the scan branch twice per level until ELOOP (2^40 visits);
    // one link back counted every image 41 times; a class linked into another counted its
    // images under both labels.
    // (The fan-out last: a build without the check never finishes it.)
    for (link, target) in [("3/loop", "../.."), ("4/threes", "../3"), ("3/a", ".")] {
        let dir = tempfile::tempdir().unwrap();
        let val = copy_val(dir.path(), "val");
        symlink(target, val.join(link)).unwrap();
        if link == "3/a" {
            symlink(".", val.join("3/b")).unwrap();
        }
        let started = Instant::now();
        let out = score(&val, &["--threads", "1"]);
        assert!(started.elapsed() < Duration::from_secs(30), "{link}");
        assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
        assert_error(&out, &[link, "counted twice", "remove the link"]);
    }
    // A link to a folder outside the split is followed, as ImageFolder does.
    let dir = tempfile::tempdir().unwrap();
    let val = copy_val(dir.path(), "val");
    let extra = dir.path().join("more-threes");
    std::fs::create_dir(&extra).unwrap();
    let three = first_file(&val.join("3"));
    std::fs::copy(&three, extra.join("x.png")).unwrap();
    symlink(&extra, val.join("3/more")).unwrap();
    let r = report(&score(&val, &[]));
    assert_eq!(r["ingredients"][0]["val"]["total"], 360);
}
