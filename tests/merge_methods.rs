//! Every merge method against an independent float64 reference (tests/reference/methods_ref.py),
//! on random tensors and on the edge cases that break merges: zero task vectors, exact sign
//! ties, density 1, t at 0 and 1, colinear models, and parameters that must be refused. Also:
//! the same bytes at any thread count.

mod common;

use common::*;
use safetensors::Dtype as D;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The tensors of the test model: names with layers (for gradients), a 4-D tensor (DELLA's
/// rows run along dimension 1), 1-D tensors, and an integer tensor that is copied.
const TENSORS: &[(&str, &[usize])] = &[
    ("model.embed.weight", &[200, 24]),
    ("model.layers.0.self_attn.q.weight", &[48, 40]),
    ("model.layers.1.mlp.up.weight", &[40, 48]),
    ("model.layers.2.conv.weight", &[6, 5, 3, 3]),
    ("model.layers.2.mlp.bias", &[40]),
    ("model.norm.weight", &[40]),
];

/// A model whose float tensors are `f(name, base values)` and whose integer tensor is `step`.
fn model(path: &Path, dtype: D, step: i64, f: &dyn Fn(usize, &[f64]) -> Vec<f64>) {
    let mut specs = Vec::new();
    for (i, (name, shape)) in TENSORS.iter().enumerate() {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(7 + i as u64);
        let base: Vec<f64> = (0..n).map(|_| rng.normal() * 0.5).collect();
        specs.push(spec(name, dtype, shape, encode(dtype, &f(i, &base))));
    }
    specs.push(spec(
        "bn.num_batches_tracked",
        D::I64,
        &[],
        step.to_le_bytes().to_vec(),
    ));
    write(path, &specs);
}

/// A base and `k` fine-tunes: base plus noise of scale 0.05 (plus a per-model bias, so the
/// task vectors are not orthogonal and Model Stock's angle is not 90 degrees).
fn family(dir: &Path, dtype: D, k: usize) -> (PathBuf, Vec<PathBuf>) {
    let base = dir.join(format!("base-{dtype:?}.safetensors"));
    model(&base, dtype, 0, &|_, b| b.to_vec());
    let fts = (0..k)
        .map(|m| {
            let p = dir.join(format!("ft{m}-{dtype:?}.safetensors"));
            model(&p, dtype, 10 + m as i64, &|i, b| {
                let mut rng = Rng::new(1000 * (m as u64 + 1) + i as u64);
                let shared = Rng::new(99 + i as u64);
                let mut shared = shared;
                b.iter()
                    .map(|x| x + 0.05 * rng.normal() + 0.03 * shared.normal())
                    .collect()
            });
            p
        })
        .collect();
    (base, fts)
}

struct Case<'a> {
    method: &'a str,
    base: Option<&'a Path>,
    models: &'a [PathBuf],
    flags: &'a [&'a str],
    /// The parameters in mergekit's JSON form, for the reference.
    params: &'a str,
    seed: u64,
}

fn merged(case: &Case<'_>, out: &Path) {
    let mut cmd = soup_merge();
    cmd.arg("--method")
        .arg(case.method)
        .arg("-o")
        .arg(out)
        .arg("-f")
        .arg("-q");
    if let Some(b) = case.base {
        cmd.arg("--base").arg(b);
    }
    cmd.args(case.models).args(case.flags);
    if case.seed != 0 {
        cmd.arg("--seed").arg(case.seed.to_string());
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}: {}", case.method, stderr(&o));
}

fn reference(python: &Path, case: &Case<'_>, out: &Path) {
    let mut cmd = Command::new(python);
    cmd.arg(reference_script("methods_ref.py"))
        .arg(out)
        .arg("--method")
        .arg(case.method)
        .arg("--params")
        .arg(case.params)
        .arg("--seed")
        .arg(case.seed.to_string());
    if let Some(b) = case.base {
        cmd.arg("--base").arg(b);
    }
    let r = cmd.args(case.models).output().unwrap();
    let report = format!("{}{}", stdout(&r), stderr(&r));
    assert!(
        r.status.success() && report.contains(", 0 failures"),
        "{} disagrees with the reference:\n{report}",
        case.method
    );
}

fn check(case: Case<'_>) {
    let Some(python) = reference_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soup.safetensors");
    merged(&case, &out);
    reference(&python, &case, &out);
}

