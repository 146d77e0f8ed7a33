//! A model directory built under a temporary sibling name and published at its destination
//! only when complete, so a failure never leaves half a model there.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::destination::Destination;
use super::os;
use super::small_file::SourceFile;
use super::writer::{cannot_create, claim_temporary, parent_dir, sync_parent, TEMP_MARKER};
use crate::error::{Error, Result};

/// A directory filled under `.NAME.soup-tmp-PID-N` beside `dest` and renamed into place by
/// `commit`. Dropped uncommitted, it removes the temporary and everything in it.
pub struct AtomicDir {
    dest: PathBuf,
    temp: PathBuf,
    overwrite: bool,
    /// The mode of the directory being replaced, which the new one takes at commit.
    mode: Option<u32>,
    /// For the last check before an existing directory is replaced.
    policy: Destination,
    /// The temporary, open and locked for as long as this run lives (see
    /// `os::hold_while_running`).
    _held: Option<File>,
    /// Every input file whose bytes went in (copied, or read at plan time and rewritten), as
    /// it was when read: checked again before the commit.
    sources: std::sync::Mutex<Vec<SourceFile>>,
    committed: bool,
}

impl AtomicDir {
    /// Creates the temporary sibling directory of a checked destination, marked as this
    /// tool's so that only it is ever cleaned up as a stale temporary.
    pub fn create(dest: &Destination) -> Result<AtomicDir> {
        let temp = claim_temporary(dest)?;
        std::fs::create_dir(&temp).map_err(|e| cannot_create(dest, &temp, e))?;
        let held = File::open(&temp).ok();
        if let Some(f) = &held {
            os::hold_while_running(f);
        }
        let dir = AtomicDir {
            dest: dest.path().to_path_buf(),
            _held: held,
            temp,
            overwrite: dest.force(),
            mode: dest.replaced_mode(),
            policy: dest.clone(),
            sources: Default::default(),
            committed: false,
        };
        dir.write_file(TEMP_MARKER, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(dir)
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The temporary directory being filled.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Creates a new, empty file `name` in the temporary directory.
    pub fn create_file(&self, name: &str) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.temp.join(name))
            .map_err(|e| self.write_error(name, e))
    }

    /// Writes a whole small file (an index, a config, a model card) and flushes it to disk.
    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut f = self.create_file(name)?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| self.write_error(name, e))
    }

    /// Writes `bytes`, made from the input files `from` as they were read (a config with its
    /// dtype set), as [`AtomicDir::write_file`] does: the commit refuses to publish if any of
    /// them changed since, as it refuses a copied file that changed.
    pub fn write_made_from(&self, name: &str, bytes: &[u8], from: &[SourceFile]) -> Result<()> {
        self.write_file(name, bytes)?;
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(from.iter().cloned());
        Ok(())
    }

    /// Copies the regular file `from` to `name`, streaming, flushed to disk.
    pub fn copy_file(&self, from: &Path, name: &str) -> Result<()> {
        // Without blocking: a FIFO swapped in after the caller looked would block the open.
        let mut source = super::small_file::open_regular(from, name)?;
        let before = source.metadata().map_err(|e| Error::io(from, e))?;
        let mut f = self.create_file(name)?;
        let copied = io::copy(&mut source, &mut f)
            .and_then(|n| f.sync_all().map(|()| n))
            .map_err(|e| self.write_error(name, e))?;
        // A file rewritten in place as it is copied (truncated, grown) would be published
        // torn, as a shard would be, which the shards' stamps catch.
        let read = SourceFile::new(from, &before);
        let after = source.metadata().map_err(|e| Error::io(from, e))?;
        if copied != before.len() || SourceFile::new(from, &after) != read {
            return Err(changed(from));
        }
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(read);
        Ok(())
    }

    /// The error for a failed write of `name`, with the fix for a full disk.
    pub fn write_error(&self, name: &str, e: io::Error) -> Error {
        if let Some(libc::EMFILE | libc::ENFILE) = e.raw_os_error() {
            // Every output shard stays open until the merge ends, like every input: a small
            // --shard-size makes thousands of them.
            return Error::Resources(format!(
                "{}: cannot create {}: the limit on open files is reached; a merge keeps every output shard and every input file open until it ends: raise the limit (ulimit -n 65536) or write fewer, larger shards (--shard-size)",
                self.dest.display(),
                name
            ));
        }
        let reason = if e.raw_os_error() == Some(libc::ENOSPC) {
            "no space left on device; free some space or write the output elsewhere with -o"
                .to_string()
        } else {
            format!("cannot write {}: {e}", self.temp.join(name).display())
        };
        Error::output(&self.dest, reason)
    }

    /// Flushes the directory and publishes it at its destination. An existing destination
    /// (allowed by `overwrite`) is swapped out atomically where the filesystem can, and else
    /// renamed aside first; either way it is removed only once the new directory is in place.
    pub fn commit(mut self) -> Result<()> {
        // Changed after it was read, a file no longer matches the weights it came with, as
        // a changed input shard stops the output too.
        for source in self
            .sources
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            if !source.unchanged() {
                return Err(changed(source.path()));
            }
        }
        std::fs::remove_file(self.temp.join(TEMP_MARKER))
            .map_err(|e| self.write_error(TEMP_MARKER, e))?;
        if let Some(mode) = self.mode {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.temp, std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.write_error(".", e))?;
        }
        if let Ok(d) = File::open(&self.temp) {
            d.sync_all().map_err(|e| self.write_error(".", e))?;
        }
        let exists = self.dest.symlink_metadata().is_ok();
        if !exists || !self.overwrite {
            os::rename_no_replace(&self.temp, &self.dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::output(
                        &self.dest,
                        "was created by another process during the merge; pass --force to replace it",
                    )
                } else {
                    self.rename_error(e)
                }
            })?;
            self.committed = true;
            sync_parent(&self.dest);
            return Ok(());
        }
        self.policy.recheck_replaced()?;
        match os::rename_exchange(&self.temp, &self.dest) {
            Ok(()) => {
                // The temporary name now holds the old output.
                self.committed = true;
                sync_parent(&self.dest);
                remove_any(&self.temp);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Unsupported => self.replace_via_aside(),
            Err(e) => Err(self.rename_error(e)),
        }
    }

    /// Replacement without an atomic exchange: the old output is renamed aside (under a name
    /// that stale-temporary cleanup never removes), the new one renamed in, the old removed.
    fn replace_via_aside(&mut self) -> Result<()> {
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A name nothing has: a killed run's aside (the only copy of its old output, so never
        // removed) may hold this pid's name if the pid came round again.
        let aside = (0u32..)
            .map(|n| {
                parent_dir(&self.dest).join(format!(".{name}.soup-old-{}-{n}", std::process::id()))
            })
            .find(|p| p.symlink_metadata().is_err())
            .expect("some name is free");
        std::fs::rename(&self.dest, &aside).map_err(|e| self.rename_error(e))?;
        if let Err(e) = os::rename_no_replace(&self.temp, &self.dest) {
            // Put the old output back; it was never touched.
            let _ = std::fs::rename(&aside, &self.dest);
            return Err(self.rename_error(e));
        }
        self.committed = true;
        sync_parent(&self.dest);
        remove_any(&aside);
        Ok(())
    }

    fn rename_error(&self, e: io::Error) -> Error {
        Error::output(
            &self.dest,
            format!("cannot rename {} into place: {e}", self.temp.display()),
        )
    }
}

