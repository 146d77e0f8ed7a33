//! Hugging Face model directories in and out: sharded inputs with their index, sharded atomic
//! outputs, round trips against the single-file merge, and every kind of corrupt index.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::*;
use safetensors::Dtype as D;

type Tensors = HashMap<String, (D, Vec<usize>, Vec<u8>)>;

/// One fine-tune's tensors: several dtypes, sizes around the shard sizes the tests use.
fn model(seed: u64) -> Vec<Spec> {
    let mut rng = Rng::new(seed);
    let mut ints = Rng::new(7);
    vec![
        spec(
            "model.embed_tokens.weight",
            D::BF16,
            &[64, 96],
            floats(&mut rng, D::BF16, 64 * 96),
        ),
        spec(
            "model.layers.0.mlp.weight",
            D::F32,
            &[96, 40],
            floats(&mut rng, D::F32, 96 * 40),
        ),
        spec(
            "model.layers.0.norm.weight",
            D::F32,
            &[96],
            floats(&mut rng, D::F32, 96),
        ),
        spec(
            "model.layers.1.mlp.weight",
            D::F16,
            &[96, 40],
            floats(&mut rng, D::F16, 96 * 40),
        ),
        spec(
            "model.layers.1.norm.weight",
            D::F64,
            &[96],
            floats(&mut rng, D::F64, 96),
        ),
        spec(
            "model.big.weight",
            D::F32,
            &[200, 100],
            floats(&mut rng, D::F32, 20_000),
        ),
        spec("model.scalar", D::F32, &[], floats(&mut rng, D::F32, 1)),
        spec("model.empty", D::F16, &[0, 3], vec![]),
        spec("model.steps", D::I64, &[3], raw(&mut ints, 24)),
    ]
}

fn copy(s: &Spec) -> Spec {
    spec(&s.name, s.dtype, &s.shape, s.data.clone())
}

/// Writes `tensors` as a sharded model directory: shard `k` holds the tensors `assign` gives k.
fn write_sharded(dir: &Path, tensors: &[Spec], shards: usize, assign: impl Fn(usize) -> usize) {
    std::fs::create_dir_all(dir).unwrap();
    let mut weight_map = BTreeMap::new();
    for k in 0..shards {
        let name = format!("model-{:05}-of-{:05}.safetensors", k + 1, shards);
        let part: Vec<Spec> = tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| assign(*i) == k)
            .map(|(_, s)| copy(s))
            .collect();
        for s in &part {
            weight_map.insert(s.name.clone(), name.clone());
        }
        write(&dir.join(&name), &part);
    }
    let total: usize = tensors.iter().map(|s| s.data.len()).sum();
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

/// Reads every tensor of a model directory through its index (or model.safetensors), checking
/// the index against the shards with the official safetensors crate.
fn read_dir(dir: &Path) -> Tensors {
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return read(&dir.join("model.safetensors"));
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut all = Tensors::new();
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    for f in files {
        for (name, t) in read(&dir.join(f)) {
            assert_eq!(
                map[&name].as_str(),
                Some(f),
                "{name} is in {f}, index disagrees"
            );
            assert!(all.insert(name, t).is_none());
        }
    }
    assert_eq!(
        all.len(),
        map.len(),
        "index lists tensors that no shard has"
    );
    let total: usize = all.values().map(|t| t.2.len()).sum();
    assert_eq!(index["metadata"]["total_size"], total);
    all
}

fn three_inputs(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    // The same three fine-tunes, as single files and as model directories of every kind.
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..3u64 {
        let tensors = model(10 + i);
        let f = dir.join(format!("ft{i}.safetensors"));
        write(&f, &tensors);
        files.push(f);
        let d = dir.join(format!("ft{i}"));
        match i {
            0 => write_sharded(&d, &tensors, 3, |t| t % 3),
            1 => {
                std::fs::create_dir_all(&d).unwrap();
                write(&d.join("model.safetensors"), &tensors);
            }
            _ => write_sharded(&d, &tensors, 2, |t| usize::from(t >= 4)),
        }
        dirs.push(d);
    }
    (files, dirs)
}

fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let o = run_merge(args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn fails(args: &[&dyn AsRef<std::ffi::OsStr>], says: &[&str]) -> String {
    let o = run_merge(args);
    // 2 for a usage error (the command line), 1 for the rest.
    assert!(matches!(o.status.code(), Some(1 | 2)), "{}", stderr(&o));
    // Warnings may come first; the error is one line, the last.
    let err = stderr(&o)
        .trim_end()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    assert!(err.starts_with("error: "), "{}", stderr(&o));
    for s in says {
        assert!(err.contains(s), "expected '{s}' in: {err}");
    }
    err
}

/// No output and no temporary left beside it.
fn nothing_left(parent: &Path, name: &str) {
    assert!(!parent.join(name).exists(), "{name} was created");
    for e in std::fs::read_dir(parent).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains("soup-tmp"), "temporary {n} left behind");
    }
}

#[test]
fn sharded_and_mixed_inputs_give_the_single_file_merge_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, dirs) = three_inputs(tmp.path());
    let single = tmp.path().join("soup.safetensors");
    ok(&[
        &files[0],
        &files[1],
        &files[2],
        &"-w",
        &"0.5,0.3,0.2",
        &"-o",
        &single,
    ]);
    let want = read(&single);

    // Sharded and unsharded directories in, one file out.
    let from_dirs = tmp.path().join("dirs.safetensors");
    ok(&[
        &dirs[0],
        &dirs[1],
        &dirs[2],
        &"-w",
        &"0.5,0.3,0.2",
        &"-o",
        &from_dirs,
    ]);
    assert_eq!(read(&from_dirs), want);
    // A byte-for-byte identical file: the provenance names the inputs the same way.
    let mixed = tmp.path().join("mixed.safetensors");
    ok(&[
        &dirs[0],
        &files[1],
        &dirs[2],
        &"-w",
        &"0.5,0.3,0.2",
        &"-o",
        &mixed,
    ]);
    assert_eq!(read(&mixed), want);

    // Sharded out: every shard is a valid file, the index matches them, the tensors match.
    let out = tmp.path().join("soup");
    ok(&[
        &dirs[0],
        &files[1],
        &dirs[2],
        &"-w",
        &"0.5,0.3,0.2",
        &"-o",
        &out,
        &"--shard-size",
        &"20KB",
    ]);
    let got = read_dir(&out);
    assert_eq!(got, want);
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let shards: Vec<&String> = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    let n = shards.len();
    assert!(n >= 4, "{names:?}");
    for (k, s) in shards.iter().enumerate() {
        assert_eq!(**s, format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let tensors = read(&out.join(s));
        let data: usize = tensors.values().map(|t| t.2.len()).sum();
        // A shard may only exceed the size when it is one tensor bigger than the size.
        assert!(
            data <= 20_000 || tensors.len() == 1,
            "{s}: {data} bytes in {} tensors",
            tensors.len()
        );
    }
    // model.big.weight (80 kB) is over the shard size, so it is alone in its shard.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let big = index["weight_map"]["model.big.weight"].as_str().unwrap();
    assert_eq!(read(&out.join(big)).len(), 1);
    assert!(names.contains(&"README.md".to_string()), "{names:?}");

    // Round trip: the sharded output read back as an input gives the same tensors again.
    let back = tmp.path().join("back.safetensors");
    ok(&[&out, &"-o", &back]);
    assert_eq!(read(&back), want);
    // Every shard carries the provenance.
    let bytes = std::fs::read(out.join(shards[0])).unwrap();
    let meta = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
    let meta = meta.metadata().as_ref().unwrap();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["model_soup.weights"], "[0.5,0.3,0.2]");
}

