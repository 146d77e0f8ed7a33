//! A checkpoint on disk: one or more memory-mapped safetensors shards with validated headers,
//! seen as one set of named tensors.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::header::{Header, TensorInfo};
use super::os::Mapping;
use crate::error::{Error, Result};

/// One mapped `.safetensors` file with its validated header.
pub struct Shard {
    path: PathBuf,
    file: File,
    mapping: Mapping,
    header: Header,
    stamp: Stamp,
}

/// What tells a file that changed from one that didn't, short of reading it: its size, its
/// modification time (which tools can set back) and its status-change time (which they can't;
/// a chmod or a new hard link also moves it, and that is reported as a change too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Shard {
    /// Opens, maps and validates one safetensors file. Reads only the header.
    pub fn open(path: &Path) -> Result<Shard> {
        let meta = std::fs::metadata(path).map_err(|e| input_error(path, e))?;
        if meta.is_dir() {
            return Err(Error::header(path, "is a directory; pass a .safetensors file, or a model directory holding model.safetensors or model.safetensors.index.json"));
        }
        if !meta.is_file() {
            return Err(Error::header(
                path,
                "is not a regular file (a FIFO, socket or device?); pass a .safetensors file",
            ));
        }
        let file = open_nonblocking(path)?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if !meta.is_file() {
            return Err(Error::header(
                path,
                "is not a regular file; pass a .safetensors file",
            ));
        }
        let mapping = Mapping::new(&file, path).map_err(|e| match e.raw_os_error() {
            // Every input is mapped whole: it takes address space, not memory, so a limit on
            // the address space (or on the count of maps) refuses a model the machine could
            // merge.
            Some(libc::ENOMEM) => Error::Resources(format!(
                "{}: can't be mapped ({} bytes): the address space is limited (ulimit -v) or the process holds too many maps (vm.max_map_count); every input is mapped whole, which takes address space but not memory: lift the limit (ulimit -v unlimited) or merge fewer files",
                path.display(),
                meta.len()
            )),
            // A file system that can't map files (sysfs, some FUSE mounts).
            Some(libc::ENODEV) => Error::io(
                path,
                std::io::Error::new(
                    e.kind(),
                    format!("can't be memory-mapped, which every input is: its file system doesn't map files; copy it to a local disk ({e})"),
                ),
            ),
            _ => Error::io(path, e),
        })?;
        let header = Header::parse(path, mapping.bytes())?;
        Ok(Shard {
            path: path.to_path_buf(),
            stamp: Stamp::of(&meta),
            file,
            mapping,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The stored bytes of one of this shard's tensors.
    fn data(&self, info: &TensorInfo) -> &[u8] {
        let (start, end) = self.span(info);
        &self.mapping.bytes()[start..end]
    }

    fn span(&self, info: &TensorInfo) -> (usize, usize) {
        // Validation proved data_start + end <= file length, which the map holds in memory.
        let start = (self.header.data_start + info.begin) as usize;
        (start, start + info.len_bytes() as usize)
    }

    /// Fails if the file changed size, modification time or status-change time since it was
    /// opened.
    fn check_unchanged(&self) -> Result<()> {
        let meta = self.file.metadata().map_err(|e| Error::io(&self.path, e))?;
        if Stamp::of(&meta) != self.stamp {
            return Err(Error::header(&self.path, "changed while it was being read (another process wrote or truncated it); the output was discarded, run again once the file is stable"));
        }
        Ok(())
    }
}

/// An input that can't be looked at, with what to do about it: the kernel's words alone
/// ("No such file or directory (os error 2)") name no fix.
fn input_error(path: &Path, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    let fix = match e.kind() {
        ErrorKind::NotFound if path.symlink_metadata().is_ok() => {
            let target = std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            format!("is a link to nothing ({target}), an interrupted download or a moved file: fix the link or give the file itself")
        }
        ErrorKind::NotFound => "does not exist: check the path, and give a .safetensors file or a model directory".into(),
        ErrorKind::NotADirectory => "goes through a file as if it were a directory (a trailing slash after a file name?): fix the path".into(),
        ErrorKind::PermissionDenied => "can't be read (permission denied): make it readable or run as a user who can read it".into(),
        _ if e.raw_os_error() == Some(libc::ELOOP) => "is a loop of symbolic links: fix the link".into(),
        _ if e.raw_os_error() == Some(libc::ENAMETOOLONG) => "is a path longer than the system takes: give it from a folder nearer the file (cd there first)".into(),
        _ => return Error::io(path, e),
    };
    Error::io(path, std::io::Error::new(e.kind(), format!("{fix} ({e})")))
}

fn open_nonblocking(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        // A FIFO swapped in after the type check must not block the open forever.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path).map_err(|e| match e.raw_os_error() {
        // Every input stays open until the output is published (to check that none changed),
        // so a merge of thousands of shards can reach the process's limit.
        Some(libc::EMFILE | libc::ENFILE) => Error::Resources(format!(
            "{}: can't be opened, the limit on open files is reached; a merge keeps every input file open until it ends: raise the limit (ulimit -n 65536) or merge fewer files",
            path.display()
        )),
        _ => input_error(path, e),
    })
}

