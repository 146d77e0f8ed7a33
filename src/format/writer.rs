//! Writing safetensors: the header encoder and the atomic file that never leaves a partial
//! output at its destination.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::destination::Destination;
use super::dtype::Dtype;
use super::os;
use crate::error::{Error, Result};

/// One tensor's entry in a header being written.
#[derive(Debug, Clone)]
pub struct HeaderEntry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// Encodes the 8-byte length and the JSON header, padded with spaces to a multiple of 8 so that
/// the data section, and every tensor in it whose offset is aligned, is aligned in memory.
/// Entries are written in the order given.
pub fn encode_header(metadata: &BTreeMap<String, String>, entries: &[HeaderEntry]) -> Vec<u8> {
    let q = |s: &str| serde_json::to_string(s).expect("strings always serialise");
    let mut json = String::from("{");
    if !metadata.is_empty() {
        json.push_str("\"__metadata__\":{");
        let fields: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", q(k), q(v)))
            .collect();
        json.push_str(&fields.join(","));
        json.push('}');
        if !entries.is_empty() {
            json.push(',');
        }
    }
    let fields: Vec<String> = entries
        .iter()
        .map(|e| {
            let shape: Vec<String> = e.shape.iter().map(u64::to_string).collect();
            format!(
                "{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                q(&e.name),
                e.dtype.name(),
                shape.join(","),
                e.begin,
                e.end
            )
        })
        .collect();
    json.push_str(&fields.join(","));
    json.push('}');
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    out
}

const TEMP_MARK: &str = ".soup-tmp-";

/// A file built under a temporary sibling name and published at its destination only by
/// `commit`: after an fsync, by an atomic rename. Dropped uncommitted, it removes the temporary.
pub struct AtomicFile {
    dest: PathBuf,
    temp: PathBuf,
    file: File,
    overwrite: bool,
    /// For the last check before an existing destination is replaced.
    policy: Destination,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary sibling of a checked destination, with the mode of the file it
    /// will replace, if any, so the replacement is never more permissive.
    pub fn create(dest: &Destination) -> Result<AtomicFile> {
        let temp = claim_temporary(dest)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| cannot_create(dest, &temp, e))?;
        os::hold_while_running(&file);
        let out = AtomicFile {
            dest: dest.path().to_path_buf(),
            temp,
            file,
            overwrite: dest.force(),
            policy: dest.clone(),
            committed: false,
        };
        if let Some(mode) = dest.replaced_mode() {
            use std::os::unix::fs::PermissionsExt;
            out.file
                .set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| out.write_error(e))?;
        }
        Ok(out)
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Reserves the final size up front, so a full disk is reported before any work is done.
    pub fn allocate(&self, len: u64) -> Result<()> {
        os::allocate(&self.file, len).map_err(|e| self.write_error(e))
    }

    /// Writes `bytes` at `offset`. Safe to call from several threads for disjoint ranges.
    pub fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| self.write_error(e))
    }

    pub(crate) fn write_error(&self, e: io::Error) -> Error {
        let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
            "no space left on device; free some space or write the output elsewhere with -o"
                .to_string()
        } else {
            format!("cannot write {}: {e}", self.temp.display())
        };
        Error::output(&self.dest, reason)
    }

    /// Flushes to disk and publishes the file at its destination.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.write_error(e))?;
        let published = if self.overwrite {
            // What --force replaces may have changed since the policy approved it.
            self.policy.recheck_replaced()?;
            std::fs::rename(&self.temp, &self.dest)
        } else {
            os::rename_no_replace(&self.temp, &self.dest)
        };
        published.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::output(
                    &self.dest,
                    "was created by another process during the merge; pass --force to replace it",
                )
            } else {
                Error::output(
                    &self.dest,
                    format!("cannot rename {} into place: {e}", self.temp.display()),
                )
            }
        })?;
        self.committed = true;
        sync_parent(&self.dest);
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// The error for a temporary that can't be created beside `dest`, with the fix where the
/// folder refuses writes: the kernel's "Permission denied" alone names none.
pub(crate) fn cannot_create(dest: &Destination, temp: &Path, e: io::Error) -> Error {
    let fix = match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => format!(
            "; the folder {} can't be written to (its permissions, or a read-only file system): write the output to a folder you can write to",
            parent_dir(dest.path()).display()
        ),
        _ => String::new(),
    };
    Error::output(
        dest.given(),
        format!("cannot create {}: {e}{fix}", temp.display()),
    )
}

/// Writes a small output (a plot, say) whole, atomically, through the same policy and
/// temporary-and-rename as a soup.
pub fn write_whole(dest: &Destination, bytes: &[u8]) -> Result<()> {
    let out = AtomicFile::create(dest)?;
    out.write_at(0, bytes)?;
    out.commit()
}

