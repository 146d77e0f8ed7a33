//! libFuzzer target: any bytes as a sharded model's index file (see `check::index`).
#![no_main]

#[path = "../check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| check::index(bytes));