#[test]
fn a_model_that_fits_one_shard_is_model_safetensors_without_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, _) = three_inputs(tmp.path());
    let out = tmp.path().join("soup-dir");
    ok(&[&files[0], &files[1], &"-o", &out]);
    assert!(out.join("model.safetensors").is_file());
    assert!(!out.join("model.safetensors.index.json").exists());
    let single = tmp.path().join("soup.safetensors");
    ok(&[&files[0], &files[1], &"-o", &single]);
    // Same file, byte for byte: one code path writes both.
    assert_eq!(
        std::fs::read(&single).unwrap(),
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    // --shard-size with a .safetensors output is contradictory.
    fails(
        &[
            &files[0],
            &files[1],
            &"-o",
            &tmp.path().join("x.safetensors"),
            &"--shard-size",
            &"1MB",
        ],
        &["--shard-size", "directory"],
    );
    let o = run_merge(&[
        &files[0],
        &files[1],
        &"-o",
        &tmp.path().join("y"),
        &"--shard-size",
        &"5XB",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a bad flag value is a command-line error"
    );
    assert!(stderr(&o).contains("unknown unit 'XB'"), "{}", stderr(&o));
}

/// Breaks a copy of a sharded directory with `corrupt`, then checks the message names it and
/// nothing is written.
fn corrupt_case(name: &str, corrupt: impl Fn(&Path), says: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_sharded(&good, &model(1), 3, |t| t % 3);
    let bad = tmp.path().join("bad");
    write_sharded(&bad, &model(2), 3, |t| t % 3);
    corrupt(&bad);
    let out = tmp.path().join("out");
    let err = fails(&[&good, &bad, &"-o", &out], says);
    assert!(
        err.contains("bad"),
        "{name}: the message names the directory: {err}"
    );
    nothing_left(tmp.path(), "out");
}

fn edit_index(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("model.safetensors.index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn a_missing_shard_is_named() {
    corrupt_case(
        "missing shard",
        |d| std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap(),
        &[
            "model-00002-of-00003.safetensors",
            "does not exist",
            "download is incomplete",
        ],
    );
}

#[test]
fn a_tensor_in_two_shards_is_named() {
    corrupt_case(
        "tensor in two shards",
        |d| {
            let extra = model(2)
                .into_iter()
                .find(|s| s.name == "model.layers.0.norm.weight")
                .unwrap();
            // Shard 1 gets a second copy of a tensor that shard 3 has.
            let s1 = d.join("model-00001-of-00003.safetensors");
            let mut t: Vec<Spec> = read(&s1)
                .into_iter()
                .map(|(n, (dt, sh, b))| spec(&n, dt, &sh, b))
                .collect();
            t.push(extra);
            write(&s1, &t);
        },
        &["model.layers.0.norm.weight", "exactly one shard"],
    );
}

#[test]
fn a_weight_map_pointing_to_the_wrong_shard_is_named() {
    corrupt_case(
        "wrong shard",
        |d| {
            edit_index(d, |v| {
                v["weight_map"]["model.scalar"] = "model-00003-of-00003.safetensors".into();
            })
        },
        &[
            "model.scalar",
            "weight_map says it is in model-00003-of-00003.safetensors",
            "stored in",
        ],
    );
}

#[test]
fn a_tensor_the_index_does_not_list_is_named() {
    corrupt_case(
        "unlisted tensor",
        |d| {
            edit_index(d, |v| {
                v["weight_map"]
                    .as_object_mut()
                    .unwrap()
                    .remove("model.steps");
            })
        },
        &["model.steps", "not listed"],
    );
}

#[test]
fn a_listed_tensor_that_no_shard_holds_is_named() {
    corrupt_case(
        "listed but absent",
        |d| {
            edit_index(d, |v| {
                v["weight_map"]["model.ghost"] = "model-00001-of-00003.safetensors".into();
            })
        },
        &["model.ghost", "does not hold it"],
    );
}

#[test]
fn an_index_with_a_duplicate_key_or_a_path_outside_is_refused() {
    corrupt_case(
        "duplicate key",
        |d| {
            let p = d.join("model.safetensors.index.json");
            let text = std::fs::read_to_string(&p).unwrap();
            let text = text.replacen(
                "\"weight_map\":{",
                "\"weight_map\":{\"model.scalar\":\"model-00001-of-00003.safetensors\",",
                1,
            );
            std::fs::write(&p, text).unwrap();
        },
        &["model.scalar", "listed twice"],
    );
    corrupt_case(
        "path traversal",
        |d| {
            edit_index(d, |v| {
                v["weight_map"]["model.scalar"] = "../good/model-00001-of-00003.safetensors".into();
            })
        },
        &["model.scalar", "not a file name"],
    );
    corrupt_case(
        "the index as a shard",
        |d| {
            edit_index(d, |v| {
                v["weight_map"]["model.scalar"] = "model.safetensors.index.json".into();
            })
        },
        &["model.scalar", "names the index itself"],
    );
    corrupt_case(
        "not json",
        |d| std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": [").unwrap(),
        &["not a valid safetensors index"],
    );
}

#[test]
fn a_directory_without_weights_says_what_it_has() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, _) = three_inputs(tmp.path());
    let d = tmp.path().join("adapter");
    std::fs::create_dir(&d).unwrap();
    write(&d.join("adapter_model.safetensors"), &model(3));
    fails(
        &[&files[0], &d, &"-o", &tmp.path().join("o")],
        &["adapter_model.safetensors", "pass the file itself"],
    );
    let e = tmp.path().join("empty");
    std::fs::create_dir(&e).unwrap();
    fails(
        &[&files[0], &e, &"-o", &tmp.path().join("o")],
        &["model.safetensors.index.json"],
    );
}

