//! The output policy: which paths a run may write. Both tools run every output they write
//! (`-o`, `--plot`, and any added later) through [`check`] before any work, `--dry-run`
//! included, and the atomic writers accept nothing but the [`Destination`]s it returns.
//!
//! The rules, each tested in `tests/safety_outputs.rs` and stated in SAFETY.md:
//! - an output never resolves (through symbolic links, `..` or a hard link) to anything the run
//!   reads, in any role, nor to another output of the same run; a directory output never holds
//!   anything the run reads, and no output lands inside a model directory the run reads, also
//!   through a bind mount of it (folders are compared by device and inode too);
//! - standard output and error are never a file the run reads ([`check_standard_streams`]);
//! - a file output's path never ends in a slash, which names a directory;
//! - devices, FIFOs, sockets and symbolic links are never replaced, even with `--force`;
//! - `--force` replaces only what the tool wrote itself: a soup or plot that carries its mark,
//!   and for a directory output a directory of model files, and nothing else, whose weights do;
//! - a replacement keeps the mode of what it replaces, so it is never more permissive;
//! - `-` is refused as a path, since it reads as stdout and the tools write only files.

use std::fs::{self, Metadata};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::checkpoint::Checkpoint;
use super::index::{is_shard_file_name, INDEX_NAME};
use super::model_dir::COMPANION_FILES;
use super::os::Locked;
use crate::error::{Error, Result};

/// The part a path plays in a run, named in refusals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A checkpoint to merge or evaluate: a file, or a model directory.
    Ingredient,
    /// One safetensors file of an ingredient.
    Shard,
    /// A model directory's `model.safetensors.index.json`.
    Index,
    /// The `--base` model directory (config and tokenizer source).
    Base,
    /// A `--config` recipe file.
    Recipe,
    /// A validation or test set.
    Dataset,
    /// A config, tokenizer or chat template copied into a directory output.
    Companion,
    /// soup-eval's search log: `--resume` reads it, `--log` creates it during the run.
    SearchLog,
    /// soup-eval's `--tokenizer` file.
    Tokenizer,
    /// What is already at an output's path (a soup `--force` would replace, or a file of
    /// such a model directory): never read, but a standard stream appended to it would
    /// change it, also when the run then fails and leaves it in place.
    Output,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Role::Ingredient => "input",
            Role::Shard => "input shard",
            Role::Index => "input's shard index",
            Role::Base => "--base directory",
            Role::Recipe => "--config recipe",
            Role::Dataset => "dataset",
            Role::Companion => "companion file",
            Role::SearchLog => "search log",
            Role::Tokenizer => "--tokenizer file",
            Role::Output => "existing output",
        }
    }

    /// What writing inside a directory read in this role would change.
    fn folder_noun(self) -> &'static str {
        match self {
            Role::Dataset => "dataset",
            _ => "model directory",
        }
    }
}

/// Whether an output is one file or a model directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    /// One file: a `.safetensors` soup, or a plot.
    File,
    /// A Hugging Face model directory: shards, index, config, tokenizer, model card.
    Directory,
}

/// One thing a run reads: how it was given, where it resolves, and which file it is.
#[derive(Clone, Debug)]
struct Read {
    role: Role,
    given: PathBuf,
    resolved: Option<PathBuf>,
    /// (device, inode) of what the path resolves to, and of the path itself when that is a link.
    ids: Vec<(u64, u64)>,
    is_dir: bool,
    /// (device, inode) of the folder the path resolves into, which a bind mount also shows at
    /// another path.
    folder_id: Option<(u64, u64)>,
    /// A shard or index of a checkpoint given as a model directory: the folder it resolves
    /// into is that model directory too (a directory of links to another model's files).
    of_model_dir: bool,
}

impl Read {
    /// Whether `path` (absolute, its folder resolved) is this directory or lies inside it,
    /// by path or, for a bind mount of it, by identity.
    fn holds(&self, path: &Path) -> bool {
        self.is_dir
            && (self.resolved.as_ref().is_some_and(|r| path.starts_with(r))
                || self.ids.first().is_some_and(|&id| lies_in(path, id)))
    }