/// Every method on f32, bf16 and f16 inputs with its flags' common parameters.
#[test]
fn every_method_matches_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    for dtype in [D::F32, D::BF16, D::F16] {
        let (base, fts) = family(tmp.path(), dtype, 3);
        let weights = ["-w", "0.5,0.3,0.2"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            weights
                .iter()
                .copied()
                .chain(extra.iter().copied())
                .collect()
        };
        let cases: Vec<(&str, Vec<&str>, String)> = vec![
            ("linear", with(&[]), r#"{"parameters": {"normalize": false}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("task_arithmetic", with(&["--lambda", "0.8"]), r#"{"parameters": {"lambda": 0.8}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("ties", with(&["--density", "0.4"]), r#"{"parameters": {"density": 0.4}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("dare_linear", with(&["--density", "0.6"]), r#"{"parameters": {"density": 0.6}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            // Without rescale DARE draws its drops inside the output pass (one pass, no mask).
            ("dare_linear", with(&["--density", "0.6", "--param", "rescale=false"]), r#"{"parameters": {"density": 0.6, "rescale": false}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("dare_ties", with(&["--density", "0.3", "--param", "rescale=false"]), r#"{"parameters": {"density": 0.3, "rescale": false}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("dare_ties", with(&["--density", "0.5", "--lambda", "1.5"]), r#"{"parameters": {"density": 0.5, "lambda": 1.5}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("della", with(&["--density", "0.5", "--epsilon", "0.2"]), r#"{"parameters": {"density": 0.5, "epsilon": 0.2}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("della_linear", with(&["--density", "0.7"]), r#"{"parameters": {"density": 0.7}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("breadcrumbs", with(&["--density", "0.8", "--gamma", "0.05"]), r#"{"parameters": {"density": 0.8, "gamma": 0.05}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("breadcrumbs_ties", with(&["--density", "0.9"]), r#"{"parameters": {"density": 0.9}, "models": [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.2}]}"#.into()),
            ("model_stock", vec![], "{}".into()),
            ("model_stock", vec!["--param", "filter_wise=true"], r#"{"parameters": {"filter_wise": true}}"#.into()),
        ];
        for (method, flags, params) in &cases {
            check(Case {
                method,
                base: (*method != "linear").then_some(base.as_path()),
                models: &fts,
                flags,
                params,
                seed: 11,
            });
        }
        check(Case {
            method: "slerp",
            base: Some(&base),
            models: &fts[..1],
            flags: &["--t", "0.3"],
            params: r#"{"parameters": {"t": 0.3}}"#,
            seed: 0,
        });
        for (flags, params) in [
            (
                vec!["-w", "0.3,0.7"],
                r#"{"models": [{"weight": 0.3}, {"weight": 0.7}]}"#,
            ),
            (
                vec!["-w", "0.3,0.7", "--param", "nuslerp_flatten=false"],
                r#"{"parameters": {"nuslerp_flatten": false}, "models": [{"weight": 0.3}, {"weight": 0.7}]}"#,
            ),
            (
                vec![
                    "-w",
                    "1,2",
                    "--param",
                    "nuslerp_flatten=false",
                    "--param",
                    "nuslerp_row_wise=true",
                ],
                r#"{"parameters": {"nuslerp_flatten": false, "nuslerp_row_wise": true}, "models": [{"weight": 1}, {"weight": 2}]}"#,
            ),
        ] {
            // With a base (task vectors) and without.
            for b in [Some(base.as_path()), None] {
                check(Case {
                    method: "nuslerp",
                    base: b,
                    models: &fts[..2],
                    flags: &flags,
                    params,
                    seed: 0,
                });
            }
        }
        check(Case {
            method: "passthrough",
            base: None,
            models: &fts[..1],
            flags: &["--param", "scale=0.5"],
            params: r#"{"models": [{"scale": 0.5}]}"#,
            seed: 0,
        });
    }
}

fn tensors(path: &Path) -> std::collections::HashMap<String, (D, Vec<usize>, Vec<u8>)> {
    read(path)
}

#[test]
fn edge_cases_zero_task_vectors_density_one_and_the_ends_of_t() {
    let Some(python) = reference_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (base, fts) = family(tmp.path(), D::BF16, 2);
    // Fine-tunes equal to the base: every task vector is zero, so every method gives the base.
    let same: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = tmp.path().join(format!("same{i}.safetensors"));
            std::fs::copy(&base, &p).unwrap();
            p
        })
        .collect();
    let want = tensors(&base);
    for (method, flags) in [
        ("task_arithmetic", vec![]),
        ("ties", vec!["--density", "0.5"]),
        ("dare_ties", vec!["--density", "0.5"]),
        ("dare_linear", vec!["--density", "0.3"]),
        ("della", vec!["--density", "0.5"]),
        ("breadcrumbs_ties", vec!["--density", "0.5"]),
        ("model_stock", vec![]),
    ] {
        let out = tmp.path().join(format!("zero-{method}.safetensors"));
        let case = Case {
            method,
            base: Some(&base),
            models: &same,
            flags: &flags,
            params: "{}",
            seed: 3,
        };
        merged(&case, &out);
        let got = tensors(&out);
        for (name, t) in &want {
            assert_eq!(got[name].2, t.2, "{method}: {name} is not the base");
        }
    }
    // Density 1 keeps every element.
    check(Case {
        method: "ties",
        base: Some(&base),
        models: &fts,
        flags: &["--density", "1"],
        params: r#"{"parameters": {"density": 1.0, "weight": 1}}"#,
        seed: 0,
    });
    check(Case {
        method: "dare_linear",
        base: Some(&base),
        models: &fts,
        flags: &["--density", "1.0"],
        params: r#"{"parameters": {"density": 1.0, "weight": 1}}"#,
        seed: 0,
    });
    // t = 0 is the base and t = 1 the other model, bit for bit.
    for (t, want) in [("0", &base), ("1", &fts[0])] {
        let out = tmp.path().join(format!("t{t}.safetensors"));
        let case = Case {
            method: "slerp",
            base: Some(&base),
            models: &fts[..1],
            flags: &["--t", t],
            params: "{}",
            seed: 0,
        };
        merged(&case, &out);
        let (got, want) = (tensors(&out), tensors(want));
        for (name, w) in &want {
            if name != "bn.num_batches_tracked" {
                assert_eq!(got[name].2, w.2, "t = {t}: {name}");
            }
        }
    }
    // Colinear models: twice the base. SLERP falls back to a straight line.
    let double = tmp.path().join("double.safetensors");
    model(&double, D::F32, 0, &|_, b| {
        b.iter().map(|x| 2.0 * x).collect()
    });
    let base32 = tmp.path().join("base32.safetensors");
    model(&base32, D::F32, 0, &|_, b| b.to_vec());
    let case = Case {
        method: "slerp",
        base: Some(&base32),
        models: std::slice::from_ref(&double),
        flags: &["--t", "0.25"],
        params: r#"{"parameters": {"t": 0.25}}"#,
        seed: 0,
    };
    let out = tmp.path().join("colinear.safetensors");
    merged(&case, &out);
    reference(&python, &case, &out);
    let got = tensors(&out);
    let b: Vec<f32> = bytemuck_f32(&tensors(&base32)["model.norm.weight"].2);
    let g: Vec<f32> = bytemuck_f32(&got["model.norm.weight"].2);
    for (x, y) in b.iter().zip(&g) {
        assert_eq!(*y, 1.25 * x);
    }
    // Task vectors pointing exactly opposite ways (2 x base and 0): model_stock's ratio
    // N cos / (1 + (N - 1) cos) has no finite value, and mergekit keeps the base, per tensor
    // and per row. So does the reference.
    let zero = tmp.path().join("zero.safetensors");
    model(&zero, D::F32, 0, &|_, b| vec![0.0; b.len()]);
    let opposite = [double.clone(), zero];
    for (flags, params) in [
        (vec![], "{}"),
        (
            vec!["--param", "filter_wise=true"],
            r#"{"parameters": {"filter_wise": true}}"#,
        ),
    ] {
        let case = Case {
            method: "model_stock",
            base: Some(&base32),
            models: &opposite,
            flags: &flags,
            params,
            seed: 0,
        };
        let out = tmp.path().join("opposite.safetensors");
        let _ = std::fs::remove_file(&out);
        merged(&case, &out);
        reference(&python, &case, &out);
        let (got, want) = (tensors(&out), tensors(&base32));
        for (name, w) in &want {
            assert_eq!(got[name].2, w.2, "{flags:?}: {name} is not the base");
        }
    }
}