/// Checks that the destination is still absent unless it may be replaced, and that its
/// directory exists; clears dead runs' temporaries for it; and names this run's temporary.
pub(crate) fn claim_temporary(dest: &Destination) -> Result<PathBuf> {
    let path = dest.path();
    if !dest.force() && path.symlink_metadata().is_ok() {
        return Err(Error::output(
            dest.given(),
            "already exists; pass --force to replace it",
        ));
    }
    let parent = parent_dir(path);
    if !parent.is_dir() {
        return Err(Error::output(
            dest.given(),
            format!(
                "the directory {} does not exist; create it or choose another -o",
                parent.display()
            ),
        ));
    }
    remove_stale_temporaries(dest);
    temp_sibling(path)
}

/// `dir/.name.soup-tmp-PID-N`: hidden, beside the destination so the rename stays on one
/// filesystem, and tagged with our pid so a later run can tell a dead run's leftovers.
pub(crate) fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().ok_or_else(|| {
        Error::output(
            dest,
            "is not a file name; give -o a path such as soup.safetensors",
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp_name = format!("{}{}-{n}", temp_prefix(name), std::process::id());
    Ok(parent_dir(dest).join(temp_name))
}

/// The longest file name, in bytes, that Linux's file systems take (ext4, XFS, btrfs, tmpfs).
pub(crate) const NAME_MAX: usize = 255;

/// The start of every temporary's name for the destination name `name`: `.NAME.soup-tmp-`,
/// with room left for the longest pid and counter. A name too long for that is cut, and a
/// hash of the whole name keeps two long names that share their start apart; without the cut
/// a destination name of 225 to 255 bytes, which the file system accepts, could not be
/// written because its temporary's name could not be created.
fn temp_prefix(name: &std::ffi::OsStr) -> String {
    const ROOM: usize = NAME_MAX - 1 - TEMP_MARK.len() - (10 + 1 + 20);
    let name = name.to_string_lossy();
    if name.len() <= ROOM {
        return format!(".{name}{TEMP_MARK}");
    }
    // FNV-1a: stable across runs and builds, so a later run finds a dead run's temporaries.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = ROOM - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(".{}~{hash:016x}{TEMP_MARK}", &name[..cut])
}

/// Removes temporaries for `dest` left by runs that died (SIGKILL, power loss), and only those
/// this tool provably made: the name is `.NAME.soup-tmp-PID-N`, no live run holds its lock
/// (or, where the filesystem has no locks, process PID is gone), the temporary is not a link,
/// it carries this tool's mark (a safetensors header recording `model_soup.tool` for a file; a
/// `TEMP_MARKER` file for a directory, or, for one killed as it was published, model files
/// whose weights carry the mark), and it is nothing the run reads. Anything else with such a
/// name is left alone. The lock, not the pid, decides where it can: a run in another PID
/// namespace (a container sharing the directory) has a pid that looks dead from here.
pub(crate) fn remove_stale_temporaries(dest: &Destination) {
    let path = dest.path();
    let Some(name) = path.file_name() else { return };
    let prefix = temp_prefix(name);
    let Ok(entries) = std::fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((pid, n)) = rest.split_once('-') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), n.parse::<u64>()) else {
            continue;
        };
        let temp = entry.path();
        let Ok(meta) = temp.symlink_metadata() else {
            continue;
        };
        if pid == std::process::id() || !(meta.is_dir() || meta.is_file()) {
            continue;
        }
        if os::held_by_a_live_run(&temp).unwrap_or_else(|| os::process_alive(pid)) {
            continue;
        }
        if dest.protects(&temp) {
            continue;
        }
        let _ = if meta.is_dir() && (is_marked_dir(&temp) || written_by_this_tool(&temp)) {
            std::fs::remove_dir_all(&temp)
        } else if meta.is_file() && is_marked_file(&temp) {
            std::fs::remove_file(&temp)
        } else {
            Ok(())
        };
    }
}

/// The file inside a temporary output directory that marks it as this tool's, removed just
/// before the directory is published.
pub(crate) const TEMP_MARKER: &str = ".model-soup-temporary";

fn is_marked_dir(dir: &Path) -> bool {
    dir.join(TEMP_MARKER)
        .symlink_metadata()
        .is_ok_and(|m| m.is_file())
}

fn is_marked_plot(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; PLOT_MARK.len()];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == PLOT_MARK.as_bytes())
}

/// Whether a file starts with a safetensors header whose metadata names this tool, as every
/// soup this tool writes does from its first write on.
fn is_marked_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() {
        return false;
    }
    let len = u64::from_le_bytes(len);
    if len > super::header::MAX_HEADER_LEN {
        return false;
    }
    let mut json = vec![0u8; len as usize];
    if file.read_exact(&mut json).is_err() {
        return false;
    }
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return false;
    };
    header["__metadata__"]["model_soup.tool"]
        .as_str()
        .is_some_and(|t| t.starts_with("model-soup "))
}

