//! What the binaries share: exit codes, error printing, progress bars and stdout handling.

pub mod merge;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::format::{silenced, Stream};

/// Exit status for bad input, failed validation or a failed write.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a bad command line: clap's, and the same for one found after parsing
/// (`kind: "usage"`), so that the status and the JSON kind always agree.
pub const EXIT_USAGE: u8 = 2;
/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Prints `error: ...` with the whole cause chain on one line and picks the exit status.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    fail_as(err, interrupted(err))
}

/// [`fail`], with `--json`'s `{"error": ..., "kind": ...}` on stdout first when `json`.
pub fn fail_json(err: &anyhow::Error, json: bool) -> ExitCode {
    fail_report(err, json, error_kind(err), interrupted(err))
}

/// The failure of a front end whose own error type wraps the core's: it says the kind and
/// whether the failure was a Ctrl-C.
pub fn fail_report(err: &anyhow::Error, json: bool, kind: &str, interrupted: bool) -> ExitCode {
    if json {
        let _ = print(&format!(
            "{}\n",
            serde_json::json!({ "error": one_line(&format!("{err:#}")), "kind": kind })
        ));
    }
    if !json && silenced(Stream::Stderr) && !silenced(Stream::Stdout) {
        // Standard error is a file the run reads (`2>> a.safetensors`), now /dev/null: the
        // error line goes to standard output, or nothing would say what failed.
        let _ = print(&format!(
            "{}\n",
            inert(&format!("error: {}", one_line(&format!("{err:#}"))))
        ));
    }
    if kind == "usage" && !interrupted {
        say(&format!("error: {}", one_line(&format!("{err:#}"))));
        return ExitCode::from(EXIT_USAGE);
    }
    fail_as(err, interrupted)
}

/// The stable `kind` of a failure for `--json`: the core error's kind where there is one.
pub fn error_kind(err: &anyhow::Error) -> &'static str {
    err.chain()
        .find_map(|e| e.downcast_ref::<crate::Error>().map(crate::Error::kind))
        .unwrap_or("other")
}

/// Parses the command line as clap's `parse` does, except that a bad one is one line,
/// `error: MESSAGE; TIP; see COMMAND --help` (see [`usage_error`]), with exit status 2, like
/// every other failure; with `--json` anywhere in it, `{"error": MESSAGE, "kind": "usage"}` on
/// stdout too. `--help` and `--version` print as clap prints them, with status 0.
pub fn parse_args<A: clap::Parser>() -> A {
    match A::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Also before the help: `soup-merge a.safetensors --help >> a.safetensors`.
            silence_streams_into_named_files(std::env::args_os().skip(1));
            // `--help`, `--version`, and a bare `soup-eval`'s help: what was asked for.
            let help = clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
            if !e.use_stderr() || e.kind() == help {
                e.exit()
            }
            let command = help_command(&A::command(), std::env::args_os().skip(1));
            let (message, line) = usage_error(&e.render().to_string(), &command);
            let json = asks_for_json(std::env::args_os().skip(1));
            if json {
                let _ = print(&format!(
                    "{}\n",
                    serde_json::json!({ "error": message, "kind": "usage" })
                ));
            }
            if !json && silenced(Stream::Stderr) && !silenced(Stream::Stdout) {
                // As in `fail_report`: stderr is an input, so stdout says what failed.
                let _ = print(&format!("{}\n", inert(&line)));
            } else {
                say(&line);
            }
            std::process::exit(e.exit_code())
        }
    }
}

/// clap's rendering of a refused command line as (the message, as `--json`'s `error` gives
/// it; the `error:` line). clap renders a block: the message (with its possible values),
/// then tips, the usage and "For more information, try '--help'". The line keeps the message
/// and the tips, and ends with the help to read instead of the usage:
/// `error: unexpected argument '--dry-ru' found; a similar argument exists: '--dry-run'; see
/// soup-merge --help`.
fn usage_error(rendered: &str, command: &str) -> (String, String) {
    let mut paragraphs = rendered.split("\n\n").filter(|p| !p.trim().is_empty());
    let head = one_line(paragraphs.next().unwrap_or_default());
    let message = head.strip_prefix("error: ").unwrap_or(&head).to_string();
    let mut parts = vec![message.clone()];
    for paragraph in paragraphs {
        let paragraph = paragraph.trim_start();
        if paragraph.starts_with("Usage:") || paragraph.starts_with("For more information") {
            continue;
        }
        // Each tip on a line of its own, continued on the lines that follow.
        for tip in paragraph
            .split("tip:")
            .map(one_line)
            .filter(|t| !t.is_empty())
        {
            parts.push(tip);
        }
    }
    parts.push(format!("see {command} --help"));
    (message, format!("error: {}", parts.join("; ")))
}

