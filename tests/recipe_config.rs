//! `--config recipe.yaml`: a mergekit linear recipe gives the same tensors as the equivalent
//! flags, is recorded in the output, and anything unsupported is an error naming it.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use safetensors::Dtype as D;

fn inputs(dir: &Path) -> Vec<PathBuf> {
    (0..3u64)
        .map(|i| {
            let mut rng = Rng::new(40 + i);
            let p = dir.join(format!("m{i}.safetensors"));
            write(
                &p,
                &[
                    spec(
                        "a.weight",
                        D::F32,
                        &[33, 17],
                        floats(&mut rng, D::F32, 33 * 17),
                    ),
                    spec(
                        "b.weight",
                        D::BF16,
                        &[1000],
                        floats(&mut rng, D::BF16, 1000),
                    ),
                    spec("c.weight", D::F16, &[7], floats(&mut rng, D::F16, 7)),
                ],
            );
            p
        })
        .collect()
}

fn recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn linear(models: &[PathBuf], weights: &[&str], extra: &str) -> String {
    let mut s = String::from("merge_method: linear\nmodels:\n");
    for (m, w) in models.iter().zip(weights) {
        s += &format!(
            "  - model: {}\n    parameters:\n      weight: {w}\n",
            m.display()
        );
    }
    s + extra
}

fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) {
    let o = run_merge(args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_recipe_gives_the_same_tensors_as_the_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let cases: [(&str, &[&str], &[&str]); 4] = [
        // mergekit normalizes by default.
        ("", &["2", "1", "1"], &["-w", "2,1,1", "--normalize"]),
        (
            "parameters:\n  normalize: true\n",
            &["0.6", "0.3", "0.1"],
            &["-w", "0.6,0.3,0.1", "--normalize"],
        ),
        (
            "parameters:\n  normalize: false\ndtype: float32\n",
            &["1.5", "-0.25", "0.5"],
            &["-w", "1.5,-0.25,0.5", "--dtype", "f32"],
        ),
        (
            "dtype: float32\nout_dtype: bfloat16\n",
            &["1", "1", "2"],
            &["-w", "1,1,2", "--normalize", "--dtype", "bf16"],
        ),
    ];
    for (i, (extra, weights, flags)) in cases.iter().enumerate() {
        let r = recipe(
            tmp.path(),
            &format!("r{i}.yaml"),
            &linear(&m, weights, extra),
        );
        let from_recipe = tmp.path().join(format!("recipe{i}.safetensors"));
        ok(&[&"--config", &r, &"-o", &from_recipe]);
        let from_flags = tmp.path().join(format!("flags{i}.safetensors"));
        let mut cmd = soup_merge();
        cmd.args(&m).args(*flags).arg("-o").arg(&from_flags);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(read(&from_recipe), read(&from_flags), "case {i}: {extra:?}");
        // The recipe is kept in the output's metadata, as written.
        let bytes = std::fs::read(&from_recipe).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        assert_eq!(
            meta["model_soup.recipe"],
            std::fs::read_to_string(&r).unwrap()
        );
    }
}

/// A model's own filtered or per-layer weight wins over a plain top-level weight, which only
/// fills in where the model's filters match nothing (mergekit resolves a parameter scope by
/// scope). The shortcut for plain linear weights used to take the top-level weight for every
/// tensor of such a model.
#[test]
fn a_models_filtered_weight_wins_over_the_top_level_weight() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let r = recipe(
        tmp.path(),
        "filtered.yaml",
        &format!(
            "merge_method: linear\nparameters: {{weight: 0.25}}\nmodels:\n  - model: {}\n    parameters:\n      weight: [{{filter: a.weight, value: 0.75}}]\n  - model: {}\ndtype: float32\n",
            m[0].display(),
            m[1].display()
        ),
    );
    let out = tmp.path().join("filtered.safetensors");
    ok(&[&"--config", &r, &"-o", &out]);
    let soup = read(&out);
    // a.weight at 0.75 and 0.25; the rest, where the filter matches nothing, at 0.25 each.
    let flags = |w: &str, name: &str| {
        let p = tmp.path().join(format!("flags-{w}-{name}.safetensors"));
        ok(&[
            &m[0],
            &m[1],
            &"-w",
            &w,
            &"--normalize",
            &"--dtype",
            &"f32",
            &"-o",
            &p,
        ]);
        read(&p).remove(name).unwrap()
    };
    assert!(
        soup["a.weight"] == flags("0.75,0.25", "a.weight"),
        "a.weight is not the soup at 0.75,0.25"
    );
    assert!(
        soup["b.weight"] == flags("0.25,0.25", "b.weight"),
        "b.weight is not the soup at 0.25,0.25"
    );
    assert!(
        soup["c.weight"] == flags("0.25,0.25", "c.weight"),
        "c.weight is not the soup at 0.25,0.25"
    );
}

/// mergekit takes a model as a path string or as the long form `{model: PATH}` /
/// `{model: {path: PATH}}` (what its own config dump writes); both name the same model.
/// The long form's LoRA, Hub revision and architecture override are refused by name.
#[test]
fn a_long_form_model_reference_is_read_as_its_path() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let short = recipe(
        tmp.path(),
        "short.yaml",
        &format!(
            "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.7}}\n  - model: {}\n    parameters: {{weight: 0.3}}\n",
            m[0].display(),
            m[1].display(),
            m[2].display()
        ),
    );
    let long = recipe(
        tmp.path(),
        "long.yaml",
        &format!(
            "merge_method: task_arithmetic\nbase_model: {{model: {{path: {}, revision: null}}}}\nmodels:\n  - model: {{model: {}}}\n    parameters: {{weight: 0.7}}\n  - model: {{model: {{path: {}}}, lora: null}}\n    parameters: {{weight: 0.3}}\n",
            m[0].display(),
            m[1].display(),
            m[2].display()
        ),
    );
    let a = tmp.path().join("short.safetensors");
    let b = tmp.path().join("long.safetensors");
    ok(&[&"--config", &short, &"-o", &a]);
    ok(&[&"--config", &long, &"-o", &b]);
    assert_eq!(read(&a), read(&b));

    let entry = |model: &str| {
        format!(
            "merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1}}\n"
        )
    };
    let x = m[1].display();
    refused(
        tmp.path(),
        &entry(&format!("{{model: {x}, lora: adapter}}")),
        &["models[0].model.lora applies a LoRA"],
    );
    refused(
        tmp.path(),
        &entry(&format!("{{model: {{path: {x}, revision: main}}}}")),
        &["models[0].model.model.revision names a Hub revision"],
    );
    refused(
        tmp.path(),
        &entry(&format!(
            "{{model: {x}, override_architecture: LlamaForCausalLM}}"
        )),
        &["models[0].model.override_architecture is not supported"],
    );
    refused(
        tmp.path(),
        &entry("{lora: adapter}"),
        &["models[0].model.lora"],
    );
    refused(
        tmp.path(),
        &entry("{revision: main}"),
        &["models[0].model.revision is not supported"],
    );
    refused(
        tmp.path(),
        &entry("{model: null}"),
        &["models[0].model has no model:"],
    );
}