#[test]
fn weights_that_are_there_but_not_a_file_are_named_as_such() {
    let mkfifo = |p: &Path| {
        let made = std::process::Command::new("mkfifo").arg(p).status();
        assert!(made.unwrap().success());
    };
    let index = "model.safetensors.index.json";
    corrupt_case(
        "index is a FIFO",
        |d| {
            std::fs::remove_file(d.join(index)).unwrap();
            mkfifo(&d.join(index));
        },
        &[&format!("bad/{index}: is not a regular file")],
    );
    corrupt_case(
        "index links to nothing",
        |d| {
            std::fs::remove_file(d.join(index)).unwrap();
            std::os::unix::fs::symlink("../blobs/gone", d.join(index)).unwrap();
        },
        &[
            &format!("bad/{index}: is a link to nothing"),
            "fetch the model again",
        ],
    );
    corrupt_case(
        "model.safetensors is a directory",
        |d| {
            std::fs::remove_file(d.join(index)).unwrap();
            std::fs::create_dir(d.join("model.safetensors")).unwrap();
        },
        &["bad/model.safetensors: is a directory"],
    );
}

#[test]
fn a_failed_directory_merge_leaves_nothing_and_force_replaces_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, dirs) = three_inputs(tmp.path());
    // Integer tensors that differ are an error under --strict, found while writing shards.
    let other = tmp.path().join("other.safetensors");
    let mut t = model(12);
    t.iter_mut().find(|s| s.name == "model.steps").unwrap().data[0] ^= 1;
    write(&other, &t);
    let out = tmp.path().join("out");
    fails(
        &[
            &files[0],
            &other,
            &"--strict",
            &"-o",
            &out,
            &"--shard-size",
            &"30KB",
        ],
        &["model.steps", "--strict"],
    );
    nothing_left(tmp.path(), "out");

    // A folder made ready for the output is refused with or without --force, saying not to
    // make it (it was called "not an output of this tool (its soups and plots carry ...)").
    std::fs::create_dir(&out).unwrap();
    for force in [&"--force" as &dyn AsRef<std::ffi::OsStr>, &"-q"] {
        fails(
            &[&files[0], &files[1], force, &"-o", &out],
            &["is an empty directory", "don't create it first", "rmdir"],
        );
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    // Another tool's model directory is not replaced, even with --force.
    std::fs::copy(&files[1], out.join("model.safetensors")).unwrap();
    fails(
        &[&files[0], &files[1], &"--force", &"-o", &out],
        &["not an output of this tool"],
    );
    std::fs::remove_dir_all(&out).unwrap();
    // An earlier soup is refused without --force and left as it was.
    ok(&[&files[0], &files[2], &"-o", &out, &"-q"]);
    std::fs::write(out.join("config.json"), "{}").unwrap();
    let old = std::fs::read(out.join("model.safetensors")).unwrap();
    fails(
        &[&files[0], &files[1], &"-o", &out],
        &["already exists", "--force"],
    );
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), old);
    // A failed --force run leaves the old directory untouched too.
    fails(
        &[&files[0], &other, &"--strict", &"--force", &"-o", &out],
        &["--strict"],
    );
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), old);
    // A directory holding anything but model files is never replaced, even with --force.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    fails(
        &[&files[0], &files[1], &"--force", &"-o", &out],
        &["'notes.txt'", "not a model file"],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_file(out.join("notes.txt")).unwrap();
    // With --force a directory of model files is replaced whole: nothing of it remains.
    ok(&[&files[0], &files[1], &"--force", &"-o", &out]);
    assert!(!out.join("config.json").exists());
    assert!(out.join("model.safetensors").is_file());
    assert_ne!(std::fs::read(out.join("model.safetensors")).unwrap(), old);
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A directory that holds an input is never replaced, even with --force.
    fails(
        &[&dirs[0], &dirs[1], &"--force", &"-o", &dirs[0]],
        &["input", "never overwritten"],
    );
    assert!(dirs[0].join("model.safetensors.index.json").is_file());
    // Nor is a directory that holds one further down.
    let nested = tmp.path().join("runs/ft");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::copy(&files[2], nested.join("model.safetensors")).unwrap();
    let runs = tmp.path().join("runs");
    fails(
        &[&files[0], &nested, &"--force", &"-o", &runs],
        &["input", "never overwritten"],
    );
    assert!(nested.join("model.safetensors").is_file());
}