/// The command whose help a refused command line should read: the binary's, or its
/// subcommand's when the line names one (`soup-eval greedy`).
fn help_command(command: &clap::Command, args: impl Iterator<Item = std::ffi::OsString>) -> String {
    let name = command.get_name();
    let sub = args
        .take_while(|a| a != "--")
        .filter_map(|a| a.into_string().ok())
        .find(|a| command.find_subcommand(a).is_some());
    match sub {
        Some(sub) => format!("{name} {sub}"),
        None => name.to_string(),
    }
}

/// Points standard output or error at /dev/null when it is a file that a command line clap
/// refused names (`soup-merge a.safetensors --bogus 2>> a.safetensors`): its roles are
/// unknown, so any path it names, or holds as a model directory's file, may be an input, and
/// the usage error must not be appended to it. The exit status still tells.
fn silence_streams_into_named_files(args: impl Iterator<Item = std::ffi::OsString>) {
    let named: Vec<std::path::PathBuf> = args
        .map(|arg| {
            let bytes = arg.as_encoded_bytes();
            // `--base=DIR`: the path is the value.
            match bytes.iter().position(|&b| b == b'=') {
                Some(i) if bytes.starts_with(b"--") => std::path::PathBuf::from(
                    <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&bytes[i + 1..]),
                ),
                _ => std::path::PathBuf::from(&arg),
            }
        })
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    let _ = crate::soup::check_named_streams(&named, None, None, None);
}

/// Whether a command line that clap refused asks for `--json`: the flag itself, or the flag
/// given a value (`--json=true`, which clap refuses, and which a pipeline that asked for JSON
/// must still get), before any `--` (after it, `--json` is a file name).
fn asks_for_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.take_while(|a| a != "--").any(|a| {
        let a = a.as_encoded_bytes();
        a == b"--json" || a.starts_with(b"--json=")
    })
}

/// Prints every warning on stderr, one line each: the same list `--json` reports.
pub fn print_warnings(warnings: &[crate::soup::Warning]) {
    for w in warnings {
        say(&format!("warning: {}", one_line(&w.message)));
    }
}

/// Prints a report as pretty JSON on stdout. Paths that aren't UTF-8 are written losslessly
/// (see `crate::json_path`), so this can't fail but for stdout itself.
pub fn print_json(report: &impl serde::Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    print(&(text + "\n"))
}

/// The most worker threads either tool starts: more only costs memory and time (each thread
/// has its own stack), and a typo such as `--threads 100000` must fail at once.
pub const MAX_THREADS: usize = 1024;

/// Each worker thread's stack: set rather than left to `RUST_MIN_STACK`, so that the room
/// [`start_thread_pool`] checks for is the room the threads take. The kernels keep at most a
/// few hundred KiB of tiles on the stack.
const WORKER_STACK: usize = 2 << 20;

/// Beside its stack, what each worker maps as it starts and on its first chunk: its signal
/// stack, and the merge's per-thread buffers (a chunk's output, 4 MiB, and the kernels'
/// tiles), with room to spare.
const WORKER_ROOM: usize = 8 << 20;

/// The thread count `RAYON_NUM_THREADS` asks for (0 or unset: every core), refusing one the
/// thread pool would choke on, before any work.
fn thread_env() -> Result<usize, crate::Error> {
    let Some(value) = std::env::var_os("RAYON_NUM_THREADS") else {
        return Ok(0);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_THREADS => Ok(n),
        _ => Err(crate::Error::Usage(format!(
            "RAYON_NUM_THREADS={text} is not a thread count from 0 (every core) to {MAX_THREADS}; unset it or give a number in that range"
        ))),
    }
}

/// Starts the worker threads before any work, so that a process limit leaving no room for
/// them (`ulimit -v`, a pids cgroup) is an `error:` line rather than rayon's panic at first
/// use. There are `RAYON_NUM_THREADS` of them (see [`thread_env`]; 0 or unset is one per
/// core). rayon's older `RAYON_RS_NUM_CPUS`, which that check doesn't see, is not read. Later
/// calls report the first call's result.
pub fn start_thread_pool() -> Result<(), crate::Error> {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let asked = thread_env()?;
    let started = STARTED.get_or_init(|| {
        let n = match asked {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Address space that runs out while threads start can fail after a thread's stack
        // is mapped but before its signal stack or first allocation is, which std and the
        // allocator turn into an abort. So the room for every thread is asked for first (and
        // given back), a plain error when it can't be had: its stack, its first buffers, and
        // its glibc heap.
        let heaps = crate::soup::room::thread_heaps(n);
        let heap = |i: usize| if i < heaps { crate::soup::room::THREAD_HEAP } else { 0 };
        let each = |i: usize| WORKER_STACK + WORKER_ROOM + heap(i);
        let room: usize = (0..n).map(each).sum();
        let fits = crate::soup::room::fits((0..n).map(each));
        if !fits {
            return Err(format!(
                "cannot start {n} worker threads (with their stacks and buffers they need about {} MiB of address space, which this process can't have); give fewer with RAYON_NUM_THREADS (or soup-eval's --threads), or raise the process's limits (ulimit -v)",
                room >> 20
            ));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .stack_size(WORKER_STACK)
            .build_global()
            .map_err(|e| {
                format!(
                    "cannot start {n} worker threads ({e}); give fewer with RAYON_NUM_THREADS (or soup-eval's --threads), or raise the process's limits (ulimit -v, ulimit -u)"
                )
            })
    });
    started.clone().map_err(crate::Error::Resources)
}

/// Like [`fail`], for a front end whose own error type wraps the core's: it says whether the
/// failure was a Ctrl-C.
pub fn fail_as(err: &anyhow::Error, interrupted: bool) -> ExitCode {
    say(&format!("error: {}", one_line(&format!("{err:#}"))));
    if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::from(EXIT_FAILURE)
    }
}

/// Whether the failure was a Ctrl-C, however deep the library error that says so.
pub fn interrupted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<crate::Error>(),
            Some(crate::Error::Interrupted | crate::Error::InterruptedWhile(_))
        )
    })
}

