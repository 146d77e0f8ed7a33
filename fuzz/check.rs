//! What the fuzz targets check, as plain functions: the targets call them on libFuzzer's
//! inputs, and `tests/safety_fuzz_seeds.rs` replays the committed seeds through them under
//! `cargo test`, with no nightly toolchain.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use model_soup::format::{encode_header, Checkpoint, Dtype, Header, HeaderEntry, ShardIndex};
use model_soup::soup::{self, OnMissing, Plan, PlanOptions, RunOptions};

/// Any bytes as a whole safetensors file: parsing and validation return, never panic, hang or
/// allocate in proportion to a claimed size; a header they accept survives being written back
/// out and read again unchanged.
pub fn header(file: &[u8]) {
    let Ok(header) = Header::parse(Path::new("fuzz.safetensors"), file) else {
        return;
    };
    let data_len = file.len() as u64 - header.data_start;
    let mut cursor = 0;
    for t in &header.tensors {
        assert_eq!(t.begin, cursor, "tensors are back to back");
        assert_eq!(t.len_bytes(), t.elements() * t.dtype.size() as u64);
        cursor = t.end;
    }
    assert_eq!(cursor, data_len, "data ends at end of file");

    let entries: Vec<HeaderEntry> = header
        .tensors
        .iter()
        .map(|t| HeaderEntry {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            begin: t.begin,
            end: t.end,
        })
        .collect();
    let mut again = encode_header(&header.metadata, &entries);
    again.extend_from_slice(&file[header.data_start as usize..]);
    let reread = Header::parse(Path::new("again.safetensors"), &again)
        .expect("a header we wrote from a valid one is valid");
    assert_eq!(reread.tensors, header.tensors);
    assert_eq!(reread.metadata, header.metadata);
}

/// Any bytes as `model.safetensors.index.json`: parsing returns, never panics; an index it
/// accepts names only plain files in its own directory, and survives being encoded and parsed
/// again unchanged.
pub fn index(bytes: &[u8]) {
    let Ok(index) = ShardIndex::parse(Path::new("model.safetensors.index.json"), bytes) else {
        return;
    };
    let files = index.shard_files();
    assert!(!files.is_empty(), "an accepted index lists a shard");
    for f in files {
        assert!(
            !f.is_empty() && !f.contains('/') && !f.contains('\\') && f != ".." && f != ".",
            "shard name {f:?} escapes the model directory"
        );
    }
    let again = ShardIndex::parse(Path::new("again.json"), index.encode().as_bytes())
        .expect("an index we encoded from a valid one is valid");
    assert_eq!(again, index);
}

/// Two files as the ingredients of a merge: opening, cross-checking and planning them, then
/// running the plan into memory, return an error or a soup, never panic.
///
/// Input: one byte of options, two bytes (little-endian) saying where the first file ends,
/// then the two files.
pub fn plan(input: &[u8]) {
    plan_in(&scratch(), input)
}

/// [`plan`], writing the two files in `dir`.
pub fn plan_in(dir: &Path, input: &[u8]) {
    let Some((&[options, lo, hi], rest)) = input.split_first_chunk::<3>() else {
        return;
    };
    let split = (u16::from_le_bytes([lo, hi]) as usize).min(rest.len());
    let (a, b) = rest.split_at(split);
    let paths = [dir.join("a.safetensors"), dir.join("b.safetensors")];
    std::fs::write(&paths[0], a).expect("write a");
    std::fs::write(&paths[1], b).expect("write b");

    let Ok(ingredients) = paths
        .iter()
        .map(|p| Checkpoint::open(p))
        .collect::<Result<Vec<_>, _>>()
    else {
        return;
    };
    let dtype = [
        None,
        Some(Dtype::F16),
        Some(Dtype::BF16),
        Some(Dtype::F32),
        Some(Dtype::F64),
    ][(options & 7) as usize % 5];
    let on_missing = [
        OnMissing::Error,
        OnMissing::Skip,
        OnMissing::First,
        OnMissing::Renormalize,
    ][((options >> 3) & 3) as usize];
    let weights = match options >> 5 {
        0 => vec![0.5, 0.5],
        1 => vec![1.0, 0.0],
        2 => vec![1.0, -1.0],
        3 => vec![0.0, 0.0],
        4 => vec![1e300, 1e300],
        _ => vec![-0.25, 1.25],
    };
    let plan_options = PlanOptions {
        dtype,
        on_missing,
        ..Default::default()
    };
    let Ok(plan) = Plan::new(ingredients, weights, &plan_options) else {
        return;
    };
    let header = plan.header();
    assert_eq!(header.len() % 8, 0, "the output header is 8-byte aligned");
    // The output can't be larger than both inputs widened to f64, so this stays small.
    let (soup, _warnings) = soup::to_memory(&plan, RunOptions::default()).expect("in memory");
    assert_eq!(soup.data.len() as u64, plan.data_len());
    let mut file = header;
    file.extend_from_slice(&soup.data);
    Header::parse(Path::new("soup.safetensors"), &file)
        .expect("the soup of two valid files is a valid file");
}

/// Where the fuzzing process writes the two files: tmpfs when there is one.
fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("soup-fuzz-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}
