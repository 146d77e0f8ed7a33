//! The fuzzers' committed seeds (fuzz/seeds), replayed through the same checks as the fuzz
//! targets on every `cargo test`, without a nightly toolchain: each was once an interesting
//! input, and the crashes fixed along the way stay fixed.

#[path = "../fuzz/check.rs"]
mod check;

use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() > 10, "seeds missing from {}", dir.display());
    files
}

#[test]
fn header_seeds_replay_clean() {
    for seed in seeds("header") {
        check::header(&std::fs::read(&seed).unwrap());
    }
}

#[test]
fn plan_seeds_replay_clean() {
    let dir = tempfile::tempdir().unwrap();
    for seed in seeds("plan") {
        check::plan_in(dir.path(), &std::fs::read(&seed).unwrap());
    }
}

#[test]
fn index_seeds_replay_clean() {
    for seed in seeds("index") {
        check::index(&std::fs::read(&seed).unwrap());
    }
}