/// Error text from files can hold newlines; an error is one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes a line to stderr. A closed stderr (`2>&1 | head -1`) is ignored, as a closed
/// stdout is: `eprintln!` panics there, which turned a finished merge's warning or summary
/// into exit status 101.
///
/// Control characters are written escaped (`\u{1b}`): a message can quote a name from an
/// untrusted file (a shard listed in a downloaded index), and its escape sequences must not
/// reach the terminal.
pub fn say(line: &str) {
    let line = inert(line);
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|_| err.write_all(b"\n"));
}

/// `text` with its control characters escaped.
fn inert(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// A byte-counting bar on stderr, hidden when stderr is not a terminal or when `quiet`.
pub fn progress_bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("template is valid"),
    );
    bar
}

/// Makes Ctrl-C (and SIGTERM, SIGHUP, SIGQUIT, SIGXCPU, SIGALRM, SIGUSR1, SIGUSR2) stop running
/// merges cleanly: temporaries removed, exit status 130. An input truncated under the merge
/// (SIGBUS) ends it with an `error:` line. (SIGPIPE is ignored, as in every Rust program: a closed stdout is a failed
/// write, which `print` treats as no error.)
pub fn handle_interrupts() {
    let _ = ctrlc::set_handler(crate::soup::interrupt);
    crate::format::stop_signals_as_interrupt();
    crate::format::explain_sigbus();
}

/// For long computations that don't poll the interrupt flag (soup-eval's forward passes): a
/// merge in progress still stops cleanly at its next chunk, and the process exits with status
/// 130 shortly after, whatever it was doing.
pub fn handle_interrupts_then_exit() {
    let _ = ctrlc::set_handler(|| {
        crate::soup::interrupt();
        std::thread::sleep(std::time::Duration::from_millis(500));
        std::process::exit(EXIT_INTERRUPTED.into());
    });
    crate::format::stop_signals_as_interrupt();
    crate::format::explain_sigbus();
}

#[cfg(test)]
mod tests {
    /// clap's blocks, as clap 4 renders them, each condensed to one line that keeps the
    /// message and the tips and ends with the help to read.
    #[test]
    fn a_refused_command_line_is_one_line_with_its_tips() {
        let unknown = "error: unexpected argument '--dry-ru' found\n\n  tip: a similar argument exists: '--dry-run'\n\nUsage: soup-merge --dry-run <INPUT>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::usage_error(unknown, "soup-merge"),
            (
                "unexpected argument '--dry-ru' found".to_string(),
                "error: unexpected argument '--dry-ru' found; a similar argument exists: '--dry-run'; see soup-merge --help".to_string()
            )
        );
        let value = "error: invalid value 'x' for '--dtype <DTYPE>'\n  [possible values: f32, f16, bf16, f64]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::usage_error(value, "soup-merge").1,
            "error: invalid value 'x' for '--dtype <DTYPE>' [possible values: f32, f16, bf16, f64]; see soup-merge --help"
        );
        let two_tips = "error: unexpected argument '-x' found\n\n  tip: one\n  tip: two,\n    continued\n\nUsage: soup-eval greedy [OPTIONS]\n       soup-eval greedy <CHECKPOINT>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::usage_error(two_tips, "soup-eval greedy").1,
            "error: unexpected argument '-x' found; one; two, continued; see soup-eval greedy --help"
        );
    }

    #[test]
    fn messages_reach_the_terminal_without_control_characters() {
        assert_eq!(super::inert("plain ünïcode"), "plain ünïcode");
        assert_eq!(
            super::inert("m/\u{1b}]0;pwned\u{7}\u{1b}[2J.safetensors"),
            "m/\\u{1b}]0;pwned\\u{7}\\u{1b}[2J.safetensors"
        );
    }
}
