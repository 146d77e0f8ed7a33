//! Hostile inputs (issue 6): files built to crash the parser, exhaust memory with a lying size,
//! hang the open, or trick the tool into overwriting an input. Each is refused with one
//! `error:` line naming the file, exit status 1, nothing at the destination, and a peak memory
//! that does not grow with what the file claims.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use safetensors::Dtype as D;

/// What a finished child did: exit code (None when killed by a signal), stderr, peak RSS.
struct Finished {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
    max_rss_kb: i64,
}

/// Runs `cmd` to the end, killing it after `limit` (a hang is a failure), and measures its peak
/// resident memory with wait4, which reports it for this child alone.
// The child is reaped by wait4 below, not by `Child::wait`, which clippy can't see.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command, limit: Duration) -> Finished {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn soup-merge");
    let pid = child.id() as libc::pid_t;
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let step = Duration::from_millis(20);
            let mut waited = Duration::ZERO;
            while waited < limit {
                if done.load(Ordering::SeqCst) {
                    return false;
                }
                std::thread::sleep(step);
                waited += step;
            }
            // SAFETY: `pid` is our unreaped child, so the id can't have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        })
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; `pid` is our child, reaped exactly once here.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4 failed");
    done.store(true, Ordering::SeqCst);
    let hung = watchdog.join().unwrap();
    assert!(!hung, "soup-merge hung for {limit:?}; stderr: {stderr}");
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    Finished {
        code,
        signal,
        stderr,
        max_rss_kb: usage.ru_maxrss,
    }
}

fn good(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut rng = Rng::new(7);
    write(
        &p,
        &[
            spec("a", D::F32, &[2, 2], floats(&mut rng, D::F32, 4)),
            spec("b", D::F32, &[2], floats(&mut rng, D::F32, 2)),
        ],
    );
    p
}

/// A file of the 8-byte length of `header`, `header` itself, then `data`.
fn raw_file(path: &Path, header: &[u8], data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Merges `good` with `bad`, expects a clean refusal, and returns the error line and peak RSS.
fn refused(dir: &Path, good: &Path, bad: &Path, extra: &[&str]) -> (String, i64) {
    let out = dir.join("soup.safetensors");
    let mut cmd = soup_merge();
    cmd.arg(good).arg(bad).arg("-o").arg(&out).args(extra);
    let f = run_measured(&mut cmd, Duration::from_secs(20));
    let name = bad.file_name().unwrap().to_string_lossy();
    assert_eq!(
        f.code,
        Some(1),
        "{name}: expected exit 1 (signal {:?}), stderr: {}",
        f.signal,
        f.stderr
    );
    assert!(f.stderr.starts_with("error: "), "{name}: {}", f.stderr);
    assert_eq!(
        f.stderr.trim_end().lines().count(),
        1,
        "{name}: {}",
        f.stderr
    );
    assert!(!f.stderr.contains("panicked"), "{name}: {}", f.stderr);
    assert!(
        f.stderr.contains(&*name),
        "{name}: the message must name the file: {}",
        f.stderr
    );
    assert!(!out.exists(), "{name}: no output after a refusal");
    let temps = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("soup-tmp"))
        .count();
    assert_eq!(temps, 0, "{name}: temporary left behind");
    (f.stderr, f.max_rss_kb)
}

/// The peak RSS of refusing a harmless bad file: what the binary needs anyway.
fn baseline_rss(dir: &Path, good: &Path) -> i64 {
    let bad = dir.join("baseline.safetensors");
    raw_file(&bad, b"{\"x\":1}", &[]);
    refused(dir, good, &bad, &[]).1
}

/// A lying file may cost what its real bytes cost, never what it claims. 32 MB of slack covers
/// allocator noise while staying far below every claim below (all of them 100 MB or more).
const SLACK_KB: i64 = 32 * 1024;