fn changed(from: &Path) -> Error {
    Error::header(
        from,
        "changed while the output was being made from it (another process wrote, replaced or truncated it); the output was discarded, run again once the file is stable",
    )
}

fn remove_any(path: &Path) {
    let _ = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => Ok(()),
    };
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(path: &Path, force: bool) -> Destination {
        use crate::format::destination::{check, OutputKind, Reads, Request};
        let request = Request {
            flag: "-o",
            path: path.to_path_buf(),
            kind: OutputKind::Directory,
        };
        check(&[request], &Reads::new(), force).unwrap().remove(0)
    }

    /// A soup as the tool writes one, as far as its mark goes: a safetensors header whose
    /// metadata names model-soup, and no tensors.
    fn marked_soup(path: &Path) {
        let header = br#"{"__metadata__":{"model_soup.tool":"model-soup test"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(path, bytes).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    /// A companion file (config, tokenizer) that became a FIFO after the caller checked it is
    /// refused at once: opening it for reading used to wait for a writer forever.
    #[test]
    fn copying_a_fifo_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("tokenizer.json");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.unwrap().success());
        let dest = tmp.path().join("model");
        let (done, outcome) = std::sync::mpsc::channel();
        let target = target(&dest, false);
        std::thread::spawn(move || {
            let dir = AtomicDir::create(&target).unwrap();
            let _ = done.send(
                dir.copy_file(&fifo, "tokenizer.json")
                    .map_err(|e| e.to_string()),
            );
        });
        let e = outcome
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("copy_file blocked on a FIFO")
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn publishes_whole_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("model");
        let dir = AtomicDir::create(&target(&dest, false)).unwrap();
        dir.write_file("a.json", b"{}").unwrap();
        assert!(!dest.exists());
        drop(dir);
        assert!(
            names(tmp.path()).is_empty(),
            "dropped uncommitted, nothing is left"
        );

        let dir = AtomicDir::create(&target(&dest, false)).unwrap();
        dir.write_file("a.json", b"{}").unwrap();
        dir.commit().unwrap();
        assert_eq!(names(&dest), ["a.json"]);
        assert_eq!(names(tmp.path()), ["model"]);
    }

    #[test]
    fn never_replaces_without_overwrite_even_when_the_destination_appears_late() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("model");
        let dir = AtomicDir::create(&target(&dest, false)).unwrap();
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("theirs"), "x").unwrap();
        let e = dir.commit().unwrap_err().to_string();
        assert!(e.contains("another process"), "{e}");
        assert_eq!(names(&dest), ["theirs"]);
        assert_eq!(names(tmp.path()), ["model"]);
    }

    #[test]
    fn overwrite_swaps_out_a_directory_of_model_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("model");
        std::fs::create_dir(&dest).unwrap();
        marked_soup(&dest.join("model.safetensors"));
        std::fs::write(dest.join("config.json"), "{}").unwrap();
        let dir = AtomicDir::create(&target(&dest, true)).unwrap();
        dir.write_file("new", b"y").unwrap();
        dir.commit().unwrap();
        assert_eq!(names(&dest), ["new"]);
        assert_eq!(names(tmp.path()), ["model"], "the old output is removed");
    }

    #[test]
    fn a_file_added_to_the_replaced_directory_during_the_run_stops_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("model");
        std::fs::create_dir(&dest).unwrap();
        marked_soup(&dest.join("model.safetensors"));
        let dir = AtomicDir::create(&target(&dest, true)).unwrap();
        std::fs::write(dest.join("notes.txt"), "mine").unwrap();
        let e = dir.commit().unwrap_err().to_string();
        assert!(e.contains("'notes.txt'"), "{e}");
        assert_eq!(names(&dest), ["model.safetensors", "notes.txt"]);
        assert_eq!(names(tmp.path()), ["model"], "the temporary is removed");
    }
}