fn bytemuck_f32(b: &[u8]) -> Vec<f32> {
    b.chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn exact_sign_ties_elect_the_positive_sign() {
    let tmp = tempfile::tempdir().unwrap();
    // Task vectors +d and -d with equal weights: the weighted sum is exactly 0, which mergekit
    // counts as positive, so the result is base + |d|. Base and d have few bits, so every sum
    // is exact in f32.
    let d = |i: usize, b: &[f64]| -> Vec<f64> {
        b.iter()
            .enumerate()
            .map(|(j, _)| ((i * 7 + j) % 13) as f64 / 64.0 - 0.09375)
            .collect()
    };
    let base = tmp.path().join("base.safetensors");
    let coarse = |b: &[f64]| -> Vec<f64> { b.iter().map(|x| (x * 64.0).round() / 64.0).collect() };
    model(&base, D::F32, 0, &|_, b| coarse(b));
    let plus = tmp.path().join("plus.safetensors");
    model(&plus, D::F32, 0, &|i, b| {
        coarse(b).iter().zip(d(i, b)).map(|(x, y)| x + y).collect()
    });
    let minus = tmp.path().join("minus.safetensors");
    model(&minus, D::F32, 0, &|i, b| {
        coarse(b).iter().zip(d(i, b)).map(|(x, y)| x - y).collect()
    });
    let out = tmp.path().join("ties.safetensors");
    let models = [plus.clone(), minus.clone()];
    merged(
        &Case {
            method: "ties",
            base: Some(&base),
            models: &models,
            flags: &[],
            params: "{}",
            seed: 0,
        },
        &out,
    );
    let (got, plus, minus) = (tensors(&out), tensors(&plus), tensors(&minus));
    let mut elected = 0;
    for (name, _) in TENSORS {
        let got = bytemuck_f32(&got[*name].2);
        let plus = bytemuck_f32(&plus[*name].2);
        let minus = bytemuck_f32(&minus[*name].2);
        for ((g, p), m) in got.iter().zip(&plus).zip(&minus) {
            // base + |d| is the larger of the two; where d is 0 it is the base.
            assert_eq!(*g, p.max(*m), "{name}");
            elected += (p != m) as usize;
        }
    }
    assert!(elected > 1000, "the test needs non-zero task vectors");
}

#[test]
fn recipes_with_gradients_and_filters_match_the_reference() {
    let Some(python) = reference_python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (base, fts) = family(tmp.path(), D::BF16, 2);
    // JSON is YAML: the same text is the recipe's parameters and the reference's.
    let cases = [
        (
            "ties",
            r#"{"parameters": {"density": [0.3, 0.9], "normalize": true}, "models": [{"weight": [{"filter": "self_attn", "value": 0.2}, {"value": 0.7}]}, {"weight": 0.5, "density": 0.6}]}"#,
        ),
        (
            "della_linear",
            r#"{"parameters": {"density": 0.5, "epsilon": [0.1, 0.2, 0.3]}, "models": [{"weight": 1.0}, {"weight": [0.5, 1.5]}]}"#,
        ),
        (
            "task_arithmetic",
            r#"{"parameters": {"lambda": [{"filter": "mlp", "value": [0.5, 2.0]}, {"value": 1.0}]}, "models": [{"weight": 0.6}, {"weight": 0.4}]}"#,
        ),
        // A true/false list steps over the layers (mergekit selects, never interpolates).
        (
            "ties",
            r#"{"parameters": {"density": 0.5, "normalize": [false, true]}, "models": [{"weight": 0.6}, {"weight": 0.3}]}"#,
        ),
        (
            "model_stock",
            r#"{"parameters": {"filter_wise": [true, false, false]}, "models": [{}, {}]}"#,
        ),
    ];
    for (i, (method, params)) in cases.into_iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(params).unwrap();
        let mut text = format!(
            "merge_method: {method}\nbase_model: {}\nrandom_seed: 5\nparameters: {}\nmodels:\n  - model: {}\n",
            base.display(),
            v["parameters"],
            base.display()
        );
        for (m, p) in fts.iter().zip(v["models"].as_array().unwrap()) {
            text += &format!("  - model: {}\n    parameters: {p}\n", m.display());
        }
        let recipe = tmp.path().join(format!("{method}-{i}.yaml"));
        std::fs::write(&recipe, &text).unwrap();
        let out = tmp.path().join(format!("{method}-{i}-recipe.safetensors"));
        let o = run_merge(&[&"--config", &recipe, &"-o", &out, &"-q"]);
        assert!(o.status.success(), "{text}\n{}", stderr(&o));
        reference(
            &python,
            &Case {
                method,
                base: Some(&base),
                models: &fts,
                flags: &[],
                params,
                seed: 5,
            },
            &out,
        );
        let bytes = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        assert_eq!(meta["model_soup.method"], method);
        assert_eq!(meta["model_soup.seed"], "5");
        assert!(meta["model_soup.base"].starts_with("base-"));
        let recorded: serde_json::Value =
            serde_json::from_str(&meta["model_soup.parameters"]).unwrap();
        assert_eq!(recorded["parameters"], v["parameters"], "{recorded}");
        assert_eq!(recorded["models"], v["models"], "{recorded}");
    }
}

/// One `error:` line, status 1 (2 for a usage error), nothing written.
fn refused(args: &[&dyn AsRef<std::ffi::OsStr>], out: &Path, says: &str) {
    let o = run_merge(args);
    let err = stderr(&o);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{says}: {err}");
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains(says), "expected '{says}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists());
}