#[test]
fn a_recipe_to_a_directory_records_itself_in_the_card() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    // linear doesn't use a base: mergekit merges base_model as one more model, with the
    // top-level weight, and it is the config source.
    std::fs::copy(&m[0], base.join("model.safetensors")).unwrap();
    std::fs::write(base.join("config.json"), "{\"torch_dtype\": \"float32\"}").unwrap();
    std::fs::write(base.join("tokenizer.json"), "{}").unwrap();
    let text = linear(
        &m,
        &["1", "1", "1"],
        &format!(
            "base_model: {}\nparameters: {{weight: 1}}\ndtype: bfloat16\n",
            base.display()
        ),
    );
    let r = recipe(tmp.path(), "soup.yaml", &text);
    let out = tmp.path().join("soup");
    ok(&[&"--config", &r, &"-o", &out]);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("base_model:\n- base\n"), "{card}");
    assert!(card.contains("```yaml\nmerge_method: linear\n"), "{card}");
    // The base model's config and tokenizer come along, with the recipe's dtype.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(out.join("tokenizer.json").is_file());
    let soup = read(&out.join("model.safetensors"));
    assert_eq!(soup["a.weight"].0, D::BF16);
    // Four models, the base among them: the same bytes as the flags' soup of all four.
    let flags = tmp.path().join("flags.safetensors");
    let o = soup_merge()
        .args(&m)
        .arg(base.join("model.safetensors"))
        .args(["--normalize", "--dtype", "bf16", "-o"])
        .arg(&flags)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(soup, read(&flags));
}

fn refused(dir: &Path, text: &str, says: &[&str]) {
    let r = recipe(dir, "bad.yaml", text);
    let out = dir.join("bad-out.safetensors");
    let o = run_merge(&[&"--config", &r, &"-o", &out]);
    assert_eq!(o.status.code(), Some(1), "{text}\n{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ") && err.contains("bad.yaml") && err.lines().count() == 1,
        "{err}"
    );
    for s in says {
        assert!(err.contains(s), "expected '{s}' in: {err}");
    }
    assert!(!out.exists());
}

#[test]
fn unsupported_keys_methods_and_values_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let two = &m[..2];
    let ok_models = linear(two, &["1", "1"], "");
    refused(
        tmp.path(),
        &ok_models.replace("linear", "karcher"),
        &["merge_method 'karcher'", "linear, task_arithmetic, ties"],
    );
    refused(
        tmp.path(),
        &format!("{ok_models}tokenizer_source: union\n"),
        &["key 'tokenizer_source'", "not supported"],
    );
    refused(
        tmp.path(),
        &format!("{ok_models}modules: {{}}\n"),
        &["key 'modules'"],
    );
    refused(
        tmp.path(),
        &format!("{ok_models}typo_key: 1\n"),
        &["unknown key 'typo_key'"],
    );
    refused(
        tmp.path(),
        &ok_models.replace("weight: 1\n", "weight: 1\n      density: 0.5\n"),
        &["models[0].parameters.density"],
    );
    refused(
        tmp.path(),
        &ok_models.replacen("weight: 1", "weight: [0.1, 0.9]", 1),
        &["models[0].parameters.weight is a list"],
    );
    for huge in ["1e400", "-1e400", "'1e400'", ".inf", ".nan", "'inf'"] {
        refused(
            tmp.path(),
            &ok_models.replacen("weight: 1", &format!("weight: {huge}"), 1),
            &["models[0].parameters.weight is", "not a finite number"],
        );
    }
    refused(
        tmp.path(),
        &format!("{ok_models}dtype: int8\n"),
        &["dtype 'int8'"],
    );
    refused(
        tmp.path(),
        &format!("{ok_models}parameters:\n  int8_mask: true\n"),
        &["parameters.int8_mask"],
    );
    refused(tmp.path(), "merge_method: linear\nmodels:\n  - model: org/not-downloaded\n    parameters: {weight: 1}\n", &["org/not-downloaded", "does not download"]);
    refused(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: ~/models/ft-a\n    parameters: {weight: 1}\n",
        &[
            "models[0].model '~/models/ft-a'",
            "~, which is not expanded",
            "in full",
        ],
    );
    refused(
        tmp.path(),
        "merge_method: linear\nmodels: [\n",
        &["not valid YAML"],
    );
    // A model listed twice, however spelled (mergekit refuses it too).
    let link = tmp.path().join("hard-link.safetensors");
    std::fs::hard_link(&m[0], &link).unwrap();
    let dotted = tmp.path().join(".").join(m[0].file_name().unwrap());
    for again in [&m[0], &dotted, &link] {
        refused(
            tmp.path(),
            &linear(
                &[m[0].clone(), m[1].clone(), again.clone()],
                &["1", "1", "1"],
                "",
            ),
            &["models[2].model", "same model as models[0]", "listed twice"],
        );
    }
    // A model directory and its own weights file are one model.
    let dir = tmp.path().join("model-dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&m[2], dir.join("model.safetensors")).unwrap();
    refused(
        tmp.path(),
        &linear(
            &[dir.clone(), m[1].clone(), dir.join("model.safetensors")],
            &["1", "1", "1"],
            "",
        ),
        &["models[2].model", "same model as models[0]"],
    );
    // The base listed twice among the models (mergekit refuses that too).
    refused(
        tmp.path(),
        &format!(
            "merge_method: ties\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\n  - model: {}\n  - model: {}\nparameters: {{weight: 1, density: 0.5}}\n",
            dir.display(),
            dir.display(),
            dir.join("model.safetensors").display(),
            m[0].display(),
            m[1].display()
        ),
        &["models[1].model", "base_model again", "models[0]"],
    );
}

