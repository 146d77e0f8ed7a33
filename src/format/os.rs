//! Every call into the operating system that Rust can't check: memory maps, page advice,
//! writeback hints, no-replace renames, inode flags and signal handlers. All of the crate's
//! hand-written `unsafe` is in this file. (The `multiversion` attribute on a few kernels
//! expands to calls of AVX-512, AVX2 and SSE4.1 clones of them; the crate makes those calls
//! only after detecting the CPU feature.)

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// A read-only memory map of a whole input file.
pub struct Mapping {
    map: Option<Mmap>,
    /// Its entry in [`MAPPED`], for the SIGBUS message; `None` for an empty file or a full table.
    slot: Option<usize>,
    /// The path the entry points at, owned here so that it lives as long as the map.
    _name: Box<[u8]>,
}

impl Mapping {
    /// Maps `file` read-only.
    ///
    /// # Safety contract with the user
    /// A mapped file that another process truncates while it is mapped makes the next read of a
    /// missing page raise SIGBUS; one that is rewritten in place changes under us. The executor
    /// re-checks every input's length and modification time before it publishes an output, and
    /// the README documents that inputs must not be modified during a merge.
    /// `path` is what a SIGBUS from this map names.
    pub fn new(file: &File, path: &Path) -> io::Result<Mapping> {
        let name: Box<[u8]> = path.as_os_str().as_encoded_bytes().into();
        let len = file.metadata()?.len();
        if len == 0 {
            // mmap of length 0 fails on Linux; an empty file is simply an empty slice.
            return Ok(Mapping {
                map: None,
                slot: None,
                _name: name,
            });
        }
        // SAFETY: the map is read-only and private to this process; the remaining hazard, another
        // process changing the file, is the documented contract above.
        let map = unsafe { Mmap::map(file)? };
        // Read-ahead helps the one sequential pass a merge makes; failure only costs speed.
        let _ = map.advise(Advice::Sequential);
        let slot = MAPPED.enter(map.as_ptr() as usize, map.len(), &name);
        Ok(Mapping {
            map: Some(map),
            slot,
            _name: name,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops the pages of `range` from this process's resident set once they have been used,
    /// so memory stays bounded by the chunks in flight, not by the model. The page cache keeps
    /// them, so a later read is a minor fault, not disk I/O.
    ///
    /// The range is widened to whole blocks of `large_folio_max()` bytes (2 MiB with 4 KiB
    /// pages) on both sides. A fault (or fault-around, or `populate`) into a large page-cache
    /// folio can map the entire folio, pages before and after the faulting range included (on
    /// Linux 6.18, reading one byte mapped all 512 pages of a 2 MiB folio). A release that stops
    /// inside a folio leaves the rest of it mapped, and the next chunk's fault maps the part
    /// already released again: one leftover per chunk boundary that no one releases, so memory
    /// grew with the input. Folios are aligned to their size in the file, so every folio a read
    /// of `range` can map lies inside the widened range. A page still in use by a neighbouring
    /// chunk is only unmapped, and refaults from the cache; read-only file pages can't change
    /// under a reader.
    pub fn release(&self, range: std::ops::Range<usize>) {
        let block = large_folio_max();
        let start = range.start / block * block;
        let end = range.end.div_ceil(block).saturating_mul(block);
        self.advise(start..end, UncheckedAdvice::DontNeed);
    }

    /// Maps the pages of `range` in one call before they are read, instead of one fault (and
    /// its fault-around, which maps neighbours nobody releases) per 64 KiB. Kernels before
    /// Linux 5.14 refuse the advice; then the reads fault as usual.
    pub fn populate(&self, range: std::ops::Range<usize>) {
        #[cfg(target_os = "linux")]
        {
            let Some(map) = &self.map else { return };
            let (start, len) = outward(range, map.len());
            if len > 0 {
                // SAFETY: POPULATE_READ only prefaults pages of our own read-only mapping,
                // inside its bounds; it changes no contents.
                unsafe {
                    libc::madvise(
                        map.as_ptr().add(start) as *mut libc::c_void,
                        len,
                        libc::MADV_POPULATE_READ,
                    );
                }
            }
        }
    }

    fn advise(&self, range: std::ops::Range<usize>, advice: UncheckedAdvice) {
        let Some(map) = &self.map else { return };
        let (start, len) = outward(range, map.len());
        if len > 0 {
            // SAFETY: MADV_DONTNEED on a read-only, file-backed shared mapping only unmaps the
            // pages; any later access refaults the same file contents. No Rust reference into
            // these pages can observe different data, so no aliasing rule is broken.
            let _ = unsafe { map.unchecked_advise_range(advice, start, len) };
        }
    }
}

/// `range` widened to whole pages and clipped to `limit`: (start, length).
fn outward(range: std::ops::Range<usize>, limit: usize) -> (usize, usize) {
    let page = page_size();
    let start = (range.start / page) * page;
    let end = range.end.div_ceil(page).saturating_mul(page).min(limit);
    (start, end.saturating_sub(start))
}

/// The largest page-cache folio the kernel may map at once: one page table's reach (a PMD),
/// 2 MiB with 4 KiB pages. Page-cache folios don't exceed it.
fn large_folio_max() -> usize {
    let page = page_size();
    page * (page / std::mem::size_of::<u64>())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions; it returns -1 on error, handled below.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Starts writeback of a written range without waiting, so the final fsync has less to do and
/// disk writes overlap with computing the next chunks.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is valid for the life of `file`; the call only hints the kernel and
        // touches no memory of ours.
        unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                offset as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Renames `from` to `to` only if `to` does not exist, atomically. Returns `AlreadyExists`
/// when it does.
pub fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let cfrom = CString::new(from.as_os_str().as_bytes())?;
        let cto = CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cfrom.as_ptr(),
                libc::AT_FDCWD,
                cto.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Filesystems without RENAME_NOREPLACE (the Linux NFS client, FUSE without
            // rename2): see below.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {}
            _ => return Err(err),
        }
    }
    rename_no_replace_without_flags(from, to)
}

/// [`rename_no_replace`] where the filesystem takes no rename flags.
fn rename_no_replace_without_flags(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(from)?.is_dir() {
        // A directory can't be hard-linked. rename(2) of a directory fails onto a file or a
        // non-empty directory, so only an empty directory made at `to` since this check could
        // be replaced.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        return std::fs::rename(from, to);
    }
    // A hard link is also atomic and no-replace.
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

/// Swaps `a` and `b` atomically (both must exist; either may be a file or a directory).
/// Returns `Unsupported` where the filesystem or kernel can't, so the caller can fall back.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let ca = CString::new(a.as_os_str().as_bytes())?;
        let cb = CString::new(b.as_os_str().as_bytes())?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, err))
            }
            _ => Err(err),
        };
    }
    #[allow(unreachable_code)]
    {
        let _ = (a, b);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Whether two paths name the same file or directory: the same text, the same path once
/// resolved, or the same device and inode (a hard link is the same file).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
        || matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

/// A standard stream the tools write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Points a standard stream at /dev/null, so that nothing more is written to the file it was:
/// for a run whose standard output or error is a file it reads (`>> a.safetensors`), where
/// even the refusal (`--json`'s error object, the `error:` line) would change that input.
/// Called before anything is printed, so no buffered bytes are meant for the old file.
pub fn silence(stream: Stream) {
    use std::os::fd::AsRawFd;
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    let fd = match stream {
        Stream::Stdout => libc::STDOUT_FILENO,
        Stream::Stderr => libc::STDERR_FILENO,
    };
    // SAFETY: both descriptors are open for the duration of the call; dup2 atomically makes
    // `fd` a copy of `null`'s, which stays open on /dev/null once `null` is dropped.
    if unsafe { libc::dup2(null.as_raw_fd(), fd) } == fd {
        SILENCED[stream as usize].store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Which of [`Stream`]s [`silence`] pointed at /dev/null.
static SILENCED: [std::sync::atomic::AtomicBool; 2] = [
    std::sync::atomic::AtomicBool::new(false),
    std::sync::atomic::AtomicBool::new(false),
];

/// Whether [`silence`] pointed `stream` at /dev/null: what is printed there is lost, and the
/// other stream has to carry an error.
pub fn silenced(stream: Stream) -> bool {
    SILENCED[stream as usize].load(std::sync::atomic::Ordering::Relaxed)
}

/// Takes the advisory lock that marks a temporary as a live run's, held as long as `file` (or
/// a clone of its descriptor) stays open. Where the filesystem has no locks, nothing is held
/// and [`held_by_a_live_run`] falls back to the process id.
pub fn hold_while_running(file: &File) {
    let _ = file.try_lock();
}

/// Whether a live run holds `path`'s lock (see [`hold_while_running`]): in any PID namespace
/// on this kernel, or on another NFS client. `None` where the filesystem has no locks.
pub fn held_by_a_live_run(path: &Path) -> Option<bool> {
    let file = File::open(path).ok()?;
    match file.try_lock() {
        // Released when `file` closes.
        Ok(()) => Some(false),
        Err(std::fs::TryLockError::WouldBlock) => Some(true),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Whether a process with this id is alive, to tell our stale temporaries from a running merge's.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends SIGTERM (or SIGKILL when `kill`) to every process in the process group `pgid`, as
/// soup-eval does to stop an external scorer and whatever it started. A group that is already
/// gone is not an error.
pub fn signal_group(pgid: u32, kill: bool) -> io::Result<()> {
    send_to_group(pgid, if kill { libc::SIGKILL } else { libc::SIGTERM })
}

/// Sends SIGCONT to every process in the process group `pgid`: a member stopped (by SIGTTIN
/// for reading the terminal, say) then acts on a SIGTERM sent before, instead of holding it
/// pending for the whole grace period. A group that is already gone is not an error.
pub fn continue_group(pgid: u32) -> io::Result<()> {
    send_to_group(pgid, libc::SIGCONT)
}

fn send_to_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    // Group 0 or 1 would mean "our own group" or "every process": never what a caller means.
    let pgid = match libc::pid_t::try_from(pgid) {
        Ok(p) if p > 1 => p,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    // SAFETY: kill(2) with a negative id signals a process group; it touches no memory of ours.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reserves `len` bytes for `file` so a full disk fails now, before any work, rather than
/// half-way through. Filesystems without fallocate just get the length set.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: the fd is valid for the life of `file`; fallocate touches no memory of ours.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if !matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) | Some(libc::ENOSYS)
        ) {
            return Err(err);
        }
    }
    file.set_len(len)
}

/// Asks the kernel to drop its cached pages of `file`, which must already be flushed, so the
/// next read comes from the disk rather than from memory. Failure only means the cache is read.
pub fn drop_cached(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is valid for the life of `file`; the call is advice to the kernel and
        // touches no memory of ours.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Out of the table before the map goes (the fields drop after this), so that no entry
        // ever names a range that is no longer mapped.
        if let Some(slot) = self.slot {
            MAPPED.leave(slot);
        }
    }
}

/// The live maps' address ranges and paths, for the SIGBUS handler to name the file that
/// shrank. A fixed table of atomics, since the handler may neither lock nor allocate.
struct MapTable {
    slots: [MapSlot; 1024],
}

struct MapSlot {
    /// The path's bytes; null while the slot is free. Claimed by compare-and-swap.
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
    start: AtomicUsize,
    end: AtomicUsize,
}

static MAPPED: MapTable = MapTable::new();

impl MapTable {
    const fn new() -> MapTable {
        MapTable {
            slots: [const {
                MapSlot {
                    name: AtomicPtr::new(std::ptr::null_mut()),
                    name_len: AtomicUsize::new(0),
                    start: AtomicUsize::new(0),
                    end: AtomicUsize::new(0),
                }
            }; 1024],
        }
    }

    /// Records that `len` bytes at `start` map the file called `name`, which must outlive the
    /// entry. `None` when every slot is taken: that map's SIGBUS names no file.
    fn enter(&self, start: usize, len: usize, name: &[u8]) -> Option<usize> {
        for (i, slot) in self.slots.iter().enumerate() {
            let claimed = slot.name.compare_exchange(
                std::ptr::null_mut(),
                name.as_ptr().cast_mut(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            if claimed.is_ok() {
                slot.name_len.store(name.len(), Ordering::Release);
                slot.start.store(start, Ordering::Release);
                slot.end.store(start + len, Ordering::Release);
                return Some(i);
            }
        }
        None
    }

    fn leave(&self, i: usize) {
        let slot = &self.slots[i];
        slot.end.store(0, Ordering::Release);
        slot.start.store(0, Ordering::Release);
        slot.name.store(std::ptr::null_mut(), Ordering::Release);
    }

    /// The path of the live map that holds `address`. Async-signal-safe: loads only. The map a
    /// faulting read is in stays alive while that read runs, so its path does too.
    fn name_at(&self, address: usize) -> Option<&[u8]> {
        self.slots.iter().find_map(|slot| {
            let start = slot.start.load(Ordering::Acquire);
            let end = slot.end.load(Ordering::Acquire);
            if !(start..end).contains(&address) {
                return None;
            }
            let name = slot.name.load(Ordering::Acquire);
            let len = slot.name_len.load(Ordering::Acquire);
            // SAFETY: the entry is live (its range holds a faulting address), so `name` points
            // at the `len` path bytes its Mapping owns until it leaves the table.
            (!name.is_null()).then(|| unsafe { std::slice::from_raw_parts(name, len) })
        })
    }
}

/// Set once `--verify` reads the published output back: a SIGBUS then comes from the output,
/// not from an input, and the output is already in place.
static VERIFYING_OUTPUT: AtomicBool = AtomicBool::new(false);

/// Says that from now on the process reads its own published output (`--verify`), for the
/// SIGBUS message.
pub fn sigbus_now_reads_the_output() {
    VERIFYING_OUTPUT.store(true, Ordering::SeqCst);
}

/// Turns SIGBUS into one `error:` line and exit status 1. A read of a mapped input raises it
/// when another process has truncated the file since it was mapped; the default action kills
/// the process with a bare "Bus error". Nothing is published either way: the output is only
/// renamed into place after every byte is written, and the dead run's temporary is removed by
/// the next run that writes the same destination. Under `--verify` the mapped file is the
/// published output, and the message says so.
pub fn explain_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        static FIRED: AtomicBool = AtomicBool::new(false);
        // Several workers can fault at once: one line, from the first; the others wait for
        // its exit (pause(2) is async-signal-safe and returning would fault again).
        if FIRED.swap(true, Ordering::SeqCst) {
            loop {
                // SAFETY: pause(2) is async-signal-safe and touches no memory.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; for SIGBUS its
        // address is the faulting one.
        let address = unsafe { (*info).si_addr() } as usize;
        let name = MAPPED.name_at(address);
        let output = VERIFYING_OUTPUT.load(Ordering::SeqCst);
        let parts: [&[u8]; 4] = match (output, name) {
            (false, Some(name)) => [b"error: ", name, b": the file shrank while it was being read (SIGBUS: did another process truncate or rewrite it?); nothing was written to the destination, run again once the file is stable", b"\n"],
            (false, None) => [b"error: an input file shrank while it was being read (SIGBUS: did another process truncate or rewrite it?); nothing was written to the destination, run again once the inputs are stable", b"", b"", b"\n"],
            (true, Some(name)) => [b"error: --verify: ", name, b": the output shrank while it was being read back (SIGBUS: did another process truncate or rewrite it?); it was already in place, so don't use it: merge again", b"\n"],
            (true, None) => [b"error: --verify: the output shrank while it was being read back (SIGBUS: did another process truncate or rewrite it?); it was already in place, so don't use it: merge again", b"", b"", b"\n"],
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe, and the parts are static or
        // the live map's path. Exiting without unwinding or running destructors is the point:
        // the faulting read can't go on.
        unsafe {
            for part in parts {
                libc::write(libc::STDERR_FILENO, part.as_ptr().cast(), part.len());
            }
            libc::_exit(1);
        }
    }
    // SAFETY: an all-zero sigaction is a valid value; the handler calls only async-signal-safe
    // functions; the old action is not needed (Rust's runtime uses SIGBUS only to report a stack
    // overflow, which on Linux arrives as SIGSEGV).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        // A file-size limit (`ulimit -f`, set by some batch schedulers) would otherwise kill
        // the process silently with SIGXFSZ, leaving its temporary; ignored, the write fails
        // with EFBIG and takes the normal error path.
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// An inode flag (`chattr`) under which the kernel refuses to remove or rename an entry:
/// EPERM for root too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    /// `chattr +a`: a file only grows; a folder takes new entries but loses none, so a
    /// temporary made in it can never be renamed into place or removed.
    AppendOnly,
    /// `chattr +i`: nothing about it changes; a folder takes no new entries either.
    Immutable,
}

impl Locked {
    /// The `chattr` letter of the flag, for the fix (`chattr -a PATH`).
    pub fn letter(self) -> char {
        match self {
            Locked::AppendOnly => 'a',
            Locked::Immutable => 'i',
        }
    }

    /// The flag's name, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Locked::AppendOnly => "append-only",
            Locked::Immutable => "immutable",
        }
    }
}

/// Whether `path` (not followed, if it is a link) is a regular file or directory marked
/// append-only or immutable. `None` where it isn't, where it can't be opened, where its file
/// system keeps no such flags, and for anything else: the flags are read with an ioctl, which
/// on a device would reach its driver.
pub fn locked(path: &Path) -> Option<Locked> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    // linux/fs.h
    const FS_IMMUTABLE_FL: u32 = 0x10;
    const FS_APPEND_FL: u32 = 0x20;
    let plain = |m: &std::fs::Metadata| m.is_file() || m.is_dir();
    if !std::fs::symlink_metadata(path).is_ok_and(|m| plain(&m)) {
        return None;
    }
    // Without blocking or following a link: what is there may have changed since the look.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .ok()?;
    if !file.metadata().is_ok_and(|m| plain(&m)) {
        return None;
    }
    // The kernel writes an int at the address, though the request is declared with a long.
    let mut word: libc::c_long = 0;
    // SAFETY: the fd is open for the call; FS_IOC_GETFLAGS on a regular file or directory
    // writes at most the 4 bytes of an int at `word`, which holds a long.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            libc::FS_IOC_GETFLAGS,
            &mut word as *mut libc::c_long,
        )
    };
    if rc != 0 {
        return None;
    }
    let bytes = word.to_ne_bytes();
    let flags = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if flags & FS_IMMUTABLE_FL != 0 {
        Some(Locked::Immutable)
    } else if flags & FS_APPEND_FL != 0 {
        Some(Locked::AppendOnly)
    } else {
        None
    }
}