#[test]
fn invalid_parameters_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, fts) = family(tmp.path(), D::F32, 3);
    let out = tmp.path().join("never.safetensors");
    let (a, b, c) = (&fts[0], &fts[1], &fts[2]);
    refused(
        &[
            &"--method",
            &"ties",
            &"--base",
            &base,
            a,
            b,
            &"--density",
            &"0",
            &"-o",
            &out,
        ],
        &out,
        "--density is 0, outside (0, 1]",
    );
    refused(
        &[
            &"--method",
            &"dare_ties",
            &"--base",
            &base,
            a,
            b,
            &"--density",
            &"1.5",
            &"-o",
            &out,
        ],
        &out,
        "outside (0, 1]",
    );
    refused(
        &[
            &"--method",
            &"slerp",
            &"--base",
            &base,
            a,
            &"--t",
            &"1.2",
            &"-o",
            &out,
        ],
        &out,
        "--t is 1.2, outside [0, 1]",
    );
    refused(
        &[
            &"--method",
            &"slerp",
            &"--base",
            &base,
            a,
            &"--t=-0.1",
            &"-o",
            &out,
        ],
        &out,
        "outside [0, 1]",
    );
    refused(
        &[&"--method", &"slerp", &"--base", &base, a, &"-o", &out],
        &out,
        "needs parameter t",
    );
    refused(
        &[&"--method", &"ties", a, b, &"-o", &out],
        &out,
        "needs a base model: give --base",
    );
    refused(
        &[
            &"--method",
            &"slerp",
            &"--base",
            &base,
            a,
            b,
            &"--t",
            &"0.5",
            &"-o",
            &out,
        ],
        &out,
        "exactly two models",
    );
    refused(
        &[&"--method", &"slerp", a, b, c, &"--t", &"0.5", &"-o", &out],
        &out,
        "needs a base model",
    );
    refused(
        &[
            &"--method",
            &"model_stock",
            &"--base",
            &base,
            a,
            &"-o",
            &out,
        ],
        &out,
        "at least two fine-tunes",
    );
    refused(
        &[
            &"--method",
            &"slerp",
            &"--base",
            &base,
            a,
            &"--t",
            &"0.5",
            &"--density",
            &"0.5",
            &"-o",
            &out,
        ],
        &out,
        "--density is not a parameter of slerp",
    );
    refused(
        &[
            &"--method",
            &"della",
            &"--base",
            &base,
            a,
            &"--density",
            &"0.1",
            &"--epsilon",
            &"0.2",
            &"-o",
            &out,
        ],
        &out,
        "epsilon 0.2 with density 0.1",
    );
    refused(
        &[&"--method", &"karcher", a, b, &"-o", &out],
        &out,
        "--method karcher is not a merge method",
    );
    refused(
        &[
            &"--method",
            &"ties",
            &"--base",
            &base,
            a,
            b,
            &"-w",
            &"1,2,3",
            &"-o",
            &out,
        ],
        &out,
        "--weights has 3 values for 2 models besides the base",
    );
    refused(
        &[
            &"--method",
            &"ties",
            &"--base",
            &base,
            a,
            &"--param",
            &"rescale=maybe",
            &"-o",
            &out,
        ],
        &out,
        "not a number, true or false",
    );
    refused(
        &[
            &"--method",
            &"ties",
            &"--base",
            &base,
            a,
            &"--param",
            &"t=0.5",
            &"-o",
            &out,
        ],
        &out,
        "--param t is not a parameter of ties",
    );
    refused(
        &[&"--method", &"passthrough", a, b, &"-o", &out],
        &out,
        "exactly one model",
    );
    // A per-layer list longer than the model's 3 layers, and a recipe's errors.
    let recipe = |name: &str, text: String| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let long = recipe(
        "long.yaml",
        format!(
            "merge_method: slerp\nbase_model: {}\nmodels:\n  - model: {}\nparameters:\n  t: [0, 0.2, 0.4, 0.6]\n",
            base.display(),
            a.display()
        ),
    );
    refused(
        &[&"--config", &long, &"-o", &out],
        &out,
        "parameters.t is a list of 4 values, longer than the model's 3 layers",
    );
    let one = recipe(
        "one.yaml",
        format!(
            "merge_method: model_stock\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\n",
            base.display(),
            base.display(),
            a.display()
        ),
    );
    refused(
        &[&"--config", &one, &"-o", &out],
        &out,
        "at least two fine-tunes",
    );
    let three = recipe(
        "three.yaml",
        format!(
            "merge_method: slerp\nbase_model: {}\nparameters: {{t: 0.5}}\nmodels:\n  - model: {}\n  - model: {}\n",
            base.display(),
            a.display(),
            b.display()
        ),
    );
    refused(
        &[&"--config", &three, &"-o", &out],
        &out,
        "exactly two models",
    );
}