    /// Whether `path` lies inside the folder this read resolves into (see [`Read::holds`]).
    fn folder_holds(&self, path: &Path) -> bool {
        self.resolved
            .as_deref()
            .and_then(Path::parent)
            .is_some_and(|f| path.starts_with(f))
            || self.folder_id.is_some_and(|id| lies_in(path, id))
    }

    /// Whether `path` is directly in the folder this read resolves into.
    fn folder_is_parent_of(&self, path: &Path) -> bool {
        let Some(parent) = path.parent() else {
            return false;
        };
        self.resolved.as_deref().and_then(Path::parent) == Some(parent)
            || self
                .folder_id
                .is_some_and(|id| fs::metadata(parent).is_ok_and(|m| (m.dev(), m.ino()) == id))
    }
}

/// Whether `path` or a folder above it is the directory `dir` (device, inode). A bind mount
/// shows a directory at a second path that no comparison of paths relates to the first, so
/// an output under the mount would land inside a model directory the run reads.
fn lies_in(path: &Path, dir: (u64, u64)) -> bool {
    path.ancestors()
        .any(|a| fs::metadata(a).is_ok_and(|m| (m.dev(), m.ino()) == dir))
}

/// Everything a run reads, in every role, by resolved path and by identity.
#[derive(Clone, Debug, Default)]
pub struct Reads {
    reads: Vec<Read>,
}

impl Reads {
    /// An empty set.
    pub fn new() -> Reads {
        Reads::default()
    }

    /// Records `path`, read as `role`. A path that doesn't exist yet (a log the run will
    /// create) is recorded where it would be, its folder resolved, so it is still never
    /// written.
    pub fn add(&mut self, role: Role, path: &Path) {
        let mut ids = Vec::new();
        let followed = fs::metadata(path).ok();
        if let Some(m) = &followed {
            ids.push((m.dev(), m.ino()));
        }
        if let Ok(m) = fs::symlink_metadata(path) {
            ids.push((m.dev(), m.ino()));
        }
        let resolved = fs::canonicalize(path).ok().or_else(|| to_be(path));
        let folder_id = resolved
            .as_deref()
            .and_then(Path::parent)
            .and_then(|f| fs::metadata(f).ok())
            .map(|m| (m.dev(), m.ino()));
        self.reads.push(Read {
            role,
            given: path.to_path_buf(),
            resolved,
            ids,
            is_dir: followed.is_some_and(|m| m.is_dir()),
            folder_id,
            of_model_dir: false,
        });
    }

