#![no_main]
//! The `handshake` target: see `harness::handshake`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::handshake::run(data));
