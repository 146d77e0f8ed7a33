//! `--verify`: reading a published output back from the disk, checking it against what the
//! merge wrote, and the sha256 of each file that a pipeline can pin.
//!
//! While a merge runs, [`Record::observe`] keeps the sha256 of every chunk written (the chunks
//! of `CHUNK_ELEMENTS` elements the executor works in). After the rename, [`Record::check`]
//! drops the output's cached pages, so the re-read comes from the disk where the kernel allows,
//! compares each file's header byte for byte with the planned one, validates it like any
//! input, and recomputes every chunk's digest from the file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::execute::interrupted;
use super::kernel::CHUNK_ELEMENTS;
use super::layout::{Layout, OutputFile};
use super::plan::Plan;
use crate::error::{printable, Error, Result};
use crate::format::{drop_cached, Checkpoint, Shard};

/// What a merge wrote: the sha256 of each chunk, keyed by tensor index and first element.
#[derive(Default)]
pub struct Record {
    chunks: Mutex<HashMap<(usize, usize), [u8; 32]>>,
}

/// The outcome of a successful `--verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// sha256 (hex) of the output file; for a model directory, null (see `files`).
    pub sha256: Option<String>,
    /// Every file of the output, by name, with its size and sha256 (hex).
    pub files: Vec<VerifiedFile>,
    /// Tensors whose bytes were read back and matched what was written.
    pub tensors: usize,
}

/// One file of a verified output.
#[derive(Debug, Clone, Serialize)]
pub struct VerifiedFile {
    /// The file's name (within the output directory, for a model directory).
    pub name: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// sha256 of its contents, hex.
    pub sha256: String,
}

impl Record {
    pub fn new() -> Record {
        Record::default()
    }

    /// Notes one written chunk: tensor `tensor` of the plan, from element `start`. Pass it to
    /// the executor as `RunOptions::observe`.
    pub fn observe(&self, tensor: usize, start: usize, bytes: &[u8]) {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        self.chunks
            .lock()
            .expect("no panics while held")
            .insert((tensor, start), digest);
    }

    /// Reads the output published at `dest` (a file, or a model directory laid out by `layout`)
    /// back and checks it against what was written: headers byte for byte, then every tensor
    /// chunk's sha256.
    ///
    /// A Ctrl-C (or SIGTERM, SIGHUP, SIGQUIT) stops the read-back at its next MiB read or chunk
    /// checked, as it stops a merge at its next chunk: the output stays, complete, and the
    /// error says it was not verified.
    pub fn check(&self, plan: &Plan, layout: &Layout, dest: &Path) -> Result<Verified> {
        self.check_unless_interrupted(plan, layout, dest)
            .map_err(|e| match e {
                Error::Interrupted => Error::InterruptedWhile(format!(
                    "verifying {}, which is written and complete but not verified; merge again with --verify to check it",
                    dest.display()
                )),
                other => other,
            })
    }

    fn check_unless_interrupted(
        &self,
        plan: &Plan,
        layout: &Layout,
        dest: &Path,
    ) -> Result<Verified> {
        crate::format::sigbus_now_reads_the_output();
        let is_dir = dest.is_dir();
        let chunks = self.chunks.lock().expect("no panics while held");
        let mut files = Vec::new();
        for spec in &layout.files {
            let path = if is_dir {
                dest.join(&spec.name)
            } else {
                dest.to_path_buf()
            };
            files.push(check_file(plan, spec, &path, &chunks)?);
        }
        let tensors = layout.files.iter().map(|f| f.tensors.len()).sum();
        if !is_dir {
            let sha256 = files.first().map(|f| f.sha256.clone());
            return Ok(Verified {
                sha256,
                files,
                tensors,
            });
        }
        // The index and companion files: hashed so a pipeline can pin the whole directory.
        let weights: Vec<&str> = layout.files.iter().map(|f| f.name.as_str()).collect();
        let mut names: Vec<String> = std::fs::read_dir(dest)
            .map_err(|e| Error::io(dest, e))?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !weights.contains(&n.as_str()))
            .collect();
        names.sort();
        for name in names {
            let path = dest.join(&name);
            let (bytes, sha256, _) = hash_file(&path, 0)?;
            files.push(VerifiedFile {
                name,
                bytes,
                sha256,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Verified {
            sha256: None,
            files,
            tensors,
        })
    }
}

fn check_file(
    plan: &Plan,
    spec: &OutputFile,
    path: &Path,
    chunks: &HashMap<(usize, usize), [u8; 32]>,
) -> Result<VerifiedFile> {
    let failed = |what: String| {
        Error::output(
            path,
            format!("--verify: {what}; the disk or filesystem did not keep what was written, don't use this file"),
        )
    };
    let (bytes, sha256, head) = hash_file(path, spec.header.len())?;
    if bytes != spec.len() {
        return Err(failed(format!(
            "reads back as {bytes} bytes but {} were written",
            spec.len()
        )));
    }
    if head != spec.header {
        return Err(failed("its header reads back different".into()));
    }
    let shard = Shard::open(path)?;
    let output = Checkpoint::from_shards(path, vec![shard])?;
    let mut jobs = Vec::new();
    for t in spec.tensors.clone() {
        let tensor = &plan.tensors[t];
        let found = output
            .tensor(&tensor.name)
            .filter(|x| x.info.dtype == tensor.dtype && x.info.shape == tensor.shape)
            .ok_or_else(|| {
                failed(format!(
                    "tensor '{}' is missing or changed",
                    printable(&tensor.name)
                ))
            })?;
        let n = tensor.elements() as usize;
        let size = tensor.dtype.size();
        jobs.extend(
            (0..n)
                .step_by(CHUNK_ELEMENTS)
                .map(|start| (t, start, (start + CHUNK_ELEMENTS).min(n), size, found.data)),
        );
    }
    let bad = jobs.par_iter().find_first(|&&(t, start, end, size, data)| {
        if interrupted() {
            return true;
        }
        let digest: [u8; 32] = Sha256::digest(&data[start * size..end * size]).into();
        chunks.get(&(t, start)) != Some(&digest)
    });
    if interrupted() {
        return Err(Error::Interrupted);
    }
    if let Some(&(t, start, end, _, _)) = bad {
        return Err(failed(format!(
            "tensor '{}' elements {start}..{end} read back different from what was written",
            printable(&plan.tensors[t].name)
        )));
    }
    Ok(VerifiedFile {
        name: spec.name.clone(),
        bytes,
        sha256,
    })
}

/// Reads `path` from the disk: its length, its sha256 in hex, and its first `head` bytes.
fn hash_file(path: &Path, head: usize) -> Result<(u64, String, Vec<u8>)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    drop_cached(&file);
    let mut hasher = Sha256::new();
    let mut first = Vec::with_capacity(head);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        if interrupted() {
            return Err(Error::Interrupted);
        }
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        let take = head.saturating_sub(first.len()).min(n);
        first.extend_from_slice(&buf[..take]);
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize()), first))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