    /// Records a path named on the command line before anything is opened (it may not even be
    /// a checkpoint): the path, and for a directory, the files in it a model directory's
    /// reader may open (weights, the index, config and tokenizer files). Cheap and
    /// infallible, so that it can run before any check that might fail and print.
    pub fn add_named(&mut self, role: Role, path: &Path) {
        self.add(role, path);
        if !fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            return;
        }
        let Ok(entries) = fs::read_dir(path) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let role = if name == INDEX_NAME {
                Role::Index
            } else if name.ends_with(".safetensors") {
                Role::Shard
            } else if COMPANION_FILES.contains(&name) {
                Role::Companion
            } else {
                continue;
            };
            self.add(role, &entry.path());
        }
    }

    /// Records what is already at an output's path, and a directory's files, as
    /// [`Role::Output`], for [`check_standard_streams`] only (the output policy would refuse
    /// the output as read): `soup-merge ... -o soup.safetensors 2>> soup.safetensors` appended
    /// its refusal ("already exists") to the soup it was refusing to replace, and with
    /// `--force` a failed run left the old soup with an error line after its data, unreadable.
    pub fn add_existing_output(&mut self, output: &Path) {
        self.add(Role::Output, output);
        if let Ok(entries) = fs::read_dir(output) {
            for entry in entries.flatten() {
                self.add(Role::Output, &entry.path());
            }
        }
    }

    /// Records a checkpoint: the path given, every shard, and a model directory's index.
    pub fn add_checkpoint(&mut self, checkpoint: &Checkpoint) {
        self.add(Role::Ingredient, checkpoint.path());
        let is_dir = checkpoint.path().is_dir();
        let first = self.reads.len();
        for shard in checkpoint.shards() {
            self.add(Role::Shard, shard.path());
        }
        let index = checkpoint.path().join(INDEX_NAME);
        if is_dir && index.exists() {
            self.add(Role::Index, &index);
        }
        for read in &mut self.reads[first..] {
            read.of_model_dir = is_dir;
        }
    }

    /// Records an ingredient given by its path, as a checkpoint when it opens: its shards and
    /// index then count too, so a model directory it reaches through its files (a folder of
    /// links, or `Da/model.safetensors` given alone) is protected as one given. A path that
    /// doesn't open is recorded as given; the run refuses it with its reason when it opens it.
    pub fn add_ingredient(&mut self, path: &Path) {
        match Checkpoint::open(path) {
            Ok(checkpoint) => self.add_checkpoint(&checkpoint),
            Err(_) => self.add(Role::Ingredient, path),
        }
    }

    /// Whether a path is something the run reads, or a directory holding something it reads.
    pub fn protects(&self, path: &Path) -> bool {
        self.contains(path) || self.within(path)
    }

    /// Whether `path` (not followed, if it is a link) or what it resolves to is read.
    pub fn contains(&self, path: &Path) -> bool {
        let ids: Vec<(u64, u64)> = [fs::symlink_metadata(path).ok(), fs::metadata(path).ok()]
            .into_iter()
            .flatten()
            .map(|m| (m.dev(), m.ino()))
            .collect();
        let resolved = fs::canonicalize(path).ok();
        self.reads.iter().any(|r| {
            r.ids.iter().any(|id| ids.contains(id))
                || (resolved.is_some() && r.resolved == resolved)
        })
    }

    /// Whether anything read lies inside the directory `dir` (found through its resolved path).
    fn within(&self, dir: &Path) -> bool {
        let Ok(dir) = fs::canonicalize(dir) else {
            return false;
        };
        self.reads
            .iter()
            .any(|r| r.resolved.as_ref().is_some_and(|p| p.starts_with(&dir)))
    }

    fn same_file(&self, meta: &Metadata) -> Option<&Read> {
        let id = (meta.dev(), meta.ino());
        self.reads.iter().find(|r| r.ids.contains(&id))
    }
}

/// A model directory the run reads can also be reached through its files, not only as given:
/// - a checkpoint given as a directory of links to another model directory's files reads that
///   other directory, and no output may land inside it (a link to a plain checkpoint in a
///   folder of them makes that folder no model directory);
/// - a model directory's weights file given on its own (`Da/model.safetensors`) reads that
///   directory, and no output may add a file it would load (weights, an index, a config or
///   tokenizer) beside it, which would change what it loads as. Other names may go there: a
///   soup beside its ingredient is an ordinary request.
///
/// Returns the refusal, if any, ending with `fix`.
fn changes_a_model_directory(dest: &Path, reads: &Reads, fix: &str) -> Option<String> {
    let name = dest.file_name()?.to_str().unwrap_or("");
    for read in &reads.reads {
        if !matches!(read.role, Role::Shard | Role::Index) {
            continue;
        }
        let Some(resolved) = &read.resolved else {
            continue;
        };
        let Some(folder) = resolved.parent() else {
            continue;
        };
        let is_model_dir = || {
            resolved
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == "model.safetensors" || is_shard_file_name(n))
                || folder.join("config.json").exists()
                || folder.join(INDEX_NAME).exists()
        };
        if read.of_model_dir && read.folder_holds(dest) && is_model_dir() {
            return Some(format!(
                "is inside {}, the model directory that the {} {} resolves into; writing there would change that model: {fix}",
                folder.display(),
                read.role.noun(),
                read.given.display()
            ));
        }
        let loads = is_model_file(name) && name != "README.md";
        if loads && read.folder_is_parent_of(dest) && is_model_dir() {
            return Some(format!(
                "would add {name} to {}, the model directory of the {} {}, and change what that model loads as: {fix}",
                folder.display(),
                read.role.noun(),
                read.given.display()
            ));
        }
    }
    None
}