#[test]
fn config_conflicts_with_inputs_and_weights_on_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let r = recipe(tmp.path(), "r.yaml", &linear(&m, &["1", "1", "1"], ""));
    let out = tmp.path().join("o.safetensors");
    for extra in [
        vec![m[0].as_os_str()],
        vec!["-w".as_ref(), "1,1,1".as_ref()],
        vec!["--dtype".as_ref(), "f16".as_ref()],
        // The recipe's base_model is the base: a --base beside it would only move the config.
        vec!["--base".as_ref(), tmp.path().as_os_str()],
    ] {
        let o = soup_merge()
            .arg("--config")
            .arg(&r)
            .args(&extra)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--config"), "{}", stderr(&o));
    }
    assert!(!out.exists());
}

#[test]
fn a_hub_base_model_is_refused_since_nothing_is_downloaded() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let text = linear(
        &m[..2],
        &["1", "1"],
        "base_model: mistralai/Mistral-7B-v0.1\nparameters: {weight: 1}\n",
    );
    let r = recipe(tmp.path(), "hub.yaml", &text);
    let out = tmp.path().join("soup");
    let o = run_merge(&[&"--config", &r, &"-o", &out]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("mistralai/Mistral-7B-v0.1") && err.contains("does not download"),
        "{err}"
    );
    assert!(!out.exists());
}

/// Without `dtype`, mergekit computes each tensor in the promotion of its inputs' dtypes
/// (torch's `promote_types`) and writes that: a bf16 base with an f32 fine-tune gives f32, and
/// so does bf16 with f16. The command line keeps the first input's dtype, as documented.
#[test]
fn a_recipe_without_dtype_writes_the_promoted_dtype_as_mergekit_does() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(77);
    let values: Vec<Vec<f64>> = (0..2)
        .map(|_| (0..96).map(|_| rng.normal()).collect())
        .collect();
    let model = |name: &str, dtypes: [D; 2], v: &[f64]| {
        let p = tmp.path().join(name);
        write(
            &p,
            &[
                spec("a.weight", dtypes[0], &[96], encode(dtypes[0], v)),
                spec("b.weight", dtypes[1], &[96], encode(dtypes[1], v)),
                spec("steps", D::I64, &[1], 7i64.to_le_bytes().to_vec()),
            ],
        );
        p
    };
    let bf = model("bf.safetensors", [D::BF16, D::BF16], &values[0]);
    let wide = model("wide.safetensors", [D::F32, D::F16], &values[1]);
    let out = tmp.path().join("out.safetensors");
    let r = recipe(
        tmp.path(),
        "r.yml",
        &linear(&[bf.clone(), wide.clone()], &["1", "1"], ""),
    );
    ok(&[&"--config", &r, &"-o", &out, &"-q"]);
    let got = read(&out);
    assert_eq!(got["a.weight"].0, D::F32);
    assert_eq!(got["b.weight"].0, D::F32);
    assert_eq!(got["steps"].0, D::I64);
    // The values: the mean of the two inputs as stored, rounded once to f32.
    let stored = |d: D, v: &[f64]| -> Vec<f64> {
        let bytes = encode(d, v);
        match d {
            D::BF16 => bytes
                .chunks(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            D::F16 => bytes
                .chunks(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            _ => bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
        }
    };
    for (name, wide_dtype) in [("a.weight", D::F32), ("b.weight", D::F16)] {
        let (x, y) = (stored(D::BF16, &values[0]), stored(wide_dtype, &values[1]));
        let want: Vec<u8> = x
            .iter()
            .zip(&y)
            .flat_map(|(a, b)| (((a + b) / 2.0) as f32).to_le_bytes())
            .collect();
        assert_eq!(got[name].2, want, "{name}");
    }
    // dtype: in the recipe still decides.
    let r = recipe(
        tmp.path(),
        "r16.yml",
        &linear(
            &[bf.clone(), wide.clone()],
            &["1", "1"],
            "dtype: bfloat16\n",
        ),
    );
    ok(&[&"--config", &r, &"-o", &out, &"-q", &"--force"]);
    assert_eq!(read(&out)["a.weight"].0, D::BF16);
    // The command line keeps the first input's.
    ok(&[&bf, &wide, &"-o", &out, &"-q", &"--force"]);
    let got = read(&out);
    assert_eq!((got["a.weight"].0, got["b.weight"].0), (D::BF16, D::BF16));
}

/// Runs soup-merge with its address space capped, so that a recipe that blows up in memory
/// fails the test instead of the machine.
fn run_merge_capped(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -v 1000000 && exec \"$0\" \"$@\""])
        .arg(soup_merge_path());
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run soup-merge")
}