fn write_companions(dir: &Path, dtype: &str) {
    let config = format!(
        "{{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"torch_dtype\": \"{dtype}\",\n  \"hidden_size\": 96,\n  \"rms_norm_eps\": 1e-05\n}}\n"
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("generation_config.json"), "{\"do_sample\": false}").unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": {}}").unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages }}").unwrap();
    std::fs::write(dir.join("training_args.bin"), "not copied").unwrap();
    std::fs::write(dir.join("README.md"), "the first input's card").unwrap();
}

#[test]
fn config_tokenizer_and_chat_template_travel_with_the_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    write_companions(&dirs[0], "float32");
    let out = tmp.path().join("soup");
    ok(&[
        &dirs[0],
        &dirs[1],
        &"--dtype",
        &"bf16",
        &"-o",
        &out,
        &"--shard-size",
        &"50KB",
    ]);
    for f in [
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(dirs[0].join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(!out.join("training_args.bin").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert_eq!(config["hidden_size"], 96);
    assert_eq!(config["rms_norm_eps"], 1e-5);

    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let front = card
        .strip_prefix("---\n")
        .unwrap()
        .split("\n---\n")
        .next()
        .unwrap();
    assert!(front.contains("base_model:\n- ft0\n- ft1"), "{card}");
    assert!(front.contains("tags:\n- merge\n- model-soup"), "{card}");
    assert!(card.contains("| 0 | ft0 | 0.5 |"), "{card}");
    assert!(card.contains("linear"), "{card}");
    assert!(
        card.contains(&format!("model-soup {}", env!("CARGO_PKG_VERSION"))),
        "{card}"
    );

    // --base takes them from elsewhere; without --dtype, config names the dtype most bytes have.
    let base = tmp.path().join("base");
    std::fs::create_dir(&base).unwrap();
    write_companions(&base, "float16");
    let out2 = tmp.path().join("soup2");
    ok(&[&dirs[1], &dirs[2], &"--base", &base, &"-o", &out2]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out2.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float32");
    assert!(out2.join("chat_template.jinja").is_file());
    fails(
        &[
            &dirs[1],
            &dirs[2],
            &"--base",
            &base,
            &"-o",
            &tmp.path().join("f.safetensors"),
        ],
        &["--base"],
    );
    fails(
        &[
            &dirs[1],
            &dirs[2],
            &"--base",
            &tmp.path().join("nope"),
            &"-o",
            &tmp.path().join("g"),
        ],
        &["--base", "not a directory"],
    );
}

#[test]
fn dry_run_shows_dtypes_parameters_and_bytes_per_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    let out = tmp.path().join("soup");
    let args: [&dyn AsRef<std::ffi::OsStr>; 8] = [
        &dirs[0],
        &dirs[1],
        &dirs[2],
        &"-o",
        &out,
        &"--shard-size",
        &"40KB",
        &"--dry-run",
    ];
    let text = ok(&args);
    assert!(!out.exists());
    let params: u64 = model(1)
        .iter()
        .map(|s| s.shape.iter().product::<usize>() as u64)
        .sum();
    assert!(text.contains(&format!("{params} parameters")), "{text}");
    assert!(text.contains("dtype F32"), "{text}");
    assert!(text.contains("file model-00001-of-"), "{text}");
    assert!(text.contains("average  BF16  [64, 96]"), "{text}");

    let mut json_args = args.to_vec();
    json_args.push(&"--json");
    let v: serde_json::Value = serde_json::from_str(&ok(&json_args)).unwrap();
    assert_eq!(v["parameters"], params);
    let planned: Vec<(String, u64)> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    // The plan's bytes per shard are what the merge then writes.
    ok(&args[..7]);
    for (name, bytes) in &planned {
        assert_eq!(
            std::fs::metadata(out.join(name)).unwrap().len(),
            *bytes,
            "{name}"
        );
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn on_missing_handles_a_tied_lm_head() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let embed = |rng: &mut Rng| {
        spec(
            "model.embed_tokens.weight",
            D::F32,
            &[8, 4],
            floats(rng, D::F32, 32),
        )
    };
    let head: Vec<Spec> = (0..2)
        .map(|_| {
            spec(
                "lm_head.weight",
                D::F32,
                &[8, 4],
                floats(&mut rng, D::F32, 32),
            )
        })
        .collect();
    // a and c have an lm_head; b ties it to the embeddings and so has none.
    let paths: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|n| tmp.path().join(format!("{n}.safetensors")))
        .collect();
    write(&paths[0], &[embed(&mut rng), copy(&head[0])]);
    write(&paths[1], &[embed(&mut rng)]);
    write(&paths[2], &[embed(&mut rng), copy(&head[1])]);
    let out = tmp.path().join("o.safetensors");
    let w = "0.5,0.3,0.2";
    fails(
        &[&paths[0], &paths[1], &paths[2], &"-w", &w, &"-o", &out],
        &["lacks 1 tensor(s): 'lm_head.weight'", "--on-missing"],
    );
    assert!(!out.exists());

    ok(&[
        &paths[0],
        &paths[1],
        &paths[2],
        &"-w",
        &w,
        &"-o",
        &out,
        &"--on-missing",
        &"skip",
    ]);
    assert!(!read(&out).contains_key("lm_head.weight"));
    ok(&[
        &paths[0],
        &paths[1],
        &paths[2],
        &"-w",
        &w,
        &"-o",
        &out,
        &"--on-missing",
        &"first",
        &"--force",
    ]);
    assert_eq!(read(&out)["lm_head.weight"].2, head[0].data);
    // mergekit's behaviour: the inputs that have it, with their weights renormalised to the
    // full sum: (0.5 a + 0.2 c) / 0.7.
    ok(&[
        &paths[0],
        &paths[1],
        &paths[2],
        &"-w",
        &w,
        &"-o",
        &out,
        &"--on-missing",
        &"renormalize",
        &"--force",
    ]);
    let got = f32s(&read(&out)["lm_head.weight"].2);
    let (a, c) = (f32s(&head[0].data), f32s(&head[1].data));
    for i in 0..got.len() {
        let want = (0.5 / 0.7) * a[i] as f64 + (0.2 / 0.7) * c[i] as f64;
        assert!(
            (got[i] as f64 - want).abs() <= f32::EPSILON as f64 * want.abs().max(1e-30),
            "{i}: {} vs {want}",
            got[i]
        );
    }
    // Tensors every input has are unaffected by the policy.
    let full = read(&out)["model.embed_tokens.weight"].clone();
    ok(&[
        &paths[0],
        &paths[1],
        &paths[2],
        &"-w",
        &w,
        &"-o",
        &out,
        &"--on-missing",
        &"skip",
        &"--force",
    ]);
    assert_eq!(read(&out)["model.embed_tokens.weight"], full);
}

#[test]
fn a_base_file_leaves_the_config_to_the_inputs_model_directories() {
    // --base names a file (no config there); the fine-tunes are model directories that have
    // one: the output takes theirs.
    let tmp = tempfile::tempdir().unwrap();
    let (files, dirs) = three_inputs(tmp.path());
    std::fs::write(dirs[1].join("config.json"), r#"{"torch_dtype": "float32"}"#).unwrap();
    let out = tmp.path().join("ta");
    ok(&[
        &"--method",
        &"task_arithmetic",
        &"--base",
        &files[0],
        &dirs[1],
        &dirs[2],
        &"-o",
        &out,
        &"-q",
    ]);
    assert!(out.join("config.json").is_file());
}

#[test]
fn a_soup_of_soups_records_its_own_provenance_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, _) = three_inputs(tmp.path());
    let first = tmp.path().join("first.safetensors");
    ok(&[
        &"--method",
        &"dare_linear",
        &"--base",
        &files[0],
        &files[1],
        &files[2],
        &"--density",
        &"0.5",
        &"--seed",
        &"5",
        &"-o",
        &first,
        &"-q",
    ]);
    let second = tmp.path().join("second.safetensors");
    ok(&[&first, &files[1], &"-o", &second, &"-q"]);
    let bytes = std::fs::read(&second).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().as_ref().unwrap();
    assert_eq!(meta["model_soup.method"], "linear");
    for stale in [
        "model_soup.seed",
        "model_soup.base",
        "model_soup.parameters",
    ] {
        assert!(
            !meta.contains_key(stale),
            "{stale} came from the first input"
        );
    }
}

/// A companion file that can't be written (here past a file-size limit, as a full disk would
/// be) fails the run before the merge's work: the error names it, not the NaN that the merge
/// itself would have stopped at under --strict.
#[test]
fn companions_are_written_before_the_merge_work() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    write_companions(&dirs[0], "float32");
    // 1 MiB of tokenizer against a 512 KiB limit; the shards stay under it.
    std::fs::write(dirs[0].join("tokenizer.json"), vec![b' '; 1 << 20]).unwrap();
    let nan = tmp.path().join("nan.safetensors");
    let mut tensors = model(9);
    let big = tensors
        .iter_mut()
        .find(|s| s.name == "model.big.weight")
        .unwrap();
    big.data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    write(&nan, &tensors);
    let out = tmp.path().join("soup");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -f 1024 && exec \"$@\"")
        .arg("sh")
        .arg(soup_merge_path())
        .args([dirs[0].as_os_str(), nan.as_os_str()])
        .args(["--strict", "--shard-size", "100KB", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("tokenizer.json") && err.contains("too large"),
        "{err}"
    );
    nothing_left(tmp.path(), "soup");
    // Without the limit, the merge itself stops at the NaN.
    fails(
        &[
            &dirs[0],
            &nan,
            &"--strict",
            &"--shard-size",
            &"100KB",
            &"-o",
            &out,
        ],
        &["model.big.weight"],
    );
}

