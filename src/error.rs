//! The library's one error type: every variant names the file and, where there is one, the tensor.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while reading, planning or writing checkpoints.
///
/// Messages are one line, lowercase, and say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message, not a `#[source]`: printed as an error chain it would
    // appear twice.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("{}: {reason}", path.display())]
    Header { path: PathBuf, reason: String },

    #[error("{}: tensor '{tensor}': {reason}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error("{0}")]
    Plan(String),

    /// A recipe file (`--config`) that can't be read as a linear merge.
    #[error("{}: {reason}", path.display())]
    Recipe { path: PathBuf, reason: String },

    #[error("{}: {reason}", path.display())]
    Output { path: PathBuf, reason: String },

    /// Flags or weights that don't make sense together, found before anything is read.
    #[error("{0}")]
    Usage(String),

    /// Weights that would give a soup nobody meant (all zero, non-finite).
    #[error("{0}")]
    Weights(String),

    /// The process's limits leave no room for the work (worker threads it can't start).
    #[error("{0}")]
    Resources(String),

    #[error("interrupted; the partial output was removed")]
    Interrupted,

    /// A Ctrl-C (or SIGTERM, SIGHUP, SIGQUIT) that stopped a run with no partial output to
    /// remove (a dry run, or `--verify` reading back an output already complete and in place):
    /// the text says what the run was doing and what is left.
    #[error("interrupted while {0}")]
    InterruptedWhile(String),
}

impl Error {
    /// A stable, machine-readable name for the kind of failure: `--json` prints it beside the
    /// message, so pipelines can branch on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Header { .. } | Error::Tensor { .. } => "invalid-input",
            Error::Plan(_) => "plan",
            Error::Recipe { .. } => "recipe",
            Error::Output { .. } => "output",
            Error::Usage(_) => "usage",
            Error::Weights(_) => "weights",
            Error::Resources(_) => "resources",
            Error::Interrupted | Error::InterruptedWhile(_) => "interrupted",
        }
    }

    pub(crate) fn io(path: &Path, cause: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            cause,
        }
    }

    pub(crate) fn header(path: &Path, reason: impl Into<String>) -> Self {
        Error::Header {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    pub(crate) fn tensor(path: &Path, tensor: &str, reason: impl Into<String>) -> Self {
        Error::Tensor {
            path: path.to_path_buf(),
            tensor: printable(tensor),
            reason: reason.into(),
        }
    }

    pub(crate) fn output(path: &Path, reason: impl Into<String>) -> Self {
        Error::Output {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Tensor names come from untrusted files: escape anything that could break a one-line message.
pub fn printable(name: &str) -> String {
    name.escape_debug().to_string()
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
