//! Every bad input of soup-merge: one `error:` line naming the file (and tensor) and the fix,
//! exit status 1, and nothing at the destination.

mod common;

use common::*;
use safetensors::Dtype as D;
use std::path::{Path, PathBuf};

/// A raw file: 8-byte length, then `header` verbatim, then `data`.
fn raw_file(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn good(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut rng = Rng::new(name.len() as u64);
    write(
        &p,
        &[
            spec("layer.weight", D::F32, &[2, 2], floats(&mut rng, D::F32, 4)),
            spec("layer.bias", D::F32, &[2], floats(&mut rng, D::F32, 2)),
        ],
    );
    p
}

/// Runs soup-merge on `inputs` + `extra` args, expects failure and returns stderr.
fn fails(dir: &Path, inputs: &[&Path], extra: &[&str]) -> String {
    let out = dir.join("soup.safetensors");
    let o = soup_merge()
        .args(inputs)
        .arg("-o")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap();
    let err = stderr(&o);
    // 2 for a usage error (the command line), 1 for the rest.
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "expected exit 1 or 2, stderr: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "no output after a failure");
    let temps: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("soup-tmp"))
        .collect();
    assert!(temps.is_empty(), "temporary left behind");
    err
}

#[test]
fn corrupt_headers_are_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ok = good(dir.path(), "ok.safetensors");
    let cases: &[(&str, &str, &[u8], &[&str])] = &[
        (
            "dup.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
            &["duplicate key 'a'"],
        ),
        (
            "json.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]"#,
            &[0; 4],
            &["JSON"],
        ),
        (
            "dtype.safetensors",
            r#"{"a":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
            &["'a'", "unknown dtype 'F17'"],
        ),
        (
            "span.safetensors",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
            &[0; 4],
            &["'a'", "needs 8 bytes"],
        ),
        (
            "overlap.safetensors",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
            &["overlaps"],
        ),
        (
            "hole.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &[0; 12],
            &["'b'", "gap"],
        ),
        (
            "tail.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 9],
            &["5 bytes after the last tensor"],
        ),
        (
            "short.safetensors",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            &[0; 8],
            &["truncated"],
        ),
        (
            "overflow.safetensors",
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
            &[0; 4],
            &["'a'", "overflows"],
        ),
        (
            "meta.safetensors",
            r#"{"__metadata__":{"format":1},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            &[0; 4],
            &["not a string"],
        ),
        (
            "nul.safetensors",
            "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
            &[0; 4],
            &["control characters"],
        ),
    ];
    for (name, header, data, needles) in cases {
        let p = dir.path().join(name);
        raw_file(&p, header, data);
        let err = fails(dir.path(), &[&ok, &p], &[]);
        assert!(
            err.contains(name),
            "{name}: message must name the file: {err}"
        );
        for n in *needles {
            assert!(err.contains(n), "{name}: expected '{n}' in: {err}");
        }
    }
}

#[test]
fn short_and_lying_files_are_refused_before_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let ok = good(dir.path(), "ok.safetensors");
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    assert!(fails(dir.path(), &[&ok, &empty], &[]).contains("too short"));
    let huge = dir.path().join("huge.safetensors");
    std::fs::write(&huge, (1u64 << 63).to_le_bytes()).unwrap();
    assert!(fails(dir.path(), &[&ok, &huge], &[]).contains("limit"));
    let lying = dir.path().join("lying.safetensors");
    let mut bytes = 1000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&lying, bytes).unwrap();
    assert!(fails(dir.path(), &[&ok, &lying], &[]).contains("truncated"));
    let missing = dir.path().join("missing.safetensors");
    assert!(fails(dir.path(), &[&ok, &missing], &[]).contains("missing.safetensors"));
}

#[test]
fn inputs_that_are_not_fine_tunes_of_one_model_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let mut rng = Rng::new(1);
    let extra = dir.path().join("extra.safetensors");
    let mut specs = vec![spec(
        "layer.weight",
        D::F32,
        &[2, 2],
        floats(&mut rng, D::F32, 4),
    )];
    for i in 0..7 {
        specs.push(spec(
            &format!("head{i}.weight"),
            D::F32,
            &[1],
            floats(&mut rng, D::F32, 1),
        ));
    }
    write(&extra, &specs);
    let err = fails(dir.path(), &[&a, &extra], &[]);
    assert!(
        err.contains("a.safetensors lacks 7 tensor(s)") && err.contains("and 2 more"),
        "{err}"
    );
    assert!(
        err.contains("extra.safetensors lacks 1 tensor(s): 'layer.bias'"),
        "{err}"
    );
    assert!(err.contains("--on-missing"), "{err}");

    let wide = dir.path().join("wide.safetensors");
    write(
        &wide,
        &[
            spec("layer.weight", D::F32, &[2, 3], floats(&mut rng, D::F32, 6)),
            spec("layer.bias", D::F32, &[2], floats(&mut rng, D::F32, 2)),
        ],
    );
    let err = fails(dir.path(), &[&a, &wide], &[]);
    assert!(
        err.contains("'layer.weight' is [2, 2] in")
            && err.contains("[2, 3] in")
            && err.contains("wide.safetensors"),
        "{err}"
    );

    let ints = dir.path().join("ints.safetensors");
    write(
        &ints,
        &[
            spec("layer.weight", D::I32, &[2, 2], vec![0; 16]),
            spec("layer.bias", D::F32, &[2], floats(&mut rng, D::F32, 2)),
        ],
    );
    let err = fails(dir.path(), &[&a, &ints], &[]);
    assert!(
        err.contains("'layer.weight'") && err.contains("I32"),
        "{err}"
    );
}

