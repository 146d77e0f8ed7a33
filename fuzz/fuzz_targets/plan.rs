//! libFuzzer target: two fuzzed files planned and merged in memory (see `check::plan`).
#![no_main]

#[path = "../check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|input: &[u8]| check::plan(input));
