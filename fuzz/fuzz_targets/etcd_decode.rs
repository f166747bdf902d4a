#![no_main]
//! The `etcd_decode` target: see `harness::etcd_decode`.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::etcd_decode::run(data));
