//! Every call into the operating system that Rust can't check: memory maps, page advice,
//! writeback hints and no-replace renames. All of the crate's `unsafe` is in this file.

use std::fs::File;
use std::io;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// A read-only memory map of a whole input file.
pub struct Mapping {
    map: Option<Mmap>,
}

impl Mapping {
    /// Maps `file` read-only.
    ///
    /// # Safety contract with the user
    /// A mapped file that another process truncates while it is mapped makes the next read of a
    /// missing page raise SIGBUS; one that is rewritten in place changes under us. The executor
    /// re-checks every input's length and modification time before it publishes an output, and
    /// the README documents that inputs must not be modified during a merge.
    pub fn new(file: &File) -> io::Result<Mapping> {
        let len = file.metadata()?.len();
        if len == 0 {
            // mmap of length 0 fails on Linux; an empty file is simply an empty slice.
            return Ok(Mapping { map: None });
        }
        // SAFETY: the map is read-only and private to this process; the remaining hazard, another
        // process changing the file, is the documented contract above.
        let map = unsafe { Mmap::map(file)? };
        // Read-ahead helps the one sequential pass a merge makes; failure only costs speed.
        let _ = map.advise(Advice::Sequential);
        Ok(Mapping { map: Some(map) })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Drops the pages of `range` from this process's resident set once they have been used,
    /// so memory stays bounded by the chunks in flight, not by the model. The page cache keeps
    /// them, so a later read is a minor fault, not disk I/O. The range is rounded outward: a
    /// page shared with a neighbouring chunk still being read is only unmapped, and refaults.
    ///
    /// Released ranges are widened further, to the kernel's fault-around window (64 KiB):
    /// mapping a page in also maps its cached neighbours in that window, and those before the
    /// range belong to a chunk that was already released.
    pub fn release(&self, range: std::ops::Range<usize>) {
        const FAULT_AROUND: usize = 64 * 1024;
        let start = range.start / FAULT_AROUND * FAULT_AROUND;
        let end = range
            .end
            .div_ceil(FAULT_AROUND)
            .saturating_mul(FAULT_AROUND);
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
            // Filesystems without RENAME_NOREPLACE: a hard link is also atomic and no-replace.
            Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => {}
            _ => return Err(err),
        }
    }
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
    // Group 0 or 1 would mean "our own group" or "every process": never what a caller means.
    let pgid = match libc::pid_t::try_from(pgid) {
        Ok(p) if p > 1 => p,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
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

/// Turns SIGBUS into one `error:` line and exit status 1. A read of a mapped input raises it
/// when another process has truncated the file since it was mapped; the default action kills
/// the process with a bare "Bus error". Nothing is published either way: the output is only
/// renamed into place after every byte is written, and the dead run's temporary is removed by
/// the next run that writes the same destination.
pub fn explain_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MESSAGE: &[u8] = b"error: an input file shrank while it was being read (SIGBUS: did another process truncate or rewrite it?); nothing was written to the destination, run again once the inputs are stable\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe, and MESSAGE is static. Exiting
        // without unwinding or running destructors is the point: the faulting read can't go on.
        unsafe {
            libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(1);
        }
    }
    // SAFETY: an all-zero sigaction is a valid value; the handler calls only async-signal-safe
    // functions; the old action is not needed (Rust's runtime uses SIGBUS only to report a stack
    // overflow, which on Linux arrives as SIGSEGV).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}
