//! Address space a run will need, asked for before the work starts, so that a process limit
//! (`ulimit -v`) is an `error:` line rather than an abort on a failed allocation mid-merge.

/// The heap glibc reserves for each thread that allocates (up to [`thread_heaps`] of them).
/// It counts against `ulimit -v` before it is used.
pub const THREAD_HEAP: usize = 64 << 20;

/// How many of `threads` get a heap of their own: glibc makes at most 8 per core.
pub fn thread_heaps(threads: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    threads.min(8 * cores)
}

/// Whether every piece can be had at once. A piece at a time, all held until the last, then
/// given back: one request the size of them all could exceed the machine's memory, which the
/// kernel's overcommit check refuses with no limit set.
pub fn fits(pieces: impl IntoIterator<Item = usize>) -> bool {
    let mut held: Vec<Vec<u8>> = Vec::new();
    pieces.into_iter().all(|piece| {
        let mut v: Vec<u8> = Vec::new();
        let ok = v.try_reserve_exact(piece).is_ok();
        held.push(v);
        ok
    })
}