#[test]
fn bad_weights_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let b = good(dir.path(), "b.safetensors");
    assert!(fails(dir.path(), &[&a, &b], &["-w", "0.5,0.3,0.2"])
        .contains("--weights has 3 values for 2 inputs"));
    assert!(fails(dir.path(), &[&a, &b], &["-w", "0.5,NaN"]).contains("not finite"));
    assert!(fails(dir.path(), &[&a, &b], &["-w", "inf,1"]).contains("not finite"));
    assert!(fails(dir.path(), &[&a, &b], &["-w", "1,-1", "--normalize"]).contains("--normalize"));
}

#[test]
fn outputs_are_never_inputs_and_never_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let b = good(dir.path(), "b.safetensors");
    let before = std::fs::read(&a).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let o = soup_merge()
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(&a)
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("is the input"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&a).unwrap(), before, "an input was modified");
    }
    // The same file under another name (a symlink) is still the input.
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    let o = soup_merge()
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&link)
        .arg("--force")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), before);

    let out = dir.path().join("soup.safetensors");
    std::fs::write(&out, b"precious").unwrap();
    let o = soup_merge()
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    // Not the tool's, so --force is not suggested: it would be refused too.
    assert!(
        stderr(&o).contains("exists and is not an output of this tool")
            && !stderr(&o).contains("pass --force"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    let merge = |force: bool| {
        let mut cmd = soup_merge();
        cmd.arg(&a).arg(&b).arg("-o").arg(&out);
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    // Nor with --force: the tool did not write it.
    let o = merge(true);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not an output of this tool"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // An earlier soup is replaced with --force.
    std::fs::remove_file(&out).unwrap();
    assert!(merge(false).status.success());
    let o = merge(true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&out).len(), 2);
}

#[test]
fn directories_and_fifos_are_not_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let fifo = dir.path().join("fifo.safetensors");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let err = fails(dir.path(), &[&a, &fifo], &[]);
    assert!(
        err.contains("fifo.safetensors") && err.contains("not a regular file"),
        "{err}"
    );
    let sub = dir.path().join("empty_dir");
    std::fs::create_dir(&sub).unwrap();
    let err = fails(dir.path(), &[&a, &sub], &[]);
    assert!(err.contains("empty_dir"), "{err}");
}

#[test]
fn json_mode_reports_errors_as_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let o = soup_merge()
        .arg(&a)
        .arg(dir.path().join("nope.safetensors"))
        .arg("-o")
        .arg(dir.path().join("o.safetensors"))
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["error"].as_str().unwrap().contains("nope.safetensors"));
}

#[test]
fn json_mode_reports_a_bad_command_line_as_json_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let out = dir.path().join("o.safetensors");
    for (extra, needle) in [
        (&["-w", "0.5,"][..], "--weights"),
        (&["--shard-size", "0"][..], "--shard-size"),
        (&["--seed", "-1"][..], "--seed"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        // Found wrong after parsing: the same status and kind as clap's.
        (&["--method", "nope"][..], "nope"),
        (&["--density", "0.5"][..], "--density"),
        (&["--param", "nope=1"][..], "nope"),
        (&["-w", "1,1", "--param", "weight=2"][..], "weight"),
    ] {
        let o = soup_merge()
            .arg(&a)
            .arg(&a)
            .arg("-o")
            .arg(&out)
            .arg("--json")
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o))
            .unwrap_or_else(|e| panic!("{extra:?}: {e}: {}", stdout(&o)));
        assert_eq!(v["kind"], "usage", "{extra:?}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{extra:?}: {v}"
        );
        assert!(!out.exists());
    }
    // `--json=true` is refused (the flag takes no value), but it asked for JSON, so the
    // refusal comes as JSON too.
    let o = soup_merge()
        .arg(&a)
        .arg("-o")
        .arg(&out)
        .arg("--json=true")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["kind"], "usage");
    assert!(v["error"].as_str().unwrap().contains("--json"), "{v}");
    // After `--`, `--json` is an input's name, not a request for JSON.
    let o = soup_merge()
        .args(["-w", "0.5,", "--", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    // Without --json, stdout stays empty; --help is not a failure.
    let o = soup_merge().args(["-w", "0.5,"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty());
    let o = soup_merge().args(["--help", "--json"]).output().unwrap();
    assert!(o.status.success());
    assert!(serde_json::from_str::<serde_json::Value>(&stdout(&o)).is_err());
}

#[test]
fn negative_method_values_are_named_with_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let b = good(dir.path(), "b.safetensors");
    for (flag, method, range) in [
        ("--density", "ties", "(0, 1]"),
        ("--t", "slerp", "[0, 1]"),
        ("--epsilon", "della", "epsilon"),
        ("--gamma", "breadcrumbs", "gamma"),
    ] {
        let err = fails(
            dir.path(),
            &[&b],
            &[
                "--method",
                method,
                "--base",
                a.to_str().unwrap(),
                flag,
                "-0.5",
            ],
        );
        assert!(err.contains(flag) && err.contains(range), "{flag}: {err}");
    }
}

#[test]
fn a_summary_that_cannot_be_printed_says_the_soup_is_written() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: no /dev/full here");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let b = good(dir.path(), "b.safetensors");
    let out = dir.path().join("o.safetensors");
    let o = soup_merge()
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&out)
        .args(["--json", "-q"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("is written and complete"), "{err}");
    assert!(
        out.is_file(),
        "the finished soup stays where the error says it is"
    );
}

