//! Evaluate checkpoints and soups with candle: models, datasets, scores, greedy search, ensembles, reports.
//!
//! The pieces, each in its own file: [`arch`] (the `--arch` registry), [`dataset`] (with
//! [`images`] and [`transform`] for image data), [`device`] (`--device`), [`weights`]
//! (tensors and the greedy running sum, on the device), [`evaluator`] (batched forward
//! passes, with [`batch_memory`] bounding one batch's inputs), [`score`], [`greedy`] (the search, apart from how candidates are built),
//! [`ensemble`], [`session`] (one run over ingredients and splits), [`report`] and [`plot`]
//! (the outputs), and [`cli`] (`soup-eval`'s flags and commands).
//!
//! With `--scorer`, an external command scores instead of the built-in models: [`scorer`] (the
//! command template, running it, reading its score), [`candidate`] (candidate soups on disk),
//! [`search_log`] (the `--log`/`--resume` JSON Lines file), [`external`] (parallel scoring and
//! the search) and [`scorer_cli`] (the flags). [`shell`] quotes paths for scripts and for the
//! commands that messages show.

pub mod arch;
pub mod batch_memory;
pub mod candidate;
pub mod cli;
pub mod dataset;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod evaluator;
pub mod external;
pub mod greedy;
pub mod images;
pub mod plot;
pub mod preprocessor;
pub mod report;
pub mod score;
pub mod scorer;
pub mod scorer_cli;
pub mod search_log;
pub mod session;
pub mod shell;
pub mod text;
pub mod transform;
pub mod weights;

pub use error::{Error, Result};
