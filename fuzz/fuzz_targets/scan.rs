#![no_main]
//! The `scan` target: see `harness::scan`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::scan::run(data));