#[test]
fn a_parameter_given_twice_is_refused_not_silently_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let base = good(dir.path(), "base.safetensors");
    let a = good(dir.path(), "a.safetensors");
    for (flag, value, param) in [
        ("--lambda", "2", "lambda=3"),
        ("--density", "0.5", "density=0.7"),
    ] {
        let err = fails(
            dir.path(),
            &[&a],
            &[
                "--method",
                "ties",
                "--base",
                base.to_str().unwrap(),
                flag,
                value,
                "--param",
                param,
            ],
        );
        assert!(err.contains(flag) && err.contains("give it once"), "{err}");
    }
}

/// A `--base` that doesn't exist is a missing input, as a missing positional model is: the
/// same kind and exit status for pipelines that branch on them.
#[test]
fn a_missing_base_is_an_input_error_like_a_missing_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let ft = |n: &str| repo_root().join(format!("fixtures/models/{n}.safetensors"));
    let nope = dir.path().join("nope.safetensors");
    let s = |p: &Path| p.to_string_lossy().into_owned();
    for args in [
        vec![
            s(&ft("ft-lr2e-3")),
            s(&nope),
            "-o".into(),
            s(&out),
            "--json".into(),
        ],
        vec![
            "--method".into(),
            "task_arithmetic".into(),
            "--base".into(),
            s(&nope),
            s(&ft("ft-lr2e-3")),
            s(&ft("ft-lr5e-4")),
            "-o".into(),
            s(&out),
            "--json".into(),
        ],
    ] {
        let o = soup_merge().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kind"], "io", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("nope.safetensors"),
            "{v}"
        );
        assert!(!out.exists());
    }
}