#[test]
fn whole_tensor_methods_give_the_same_bytes_at_any_thread_count() {
    let tmp = tempfile::tempdir().unwrap();
    // 1.1 M elements: three chunks, so the partial sums, the tie counts and the trims are
    // spread over threads.
    let shape = [1100usize, 1000];
    let n = shape[0] * shape[1];
    let mut rng = Rng::new(5);
    let base_values: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let mut paths = Vec::new();
    for m in 0..4 {
        let p = tmp.path().join(format!("big{m}.safetensors"));
        let mut r = Rng::new(50 + m as u64);
        let values: Vec<f64> = if m == 0 {
            base_values.clone()
        } else {
            base_values.iter().map(|x| x + 0.1 * r.normal()).collect()
        };
        write(
            &p,
            &[spec(
                "model.layers.0.w",
                D::BF16,
                &shape,
                encode(D::BF16, &values),
            )],
        );
        paths.push(p);
    }
    let base = paths[0].clone();
    let models = paths[1..].to_vec();
    for (method, flags) in [
        ("ties", vec!["--density", "0.3"]),
        ("dare_ties", vec!["--density", "0.4"]),
        (
            "dare_linear",
            vec!["--density", "0.4", "--param", "rescale=false"],
        ),
        ("della", vec!["--density", "0.5", "--epsilon", "0.1"]),
        (
            "breadcrumbs_ties",
            vec!["--density", "0.5", "--gamma", "0.1"],
        ),
        ("model_stock", vec![]),
        ("model_stock", vec!["--param", "filter_wise=true"]),
    ] {
        let mut outputs = Vec::new();
        for threads in ["1", "3"] {
            let out = tmp.path().join(format!("{method}-{threads}.safetensors"));
            let o = soup_merge()
                .env("RAYON_NUM_THREADS", threads)
                .args(["--method", method, "-q", "-f", "--seed", "9"])
                .arg("--base")
                .arg(&base)
                .args(&models)
                .args(&flags)
                .arg("-o")
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            outputs.push(std::fs::read(&out).unwrap());
        }
        assert!(
            outputs[0] == outputs[1],
            "{method} {flags:?} differs between 1 and 3 threads"
        );
    }
    if let Some(python) = reference_python() {
        let case = Case {
            method: "ties",
            base: Some(&base),
            models: &models,
            flags: &["--density", "0.3"],
            params: r#"{"parameters": {"density": 0.3, "weight": 1}}"#,
            seed: 9,
        };
        let out = tmp.path().join("ties-1.safetensors");
        reference(&python, &case, &out);
        let case = Case {
            method: "dare_ties",
            flags: &["--density", "0.4"],
            params: r#"{"parameters": {"density": 0.4, "weight": 1}}"#,
            ..case
        };
        reference(&python, &case, &tmp.path().join("dare_ties-1.safetensors"));
    }
}

#[test]
fn dry_runs_plan_methods_from_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, fts) = family(tmp.path(), D::BF16, 2);
    let o = soup_merge()
        .args([
            "--method",
            "ties",
            "--density",
            "0.5",
            "--dry-run",
            "--json",
        ])
        .arg("--base")
        .arg(&base)
        .args(&fts)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let plan = v["plan"].as_array().unwrap();
    let ties = plan.iter().filter(|t| t["action"] == "ties").count();
    assert_eq!(ties, TENSORS.len());
    assert!(plan.iter().any(|t| t["action"] == "copy"));
    assert_eq!(v["inputs"][0]["path"], base.to_str().unwrap());
}

#[test]
fn every_method_takes_empty_scalar_and_one_element_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let odd = |name: &str, v: f32| {
        let path = tmp.path().join(name);
        let f32s = |xs: &[f32]| xs.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        write(
            &path,
            &[
                spec("empty", D::F32, &[0, 4], Vec::new()),
                spec("scalar", D::F32, &[], f32s(&[v])),
                spec("one", D::BF16, &[1], encode(D::BF16, &[v as f64])),
                spec(
                    "w",
                    D::F32,
                    &[3, 2],
                    f32s(&[v, -v, 0.5, 1.0, v * 2.0, -1.0]),
                ),
            ],
        );
        path
    };
    let base = odd("base.safetensors", 0.25);
    let models = [odd("a.safetensors", 1.5), odd("b.safetensors", -0.75)];
    for (method, flags) in [
        ("linear", vec![]),
        ("task_arithmetic", vec![]),
        ("ties", vec!["--density", "0.5"]),
        ("dare_linear", vec!["--density", "0.5"]),
        (
            "dare_ties",
            vec!["--density", "0.5", "--param", "rescale=false"],
        ),
        ("della", vec!["--density", "0.5", "--epsilon", "0.1"]),
        ("della_linear", vec!["--density", "0.5", "--epsilon", "0.1"]),
        ("breadcrumbs", vec!["--density", "0.5", "--gamma", "0.2"]),
        ("breadcrumbs_ties", vec!["--density", "0.5"]),
        ("nuslerp", vec![]),
        ("model_stock", vec![]),
    ] {
        let out = tmp.path().join(format!("{method}.safetensors"));
        let mut cmd = soup_merge();
        cmd.args(["--method", method]);
        if method != "linear" {
            cmd.arg("--base").arg(&base);
        }
        let o = cmd
            .args(&models)
            .args(&flags)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let got = tensors(&out);
        assert_eq!(got["empty"].1, [0, 4], "{method}");
        assert!(got["empty"].2.is_empty(), "{method}");
        assert_eq!(got["scalar"].1, Vec::<usize>::new(), "{method}");
    }
    for (method, model) in [("slerp", &models[0]), ("passthrough", &models[1])] {
        let out = tmp.path().join(format!("{method}.safetensors"));
        let mut cmd = soup_merge();
        cmd.args(["--method", method]);
        if method == "slerp" {
            cmd.arg("--base").arg(&base).args(["--t", "0.3"]);
        }
        let o = cmd.arg(model).arg("-o").arg(&out).output().unwrap();
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        assert!(tensors(&out)["empty"].2.is_empty());
    }
}

