//! Faults in the middle of a merge (issue 6): a full disk, SIGKILL, SIGINT/SIGTERM, an input
//! truncated or rewritten by another process, and two runs writing one destination. In every
//! case the destination holds nothing or a whole soup, never a part, and no input changes.

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use model_soup::format::Checkpoint;
use model_soup::soup::{self, Plan, PlanOptions, RunOptions};
use safetensors::Dtype as D;
use sha2::{Digest, Sha256};

/// Writes an F32 checkpoint of `tensors` tensors of `elements` each, quickly: the header by
/// hand, the data a pattern that depends on `seed`.
fn big_input(path: &Path, tensors: usize, elements: usize, seed: u32) {
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    for t in 0..tensors {
        let (b, e) = (t * elements * 4, (t + 1) * elements * 4);
        header += &format!(
            ",\"layer{t:03}.weight\":{{\"dtype\":\"F32\",\"shape\":[{elements}],\"data_offsets\":[{b},{e}]}}"
        );
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    let block: Vec<u8> = (0..elements as u32)
        .map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .flat_map(f32::to_le_bytes)
        .collect();
    for _ in 0..tensors {
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

fn sha256(path: &Path) -> Vec<u8> {
    let mut h = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().to_vec()
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains(".soup-tmp-"))
        .collect()
}

/// Two inputs large enough (2 x 128 MB) that a merge on one thread runs for a good fraction of
/// a second after its temporary appears.
struct Big {
    dir: tempfile::TempDir,
    inputs: [PathBuf; 2],
    hashes: [Vec<u8>; 2],
}

fn big() -> Big {
    let dir = tempfile::tempdir().unwrap();
    let inputs = [
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    ];
    big_input(&inputs[0], 8, 4 << 20, 1);
    big_input(&inputs[1], 8, 4 << 20, 2);
    let hashes = [sha256(&inputs[0]), sha256(&inputs[1])];
    Big {
        dir,
        inputs,
        hashes,
    }
}

impl Big {
    fn out(&self) -> PathBuf {
        self.dir.path().join("soup.safetensors")
    }

    /// Starts a slow merge (one thread) and returns once its temporary is there and sized:
    /// headers are read, and tensor data is being computed and written.
    fn start(&self) -> Child {
        let mut child = soup_merge()
            .args(&self.inputs)
            .arg("-o")
            .arg(self.out())
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            let sized = temporaries(self.dir.path())
                .iter()
                .any(|t| std::fs::metadata(t).is_ok_and(|m| m.len() > 0));
            if sized {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("soup-merge ended ({status}) before its temporary appeared");
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no temporary");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(30));
        child
    }

    fn inputs_unchanged(&self) {
        for (p, h) in self.inputs.iter().zip(&self.hashes) {
            assert_eq!(&sha256(p), h, "{} was modified", p.display());
        }
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: the child is not yet reaped, so its pid can't have been reused.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

fn finished_too_soon(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(s)) if s.success())
}

#[test]
fn sigkill_mid_write_leaves_nothing_and_the_next_run_cleans_up() {
    let big = big();
    let mut child = big.start();
    assert!(
        !finished_too_soon(&mut child),
        "the merge finished before it could be killed; make the inputs larger"
    );
    signal(&child, libc::SIGKILL);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(
        !big.out().exists(),
        "a killed merge left a file at the destination"
    );
    let stale = temporaries(big.dir.path());
    assert_eq!(stale.len(), 1, "the killed run's temporary: {stale:?}");
    big.inputs_unchanged();

    // The next run succeeds and removes the dead run's temporary.
    let o = run_merge(&[&big.inputs[0], &big.inputs[1], &"-o", &big.out()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        temporaries(big.dir.path()).is_empty(),
        "stale temporary kept"
    );
    big.inputs_unchanged();
}

/// Every signal that asks a run to end (Ctrl-C, `kill`, a closed terminal, Ctrl-\\, a CPU-time
/// limit, a scheduler's or a script's SIGALRM, SIGUSR1 or SIGUSR2) removes the temporary and
/// exits with status 130. Their default actions ended the process and left the temporary.
#[test]
fn termination_signals_remove_the_temporary_and_exit_130() {
    let big = big();
    let signals = [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
    ];
    for (sig, name) in signals {
        let mut child = big.start();
        assert!(
            !finished_too_soon(&mut child),
            "{name}: finished before the signal"
        );
        signal(&child, sig);
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(130), "{name}: {} {err}", out.status);
        assert!(err.contains("interrupted"), "{name}: {err}");
        assert!(!big.out().exists(), "{name}: output published");
        assert!(
            temporaries(big.dir.path()).is_empty(),
            "{name}: temporary kept"
        );
    }
    big.inputs_unchanged();
    // SIGPIPE is ignored, as Rust programs ignore it (a write to a closed pipe fails instead):
    // the merge goes on and publishes a whole soup.
    let mut child = big.start();
    signal(&child, libc::SIGPIPE);
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGPIPE: {status}");
    assert!(big.out().exists(), "SIGPIPE: nothing published");
    assert!(
        temporaries(big.dir.path()).is_empty(),
        "SIGPIPE: temporary kept"
    );
    big.inputs_unchanged();
}

#[test]
fn an_input_truncated_during_the_merge_never_yields_an_output() {
    let big = big();
    let mut child = big.start();
    assert!(
        !finished_too_soon(&mut child),
        "finished before the truncation"
    );
    // Cut the second input in half under the running merge.
    let len = std::fs::metadata(&big.inputs[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&big.inputs[1])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    // Either a read of a vanished page raised SIGBUS, which ends the run with an error line
    // (it never goes on with garbage), or the re-check before the rename saw the new size.
    assert_eq!(out.status.code(), Some(1), "{} {err}", out.status);
    assert!(
        err.starts_with("error: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(
        err.contains("SIGBUS") || err.contains("changed while it was being read"),
        "{err}"
    );
    assert!(
        err.contains(big.inputs[1].to_str().unwrap()),
        "the error doesn't name the truncated input: {err}"
    );
    assert!(
        !big.out().exists(),
        "an output was published from a truncated input"
    );
    // The now-corrupt input is refused, and the dead run's temporary (if any) is cleaned up.
    let o = run_merge(&[&big.inputs[0], &big.inputs[1], &"-o", &big.out()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
}

fn small_pair(dir: &Path) -> [PathBuf; 2] {
    let mut rng = Rng::new(3);
    let paths = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    for p in &paths {
        write(
            p,
            &[
                spec("w", D::F32, &[64, 64], floats(&mut rng, D::F32, 64 * 64)),
                spec("b", D::F32, &[64], floats(&mut rng, D::F32, 64)),
            ],
        );
    }
    paths
}

/// Opens and plans the inputs, then lets `meddle` change one of them before the data is read.
fn write_after(dir: &Path, meddle: impl FnOnce(&Path)) -> model_soup::Result<Vec<soup::Warning>> {
    let paths = small_pair(dir);
    let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let plan = Plan::new(cks, vec![0.5, 0.5], &PlanOptions::default()).unwrap();
    meddle(&paths[1]);
    soup::write(
        &plan,
        &destination(&dir.join("soup.safetensors"), false),
        RunOptions::default(),
    )
}

#[test]
fn an_input_changed_between_planning_and_publishing_is_detected() {
    type Meddle = fn(&Path);
    let cases: [(&str, Meddle); 3] = [
        ("appended", |p| {
            let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(&[0; 8]).unwrap();
        }),
        ("rewritten in place with its mtime set back", |p| {
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            let mtime = f.metadata().unwrap().modified().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            use std::os::unix::fs::FileExt;
            let len = f.metadata().unwrap().len();
            f.write_all_at(&[0x7f; 4], len - 4).unwrap();
            f.set_modified(mtime).unwrap();
        }),
        ("touched", |p| {
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        }),
    ];
    for (what, meddle) in cases {
        let dir = tempfile::tempdir().unwrap();
        let err = write_after(dir.path(), meddle).expect_err(what).to_string();
        assert!(
            err.contains("changed while it was being read"),
            "{what}: {err}"
        );
        assert!(err.contains("b.safetensors"), "{what}: {err}");
        assert!(!dir.path().join("soup.safetensors").exists(), "{what}");
        assert!(temporaries(dir.path()).is_empty(), "{what}: temporary kept");
    }
    // Untouched, the same steps publish.
    let dir = tempfile::tempdir().unwrap();
    write_after(dir.path(), |_| {}).unwrap();
    assert!(dir.path().join("soup.safetensors").exists());
}

/// A companion file (a tokenizer, say) copied into a directory output and changed before the
/// output is published stops it, as a changed input shard does: the output would pair the
/// weights with a file torn, or no longer the one they came with.
#[test]
fn a_companion_file_changed_during_the_merge_never_yields_an_output() {
    use model_soup::format::{destination::check, OutputKind, Reads, Request};
    type Meddle = fn(&Path);
    let cases: [(&str, Meddle); 3] = [
        ("appended", |p| {
            let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(b" ").unwrap();
        }),
        ("replaced by a rename", |p| {
            let new = p.with_extension("new");
            std::fs::write(&new, b"{\"other\": true}").unwrap();
            std::fs::rename(&new, p).unwrap();
        }),
        ("removed", |p| std::fs::remove_file(p).unwrap()),
    ];
    let run = |meddle: Option<Meddle>| {
        let dir = tempfile::tempdir().unwrap();
        let paths = small_pair(dir.path());
        let tokenizer = dir.path().join("tokenizer.json");
        std::fs::write(&tokenizer, b"{\"tokens\": []}").unwrap();
        let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
        let plan = Plan::new(cks, vec![0.5, 0.5], &PlanOptions::default()).unwrap();
        let layout = soup::Layout::single(&plan, "model.safetensors");
        let out = dir.path().join("out");
        let request = Request {
            flag: "-o",
            path: out.clone(),
            kind: OutputKind::Directory,
        };
        let dest = check(&[request], &Reads::new(), false).unwrap().remove(0);
        let once = std::sync::Once::new();
        // The first chunk's progress comes after the companions are copied.
        let progress = |_| {
            once.call_once(|| {
                if let Some(m) = meddle {
                    m(&tokenizer)
                }
            })
        };
        let extra = [soup::ExtraFile::Copy {
            name: "tokenizer.json".into(),
            from: tokenizer.clone(),
        }];
        let options = RunOptions {
            progress: &progress,
            ..RunOptions::default()
        };
        let result = soup::write_dir(&plan, &layout, &dest, &extra, options);
        let left = temporaries(dir.path());
        (result, out.exists(), left, dir)
    };
    for (what, meddle) in cases {
        let (result, published, left, _dir) = run(Some(meddle));
        let err = result.expect_err(what).to_string();
        assert!(
            err.contains("changed while the output was being made from it"),
            "{what}: {err}"
        );
        assert!(err.contains("tokenizer.json"), "{what}: {err}");
        assert!(!published, "{what}: published");
        assert!(left.is_empty(), "{what}: temporary kept: {left:?}");
    }
    let (result, published, _, _dir) = run(None);
    result.unwrap();
    assert!(published, "untouched, the same steps publish");
}

/// A model directory output's `config.json` (its dtype set) and a `tokenizer_config.json` given
/// a recipe's chat template are read when the merge is planned and written out rewritten.
/// Changed before the output is published, they stop it, as a copied companion does: the
/// output would otherwise pair the weights with a config that the model directory no longer
/// has (a config swapped for another architecture's, say).
#[test]
fn a_config_read_at_plan_time_and_changed_before_publishing_never_yields_an_output() {
    use model_soup::soup::{Merge, MergeRequest};
    type Meddle = fn(&Path);
    let cases: [(&str, Meddle); 4] = [
        ("appended", |p| {
            let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
            f.write_all(b" ").unwrap();
        }),
        // The same size, and the modification time set back: the ctime still tells.
        ("rewritten in place, mtime restored", |p| {
            let before = std::fs::metadata(p).unwrap().modified().unwrap();
            let text = std::fs::read_to_string(p).unwrap();
            std::fs::write(p, text.replace("llama", "gpt2x")).unwrap();
            let f = std::fs::File::options().write(true).open(p).unwrap();
            f.set_modified(before).unwrap();
        }),
        ("replaced by a rename", |p| {
            let new = p.with_extension("new");
            std::fs::write(&new, b"{\"model_type\": \"bert\"}").unwrap();
            std::fs::rename(&new, p).unwrap();
        }),
        ("removed", |p| std::fs::remove_file(p).unwrap()),
    ];
    // Two model directories; the first one's config (and, with a recipe's chat template, its
    // tokenizer config) goes into the output. `file` names the one `meddle` changes.
    let run = |file: &str, recipe: bool, meddle: Option<Meddle>| {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Rng::new(9);
        let models = ["ma", "mb"].map(|m| dir.path().join(m));
        for m in &models {
            std::fs::create_dir(m).unwrap();
            let w = spec("w", D::F32, &[16], floats(&mut rng, D::F32, 16));
            write(&m.join("model.safetensors"), &[w]);
            std::fs::write(
                m.join("config.json"),
                b"{\"model_type\": \"llama\", \"torch_dtype\": \"bfloat16\"}",
            )
            .unwrap();
            std::fs::write(
                m.join("tokenizer_config.json"),
                b"{\"chat_template\": \"old {{ messages }}\"}",
            )
            .unwrap();
        }
        let out = dir.path().join("soup");
        let mut request = MergeRequest {
            output: Some(out.clone()),
            ..MergeRequest::default()
        };
        if recipe {
            let yaml = dir.path().join("recipe.yaml");
            let text = format!(
                "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 0.5}}\n  - model: {}\n    parameters: {{weight: 0.5}}\nchat_template: \"new {{{{ messages }}}} for the soup\"\n",
                models[0].display(),
                models[1].display()
            );
            std::fs::write(&yaml, text).unwrap();
            request.recipe = Some(yaml);
        } else {
            request.inputs = models.to_vec();
        }
        let merge = Merge::plan(&request).unwrap();
        if let Some(m) = meddle {
            m(&models[0].join(file));
        }
        let result = merge.run(&|_| {});
        let left = temporaries(dir.path());
        let written = std::fs::read(out.join(file)).ok();
        (result.map(|_| ()), out.exists(), left, written, dir)
    };
    for (file, recipe) in [("config.json", false), ("tokenizer_config.json", true)] {
        for (what, meddle) in cases {
            let (result, published, left, _, _dir) = run(file, recipe, Some(meddle));
            let err = result.expect_err(&format!("{file} {what}")).to_string();
            assert!(
                err.contains("changed while the output was being made from it")
                    && err.contains(&format!("ma/{file}"))
                    && err.contains("run again"),
                "{file} {what}: {err}"
            );
            assert!(!published, "{file} {what}: published");
            assert!(left.is_empty(), "{file} {what}: temporary kept: {left:?}");
        }
        // Untouched, the same steps publish the rewritten file.
        let (result, published, _, written, _dir) = run(file, recipe, None);
        result.unwrap();
        assert!(published, "{file}: untouched, the same steps publish");
        let written = String::from_utf8(written.unwrap()).unwrap();
        let rewritten = if recipe {
            "new {{ messages }} for the soup"
        } else {
            "float32"
        };
        assert!(written.contains(rewritten), "{file}: {written}");
    }
}

#[test]
fn two_runs_writing_one_destination_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    big_input(&a, 8, 1 << 20, 5);
    big_input(&b, 8, 1 << 20, 6);
    // What each run alone produces: the first input, or the second.
    let refs = ["1,0", "0,1"].map(|w| {
        let p = dir.path().join(format!("ref-{w}.safetensors"));
        let o = run_merge(&[&a, &b, &"-w", &w, &"-o", &p]);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(&p).unwrap()
    });
    assert_ne!(refs[0], refs[1]);
    let out = dir.path().join("soup.safetensors");
    for force in [false, true] {
        for _ in 0..3 {
            let _ = std::fs::remove_file(&out);
            let children: Vec<Child> = ["1,0", "0,1"]
                .iter()
                .map(|w| {
                    let mut cmd: Command = soup_merge();
                    cmd.arg(&a).args(["-w", w]).arg(&b).arg("-o").arg(&out);
                    if force {
                        cmd.arg("--force");
                    }
                    cmd.stderr(Stdio::piped()).spawn().unwrap()
                })
                .collect();
            let outputs: Vec<_> = children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect();
            let won = outputs.iter().filter(|o| o.status.success()).count();
            for o in outputs.iter().filter(|o| !o.status.success()) {
                let err = stderr(o);
                assert!(!force, "with --force both publish: {err}");
                assert_eq!(o.status.code(), Some(1), "{err}");
                assert!(
                    err.contains("already exists") || err.contains("created by another process"),
                    "{err}"
                );
            }
            if force {
                assert_eq!(won, 2);
            } else {
                assert_eq!(won, 1, "exactly one run wins without --force");
            }
            let got = std::fs::read(&out).unwrap();
            assert!(
                got == refs[0] || got == refs[1],
                "the destination mixes two runs"
            );
            assert!(temporaries(dir.path()).is_empty(), "temporary kept");
        }
    }
}

/// A tmpfs of `size` mounted by the test, unmounted when dropped.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(at.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = Mount::tmpfs(&dir.path().join("small"), "1m") else {
        eprintln!(
            "skipping the full-disk test: mounting a tmpfs is not permitted here (needs root)"
        );
        return;
    };
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    big_input(&a, 4, 256 << 10, 1);
    big_input(&b, 4, 256 << 10, 2);
    // A file output (4 MB) and a model-directory output, neither of which fits in 1 MB.
    for (out, extra) in [
        (mnt.0.join("soup.safetensors"), &[][..]),
        (mnt.0.join("soup-dir"), &["--shard-size", "1MB"][..]),
    ] {
        let o = soup_merge()
            .arg(&a)
            .arg(&b)
            .arg("-o")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("no space left on device"), "{err}");
        assert!(err.contains("-o"), "the message names the fix: {err}");
        assert!(!out.exists(), "a partial output at the destination");
        let left: Vec<_> = std::fs::read_dir(&mnt.0).unwrap().flatten().collect();
        assert!(left.is_empty(), "left on the full disk: {left:?}");
    }
    // With room (and the same filesystem), the same merge succeeds.
    drop(mnt);
    let Some(mnt) = Mount::tmpfs(&dir.path().join("roomy"), "16m") else {
        panic!("the second mount failed after the first worked");
    };
    let out = mnt.0.join("soup.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A file-size limit (`ulimit -f`, as some batch schedulers set) is an error line, not a
/// silent death by SIGXFSZ that leaves the temporary behind; for a model directory too.
#[test]
fn a_file_size_limit_is_an_error_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = small_pair(tmp.path());
    for out in [tmp.path().join("o.safetensors"), tmp.path().join("dir-out")] {
        // 1 block of 512 bytes: smaller than the soup.
        let o = Command::new("sh")
            .arg("-c")
            .arg("ulimit -f 1 && exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_soup-merge"))
            .args(&inputs)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{:?}: {err}", o.status);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: ") && err.contains("too large"),
            "{err}"
        );
        assert!(!out.exists());
        assert!(
            temporaries(tmp.path()).is_empty(),
            "{:?}",
            temporaries(tmp.path())
        );
    }
}

/// soup-merge with `args` under an address-space limit of `kib` KiB and `threads` worker
/// threads. True when it merged (the output is removed again); false when it refused with one
/// `error:` line and left nothing. Anything else (an abort, a signal) fails the test.
fn merge_under_limit(kib: u64, threads: &str, args: &[&std::ffi::OsStr], out: &Path) -> bool {
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$@\""))
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_soup-merge"))
        .args(args)
        .arg("-o")
        .arg(out)
        .env("RAYON_NUM_THREADS", threads)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let err = stderr(&o);
    let at = format!("{threads} threads, {kib} KiB");
    match o.status.code() {
        Some(0) => {
            std::fs::remove_file(out).unwrap();
            true
        }
        Some(1) => {
            assert_eq!(err.lines().count(), 1, "{at}: {err}");
            assert!(err.starts_with("error: "), "{at}: {err}");
            assert!(!out.exists(), "{at}");
            false
        }
        _ => panic!("{at}: {:?}: {err}", o.status),
    }
}

