#![no_main]
//! The `packet_reader` target: see `harness::packet_reader`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::packet_reader::run(data));
