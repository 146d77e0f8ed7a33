//! What the binaries share: exit codes, error printing, progress bars and stdout handling.

pub mod merge;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Exit status for bad input, failed validation or a failed write.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Prints `error: ...` with the whole cause chain on one line and picks the exit status.
pub fn fail(err: &anyhow::Error) -> ExitCode {
    fail_as(err, interrupted(err))
}

/// Like [`fail`], for a front end whose own error type wraps the core's: it says whether the
/// failure was a Ctrl-C.
pub fn fail_as(err: &anyhow::Error, interrupted: bool) -> ExitCode {
    eprintln!("error: {}", one_line(&format!("{err:#}")));
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
            Some(crate::Error::Interrupted)
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

/// Makes Ctrl-C (and SIGTERM, SIGHUP) stop running merges cleanly: temporaries removed, exit
/// status 130. An input truncated under the merge (SIGBUS) ends it with an `error:` line.
pub fn handle_interrupts() {
    let _ = ctrlc::set_handler(crate::soup::interrupt);
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
    crate::format::explain_sigbus();
}