/// With a base, each tensor takes its inputs' promoted dtype, as the same recipe does: a bf16
/// base never narrows f32 fine-tunes. Without --dtype only; --dtype still decides.
#[test]
fn a_base_never_narrows_the_fine_tunes_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let (base16, _) = family(dir.path(), D::BF16, 0);
    let (base32, fts32) = family(dir.path(), D::F32, 2);
    let (_, fts16) = family(dir.path(), D::BF16, 2);
    let f16_path = dir.path().join("ft-f16.safetensors");
    model(&f16_path, D::F16, 3, &|_, b| {
        b.iter().map(|x| x + 0.01).collect()
    });
    for (base, models, flags, want) in [
        (&base16, &fts32, &[][..], D::F32),
        (&base32, &fts16, &[][..], D::F32),
        (&base16, &fts16, &[][..], D::BF16),
        (
            &base16,
            &vec![fts16[0].clone(), f16_path.clone()],
            &[][..],
            D::F32,
        ),
        (&base16, &fts32, &["--dtype", "bf16"][..], D::BF16),
    ] {
        for method in ["task_arithmetic", "ties"] {
            let out = dir.path().join(format!("{method}.safetensors"));
            let _ = std::fs::remove_file(&out);
            let o = soup_merge()
                .args(["--method", method, "--density", "1", "--base"])
                .arg(base)
                .args(models)
                .args(flags)
                .arg("-o")
                .arg(&out)
                .args(["-q", "--force"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            for (name, (dtype, _, _)) in tensors(&out) {
                if name != "bn.num_batches_tracked" {
                    assert_eq!(
                        dtype, want,
                        "{method} {base:?} {models:?} {flags:?}: {name}"
                    );
                }
            }
        }
    }
}

/// A base given as a model directory and again as its own weights file among the inputs is
/// the base, not one more model, as a recipe takes it.
#[test]
fn the_base_spelled_as_its_directory_and_its_file_is_one_base() {
    let dir = tempfile::tempdir().unwrap();
    let (base, fts) = family(dir.path(), D::F32, 2);
    let base_dir = dir.path().join("base");
    std::fs::create_dir(&base_dir).unwrap();
    std::fs::copy(&base, base_dir.join("model.safetensors")).unwrap();
    let run = |inputs: &[PathBuf], out: &str| {
        let out = dir.path().join(out);
        let o = soup_merge()
            .args(["--method", "task_arithmetic", "--base"])
            .arg(&base_dir)
            .args(inputs)
            .arg("-o")
            .arg(&out)
            .args(["-q", "--json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        (std::fs::read(&out).unwrap(), stdout(&o))
    };
    let (plain, _) = run(&fts, "plain.safetensors");
    let with_file: Vec<PathBuf> = std::iter::once(base_dir.join("model.safetensors"))
        .chain(fts.iter().cloned())
        .collect();
    let (folded, json) = run(&with_file, "folded.safetensors");
    assert_eq!(plain, folded, "the base's own file was merged as a model");
    assert!(!json.contains("repeated-input"), "{json}");
}

/// A model of weight 0 takes no part in any method that weighs its models: whatever it holds,
/// NaN included, no output value changes, and it is not read (no non-finite-input warning).
/// With every weight 0 the task-vector methods give the base.
#[test]
fn a_model_of_weight_zero_is_not_read_by_any_method() {
    let dir = tempfile::tempdir().unwrap();
    let (base, fts) = family(dir.path(), D::F32, 2);
    let nan = dir.path().join("nan.safetensors");
    model(&nan, D::F32, 10, &|_, b| {
        b.iter().map(|_| f64::NAN).collect()
    });
    let run = |method: &str, flags: &[&str], models: [&PathBuf; 2], weights: &str| {
        let out = dir.path().join("out.safetensors");
        let o = soup_merge()
            .args(["--method", method, "--base"])
            .arg(&base)
            .args(models)
            .args(["-w", weights])
            .args(flags)
            .arg("-o")
            .arg(&out)
            .args(["--json", "--force", "-q"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        assert!(
            !stdout(&o).contains("non-finite"),
            "{method} -w {weights}: {}",
            stdout(&o)
        );
        tensors(&out)
    };
    for (method, flags) in [
        ("task_arithmetic", &[][..]),
        ("ties", &["--density", "0.5"][..]),
        ("dare_linear", &["--density", "0.5"][..]),
        ("dare_ties", &["--density", "0.5"][..]),
        ("della", &["--density", "0.5", "--epsilon", "0.1"][..]),
        (
            "della_linear",
            &["--density", "0.5", "--epsilon", "0.1"][..],
        ),
        ("breadcrumbs", &["--density", "0.5"][..]),
        ("breadcrumbs_ties", &["--density", "0.5"][..]),
        ("nuslerp", &[][..]),
    ] {
        for (weights, zero) in [("0,1", 0), ("1,0", 1)] {
            let mut with_nan = [&fts[0], &fts[1]];
            with_nan[zero] = &nan;
            let got = run(method, flags, with_nan, weights);
            let want = run(method, flags, [&fts[0], &fts[1]], weights);
            assert_eq!(got, want, "{method} -w {weights}");
        }
    }
    // Every weight 0 for one tensor (a recipe's filter): that tensor is the base's.
    let base_only = tensors(&base);
    for (method, globals) in [
        ("task_arithmetic", "{}"),
        ("ties", "{density: 0.5}"),
        ("dare_linear", "{density: 0.5}"),
        ("della", "{density: 0.5, epsilon: 0.1}"),
    ] {
        let recipe = dir.path().join(format!("{method}.yaml"));
        let weight = r#"{weight: [{filter: model.norm, value: 0}, {value: 1}]}"#;
        std::fs::write(
            &recipe,
            format!(
                "merge_method: {method}\nbase_model: {}\nparameters: {globals}\nmodels:\n  - model: {}\n    parameters: {weight}\n  - model: {}\n    parameters: {weight}\n",
                base.display(),
                fts[0].display(),
                fts[1].display()
            ),
        )
        .unwrap();
        let out = dir.path().join(format!("{method}-recipe.safetensors"));
        let o = soup_merge()
            .arg("--config")
            .arg(&recipe)
            .arg("-o")
            .arg(&out)
            .arg("-q")
            .output()
            .unwrap();
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let got = tensors(&out);
        assert_eq!(
            got["model.norm.weight"], base_only["model.norm.weight"],
            "{method}"
        );
        assert_ne!(got["model.embed.weight"], base_only["model.embed.weight"]);
    }
}

/// `dir/NAME-DTYPE.safetensors`, holding one 1-D tensor `w` of `values`.
fn one_tensor(dir: &Path, name: &str, dtype: D, values: &[f64]) -> PathBuf {
    let p = dir.join(format!("{name}-{dtype:?}.safetensors"));
    write(
        &p,
        &[spec("w", dtype, &[values.len()], encode(dtype, values))],
    );
    p
}

/// Merges a four-element base holding a NaN and an infinity with two fine-tunes (the first
/// element of the first is `a0`) by `method_args`, in `dtype`, into f32: the run's stderr and
/// the soup's values.
fn merge_over_a_non_finite_base(
    dir: &Path,
    dtype: D,
    a0: f64,
    method_args: &[&str],
) -> (String, Vec<f32>) {
    let file = |name: &str, values: &[f64]| one_tensor(dir, name, dtype, values);
    let base = file("base", &[f64::NAN, f64::INFINITY, 1.0, -2.0]);
    let a = file("a", &[a0, 0.25, 1.5, -1.0]);
    let b = file("b", &[1.5, 0.75, 0.5, -3.0]);
    let out = dir.join(format!("soup-{dtype:?}.safetensors"));
    let o = soup_merge()
        .args(method_args)
        .args(["--dtype", "f32", "--base"])
        .args([&base, &a, &b])
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("base-"), "{}", stderr(&o));
    (stderr(&o), bytemuck_f32(&tensors(&out)["w"].2))
}

/// Task arithmetic folds `base + lambda * sum w_i (x_i - base)` into one combination, whose
/// base coefficient `1 - lambda * sum w_i` is 0 for the usual weights summing to 1. The base is
/// still merged there: a NaN or an infinity in it makes that element NaN, as every task vector
/// is (mergekit's result), with the base named in a warning; it was left out, and the soup held
/// the fine-tunes' finite average in its place.
#[test]
fn task_arithmetic_carries_the_bases_non_finite_values_when_its_coefficient_folds_to_zero() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [D::F32, D::BF16] {
        let args = ["--method", "task_arithmetic", "-w", "0.5,0.5"];
        let (_, got) = merge_over_a_non_finite_base(dir.path(), dtype, 0.5, &args);
        assert!(got[0].is_nan() && got[1].is_nan(), "{dtype:?}: {got:?}");
        assert_eq!(got[2..], [1.0, -2.0], "{dtype:?}");
    }
}

/// Where the folded base coefficient is not 0 (weights summing to 0.5, or lambda 0), an
/// infinite base gave `0.5 * inf + ...`, an infinity, where mergekit's `inf + lambda * sum w_i
/// (x_i - inf)` is NaN. Such chunks are now computed unfolded.
#[test]
fn task_arithmetic_of_an_infinite_base_is_nan_as_in_mergekit_at_any_coefficient() {
    for dtype in [D::F32, D::BF16] {
        for args in [
            vec!["--method", "task_arithmetic", "-w", "0.25,0.25"],
            vec![
                "--method",
                "task_arithmetic",
                "-w",
                "0.5,0.5",
                "--lambda",
                "0",
            ],
            vec![
                "--method",
                "task_arithmetic",
                "-w",
                "1,2",
                "--param",
                "normalize=true",
            ],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (err, got) = merge_over_a_non_finite_base(dir.path(), dtype, 0.5, &args);
            assert!(
                got[0].is_nan() && got[1].is_nan(),
                "{dtype:?} {args:?}: {got:?}"
            );
            assert!(err.contains("NaN or infinite"), "{args:?}: {err}");
            let w = if args.contains(&"1,2") {
                [1.0 / 3.0, 2.0 / 3.0]
            } else if args.contains(&"0") {
                [0.0, 0.0]
            } else {
                [0.25, 0.25]
            };
            // mergekit's form, in f32: base + sum w_i (x_i - base).
            let unfolded =
                |b: f32, x: [f32; 2]| b + (w[0] as f32 * (x[0] - b) + w[1] as f32 * (x[1] - b));
            assert_eq!(got[2], unfolded(1.0, [1.5, 0.5]), "{dtype:?} {args:?}");
            assert_eq!(got[3], unfolded(-2.0, [-1.0, -3.0]), "{dtype:?} {args:?}");
        }
    }
}

/// The folded sum `x_1 + x_2 - base` overflows near the format's largest value where mergekit's
/// differences are 0: such a chunk is computed again unfolded, and the soup is the base, with
/// no warning.
#[test]
fn task_arithmetic_near_the_largest_float_does_not_overflow_where_mergekit_does_not() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [D::F32, D::BF16] {
        let big = if dtype == D::F32 { 3.0e38 } else { 2.9e38 };
        let file = |name: &str, values: &[f64]| one_tensor(dir.path(), name, dtype, values);
        let base = file("base", &[big, -big, 1.0]);
        let a = file("a", &[big, -big, 2.0]);
        let b = file("b", &[big, -big, 3.0]);
        let out = dir.path().join(format!("soup-{dtype:?}.safetensors"));
        let o = soup_merge()
            .args(["--method", "task_arithmetic", "-w", "1,1", "--base"])
            .args([&base, &a, &b])
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stderr(&o).contains("NaN or infinite"), "{}", stderr(&o));
        let (d, _, bytes) = &tensors(&out)["w"];
        assert_eq!(d, &dtype);
        assert_eq!(bytes, &encode(dtype, &[big, -big, 4.0]), "{dtype:?}");
    }
}

/// NuSLERP at an end of t (a weight of 0) with a base is `base + (x - base)`: the other model
/// is not read, but the base is, so a NaN or an infinity in it makes that element NaN (and is
/// named in a warning) where the soup held the model's finite value.
#[test]
fn nuslerp_at_an_end_still_carries_the_bases_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [D::F32, D::BF16] {
        // The unread model's own NaN must not be reported.
        let args = ["--method", "nuslerp", "-w", "0,1"];
        let (err, got) = merge_over_a_non_finite_base(dir.path(), dtype, f64::NAN, &args);
        assert!(!err.contains(&format!("a-{dtype:?}")), "{err}");
        assert!(got[0].is_nan() && got[1].is_nan(), "{dtype:?}: {got:?}");
        assert_eq!(got[2..], [0.5, -3.0], "{dtype:?}");
    }
}

