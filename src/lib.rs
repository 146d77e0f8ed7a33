//! model-soup: validate and merge safetensors checkpoints. The evaluator is the `soup-eval`
//! crate in `eval/`, kept apart so that this crate never links candle.

pub mod error;
pub mod format;
pub mod json_path;
pub mod soup;

pub use error::{Error, Result};
pub mod cli;