/// Where a file that doesn't exist yet would be: its folder resolved, then its name.
fn to_be(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let folder = fs::canonicalize(super::writer::parent_dir(path)).ok()?;
    Some(folder.join(name))
}

/// An output a run asks to write: the flag that names it (for messages), its path and kind.
#[derive(Clone, Debug)]
pub struct Request {
    pub flag: &'static str,
    pub path: PathBuf,
    pub kind: OutputKind,
}

/// An output that passed the policy: the only thing the atomic writers accept.
#[derive(Clone, Debug)]
pub struct Destination {
    flag: &'static str,
    given: PathBuf,
    path: PathBuf,
    kind: OutputKind,
    force: bool,
    mode: Option<u32>,
    reads: Reads,
}

impl Destination {
    /// The path as the user gave it, for messages.
    pub fn given(&self) -> &Path {
        &self.given
    }

    /// Where the output is written: the given path with its folder resolved, so that the
    /// checks and the write see the same file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// File or model directory.
    pub fn kind(&self) -> OutputKind {
        self.kind
    }

    /// Whether an existing output may be replaced.
    pub fn force(&self) -> bool {
        self.force
    }

    /// The permission bits of the output this one replaces, which the replacement takes.
    pub fn replaced_mode(&self) -> Option<u32> {
        self.mode
    }

    /// Whether a path is something the run reads, or a directory holding something it reads:
    /// stale-temporary cleanup removes neither (a killed run's shards may be fed back in).
    pub fn protects(&self, path: &Path) -> bool {
        self.reads.protects(path)
    }

    /// The same destination checked again with more reads: a writer's own inputs, whatever
    /// the caller recorded.
    pub fn with_reads(&self, more: &Reads) -> Result<Destination> {
        let mut reads = self.reads.clone();
        reads.reads.extend(more.reads.iter().cloned());
        let request = Request {
            flag: self.flag,
            path: self.given.clone(),
            kind: self.kind,
        };
        check_one(&request, &reads, self.force)
    }

    /// Applies the whole policy again just before an output is renamed over what is at its
    /// destination with `--force`: the run may have taken hours, and whatever appeared there
    /// since [`check`] (a file a `--scorer` wrote where the plot goes, a file added to the
    /// old model directory, an edited weights file) is replaced only if it still passes.
    pub fn recheck_replaced(&self) -> Result<()> {
        self.with_reads(&Reads::new()).map(|_| ())
    }
}

/// Applies the policy to every output of a run at once, before any work. `force` is the run's
/// `--force`.
pub fn check(requests: &[Request], reads: &Reads, force: bool) -> Result<Vec<Destination>> {
    let mut out: Vec<Destination> = Vec::with_capacity(requests.len());
    for request in requests {
        let dest = check_one(request, reads, force)?;
        if let Some(other) = out.iter().find(|o| overlaps(o, &dest)) {
            return Err(Error::output(
                &request.path,
                format!(
                    "{} {} and {} {} would overwrite each other; give them different paths",
                    other.flag,
                    other.given.display(),
                    dest.flag,
                    dest.given.display()
                ),
            ));
        }
        out.push(dest);
    }
    Ok(out)
}