/// What the command line lacks or gets wrong for a method is a usage error, as clap's are:
/// exit status 2, `kind: usage`, one line naming the flag to give, and nothing opened per
/// tensor (no tensor named).
#[test]
fn a_methods_missing_flags_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, fts) = family(tmp.path(), D::F32, 3);
    let out = tmp.path().join("never.safetensors");
    let b = base.to_str().unwrap();
    let [f0, f1, f2] = [0, 1, 2].map(|i| fts[i].to_str().unwrap());
    for (args, says) in [
        (
            vec!["--method", "slerp", "--base", b, f0],
            "needs parameter t",
        ),
        (
            vec!["--method", "ties", f0, f1],
            "needs a base model: give --base PATH",
        ),
        (vec!["--method", "model_stock", f0, f1], "give --base PATH"),
        (vec!["--method", "passthrough", f0, f1], "exactly one model"),
        (
            vec!["--method", "slerp", "--base", b, f0, f1, "--t", "0.5"],
            "exactly",
        ),
        (
            vec!["--method", "model_stock", "--base", b, f0],
            "at least two",
        ),
        (
            vec!["--method", "nuslerp", f0, f1, f2],
            "exactly two models",
        ),
        (
            vec!["--method", "ties", "--base", b, f0, "--param", "=1"],
            "give NAME=VALUE",
        ),
    ] {
        let mut cmd = soup_merge();
        cmd.args(&args).arg("-o").arg(&out).arg("--json");
        let o = cmd.output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: expected '{says}' in {err}");
        assert!(!err.contains("tensor '"), "{args:?}: {err}");
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["kind"], "usage", "{args:?}");
        assert!(!out.exists());
    }
}

