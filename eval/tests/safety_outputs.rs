//! The output policy, tried as a careless or hostile user would, in both tools: every output
//! (`-o`, `--plot`) against everything a run reads (ingredients, shards, indexes, `--base`,
//! `--config`, datasets, companion files), through symbolic links, `..` and hard links;
//! special files; directories that aren't the tool's; modes; stale temporaries; companion
//! links that leave the model directory; non-UTF-8 paths in every role.
//!
//! Each test snapshots the type, bytes and mode of everything in its directory before and after
//! a run: nothing may change except an output the run was allowed to write.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    common::repo_root().join("fixtures")
}

/// What a directory entry is, for comparing before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    File { mode: u32, bytes: Vec<u8> },
    Dir { mode: u32 },
    Link { target: PathBuf },
    Special { mode: u32 },
}

type Snapshot = BTreeMap<PathBuf, Entry>;

/// Everything under `root`, links not followed, FIFOs never opened. The mode includes the
/// file type bits, so a FIFO that became a file is a change.
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let entry = if meta.file_type().is_symlink() {
                Entry::Link {
                    target: std::fs::read_link(&path).unwrap(),
                }
            } else if meta.is_dir() {
                stack.push(path.clone());
                Entry::Dir {
                    mode: meta.mode() & 0o7777,
                }
            } else if meta.is_file() {
                Entry::File {
                    mode: meta.mode() & 0o7777,
                    bytes: std::fs::read(&path).unwrap(),
                }
            } else {
                Entry::Special { mode: meta.mode() }
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// The paths whose entry differs between two snapshots.
fn changed(before: &Snapshot, after: &Snapshot) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = before
        .iter()
        .filter(|(p, e)| after.get(*p) != Some(*e))
        .map(|(p, _)| p.clone())
        .collect();
    paths.extend(after.keys().filter(|p| !before.contains_key(*p)).cloned());
    paths.sort();
    paths
}