/// Refuses a run whose standard output or standard error is a regular file it reads: a shell
/// opens `--json >> a.safetensors` before the run starts, and the summary (or, with `2>>`,
/// any message) would be appended to that input, as `cat a >> a` would (cat refuses it too).
/// Such a stream is pointed at /dev/null first, so that not even the refusal lands in it; the
/// other stream and the exit status still tell.
pub fn check_standard_streams(reads: &Reads) -> Result<()> {
    use super::os::Stream;
    use std::os::fd::{AsFd, BorrowedFd};
    let id = |fd: BorrowedFd<'_>| -> Option<(u64, u64)> {
        let meta = fs::File::from(fd.try_clone_to_owned().ok()?)
            .metadata()
            .ok()?;
        meta.is_file().then(|| (meta.dev(), meta.ino()))
    };
    let streams = [
        (
            Stream::Stdout,
            "standard output",
            id(std::io::stdout().as_fd()),
        ),
        (
            Stream::Stderr,
            "standard error",
            id(std::io::stderr().as_fd()),
        ),
    ];
    let mut refusal = None;
    for (stream, name, file) in streams {
        let Some(read) = file.and_then(|f| reads.reads.iter().find(|r| r.ids.contains(&f))) else {
            continue;
        };
        super::os::silence(stream);
        refusal.get_or_insert_with(|| {
            Error::output(
                &read.given,
                format!(
                    "is the {} and also the run's {name} (a shell redirection such as >>), which the run writes to: redirect {name} to another file",
                    read.role.noun()
                ),
            )
        });
    }
    refusal.map_or(Ok(()), Err)
}

/// Applies the placement rules of [`check`] to a path a run writes that is not an output
/// `--force` may replace: soup-eval's search log (`--log` creates it, `--resume` appends to it)
/// and the folder its candidates go to (`--work-dir`, of kind [`OutputKind::Directory`]: files
/// are added inside it, and nothing the run reads may be there as a model directory). The path,
/// through links, `..` and hard links, is never anything the run reads, never inside a
/// directory it reads, and never adds a file to a model directory it reads through its files.
/// Whether the path may already exist is the caller's rule.
pub fn check_placement(request: &Request, reads: &Reads) -> Result<()> {
    not_stdout(request)?;
    not_a_directory_path(request)?;
    let given = &request.path;
    let refuse = |reason: String| Err(Error::output(given, reason));
    let fix = match request.kind {
        OutputKind::File => format!("give {} a path elsewhere", request.flag),
        OutputKind::Directory => format!("give {} a folder elsewhere", request.flag),
    };
    // A path whose folder doesn't exist is refused by whatever creates it.
    let Some(path) = fs::canonicalize(given).ok().or_else(|| to_be(given)) else {
        return Ok(());
    };
    not_a_system_folder(request, &path)?;
    if request.kind == OutputKind::Directory {
        // Files are made in the folder and removed from it; a folder the run makes is
        // removed from its parent when the run fails.
        let folder = match path.is_dir() {
            true => Some(path.as_path()),
            false => path.parent(),
        };
        if let Some(folder) = folder {
            not_a_locked_folder(request, folder)?;
        }
    }
    let existing = [fs::symlink_metadata(given).ok(), fs::metadata(given).ok()];
    for read in &reads.reads {
        let same_file = existing
            .iter()
            .flatten()
            .any(|m| read.ids.contains(&(m.dev(), m.ino())));
        if read.resolved.as_ref() == Some(&path) || same_file {
            return refuse(format!(
                "is the {} {}; {} never writes to what the run reads: {fix}",
                read.role.noun(),
                read.given.display(),
                request.flag
            ));
        }
        if read.holds(&path) {
            return refuse(format!(
                "is inside the {} {}; writing there would change that {}: {fix}",
                read.role.noun(),
                read.given.display(),
                read.role.folder_noun()
            ));
        }
    }
    if let Some(reason) = changes_a_model_directory(&path, reads, &fix) {
        return refuse(reason);
    }
    Ok(())
}

fn overlaps(a: &Destination, b: &Destination) -> bool {
    a.path == b.path
        || (a.kind == OutputKind::Directory && b.path.starts_with(&a.path))
        || (b.kind == OutputKind::Directory && a.path.starts_with(&b.path))
}