/// Every tensor of a mixed-dtype soup starts at a multiple of its element size, in a single
/// file and in every shard, as the safetensors library lays files out (widest dtype first,
/// then by name): a loader that maps the file can use each tensor in place.
#[test]
fn tensors_are_aligned_to_their_element_size_in_files_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let (files, _) = three_inputs(tmp.path());
    let single = tmp.path().join("single.safetensors");
    let dir = tmp.path().join("sharded");
    ok(&[&files[0], &files[1], &"-o", &single]);
    ok(&[&files[0], &files[1], &"-o", &dir, &"--shard-size", &"50KB"]);
    let mut outputs = vec![single];
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            outputs.push(p);
        }
    }
    assert!(outputs.len() > 2, "{outputs:?}");
    for path in outputs {
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut order: Vec<(usize, D, String)> = Vec::new();
        for (name, view) in st.tensors() {
            let size = view.dtype().bitsize() / 8;
            let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
            if !view.data().is_empty() {
                assert_eq!(
                    at % size,
                    0,
                    "{}: {name} ({:?}) at {at}",
                    path.display(),
                    view.dtype()
                );
            }
            order.push((at, view.dtype(), name));
        }
        order.sort();
        let dtypes: Vec<D> = order.iter().map(|o| o.1).collect();
        let mut widest_first = dtypes.clone();
        widest_first.sort_by_key(|d| std::cmp::Reverse(d.bitsize()));
        assert_eq!(
            dtypes.iter().map(|d| d.bitsize()).collect::<Vec<_>>(),
            widest_first.iter().map(|d| d.bitsize()).collect::<Vec<_>>(),
            "{}: {order:?}",
            path.display()
        );
    }
}

