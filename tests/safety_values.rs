//! Non-finite values (issue 6): NaN or infinity in an input is reported with the tensor and
//! the input, a warning by default and an error under --strict; an overflow when storing the
//! soup in a narrower dtype is reported as the output's doing.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use safetensors::Dtype as D;

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `a` and `b`, each with a clean tensor `clean` and a tensor `w` of `w_a` / `w_b` (F32).
fn pair(dir: &Path, w_a: &[f32], w_b: &[f32]) -> [PathBuf; 2] {
    let paths = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    for (p, w) in paths.iter().zip([w_a, w_b]) {
        write(
            p,
            &[
                spec("clean", D::F32, &[3], f32s(&[1.0, 2.0, 3.0])),
                spec("w", D::F32, &[w.len()], f32s(w)),
            ],
        );
    }
    paths
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

#[test]
fn nan_and_infinity_in_an_input_are_named_and_refused_under_strict() {
    for (what, bad) in [
        ("NaN", f32::NAN),
        ("+inf", f32::INFINITY),
        ("-inf", f32::NEG_INFINITY),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // One bad value deep inside a 200 000-element tensor.
        let mut w = vec![0.5f32; 200_000];
        let clean_w = w.clone();
        w[150_000] = bad;
        let [a, b] = pair(dir.path(), &clean_w, &w);
        let out = dir.path().join("soup.safetensors");
        let o = run_merge(&[&a, &b, &"-o", &out, &"--json"]);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        let warnings = json(&o)["warnings"].as_array().unwrap().clone();
        assert_eq!(
            warnings.len(),
            1,
            "{what}: one warning for one tensor: {warnings:?}"
        );
        assert_eq!(warnings[0]["tensor"], "w");
        assert_eq!(warnings[0]["kind"], "non-finite-input");
        assert!(warnings[0]["input"]
            .as_str()
            .unwrap()
            .ends_with("b.safetensors"));
        let err = stderr(&o);
        assert!(
            err.contains("warning: ") && err.contains("'w'") && err.contains("b.safetensors"),
            "{what}: {err}"
        );

        let strict = dir.path().join("strict.safetensors");
        let o = run_merge(&[&a, &b, &"-o", &strict, &"--strict"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains("'w'") && err.contains("b.safetensors"),
            "{what}: {err}"
        );
        assert!(err.contains("--strict"), "{what}: {err}");
        assert!(!strict.exists(), "{what}: --strict must leave no output");
    }
}

#[test]
fn non_finite_half_precision_inputs_are_found_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let h = |v: &[f32], dt: D| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| match dt {
                D::F16 => half::f16::from_f32(x).to_le_bytes(),
                _ => half::bf16::from_f32(x).to_le_bytes(),
            })
            .collect()
    };
    write(
        &a,
        &[
            spec("h", D::F16, &[2], h(&[1.0, f32::INFINITY], D::F16)),
            spec("g", D::BF16, &[2], h(&[1.0, 2.0], D::BF16)),
        ],
    );
    write(
        &b,
        &[
            spec("h", D::F16, &[2], h(&[1.0, 2.0], D::F16)),
            spec("g", D::BF16, &[2], h(&[f32::NAN, 2.0], D::BF16)),
        ],
    );
    let o = run_merge(&[&a, &b, &"-o", &dir.path().join("o.safetensors"), &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut found: Vec<(String, String)> = json(&o)["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let input = w["input"].as_str().unwrap();
            (
                w["tensor"].as_str().unwrap().to_string(),
                Path::new(input)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("g".to_string(), "b.safetensors".to_string()),
            ("h".to_string(), "a.safetensors".to_string())
        ]
    );
}

#[test]
fn an_overflow_to_the_output_dtype_is_the_outputs_doing() {
    let dir = tempfile::tempdir().unwrap();
    // Finite in f32, beyond f16's 65504.
    let [a, b] = pair(dir.path(), &[70000.0, 1.0], &[80000.0, 1.0]);
    let out = dir.path().join("soup.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &out, &"--dtype", &"f16", &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let warnings = json(&o)["warnings"].as_array().unwrap().clone();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["tensor"], "w");
    assert_eq!(warnings[0]["kind"], "non-finite-output");
    assert!(warnings[0]["input"].is_null());
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(message.contains("--dtype bf16"), "names the fix: {message}");
    // The advice follows the output dtype: beyond f32's range only f64 is wider (bf16 is
    // never advised for an F32 output), and beyond f64's no type is: the advice is the weights.
    let advice = |x: &Path, y: &Path, out: &str| -> String {
        let out = dir.path().join(out);
        let o = run_merge(&[&x, &y, &"-w", &"1,1", &"-o", &out, &"--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v = json(&o);
        v["warnings"][0]["message"].as_str().unwrap().to_string()
    };
    let [c, d] = pair(dir.path(), &[3e38, 1.0], &[3e38, 1.0]);
    let message = advice(&c, &d, "f32.safetensors");
    assert!(
        message.contains("--dtype f64") && !message.contains("bf16"),
        "{message}"
    );
    let one = |name: &str, v: f64| {
        let path = dir.path().join(name);
        write(&path, &[spec("w", D::F64, &[1], encode(D::F64, &[v]))]);
        path
    };
    let (e, f) = (one("e.safetensors", 1e308), one("f.safetensors", 1e308));
    let message = advice(&e, &f, "f64.safetensors");
    assert!(
        message.contains("float64") && message.contains("weights") && !message.contains("--dtype"),
        "{message}"
    );
    // In bf16 the same values fit: no warning.
    let wide = dir.path().join("wide.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &wide, &"--dtype", &"bf16", &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["warnings"].as_array().unwrap().len(), 0);
    // Under --strict the overflow is an error and nothing is written.
    let strict = dir.path().join("strict.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &strict, &"--dtype", &"f16", &"--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("overflowed"), "{}", stderr(&o));
    assert!(!strict.exists());
}

#[test]
fn an_input_with_weight_zero_is_not_read_so_its_nan_is_not_inherited() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = pair(dir.path(), &[1.0, -0.0], &[f32::NAN, 2.0]);
    let out = dir.path().join("soup.safetensors");
    let o = run_merge(&[&a, &b, &"-w", &"1,0", &"-o", &out, &"--json", &"--strict"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["warnings"].as_array().unwrap().len(), 0);
    let got = read(&out);
    assert_eq!(
        got["w"].2,
        f32s(&[1.0, -0.0]),
        "the first input, bit for bit"
    );
}

#[test]
fn zero_weights_are_refused_rather_than_letting_the_first_inputs_nans_through() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = pair(dir.path(), &[f32::NAN, 1.0], &[2.0, 3.0]);
    let out = dir.path().join("soup.safetensors");
    let o = run_merge(&[&a, &b, &"-w", &"0,0", &"-o", &out, &"--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("every weight of --weights is 0"),
        "{}",
        stderr(&o)
    );
    assert_eq!(json(&o)["kind"], "weights");
    assert!(!out.exists());
}

/// `a` has tensors `shared` and `extra`; `b` and `c` only `shared`.
fn partial(dir: &Path) -> [PathBuf; 3] {
    let paths = ["a", "b", "c"].map(|n| dir.join(format!("{n}.safetensors")));
    for (i, p) in paths.iter().enumerate() {
        let mut tensors = vec![spec("shared", D::F32, &[2], f32s(&[i as f32, 1.0]))];
        if i == 0 {
            tensors.push(spec("extra", D::F32, &[2], f32s(&[7.0, 8.0])));
        }
        write(p, &tensors);
    }
    paths
}

#[test]
fn on_missing_first_and_skip_do_not_depend_on_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = partial(dir.path());
    // `first` copies the first input that has the tensor, whatever its weight.
    let out = dir.path().join("first.safetensors");
    let o = run_merge(&[
        &a,
        &b,
        &c,
        &"-w",
        &"0,1,1",
        &"--on-missing",
        &"first",
        &"-o",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read(&out)["extra"].2, f32s(&[7.0, 8.0]));
    assert_eq!(read(&out)["shared"].2, f32s(&[3.0, 2.0]));
    // `skip` leaves the partial tensor out; when nothing is left, that is an error.
    let out = dir.path().join("skip.safetensors");
    let o = run_merge(&[&a, &b, &"-w", &"0,1", &"--on-missing", &"skip", &"-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!read(&out).contains_key("extra"));
    let only = dir.path().join("only.safetensors");
    write(&only, &[spec("other", D::F32, &[1], f32s(&[1.0]))]);
    let out = dir.path().join("nothing.safetensors");
    let o = run_merge(&[&a, &only, &"--on-missing", &"skip", &"-o", &out]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("leaves nothing to write"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn every_warning_on_stderr_is_in_the_json_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = pair(dir.path(), &[f32::NAN, 1.0], &[2.0, 3.0]);
    // A directory output from plain files: no config.json to copy, a warning about it.
    let out = dir.path().join("soupdir");
    let o = run_merge(&[&a, &b, &"-o", &out, &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let printed: Vec<String> = stderr(&o)
        .lines()
        .filter_map(|l| l.strip_prefix("warning: ").map(str::to_string))
        .collect();
    let v = json(&o);
    let reported: Vec<String> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(printed, reported);
    let kinds: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"no-config") && kinds.contains(&"non-finite-input"),
        "{kinds:?}"
    );
}

#[test]
fn thread_counts_are_bounded_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = pair(dir.path(), &[1.0], &[2.0]);
    let out = dir.path().join("soup.safetensors");
    let started = std::time::Instant::now();
    let o = soup_merge()
        .args([&a, &b])
        .arg("-o")
        .arg(&out)
        .env("RAYON_NUM_THREADS", "100000")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("RAYON_NUM_THREADS=100000") && stderr(&o).contains("1024"));
    assert!(started.elapsed().as_secs_f64() < 5.0);
    assert!(!out.exists());
    // rayon's older variable would bypass that bound: it is not read.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1500000; exec \"$0\" \"$@\"")
        .arg(common::soup_merge_path())
        .args([&a, &b])
        .arg("-o")
        .arg(&out)
        .env("RAYON_RS_NUM_CPUS", "100000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();
    // A count in range that the process's limits leave no room for (each thread reserves its
    // stack: 1024 of them need 2 GiB of address space): one error line, and JSON, no panic.
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 300000; exec \"$0\" \"$@\"")
        .arg(common::soup_merge_path())
        .args([&a, &b])
        .arg("-o")
        .arg(&out)
        .arg("--json")
        .env("RAYON_NUM_THREADS", "1024")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.lines().count() == 1 && err.contains("cannot start 1024 worker threads"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["kind"], "resources");
    assert!(!out.exists());
}

#[test]
fn a_nan_that_a_trim_or_election_hides_is_still_named() {
    // A NaN in one model's task vector votes TIES' sign negative without reaching the output:
    // the soup is finite, and wrong. The input is named all the same, and --strict refuses it.
    let dir = tempfile::tempdir().unwrap();
    let [base, nan] = pair(dir.path(), &[0.0, 0.0, 0.0], &[f32::NAN, 1.0, 1.0]);
    let clean = dir.path().join("clean.safetensors");
    write(
        &clean,
        &[
            spec("clean", D::F32, &[3], f32s(&[1.0, 2.0, 3.0])),
            spec("w", D::F32, &[3], f32s(&[1.0, 1.0, 1.0])),
        ],
    );
    for method in ["ties", "dare_ties", "breadcrumbs_ties", "della"] {
        for strict in [false, true] {
            let out = dir.path().join(format!("{method}-{strict}.safetensors"));
            let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
                &"--method",
                &method,
                &"--base",
                &base,
                &nan,
                &clean,
                &"--density",
                &"0.5",
                &"--json",
                &"-o",
                &out,
            ];
            if strict {
                args.push(&"--strict");
            }
            let o = run_merge(&args);
            if strict {
                assert_eq!(o.status.code(), Some(1), "{method}: {}", stderr(&o));
                assert!(!out.exists());
                continue;
            }
            assert!(o.status.success(), "{method}: {}", stderr(&o));
            let warnings = json(&o)["warnings"].as_array().unwrap().clone();
            assert!(
                warnings.iter().any(|w| w["kind"] == "non-finite-input"
                    && w["input"].as_str().unwrap().ends_with("b.safetensors")),
                "{method}: {warnings:?}"
            );
        }
    }
}

fn f32s_of(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn values(path: &Path, name: &str) -> Vec<f32> {
    let (dtype, _, bytes) = &read(path)[name];
    match dtype {
        D::F32 => f32s_of(bytes),
        D::BF16 => bytes
            .chunks(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_nan_in_a_rescaled_task_vector_is_nan_everywhere_as_in_mergekit() {
    let dir = tempfile::tempdir().unwrap();
    // DARE's and DELLA's rescale: a NaN makes the task vector's L1 norm NaN, and mergekit's
    // `before < eps or after < eps` test is false for NaN, so it rescales by NaN and the whole
    // tensor is NaN. The test used to be written the other way round (`before >= eps and
    // after >= eps`), which skipped the rescale: the model's kept elements came out finite
    // and unscaled, a plausible soup that was not DARE. Under TIES' election (dare_ties,
    // della) the NaN terms lost the vote and added 0, so the soup was the base, finite, while
    // the warning said it inherited the NaNs.
    let n = 64;
    let zeros = vec![0.0f32; n];
    let mut ft: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 / 64.0).collect();
    ft[3] = f32::NAN;
    let rescaled = dir.path().join("rescaled");
    std::fs::create_dir(&rescaled).unwrap();
    let [base, nan] = pair(&rescaled, &zeros, &ft);
    for method in ["dare_linear", "della_linear", "dare_ties", "della"] {
        let out = dir.path().join(format!("{method}.safetensors"));
        let o = run_merge(&[
            &"--method",
            &method,
            &"--base",
            &base,
            &nan,
            &"--density",
            &"0.5",
            &"-q",
            &"-o",
            &out,
        ]);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let w = values(&out, "w");
        assert!(w.iter().all(|x| x.is_nan()), "{method}: {w:?}");
        assert_eq!(values(&out, "clean"), [1.0, 2.0, 3.0], "{method}");
    }
}
