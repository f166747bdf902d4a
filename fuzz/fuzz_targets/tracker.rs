#![no_main]
//! The `tracker` target: see `harness::tracker`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::tracker::run(data));