/// Every input stays open until the output is published: a merge of more files than the
/// process may open says so, with the fix, as a resources error.
#[test]
fn too_many_inputs_for_the_open_file_limit_name_the_limit_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.safetensors");
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    let mut command = std::process::Command::new("sh");
    command.args(["-c", "ulimit -n 12 && exec \"$@\"", "sh"]);
    command.arg(soup_merge_path());
    for _ in 0..20 {
        command.arg(&ft);
    }
    let o = command.arg("-o").arg(&out).arg("--json").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "resources", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("limit on open files") && e.contains("ulimit -n"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Every output shard stays open until the merge ends too: a `--shard-size` that makes more
/// shards than the process may open says so, with the fix, as a resources error, where it
/// was "cannot write .../model-00061-of-00100.safetensors: Too many open files (os error 24)".
#[test]
fn too_many_output_shards_for_the_open_file_limit_name_the_limit_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soup");
    let mut rng = Rng::new(7);
    let tensors: Vec<Spec> = (0..100)
        .map(|i| spec(&format!("t.{i}"), D::F32, &[2], floats(&mut rng, D::F32, 2)))
        .collect();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write(&a, &tensors);
    write(&b, &tensors);
    let o = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 40 && exec \"$@\"", "sh"])
        .arg(soup_merge_path())
        .args([&a, &b])
        .arg("-o")
        .arg(&out)
        .args(["--shard-size", "1", "--json"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "resources", "{v}");
    let e = v["error"].as_str().unwrap();
    assert!(
        e.contains("limit on open files") && e.contains("ulimit -n") && e.contains("--shard-size"),
        "{e}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 2, "only the inputs remain: {left:?}");
}

/// A safetensors file of one 1-D BF16 tensor `big` of `n` elements, sparse: only the header
/// takes disk space.
fn sparse_1d(path: &Path, n: u64) {
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},"big":{{"dtype":"BF16","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        2 * n
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(bytes.len() as u64 + 2 * n).unwrap();
}

/// DELLA ranks each row with 32-bit positions: a row of 2^32 elements or more (here a 1-D
/// tensor, which is one row) is refused from its header, naming the tensor, where it was
/// planned and its ranks would have wrapped. TIES on the same tensor still plans.
#[test]
fn della_refuses_rows_too_long_to_rank_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let n = (1u64 << 32) + 64;
    let files: Vec<PathBuf> = ["base", "a", "b"]
        .iter()
        .map(|name| {
            let p = dir.path().join(format!("{name}.safetensors"));
            sparse_1d(&p, n);
            p
        })
        .collect();
    let run = |method: &str| {
        soup_merge()
            .args(["--method", method, "--base"])
            .arg(&files[0])
            .args([&files[1], &files[2]])
            .args(["--density", "0.5", "--dry-run", "--json"])
            .output()
            .unwrap()
    };
    for method in ["della", "della_linear"] {
        let o = run(method);
        assert_eq!(o.status.code(), Some(1), "{method}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kind"], "plan", "{v}");
        let e = v["error"].as_str().unwrap();
        assert!(
            e.contains("'big'") && e.contains(&n.to_string()) && e.contains("4294967295"),
            "{e}"
        );
    }
    let o = run("ties");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn an_output_under_something_that_is_no_directory_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let a = good(tmp.path(), "a.safetensors");
    let b = good(tmp.path(), "b.safetensors");
    let before = std::fs::read(&a).unwrap();
    let under_a = a.join("x.safetensors");
    let deeper = a.join("sub").join("x.safetensors");
    let missing = tmp.path().join("missing").join("x.safetensors");
    for (out, needles) in [
        // There, but not a directory: "does not exist" sent users looking for a typo.
        (
            Path::new("/dev/null/x.safetensors"),
            vec!["/dev/null is not a directory"],
        ),
        (under_a.as_path(), vec!["a.safetensors is not a directory"]),
        (deeper.as_path(), vec!["can't be reached", "ot a directory"]),
        (
            missing.as_path(),
            vec!["missing does not exist", "create it"],
        ),
    ] {
        let o = soup_merge()
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}: {err}", out.display());
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for n in needles {
            assert!(err.contains(n), "{}: '{n}' in {err}", out.display());
        }
    }
    assert_eq!(std::fs::read(&a).unwrap(), before, "the input is untouched");
}