#[test]
fn an_index_is_read_with_a_bounded_cost() {
    // Between 64 MiB and the old 256 MiB cap: an index that size parses into over a gigabyte.
    corrupt_case(
        "a 100 MiB index",
        |d| {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(d.join("model.safetensors.index.json"))
                .unwrap();
            f.set_len(100 << 20).unwrap();
        },
        &["model.safetensors.index.json", "at most 67108864 bytes"],
    );
    // A FIFO never blocks the read (model_dir::open looks before, but the file can change).
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("model.safetensors.index.json");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(model_soup::format::ShardIndex::read(&fifo).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("reading an index that is a FIFO blocked");
    assert!(r.unwrap_err().contains("not a regular file"));
}

/// A config.json is parsed whole to set its dtype, at many times its size in memory: one past
/// 8 MiB (real ones are under 1 MiB) is refused, naming the file, before any tensor is read.
#[test]
fn an_oversized_config_is_refused_not_parsed() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    let config = std::fs::File::create(dirs[0].join("config.json")).unwrap();
    config.set_len((8 << 20) + 1).unwrap();
    let out = tmp.path().join("soup");
    fails(
        &[&dirs[0], &dirs[1], &"--dtype", &"bf16", &"-o", &out],
        &["config.json", "at most 8388608 bytes"],
    );
    assert!(!out.exists());
}

/// A config.json that is there but skipped (a FIFO) gets its own warning, and the output's
/// missing config is put down to it, not to "no input has one".
#[test]
fn a_skipped_config_is_named_as_the_reason_the_output_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    let config = dirs[0].join("config.json");
    let _ = std::fs::remove_file(&config);
    let made = std::process::Command::new("mkfifo").arg(&config).status();
    assert!(made.unwrap().success());
    let out = tmp.path().join("soup");
    let o = run_merge(&[&dirs[0], &dirs[1], &"-o", &out, &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    let kinds: Vec<&str> = warnings
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"companion-skipped"), "{kinds:?}");
    let no_config = warnings.iter().find(|w| w["kind"] == "no-config").unwrap();
    let message = no_config["message"].as_str().unwrap();
    assert!(message.contains("was skipped"), "{message}");
    assert!(!message.contains("no base or input"), "{message}");
    assert!(!out.join("config.json").exists());
}