/// Refuses `-` as a path either tool writes. Many tools read it as standard output, but these
/// write files (built beside the destination and renamed into place), so `-o -` made a file or
/// a model directory named `-`, where the user expected the soup on stdout. A usage error: the
/// command line is wrong, not the file system. `./-` still names a file called `-`.
fn not_stdout(request: &Request) -> Result<()> {
    if request.path.as_os_str() != "-" {
        return Ok(());
    }
    let what = match (request.flag, request.kind) {
        ("-o", _) => "a path such as soup.safetensors",
        (_, OutputKind::File) => "a file name",
        (_, OutputKind::Directory) => "a folder name",
    };
    Err(Error::Usage(format!(
        "{flag} -: writing to stdout is not supported, the tool writes files; give {flag} {what} (./- for one called -)",
        flag = request.flag
    )))
}

/// Refuses a file output whose path ends in a slash (`-o soup.safetensors/`, `--plot p.svg/.`):
/// the slash says a directory, the name or flag a file, and a path that isn't a directory
/// resolves to the name without the slash, so the tool wrote a file where the user asked for
/// a directory (and `--log` failed with the kernel's "Is a directory").
fn not_a_directory_path(request: &Request) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = request.path.as_os_str().as_bytes();
    if request.kind != OutputKind::File || !(bytes.ends_with(b"/") || bytes.ends_with(b"/.")) {
        return Ok(());
    }
    // A directory that exists is refused as one, in the words of the checks that follow.
    if fs::metadata(&request.path).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let or = if request.flag == "-o" {
        " (for a model directory, give a name without .safetensors)"
    } else {
        ""
    };
    Err(Error::output(
        &request.path,
        format!(
            "ends in a slash, which names a directory, but {} writes a file here: drop the trailing slash{or}",
            request.flag
        ),
    ))
}

/// Refuses a path, resolved through links, inside the kernel's own folders: /proc and /sys,
/// and /dev outside /dev/shm (a RAM disk people do write to). Whatever exists there is
/// refused by the checks that follow, in their words (a device, not a regular file), but a
/// name that doesn't exist yet (`-o /dev/sdb` on a machine without that disk) became a new
/// directory among the device nodes, where no soup belongs and the next device could be
/// shadowed.
fn not_a_system_folder(request: &Request, resolved: &Path) -> Result<()> {
    if fs::symlink_metadata(resolved).is_ok() {
        return Ok(());
    }
    let system = ["/proc", "/sys", "/dev"]
        .into_iter()
        .find(|folder| resolved.starts_with(folder) && !resolved.starts_with("/dev/shm"));
    let Some(folder) = system else {
        return Ok(());
    };
    Err(Error::output(
        &request.path,
        format!(
            "is under {folder}, the kernel's folder of devices or processes, where the tool writes nothing; give {} a path in a folder of your own",
            request.flag
        ),
    ))
}

