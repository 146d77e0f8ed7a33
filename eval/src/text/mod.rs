//! Language models' side of evaluation: tokenisation ([`tokenizer`]), text data read into token sequences ([`data`], [`records`]), padded batches and per-token statistics ([`tokens`]), and the language-modelling and multiple-choice metrics ([`metrics`]).

pub mod data;
pub mod metrics;
pub mod records;
pub mod tokenizer;
pub mod tokens;

pub use data::{TextData, TextOptions, TokenModel};
pub use tokenizer::TextTokenizer;
pub use tokens::TokenStats;