/// One tensor of a checkpoint: its entry and its stored bytes.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    pub info: &'a TensorInfo,
    pub data: &'a [u8],
    shard: usize,
}

impl<'a> Tensor<'a> {
    pub fn name(&self) -> &'a str {
        &self.info.name
    }
}

/// A model's weights: one file, or the shards of a model directory, as one name → tensor map.
pub struct Checkpoint {
    path: PathBuf,
    shards: Vec<Shard>,
    index: BTreeMap<String, (usize, usize)>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a Hugging Face model directory: its `model.safetensors`,
    /// or its `model.safetensors.index.json` and shards, with the index checked against them.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return super::model_dir::open(path);
        }
        Checkpoint::from_shards(path, vec![Shard::open(path)?])
    }

    /// Joins shards into one checkpoint; a tensor that appears in two shards is an error.
    /// `path` is what the user named (a file or a directory), used in messages and provenance.
    pub fn from_shards(path: &Path, shards: Vec<Shard>) -> Result<Checkpoint> {
        let mut index = BTreeMap::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (s, shard) in shards.iter().enumerate() {
            for (t, info) in shard.header.tensors.iter().enumerate() {
                if let Some(first) = owner.insert(&info.name, s) {
                    return Err(Error::tensor(
                        &shard.path,
                        &info.name,
                        format!(
                            "also stored in {}; a tensor must be in exactly one shard",
                            shards[first].path.display()
                        ),
                    ));
                }
                index.insert(info.name.clone(), (s, t));
            }
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            shards,
            index,
        })
    }

    /// The path the user gave: a file, or a model directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The first shard's `__metadata__`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.shards[0].header.metadata
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn tensor(&self, name: &str) -> Option<Tensor<'_>> {
        self.index.get(name).map(|&(s, t)| self.make(s, t))
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = Tensor<'_>> {
        self.index.values().map(|&(s, t)| self.make(s, t))
    }

    /// Where a tensor lives: the shard's path.
    pub fn shard_path(&self, tensor: &Tensor<'_>) -> &Path {
        &self.shards[tensor.shard].path
    }

    fn make(&self, s: usize, t: usize) -> Tensor<'_> {
        let shard = &self.shards[s];
        let info = &shard.header.tensors[t];
        Tensor {
            info,
            data: shard.data(info),
            shard: s,
        }
    }

    /// Lets the OS take back the resident pages of `tensor`'s bytes `range` (relative to the
    /// tensor), once the merge is done with them.
    pub fn release(&self, tensor: &Tensor<'_>, range: std::ops::Range<usize>) {
        let shard = &self.shards[tensor.shard];
        let (start, _) = shard.span(tensor.info);
        shard
            .mapping
            .release(start + range.start..start + range.end);
    }

    /// Where a tensor is stored: its shard's index and its byte offset there.
    pub fn position(&self, name: &str) -> Option<(usize, u64)> {
        let &(s, t) = self.index.get(name)?;
        Some((s, self.shards[s].header.tensors[t].begin))
    }

    /// Maps the resident pages of `tensor`'s bytes `range` ahead of reading them.
    pub fn populate(&self, tensor: &Tensor<'_>, range: std::ops::Range<usize>) {
        let shard = &self.shards[tensor.shard];
        let (start, _) = shard.span(tensor.info);
        shard
            .mapping
            .populate(start + range.start..start + range.end);
    }

    /// Fails if any shard changed on disk since it was opened.
    pub fn check_unchanged(&self) -> Result<()> {
        self.shards.iter().try_for_each(Shard::check_unchanged)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.header.tensors)
            .map(TensorInfo::len_bytes)
            .sum()
    }
}