fn check_one(request: &Request, reads: &Reads, force: bool) -> Result<Destination> {
    not_stdout(request)?;
    not_a_directory_path(request)?;
    let given = &request.path;
    let refuse = |reason: String| Err(Error::output(given, reason));
    let name = match given.file_name() {
        Some(n) if !given.ends_with("..") => n.to_os_string(),
        _ => {
            return refuse(format!(
                "is not a file name; give {} a path such as soup.safetensors",
                request.flag
            ))
        }
    };
    let length = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).len();
    if length > super::writer::NAME_MAX {
        return refuse(format!(
            "has a name of {length} bytes, and file systems allow {}; choose a shorter {}",
            super::writer::NAME_MAX,
            request.flag
        ));
    }
    let parent = super::writer::parent_dir(given);
    let folder = match fs::canonicalize(parent) {
        Ok(p) if p.is_dir() => p,
        // `-o /dev/null/x` or `-o model.safetensors/x`: there, but no directory.
        Ok(_) => {
            return refuse(format!(
                "{} is not a directory; choose another {}",
                parent.display(),
                request.flag
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return refuse(format!(
                "the directory {} does not exist; create it or choose another {}",
                parent.display(),
                request.flag
            ))
        }
        // A file on the way (ENOTDIR), a link loop, a folder that can't be searched.
        Err(e) => {
            return refuse(format!(
                "the directory {} can't be reached ({}); choose another {}",
                parent.display(),
                e,
                request.flag
            ))
        }
    };
    not_a_locked_folder(request, &folder)?;
    let path = folder.join(&name);
    not_a_system_folder(request, &path)?;
    let mut dest = Destination {
        flag: request.flag,
        given: given.clone(),
        path,
        kind: request.kind,
        force,
        mode: None,
        reads: reads.clone(),
    };
    for read in &reads.reads {
        let Some(resolved) = &read.resolved else {
            continue;
        };
        if *resolved == dest.path {
            return refuse(format!(
                "is the {} {}; an input is never overwritten, even with --force: write to a new path",
                read.role.noun(),
                read.given.display()
            ));
        }
        if request.kind == OutputKind::Directory && resolved.starts_with(&dest.path) {
            return refuse(format!(
                "holds the {} {}; a directory output replaces everything in it, and inputs are never overwritten: write to a new directory",
                read.role.noun(),
                read.given.display()
            ));
        }
        if read.holds(&dest.path) {
            return refuse(format!(
                "is inside the {} {}; writing there would change that {}: write the output elsewhere",
                read.role.noun(),
                read.given.display(),
                read.role.folder_noun()
            ));
        }
    }
    if let Some(reason) = changes_a_model_directory(&dest.path, reads, "write the output elsewhere")
    {
        return refuse(reason);
    }
    let meta = match fs::symlink_metadata(&dest.path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dest),
        Err(e) => return Err(Error::io(given, e)),
    };
    if let Some(read) = reads.same_file(&meta) {
        return refuse(format!(
            "is the {} {} (the same file); an input is never overwritten, even with --force: write to a new path",
            read.role.noun(),
            read.given.display()
        ));
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        if let Some(read) = fs::metadata(&dest.path)
            .ok()
            .and_then(|m| reads.same_file(&m))
        {
            return refuse(format!(
                "is a symbolic link to the {} {}; an input is never overwritten, even with --force: write to a new path",
                read.role.noun(),
                read.given.display()
            ));
        }
        let target = fs::read_link(&dest.path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        return refuse(format!(
            "is a symbolic link (to {target}); the tool writes only files and directories it creates, so it won't replace a link, even with --force: remove the link or choose another {}",
            request.flag
        ));
    }
    if let Some(special) = special_kind(&meta) {
        return refuse(format!(
            "is a {special}; outputs are only regular files or directories, even with --force: choose another {}",
            request.flag
        ));
    }
    // What --force could never replace is refused as such, without suggesting it.
    match (request.kind, meta.is_dir()) {
        (OutputKind::File, true) => {
            return refuse(format!(
                "is a directory, and {} writes a file; even --force replaces only a file here: choose another {}",
                request.flag, request.flag
            ))
        }
        (OutputKind::Directory, false) => {
            return refuse(format!(
                "is a file, not a model directory; even --force replaces only a directory of model files here: remove it or choose another {}",
                request.flag
            ))
        }
        (OutputKind::Directory, true) => foreign_entry(&dest, &dest.path)?,
        (OutputKind::File, false) => {}
    }
    // Only the tool's own outputs: a soup or a directory of them carries the model-soup mark
    // in its header, a plot on its first line. Another tool's checkpoint, or any other file
    // that happens to be there, was not created here and is not replaced.
    // A folder made ready for the output (`mkdir -p out`, a mounted volume): nothing in it is
    // the tool's, and the directory is built beside it and renamed into place, not filled.
    if meta.is_dir() && fs::read_dir(&dest.path).is_ok_and(|mut d| d.next().is_none()) {
        return refuse(format!(
            "is an empty directory this tool did not create; {} builds the model directory beside it and renames it into place, so don't create it first: remove it (rmdir) or choose another {}",
            if request.flag == "-o" { "the tool" } else { request.flag },
            request.flag
        ));
    }
    if !super::writer::written_by_this_tool(&dest.path) {
        return refuse(format!(
            "exists and is not an output of this tool (its soups and plots carry a model-soup mark); --force replaces only those: move it away or choose another {}",
            request.flag
        ));
    }
    // The rename over a flagged output fails after the whole merge (the kernel won't unlink
    // it), and a directory swapped out whose files are flagged can't be removed.
    let held = super::os::locked(&dest.path)
        .map(|lock| (lock, dest.path.clone(), String::new()))
        .or_else(|| locked_entry(&dest.path));
    if let Some((lock, path, within)) = held {
        return refuse(format!(
            "{within}is {} (chattr +{letter}), so it can't be replaced, even with --force: lift the flag (chattr -{letter} {}) or choose another {}",
            lock.noun(),
            path.display(),
            request.flag,
            letter = lock.letter()
        ));
    }
    if !force {
        return refuse("already exists; pass --force to replace it".into());
    }
    dest.mode = Some(meta.mode() & 0o7777);
    Ok(dest)
}

/// The first entry of the directory `dir` that is append-only or immutable, with its path and
/// the words that name it in a refusal (`holds model.safetensors, which `).
fn locked_entry(dir: &Path) -> Option<(Locked, PathBuf, String)> {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    entries.into_iter().find_map(|path| {
        let lock = super::os::locked(&path)?;
        let name = path
            .file_name()?
            .to_string_lossy()
            .escape_debug()
            .to_string();
        Some((lock, path, format!("holds '{name}', which ")))
    })
}

/// Refuses an output folder whose entries the kernel won't let the run rename or remove: an
/// append-only folder (`chattr +a`) takes the temporary, which can then never be renamed into
/// place nor removed, and stays there as junk; an immutable one (`chattr +i`) takes nothing.
/// Found before any temporary is made, dry runs included.
fn not_a_locked_folder(request: &Request, folder: &Path) -> Result<()> {
    let Some(lock) = super::os::locked(folder) else {
        return Ok(());
    };
    let letter = lock.letter();
    let why = match lock {
        Locked::AppendOnly => {
            "the tool's temporary could be made there but never renamed into place or removed"
        }
        Locked::Immutable => "it can't be written to",
    };
    Err(Error::output(
        &request.path,
        format!(
            "the folder {} is {} (chattr +{letter}): {why}; lift the flag (chattr -{letter} {}), or give {} a folder you can write to",
            folder.display(),
            lock.noun(),
            folder.display(),
            request.flag
        ),
    ))
}

/// The kind of a special file, if `meta` is one.
fn special_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_char_device() {
        Some("character device")
    } else if t.is_block_device() {
        Some("block device")
    } else if t.is_fifo() {
        Some("FIFO")
    } else if t.is_socket() {
        Some("socket")
    } else {
        None
    }
}

