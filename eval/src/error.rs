//! The evaluator's error type: every variant names the file, and the tensor where there is one.

use std::path::PathBuf;

/// Everything that can go wrong while loading models and data or evaluating them.
///
/// Messages are one line, lowercase, and say what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, validating or merging checkpoints (the core's error).
    #[error(transparent)]
    Format(#[from] model_soup::Error),

    /// A checkpoint that doesn't fit the chosen architecture.
    #[error("{}: tensor '{tensor}' {reason}; it doesn't fit --arch {arch}", path.display())]
    Arch {
        path: PathBuf,
        tensor: String,
        arch: String,
        reason: String,
    },

    /// `--arch VARIANT` named a standard variant the checkpoint is not.
    #[error("{}: --arch {asked} asked for a standard {family}, but the checkpoint is {found}; pass --arch {family} to accept its own configuration", path.display())]
    Variant {
        path: PathBuf,
        asked: String,
        found: String,
        family: &'static str,
    },

    /// A model the built-in scoring can't score: a regression or reward head (one output,
    /// whose softmax is 1 whatever the input, or `config.json`'s `problem_type` regression),
    /// or a multi-label head.
    #[error("{}: tensor '{tensor}' {reason}; soup-eval scores single-label classifiers of 2 or more classes (score other models with --scorer COMMAND)", path.display())]
    Head {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// `--arch auto` recognised no family: `listed` holds the classes `config.json` names,
    /// when it names any (a class no family reads, such as a task head soup-eval lacks).
    /// `hint` says what to do when the checkpoint is recognisably not a plain state dict (a
    /// wrapper's prefix, a LoRA adapter).
    #[error("{}", detect_message(path, known, listed, hint.as_deref()))]
    Detect {
        path: PathBuf,
        known: String,
        listed: Vec<String>,
        hint: Option<String>,
    },

    /// A bad `--arch-option`.
    #[error("bad --arch-option '{option}': {reason}")]
    Option { option: String, reason: String },

    /// A dataset file without the expected tensors, shapes or labels.
    #[error("{}: {reason}", path.display())]
    Dataset { path: PathBuf, reason: String },

    /// `--arch` names no registered architecture.
    #[error("unknown architecture '{name}'; --arch takes one of: {known}")]
    UnknownArch { name: String, known: String },

    /// A bad `--device`, or one this build can't use.
    #[error("{0}")]
    Device(String),

    /// Nothing to evaluate.
    #[error("no checkpoints: give at least one .safetensors ingredient")]
    NoIngredients,

    /// A candle operation failed while building or running a model.
    #[error("{context}: {}", candle_message(cause))]
    Candle {
        context: String,
        /// Not the error's `source`: the message already holds its text, and an error chain
        /// printed whole (`{:#}`) would repeat it, with candle's backtrace.
        cause: candle_core::Error,
    },

    /// Writing an output such as the plot.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `--scorer` template (or `--scorer-json` path, `flag` naming which) that can't be used.
    #[error("{flag} {template:?}: {reason}")]
    Template {
        flag: &'static str,
        template: String,
        reason: String,
    },

    /// The scorer could not be started at all.
    #[error("cannot start the scorer `{command}`: {source}; check that the program exists and is executable (or pass --shell)")]
    ScorerStart {
        command: String,
        #[source]
        source: std::io::Error,
    },

    /// A scorer run that gave no score.
    #[error("the scorer `{command}` {problem}; {}", if stderr.is_empty() { "its stderr was empty".to_string() } else { format!("the end of its stderr: {stderr}") })]
    Scorer {
        command: String,
        problem: String,
        stderr: String,
        /// The exit status, `None` when it was killed (a timeout, a signal) or stopped.
        exit_status: Option<i32>,
        /// Wall seconds of the failed run.
        seconds: f64,
    },

    /// A `--log` or `--resume` file that can't be used.
    #[error("{}: {reason}", path.display())]
    Log { path: PathBuf, reason: String },

    /// Drawing the plot.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
}

/// One line for a candle error, without the backtrace candle attaches when RUST_BACKTRACE is
/// set: an error message says what went wrong, not where in candle.
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    let text = match e {
        E::WithBacktrace { inner, .. } => return candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    };
    model_soup::cli::one_line(&text)
}

impl Error {
    /// A stable, machine-readable name for the kind of failure, printed by `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Format(inner) => inner.kind(),
            Error::Arch { .. } => "arch",
            Error::Dataset { .. } => "dataset",
            Error::UnknownArch { .. } | Error::Variant { .. } | Error::Option { .. } => "usage",
            Error::Detect { .. } | Error::Head { .. } => "arch",
            Error::Device(_) => "device",
            Error::NoIngredients => "usage",
            Error::Candle { .. } => "model",
            Error::Io { .. } => "io",
            Error::Plot(_) => "plot",
            Error::Template { .. } => "usage",
            Error::ScorerStart { .. } | Error::Scorer { .. } => "scorer",
            Error::Log { .. } => "log",
        }
    }
}

/// The evaluator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to candle's errors.
pub(crate) trait CandleContext<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CandleContext<T> for candle_core::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|cause| Error::Candle {
            context: context(),
            cause,
        })
    }
}

/// Returns a usage error from the enclosing function: a flag's value, or a combination of
/// flags, that is wrong but was only found after parsing. Its `--json` kind is `usage`, as
/// soup-merge's are, not `other`.
macro_rules! usage {
    ($($message:tt)*) => {
        return Err(usage_error(format!($($message)*)))
    };
}
pub(crate) use usage;

/// The error [`usage!`] returns, for `map_err`.
pub(crate) fn usage_error(message: String) -> anyhow::Error {
    model_soup::Error::Usage(message).into()
}

fn detect_message(
    path: &std::path::Path,
    known: &str,
    listed: &[String],
    hint: Option<&str>,
) -> String {
    if let Some(hint) = hint {
        format!(
            "{}: --arch auto recognises no architecture: {hint}",
            path.display()
        )
    } else if listed.is_empty() {
        format!("{}: --arch auto recognises no architecture from its tensor names (or config.json); pass --arch NAME, one of: {known}", path.display())
    } else {
        format!("{}: config.json's architectures lists {}, which no --arch family reads (README.md lists the model classes each family takes); score it with --scorer COMMAND", path.display(), listed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_errors_lose_their_backtrace_and_keep_their_context() {
        let inner = candle_core::Error::Msg("unsupported dtype BF16 for op matmul".into());
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let e = Error::Candle {
            context: "forward pass failed".into(),
            cause: traced.context("in conv1"),
        };
        let line = "forward pass failed: in conv1: unsupported dtype BF16 for op matmul";
        assert_eq!(e.to_string(), line);
        // The whole chain, as the binaries print it: candle's text once, without the trace.
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), line);
    }
}