/// The signals besides SIGINT, SIGTERM and SIGHUP (ctrlc's) whose default action ends the
/// process at once, leaving a merge's temporary behind: SIGQUIT (Ctrl-\\, with a core dump),
/// SIGXCPU (a CPU-time limit's soft limit, `ulimit -t`), SIGALRM, SIGUSR1 and SIGUSR2 (`kill`
/// by a scheduler or a script).
const STOPPING: [libc::c_int; 5] = [
    libc::SIGQUIT,
    libc::SIGXCPU,
    libc::SIGALRM,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Makes the [`STOPPING`] signals stop a run as Ctrl-C does: their handler raises SIGINT,
/// whose handler (ctrlc's, which must be set first) asks running merges to stop and remove
/// their temporaries, and the run exits with status 130.
pub fn stop_signals_as_interrupt() {
    extern "C" fn on_stop(_: libc::c_int) {
        // SAFETY: raise(3) is async-signal-safe and touches no memory of ours.
        unsafe {
            libc::raise(libc::SIGINT);
        }
    }
    // SAFETY: an all-zero sigaction is a valid value; the handler calls only raise(3), which is
    // async-signal-safe; SIGINT is not in its mask, so the raised signal is handled at once.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in STOPPING {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    /// A process with more maps than the SIGBUS table holds (a model of thousands of shards)
    /// still maps them all: the extra ones just go unnamed, and a freed slot is taken again.
    /// Lookups name only the map whose range holds the address.
    #[test]
    fn a_full_map_table_names_what_it_holds_and_refuses_the_rest() {
        let table = MapTable::new();
        let names: Vec<Vec<u8>> = (0..1025)
            .map(|i| format!("shard-{i}").into_bytes())
            .collect();
        let slots: Vec<Option<usize>> = names
            .iter()
            .enumerate()
            .map(|(i, name)| table.enter(0x1000 * (i + 1), 0x1000, name))
            .collect();
        assert!(slots[..1024].iter().all(Option::is_some));
        assert_eq!(slots[1024], None, "the 1025th map gets no slot");
        assert_eq!(table.name_at(0x1000 * 7 + 5), Some(&b"shard-6"[..]));
        assert_eq!(
            table.name_at(0x1000 * 1025 + 5),
            None,
            "unnamed, not misnamed"
        );
        assert_eq!(table.name_at(0x10), None);
        table.leave(slots[6].unwrap());
        assert_eq!(
            table.name_at(0x1000 * 7 + 5),
            None,
            "a map that left is not named"
        );
        let again = table.enter(0x1000 * 1025, 0x1000, &names[1024]);
        assert_eq!(again, slots[6], "the freed slot is reused");
        assert_eq!(table.name_at(0x1000 * 1025 + 5), Some(&b"shard-1024"[..]));
    }

    /// Which pages of `bytes` are mapped into this process, from /proc/self/pagemap (bit 63 of
    /// each page's entry), or None where the kernel doesn't offer it.
    fn mapped_pages(bytes: &[u8]) -> Option<Vec<bool>> {
        let page = page_size();
        let mut pagemap = File::open("/proc/self/pagemap").ok()?;
        let first = bytes.as_ptr() as usize / page;
        let count = bytes.len().div_ceil(page);
        pagemap.seek(SeekFrom::Start((first * 8) as u64)).ok()?;
        let mut raw = vec![0u8; count * 8];
        pagemap.read_exact(&mut raw).ok()?;
        Some(
            raw.chunks_exact(8)
                .map(|e| u64::from_le_bytes(e.try_into().unwrap()) >> 63 == 1)
                .collect(),
        )
    }

    /// A mapping of a `len`-byte file with every page mapped in, as after a merge read it.
    fn fully_mapped(len: usize) -> (tempfile::NamedTempFile, Mapping) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let block: Vec<u8> = (0..1 << 16).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..len / block.len() {
            file.write_all(&block).unwrap();
        }
        file.as_file().sync_all().unwrap();
        let mapping = Mapping::new(file.as_file(), file.path()).unwrap();
        let sum: u64 = mapping
            .bytes()
            .iter()
            .step_by(page_size())
            .map(|&b| b as u64)
            .sum();
        assert!(sum > 0);
        (file, mapping)
    }

    /// The contract the executor's flat memory rests on: after `release(range)`, no page of
    /// any folio that a read of `range` could have mapped is still mapped. Linux 6.18 maps a
    /// large page-cache folio whole on a fault, pages outside the faulting chunk included, and
    /// ext4 caches files in folios of up to 2 MiB; a release widened only to the 64 KiB
    /// fault-around window left the rest of each folio mapped at every chunk boundary, and
    /// a 3 x 4 GiB merge peaked at 66-155 MiB instead of about 35.
    #[test]
    fn release_unmaps_every_folio_the_range_touches() {
        const MIB: usize = 1 << 20;
        let block = large_folio_max();
        let (_file, mapping) = fully_mapped(16 * MIB);
        let bytes = mapping.bytes();
        let Some(before) = mapped_pages(bytes) else {
            eprintln!("skipped: /proc/self/pagemap is not readable");
            return;
        };
        assert!(before.iter().all(|&m| m), "every page was just read");

        // A chunk as the executor makes them: 1 MiB, starting where no folio boundary is.
        let chunk = 4 * MIB + (320 << 10)..5 * MIB + (320 << 10);
        mapping.release(chunk.clone());
        let after = mapped_pages(bytes).unwrap();
        let page = page_size();
        let envelope = chunk.start / block * block..chunk.end.div_ceil(block) * block;
        for (i, &mapped) in after.iter().enumerate() {
            let at = i * page;
            if envelope.contains(&at) {
                assert!(
                    !mapped,
                    "byte {at} is in a folio that {chunk:?} may touch, and still mapped"
                );
            } else if at + block <= envelope.start || at >= envelope.end + block {
                assert!(
                    mapped,
                    "byte {at} is a whole folio away from {chunk:?}, and was released"
                );
            }
        }
        mapping.release(0..bytes.len());
        assert!(!mapped_pages(bytes).unwrap().iter().any(|&m| m));
    }

    /// Each live map's addresses lead to its own path, and a dropped map's to none.
    #[test]
    fn the_map_table_names_the_file_behind_an_address() {
        let files: Vec<_> = (0..3)
            .map(|i| {
                let mut file = tempfile::NamedTempFile::new().unwrap();
                file.write_all(&vec![i as u8 + 1; 3 << 12]).unwrap();
                file
            })
            .collect();
        let maps: Vec<Mapping> = files
            .iter()
            .map(|f| Mapping::new(f.as_file(), f.path()).unwrap())
            .collect();
        for (file, map) in files.iter().zip(&maps) {
            let bytes = map.bytes();
            for at in [0, bytes.len() / 2, bytes.len() - 1] {
                let address = bytes.as_ptr() as usize + at;
                let name = MAPPED.name_at(address).unwrap();
                assert_eq!(name, file.path().as_os_str().as_encoded_bytes());
            }
        }
        let gone = maps[1].bytes().as_ptr() as usize;
        drop(maps);
        assert_eq!(MAPPED.name_at(gone), None);
    }

    /// A read of a map whose file was cut short under it ends the process with one `error:`
    /// line that names the file, not a bare "Bus error". The fault kills the process, so
    /// this test runs itself as a child that maps, truncates and reads.
    #[test]
    fn a_read_past_a_truncated_files_end_names_the_file() {
        const NAME: &str = "format::os::tests::a_read_past_a_truncated_files_end_names_the_file";
        if let Some(path) = std::env::var_os("SOUP_SIGBUS_CHILD") {
            explain_sigbus();
            let file = File::options().read(true).write(true).open(&path).unwrap();
            let mapping = Mapping::new(&file, Path::new(&path)).unwrap();
            file.set_len(0).unwrap();
            let byte = std::hint::black_box(mapping.bytes())[2 * page_size()];
            panic!("read {byte} past the end of a truncated file without a SIGBUS");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ft 'x\" $1.safetensors");
        std::fs::write(&path, vec![7u8; 1 << 16]).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env("SOUP_SIGBUS_CHILD", &path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let line = format!(
            "error: {}: the file shrank while it was being read",
            path.display()
        );
        assert!(err.contains(&line), "{err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }

    /// The fallback for filesystems without RENAME_NOREPLACE publishes files and directories
    /// (a directory can't be hard-linked) and never replaces what is there.
    #[test]
    fn renames_without_flags_publish_files_and_directories_and_replace_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, file) = (tmp.path().join("d.tmp"), tmp.path().join("f.tmp"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), b"x").unwrap();
        std::fs::write(&file, b"y").unwrap();
        let (there, full) = (tmp.path().join("there"), tmp.path().join("full"));
        std::fs::write(&there, b"theirs").unwrap();
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("keep"), b"theirs").unwrap();
        for (from, to) in [
            (&dir, &there),
            (&dir, &full),
            (&file, &there),
            (&file, &full),
        ] {
            let e = rename_no_replace_without_flags(from, to).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{from:?} -> {to:?}");
        }
        assert_eq!(std::fs::read(&there).unwrap(), b"theirs");
        assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"theirs");
        rename_no_replace_without_flags(&dir, &tmp.path().join("d")).unwrap();
        rename_no_replace_without_flags(&file, &tmp.path().join("f")).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("d/model.safetensors")).unwrap(),
            b"x"
        );
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"y");
        assert!(!dir.exists() && !file.exists());
    }
}