#[test]
fn an_alias_bomb_is_refused_before_it_is_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    // 40 000 aliases of a 40 000-item list: 160 KB of text, 1.6 billion values expanded, and
    // under serde_yaml's own repetition limit.
    let n = 40_000;
    let text = format!(
        "x: &x [{}]\nmerge_method: linear\nmodels:\n  - model: {}\n    parameters:\n      weight: [{}]\n",
        vec!["1"; n].join(","),
        m[0].display(),
        vec!["*x"; n].join(",")
    );
    let r = recipe(tmp.path(), "bomb.yaml", &text);
    let out = tmp.path().join("out.safetensors");
    let o = run_merge_capped(&[&"--config", &r, &"-o", &out]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        err.contains("bomb.yaml") && err.contains("aliases"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_huge_value_is_quoted_short_in_the_one_error_line() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let huge = format!("[{}]", vec!["0.5"; 100_000].join(","));
    for extra in [
        format!("random_seed: {huge}\n"),
        format!("dtype: {huge}\n"),
        format!("tokenizer_source: {huge}\n"),
        format!("parameters:\n  weight: [{huge}]\n"),
    ] {
        let text = linear(&m[..2], &["1", "1"], &extra);
        let r = recipe(tmp.path(), "huge.yaml", &text);
        let o = run_merge(&[&"--config", &r, &"-o", &tmp.path().join("out.safetensors")]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}", &err[..err.len().min(500)]);
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1 && err.len() < 600,
            "{} bytes: {}",
            err.len(),
            &err[..err.len().min(500)]
        );
        assert!(err.contains("0.5 ") && err.contains("..."), "{err}");
    }
    // And a huge string where a name goes.
    let long = "x".repeat(100_000);
    for extra in [
        format!("dtype: {long}\n"),
        format!("merge_method: {long}\n"),
    ] {
        let text = linear(&m[..2], &["1", "1"], &extra).replacen("merge_method: linear\n", "", 1);
        let text = if extra.starts_with("dtype") {
            format!("merge_method: linear\n{text}")
        } else {
            text
        };
        let r = recipe(tmp.path(), "huge.yaml", &text);
        let o = run_merge(&[&"--config", &r, &"-o", &tmp.path().join("out.safetensors")]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{}", &err[..err.len().min(500)]);
        assert!(
            err.lines().count() == 1 && err.len() < 600 && err.contains("xxx..."),
            "{} bytes: {}",
            err.len(),
            &err[..err.len().min(500)]
        );
    }
}

#[test]
fn a_recipe_of_many_models_is_checked_in_linear_time() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 000 entries: comparing every pair for repeats took minutes (4 000 took 38 s).
    let mut text = String::from("merge_method: linear\nparameters: {weight: 1}\nmodels:\n");
    for i in 0..20_000 {
        text += &format!(
            "  - model: {}\n",
            tmp.path().join(format!("m{i}")).display()
        );
    }
    text += &format!("  - model: {}\n", tmp.path().join("m7").display());
    let r = recipe(tmp.path(), "many.yaml", &text);
    let mut child = soup_merge()
        .args(["--config".as_ref(), r.as_os_str(), "--dry-run".as_ref()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(20) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("checking 20 000 models took over 20 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("models[20000].model") && err.contains("same model as models[7]"),
        "{err}"
    );
}

/// A relative model path that exists beside the recipe, run from another folder: the error
/// says paths are read from the working directory, not that the model must be downloaded.
#[test]
fn a_relative_path_beside_the_recipe_is_explained() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    std::fs::copy(&ft, tmp.path().join("mine.safetensors")).unwrap();
    refused(
        tmp.path(),
        "merge_method: linear\nmodels:\n  - model: mine.safetensors\n    parameters: {weight: 1}\n",
        &[
            "models[0].model mine.safetensors",
            "working directory",
            "run from there",
        ],
    );
}

/// A whole number past 64 bits is named with its key and the range, not left as a parser's
/// "invalid type ... as u128".
#[test]
fn a_number_past_64_bits_is_named_with_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    refused(
        tmp.path(),
        &format!(
            "merge_method: linear\nrandom_seed: 18446744073709551616\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n",
            ft.display()
        ),
        &["random_seed", "past 64 bits", "below 2^64"],
    );
}

/// A recipe path that is a directory or a FIFO is refused without blocking, as a recipe
/// error (the same `--json` kind as a recipe that is not YAML).
#[test]
fn a_recipe_that_is_not_a_regular_file_is_a_recipe_error() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.unwrap().success());
    let out = tmp.path().join("o.safetensors");
    for r in [tmp.path().to_path_buf(), fifo] {
        let o = run_merge(&[&"--config", &r, &"-o", &out, &"--json"]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["kind"], "recipe", "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("not a regular file"),
            "{v}"
        );
    }
}

