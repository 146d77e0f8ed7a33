//! soup-eval on bad input: each case gets one clear `error:` line naming the file, tensor or
//! flag, a non-zero exit status, and no panic.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{spec, write};
use safetensors::Dtype as D;

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join("fixtures")
        .join(name)
}

fn base() -> PathBuf {
    fixture("models/base.safetensors")
}

fn val() -> PathBuf {
    fixture("digits/val.safetensors")
}

fn soup_eval(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run soup-eval")
}

/// Asserts exit status 1 (2 for a usage error), one `error:` line containing every needle,
/// and no panic.
fn assert_error(out: &Output, needles: &[&str]) -> String {
    let err = common::stderr(out);
    assert!(matches!(out.status.code(), Some(1 | 2)), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    for n in needles {
        assert!(line.contains(n), "'{line}' lacks '{n}'");
    }
    line.to_string()
}

/// The base checkpoint's tensors, changed by `edit`, written to `path`.
fn edited_base(path: &Path, edit: impl FnOnce(&mut Vec<common::Spec>)) {
    let mut tensors: Vec<common::Spec> = common::read(&base())
        .into_iter()
        .map(|(name, (dtype, shape, data))| spec(&name, dtype, &shape, data))
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    edit(&mut tensors);
    write(path, &tensors);
}

fn dataset(path: &Path, inputs: Option<(&[usize], usize)>, labels: Option<&[i64]>) {
    let mut tensors = Vec::new();
    if let Some((shape, n)) = inputs {
        let data: Vec<u8> = (0..n)
            .flat_map(|i| ((i % 17) as f32 / 16.0).to_le_bytes())
            .collect();
        tensors.push(spec("inputs", D::F32, shape, data));
    }
    if let Some(labels) = labels {
        let data: Vec<u8> = labels.iter().flat_map(|l| l.to_le_bytes()).collect();
        tensors.push(spec("labels", D::I64, &[labels.len()], data));
    }
    write(path, &tensors);
}

#[test]
fn checkpoint_missing_a_tensor_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("no-bias.safetensors");
    edited_base(&bad, |t| t.retain(|s| s.name != "fc.bias"));
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &val(), &bad]);
    assert_error(
        &out,
        &[
            "no-bias.safetensors",
            "'fc.bias'",
            "missing",
            "--arch digits-cnn",
        ],
    );
}

#[test]
fn checkpoint_with_a_wrong_shape_names_the_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("wide.safetensors");
    edited_base(&bad, |t| {
        let fc = t.iter_mut().find(|s| s.name == "fc.weight").unwrap();
        fc.shape = vec![5, 256];
    });
    let out = soup_eval(&[
        &"report",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &"--test",
        &val(),
        &base(),
        &bad,
    ]);
    assert_error(
        &out,
        &["wide.safetensors", "'fc.weight'", "[5, 256]", "[10, 128]"],
    );
}

#[test]
fn checkpoint_with_an_integer_weight_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("int.safetensors");
    edited_base(&bad, |t| {
        let w = t.iter_mut().find(|s| s.name == "conv1.weight").unwrap();
        w.dtype = D::I32;
    });
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &val(), &bad]);
    assert_error(&out, &["'conv1.weight'", "I32", "float"]);
}

#[test]
fn dataset_without_labels_or_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let no_labels = dir.path().join("no-labels.safetensors");
    dataset(&no_labels, Some((&[3, 1, 8, 8], 192)), None);
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &no_labels,
        &base(),
    ]);
    assert_error(&out, &["no-labels.safetensors", "no 'labels' tensor"]);

    let no_inputs = dir.path().join("no-inputs.safetensors");
    dataset(&no_inputs, None, Some(&[1, 2, 3]));
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--test",
        &no_inputs,
        &base(),
    ]);
    assert_error(&out, &["no-inputs.safetensors", "no 'inputs' tensor"]);
}

#[test]
fn dataset_with_a_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("labels.safetensors");
    dataset(&bad, Some((&[3, 1, 8, 8], 192)), Some(&[0, 10, 3]));
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &bad, &base()]);
    assert_error(&out, &["labels.safetensors", "label 10 of input 1", "0..9"]);

    dataset(&bad, Some((&[3, 1, 8, 8], 192)), Some(&[0, -1, 3]));
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &bad, &base()]);
    assert_error(&out, &["label -1 of input 1"]);
}

#[test]
fn an_empty_split_is_refused_not_scored_as_zero_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    dataset(&empty, Some((&[0, 1, 8, 8], 0)), Some(&[]));
    let out = dir.path().join("g.safetensors");
    let run = soup_eval(&[
        &"greedy",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &empty,
        &base(),
        &base(),
        &"-o",
        &out,
    ]);
    assert_error(&run, &["empty.safetensors", "no examples"]);
    assert!(!out.exists());
}

#[test]
fn dataset_with_the_wrong_input_shape_or_label_count() {
    let dir = tempfile::tempdir().unwrap();
    let flat = dir.path().join("flat.safetensors");
    dataset(&flat, Some((&[3, 64], 192)), Some(&[0, 1, 2]));
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &flat, &base()]);
    assert_error(&out, &["'inputs' has shape [3, 64]", "[N, 1, 8, 8]"]);

    let short = dir.path().join("short.safetensors");
    dataset(&short, Some((&[3, 1, 8, 8], 192)), Some(&[0, 1]));
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &short,
        &base(),
    ]);
    assert_error(&out, &["'labels' has shape [2]", "[3]"]);
}

#[test]
fn mismatched_ingredients_are_refused_before_any_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    // An optional buffer missing from one ingredient: each fits the architecture alone, but
    // they can't be averaged together.
    let extra = dir.path().join("extra.safetensors");
    edited_base(&extra, |t| {
        t.retain(|s| s.name != "bn1.num_batches_tracked")
    });
    for command in ["uniform", "greedy", "report"] {
        let out = soup_eval(&[
            &command,
            &"--arch",
            &"digits-cnn",
            &"--val",
            &val(),
            &"--test",
            &val(),
            &base(),
            &extra,
        ]);
        assert_error(&out, &["bn1.num_batches_tracked", "different tensor names"]);
    }
}

