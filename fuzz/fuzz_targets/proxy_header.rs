#![no_main]
//! The `proxy_header` target: see `harness::proxy_header`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::proxy_header::run(data));
