//! Evaluate checkpoints and soups with candle: models, datasets, scores, greedy search, ensembles, reports.
//!
//! The pieces, each in its own file: [`arch`] (the `--arch` registry), [`dataset`],
//! [`weights`] (tensors and the greedy running sum, on the device), [`evaluator`] (batched forward
//! passes), [`score`], [`greedy`] (the search, apart from how candidates are built),
//! [`ensemble`], [`session`] (one run over ingredients and splits), [`report`] and [`plot`]
//! (the outputs), and [`cli`] (`soup-eval`'s flags and commands).

pub mod arch;
pub mod cli;
pub mod dataset;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod evaluator;
pub mod greedy;
pub mod plot;
pub mod report;
pub mod score;
pub mod session;
pub mod weights;

pub use error::{Error, Result};