/// `count` inputs in `dir` of one F32 tensor of `elements` each.
fn inputs(dir: &Path, count: usize, elements: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let p = dir.join(format!("m{i}.safetensors"));
            big_input(&p, 1, elements, i as u32 + 1);
            p
        })
        .collect()
}

/// soup-merge with `args` under each limit of `kib` (see [`merge_under_limit`]): every run
/// leaves no temporary in `dir`, and the sweep sees both a merge and a refusal.
fn sweep_limits(
    dir: &Path,
    args: &[&std::ffi::OsStr],
    threads: &str,
    kib: impl Iterator<Item = u64>,
    what: &str,
) {
    let out = dir.join("soup.safetensors");
    let (mut refused, mut merged) = (0, 0);
    for limit in kib {
        if merge_under_limit(limit, threads, args, &out) {
            merged += 1;
        } else {
            refused += 1;
        }
        assert!(temporaries(dir).is_empty(), "{what}, {limit} KiB");
    }
    assert!(
        refused > 0 && merged > 0,
        "{what}: refused {refused}, merged {merged}"
    );
}

/// Under an address-space limit (`ulimit -v`), a method's working buffers either fit or the
/// run stops with one error line naming the tensor: never an abort on a failed allocation
/// (exit 134 with Rust's own message), and never a temporary left behind.
#[test]
fn a_memory_limit_is_an_error_line_never_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = inputs(tmp.path(), 3, 6_000_000);
    let mut args: Vec<&std::ffi::OsStr> = ["--method", "della", "--density", "0.5", "--base"]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
    args.extend(paths.iter().map(|p| p.as_os_str()));
    let limits = (250..=900).step_by(50).map(|mib| mib * 1024);
    sweep_limits(tmp.path(), &args, "2", limits, "della");
}