/// Whether `name` is a file a directory output of this tool can hold. Only the names it writes
/// count: a folder of the user's own checkpoints (`run-17-epoch-3.safetensors`) is not a
/// model directory `--force` may replace.
pub fn is_model_file(name: &str) -> bool {
    name == "model.safetensors"
        || is_shard_file_name(name)
        || name == INDEX_NAME
        || name == "README.md"
        || COMPANION_FILES.contains(&name)
}

/// Refuses a directory that holds anything but regular model files, naming the first foreign
/// entry in name order.
fn foreign_entry(dest: &Destination, dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(&dest.given, e))?;
    let mut foreign: Vec<(String, &'static str)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dest.given, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let what = match entry.file_type() {
            Ok(t) if t.is_file() && is_model_file(&name) => continue,
            Ok(t) if t.is_file() => "a file",
            Ok(t) if t.is_dir() => "a directory",
            Ok(t) if t.is_symlink() => "a symbolic link",
            _ => "a special file",
        };
        foreign.push((name, what));
    }
    foreign.sort();
    match foreign.first() {
        None => Ok(()),
        Some((name, what)) => Err(Error::output(
            &dest.given,
            format!(
                "holds {what} '{}' that is not a model file; --force replaces only a directory of model files (model.safetensors or model-NNNNN-of-NNNNN.safetensors shards, index, config, tokenizer, model card): move it away or choose another {}",
                name.escape_debug(),
                dest.flag
            ),
        )),
    }
}