#[test]
fn any_output_name_the_file_system_takes_is_written_and_a_longer_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let a = good(tmp.path(), "a.safetensors");
    let b = good(tmp.path(), "b.safetensors");
    // Up to 255 bytes a file system takes the name; the temporary beside it used to add about
    // 30 bytes and failed with "File name too long" from 225 bytes on.
    for (n, suffix) in [(200, ".safetensors"), (240, ".safetensors"), (255, "")] {
        let name = format!("{}{suffix}", "s".repeat(n - suffix.len()));
        let out = tmp.path().join(&name);
        let o = run_merge(&[&a, &b, &"-o", &out]);
        assert!(o.status.success(), "{n} bytes: {}", stderr(&o));
        assert!(out.exists(), "{n} bytes: written");
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f != "a.safetensors" && f != "b.safetensors")
            .collect();
        left.sort();
        assert_eq!(left, vec![name.clone()], "{n} bytes: nothing else left");
        std::fs::remove_file(&out)
            .or_else(|_| std::fs::remove_dir_all(&out))
            .unwrap();
    }
    let name = format!("{}.safetensors", "t".repeat(256 - 12));
    let o = run_merge(&[&a, &b, &"-o", &tmp.path().join(&name)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("a name of 256 bytes") && err.contains("choose a shorter -o"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
}

/// A run whose standard error (or, with `--json`, output) is appended to a file it reads fails
/// without writing there, however early it fails: a missing input, a bad weight, a flag clap
/// refuses, a recipe refused for its own reasons, or a corrupt input found before the
/// output's checks all used to append their `error:` line (or JSON object) to the input.
/// Standard output then carries the `error:` line, which went nowhere before.
#[test]
fn an_early_failure_never_appends_its_error_to_an_input_given_as_a_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = good(dir, "a.safetensors");
    let b = good(dir, "bb.safetensors");
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(&a, model.join("model.safetensors")).unwrap();
    std::fs::write(model.join("config.json"), "{}").unwrap();
    let bad_recipe = dir.join("bad.yml");
    std::fs::write(
        &bad_recipe,
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n  - model: {}/nothere\n",
            a.display(),
            dir.display()
        ),
    )
    .unwrap();
    let spaced = dir.join("a b.safetensors");
    std::fs::copy(&a, &spaced).unwrap();
    let quoted_recipe = dir.join("quoted.yml");
    std::fs::write(
        &quoted_recipe,
        format!(
            "merge_method: linear\nmodels:\n  - model: \"{}\"\n  - model: nothere\n",
            spaced.display()
        ),
    )
    .unwrap();
    let missing = dir.join("missing.safetensors");
    let corrupt = dir.join("corrupt.safetensors");
    raw_file(&corrupt, "{not json", &[]);
    let out = dir.join("soup.safetensors");
    let o = out.to_str().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // (the file the stream is appended to, the command line)
    let cases: Vec<(PathBuf, Vec<String>)> = vec![
        (a.clone(), vec![s(&a), s(&missing), "-o".into(), o.into()]),
        (
            a.clone(),
            vec![
                s(&a),
                s(&b),
                "-w".into(),
                "1,2,3".into(),
                "-o".into(),
                o.into(),
            ],
        ),
        (a.clone(), vec![s(&a), "--bogus".into()]),
        (
            b.clone(),
            vec![s(&a), format!("--base={}", s(&b)), "--bogus".into()],
        ),
        (a.clone(), vec![s(&a), s(&corrupt), "-o".into(), o.into()]),
        (
            a.clone(),
            vec!["--config".into(), s(&bad_recipe), "-o".into(), o.into()],
        ),
        (
            bad_recipe.clone(),
            vec!["--config".into(), s(&bad_recipe), "-o".into(), o.into()],
        ),
        (
            spaced.clone(),
            vec!["--config".into(), s(&quoted_recipe), "-o".into(), o.into()],
        ),
        (
            model.join("model.safetensors"),
            vec![s(&model), s(&missing), "-o".into(), o.into()],
        ),
        (
            model.join("config.json"),
            vec![s(&model), s(&missing), "-o".into(), o.into()],
        ),
    ];
    for (target, args) in &cases {
        for json in [false, true] {
            let before = std::fs::read(target).unwrap();
            let stream = || {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(target)
                    .unwrap()
            };
            let mut cmd = soup_merge();
            cmd.args(args);
            if json {
                cmd.arg("--json")
                    .stdout(stream())
                    .stderr(std::process::Stdio::null());
            } else {
                cmd.stderr(stream());
            }
            let o = cmd.output().unwrap();
            let status = o.status;
            assert!(
                matches!(status.code(), Some(1 | 2)),
                "{args:?} json={json}: {status}"
            );
            if !json {
                // The other stream says what failed.
                let said = stdout(&o);
                assert!(
                    said.starts_with("error: ") && said.lines().count() == 1,
                    "{args:?}: stdout {said:?}"
                );
            }
            assert!(
                std::fs::read(target).unwrap() == before,
                "{args:?} json={json} wrote into {}",
                target.display()
            );
            assert!(!out.exists());
        }
    }
    // A stream that is no input still gets the error.
    let log = dir.join("log.txt");
    let status = soup_merge()
        .args([s(&a), s(&missing), "-o".into(), o.into()])
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("error: ") && text.contains("missing.safetensors"),
        "{text}"
    );
}

/// An input that can't be looked at names the fix, not only the kernel's words ("No such file
/// or directory (os error 2)"), and stays an `io` error.
#[test]
fn an_input_that_is_not_there_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = good(dir, "a.safetensors");
    let dangling = dir.join("dangling.safetensors");
    std::os::unix::fs::symlink("gone.safetensors", &dangling).unwrap();
    let (l1, l2) = (dir.join("loop1"), dir.join("loop2"));
    std::os::unix::fs::symlink(&l2, &l1).unwrap();
    std::os::unix::fs::symlink(&l1, &l2).unwrap();
    let mut slashed = a.clone().into_os_string();
    slashed.push("/");
    let cases: [(PathBuf, &str); 5] = [
        (
            dir.join("missing.safetensors"),
            "does not exist: check the path",
        ),
        (dir.join("x".repeat(300)), "longer than the system takes"),
        (dangling, "is a link to nothing (gone.safetensors)"),
        (l1, "loop of symbolic links"),
        (slashed.into(), "trailing slash"),
    ];
    // sysfs takes no mmap; where this one is there, it is an input that can't be mapped.
    let sysfs = Path::new("/sys/kernel/mm/transparent_hugepage/enabled");
    let unmappable = sysfs
        .metadata()
        .is_ok_and(|m| m.is_file() && m.len() >= 8)
        .then(|| (sysfs.to_path_buf(), "copy it to a local disk"));
    for (input, fix) in cases.iter().chain(&unmappable) {
        let err = fails(dir, &[&a, input], &[]);
        assert!(err.contains(fix), "{err}");
        let o = soup_merge()
            .arg(&a)
            .arg(input)
            .args([
                "-o".as_ref(),
                dir.join("x.safetensors").as_os_str(),
                "--json".as_ref(),
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            (o.status.code(), v["kind"].as_str()),
            (Some(1), Some("io")),
            "{v}"
        );
    }
}