/// The YAML parser's time grows with the square of the nesting (a one-line file of 200 000
/// brackets took minutes), so deep nesting is refused before parsing, apostrophes and quotes
/// on the line notwithstanding; comment lines nest nothing, whatever brackets they hold.
#[test]
fn deep_nesting_is_refused_before_parsing_and_comment_lines_nest_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = |prefix: &str| {
        format!(
            "merge_method: linear\nmodels: [{prefix}{}{}]\n",
            "[".repeat(200_000),
            "]".repeat(200_000)
        )
    };
    for prefix in ["", "x, don't, ", "\"a #\", "] {
        let r = recipe(tmp.path(), "deep.yaml", &deep(prefix));
        let start = std::time::Instant::now();
        let o = run_merge(&[&"--config", &r, &"-o", &tmp.path().join("o.safetensors")]);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{prefix:?}: {:?}",
            start.elapsed()
        );
        assert_eq!(o.status.code(), Some(1), "{prefix:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("nests deeper than 32 levels"),
            "{}",
            stderr(&o)
        );
    }
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    let mut text = String::from("merge_method: linear\n");
    for _ in 0..40 {
        text += "# layers [0, 8) use the first value\n  # {unbalanced too\n";
    }
    text += &format!(
        "models:\n  - model: {}\n    parameters: {{weight: 1}}\n",
        ft.display()
    );
    let r = recipe(tmp.path(), "commented.yaml", &text);
    let o = run_merge(&[&"--config", &r, &"--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A chat template given as a block scalar is Jinja: tool-calling templates indent their
/// nested `{%- if %}` blocks past the limit and open JSON braces in strings they close far
/// later, or never. Its lines nest nothing in the YAML, so they pass; a `|` line that only
/// looks like a block scalar's start (inside a multi-line quoted string, or a flow list)
/// still hides no bracket bomb from the check.
#[test]
fn a_block_scalar_chat_template_nests_nothing_but_a_fake_one_hides_no_bomb() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    let head = format!(
        "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n",
        ft.display()
    );
    let mut jinja = String::new();
    for i in 0..20 {
        jinja += &format!("{}{{%- if tools[{i}] %}}\n", "    ".repeat(i));
    }
    for i in (0..20).rev() {
        jinja += &format!(
            "{}{{{{- '<tool_call>\\n{{\"name\": \"' + tools[{i}].name + '\", [' }}}}\n",
            "    ".repeat(i + 1)
        );
    }
    let block = |header: &str| {
        let mut s = format!("{header}\n");
        for line in jinja.lines() {
            s += &format!("  {line}\n");
        }
        s
    };
    for text in [
        format!("{head}{}", block("chat_template: |")),
        format!(
            "{}{head}dtype: bfloat16\n",
            block("chat_template: |-  # tools")
        ),
    ] {
        let r = recipe(tmp.path(), "template.yaml", &text);
        let o = run_merge(&[&"--config", &r, &"--dry-run"]);
        assert!(o.status.success(), "{text}\n{}", stderr(&o));
    }
    let bomb = format!("{}{}", "[".repeat(200_000), "]".repeat(200_000));
    for fake in [
        "a:\n  key: \"abc\nx: |\n  \"\n  b: BOMB\n",
        "key: \"abc\n x: |\n  \" BOMB\n",
        "key: 'it''s\n x: >\n  '\n  BOMB\n",
        "chat_template: [ \"]\",\n  x: |\n   BOMB\n",
    ] {
        let r = recipe(
            tmp.path(),
            "fake.yaml",
            &format!("{head}{fake}").replace("BOMB", &bomb),
        );
        let start = std::time::Instant::now();
        let o = run_merge(&[&"--config", &r, &"--dry-run"]);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        // Refused as deep, unless the text is wrong YAML before the bomb: then the message is
        // the one for the same text with a shallow list in its place.
        let shallow = recipe(
            tmp.path(),
            "fake.yaml",
            &format!("{head}{fake}").replace("BOMB", "[[1]]"),
        );
        let shallow = stderr(&run_merge(&[&"--config", &shallow, &"--dry-run"]));
        if shallow.contains("is not valid YAML") {
            assert_eq!(stderr(&o), shallow);
        } else {
            assert!(
                stderr(&o).contains("nests deeper than 32 levels"),
                "{}",
                stderr(&o)
            );
        }
    }
}

/// Three models of `layers` layers (`model.layers.N`) plus an embedding and a head, as a
/// LazyMergekit recipe sees a Llama.
fn layered(dir: &Path, layers: usize) -> Vec<PathBuf> {
    (0..3u64)
        .map(|i| {
            let mut rng = Rng::new(90 + i);
            let p = dir.join(format!("l{layers}-{i}.safetensors"));
            let mut tensors = vec![
                spec(
                    "model.embed_tokens.weight",
                    D::BF16,
                    &[16, 8],
                    floats(&mut rng, D::BF16, 128),
                ),
                spec(
                    "lm_head.weight",
                    D::BF16,
                    &[16, 8],
                    floats(&mut rng, D::BF16, 128),
                ),
            ];
            for l in 0..layers {
                for part in ["self_attn.q_proj", "mlp.up_proj"] {
                    tensors.push(spec(
                        &format!("model.layers.{l}.{part}.weight"),
                        D::BF16,
                        &[8, 8],
                        floats(&mut rng, D::BF16, 64),
                    ));
                }
            }
            write(&p, &tensors);
            p
        })
        .collect()
}

/// LazyMergekit's SLERP recipe, and every method's recipe written with `slices:`: one slice
/// whose sources take every layer is the `models:` recipe (mergekit turns `models` into
/// exactly that), so the outputs are the same bytes.
#[test]
fn one_slice_of_whole_models_merges_as_the_models_recipe_does() {
    let tmp = tempfile::tempdir().unwrap();
    let m = layered(tmp.path(), 6);
    let (a, b, c) = (m[0].display(), m[1].display(), m[2].display());
    let t = "parameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\n";
    let cases = [
        (
            format!("slices:\n  - sources:\n      - model: {a}\n        layer_range: [0, 6]\n      - model: {b}\n        layer_range: [0, 6]\nmerge_method: slerp\nbase_model: {a}\n{t}dtype: bfloat16\n"),
            format!("models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\n{t}dtype: bfloat16\n"),
        ),
        (
            format!("merge_method: ties\nslices:\n  - base_model: {a}\n    parameters: {{density: 0.5}}\n    sources:\n      - {{model: {b}, layer_range: [0, 6], parameters: {{weight: [0.2, 0.8]}}}}\n      - {{model: {c}, layer_range: [0, 6], parameters: {{weight: 0.5, density: 0.7}}}}\n"),
            format!("merge_method: ties\nbase_model: {a}\nparameters: {{density: 0.5}}\nmodels:\n  - {{model: {b}, parameters: {{weight: [0.2, 0.8]}}}}\n  - {{model: {c}, parameters: {{weight: 0.5, density: 0.7}}}}\n"),
        ),
        (
            format!("merge_method: linear\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [0, 6], parameters: {{weight: 1}}}}\n      - {{model: {b}, layer_range: [0, 6], parameters: {{weight: 3}}}}\n"),
            format!("merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n  - {{model: {b}, parameters: {{weight: 3}}}}\n"),
        ),
        // mergekit's layer_range is pydantic's Tuple[int, int], which reads quoted numbers
        // (these used to be refused).
        (
            format!("merge_method: linear\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [\"0\", \"6\"], parameters: {{weight: 1}}}}\n      - {{model: {b}, layer_range: ['0', 6.0], parameters: {{weight: '3'}}}}\n"),
            format!("merge_method: linear\nmodels:\n  - {{model: {a}, parameters: {{weight: 1}}}}\n  - {{model: {b}, parameters: {{weight: 3}}}}\n"),
        ),
    ];
    for (i, (sliced, listed)) in cases.iter().enumerate() {
        let mut outs = Vec::new();
        for (name, text) in [("sliced", sliced), ("listed", listed)] {
            let r = recipe(tmp.path(), &format!("{name}{i}.yaml"), text);
            let out = tmp.path().join(format!("{name}{i}.safetensors"));
            ok(&[&"--config", &r, &"-o", &out]);
            outs.push(read(&out));
        }
        assert_eq!(outs[0], outs[1], "{sliced}");
    }
}

/// A model without the weight a method needs is named where the recipe gives it: recipes list
/// the base among the models (LazyMergekit's DARE-TIES template puts it first), so the n-th
/// model besides the base is not `models[n]`. The message named `models[0]` for `models[1]`.
#[test]
fn a_model_without_a_weight_is_named_where_the_recipe_gives_it() {
    let tmp = tempfile::tempdir().unwrap();
    let m = layered(tmp.path(), 4);
    let (a, b, c) = (m[0].display(), m[1].display(), m[2].display());
    refused(
        tmp.path(),
        &format!("merge_method: ties\nbase_model: {a}\nmodels:\n  - model: {a}\n    # no parameters for the base\n  - model: {b}\n    parameters: {{density: 0.5}}\n  - model: {c}\n    parameters: {{weight: 0.5, density: 0.5}}\n"),
        &["models[1] has none (give models[1].parameters.weight, or a top-level parameters.weight)"],
    );
    refused(
        tmp.path(),
        &format!("merge_method: task_arithmetic\nbase_model: {a}\nslices:\n  - sources:\n      - {{model: {a}, layer_range: [0, 4]}}\n      - {{model: {b}, layer_range: [0, 4], parameters: {{weight: 1}}}}\n      - {{model: {c}, layer_range: [0, 4]}}\n"),
        &["slices[0].sources[2] has none (give slices[0].sources[2].parameters.weight"],
    );
}

#[test]
fn a_slice_that_is_not_every_layer_is_refused_from_the_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let m = layered(tmp.path(), 4);
    let (a, b) = (m[0].display(), m[1].display());
    let slerp = |range: &str, second: &str| {
        format!("merge_method: slerp\nbase_model: {a}\nparameters: {{t: 0.5}}\nslices:\n  - sources:\n      - {{model: {a}, layer_range: {range}}}\n      - {{model: {second}, layer_range: {range}}}\n")
    };
    // 32 layers claimed (LazyMergekit's template, unedited) for models of 4.
    refused(
        tmp.path(),
        &slerp("[0, 32]", &b.to_string()),
        &[
            "slices[0].sources[0].layer_range is [0, 32]",
            "has 4 layers",
            "give [0, 4]",
        ],
    );
    // Part of the layers: a frankenmerge, not a soup.
    refused(
        tmp.path(),
        &slerp("[0, 2]", &b.to_string()),
        &["has 4 layers"],
    );
    // A source that doesn't exist is named by its place in the slice.
    refused(
        tmp.path(),
        &slerp("[0, 4]", "/nonexistent/model"),
        &[
            "slices[0].sources[1].model /nonexistent/model",
            "not a local file",
        ],
    );
    // Models without layer indices can't be sliced.
    let flat = inputs(tmp.path());
    refused(
        tmp.path(),
        &format!("merge_method: linear\nparameters: {{weight: 1}}\nslices:\n  - sources:\n      - {{model: {}, layer_range: [0, 4]}}\n", flat[0].display()),
        &["no tensor name", "layer index", "models:"],
    );
}