/// nuslerp of opposite task vectors (v1 = -v0 exactly) keeps the base, as mergekit does: the
/// two terms cancel. Its cos was the dot product over the product of two rounded norms, an ulp
/// above -1 for these values, so sin(theta) was 1.5e-8, just over the linear threshold, and the
/// coefficients near 3e7 (with the base folded in as 1 - a - b) cancelled the base out of a
/// bf16 soup: zeros, or whatever the rounding left.
#[test]
fn nuslerp_of_opposite_task_vectors_keeps_the_base() {
    let dir = tempfile::tempdir().unwrap();
    // |v|^2 = sum (k / 1024)^2 is exact; sqrt(|v|^2)^2 rounds above it.
    let ks = [
        -172, -154, -157, -16, -114, 176, 142, -43, -72, 110, -92, 110,
    ];
    let v: Vec<f64> = ks.iter().map(|&k| k as f64 / 1024.0).collect();
    let base: Vec<f64> = (0..12).map(|j| 0.25 * (j as f64 - 5.0)).collect();
    let path = |name: &str, sign: f64| {
        let p = dir.path().join(name);
        let values: Vec<f64> = base.iter().zip(&v).map(|(b, d)| b + sign * d).collect();
        write(&p, &[spec("w", D::F32, &[4, 3], encode(D::F32, &values))]);
        p
    };
    let (b, x, y) = (
        path("b.safetensors", 0.0),
        path("x.safetensors", 1.0),
        path("y.safetensors", -1.0),
    );
    for dtype in ["bf16", "f32"] {
        let out = dir.path().join(format!("{dtype}.safetensors"));
        let o = soup_merge()
            .args(["--method", "nuslerp", "--base"])
            .arg(&b)
            .arg(&x)
            .arg(&y)
            .args(["--dtype", dtype, "-q", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{dtype}: {}", stderr(&o));
        let (d, _, bytes) = &tensors(&out)["w"];
        let got: Vec<f64> = match d {
            D::BF16 => bytes
                .chunks(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
                .collect(),
            _ => bytemuck_f32(bytes).into_iter().map(f64::from).collect(),
        };
        assert_eq!(got, base, "{dtype}");
    }
}

/// The trims and elections on 0-d tensors and on task vectors with NaN and infinities, against
/// the reference: a NaN magnitude ranks above every other (torch's order), a NaN or an
/// infinity that loses TIES' election still makes the element NaN (mergekit's `delta * mask`),
/// and a NaN L1 norm makes the rescale NaN.
#[test]
fn scalars_and_non_finite_task_vectors_match_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    for dtype in [D::F32, D::BF16] {
        let n = 3000;
        let make = |name: &str, m: usize| {
            let mut rng = Rng::new(5);
            let base: Vec<f64> = (0..n).map(|_| rng.normal() * 0.5).collect();
            let mut noise = Rng::new(50 + m as u64);
            let mut v: Vec<f64> = base
                .iter()
                .map(|b| {
                    if m == 0 {
                        *b
                    } else {
                        b + 0.05 * noise.normal()
                    }
                })
                .collect();
            if m == 1 {
                for (i, x) in v.iter_mut().enumerate() {
                    if i % 7 == 0 {
                        *x = f64::NAN;
                    } else if i % 11 == 1 {
                        *x = f64::INFINITY;
                    }
                }
            }
            let path = tmp.path().join(format!("{name}-{dtype:?}.safetensors"));
            write(
                &path,
                &[
                    spec("t", dtype, &[n], encode(dtype, &v)),
                    spec("s", dtype, &[], encode(dtype, &v[..1])),
                ],
            );
            path
        };
        let base = make("base", 0);
        let fts: Vec<PathBuf> = (1..4).map(|m| make(&format!("ft{m}"), m)).collect();
        for (method, flags, params) in [
            (
                "ties",
                vec!["--density", "0.5"],
                r#"{"parameters": {"density": 0.5}, "models": [{"weight": 1}, {"weight": 1}, {"weight": 1}]}"#,
            ),
            (
                "dare_ties",
                vec!["--density", "0.5"],
                r#"{"parameters": {"density": 0.5}, "models": [{"weight": 1}, {"weight": 1}, {"weight": 1}]}"#,
            ),
            (
                "dare_linear",
                vec!["--density", "0.5"],
                r#"{"parameters": {"density": 0.5}, "models": [{"weight": 1}, {"weight": 1}, {"weight": 1}]}"#,
            ),
            (
                "della",
                vec!["--density", "0.5", "--epsilon", "0.1"],
                r#"{"parameters": {"density": 0.5, "epsilon": 0.1}, "models": [{"weight": 1}, {"weight": 1}, {"weight": 1}]}"#,
            ),
            (
                "breadcrumbs_ties",
                vec!["--density", "0.5", "--gamma", "0.1"],
                r#"{"parameters": {"density": 0.5, "gamma": 0.1}, "models": [{"weight": 1}, {"weight": 1}, {"weight": 1}]}"#,
            ),
        ] {
            check(Case {
                method,
                base: Some(&base),
                models: &fts,
                flags: &flags,
                params,
                seed: 3,
            });
        }
    }
}