/// An output folder that takes no new files (read-only for this user, or immutable for root)
/// is named with the fix, in one line, and nothing is left in it.
#[test]
fn an_output_folder_that_cannot_be_written_names_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = good(dir, "a.safetensors");
    let locked = dir.join("locked");
    std::fs::create_dir(&locked).unwrap();
    // Root writes through permissions; the immutable flag stops it, where chattr works.
    let immutable = chattr("+i", &locked);
    let _unflag = Unflag(vec![locked.clone()]);
    if !immutable {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    if std::fs::write(locked.join("probe"), b"").is_ok() {
        eprintln!("skipped: this user can write to a read-only folder");
        return;
    }
    for name in ["soup.safetensors", "soup"] {
        let out = locked.join(name);
        let o = soup_merge()
            .args([&a, &a])
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
        assert!(
            err.contains("can't be written to") && err.contains("a folder you can write to"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

/// Inputs whose headers are just within the cap can give an output whose header is not (the
/// tool's metadata is added to the first input's): it was published, and no run of the tool
/// could read it back (`--verify` failed after the fact). It is refused from the plan.
#[test]
fn an_output_header_over_the_cap_is_refused_before_it_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cap = model_soup::format::MAX_HEADER_LEN as usize;
    let header = |pad: usize| {
        format!(
            r#"{{"__metadata__":{{"big":"{}"}},"w":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#,
            "x".repeat(pad)
        )
    };
    let fixed = header(0).len();
    let input = dir.join("big-metadata.safetensors");
    let json = header(cap - fixed - 64);
    raw_file(&input, &json, &[0; 4]);
    for args in [
        &["-o", "soup.safetensors"][..],
        &["-o", "soup"],
        &["--dry-run"],
    ] {
        let o = soup_merge()
            .current_dir(dir)
            .args([&input, &input])
            .args(args)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("header") && err.contains("strip the large __metadata__"),
            "{args:?}: {err}"
        );
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "{args:?}: only the input is there: {left:?}");
    }
}

#[test]
fn inputs_that_hold_no_tensors_are_refused_not_merged_into_an_empty_soup() {
    let tmp = tempfile::tempdir().unwrap();
    let a = good(tmp.path(), "a.safetensors");
    let empty = tmp.path().join("empty.safetensors");
    raw_file(&empty, "{}", &[]);
    let only_metadata = tmp.path().join("meta.safetensors");
    raw_file(&only_metadata, r#"{"__metadata__":{"format":"pt"}}"#, &[]);
    let empty_base = [
        "--method",
        "task_arithmetic",
        "--base",
        empty.to_str().unwrap(),
    ];
    for (inputs, extra, named) in [
        (vec![&*empty, &*empty], &[][..], &empty),
        (vec![&*a, &*only_metadata], &[][..], &only_metadata),
        (vec![&*a], &empty_base[..], &empty),
    ] {
        let err = fails(tmp.path(), &inputs, extra);
        assert!(err.contains("holds no tensors"), "{err}");
        assert!(err.contains(&named.display().to_string()), "{err}");
    }
}

#[test]
fn a_new_name_among_the_devices_or_the_kernels_files_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = good(tmp.path(), "a.safetensors");
    let b = good(tmp.path(), "b.safetensors");
    let name = format!("soup-test-{}", std::process::id());
    for (out, folder) in [
        (format!("/dev/{name}"), "/dev"),
        (format!("/dev/{name}.safetensors"), "/dev"),
        (format!("/proc/{name}.safetensors"), "/proc"),
        (format!("/sys/{name}"), "/sys"),
    ] {
        let o = soup_merge()
            .arg(&a)
            .arg(&b)
            .args(["-o", &out, "--force"])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{out}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("is under {folder}")), "{err}");
        assert!(!Path::new(&out).exists(), "{out} was created");
    }
}

/// Runs chattr with `args` on `path`; false where it doesn't work (not root, or a file system
/// without the flags, such as tmpfs or overlayfs).
fn chattr(args: &str, path: &Path) -> bool {
    std::process::Command::new("chattr")
        .arg(args)
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Lifts `chattr` flags from paths however a test ends, or its temporary folder could not be
/// removed.
struct Unflag(Vec<PathBuf>);

impl Drop for Unflag {
    fn drop(&mut self) {
        for p in &self.0 {
            chattr("-ai", p);
        }
    }
}

/// Everything in `dir`, name, kind and bytes (for a directory, its files'), to compare.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .flat_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                let mut inner = snapshot(&e.path());
                for (n, _) in &mut inner {
                    *n = format!("{name}/{n}");
                }
                inner.push((name + "/", Vec::new()));
                inner
            } else {
                vec![(name, std::fs::read(e.path()).unwrap())]
            }
        })
        .collect();
    all.sort();
    all
}