#[test]
fn a_tensor_the_architecture_does_not_know_is_named_with_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.safetensors");
    edited_base(&extra, |t| {
        t.push(spec("head2.weight", D::F32, &[2], vec![0; 8]));
    });
    for arch in ["digits-cnn", "auto"] {
        let out = soup_eval(&[&"score", &"--arch", &arch, &"--val", &val(), &extra]);
        assert_error(
            &out,
            &[
                "extra.safetensors",
                "'head2.weight'",
                "not part of digits-cnn",
            ],
        );
    }
}

#[test]
fn empty_ingredient_list_is_a_usage_error() {
    let out = soup_eval(&[
        &"report",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &"--test",
        &val(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = common::stderr(&out);
    assert!(err.contains("CHECKPOINT"), "{err}");
    assert!(!err.contains("panicked"));
    // With --json the same failure is a JSON object on stdout, as every other one is.
    let out = soup_eval(&[
        &"report",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &"--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&out)).unwrap();
    assert_eq!(v["kind"], "usage");
    assert!(v["error"].as_str().unwrap().contains("<CHECKPOINT>"), "{v}");
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let out = soup_eval(&[&"score", &"--arch", &"resnet51", &"--val", &val(), &base()]);
    assert_error(
        &out,
        &[
            "unknown architecture 'resnet51'",
            "digits-cnn",
            "resnet50",
            "densenet",
        ],
    );
}

#[test]
fn a_family_that_does_not_fit_names_the_tensor_and_the_family() {
    for arch in ["resnet", "resnet50"] {
        let out = soup_eval(&[&"score", &"--arch", &arch, &"--val", &val(), &base()]);
        assert_error(
            &out,
            &[
                "base.safetensors",
                "'layer1.0.conv1.weight'",
                "missing",
                "--arch resnet",
            ],
        );
    }
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"densenet121",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_error(&out, &["'features.conv0.weight'", "--arch densenet"]);
}

#[test]
fn auto_detects_the_fixtures_cnn_and_arch_options_are_checked() {
    let out = soup_eval(&[&"score", &"--val", &val(), &base(), &"--json", &"-q"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["arch"], "digits-cnn");
    let out = soup_eval(&[
        &"score",
        &"--arch-option",
        &"heads=3",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_error(&out, &["--arch-option", "heads", "digits-cnn"]);
    let out = soup_eval(&[
        &"score",
        &"--arch-option",
        &"heads",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_error(&out, &["--arch-option", "KEY=VALUE"]);
}

#[test]
fn bad_device_and_missing_cuda_support() {
    // A malformed --device is a bad command line: exit 2, --json kind usage, as --help says.
    for device in ["tpu", "cuda:x", "cuda:-1", "cuda:"] {
        let out = soup_eval(&[
            &"score",
            &"--json",
            &"--arch",
            &"digits-cnn",
            &"--device",
            &device,
            &"--val",
            &val(),
            &base(),
        ]);
        assert_error(&out, &[&format!("bad --device '{device}'"), "cuda:N"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "usage", "{device}: {v}");
        assert_eq!(out.status.code(), Some(2), "{device}: {v}");
    }
    if cfg!(not(feature = "cuda")) {
        // A well-formed device this build can't open is not a usage error.
        let out = soup_eval(&[
            &"score",
            &"--json",
            &"--arch",
            &"digits-cnn",
            &"--device",
            &"cuda",
            &"--val",
            &val(),
            &base(),
        ]);
        assert_error(&out, &["--device cuda", "CPU build"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "device", "{v}");
        assert_eq!(out.status.code(), Some(1), "{v}");
        let out = soup_eval(&[
            &"score",
            &"--arch",
            &"digits-cnn",
            &"--device",
            &"cuda:1",
            &"--val",
            &val(),
            &base(),
        ]);
        assert_error(
            &out,
            &[
                "--device cuda:1",
                "CPU build",
                "`cargo build --release -p soup-eval --features cuda`",
            ],
        );
    }
}

#[test]
fn bf16_evaluation_on_the_cpu_is_refused_up_front() {
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--device",
        &"cpu",
        &"--eval-dtype",
        &"bf16",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_error(
        &out,
        &[
            "--eval-dtype bf16 needs a GPU for image models",
            "f32 or f16",
        ],
    );
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--eval-dtype",
        &"f8",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", common::stderr(&out));
}

/// A language model computes in bf16 on the CPU (candle widens its matrix multiplies), so
/// `--eval-dtype bf16` is accepted there, and its loss stays near f32's; `auto` picks f32 for
/// the f32 fixture.
#[test]
fn bf16_evaluation_of_a_language_model_runs_on_the_cpu() {
    let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/text");
    let loss = |dtype: &str| -> (String, f64) {
        let out = soup_eval(&[
            &"score",
            &"--device",
            &"cpu",
            &"--eval-dtype",
            &dtype,
            &"--json",
            &"-q",
            &"--val",
            &text.join("data/lm.txt"),
            &text.join("models/llama"),
        ]);
        assert!(out.status.success(), "{dtype}: {}", common::stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            report["eval_dtype"].as_str().unwrap().to_string(),
            report["ingredients"][0]["val"]["loss"].as_f64().unwrap(),
        )
    };
    let (auto, f32_loss) = loss("auto");
    assert_eq!(auto, "f32");
    let (bf16, bf16_loss) = loss("bf16");
    assert_eq!(bf16, "bf16");
    assert!(
        (bf16_loss - f32_loss).abs() < 0.05 * f32_loss && bf16_loss != f32_loss,
        "bf16 {bf16_loss} against f32 {f32_loss}"
    );
}

#[test]
fn missing_splits_and_existing_outputs() {
    let out = soup_eval(&[
        &"greedy",
        &"--arch",
        &"digits-cnn",
        &"--test",
        &val(),
        &base(),
    ]);
    assert_error(&out, &["--val"]);
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &base()]);
    assert_error(&out, &["--val PATH", "--test PATH"]);

    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("soup.safetensors");
    std::fs::write(&existing, b"keep me").unwrap();
    let out = soup_eval(&[
        &"greedy",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &"--test",
        &val(),
        &base(),
        &"-o",
        &existing,
    ]);
    // Not the tool's: refused as such, without suggesting a --force that would be refused too.
    let line = assert_error(&out, &["exists and is not an output of this tool"]);
    assert!(!line.contains("pass --force"), "{line}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");
}

#[test]
fn not_a_safetensors_file() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint at all").unwrap();
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &val(), &junk]);
    assert_error(&out, &["junk.safetensors"]);
}

#[test]
fn json_errors_are_json() {
    let out = soup_eval(&[
        &"score",
        &"--json",
        &"--arch",
        &"nope",
        &"--val",
        &val(),
        &base(),
    ]);
    assert_error(&out, &["unknown architecture"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]
        .as_str()
        .unwrap()
        .contains("unknown architecture 'nope'"));
    // Flags found wrong after parsing are usage errors too, never the undocumented "other".
    for (flag, value) in [
        ("--crop", "0"),
        ("--std", "0,0,0"),
        ("--cache-dir", "/nonexistent"),
    ] {
        let out = soup_eval(&[
            &"score",
            &"--json",
            &"--arch",
            &"digits-cnn",
            &"--val",
            &val(),
            &base(),
            &flag,
            &value,
        ]);
        assert_error(&out, &[flag]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "usage", "{flag} {value}: {v}");
        // The exit status says the same as the kind: 2 for a bad command line.
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {v}");
    }
    // Bad input that is not the command line: exit 1.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let out = soup_eval(&[
        &"score",
        &"--json",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &empty,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(v["kind"], "usage", "{v}");
    assert_eq!(out.status.code(), Some(1), "{v}");
}

#[test]
fn numeric_flags_state_their_range() {
    for (flag, value, range) in [
        ("--threads", "0", "1..=1024"),
        ("--threads", "100000", "1..=1024"),
        ("--batch-size", "0", "1..=65536"),
        ("--batch-size", "100000", "1..=65536"),
    ] {
        let out = soup_eval(&[
            &"score",
            &"--arch",
            &"digits-cnn",
            &flag,
            &value,
            &"--val",
            &val(),
            &base(),
        ]);
        let err = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains(range),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_session_stays_usable_after_a_refused_soup() {
    use soup_eval::{arch, evaluator::Evaluator, session::Session, session::Split};
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("extra.safetensors");
    edited_base(&extra, |t| {
        t.retain(|s| s.name != "bn1.num_batches_tracked")
    });
    let arch = arch::digits_cnn::arch();
    let evaluator = Evaluator::new(arch.clone(), candle_core::Device::Cpu, 128);
    let mut session = Session::open(evaluator, &[base(), extra], Some(&val()), None).unwrap();
    let err = session.check_soup().unwrap_err().to_string();
    assert!(err.contains("bn1.num_batches_tracked"), "{err}");
    // Scoring each checkpoint alone still works: both are the base weights.
    let rows = session.ingredients(&[Split::Val]).unwrap();
    assert_eq!(rows[0].val, rows[1].val);
    assert!(session.uniform().is_err());
}

#[test]
fn a_fifo_or_device_as_a_dataset_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    for name in ["val.csv", "val.jsonl"] {
        let fifo = dir.path().join(name);
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &fifo, &base()]);
        assert_error(&out, &[name, "not a regular file"]);
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

/// An image folder holding a FIFO (or a socket, a device) named as an image is refused,
/// naming it, as "not a regular file", at listing: not skipped silently, and never opened (a
/// FIFO would block). Any other name is ignored, as other files are. `timeout` guards the run.
#[test]
fn a_fifo_named_as_an_image_in_an_image_folder_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("val");
    let from = fixture("digits-images/val");
    for class in std::fs::read_dir(&from).unwrap() {
        let class = class.unwrap();
        std::fs::create_dir_all(root.join(class.file_name())).unwrap();
        for image in std::fs::read_dir(class.path()).unwrap() {
            let image = image.unwrap();
            let to = root.join(class.file_name()).join(image.file_name());
            std::fs::copy(image.path(), to).unwrap();
        }
    }
    let mkfifo = |p: &Path| assert!(Command::new("mkfifo").arg(p).status().unwrap().success());
    let fifo = root.join("3/x.png");
    mkfifo(&fifo);
    mkfifo(&root.join("3/notes"));
    let model = fixture("vision-digits/ft-lr2e-3.safetensors");
    let run = || {
        Command::new("timeout")
            .args(["60", env!("CARGO_BIN_EXE_soup-eval"), "score", "-q"])
            .args(["--arch", "resnet", "--val"])
            .args([&root, &model])
            .output()
            .unwrap()
    };
    let out = run();
    let line = assert_error(&out, &[fifo.to_str().unwrap(), "not a regular file"]);
    assert_eq!(out.status.code(), Some(1), "{line}");
    assert!(!line.contains("notes"), "{line}");
    std::fs::remove_file(&fifo).unwrap();
    let out = run();
    assert!(out.status.success(), "{}", common::stderr(&out));
}

#[test]
fn special_token_ids_past_the_vocabulary_name_config_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::repo_root().join("fixtures/text");
    for (model, key, data) in [
        ("bert-cls", "pad_token_id", "cls.jsonl"),
        ("llama", "bos_token_id", "lm.txt"),
    ] {
        let copy = dir.path().join(model);
        std::fs::create_dir(&copy).unwrap();
        for entry in std::fs::read_dir(root.join("models").join(model)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
        let config = copy.join("config.json");
        let mut value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        value[key] = 99999.into();
        std::fs::write(&config, value.to_string()).unwrap();
        let out = soup_eval(&[
            &"score",
            &"--val",
            &root.join("data").join(data),
            &"--seq-len",
            &"32",
            &copy,
        ]);
        let line = assert_error(&out, &["config.json", key, "99999"]);
        assert!(common::stderr(&out).lines().count() == 1, "{line}");
    }
}

/// A copy of fixture model directory `fixtures/<from>` in `dir`.
fn copy_model(dir: &Path, from: &str) -> PathBuf {
    let to = dir.join(Path::new(from).file_name().unwrap());
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(fixture(from)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to
}

/// `file`'s tensors with `head.weight` and `head.bias` cut to their first row.
fn one_output(file: &Path, head: &str) {
    let mut tensors: Vec<common::Spec> = common::read(file)
        .into_iter()
        .map(|(name, (dtype, mut shape, mut data))| {
            if name == format!("{head}.weight") || name == format!("{head}.bias") {
                data.truncate(data.len() / shape[0]);
                shape[0] = 1;
            }
            spec(&name, dtype, &shape, data)
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    write(file, &tensors);
}

/// A softmax over one output is 1: a regression or reward head (or a vision head of one
/// class) would score 100% with loss 0 on anything, so it is refused, naming the tensor.
#[test]
fn a_head_of_one_output_is_refused_not_scored_perfect() {
    let dir = tempfile::tempdir().unwrap();
    let reward = copy_model(dir.path(), "text/models/bert-cls");
    one_output(&reward.join("model.safetensors"), "classifier");
    let config = reward.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    value["id2label"] = serde_json::json!({"0": "LABEL_0"});
    value["label2id"] = serde_json::json!({"LABEL_0": 0});
    value["problem_type"] = "regression".into();
    std::fs::write(&config, value.to_string()).unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"a fine day\", \"label\": 0}\n").unwrap();
    let out = soup_eval(&[&"score", &"--val", &data, &reward]);
    assert_error(
        &out,
        &[
            "classifier.weight",
            "one output",
            "problem_type",
            "regression",
            "2 or more classes",
            "--scorer",
        ],
    );
    // A multi-label head of any width: sigmoids against label sets, not one class each.
    let multi_dir = dir.path().join("multi");
    std::fs::create_dir(&multi_dir).unwrap();
    let multi = copy_model(&multi_dir, "text/models/bert-cls");
    let multi_config = multi.join("config.json");
    let mut mv: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&multi_config).unwrap()).unwrap();
    mv["problem_type"] = "multi_label_classification".into();
    std::fs::write(&multi_config, mv.to_string()).unwrap();
    let out = soup_eval(&[&"score", &"--val", &data, &multi]);
    assert_error(
        &out,
        &[
            "classifier.weight",
            "multi_label_classification",
            "single-label",
            "--scorer",
        ],
    );
    // single_label_classification is what the scoring does.
    mv["problem_type"] = "single_label_classification".into();
    std::fs::write(&multi_config, mv.to_string()).unwrap();
    let out = soup_eval(&[&"score", &"-q", &"--val", &data, &multi]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    // Without problem_type, and a vision head: the same refusal.
    value.as_object_mut().unwrap().remove("problem_type");
    std::fs::write(&config, value.to_string()).unwrap();
    let out = soup_eval(&[&"score", &"--val", &data, &reward]);
    assert_error(
        &out,
        &["classifier.weight", "one output", "2 or more classes"],
    );
    let resnet = dir.path().join("resnet.safetensors");
    std::fs::copy(fixture("vision-digits/ft-lr2e-3.safetensors"), &resnet).unwrap();
    one_output(&resnet, "fc");
    let images = fixture("digits-images/val");
    let out = soup_eval(&[&"score", &"--arch", &"resnet", &"--val", &images, &resnet]);
    assert_error(
        &out,
        &[
            "resnet.safetensors",
            "fc.weight",
            "one output",
            "2 or more classes",
        ],
    );
}

/// Inputs smaller than an architecture's downsampling layers allow are refused before any
/// forward pass, naming the smallest size and the flag, once: not candle's internal error
/// (twice, with its backtrace) nor a panic (hf_convnext's 0-sized maps).
#[test]
fn inputs_too_small_for_the_architecture_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.safetensors");
    dataset(&small, Some((&[2, 3, 8, 8], 2 * 3 * 8 * 8)), Some(&[0, 1]));
    for (model, min) in [("convnext", 16), ("densenet-small", 13), ("vgg", 8)] {
        let weights = fixture(&format!("vision/{model}.safetensors"));
        let out = Command::new(env!("CARGO_BIN_EXE_soup-eval"))
            .args(["score", "-q", "--val"])
            .args([&small, &weights])
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        if min <= 8 {
            assert!(out.status.success(), "{model}: {}", common::stderr(&out));
            continue;
        }
        let line = assert_error(
            &out,
            &["small.safetensors", "8x8", &format!("at least {min}x{min}")],
        );
        assert_eq!(common::stderr(&out).lines().count(), 1, "{line}");
    }
    // Through the image flags, and as JSON: the fix is the flags.
    let hf = fixture("vision/hf-convnext");
    let images = fixture("digits-images/val");
    let out = soup_eval(&[
        &"score",
        &"--json",
        &"--resize",
        &"8",
        &"--crop",
        &"8",
        &"--val",
        &images,
        &hf,
    ]);
    assert_error(&out, &["8x8", "at least 16x16", "--resize 16 --crop 16"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "dataset");
}

/// A batch whose inputs would take more than 2 GiB (64 images resized to 2048x2048 are 3
/// GiB of f32) is a usage error naming --batch-size and the largest that fits, found from the
/// list and the flags before any image is decoded: the list is 64 rows of one 8x8 PNG, and
/// nothing big is ever allocated. `timeout` bounds a run that would decode them.
#[test]
fn a_batch_too_large_for_memory_is_refused_before_any_image_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("one.png");
    std::fs::copy(fixture("digits-images/val/0/0009.png"), &png).unwrap();
    let list = dir.path().join("val.csv");
    let rows: String = (0..64).map(|i| format!("one.png,{}\n", i % 10)).collect();
    std::fs::write(&list, format!("path,label\n{rows}")).unwrap();
    let model = fixture("vision-digits/ft-lr2e-3.safetensors");
    for flags in [
        &[
            "--resize",
            "2048x2048",
            "--crop",
            "none",
            "--batch-size",
            "64",
        ][..],
        &["--resize", "2048", "--crop", "2048"][..],
    ] {
        let started = std::time::Instant::now();
        let out = Command::new("timeout")
            .args([
                "60",
                env!("CARGO_BIN_EXE_soup-eval"),
                "score",
                "--json",
                "-q",
            ])
            .args(["--arch", "resnet", "--val"])
            .arg(&list)
            .args(flags)
            .arg(&model)
            .output()
            .unwrap();
        let line = assert_error(&out, &["val.csv", "images of 3x2048x2048", "--batch-size"]);
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert_eq!(common::stderr(&out).lines().count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "usage", "{v}");
        // 48 MiB an image: at most 42 in 2 GiB (fewer if the machine has less available).
        let fits: usize = line
            .split("--batch-size ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no batch size suggested: {line}"));
        assert!((1..=42).contains(&fits), "{line}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{line}"
        );
    }
}

/// A model directory whose `config.json` names a class no family reads (a Llama with a
/// classification head) is refused naming that class, not with a list of every `--arch`.
#[test]
fn an_unsupported_model_class_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = copy_model(dir.path(), "text/models/llama");
    let config = model.join("config.json");
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    value["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    std::fs::write(&config, value.to_string()).unwrap();
    let data = dir.path().join("data.jsonl");
    std::fs::write(&data, "{\"text\": \"a fine day\", \"label\": 0}\n").unwrap();
    let out = soup_eval(&[&"score", &"--val", &data, &model]);
    let line = assert_error(
        &out,
        &[
            "config.json",
            "LlamaForSequenceClassification",
            "no --arch family",
            "--scorer",
        ],
    );
    assert!(!line.contains("digits-cnn"), "{line}");
}

#[test]
fn a_causal_lms_window_or_context_past_its_positions_is_refused() {
    let root = common::repo_root().join("fixtures/text");
    for model in ["llama", "mistral", "qwen2"] {
        let dir = root.join("models").join(model);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let m = config["max_position_embeddings"].as_u64().unwrap();
        // 1e6 once asked for a [1, heads, T, T] attention matrix of a whole document.
        for (flag, data) in [("--seq-len", "lm.txt"), ("--max-length", "mc.jsonl")] {
            for n in [m + 1, 1_000_000] {
                let n = n.to_string();
                let out = soup_eval(&[
                    &"score",
                    &"--json",
                    &"--val",
                    &root.join("data").join(data),
                    &flag,
                    &n,
                    &dir,
                ]);
                assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
                assert_error(
                    &out,
                    &[
                        data,
                        &format!("{flag} {n} is more than the model's {m} positions"),
                        "max_position_embeddings",
                        &format!("pass at most {m}"),
                    ],
                );
                assert_eq!(common::stderr(&out).lines().count(), 1);
            }
        }
    }
    // The model's own length is allowed.
    let llama = root.join("models/llama");
    let out = soup_eval(&[
        &"score",
        &"--val",
        &root.join("data/lm.txt"),
        &"--seq-len",
        &"128",
        &llama,
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// The base checkpoint with every value of `tensor` replaced by `value`, written to `path`.
fn with_values(path: &Path, tensor: &str, value: f32) {
    edited_base(path, |tensors| {
        let t = tensors.iter_mut().find(|t| t.name == tensor).unwrap();
        t.data = t
            .data
            .chunks_exact(4)
            .flat_map(|_| value.to_le_bytes())
            .collect();
    });
}

#[test]
fn nan_in_weights_is_warned_about_in_every_command_and_in_data_refused() {
    let dir = tempfile::tempdir().unwrap();
    // candle's ReLU and max-pool drop NaN, so a NaN batch norm scores as a plausible model.
    let nan_bn = dir.path().join("nan-bn1.safetensors");
    with_values(&nan_bn, "bn1.bias", f32::NAN);
    let inf_fc = dir.path().join("inf-fc.safetensors");
    with_values(&inf_fc, "fc.weight", f32::INFINITY);
    let good = fixture("models/ft-lr2e-3.safetensors");
    for command in ["score", "greedy", "ensemble", "report", "uniform"] {
        let out = soup_eval(&[
            &command,
            &"--json",
            &"-q",
            &"--arch",
            &"digits-cnn",
            &"--val",
            &val(),
            &good,
            &nan_bn,
        ]);
        let stderr = common::stderr(&out);
        assert!(out.status.success(), "{command}: {stderr}");
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("warning:") && l.contains("nan-bn1.safetensors"))
            .collect();
        assert_eq!(warnings.len(), 1, "{command}: {stderr}");
        assert!(
            warnings[0].contains("'bn1.bias'") && warnings[0].contains("NaN or infinite"),
            "{command}: {stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds: Vec<&serde_json::Value> = v["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["kind"] == "non-finite-input")
            .collect();
        assert_eq!(kinds.len(), 1, "{command}: {v}");
        assert_eq!(kinds[0]["tensor"], "bn1.bias", "{command}: {v}");
    }
    // A search whose metric is NaN for every ingredient is an error naming the metric, not a
    // "greedy soup" of the first one.
    let nan_fc = dir.path().join("nan-fc.safetensors");
    with_values(&nan_fc, "fc.bias", f32::NAN);
    for command in ["greedy", "report"] {
        let out = soup_eval(&[
            &command,
            &"--arch",
            &"digits-cnn",
            &"--metric",
            &"loss",
            &"--val",
            &val(),
            &nan_fc,
            &inf_fc,
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
        assert_error(
            &out,
            &[
                "val.safetensors",
                "the loss of every ingredient",
                "NaN or infinite",
            ],
        );
    }
    // NaN or infinite inputs: refused, with the count and the first input.
    let data = dir.path().join("nan-val.safetensors");
    let mut tensors = common::read(&val());
    let (_, shape, bytes) = tensors.get_mut("inputs").unwrap();
    let per: usize = shape[1..].iter().product();
    bytes[4 * per * 2..4 * per * 2 + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    bytes[4 * per * 5..4 * per * 5 + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let specs: Vec<common::Spec> = tensors
        .into_iter()
        .map(|(name, (dtype, shape, data))| spec(&name, dtype, &shape, data))
        .collect();
    write(&data, &specs);
    let out = soup_eval(&[&"score", &"--arch", &"digits-cnn", &"--val", &data, &base()]);
    assert_eq!(out.status.code(), Some(1));
    assert_error(
        &out,
        &[
            "nan-val.safetensors",
            "'inputs' holds 2 NaN or infinite",
            "input 2",
            "fix the data",
        ],
    );
}

/// An ingredient given twice (by its path or a link) is scored as given, with one warning
/// naming it in every command, and its name in the tables is its path, shown once rooted
/// (it was `//work/...`).
#[test]
fn an_ingredient_given_twice_is_warned_about_and_named_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let good = fixture("models/ft-lr2e-3.safetensors");
    let other = fixture("models/ft-lr5e-4.safetensors");
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    for second in [&good, &link] {
        for command in ["score", "greedy", "ensemble", "uniform"] {
            let out = soup_eval(&[
                &command,
                &"--json",
                &"-q",
                &"--arch",
                &"digits-cnn",
                &"--val",
                &val(),
                &good,
                &other,
                second,
            ]);
            let stderr = common::stderr(&out);
            assert!(out.status.success(), "{command}: {stderr}");
            let repeated: Vec<&str> = stderr
                .lines()
                .filter(|l| l.starts_with("warning:") && l.contains("is given twice"))
                .collect();
            assert_eq!(repeated.len(), 1, "{command}: {stderr}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let kinds = v["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["kind"] == "repeated-input")
                .count();
            assert_eq!(kinds, 1, "{command}: {v}");
            assert!(!v.to_string().contains("//"), "{command}: {v}");
        }
    }
}

/// The plot is SVG: a --plot path with another extension (p.png, a folder) is a usage error
/// before any work, and nothing is written; .svg in any case is accepted.
#[test]
fn a_plot_path_must_say_svg() {
    let dir = tempfile::tempdir().unwrap();
    let good = fixture("models/ft-lr2e-3.safetensors");
    let other = fixture("models/ft-lr5e-4.safetensors");
    std::fs::create_dir(dir.path().join("plots")).unwrap();
    let report = |plot: &str| {
        soup_eval(&[
            &"report",
            &"--json",
            &"-q",
            &"--arch",
            &"digits-cnn",
            &"--val",
            &val(),
            &"--test",
            &val(),
            &good,
            &other,
            &"--plot",
            &dir.path().join(plot),
        ])
    };
    for plot in ["p.png", "p", "p.svg.png"] {
        let out = report(plot);
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{plot}: {stderr}");
        assert!(
            stderr.contains("give a path ending in .svg"),
            "{plot}: {stderr}"
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kind"], "usage", "{plot}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["plots"], "{plot}: {left:?}");
    }
    // A folder is refused as one, without suggesting --force, which could never replace it.
    for plot in ["plots", "plots/"] {
        let out = report(plot);
        let line = common::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{plot}: {line}");
        assert!(
            line.contains("is a directory, and --plot writes a file"),
            "{line}"
        );
        assert!(!line.contains("pass --force"), "{line}");
    }
    let out = report("P.SVG");
    assert!(out.status.success(), "{}", common::stderr(&out));
    let svg = std::fs::read_to_string(dir.path().join("P.SVG")).unwrap();
    assert!(svg.contains("<svg"));
}

/// A model directory whose tokenizer.json or config.json is a FIFO, or a --tokenizer that is
/// one, is refused as "not a regular file", not reported missing, and never read (a FIFO
/// would block). `timeout` guards the run: a blocked read fails the test, not hangs it.
#[test]
fn a_fifo_for_a_models_own_file_is_named_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("text/models/bert-cls");
    let data = fixture("text/data/cls.csv");
    let fifo_in = |name: &str| {
        let copy = dir.path().join(format!("fifo-{name}"));
        std::fs::create_dir(&copy).unwrap();
        for e in std::fs::read_dir(&model).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
        std::fs::remove_file(copy.join(name)).unwrap();
        let made = Command::new("mkfifo")
            .arg(copy.join(name))
            .status()
            .unwrap();
        assert!(made.success());
        copy
    };
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = Command::new("timeout");
        cmd.args(["60", env!("CARGO_BIN_EXE_soup-eval"), "score", "--val"])
            .arg(&data);
        for a in args {
            cmd.arg(a.as_ref());
        }
        cmd.output().unwrap()
    };
    for name in ["tokenizer.json", "config.json"] {
        let copy = fifo_in(name);
        let out = run(&[&copy]);
        assert_error(&out, &[name, "not a regular file"]);
    }
    let tokenizer = dir.path().join("fifo-tokenizer.json/tokenizer.json");
    let out = run(&[&"--tokenizer", &tokenizer, &model]);
    assert_error(&out, &["tokenizer.json", "not a regular file"]);
}

/// A model directory's `config.json` and `preprocessor_config.json` were read whole, however
/// large: a hostile directory's 20 GB file took 20 GB of memory (soup-merge caps a config at
/// 8 MiB). Both are refused from their size, before a byte is read.
#[test]
fn an_oversized_model_config_is_refused_from_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["config.json", "preprocessor_config.json"] {
        let dir = tmp.path().join(name.replace('.', "-"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(base(), dir.join("model.safetensors")).unwrap();
        if name != "config.json" {
            std::fs::write(dir.join("config.json"), "{}").unwrap();
        }
        // Sparse: 64 MiB claimed, nothing on disk (the cap is what matters, not the size).
        let big = std::fs::File::create(dir.join(name)).unwrap();
        big.set_len(64 << 20).unwrap();
        let started = std::time::Instant::now();
        let out = soup_eval(&[
            &"score",
            &"-q",
            &"--arch",
            &"digits-cnn",
            &"--val",
            &fixture("digits-images/val"),
            &dir,
        ]);
        assert_error(&out, &[name, "at most 8388608 bytes"]);
        assert!(started.elapsed().as_secs() < 20, "{name} was read");
    }
}

/// A state dict saved from a wrapper (`module.` of DataParallel, `model.` of Lightning) or a
/// LoRA adapter is named as such, with the fix; it was "recognises no architecture" or
/// "'conv1.weight' is missing", which hid that the weights were all there under a prefix.
#[test]
fn a_wrapper_prefix_or_a_lora_adapter_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let prefixed = dir.path().join("ddp.safetensors");
    edited_base(&prefixed, |tensors| {
        for t in tensors.iter_mut() {
            t.name = format!("module.{}", t.name);
        }
    });
    let out = soup_eval(&[&"score", &"--val", &val(), &prefixed]);
    assert_error(
        &out,
        &[
            "ddp.safetensors",
            "start with 'module.'",
            "k.removeprefix(\"module.\")",
            "it is a digits-cnn checkpoint",
        ],
    );
    // With --arch given, and as the second ingredient: the missing tensor and the prefix.
    let out = soup_eval(&[
        &"score",
        &"--arch",
        &"digits-cnn",
        &"--val",
        &val(),
        &prefixed,
    ]);
    assert_error(
        &out,
        &["ddp.safetensors", "is missing", "start with 'module.'"],
    );
    let out = soup_eval(&[&"score", &"--val", &val(), &base(), &prefixed]);
    assert_error(
        &out,
        &["ddp.safetensors", "is missing", "start with 'module.'"],
    );
    // Another model's checkpoint gets no such hint.
    let other = dir.path().join("other.safetensors");
    edited_base(&other, |tensors| {
        tensors.retain(|t| t.name != "conv1.weight")
    });
    let line = assert_error(
        &soup_eval(&[&"score", &"--val", &val(), &base(), &other]),
        &["other.safetensors", "conv1.weight"],
    );
    assert!(!line.contains("prefix"), "{line}");

    // A PEFT adapter: its file, and its directory (whose file the old message offered).
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let factor = |name: &str| spec(name, D::F32, &[2, 2], vec![0; 16]);
    write(
        &adapter.join("adapter_model.safetensors"),
        &[
            factor("base_model.model.fc.lora_A.weight"),
            factor("base_model.model.fc.lora_B.weight"),
        ],
    );
    std::fs::write(
        adapter.join("adapter_config.json"),
        r#"{"peft_type": "LORA"}"#,
    )
    .unwrap();
    let out = soup_eval(&[
        &"score",
        &"--val",
        &val(),
        &adapter.join("adapter_model.safetensors"),
    ]);
    assert_error(
        &out,
        &[
            "adapter_model.safetensors",
            "LoRA adapter",
            "merge_and_unload",
        ],
    );
    let line = assert_error(
        &soup_eval(&[&"score", &"--val", &val(), &adapter]),
        &["adapter", "PEFT adapter", "merge_and_unload"],
    );
    assert!(!line.contains("pass the file itself"), "{line}");
}

/// A PyTorch file (zip or pickle), a GGUF file or an ONNX model given as an ingredient is
/// named as what it is, with how to convert it; it was "header claims 578712552184433488
/// bytes, more than the 67108864-byte limit". soup-merge reads headers the same way.
#[test]
fn a_pytorch_gguf_or_onnx_file_is_named_as_one_with_the_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[u8], &[&str])] = &[
        (
            "ft.pt",
            b"PK\x03\x04\x00\x00\x08\x08archive/data.pkl",
            &["zip archive", "torch.save", "safetensors.torch.save_file"],
        ),
        (
            "pytorch_model.bin",
            b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8",
            &["Python pickle", "torch.load"],
        ),
        (
            "model.gguf",
            b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00",
            &["GGUF"],
        ),
        (
            "model.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 2200119864\n",
            &["Git LFS pointer", "git lfs pull"],
        ),
        (
            "model.onnx",
            b"\x08\x07\x12\x07pytorch\x1a\x052.1.0",
            &["ONNX", "state_dict()"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = dir.path().join(name);
        let mut content = bytes.to_vec();
        content.resize(256, 0);
        std::fs::write(&path, content).unwrap();
        let line = assert_error(&soup_eval(&[&"score", &"--val", &val(), &path]), needles);
        assert!(
            line.contains(name) && !line.contains("header claims"),
            "{line}"
        );
        let merged = common::run_merge(&[&path, &base(), &"-o", &dir.path().join("o.safetensors")]);
        assert!(
            common::stderr(&merged).contains(needles[0]),
            "{}",
            common::stderr(&merged)
        );
    }
    // A file that is simply corrupt keeps the header's own message.
    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, [0xffu8; 64]).unwrap();
    assert_error(
        &soup_eval(&[&"score", &"--val", &val(), &corrupt]),
        &["header claims"],
    );
}

/// `--arch` naming another family than the weights', or an ingredient of another family than
/// the first, names the family the weights are; it said only which tensor was missing.
#[test]
fn weights_of_another_family_are_named_with_their_family() {
    let convnext = fixture("vision/convnext.safetensors");
    let resnet = fixture("vision-digits/ft-lr1e-3.safetensors");
    let images = fixture("digits-images/val");
    let flags = ["--resize", "32", "--crop", "32"];
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"score", &"--val", &images];
        for f in &flags {
            all.push(f);
        }
        all.extend_from_slice(args);
        soup_eval(&all)
    };
    assert_error(
        &run(&[&"--arch", &"vit", &convnext]),
        &[
            "convnext.safetensors",
            "conv_proj.weight",
            "it is a convnext checkpoint: pass --arch convnext",
        ],
    );
    assert_error(
        &run(&[&resnet, &convnext]),
        &[
            "convnext.safetensors",
            "it is a convnext checkpoint, not resnet",
        ],
    );
    // A head of another size is the same family: no such hint.
    let dir = tempfile::tempdir().unwrap();
    let five = dir.path().join("five.safetensors");
    let mut tensors: Vec<common::Spec> = common::read(&resnet)
        .into_iter()
        .map(|(name, (dtype, shape, data))| spec(&name, dtype, &shape, data))
        .collect();
    for t in tensors.iter_mut().filter(|t| t.name.starts_with("fc.")) {
        let row = t.data.len() / t.shape[0];
        t.shape[0] = 5;
        t.data.truncate(5 * row);
    }
    write(&five, &tensors);
    let line = assert_error(
        &run(&[&resnet, &five]),
        &["five.safetensors", "fc.weight", "[5, 64]"],
    );
    assert!(!line.contains("checkpoint, not"), "{line}");
}

/// `--test` given the `--val` split (here by another spelling of its path) warns that the test
/// numbers are not held out; it reported them as if they were.
#[test]
fn a_test_split_that_is_the_val_split_warns() {
    let greedy = |test: &Path| {
        let out = soup_eval(&[
            &"greedy",
            &"-q",
            &"--json",
            &"--val",
            &val(),
            &"--test",
            &test,
            &base(),
        ]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (common::stderr(&out), report)
    };
    let (stderr, report) = greedy(&fixture("digits/../digits/val.safetensors"));
    assert!(stderr.contains("warning: --test"), "{stderr}");
    assert_eq!(report["warnings"][0]["kind"], "test-is-val", "{report}");
    let (_, report) = greedy(&fixture("digits/test.safetensors"));
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

/// Two classifiers whose config.json number the same classes differently are refused, naming
/// the class: their heads' rows are other classes. Both were scored, souped and ensembled
/// against the first one's labels.
#[test]
fn ingredients_numbering_their_classes_differently_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bert = fixture("text/models/bert-cls");
    let copy = dir.path().join("bert-permuted");
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&bert).unwrap() {
        let from = entry.unwrap().path();
        std::fs::copy(&from, copy.join(from.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("config.json")).unwrap()).unwrap();
    config["label2id"] = serde_json::json!({"positive": 0, "neutral": 1, "negative": 2});
    config["id2label"] = serde_json::json!({"0": "positive", "1": "neutral", "2": "negative"});
    std::fs::write(copy.join("config.json"), config.to_string()).unwrap();
    let data = fixture("text/data/cls.jsonl");
    let out = soup_eval(&[&"report", &"-q", &"--val", &data, &bert, &copy]);
    assert_error(
        &out,
        &[
            "bert-permuted/config.json",
            "label2id numbers \"negative\" 2",
            "numbers it 0",
            "permute",
        ],
    );
    // The same order passes.
    let out = soup_eval(&[&"score", &"-q", &"--val", &data, &bert, &bert]);
    assert!(out.status.success(), "{}", common::stderr(&out));
}

/// A model directory's `tokenizer.json` was parsed whole, however large: the library holds
/// several times the file's size while parsing, so a hostile directory's 20 GB file was an
/// out-of-memory kill. It is refused from its size, before a byte is read.
#[test]
fn an_oversized_tokenizer_is_refused_from_its_size() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("text/models/bert-cls");
    let copy = tmp.path().join("bert-cls");
    std::fs::create_dir(&copy).unwrap();
    for e in std::fs::read_dir(&model).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    // Sparse: 1 GiB claimed, nothing on disk.
    let big = std::fs::File::create(copy.join("tokenizer.json")).unwrap();
    big.set_len(1 << 30).unwrap();
    let out = soup_eval(&[
        &"score",
        &"-q",
        &"--val",
        &fixture("text/data/cls.csv"),
        &copy,
    ]);
    assert_error(&out, &["tokenizer.json", "at most 268435456 bytes"]);
}

/// A dataset's `labels` of any integer type (I32 from `np.int32`, U8 for a few classes) score
/// as I64 labels do; anything but I64 was refused. Float labels are still refused.
#[test]
fn dataset_labels_of_any_integer_type_score_as_i64_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = common::read(&val());
    let (_, shape, labels) = &file["labels"];
    let wide: Vec<i64> = labels
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let score = |path: &Path| {
        let out = soup_eval(&[&"score", &"-q", &"--json", &"--val", &path, &base()]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["ingredients"][0]["val"].clone()
    };
    let want = score(&val());
    assert_eq!(want["total"], 359, "{want}");
    for (dtype, data) in [
        (
            D::I32,
            wide.iter()
                .flat_map(|&l| (l as i32).to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
        (D::U8, wide.iter().map(|&l| l as u8).collect()),
        (
            D::F32,
            wide.iter()
                .flat_map(|&l| (l as f32).to_le_bytes())
                .collect(),
        ),
    ] {
        let path = dir.path().join(format!("{dtype:?}.safetensors"));
        let mut tensors: Vec<common::Spec> = file
            .iter()
            .filter(|(name, _)| *name != "labels")
            .map(|(name, (d, s, bytes))| spec(name, *d, s, bytes.clone()))
            .collect();
        tensors.push(spec("labels", dtype, shape, data));
        write(&path, &tensors);
        if dtype == D::F32 {
            let out = soup_eval(&[&"score", &"--val", &path, &base()]);
            assert_error(&out, &["'labels' is F32", "must be integers"]);
        } else {
            assert_eq!(score(&path), want, "{dtype:?}");
        }
    }
}