/// `chat_template`: `auto` gives the output the template most models have (trimmed, as
/// mergekit takes it), text is taken as it is, and both reach `chat_template.jinja` and a
/// `tokenizer_config.json` that names a template; a template the copied tokenizer already has
/// changes nothing, and mergekit's short names are refused.
#[test]
fn a_recipes_chat_template_reaches_the_outputs_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    // Three model directories: the base's tokenizer has no template; two fine-tunes share one,
    // written once in tokenizer_config.json and once as chat_template.jinja.
    let shared = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}";
    let dirs: Vec<PathBuf> = ["base", "ft1", "ft2"]
        .iter()
        .zip(&m)
        .map(|(name, weights)| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::copy(weights, d.join("model.safetensors")).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
            std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
            let config = if *name == "ft1" {
                serde_json::json!({"model_max_length": 64, "chat_template": format!("\n{shared}\n")})
            } else {
                serde_json::json!({"model_max_length": 64})
            };
            std::fs::write(d.join("tokenizer_config.json"), config.to_string()).unwrap();
            if *name == "ft2" {
                std::fs::write(d.join("chat_template.jinja"), shared).unwrap();
            }
            d
        })
        .collect();
    let text = |template: &str| {
        format!(
            "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - {{model: {}, parameters: {{weight: 0.5}}}}\n  - {{model: {}, parameters: {{weight: 0.5}}}}\nchat_template: {template}\n",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        )
    };
    let run = |name: &str, template: &str| {
        let r = recipe(tmp.path(), &format!("{name}.yaml"), &text(template));
        let out = tmp.path().join(name);
        let o = run_merge(&[&"--config", &r, &"-o", &out, &"--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    // auto: the fine-tunes' template (trimmed), though the base's tokenizer is the one copied.
    let out = run("auto", "auto");
    assert_eq!(
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        shared
    );
    // The base's tokenizer_config.json names no template, so it is copied as it is.
    assert_eq!(
        std::fs::read(out.join("tokenizer_config.json")).unwrap(),
        std::fs::read(dirs[0].join("tokenizer_config.json")).unwrap()
    );
    // Text, into a tokenizer_config.json that names a template: both carry it.
    let own = "{% for m in messages %}{{ m.content }}\n{% endfor %}";
    let mut cases = text(&format!("{own:?}"));
    cases = cases.replace(
        &format!("base_model: {}", dirs[0].display()),
        &format!("base_model: {}", dirs[1].display()),
    );
    cases = cases.replace(
        &format!("model: {}, parameters", dirs[1].display()),
        &format!("model: {}, parameters", dirs[0].display()),
    );
    let r = recipe(tmp.path(), "text.yaml", &cases);
    let out = tmp.path().join("text");
    ok(&[&"--config", &r, &"-o", &out]);
    assert_eq!(
        std::fs::read_to_string(out.join("chat_template.jinja")).unwrap(),
        own
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(config["chat_template"], own);
    assert_eq!(config["model_max_length"], 64);
    // A base whose tokenizer already has the chosen template: its files are copied as they are.
    let same = text("auto")
        .replace(
            &format!("base_model: {}", dirs[0].display()),
            &format!("base_model: {}", dirs[2].display()),
        )
        .replace(
            &format!("model: {}, parameters", dirs[2].display()),
            &format!("model: {}, parameters", dirs[0].display()),
        );
    let r = recipe(tmp.path(), "same.yaml", &same);
    let out = tmp.path().join("same");
    ok(&[&"--config", &r, &"-o", &out]);
    for f in ["chat_template.jinja", "tokenizer_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(dirs[2].join(f)).unwrap(),
            "{f}"
        );
    }
    // A file output has no tokenizer: a warning says the template was not written.
    let r = recipe(tmp.path(), "file.yaml", &text("auto"));
    let out = tmp.path().join("file.safetensors");
    let o = run_merge(&[&"--config", &r, &"-o", &out, &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["kind"] == "chat-template"),
        "{report}"
    );
    // mergekit's bundled names, and values of the wrong kind, are refused naming the key.
    refused(
        tmp.path(),
        &text("chatml"),
        &["chat_template 'chatml'", "Jinja text"],
    );
    refused(tmp.path(), &text("[1]"), &["chat_template is", "not auto"]);
}

/// `tokenizer_source` naming another of the recipe's models: the output gets that model's
/// tokenizer files (and none of the other's) with the base's config, as mergekit takes the
/// tokenizer from it; a weights file, or a folder without a tokenizer, is refused naming it.
#[test]
fn a_tokenizer_source_gives_the_output_that_models_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let dir = |name: &str, weights: &Path, files: &[(&str, &str)]| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::copy(weights, d.join("model.safetensors")).unwrap();
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        d
    };
    let base = dir(
        "base",
        &m[0],
        &[
            (
                "config.json",
                "{\"torch_dtype\": \"float32\", \"who\": \"base\"}",
            ),
            ("tokenizer.json", "{\"who\": \"base\"}"),
            ("tokenizer.model", "base sentencepiece"),
            ("tokenizer_config.json", "{\"who\": \"base\"}"),
        ],
    );
    let ft = dir(
        "ft",
        &m[1],
        &[
            ("config.json", "{\"who\": \"ft\"}"),
            ("tokenizer.json", "{\"who\": \"ft\"}"),
            ("tokenizer_config.json", "{\"who\": \"ft\"}"),
            ("special_tokens_map.json", "{\"who\": \"ft\"}"),
        ],
    );
    let bare = dir("bare", &m[2], &[]);
    let text = |source: &Path| {
        format!(
            "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - {{model: {}, parameters: {{weight: 0.5}}}}\n  - {{model: {}, parameters: {{weight: 0.5}}}}\ntokenizer_source: {}\n",
            base.display(),
            ft.display(),
            bare.display(),
            source.display()
        )
    };
    let r = recipe(tmp.path(), "tok.yaml", &text(&ft));
    let out = tmp.path().join("out");
    ok(&[&"--config", &r, &"-o", &out]);
    let read_out = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert!(read_out("config.json").contains("\"who\": \"base\""));
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        assert_eq!(
            read_out(f),
            std::fs::read_to_string(ft.join(f)).unwrap(),
            "{f}"
        );
    }
    // The base's sentencepiece file belongs to the base's tokenizer: not mixed in.
    assert!(!out.join("tokenizer.model").exists());
    // Naming the base is the default: the base's tokenizer.
    let r = recipe(tmp.path(), "tok-base.yaml", &text(&base));
    let out2 = tmp.path().join("out2");
    ok(&[&"--config", &r, &"-o", &out2]);
    assert!(out2.join("tokenizer.model").is_file());
    // A model without a tokenizer can't give one to a directory output.
    let r = recipe(tmp.path(), "tok-bare.yaml", &text(&bare));
    let out3 = tmp.path().join("out3");
    let o = run_merge(&[&"--config", &r, &"-o", &out3]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ")
            && err.contains("tok-bare.yaml")
            && err.contains("has no tokenizer files"),
        "{err}"
    );
    assert!(!out3.exists());
    // Nor can a model that is not in the recipe.
    refused(
        tmp.path(),
        &text(&tmp.path().join("elsewhere")),
        &["tokenizer_source", "one of the recipe's models"],
    );
}