/// The first line of every plot the tools write: its mark, as a soup's is in its header.
pub const PLOT_MARK: &str = "<!-- written by model-soup -->\n";

/// Whether `path` is an output this tool wrote: a regular file whose header names model-soup
/// or that starts with [`PLOT_MARK`], or a directory of model files only whose every weights
/// file is marked. A killed run's leftover is one; a user's file that happens to have the same
/// name is not, nor another tool's checkpoint.
pub fn written_by_this_tool(path: &Path) -> bool {
    match path.symlink_metadata() {
        Ok(m) if m.is_file() => is_marked_file(path) || is_marked_plot(path),
        Ok(m) if m.is_dir() => {
            let Ok(entries) = std::fs::read_dir(path) else {
                return false;
            };
            let mut weights = 0;
            for entry in entries {
                let Ok(entry) = entry else { return false };
                let name = entry.file_name().to_string_lossy().into_owned();
                let regular = entry.file_type().is_ok_and(|t| t.is_file());
                if !regular || !super::destination::is_model_file(&name) {
                    return false;
                }
                if name.ends_with(".safetensors") {
                    if !is_marked_file(&entry.path()) {
                        return false;
                    }
                    weights += 1;
                }
            }
            weights > 0
        }
        _ => false,
    }
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the rename itself durable. Failure here can't lose data already renamed, so it is
/// not reported.
pub(crate) fn sync_parent(path: &Path) {
    if let Ok(dir) = File::open(parent_dir(path)) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_the_file_system_takes_has_a_temporary_it_takes_too() {
        use std::os::unix::ffi::OsStrExt;
        let widest = |name: &std::ffi::OsStr| {
            format!("{}{}-{}", temp_prefix(name), u32::MAX, u64::MAX).len()
        };
        let mut names: Vec<Vec<u8>> = (1..=NAME_MAX).map(|n| vec![b'a'; n]).collect();
        // Multi-byte characters around the cut, and bytes that are no UTF-8, which grow
        // threefold as U+FFFD.
        names.extend((0..4).map(|k| [vec![b'a'; k], "\u{00e9}".repeat(126).into()].concat()));
        names.push(vec![0xff; NAME_MAX]);
        for name in &names {
            let name = std::ffi::OsStr::from_bytes(name);
            assert!(widest(name) <= NAME_MAX, "{} bytes", name.len());
        }
        // A short name keeps the form earlier releases (and their leftovers) used.
        assert_eq!(
            temp_prefix("soup.safetensors".as_ref()),
            ".soup.safetensors.soup-tmp-"
        );
        // Two long names that share their start don't share their temporaries.
        let a = format!("{}a.safetensors", "x".repeat(230));
        let b = format!("{}b.safetensors", "x".repeat(230));
        assert_ne!(temp_prefix(a.as_ref()), temp_prefix(b.as_ref()));
        assert_eq!(temp_prefix(a.as_ref()), temp_prefix(a.as_ref()));
    }

    #[test]
    fn a_dead_runs_temporary_for_a_long_name_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join(format!("{}.safetensors", "n".repeat(240)));
        let policy = crate::format::destination::check(
            &[crate::format::Request {
                flag: "-o",
                path: dest.clone(),
                kind: crate::format::OutputKind::File,
            }],
            &crate::format::Reads::new(),
            false,
        )
        .unwrap()
        .remove(0);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let leftover = parent_dir(&dest).join(format!(
            "{}{dead}-0",
            temp_prefix(dest.file_name().unwrap())
        ));
        let mut meta = BTreeMap::new();
        meta.insert("model_soup.tool".to_string(), "model-soup 0".to_string());
        std::fs::write(&leftover, encode_header(&meta, &[])).unwrap();
        let stranger = dir
            .path()
            .join(format!(".{}.soup-tmp-{dead}-0", "n".repeat(200)));
        std::fs::write(&stranger, encode_header(&meta, &[])).unwrap();
        remove_stale_temporaries(&policy);
        assert!(!leftover.exists(), "the dead run's temporary is removed");
        assert!(stranger.exists(), "another name's is not");
    }

    #[test]
    fn header_is_padded_to_eight_bytes() {
        for name in [
            "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh",
        ] {
            let entries = [HeaderEntry {
                name: name.into(),
                dtype: Dtype::F32,
                shape: vec![],
                begin: 0,
                end: 4,
            }];
            let bytes = encode_header(&BTreeMap::new(), &entries);
            assert_eq!(bytes.len() % 8, 0);
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(n + 8, bytes.len());
            let v: serde_json::Value = serde_json::from_slice(&bytes[8..]).unwrap();
            assert_eq!(v[name]["data_offsets"][1], 4);
        }
    }
}
