//! `--verify` (issue 6): the output is read back after the rename and checked against what was
//! written, and the --json summary carries the sha256 a pipeline can pin. A file that reads
//! back different, in its header or any tensor, fails the check.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::*;
use model_soup::format::Checkpoint;
use model_soup::soup::{self, Layout, Plan, PlanOptions, Record, RunOptions, CHUNK_ELEMENTS};
use safetensors::Dtype as D;
use sha2::{Digest, Sha256};

fn sha256_hex(path: &Path) -> String {
    let digest = Sha256::digest(std::fs::read(path).unwrap());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two inputs with a tensor larger than one chunk, a small one, and an integer one.
fn inputs(dir: &Path) -> [PathBuf; 2] {
    let mut rng = Rng::new(11);
    let paths = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    for p in &paths {
        write(
            p,
            &[
                spec(
                    "big",
                    D::F32,
                    &[300, 500],
                    floats(&mut rng, D::F32, 150_000),
                ),
                spec("bias", D::BF16, &[7], floats(&mut rng, D::BF16, 7)),
                spec("steps", D::I64, &[], 42i64.to_le_bytes().to_vec()),
            ],
        );
    }
    paths
}

#[test]
fn verify_reports_the_sha256_of_the_file_it_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = inputs(dir.path());
    let out = dir.path().join("soup.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &out, &"--verify", &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let verified = &v["verified"];
    let sha = sha256_hex(&out);
    assert_eq!(verified["sha256"], sha.as_str());
    assert_eq!(verified["tensors"], 3);
    assert_eq!(verified["files"][0]["sha256"], sha.as_str());
    assert_eq!(
        verified["files"][0]["bytes"],
        std::fs::metadata(&out).unwrap().len()
    );
    assert!(
        stderr(&o).contains(&format!("sha256 {sha}")),
        "{}",
        stderr(&o)
    );

    // Without --verify there is no such entry; the output is the same bytes.
    let plain = dir.path().join("plain.safetensors");
    let o = run_merge(&[&a, &b, &"-o", &plain, &"--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.get("verified").is_none(), "{v}");
    assert_eq!(
        sha256_hex(&plain),
        sha,
        "--verify changes nothing in the output"
    );
}

#[test]
fn verify_hashes_every_file_of_a_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b] = inputs(dir.path());
    let out = dir.path().join("soup-dir");
    let o = run_merge(&[
        &a,
        &b,
        &"-o",
        &out,
        &"--shard-size",
        &"300KB",
        &"--verify",
        &"--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let verified = &v["verified"];
    assert!(verified["sha256"].is_null(), "{verified}");
    assert_eq!(verified["tensors"], 3);
    let files = verified["files"].as_array().unwrap();
    let mut on_disk: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(listed, on_disk, "every file of the directory, by name");
    assert!(listed.len() >= 3, "two shards and an index: {listed:?}");
    for f in files {
        let path = out.join(f["name"].as_str().unwrap());
        assert_eq!(f["sha256"], sha256_hex(&path).as_str());
    }
}

/// Merges `inputs` through the library with a `Record`, as `--verify` does.
fn merged(dir: &Path) -> (Plan, Layout, Record, PathBuf) {
    let paths = inputs(dir);
    let cks = paths.iter().map(|p| Checkpoint::open(p).unwrap()).collect();
    let plan = Plan::new(cks, vec![0.25, 0.75], &PlanOptions::default()).unwrap();
    let out = dir.join("soup.safetensors");
    let record = Record::new();
    let observe = |t: usize, start: usize, bytes: &[u8]| record.observe(t, start, bytes);
    let options = RunOptions {
        observe: Some(&observe),
        ..RunOptions::default()
    };
    soup::write(&plan, &destination(&out, false), options).unwrap();
    let layout = Layout::single(&plan, "soup.safetensors");
    (plan, layout, record, out)
}

#[test]
fn verify_catches_an_output_that_reads_back_different() {
    let dir = tempfile::tempdir().unwrap();
    let (plan, layout, record, out) = merged(dir.path());
    let good = std::fs::read(&out).unwrap();
    let verified = record.check(&plan, &layout, &out).unwrap();
    assert_eq!(verified.sha256.as_deref(), Some(sha256_hex(&out).as_str()));

    let header_len = plan.header().len() as u64;
    let big = plan.tensors.iter().find(|t| t.name == "big").unwrap();
    // The chunk that holds element 70 000, as the executor cut it.
    let first = 70_000 / CHUNK_ELEMENTS * CHUNK_ELEMENTS;
    let chunk = format!(
        "tensor 'big' elements {first}..{} read back different",
        (first + CHUNK_ELEMENTS).min(150_000)
    );
    type Corrupt<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Corrupt<'_>, &str)> = vec![
        (
            "a flipped bit in 'big'",
            Box::new(move |p: &Path| {
                let at = header_len + big.begin + 4 * 70_000;
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                let old = std::fs::read(p).unwrap()[at as usize];
                f.write_all_at(&[old ^ 1], at).unwrap();
            }),
            &chunk,
        ),
        (
            "a changed header byte",
            Box::new(|p: &Path| {
                let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                // Inside the JSON, in a place that still parses: the tool's version string.
                let text = std::fs::read(p).unwrap();
                let at = text.windows(10).position(|w| w == b"model-soup").unwrap();
                f.write_all_at(b"M", at as u64).unwrap();
            }),
            "its header reads back different",
        ),
        (
            "an extra byte at the end",
            Box::new(|p: &Path| {
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                std::io::Write::write_all(&mut f, &[0]).unwrap();
            }),
            "reads back as",
        ),
    ];
    for (what, corrupt, needle) in cases {
        std::fs::write(&out, &good).unwrap();
        corrupt(&out);
        let err = record
            .check(&plan, &layout, &out)
            .expect_err(what)
            .to_string();
        assert!(err.contains(needle), "{what}: {err}");
        assert!(err.contains("--verify"), "{what}: {err}");
    }
    // Restored, it verifies again.
    std::fs::write(&out, &good).unwrap();
    record.check(&plan, &layout, &out).unwrap();
}