/// TIES' and breadcrumbs' threshold windows (the keys near each threshold, 3% of the elements
/// per threshold) count in the trims' memory check. They didn't: breadcrumbs on a 256 MiB
/// tensor under `ulimit -v 1000000` aborted with "memory allocation of 34490368 bytes failed"
/// (exit 134), where a limit a little lower or higher gave an error line or a soup.
#[test]
fn a_memory_limit_never_aborts_the_threshold_trims() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = inputs(tmp.path(), 3, 12_000_000);
    for method in ["breadcrumbs", "ties"] {
        let flags = ["--method", method, "--density", "0.5", "--base"];
        let mut args: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
        args.extend(paths.iter().map(|p| p.as_os_str()));
        let limits = (300..=900).step_by(8).map(|mib| mib * 1024);
        sweep_limits(tmp.path(), &args, "2", limits, method);
    }
}

/// The trims' memory check counts glibc's per-thread heaps as the thread pool does, at most 8
/// per core, and asks for them a piece at a time. It asked for 64 MiB for every thread in
/// one request: 64 threads on one core under a 2.9 GB limit refused a DELLA merge of 600 000
/// elements (and 512 threads with no limit at all exceeded the machine). `taskset` pins the
/// core count, which the heap count follows.
#[test]
fn the_trims_memory_check_grows_with_cores_not_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = inputs(tmp.path(), 3, 600_000);
    let out = tmp.path().join("soup.safetensors");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 3000000 && exec taskset -c 0 \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_soup-merge"))
        .args(["--method", "della", "--density", "0.5", "--base"])
        .args(&paths)
        .arg("-o")
        .arg(&out)
        .env("RAYON_NUM_THREADS", "64")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_file());
}