/// An append-only output folder (`chattr +a`) takes the temporary, but the kernel then refuses
/// to rename it into place or remove it: the run failed at the end and left the temporary
/// there for good. An append-only or immutable output that `--force` would replace (a soup,
/// or a file in a model directory output) can't be renamed over either. Each is refused
/// before any temporary is made, dry runs too, naming the flag and `chattr -a`/`-i`, and the
/// folder is left exactly as it was.
#[test]
fn an_append_only_or_immutable_output_or_folder_is_refused_before_any_temporary() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = good(dir, "a.safetensors");
    let b = good(dir, "bb.safetensors");
    let probe = dir.join("probe");
    std::fs::create_dir(&probe).unwrap();
    let works = chattr("+a", &probe);
    chattr("-a", &probe);
    if !works {
        eprintln!("skipped: chattr doesn't work here (needs root and a file system with flags)");
        return;
    }
    // Outputs of this tool that --force would replace: a soup, and a model directory.
    let outputs = dir.join("outputs");
    std::fs::create_dir(&outputs).unwrap();
    for name in ["soup.safetensors", "soup"] {
        let o = soup_merge()
            .args([&a, &b])
            .arg("-o")
            .arg(outputs.join(name))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut _unflag = Unflag(Vec::new());
    let refused = |folder: &Path, out: &Path, extra: &[&str], needles: &[&str]| {
        let before = snapshot(folder);
        for dry in [false, true] {
            let mut cmd = soup_merge();
            cmd.args([&a, &b]).arg("-o").arg(out).args(extra);
            if dry {
                cmd.arg("--dry-run");
            }
            let o = cmd.output().unwrap();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{out:?} {extra:?}: {err}");
            assert!(err.starts_with("error: "), "{err}");
            assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
            for needle in needles {
                assert!(
                    err.contains(needle),
                    "{out:?} {extra:?}: {needle:?} in {err}"
                );
            }
            assert_eq!(
                snapshot(folder),
                before,
                "{out:?} {extra:?}: the folder changed"
            );
        }
    };
    // An append-only folder, for a file and for a directory output.
    let folder = dir.join("appendonly");
    std::fs::create_dir(&folder).unwrap();
    assert!(chattr("+a", &folder));
    _unflag.0.push(folder.clone());
    for name in ["soup.safetensors", "soup"] {
        let fix = format!("chattr -a {}", folder.display());
        let needles = ["append-only", "never renamed into place or removed", &fix];
        refused(&folder, &folder.join(name), &[], &needles);
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 0);
    // Outputs that --force would replace, flagged.
    let soup = outputs.join("soup.safetensors");
    let weights = outputs.join("soup/model.safetensors");
    for (flag, noun) in [("+i", "immutable"), ("+a", "append-only")] {
        for (flagged, out) in [(&soup, &soup), (&weights, &outputs.join("soup"))] {
            assert!(chattr(flag, flagged));
            _unflag.0.push(flagged.clone());
            let fix = format!("chattr -{} {}", &flag[1..], flagged.display());
            let needles = [noun, "even with --force", fix.as_str()];
            refused(&outputs, out, &["--force"], &needles);
            // Without --force too: it would only say to pass --force.
            refused(&outputs, out, &[], &needles);
            assert!(chattr("-ai", flagged));
        }
    }
    // Unflagged, the same outputs are replaced.
    for out in [&soup, &outputs.join("soup")] {
        let o = soup_merge()
            .args([&b, &a])
            .arg("-o")
            .arg(out)
            .arg("--force")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

/// A command line clap refuses (an unknown or misspelt flag, a flag without its value, a value
/// out of a list, a missing argument) is one `error:` line, as every other failure is: clap's
/// message naming the argument, its tip, and the help to read, with exit status 2; clap's
/// block of tip, usage and "For more information" lines is not printed. `--help` and
/// `--version` still print as clap prints them, with status 0.
#[test]
fn a_bad_command_line_is_one_error_line_naming_the_argument_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let out = dir.path().join("soup.safetensors");
    let a = a.to_str().unwrap();
    let o = out.to_str().unwrap();
    for (args, named, fix) in [
        (
            &[a, a, "-o", o, "--bogus"][..],
            "'--bogus'",
            Some("'-- --bogus'"),
        ),
        (
            &[a, a, "-o", o, "--dry-ru"][..],
            "'--dry-ru'",
            Some("'--dry-run'"),
        ),
        (&[a, a, "-o"][..], "'--output <PATH>'", None),
        (
            &[a, a, "-o", o, "--dtype", "f8"][..],
            "'--dtype <DTYPE>'",
            Some("bf16"),
        ),
        (
            &[a, a, "-o", o, "--on-missing", "firts"][..],
            "'firts'",
            Some("'first'"),
        ),
        (&[a, a, "-o", o, "--seed", "x"][..], "'--seed <N>'", None),
        (&["-o", o][..], "<INPUT>", None),
        (&[][..], "--output <PATH>", None),
    ] {
        let run = soup_merge().args(args).output().unwrap();
        let err = stderr(&run);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {named} in {err}");
        if let Some(fix) = fix {
            assert!(err.contains(fix), "{args:?}: {fix} in {err}");
        }
        assert!(err.trim_end().ends_with("; see soup-merge --help"), "{err}");
        assert!(
            !err.contains("Usage:") && !err.contains("For more information"),
            "{err}"
        );
        assert!(stdout(&run).is_empty(), "{args:?}: {}", stdout(&run));
        assert!(!out.exists());
        // With --json, the JSON object on stdout is clap's message, as before, and stderr
        // the same one line.
        let run = soup_merge().args(args).arg("--json").output().unwrap();
        assert_eq!(run.status.code(), Some(2), "{args:?} --json");
        let v: serde_json::Value = serde_json::from_str(&stdout(&run)).unwrap();
        assert_eq!(v["kind"], "usage", "{v}");
        let message = v["error"].as_str().unwrap();
        assert!(
            message.contains(named) && !message.contains("--help"),
            "{v}"
        );
        assert_eq!(stderr(&run), err, "{args:?}: the same line with --json");
    }
    // Not even the help is appended to an input given as a stream.
    let before = std::fs::read(a).unwrap();
    let stream = std::fs::OpenOptions::new().append(true).open(a).unwrap();
    let run = soup_merge()
        .args([a, "--help"])
        .stdout(stream)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0));
    assert_eq!(
        std::fs::read(a).unwrap(),
        before,
        "the help went into the input"
    );
    for flag in ["--help", "-h", "--version", "-V"] {
        let run = soup_merge().arg(flag).output().unwrap();
        assert_eq!(run.status.code(), Some(0), "{flag}");
        assert!(stderr(&run).is_empty(), "{flag}: {}", stderr(&run));
        let text = stdout(&run);
        if flag.contains('V') || flag == "--version" {
            assert!(text.starts_with("soup-merge "), "{flag}: {text}");
        } else {
            assert!(
                text.contains("Usage: soup-merge") && text.lines().count() > 20,
                "{flag}: {text}"
            );
        }
    }
}

