//! Replays every fuzz corpus (`fuzz/corpus/<target>/`) on stable through the same harness the
//! cargo-fuzz targets call, so each input the fuzzer kept, and each crash it found, stays a
//! regression test in a plain `cargo test`.
//!
//! Inputs that crash code awaiting a fix elsewhere are kept in `fuzz/regressions/<target>/` and
//! replayed only with `SWITCHYARD_FUZZ_REGRESSIONS=1` (see `fuzz/regressions/README.md`).

#[allow(dead_code)]
#[path = "../fuzz/harness.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The variable that turns on the replay of `fuzz/regressions/`.
const REGRESSIONS_VAR: &str = "SWITCHYARD_FUZZ_REGRESSIONS";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

/// Runs every file of `dir` through `run`; returns how many ran and the ones that panicked.
fn replay(dir: &Path, run: fn(&[u8])) -> (usize, Vec<String>) {
    let files = inputs(dir);
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(&data))) {
            let why = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failed.push(format!("{}: {why}", f.display()));
        }
    }
    (files.len(), failed)
}

/// Replays `fuzz/corpus/<name>/`, which must not be empty.
fn replay_corpus(name: &str) {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no harness entry for {name}"));
    let (n, failed) = replay(&fuzz_dir().join("corpus").join(name), *run);
    assert!(n > 0, "fuzz/corpus/{name} is empty or missing");
    assert!(
        failed.is_empty(),
        "corpus inputs failed:\n{}",
        failed.join("\n")
    );
}

// One test per target, so the replays run in parallel.

#[test]
fn the_packet_reader_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("packet_reader");
}

#[test]
fn the_tracker_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("tracker");
}

#[test]
fn the_scan_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("scan");
}

#[test]
fn the_handshake_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("handshake");
}

#[test]
fn the_etcd_decode_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("etcd_decode");
}

#[test]
fn the_proxy_header_corpus_replays_without_a_panic_or_a_broken_invariant() {
    replay_corpus("proxy_header");
}

#[test]
fn every_fuzz_target_has_a_harness_entry_and_a_replay_test() {
    let targets = inputs(&fuzz_dir().join("fuzz_targets"));
    let names: Vec<_> = targets
        .iter()
        .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
        .collect();
    let mut known: Vec<_> = harness::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    known.sort();
    let mut names = names;
    names.sort();
    assert_eq!(names, known, "fuzz_targets/ and harness::TARGETS differ");
    let this = include_str!("fuzz_corpora.rs");
    for name in &names {
        assert!(
            this.contains(&format!("replay_corpus(\"{name}\")")),
            "no replay test for {name}"
        );
    }
}

#[test]
fn known_crashes_replay_when_asked() {
    if std::env::var_os(REGRESSIONS_VAR).is_none_or(|v| v != "1") {
        eprintln!("skipping fuzz/regressions/: set {REGRESSIONS_VAR}=1 to replay them");
        return;
    }
    let mut failed = Vec::new();
    for (name, run) in harness::TARGETS {
        failed.extend(replay(&fuzz_dir().join("regressions").join(name), *run).1);
    }
    assert!(
        failed.is_empty(),
        "regressions still fail:\n{}",
        failed.join("\n")
    );
}

/// The bytes of a corpus input that once was a regression.
fn regression(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("corpus").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn a_greeting_that_sets_client_mysql_reads_its_salt_and_plugin_where_they_are() {
    let g = switchyard::wire::Greeting::parse(&regression(
        "handshake",
        "mysql-greeting-client-mysql-bit",
    ))
    .unwrap();
    assert_eq!(g.salt, b"abcdefghijklmnopqrst");
    assert_eq!(g.plugin, "caching_sha2_password");
}

#[test]
fn a_greeting_whose_version_is_not_utf8_reads_its_capabilities_where_they_are() {
    let g =
        switchyard::wire::Greeting::parse(&regression("handshake", "greeting-version-not-utf8"))
            .unwrap();
    assert_eq!(g.caps & 0xFFFF, 0xF7FE);
    assert_eq!(g.salt, b"abcdefghijklmnopqrst");
}