/// The model card states the dtype rule the merge followed. With a base (or a recipe without
/// `dtype`) each tensor takes its inputs' promoted dtype, so a bf16 base with f32 fine-tunes
/// gives f32: the card says so, not "as the first model's" (the bf16 base, listed first).
#[test]
fn the_model_card_names_the_promoted_dtype_of_a_merge_with_a_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(41);
    let mut dirs = Vec::new();
    for (i, dtype) in [D::BF16, D::F32, D::F32].into_iter().enumerate() {
        let d = dir.path().join(format!("m{i}"));
        std::fs::create_dir(&d).unwrap();
        write(
            &d.join("model.safetensors"),
            &[spec("w", dtype, &[4, 4], floats(&mut rng, dtype, 16))],
        );
        dirs.push(d);
    }
    let out = dir.path().join("soup");
    ok(&[
        &"--method",
        &"task_arithmetic",
        &"--base",
        &dirs[0],
        &dirs[1],
        &dirs[2],
        &"-o",
        &out,
    ]);
    assert_eq!(read_dir(&out)["w"].0, D::F32, "promoted from bf16 and f32");
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    let line = card
        .lines()
        .find(|l| l.starts_with("Output dtype:"))
        .expect("the card states the output dtype");
    assert!(
        !line.contains("first model") && line.contains("promotion"),
        "{line}"
    );

    // Without a base, each tensor keeps the first input's dtype, and the card says that.
    let plain = dir.path().join("plain");
    ok(&[&dirs[0], &dirs[1], &"-o", &plain]);
    assert_eq!(read_dir(&plain)["w"].0, D::BF16);
    let card = std::fs::read_to_string(plain.join("README.md")).unwrap();
    assert!(
        card.contains("Output dtype: as the first model's."),
        "{card}"
    );

    // linear's --base only names where the config comes from: no promotion, as documented.
    let linear = dir.path().join("linear");
    ok(&[&dirs[0], &dirs[1], &"--base", &dirs[2], &"-o", &linear]);
    assert_eq!(read_dir(&linear)["w"].0, D::BF16);
    let card = std::fs::read_to_string(linear.join("README.md")).unwrap();
    assert!(
        card.contains("Output dtype: as the first model's."),
        "{card}"
    );
}

/// A model with custom code (`auto_map` in its config or tokenizer config, for transformers'
/// `trust_remote_code`) gives an output that can't load without the code's `.py` files, which
/// are not copied: a `remote-code` warning names each local module once, and leaves out a
/// class that lives in another repository (`repo--module.Class`).
#[test]
fn custom_model_code_that_is_not_copied_is_named_in_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, dirs) = three_inputs(tmp.path());
    write_companions(&dirs[0], "float32");
    std::fs::write(
        dirs[0].join("config.json"),
        r#"{"architectures": ["XForCausalLM"], "auto_map": {
            "AutoConfig": "configuration_x.XConfig",
            "AutoModel": "modeling_x.XModel",
            "AutoModelForCausalLM": "modeling_x.XForCausalLM",
            "AutoModelForSequenceClassification": "other/repo--modeling_y.YModel"}}"#,
    )
    .unwrap();
    std::fs::write(
        dirs[0].join("tokenizer_config.json"),
        r#"{"auto_map": {"AutoTokenizer": ["tokenization_x.XTokenizer", null]}}"#,
    )
    .unwrap();
    let out = tmp.path().join("soup");
    let json = ok(&[&dirs[0], &dirs[1], &"--json", &"-o", &out]);
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let warnings: Vec<&serde_json::Value> = report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["kind"] == "remote-code")
        .collect();
    assert_eq!(warnings.len(), 1, "{report}");
    let message = warnings[0]["message"].as_str().unwrap();
    assert!(
        message.contains("(configuration_x.py, modeling_x.py, tokenization_x.py)"),
        "{message}"
    );
    assert!(!message.contains("modeling_y"), "{message}");
    assert!(out.join("config.json").is_file());

    // Without an auto_map there is no such warning.
    write_companions(&dirs[0], "float32");
    let json = ok(&[
        &dirs[0],
        &dirs[1],
        &"--json",
        &"-o",
        &tmp.path().join("plain"),
    ]);
    assert!(!json.contains("remote-code"), "{json}");
}
