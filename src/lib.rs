//! model-soup: validate, merge and evaluate safetensors checkpoints.

pub mod error;
pub mod format;
pub mod soup;

pub use error::{Error, Result};
pub mod cli;

/// The candle evaluator behind `soup-eval` (the `eval` cargo feature).
#[cfg(feature = "eval")]
pub mod eval;