/// What is already at `-o` (a soup from an earlier run, or a file of a model directory output)
/// is never written through a standard stream appended to it (`-o soup.safetensors 2>>
/// soup.safetensors`): the refusal "already exists", or with `--force` a run that fails,
/// appended its error line after the soup's data, and the soup the run refused to replace
/// could no longer be read. The run is refused, that stream silenced, the other one told.
#[test]
fn a_stream_appended_to_the_existing_output_never_changes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = good(dir, "a.safetensors");
    let b = good(dir, "bb.safetensors");
    let missing = dir.join("missing.safetensors");
    let (soup, model) = (dir.join("soup.safetensors"), dir.join("model"));
    for out in [&soup, &model] {
        let o = soup_merge()
            .args([&a, &b])
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let card = model.join("README.md");
    // (the file the stream is appended to, -o, extra arguments)
    let cases: [(&Path, &Path, &[&str]); 5] = [
        (&soup, &soup, &[]),
        (&soup, &soup, &["--force", "-w", "1,2,3"]),
        (&soup, &soup, &["--force", "--dry-run"]),
        (&card, &model, &["--force", "-w", "1,2,3"]),
        (&model.join("model.safetensors"), &model, &[]),
    ];
    for (target, out, extra) in cases {
        for json in [false, true] {
            let before = std::fs::read(target).unwrap();
            let stream = || {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(target)
                    .unwrap()
            };
            let mut cmd = soup_merge();
            cmd.args([&a, &b]).arg("-o").arg(out).args(extra);
            if json {
                cmd.arg("--json").stdout(stream());
            } else {
                cmd.stderr(stream());
            }
            let o = cmd.output().unwrap();
            let what = format!("{} {extra:?} json={json}", target.display());
            assert_eq!(o.status.code(), Some(1), "{what}");
            // The other stream says what failed.
            let said = if json { stderr(&o) } else { stdout(&o) };
            assert!(
                said.starts_with("error: ")
                    && said.lines().count() == 1
                    && said.contains("redirect"),
                "{what}: {said:?}"
            );
            assert!(
                std::fs::read(target).unwrap() == before,
                "{what}: written into"
            );
        }
    }
    // A failure of the inputs, with --force, is still refused for the stream first.
    let before = std::fs::read(&soup).unwrap();
    let stream = std::fs::OpenOptions::new()
        .append(true)
        .open(&soup)
        .unwrap();
    let o = soup_merge()
        .arg(&a)
        .arg(&missing)
        .arg("-o")
        .arg(&soup)
        .arg("--force")
        .stderr(stream)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&soup).unwrap(), before);
}