/// The sandbox every test works in: real fixture models and data, a model directory with a
/// companion link that leaves it, a base directory, a recipe, someone's project, special files,
/// links, a hard link, a private file, and outputs a previous run could have written.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let models = fixtures().join("models");
        for (from, to) in [
            ("ft-lr2e-3", "a"),
            ("ft-lr2e-3-long", "b"),
            ("ft-lr3e-1-poor", "poor"),
        ] {
            std::fs::copy(
                models.join(format!("{from}.safetensors")),
                root.join(format!("{to}.safetensors")),
            )
            .unwrap();
        }
        for split in ["val", "test"] {
            std::fs::copy(
                fixtures().join(format!("digits/{split}.safetensors")),
                root.join(format!("{split}.safetensors")),
            )
            .unwrap();
        }
        // A sharded model directory made by soup-merge itself, with companions.
        let o = merge_str(
            root,
            &["a.safetensors", "-o", "ftA", "--shard-size", "10KB", "-q"],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        std::fs::write(root.join("ftA/config.json"), r#"{"model_type": "cnn"}"#).unwrap();
        std::fs::write(root.join("secret.txt"), "-----BEGIN PRIVATE KEY-----").unwrap();
        std::fs::set_permissions(root.join("secret.txt"), PermissionsExt::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("ftA/tokenizer.json")).unwrap();
        std::fs::create_dir(root.join("base")).unwrap();
        std::fs::write(root.join("base/config.json"), r#"{"model_type": "cnn"}"#).unwrap();
        std::fs::write(
            root.join("recipe.yaml"),
            "merge_method: linear\nmodels:\n  - model: a.safetensors\n    parameters: {weight: 1.0}\n  - model: b.safetensors\n    parameters: {weight: 1.0}\n",
        )
        .unwrap();
        // A recipe whose method has no base: mergekit merges its base_model as one more
        // model, and it is the config source; something the run reads either way.
        std::fs::copy(
            root.join("b.safetensors"),
            root.join("base/model.safetensors"),
        )
        .unwrap();
        std::fs::write(
            root.join("recipe_base.yaml"),
            "merge_method: linear\nbase_model: base\nparameters: {weight: 1.0}\nmodels:\n  - model: a.safetensors\n  - model: b.safetensors\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("project/.git")).unwrap();
        std::fs::write(root.join("project/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(root.join("project/train.py"), "print('train')\n").unwrap();
        std::fs::write(root.join("project/model.safetensors"), "not really").unwrap();
        let fifo = root.join("fifo.safetensors");
        assert!(Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        drop(std::os::unix::net::UnixListener::bind(root.join("sock.safetensors")).unwrap());
        std::os::unix::fs::symlink("a.safetensors", root.join("link_a.safetensors")).unwrap();
        std::os::unix::fs::symlink("/dev/null", root.join("devnull.safetensors")).unwrap();
        std::fs::hard_link(root.join("a.safetensors"), root.join("hard_a.safetensors")).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        // Outputs an earlier run wrote, with the tool's mark: replaceable with --force.
        let o = merge_str(
            root,
            &[
                "a.safetensors",
                "poor.safetensors",
                "-o",
                "old.safetensors",
                "-q",
            ],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        // Another tool's checkpoint, not an input of any run: never replaced.
        std::fs::copy(root.join("b.safetensors"), root.join("theirs.safetensors")).unwrap();
        std::fs::set_permissions(
            root.join("old.safetensors"),
            PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let o = merge_str(
            root,
            &["a.safetensors", "b.safetensors", "-o", "oldsoup", "-q"],
        );
        assert!(o.status.success(), "{}", common::stderr(&o));
        Sandbox { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Paths in the sandbox that no run may change whatever it reads: special files, links, and a
/// directory that isn't a model.
const NEVER_REPLACED: &[&str] = &[
    "fifo.safetensors",
    "sock.safetensors",
    "devnull.safetensors",
    "link_a.safetensors",
    "project",
];

/// The sandbox names that are one file (or directory) under other names.
const ALIASES: &[&[&str]] = &[
    &[
        "a.safetensors",
        "link_a.safetensors",
        "hard_a.safetensors",
        "sub/../a.safetensors",
    ],
    &["ftA", "sub/../ftA"],
];

/// What a run with `args` reads, under every name it has in the sandbox, plus what is never
/// replaced: none of it may change.
fn protected(args: &[&str]) -> Vec<String> {
    let mut reads: Vec<&str> = Vec::new();
    let mut flag = "";
    for a in args {
        match (flag, *a) {
            ("-o" | "--plot", _) => {}
            ("--config", "recipe.yaml") => {
                reads.extend(["recipe.yaml", "a.safetensors", "b.safetensors"])
            }
            (_, a) if !a.starts_with('-') => reads.push(a),
            _ => {}
        }
        flag = a;
    }
    let mut out: Vec<String> = NEVER_REPLACED.iter().map(|s| s.to_string()).collect();
    for r in reads {
        out.push(r.to_string());
        for group in ALIASES {
            if group.contains(&r) {
                out.extend(group.iter().map(|s| s.to_string()));
            }
        }
    }
    out
}

/// A path as the sandbox snapshot names it (`sub/../x` is `x`).
fn entry_name(path: &str) -> PathBuf {
    PathBuf::from(path.strip_prefix("sub/../").unwrap_or(path))
}

fn merge(dir: &Path, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut cmd = common::soup_merge();
    cmd.current_dir(dir);
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run soup-merge")
}

fn eval(dir: &Path, args: &[&dyn AsRef<OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_soup-eval"));
    cmd.current_dir(dir).env("RAYON_NUM_THREADS", "1");
    for a in args {
        cmd.arg(a.as_ref());
    }
    cmd.output().expect("run soup-eval")
}

fn eval_str(dir: &Path, args: &[&str]) -> Output {
    let args: Vec<&dyn AsRef<OsStr>> = args.iter().map(|a| a as &dyn AsRef<OsStr>).collect();
    eval(dir, &args)
}

fn merge_str(dir: &Path, args: &[&str]) -> Output {
    let args: Vec<&dyn AsRef<OsStr>> = args.iter().map(|a| a as &dyn AsRef<OsStr>).collect();
    merge(dir, &args)
}

/// A failure: exit 1, one `error:` line holding every needle, no panic.
fn refused(o: &Output, needles: &[&str]) -> String {
    let err = common::stderr(o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{}' lacks '{n}'", lines[0]);
    }
    lines[0].to_string()
}

/// Runs `f` in the sandbox and checks that only `may_change` changed.
fn only_changes(sandbox: &Sandbox, may_change: &[&str], f: impl FnOnce(&Path) -> Output) -> Output {
    let before = snapshot(sandbox.root());
    let o = f(sandbox.root());
    let after = snapshot(sandbox.root());
    for path in changed(&before, &after) {
        assert!(
            may_change.iter().any(|m| path.starts_with(m)),
            "{} changed; stderr: {}",
            path.display(),
            common::stderr(&o)
        );
    }
    o
}

const EVAL: &[&str] = &[
    "--arch",
    "digits-cnn",
    "--val",
    "val.safetensors",
    "--test",
    "test.safetensors",
    "-q",
];

fn eval_args<'a>(command: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![command];
    args.extend_from_slice(EVAL);
    args.extend_from_slice(&["a.safetensors", "b.safetensors", "poor.safetensors"]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn special_files_and_links_are_never_replaced_even_with_force() {
    let s = Sandbox::new();
    for (target, says) in [
        ("fifo.safetensors", "FIFO"),
        ("sock.safetensors", "socket"),
        ("devnull.safetensors", "symbolic link"),
        ("link_a.safetensors", "input"),
    ] {
        let o = only_changes(&s, &[], |d| {
            merge_str(
                d,
                &["a.safetensors", "b.safetensors", "-o", target, "--force"],
            )
        });
        refused(&o, &[target, says]);
        let o = only_changes(&s, &[], |d| {
            eval_str(d, &eval_args("report", &["--plot", target, "--force"]))
        });
        refused(&o, &[target]);
    }
    // A device named as the output (CI runs as root): refused, and still a device.
    let o = merge_str(s.root(), &["a.safetensors", "-o", "/dev/null", "--force"]);
    refused(&o, &["/dev/null", "character device"]);
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &meta.file_type()
    ));
}

#[test]
fn no_output_may_touch_what_the_run_reads_in_any_role() {
    let s = Sandbox::new();
    // soup-merge: inputs, shards, indexes, --base, --config, directories holding inputs,
    // outputs inside an input's model directory; as given, through links, `..` and hard links.
    for args in [
        vec![
            "a.safetensors",
            "b.safetensors",
            "-o",
            "hard_a.safetensors",
            "--force",
        ],
        vec![
            "a.safetensors",
            "b.safetensors",
            "-o",
            "sub/../a.safetensors",
            "--force",
        ],
        vec![
            "a.safetensors",
            "ftA",
            "-o",
            "ftA/model.safetensors.index.json",
            "--force",
        ],
        vec![
            "a.safetensors",
            "ftA",
            "-o",
            "ftA/model-00001-of-00003.safetensors",
            "--force",
        ],
        vec!["a.safetensors", "ftA", "-o", "ftA/new.safetensors"],
        vec![
            "a.safetensors",
            "b.safetensors",
            "-o",
            "base",
            "--base",
            "base",
            "--force",
        ],
        vec!["--config", "recipe.yaml", "-o", "recipe.yaml", "--force"],
        vec!["--config", "recipe_base.yaml", "-o", "base", "--force"],
        vec!["--config", "recipe_base.yaml", "-o", "base/soup"],
        vec![
            "--config",
            "recipe_base.yaml",
            "-o",
            "base/model.safetensors",
            "--force",
        ],
        vec!["a.safetensors", "b.safetensors", "-o", ".", "--force"],
        vec!["ftA", "-o", "soupdir", "--base", "ftA/..", "--force"],
    ] {
        let o = only_changes(&s, &[], |d| merge_str(d, &args));
        let line = refused(&o, &[]);
        assert!(!line.contains("already exists"), "{args:?}: {line}");
    }
    // soup-eval: -o onto an ingredient greedy rejected, onto a dataset; --plot onto an input,
    // a dataset, or -o itself.
    for extra in [
        vec!["-o", "poor.safetensors", "--force"],
        vec!["-o", "val.safetensors", "--force"],
        vec!["--plot", "b.safetensors"],
        vec!["--plot", "b.safetensors", "--force"],
        vec!["--plot", "test.safetensors", "--force"],
        vec!["-o", "g.safetensors", "--plot", "g.safetensors"],
        vec!["-o", "gdir", "--plot", "gdir/plot.svg"],
    ] {
        let o = only_changes(&s, &[], |d| eval_str(d, &eval_args("report", &extra)));
        refused(&o, &[]);
    }
    let o = only_changes(&s, &[], |d| {
        eval_str(
            d,
            &eval_args("greedy", &["-o", "poor.safetensors", "--force"]),
        )
    });
    refused(&o, &["poor.safetensors", "input"]);
}

#[test]
fn a_model_directory_reached_through_its_files_is_protected_like_one_given() {
    let s = Sandbox::new();
    let root = s.root();
    // X holds only links to ftA's files: X is an input, so ftA is the model directory read.
    std::fs::create_dir(root.join("X")).unwrap();
    for e in std::fs::read_dir(root.join("ftA")).unwrap() {
        let name = e.unwrap().file_name();
        let target = Path::new("../ftA").join(&name);
        std::os::unix::fs::symlink(target, root.join("X").join(&name)).unwrap();
    }
    // Da is a model directory whose weights file is given on its own.
    std::fs::create_dir(root.join("Da")).unwrap();
    std::fs::copy(
        root.join("a.safetensors"),
        root.join("Da/model.safetensors"),
    )
    .unwrap();
    std::fs::write(root.join("Da/config.json"), r#"{"model_type": "cnn"}"#).unwrap();
    for args in [
        vec!["X", "b.safetensors", "-o", "ftA/model.safetensors"],
        vec!["X", "b.safetensors", "-o", "ftA/soup.safetensors"],
        vec!["X", "b.safetensors", "-o", "ftA/config.json.d"],
        vec!["X", "b.safetensors", "-o", "X/../ftA/new"],
        vec![
            "Da/model.safetensors",
            "b.safetensors",
            "-o",
            "Da/model.safetensors.index.json",
        ],
        vec![
            "Da/model.safetensors",
            "b.safetensors",
            "-o",
            "Da/model-00001-of-00002.safetensors",
        ],
        vec![
            "Da/model.safetensors",
            "b.safetensors",
            "-o",
            "Da/tokenizer.json",
        ],
        vec![
            "--method",
            "task_arithmetic",
            "--base",
            "Da/model.safetensors",
            "b.safetensors",
            "-o",
            "Da/model.safetensors.index.json",
        ],
    ] {
        let o = only_changes(&s, &[], |d| merge_str(d, &args));
        let line = refused(&o, &["write the output elsewhere"]);
        assert!(!line.contains("already exists"), "{args:?}: {line}");
    }
    // A soup beside a model directory's weights file adds nothing that directory loads.
    let o = only_changes(&s, &["Da/soup.safetensors"], |d| {
        merge_str(
            d,
            &[
                "Da/model.safetensors",
                "b.safetensors",
                "-o",
                "Da/soup.safetensors",
            ],
        )
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    // So does model.safetensors beside plain checkpoints in a folder that is no model's, also
    // when a model directory's weights are a link to one of them.
    std::fs::create_dir(root.join("Y")).unwrap();
    std::os::unix::fs::symlink("../a.safetensors", root.join("Y/model.safetensors")).unwrap();
    let o = only_changes(&s, &["model.safetensors"], |d| {
        merge_str(d, &["Y", "b.safetensors", "-o", "model.safetensors"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
}

/// soup-eval read its ingredients by the paths given only, so a model directory reached
/// through an ingredient's files was unprotected when the greedy soup rejected that
/// ingredient: `-o` and `--plot` landed inside it, or added weights beside a weights file
/// given alone. They are refused as soup-merge refuses them.
#[test]
fn soup_evals_outputs_never_land_in_a_model_directory_read_through_its_files() {
    let s = Sandbox::new();
    let root = s.root();
    // P is a model directory of the poor fine-tune, which every greedy soup rejects; XP holds
    // only links to P's files.
    std::fs::create_dir(root.join("P")).unwrap();
    std::fs::copy(
        root.join("poor.safetensors"),
        root.join("P/model.safetensors"),
    )
    .unwrap();
    std::fs::write(root.join("P/config.json"), r#"{"model_type": "cnn"}"#).unwrap();
    std::fs::create_dir(root.join("XP")).unwrap();
    for name in ["model.safetensors", "config.json"] {
        std::os::unix::fs::symlink(Path::new("../P").join(name), root.join("XP").join(name))
            .unwrap();
    }
    let base = ["--arch", "digits-cnn", "--val", "val.safetensors", "-q"];
    for (command, poor, extra) in [
        ("greedy", "XP", ["-o", "P/soup.safetensors"]),
        ("report", "XP", ["--plot", "P/soups.svg"]),
        (
            "greedy",
            "P/model.safetensors",
            ["-o", "P/model-00001-of-00002.safetensors"],
        ),
    ] {
        let mut args = vec![command];
        args.extend(base);
        args.extend(["b.safetensors", poor]);
        args.extend(extra);
        let o = only_changes(&s, &[], |d| eval_str(d, &args));
        refused(&o, &["write the output elsewhere"]);
    }
}

/// Unmounts a bind mount when dropped, before the sandbox is removed.
struct BindMount(PathBuf);

impl BindMount {
    /// Binds `from` at `at`, or `None` where this user may not mount (the test then skips).
    fn new(from: &Path, at: &Path) -> Option<BindMount> {
        std::fs::create_dir(at).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .args([from, at])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| BindMount(at.to_path_buf()))
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A bind mount shows a model directory at a second path that no comparison of paths relates
/// to the first: outputs under the mount landed inside the model directory the run read (and
/// the other way round), and weights written beside its weights file changed what it loads.
/// The policy compares folders by identity too.
#[test]
fn a_bind_mount_of_a_model_directory_is_protected_like_the_directory() {
    let s = Sandbox::new();
    let root = s.root();
    let Some(_mount) = BindMount::new(&root.join("ftA"), &root.join("mnt")) else {
        eprintln!("skipped: mount --bind is not permitted here");
        return;
    };
    for args in [
        vec!["ftA", "b.safetensors", "-o", "mnt/soup.safetensors"],
        vec!["ftA", "b.safetensors", "-o", "mnt/soup"],
        vec!["mnt", "b.safetensors", "-o", "ftA/soup.safetensors"],
        vec![
            "ftA/model-00001-of-00003.safetensors",
            "b.safetensors",
            "-o",
            "mnt/model.safetensors",
        ],
    ] {
        let o = only_changes(&s, &[], |d| merge_str(d, &args));
        refused(&o, &["write the output elsewhere"]);
    }
    let o = only_changes(&s, &[], |d| {
        let mut args = vec!["report", "--arch", "digits-cnn", "--val", "val.safetensors"];
        args.extend(["-q", "ftA", "b.safetensors", "--plot", "mnt/soups.svg"]);
        eval_str(d, &args)
    });
    refused(&o, &["write the output elsewhere"]);
    for flag in ["--log", "--work-dir"] {
        let o = only_changes(&s, &[], |d| {
            eval_str(
                d,
                &[
                    "greedy", "-q", "--scorer", "echo 1", "ftA", "oldsoup", flag, "mnt/new",
                ],
            )
        });
        refused(&o, &["inside", "ftA"]);
    }
}

/// `--force` was judged once, before the run: a plot path that was free then and that a
/// `--scorer` (or anyone) wrote during the search was replaced at the end, though the tool
/// never wrote that file. The policy is applied again just before the rename.
#[test]
fn force_never_replaces_a_file_that_appeared_during_the_run() {
    let s = Sandbox::new();
    for (command, flag, path) in [
        ("report", "--plot", "results.svg"),
        ("greedy", "-o", "results.safetensors"),
    ] {
        let target = s.root().join(path);
        let scorer = format!(
            "echo my results > {}; echo 0.5; : {{checkpoint}}",
            target.display()
        );
        let o = eval_str(
            s.root(),
            &[
                command,
                "-q",
                "--shell",
                "--scorer",
                &scorer,
                "a.safetensors",
                "b.safetensors",
                flag,
                path,
                "--force",
            ],
        );
        refused(&o, &[path, "not an output of this tool"]);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "my results\n");
    }
}

/// Runs `tool` with `args` in the sandbox twice, its standard output and then its standard
/// error appended to the sandbox's file `into`: each run must be refused with exit status 1,
/// the refusal told on the other stream, and nothing written anywhere.
fn refused_through_an_appended_stream(s: &Sandbox, tool: &str, args: &[&str], into: &str) {
    let append = || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.root().join(into))
            .unwrap()
    };
    for stderr in [false, true] {
        let o = only_changes(s, &[], |d| {
            let mut cmd = match tool {
                "soup-merge" => common::soup_merge(),
                _ => Command::new(env!("CARGO_BIN_EXE_soup-eval")),
            };
            cmd.current_dir(d).args(args);
            if stderr {
                cmd.stderr(append());
            } else {
                cmd.stdout(append());
            }
            cmd.output().unwrap()
        });
        assert_eq!(o.status.code(), Some(1), "{tool} {args:?} into {into}");
        let told = if stderr {
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            common::stderr(&o)
        };
        assert!(
            told.contains(into) && told.contains("redirect standard"),
            "{tool} {args:?}: {told}"
        );
    }
}

/// A shell opens `--json >> a.safetensors` before the run: the summary (and with `--json` the
/// error object too) was appended to the input. Standard output or error that is a file the
/// run reads is refused before any work, and nothing at all is written to it.
#[test]
fn standard_output_or_error_appending_to_an_input_is_refused_and_writes_nothing_there() {
    let s = Sandbox::new();
    let merge_args = [
        "a.safetensors",
        "b.safetensors",
        "-o",
        "new.safetensors",
        "--json",
    ];
    let eval_args = eval_args("score", &["--json"]);
    for (tool, args, into) in [
        ("soup-merge", &merge_args[..], "a.safetensors"),
        (
            "soup-merge",
            &["--config", "recipe.yaml", "-o", "new.safetensors", "--json"][..],
            "b.safetensors",
        ),
        ("soup-eval", &eval_args[..], "poor.safetensors"),
        ("soup-eval", &eval_args[..], "val.safetensors"),
    ] {
        refused_through_an_appended_stream(&s, tool, args, into);
    }
}

/// What is already at `-o` or `--plot` (a soup or plot from an earlier run) is never written
/// through a standard stream appended to it: the refusal "already exists", or with `--force`
/// a run that failed later, appended its error after the soup's data or the plot's SVG, and
/// left the file the run did not replace unreadable. Refused before any work, for both tools.
#[test]
fn a_stream_appended_to_an_existing_output_is_refused_and_writes_nothing_there() {
    // The sandbox's old.safetensors is a soup of an earlier run.
    let s = Sandbox::new();
    let plot = format!("{}\n<svg/>\n", model_soup::format::PLOT_MARK);
    std::fs::write(s.root().join("prior.svg"), plot).unwrap();
    let greedy = eval_args("greedy", &["-o", "old.safetensors"]);
    let forced = eval_args("greedy", &["-o", "old.safetensors", "--force", "--json"]);
    let plotted = eval_args("report", &["--plot", "prior.svg", "--force", "--json"]);
    let merged = ["a.safetensors", "b.safetensors", "-o", "old.safetensors"];
    for (tool, args, into) in [
        ("soup-eval", &greedy[..], "old.safetensors"),
        ("soup-eval", &forced[..], "old.safetensors"),
        ("soup-eval", &plotted[..], "prior.svg"),
        ("soup-merge", &merged[..], "old.safetensors"),
    ] {
        refused_through_an_appended_stream(&s, tool, args, into);
    }
}

/// A trailing slash names a directory, but `-o x.safetensors/` and `--plot p.svg/` resolved
/// to the name without it and wrote a file there (and `--log l.jsonl/` failed with the
/// kernel's "Is a directory"). A file output ending in a slash is refused, naming the fix.
#[test]
fn a_file_output_ending_in_a_slash_is_refused() {
    let s = Sandbox::new();
    for path in ["new.safetensors/", "new.safetensors/.", "NEW.SAFETENSORS//"] {
        let o = only_changes(&s, &[], |d| {
            merge_str(d, &["a.safetensors", "b.safetensors", "-o", path])
        });
        refused(&o, &["ends in a slash", "without .safetensors"]);
        let o = only_changes(&s, &[], |d| {
            eval_str(d, &eval_args("greedy", &["-o", path]))
        });
        refused(&o, &["ends in a slash", "-o"]);
    }
    let scorer = ["-q", "--shell", "--scorer", "echo 0.5; : {checkpoint}"];
    for (flag, path) in [
        ("--plot", "p.svg/"),
        ("--log", "l.jsonl/"),
        ("--resume", "l.jsonl/"),
    ] {
        let o = only_changes(&s, &[], |d| {
            let mut args = vec!["report"];
            args.extend(scorer);
            args.extend(["a.safetensors", "b.safetensors", flag, path]);
            eval_str(d, &args)
        });
        refused(&o, &["ends in a slash", flag]);
    }
    // A model directory may end in one.
    let o = only_changes(&s, &["newdir"], |d| {
        merge_str(
            d,
            &["a.safetensors", "b.safetensors", "-o", "newdir/", "-q"],
        )
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
}

#[test]
fn force_replaces_only_what_the_tool_wrote_and_keeps_its_mode() {
    let s = Sandbox::new();
    // Someone's project is not a model directory, whatever --force says.
    let o = only_changes(&s, &[], |d| {
        merge_str(
            d,
            &["a.safetensors", "b.safetensors", "-o", "project", "--force"],
        )
    });
    refused(&o, &["'.git'", "not a model file"]);
    let o = only_changes(&s, &[], |d| {
        eval_str(d, &eval_args("greedy", &["-o", "project", "--force"]))
    });
    refused(&o, &["'.git'", "not a model file"]);
    // Nor is a folder of someone's own checkpoints: soup-merge names its weights
    // model.safetensors or model-NNNNN-of-NNNNN.safetensors, and nothing else.
    std::fs::create_dir(s.root().join("ckpts")).unwrap();
    std::fs::copy(
        s.root().join("poor.safetensors"),
        s.root().join("ckpts/run-17-epoch-3.safetensors"),
    )
    .unwrap();
    std::fs::write(s.root().join("ckpts/README.md"), "notes\n").unwrap();
    let o = only_changes(&s, &[], |d| {
        merge_str(
            d,
            &["a.safetensors", "b.safetensors", "-o", "ckpts", "--force"],
        )
    });
    refused(&o, &["'run-17-epoch-3.safetensors'", "not a model file"]);
    // A directory output where a file is.
    let o = only_changes(&s, &[], |d| {
        merge_str(d, &["a.safetensors", "-o", "secret.txt", "--force"])
    });
    refused(&o, &["not a model directory"]);
    // A soup replaces an old soup and keeps its 0600.
    let o = only_changes(&s, &["old.safetensors"], |d| {
        merge_str(
            d,
            &[
                "a.safetensors",
                "b.safetensors",
                "-o",
                "old.safetensors",
                "--force",
            ],
        )
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    let mode = std::fs::metadata(s.root().join("old.safetensors"))
        .unwrap()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A directory of model files is replaced whole, by either tool.
    let o = only_changes(&s, &["oldsoup"], |d| {
        eval_str(d, &eval_args("greedy", &["-o", "oldsoup", "--force"]))
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(s.root().join("oldsoup/model.safetensors").is_file());
    // Files the tools did not create are not theirs to replace, --force or not: another
    // tool's checkpoint as -o, notes as --plot.
    let o = only_changes(&s, &[], |d| {
        merge_str(d, &["a.safetensors", "-o", "theirs.safetensors", "--force"])
    });
    refused(&o, &["not an output of this tool"]);
    std::fs::write(s.root().join("notes.svg"), "<svg>my drawing</svg>").unwrap();
    let o = only_changes(&s, &[], |d| {
        eval_str(d, &eval_args("report", &["--plot", "notes.svg", "--force"]))
    });
    refused(&o, &["not an output of this tool"]);
    // The plot replaces an earlier plot, keeping its mode too.
    let o = eval_str(s.root(), &eval_args("report", &["--plot", "p.svg"]));
    assert!(o.status.success(), "{}", common::stderr(&o));
    std::fs::set_permissions(s.root().join("p.svg"), PermissionsExt::from_mode(0o640)).unwrap();
    let o = eval_str(
        s.root(),
        &eval_args("report", &["--plot", "p.svg", "--force"]),
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    let meta = std::fs::metadata(s.root().join("p.svg")).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert!(std::fs::read_to_string(s.root().join("p.svg"))
        .unwrap()
        .contains("<svg"));
}

#[test]
fn companion_links_that_leave_the_model_directory_are_skipped_with_a_warning() {
    let s = Sandbox::new();
    let o = only_changes(&s, &["soupdir"], |d| {
        merge_str(d, &["ftA", "a.safetensors", "-o", "soupdir", "--json"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(s.root().join("soupdir/config.json").is_file());
    assert!(
        !s.root().join("soupdir/tokenizer.json").exists(),
        "the key travelled"
    );
    let err = common::stderr(&o);
    assert!(
        err.contains("warning:") && err.contains("tokenizer.json") && err.contains("secret.txt"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    let kinds: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"companion-skipped"), "{kinds:?}");

    // A Hugging Face cache snapshot links its files into the repository's blobs/: copied.
    let repo = s.root().join("hub/models--org--ft");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("snapshots/abc")).unwrap();
    std::fs::copy(s.root().join("a.safetensors"), repo.join("blobs/1111")).unwrap();
    std::fs::write(repo.join("blobs/2222"), r#"{"model_type": "cnn"}"#).unwrap();
    std::fs::write(repo.join("blobs/3333"), r#"{"tokenizer": 1}"#).unwrap();
    let snap = repo.join("snapshots/abc");
    std::os::unix::fs::symlink("../../blobs/1111", snap.join("model.safetensors")).unwrap();
    std::os::unix::fs::symlink("../../blobs/2222", snap.join("config.json")).unwrap();
    std::os::unix::fs::symlink("../../blobs/3333", snap.join("tokenizer.json")).unwrap();
    let o = merge(s.root(), &[&snap, &"a.safetensors", &"-o", &"cached"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert_eq!(
        std::fs::read_to_string(s.root().join("cached/tokenizer.json")).unwrap(),
        r#"{"tokenizer": 1}"#
    );
}

/// The name a run with pid `pid` gives its `n`th temporary for `dest`.
fn temporary_name(dest: &str, pid: u32, n: u32) -> String {
    format!(".{dest}.soup-tmp-{pid}-{n}")
}

/// A pid that is surely not running.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn only_temporaries_the_tool_provably_made_are_cleaned_up() {
    let s = Sandbox::new();
    let pid = dead_pid();
    // A dead run's marked temporaries: a soup file with its header, a directory with the mark.
    let stale_file = temporary_name("soup.safetensors", pid, 0);
    std::fs::copy(
        s.root().join("oldsoup/model.safetensors"),
        s.root().join(&stale_file),
    )
    .unwrap();
    let stale_dir = temporary_name("soupdir", pid, 0);
    std::fs::create_dir(s.root().join(&stale_dir)).unwrap();
    std::fs::write(
        s.root().join(&stale_dir).join(".model-soup-temporary"),
        "1\n",
    )
    .unwrap();
    // Look-alikes that are not the tool's to remove: a user file with no mark, and a marked
    // one the user gives as an input.
    let unmarked = temporary_name("soup.safetensors", pid, 1);
    std::fs::write(s.root().join(&unmarked), "my notes").unwrap();
    let input = temporary_name("soup.safetensors", pid, 2);
    std::fs::copy(
        s.root().join("oldsoup/model.safetensors"),
        s.root().join(&input),
    )
    .unwrap();
    let o = only_changes(&s, &["soup.safetensors", &stale_file], |d| {
        merge_str(d, &[&input, "b.safetensors", "-o", "soup.safetensors"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        !s.root().join(&stale_file).exists(),
        "a dead run's temporary stays"
    );
    assert!(s.root().join(&unmarked).exists() && s.root().join(&input).exists());
    let o = only_changes(&s, &["soupdir", &stale_dir], |d| {
        merge_str(d, &["a.safetensors", "b.safetensors", "-o", "soupdir"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!s.root().join(&stale_dir).exists());
    // The published directory carries no mark.
    assert!(!s.root().join("soupdir/.model-soup-temporary").exists());
    // A killed run's marked directory whose shard the user feeds back in is an input's home:
    // it stays, and so does the shard.
    let holder = temporary_name("again", pid, 0);
    std::fs::create_dir(s.root().join(&holder)).unwrap();
    std::fs::write(s.root().join(&holder).join(".model-soup-temporary"), "1\n").unwrap();
    std::fs::copy(
        s.root().join("a.safetensors"),
        s.root().join(&holder).join("model.safetensors"),
    )
    .unwrap();
    let shard = format!("{holder}/model.safetensors");
    let o = only_changes(&s, &["again"], |d| {
        merge_str(d, &[&shard, "b.safetensors", "-o", "again"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        s.root().join(&shard).is_file(),
        "the input's directory was removed"
    );
}

/// A temporary is a live run's while that run holds its lock, whatever its pid looks like
/// from here: a run in another PID namespace (a container sharing the folder) has a pid that
/// looks dead, and a dead run's pid may have been reused. And a complete soup directory killed
/// as it was published (its mark already removed, or the old output swapped out by `--force`)
/// is still the tool's leftover.
#[test]
fn a_temporary_is_live_while_its_lock_is_held_and_complete_leftovers_are_cleaned() {
    let s = Sandbox::new();
    // Locked by a live process (this test) under a pid that looks dead: kept.
    let locked = temporary_name("soup.safetensors", dead_pid(), 0);
    std::fs::copy(
        s.root().join("oldsoup/model.safetensors"),
        s.root().join(&locked),
    )
    .unwrap();
    let held = std::fs::File::open(s.root().join(&locked)).unwrap();
    held.lock().unwrap();
    // Unlocked, under a live pid (this test's, as if reused): a dead run's, removed.
    let reused = temporary_name("soup.safetensors", std::process::id(), 0);
    std::fs::copy(
        s.root().join("oldsoup/model.safetensors"),
        s.root().join(&reused),
    )
    .unwrap();
    let o = only_changes(&s, &["soup.safetensors", &reused], |d| {
        merge_str(
            d,
            &["a.safetensors", "b.safetensors", "-o", "soup.safetensors"],
        )
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(
        s.root().join(&locked).exists(),
        "a live run's temporary was removed"
    );
    assert!(!s.root().join(&reused).exists());
    // Released, it is a dead run's.
    drop(held);
    let o = only_changes(&s, &["soup.safetensors", &locked], |d| {
        merge_str(
            d,
            &[
                "a.safetensors",
                "b.safetensors",
                "-o",
                "soup.safetensors",
                "--force",
            ],
        )
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!s.root().join(&locked).exists());

    // A complete, unmarked soup directory under a dead run's temporary name: removed. One
    // holding a file that isn't a model file: left alone.
    let pid = dead_pid();
    let complete = temporary_name("soupdir", pid, 0);
    let foreign = temporary_name("soupdir", pid, 1);
    for name in [&complete, &foreign] {
        std::fs::create_dir(s.root().join(name)).unwrap();
        std::fs::copy(
            s.root().join("oldsoup/model.safetensors"),
            s.root().join(name).join("model.safetensors"),
        )
        .unwrap();
    }
    std::fs::write(s.root().join(&foreign).join("notes.txt"), "mine").unwrap();
    let o = only_changes(&s, &["soupdir", &complete], |d| {
        merge_str(d, &["a.safetensors", "b.safetensors", "-o", "soupdir"])
    });
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!s.root().join(&complete).exists());
    assert!(s.root().join(&foreign).join("notes.txt").exists());
}

#[test]
fn recipes_are_read_within_bounds() {
    let s = Sandbox::new();
    let deep = format!(
        "merge_method: linear\nmodels: {}{}\n",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    std::fs::write(s.root().join("deep.yaml"), deep).unwrap();
    let started = std::time::Instant::now();
    let o = only_changes(&s, &[], |d| {
        merge_str(d, &["--config", "deep.yaml", "-o", "x.safetensors"])
    });
    refused(&o, &["deep.yaml", "nests deeper"]);
    assert!(
        started.elapsed().as_secs_f64() < 1.0,
        "{:?}",
        started.elapsed()
    );
    std::fs::write(s.root().join("big.yaml"), vec![b'#'; 2 << 20]).unwrap();
    let o = merge_str(s.root(), &["--config", "big.yaml", "-o", "x.safetensors"]);
    refused(&o, &["big.yaml", "at most"]);
    let started = std::time::Instant::now();
    let o = merge_str(
        s.root(),
        &["--config", "fifo.safetensors", "-o", "x.safetensors"],
    );
    refused(&o, &["fifo.safetensors", "not a regular file"]);
    assert!(started.elapsed().as_secs_f64() < 1.0);
}

#[test]
fn values_the_user_did_not_mean() {
    let s = Sandbox::new();
    let o = merge_str(
        s.root(),
        &[
            "a.safetensors",
            "poor.safetensors",
            "-w",
            "0,0",
            "-o",
            "z.safetensors",
        ],
    );
    refused(&o, &["every weight", "is 0"]);
    let o = merge_str(
        s.root(),
        &[
            "a.safetensors",
            "b.safetensors",
            "poor.safetensors",
            "-w",
            "1e300,-1e300,1e-10",
            "--normalize",
            "-o",
            "z.safetensors",
        ],
    );
    refused(&o, &["non-finite", "nearly cancel"]);
    // An upper-case extension is a file, not a directory.
    let o = merge_str(
        s.root(),
        &["a.safetensors", "b.safetensors", "-o", "UP.SAFETENSORS"],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(s.root().join("UP.SAFETENSORS").is_file());
    // An unwritable --plot fails before the greedy soup is written.
    let o = only_changes(&s, &[], |d| {
        eval_str(
            d,
            &eval_args(
                "report",
                &["-o", "g.safetensors", "--plot", "missing/p.svg"],
            ),
        )
    });
    refused(&o, &["missing"]);
    // greedy works without --test.
    let o = eval_str(
        s.root(),
        &[
            "greedy",
            "--arch",
            "digits-cnn",
            "--val",
            "val.safetensors",
            "a.safetensors",
            "b.safetensors",
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", common::stderr(&o));
}

fn odd(name: &[u8]) -> OsString {
    OsStr::from_bytes(name).to_os_string()
}

#[test]
fn non_utf8_paths_in_every_role_never_panic_and_keep_every_byte_in_json() {
    let s = Sandbox::new();
    let r = s.root();
    let input = odd(b"in\xff.safetensors");
    std::fs::copy(r.join("a.safetensors"), r.join(&input)).unwrap();
    let dir = odd(b"dir\xfe");
    std::fs::create_dir(r.join(&dir)).unwrap();
    std::fs::copy(
        r.join("a.safetensors"),
        r.join(&dir).join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(r.join(&dir).join("config.json"), "{}").unwrap();
    let recipe = odd(b"r\xfd.yaml");
    std::fs::write(
        r.join(&recipe),
        "merge_method: linear\nmodels:\n  - model: a.safetensors\n    parameters: {weight: 1.0}\n",
    )
    .unwrap();
    let val = odd(b"val\xfc.safetensors");
    std::fs::copy(r.join("val.safetensors"), r.join(&val)).unwrap();
    let out = odd(b"out\xfb.safetensors");
    let outdir = odd(b"outdir\xfa");
    let plot = odd(b"p\xf9.svg");

    let runs: Vec<Output> = vec![
        merge(r, &[&input, &"b.safetensors", &"-o", &out, &"--json"]),
        merge(
            r,
            &[
                &dir,
                &"b.safetensors",
                &"--base",
                &dir,
                &"-o",
                &outdir,
                &"--json",
            ],
        ),
        merge(
            r,
            &[
                &"--config",
                &recipe,
                &"-o",
                &"cfg.safetensors",
                &"--json",
                &"--verify",
            ],
        ),
        merge(r, &[&input, &"b.safetensors", &"--dry-run", &"--json"]),
        eval(
            r,
            &[
                &"report",
                &"--arch",
                &"digits-cnn",
                &"--val",
                &val,
                &input,
                &"b.safetensors",
                &"--plot",
                &plot,
                &"-o",
                &"g.safetensors",
                &"--json",
                &"-q",
            ],
        ),
    ];
    for o in &runs {
        let err = common::stderr(o);
        assert!(!err.contains("panicked"), "{err}");
        assert!(o.status.success(), "{err}");
        let v: serde_json::Value = serde_json::from_str(&common::stdout(o)).expect("valid JSON");
        assert!(v.is_object());
    }
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&runs[0])).unwrap();
    assert_eq!(v["output"]["bytes_hex"], "6f7574fb2e7361666574656e736f7273");
    assert_eq!(
        v["inputs"][0]["path"]["utf8_lossy"],
        "in\u{fffd}.safetensors"
    );
    // Errors naming such paths are one line too, in text and in JSON with a kind.
    let o = merge(r, &[&input, &"b.safetensors", &"-o", &input, &"--json"]);
    refused(&o, &["in\u{fffd}.safetensors"]);
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["kind"], "output");
    let o = eval(
        r,
        &[
            &"report",
            &"--arch",
            &"digits-cnn",
            &"--val",
            &val,
            &input,
            &"--plot",
            &val,
            &"--json",
        ],
    );
    refused(&o, &["val\u{fffd}.safetensors"]);
    let v: serde_json::Value = serde_json::from_str(&common::stdout(&o)).unwrap();
    assert_eq!(v["kind"], "output");
}

/// A tiny deterministic generator for the property test.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

#[test]
fn random_combinations_of_roles_change_nothing_but_a_legitimate_output() {
    let s = Sandbox::new();
    let paths: &[&str] = &[
        "a.safetensors",
        "b.safetensors",
        "poor.safetensors",
        "val.safetensors",
        "test.safetensors",
        "ftA",
        "ftA/model.safetensors.index.json",
        "ftA/config.json",
        "ftA/tokenizer.json",
        "base",
        "base/config.json",
        "recipe.yaml",
        "project",
        "project/train.py",
        "fifo.safetensors",
        "sock.safetensors",
        "link_a.safetensors",
        "devnull.safetensors",
        "hard_a.safetensors",
        "sub/../a.safetensors",
        "sub/../ftA",
        "secret.txt",
        "old.safetensors",
        "theirs.safetensors",
        "oldsoup",
        "fresh.safetensors",
        "FRESH.SAFETENSORS",
        "freshdir",
        "sub/fresh.svg",
        ".",
        "..",
    ];
    let mut rng = Rng(0x5eed);
    for case in 0..90 {
        let force = rng.below(2) == 0;
        let mut args: Vec<String> = Vec::new();
        let mut outputs: Vec<&str> = Vec::new();
        let tool_is_eval = case % 3 == 2;
        if tool_is_eval {
            args.extend(
                [
                    "report",
                    "--arch",
                    "digits-cnn",
                    "--val",
                    "val.safetensors",
                    "--test",
                    "test.safetensors",
                    "-q",
                    "a.safetensors",
                    "poor.safetensors",
                ]
                .map(String::from),
            );
            if rng.below(3) > 0 {
                let o = rng.pick(paths);
                args.extend(["-o".into(), o.into()]);
                outputs.push(o);
            }
            let p = rng.pick(paths);
            args.extend(["--plot".into(), p.into()]);
            outputs.push(p);
        } else {
            if rng.below(4) == 0 {
                let recipe = rng.pick(&[
                    "recipe.yaml",
                    "recipe.yaml",
                    "fifo.safetensors",
                    "secret.txt",
                ]);
                args.extend(["--config".into(), recipe.into()]);
            } else {
                args.push(
                    rng.pick(&["a.safetensors", "ftA", "link_a.safetensors"])
                        .into(),
                );
                args.push(
                    rng.pick(&["b.safetensors", "poor.safetensors", "hard_a.safetensors"])
                        .into(),
                );
            }
            let o = rng.pick(paths);
            args.extend(["-o".into(), o.into(), "-q".into()]);
            outputs.push(o);
            // A recipe names its own base: --base beside --config is a usage error.
            if rng.below(3) == 0 && !args.iter().any(|a| a == "--config") {
                args.extend(["--base".into(), rng.pick(paths).into()]);
            }
        }
        if force {
            args.push("--force".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let before = snapshot(s.root());
        let o = if tool_is_eval {
            eval_str(s.root(), &argv)
        } else {
            merge_str(s.root(), &argv)
        };
        let after = snapshot(s.root());
        let err = common::stderr(&o);
        assert!(!err.contains("panicked"), "case {case} {argv:?}: {err}");
        assert!(
            matches!(o.status.code(), Some(0..=2)),
            "case {case} {argv:?}: {err}"
        );
        let diff = changed(&before, &after);
        let keep = protected(&argv);
        if o.status.success() {
            for path in &diff {
                let legit = outputs.iter().any(|out| {
                    let out = entry_name(out);
                    path.starts_with(&out) && !keep.iter().any(|p| out.starts_with(entry_name(p)))
                });
                assert!(legit, "case {case} {argv:?} changed {}", path.display());
            }
        } else {
            assert!(
                diff.is_empty(),
                "case {case} {argv:?} failed ({err}) yet changed {diff:?}"
            );
            assert_eq!(
                err.lines().filter(|l| l.starts_with("error: ")).count(),
                1,
                "{err}"
            );
        }
        // Whatever happened, what the run read and what is never replaced are as they were.
        for p in &keep {
            let p = entry_name(p);
            let b: Vec<_> = before.iter().filter(|(k, _)| k.starts_with(&p)).collect();
            let a: Vec<_> = after.iter().filter(|(k, _)| k.starts_with(&p)).collect();
            assert_eq!(b, a, "case {case} {argv:?} changed {}", p.display());
        }
    }
}

#[test]
fn refusals_name_what_the_path_is_to_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let val = root.join("img/val");
    std::fs::create_dir_all(val.join("0")).unwrap();
    std::fs::copy(
        fixtures().join("models/ft-lr2e-3.safetensors"),
        root.join("a.safetensors"),
    )
    .unwrap();
    std::fs::write(root.join("notes.txt"), "my notes").unwrap();
    let before = snapshot(root);
    // Inside a dataset folder: "that dataset", not "that model directory".
    let o = eval_str(
        root,
        &[
            "greedy",
            "--arch",
            "digits-cnn",
            "--val",
            "img/val",
            "a.safetensors",
            "-o",
            "img/val/11",
        ],
    );
    let line = refused(
        &o,
        &[
            "img/val/11",
            "is inside the dataset img/val",
            "that dataset",
        ],
    );
    assert!(!line.contains("model directory"), "{line}");
    // A --tokenizer file is one, not "the dataset".
    let bert = fixtures().join("text/models/bert-cls");
    let cls = fixtures().join("text/data/cls.jsonl");
    let o = eval(
        root,
        &[
            &"report",
            &"--val",
            &cls,
            &"--tokenizer",
            &"notes.txt",
            &bert,
            &"--plot",
            &"notes.txt",
            &"--force",
        ],
    );
    let line = refused(&o, &["notes.txt", "is the --tokenizer file notes.txt"]);
    assert!(!line.contains("dataset"), "{line}");
    assert_eq!(snapshot(root), before);
}

/// `-` names no output: both tools write files, never stdout, so `-o -`, `--plot -`, and the
/// scorer's `--log -`, `--resume -` and `--work-dir -` are usage errors (exit 2, `kind:
/// usage`) saying so, and nothing named `-` appears (it was a directory or a file before).
#[test]
fn a_dash_for_an_output_is_refused_not_taken_for_stdout() {
    let s = Sandbox::new();
    let usage = |o: &Output, flag: &str| {
        let err = common::stderr(o);
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(o.status.code(), Some(2), "{flag}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(lines.len(), 1, "{err}");
        for needle in [&format!("{flag} -"), "stdout", "file"] {
            assert!(lines[0].contains(needle), "'{}' lacks '{needle}'", lines[0]);
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["kind"], "usage", "{flag}: {v}");
    };
    for (args, flag) in [
        (vec!["a.safetensors", "b.safetensors", "-o", "-"], "-o"),
        (
            vec!["a.safetensors", "b.safetensors", "-o", "-", "--dry-run"],
            "-o",
        ),
    ] {
        let mut args = args;
        args.push("--json");
        let o = only_changes(&s, &[], |d| merge_str(d, &args));
        usage(&o, flag);
    }
    for (command, extra, flag) in [
        ("greedy", vec!["-o", "-"], "-o"),
        ("report", vec!["--plot", "-"], "--plot"),
    ] {
        let mut extra = extra;
        extra.push("--json");
        let o = only_changes(&s, &[], |d| eval_str(d, &eval_args(command, &extra)));
        usage(&o, flag);
    }
    for (flag, kind) in [
        ("--log", "greedy"),
        ("--resume", "greedy"),
        ("--work-dir", "greedy"),
    ] {
        let o = only_changes(&s, &[], |d| {
            eval_str(
                d,
                &[
                    kind,
                    "--json",
                    "-q",
                    "--shell",
                    "--scorer",
                    "echo 0.5",
                    flag,
                    "-",
                    "a.safetensors",
                    "b.safetensors",
                ],
            )
        });
        usage(&o, flag);
    }
    assert!(!s.root().join("-").exists());
}
