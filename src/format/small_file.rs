//! Reading small inputs that aren't checkpoints (recipes, configs): only regular files, never
//! blocking on a FIFO or device, and never more than a cap, so a hostile path or file costs
//! a bounded amount of work.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::checkpoint::Stamp;
use crate::error::{Error, Result};

/// An input file that an output's bytes were made from, as it was when read: its size,
/// modification time and status-change time. An output is published only while every one of
/// its sources is [`SourceFile::unchanged`]: the files copied into a model directory, and the ones
/// read at plan time and written out rewritten (a config with its dtype set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    path: PathBuf,
    stamp: Stamp,
}

impl SourceFile {
    /// `path` as `meta` (its metadata, taken before its bytes were read) describes it.
    pub(crate) fn new(path: &Path, meta: &std::fs::Metadata) -> SourceFile {
        SourceFile {
            path: path.to_path_buf(),
            stamp: Stamp::of(meta),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file at the path is still the one read: same size, mtime and ctime. A
    /// file removed, or replaced by a rename, is not.
    pub fn unchanged(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| Stamp::of(&m) == self.stamp)
    }
}

/// The cap on a model's JSON and template files (`config.json`, `tokenizer_config.json`, a
/// chat template): real ones are at most a few MiB; tokenizer vocabularies are
/// copied, not read.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Reads the whole of a regular file of at most `cap` bytes. `what` names the file's role in
/// messages ("recipe", "config").
pub fn read(path: &Path, cap: u64, what: &str) -> Result<Vec<u8>> {
    read_source(path, cap, what).map(|(bytes, _)| bytes)
}

/// [`read`], with the [`SourceFile`] that the bytes came from, for an output made from them to
/// check before it is published.
pub fn read_source(path: &Path, cap: u64, what: &str) -> Result<(Vec<u8>, SourceFile)> {
    let mut file = open_regular(path, what)?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.len() > cap {
        return Err(Error::header(
            path,
            format!(
                "is {} bytes; a {what} is at most {cap} bytes: is this the right file?",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // One byte past the cap tells a file that grew since the check.
    (&mut file)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::header(
            path,
            format!("grew past {cap} bytes while being read; a {what} is at most {cap} bytes"),
        ));
    }
    Ok((bytes, SourceFile::new(path, &meta)))
}

/// Opens a regular file for reading, refusing anything else without blocking: a FIFO (or one
/// swapped in after a type check) would block the open, and a device would never end.
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    // O_NONBLOCK only matters to what is refused here: reads of a regular file ignore it.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::header(
            path,
            format!("is not a regular file (a directory, FIFO, socket or device?); give the {what} file itself"),
        ));
    }
    Ok(file)
}