#[test]
fn lying_sizes_are_refused_without_allocating_what_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let ok = good(dir.path(), "ok.safetensors");
    let base = baseline_rss(dir.path(), &ok);

    let check = |name: &str, make: &dyn Fn(&Path), needle: &str| {
        let p = dir.path().join(name);
        make(&p);
        let (err, rss) = refused(dir.path(), &ok, &p, &[]);
        eprintln!("{name}: peak RSS {rss} kB (a harmless refusal: {base} kB)");
        assert!(
            err.contains(needle),
            "{name}: expected '{needle}' in: {err}"
        );
        assert!(
            rss < base + SLACK_KB,
            "{name}: peak RSS {rss} kB vs {base} kB for a harmless refusal"
        );
    };
    // A header length of 2^63 (and of 2^64 - 1) in an 8-byte file.
    check(
        "len_2_63.safetensors",
        &|p| std::fs::write(p, (1u64 << 63).to_le_bytes()).unwrap(),
        "limit",
    );
    check(
        "len_max.safetensors",
        &|p| std::fs::write(p, u64::MAX.to_le_bytes()).unwrap(),
        "limit",
    );
    // A 100 MB header that is really there (a sparse file): refused by length, never read.
    check(
        "header_100mb.safetensors",
        &|p| {
            let f = std::fs::File::create(p).unwrap();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&(100u64 << 20).to_le_bytes(), 0).unwrap();
            f.write_all_at(b"{", 8).unwrap();
            f.set_len(8 + (100 << 20)).unwrap();
        },
        "limit",
    );
    // Shapes whose product overflows 64 bits, with and without a zero dimension after them.
    for (i, shape) in [
        "[4294967296,4294967296]",
        "[18446744073709551615,2]",
        "[4294967296,4294967296,0]",
    ]
    .iter()
    .enumerate()
    {
        let header = format!(r#"{{"t":{{"dtype":"F32","shape":{shape},"data_offsets":[0,4]}}}}"#);
        check(
            &format!("overflow{i}.safetensors"),
            &|p| raw_file(p, header.as_bytes(), &[0; 4]),
            "overflows",
        );
    }
    // Offsets that claim a terabyte of data the 4-byte file doesn't have.
    check(
        "past_end.safetensors",
        &|p| {
            raw_file(
                p,
                br#"{"t":{"dtype":"F32","shape":[274877906944],"data_offsets":[0,1099511627776]}}"#,
                &[0; 4],
            )
        },
        "truncated",
    );
    // Offsets at the very top of the u64 range.
    check(
        "offsets_max.safetensors",
        &|p| {
            raw_file(
                p,
                br#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}"#,
                &[0; 1],
            )
        },
        "gap",
    );
    // A million dimensions: refused by rank, after parsing what is really in the file.
    check(
        "rank.safetensors",
        &|p| {
            let dims = vec!["1"; 1_000_000].join(",");
            let header =
                format!(r#"{{"t":{{"dtype":"U8","shape":[{dims}],"data_offsets":[0,1]}}}}"#);
            raw_file(p, header.as_bytes(), &[0])
        },
        "dimensions",
    );
}

#[test]
fn malformed_headers_are_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ok = good(dir.path(), "ok.safetensors");
    let deep = 1_000_000;
    let bomb_meta = format!(
        r#"{{"__metadata__":{{"k":{}{}}}}}"#,
        "[".repeat(deep),
        "]".repeat(deep)
    );
    let bomb_shape = format!(
        r#"{{"t":{{"dtype":"F32","shape":{}{},"data_offsets":[0,4]}}}}"#,
        "[".repeat(deep),
        "]".repeat(deep)
    );
    let bomb_open = "{\"a\":".repeat(deep);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "bomb_meta.safetensors",
            bomb_meta.into_bytes(),
            vec![],
            "JSON",
        ),
        (
            "bomb_shape.safetensors",
            bomb_shape.into_bytes(),
            vec![0; 4],
            "JSON",
        ),
        (
            "bomb_open.safetensors",
            bomb_open.into_bytes(),
            vec![],
            "JSON",
        ),
        (
            "reserved.safetensors",
            br#"{"__metadata__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec(),
            vec![0; 4],
            "not a string",
        ),
        (
            "reserved_twice.safetensors",
            br#"{"__metadata__":{},"__metadata__":{}}"#.to_vec(),
            vec![],
            "duplicate key '__metadata__'",
        ),
        (
            "meta_number.safetensors",
            br#"{"__metadata__":{"format":1}}"#.to_vec(),
            vec![],
            "not a string",
        ),
        (
            "meta_null.safetensors",
            br#"{"__metadata__":{"format":null}}"#.to_vec(),
            vec![],
            "not a string",
        ),
        (
            "meta_object.safetensors",
            br#"{"__metadata__":{"format":{"pt":"yes"}}}"#.to_vec(),
            vec![],
            "not a string",
        ),
        (
            "meta_list.safetensors",
            br#"{"__metadata__":["format","pt"]}"#.to_vec(),
            vec![],
            "JSON",
        ),
        (
            "nul_escaped.safetensors",
            b"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}".to_vec(),
            vec![0; 4],
            "control characters",
        ),
        (
            "nul_raw.safetensors",
            b"{\"a\x00b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}".to_vec(),
            vec![0; 4],
            "JSON",
        ),
        (
            "newline_name.safetensors",
            b"{\"a\\nerror: fake\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"
                .to_vec(),
            vec![0; 4],
            "control characters",
        ),
        (
            "empty_name.safetensors",
            br#"{"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec(),
            vec![0; 4],
            "empty",
        ),
        (
            "not_utf8.safetensors",
            b"{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}".to_vec(),
            vec![0; 4],
            "UTF-8",
        ),
        (
            "array.safetensors",
            b"[]".to_vec(),
            vec![],
            "not a JSON object",
        ),
        (
            "backwards.safetensors",
            br#"{"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#.to_vec(),
            vec![0; 4],
            "don't match",
        ),
        (
            "negative.safetensors",
            br#"{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#.to_vec(),
            vec![0; 1],
            "JSON",
        ),
        (
            "unknown_field.safetensors",
            br#"{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":1}}"#.to_vec(),
            vec![0; 1],
            "JSON",
        ),
    ];
    for (name, header, data, needle) in cases {
        let p = dir.path().join(name);
        raw_file(&p, &header, &data);
        let (err, _) = refused(dir.path(), &ok, &p, &[]);
        assert!(
            err.contains(needle),
            "{name}: expected '{needle}' in: {err}"
        );
    }
    // A file shorter than the length field, and an empty one.
    for (name, bytes) in [
        ("empty.safetensors", &b""[..]),
        ("seven.safetensors", &[1u8; 7][..]),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let (err, _) = refused(dir.path(), &ok, &p, &[]);
        assert!(err.contains("too short"), "{name}: {err}");
    }
}