/// The weights a recipe's dry run plans for its inputs, as `--json` reports them.
fn planned_weights(dir: &Path, text: &str) -> Result<Vec<f64>, String> {
    let r = recipe(dir, "spelt.yaml", text);
    let o = run_merge(&[&"--config", &r, &"--dry-run", &"--json"]);
    if !o.status.success() {
        return Err(stderr(&o));
    }
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    Ok(plan["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["weight"].as_f64().unwrap())
        .collect())
}

/// A weight spelt as mergekit 0.1.5 reads it (PyYAML's YAML 1.1 for unquoted scalars, then
/// pydantic's float) is merged with the value mergekit uses, and one it refuses is refused with
/// one line naming the file, the key and the fix. A quoted "yes" used to be merged as 1.
#[test]
fn a_weight_is_merged_with_the_value_mergekit_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let spelt = |w: &str| linear(&m[..2], &[w, "1"], "parameters:\n  normalize: false\n");
    for (w, want) in [
        ("0.25", 0.25),
        ("\"0.25\"", 0.25),
        ("\" 0.25 \"", 0.25),
        ("\"25e-2\"", 0.25),
        ("25e-2", 0.25),
        ("\".25\"", 0.25),
        (".25", 0.25),
        ("1_000", 1000.0),
        ("\"1_000\"", 1000.0),
        // YAML 1.1's octal, but pydantic's decimal once quoted.
        ("010", 8.0),
        ("\"010\"", 10.0),
        ("0x10", 16.0),
        ("+1", 1.0),
        ("1.", 1.0),
        ("\"1\"", 1.0),
        ("1:30", 90.0),
        ("yes", 1.0),
        ("on", 1.0),
        ("off", 0.0),
        ("True", 1.0),
    ] {
        assert_eq!(
            planned_weights(tmp.path(), &spelt(w)).unwrap(),
            [want, 1.0],
            "weight: {w}"
        );
    }
    for (w, says) in [
        ("\"yes\"", "the string \"yes\""),
        ("'true'", "the string \"true\""),
        ("y", "the string \"y\""),
        ("t", "the string \"t\""),
        ("0o10", "the string \"0o10\""),
        ("\"0x10\"", "the string \"0x10\""),
        ("\"1_000_\"", "the string \"1_000_\""),
    ] {
        refused(
            tmp.path(),
            &spelt(w),
            &[
                "models[0].parameters.weight is",
                says,
                "which mergekit refuses for a number: give a number such as 0.5",
            ],
        );
    }
}

