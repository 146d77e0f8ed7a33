//! Language models' side of evaluation: tokenisation ([`tokenizer`]), text data read into token sequences ([`data`], [`records`]).

pub mod data;
pub mod records;
pub mod tokenizer;