#[test]
fn directories_fifos_and_devices_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let ok = good(dir.path(), "ok.safetensors");
    let fifo = dir.path().join("fifo.safetensors");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Nobody ever opens the other end: an open that blocked would hang until the watchdog.
    let (err, _) = refused(dir.path(), &ok, &fifo, &[]);
    assert!(err.contains("not a regular file"), "{err}");
    // A symlink to the FIFO is no better.
    let link = dir.path().join("fifo_link.safetensors");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let (err, _) = refused(dir.path(), &ok, &link, &[]);
    assert!(err.contains("not a regular file"), "{err}");
    // A character device that never ends.
    let zero = dir.path().join("zero.safetensors");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let (err, _) = refused(dir.path(), &ok, &zero, &[]);
    assert!(err.contains("not a regular file"), "{err}");
    // A directory with nothing of a model in it.
    let sub = dir.path().join("not_a_model");
    std::fs::create_dir(&sub).unwrap();
    refused(dir.path(), &ok, &sub, &[]);
}

#[test]
fn an_input_that_is_a_link_to_the_output_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let a = good(dir.path(), "a.safetensors");
    let b = good(dir.path(), "b.safetensors");
    let out = dir.path().join("soup.safetensors");
    let first = soup_merge()
        .arg(&a)
        .arg(&b)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let before = std::fs::read(&out).unwrap();
    // Yesterday's soup, reached through a symlink and a hard link, as an ingredient of today's.
    let sym = dir.path().join("sym.safetensors");
    std::os::unix::fs::symlink(&out, &sym).unwrap();
    let hard = dir.path().join("hard.safetensors");
    std::fs::hard_link(&out, &hard).unwrap();
    for input in [&sym, &hard] {
        let o = soup_merge()
            .arg(input)
            .arg(&a)
            .arg("-o")
            .arg(&out)
            .arg("--force")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("is the input"), "{err}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            before,
            "the input was modified"
        );
    }
}