/// The same for the threads and the per-thread buffers every merge starts with: at any
/// address-space limit, for the default thread count and for more threads than cores, a
/// small linear merge either runs or stops with one error line. Before, a limit that let a
/// thread's stack be mapped but not its signal stack, or the threads' heaps leave no room for a
/// chunk's buffer, aborted (about one limit in a hundred, so the sweep is fine-grained).
#[test]
fn a_memory_limit_never_aborts_the_threads_or_their_buffers() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = inputs(tmp.path(), 2, 1000);
    let args: Vec<&std::ffi::OsStr> = paths.iter().map(|p| p.as_os_str()).collect();
    for threads in ["0", "8"] {
        let limits = (100_000..=700_000).step_by(3_000);
        sweep_limits(
            tmp.path(),
            &args,
            threads,
            limits,
            &format!("{threads} threads"),
        );
    }
}

/// An input larger than the address-space limit (`ulimit -v`) can't be mapped: the error is
/// kind `resources` and names the limit and the fix. It was kind `io`, "Cannot allocate memory
/// (os error 12)", which reads as a machine short of memory. The inputs are sparse 64 GiB files.
#[test]
fn an_input_beyond_the_address_space_limit_names_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let elements: u64 = 16 << 30;
    let mut header = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{elements}],\"data_offsets\":[0,{}]}}}}",
        elements * 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let inputs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| {
            let p = tmp.path().join(format!("{n}.safetensors"));
            let mut f = std::fs::File::create(&p).unwrap();
            f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
            f.write_all(header.as_bytes()).unwrap();
            f.set_len(8 + header.len() as u64 + elements * 4).unwrap();
            p
        })
        .collect();
    let out = tmp.path().join("soup.safetensors");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4000000 && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_soup-merge"))
        .args(&inputs)
        .arg("-o")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("a.safetensors") && err.contains("ulimit -v"),
        "{err}"
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["kind"], "resources", "{json}");
    assert!(!out.exists());
}