/// A true/false parameter takes pydantic's spellings (t/f, y/n, yes/no, on/off, 0/1, in any
/// case) as mergekit does, and merges as the bool they mean; t and f used to be refused.
#[test]
fn a_true_false_parameter_takes_mergekits_spellings_and_merges_as_their_bool() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let spelt = |v: &str| {
        linear(
            &m[..2],
            &["3", "1"],
            &format!("parameters:\n  normalize: {v}\n"),
        )
    };
    for v in [
        "true", "t", "T", "\"t\"", "y", "YES", "on", "1", "\"1\"", "1.0",
    ] {
        assert_eq!(
            planned_weights(tmp.path(), &spelt(v)).unwrap(),
            [0.75, 0.25],
            "{v}"
        );
    }
    for v in ["false", "f", "\"F\"", "n", "no", "Off", "0", "\"0\"", "0.0"] {
        assert_eq!(
            planned_weights(tmp.path(), &spelt(v)).unwrap(),
            [3.0, 1.0],
            "{v}"
        );
    }
    for v in ["2", "0.5", "\"1.0\"", "\" yes\"", "maybe"] {
        refused(
            tmp.path(),
            &spelt(v),
            &[
                "parameters.normalize is",
                "not true or false",
                "give true or false",
            ],
        );
    }
    // The merged tensors follow the bool: ties' rescale-free normalize, t against true.
    let base = &m[2];
    let ties = |v: &str| {
        format!(
            "merge_method: ties\nbase_model: {}\nparameters: {{normalize: {v}, int8_mask: Y}}\nmodels:\n  - {{model: {}, parameters: {{weight: 0.7, density: \"0.5\"}}}}\n  - {{model: {}, parameters: {{weight: 0.6, density: 0.5}}}}\n",
            base.display(),
            m[0].display(),
            m[1].display()
        )
    };
    let merged = |name: &str, text: &str| {
        let r = recipe(tmp.path(), &format!("{name}.yaml"), text);
        let out = tmp.path().join(format!("{name}.safetensors"));
        ok(&[&"--config", &r, &"-o", &out]);
        read(&out)
    };
    let t = merged("t", &ties("t"));
    assert_eq!(t, merged("true", &ties("true")));
    assert_eq!(merged("f", &ties("f")), merged("false", &ties("false")));
    assert_ne!(t, merged("false2", &ties("false")));
}

/// mergekit never reads the base model's own parameters (they are the other models'), so any
/// scalar there is taken, as mergekit takes it.
#[test]
fn the_base_entrys_own_values_are_not_read() {
    let tmp = tempfile::tempdir().unwrap();
    let m = inputs(tmp.path());
    let text = format!(
        "merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {base}\n    parameters: {{weight: \"yes\"}}\n  - model: {}\n    parameters: {{weight: 0.5}}\n",
        m[0].display(),
        base = m[2].display(),
    );
    let r = recipe(tmp.path(), "base.yaml", &text);
    let o = run_merge(&[&"--config", &r, &"--dry-run", &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let weights: Vec<_> = plan["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["weight"].as_f64())
        .collect();
    assert_eq!(weights, [None, Some(0.5)]);
}

/// A recipe whose chat template is a deep block scalar, with a YAML mistake elsewhere, is
/// refused with the parser's own words for the mistake, at its line and column, as it is
/// beside a shallow template (it used to read "nests deeper than 32 levels"); a bracket bomb
/// beside the same template is still refused as deep, at once.
#[test]
fn a_yaml_mistake_beside_a_block_scalar_template_is_named_where_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let ft = repo_root().join("fixtures/models/ft-lr2e-3.safetensors");
    let mut template = String::from("chat_template: |\n");
    for i in 0..40 {
        template += &format!("  {}{{%- if tools[{i}] %}}{{\"name\": [\n", "  ".repeat(i));
    }
    // The same lines without a bracket, which the nesting check passes at once.
    let shallow = template.replace(['[', ']', '{', '}'], "(");
    let head = format!(
        "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n",
        ft.display()
    );
    // A missing space after a colon, and an unclosed flow list, on line 46.
    let mistakes = [
        |head: &str, t: &str| format!("{head}{t}dtype:bfloat16\nout_dtype: float32\n"),
        |head: &str, t: &str| format!("{t}{head}dtype: [bfloat16\n"),
    ];
    for mistake in mistakes {
        let error = |t: &str| {
            let r = recipe(tmp.path(), "bad.yaml", &mistake(&head, t));
            stderr(&run_merge(&[&"--config", &r, &"--dry-run"]))
        };
        let want = error(&shallow);
        assert!(
            want.contains("is not valid YAML") && want.contains("line 46 column"),
            "{want}"
        );
        refused(tmp.path(), &mistake(&head, &template), &[]);
        assert_eq!(error(&template), want);
    }
    let bomb = format!(
        "{head}{template}dtype: {}{}\n",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let start = std::time::Instant::now();
    refused(tmp.path(), &bomb, &["nests deeper than 32 levels"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
