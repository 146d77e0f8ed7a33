//! libFuzzer target: any bytes as a safetensors file (see `check::header`).
#![no_main]

#[path = "../check.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|file: &[u8]| check::header(file));
