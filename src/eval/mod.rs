//! Evaluate checkpoints and soups with candle: models, datasets, scores, greedy search, ensembles, reports.

pub mod arch;
