//! model-soup: validate, merge and evaluate safetensors checkpoints.

pub mod error;
pub mod format;
pub mod soup;

pub use error::{Error, Result};
pub mod cli;
