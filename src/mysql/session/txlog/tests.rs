use proptest::prelude::*;
use switchyard::wire::{eof_payload, err_payload, put_lenenc, put_lenenc_str, status};

use super::*;

const MAX: usize = 1 << 20;

fn query(sql: &str) -> Vec<u8> {
    let mut p = vec![cmd::QUERY];
    p.extend_from_slice(sql.as_bytes());
    p
}

/// An OK payload as a server with session tracking writes it.
fn ok(
    affected: u64,
    insert_id: u64,
    flags: u16,
    warnings: u16,
    info: &[u8],
    state: &[u8],
) -> Vec<u8> {
    let mut p = vec![0];
    put_lenenc(&mut p, affected);
    put_lenenc(&mut p, insert_id);
    let flags = match state.is_empty() {
        true => flags,
        false => flags | status::SESSION_STATE_CHANGED,
    };
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&warnings.to_le_bytes());
    if !info.is_empty() || !state.is_empty() {
        put_lenenc_str(&mut p, info);
    }
    if !state.is_empty() {
        put_lenenc_str(&mut p, state);
    }
    p
}

fn sum_of(packets: &[(&[u8], Carrier)]) -> u64 {
    let mut s = AnswerSum::new();
    for (p, c) in packets {
        s.feed(p, *c);
    }
    s.finish()
}

fn start() -> Start {
    Ok(Snapshot::login_defaults())
}

/// What the relay tells the log after a command that left a transaction open (or not).
fn after(open: bool, payload: &[u8]) -> After {
    After {
        open,
        ends: false,
        class: classify(payload, false),
        len: payload.len(),
        pinned: None,
    }
}

/// Runs one recorded command through the log: recorded, answered with `answer`, settled.
fn run(log: &mut TxLog, payload: &[u8], start: Option<Start>, answer: &[u8], a: After) {
    log.record(payload.to_vec(), start);
    log.feed(answer, Carrier::Ok);
    log.settle(a);
}

/// A log with `BEGIN` and one `UPDATE` in it.
fn open_log() -> TxLog {
    let mut log = TxLog::new(true, MAX);
    let begin = query("BEGIN");
    run(
        &mut log,
        &begin,
        Some(start()),
        &ok(0, 0, 3, 0, b"", b""),
        after(true, &begin),
    );
    let update = query("UPDATE t SET a = 1");
    run(
        &mut log,
        &update,
        None,
        &ok(1, 0, 3, 0, b"", b""),
        after(true, &update),
    );
    log
}

#[test]
fn a_log_opens_with_its_transaction_and_keeps_each_command_and_the_checksum_of_its_answer() {
    let mut log = open_log();
    assert!(log.is_open() && log.replayable());
    let r = log.take_for_replay(false).unwrap();
    let entries: Vec<&[u8]> = r.entries().iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(entries, [query("BEGIN"), query("UPDATE t SET a = 1")]);
    let want = sum_of(&[(&ok(1, 0, 3, 0, b"", b""), Carrier::Ok)]);
    assert_eq!(r.entries()[1].checksum, want);
    assert!(r.rerun.is_none());
    log.resume(r);
    assert!(log.replayable(), "a replay that matched goes on logging");
}

#[test]
fn the_log_is_forgotten_when_its_transaction_ends() {
    let mut log = open_log();
    let commit = query("COMMIT");
    run(
        &mut log,
        &commit,
        None,
        &ok(0, 0, 2, 0, b"", b""),
        After {
            ends: true,
            ..after(false, &commit)
        },
    );
    assert!(!log.is_open());
    let mut log = open_log();
    let rollback = query("ROLLBACK");
    run(
        &mut log,
        &rollback,
        None,
        &ok(0, 0, 2, 0, b"", b""),
        after(false, &rollback),
    );
    assert!(!log.is_open());
    let mut log = open_log();
    log.clear();
    assert!(!log.is_open() && !log.recording());
}

#[test]
fn a_transaction_that_began_inside_a_committing_command_is_not_replayable() {
    // `COMMIT; UPDATE …` under autocommit = 0: the new transaction began mid-command
    let mut log = open_log();
    let both = query("COMMIT; UPDATE t SET a = 2");
    log.settle(After {
        ends: true,
        ..after(true, &both)
    });
    assert!(log.is_open() && !log.replayable());
    assert_eq!(
        log.take_for_replay(false).unwrap_err(),
        NotReplayable::Unreplayable(UNRECORDED_START)
    );
    // a lone BEGIN inside a transaction commits it and starts a fresh, replayable log
    let mut log = open_log();
    let begin = query("BEGIN");
    run(
        &mut log,
        &begin,
        Some(start()),
        &ok(0, 0, 3, 0, b"", b""),
        After {
            ends: true,
            ..after(true, &begin)
        },
    );
    let r = log.take_for_replay(false).unwrap();
    assert_eq!(r.entries().len(), 1);
}

#[test]
fn past_max_replay_bytes_the_log_drops_its_contents_and_keeps_counting() {
    let mut log = TxLog::new(true, 64);
    let begin = query("BEGIN");
    run(
        &mut log,
        &begin,
        Some(start()),
        &ok(0, 0, 3, 0, b"", b""),
        after(true, &begin),
    );
    assert!(log.replayable());
    let big = query(&format!("UPDATE t SET a = '{}'", "x".repeat(40)));
    run(
        &mut log,
        &big,
        None,
        &ok(1, 0, 3, 0, b"", b""),
        after(true, &big),
    );
    assert_eq!(log.refused(), Some(&NotReplayable::Overflow));
    let counted = log.bytes();
    // an overflowed log records nothing more, but counts
    let next = query("SELECT 1");
    log.settle(after(true, &next));
    assert!(log.bytes() > counted);
    assert_eq!(log.refused(), Some(&NotReplayable::Overflow));
    assert_eq!(
        log.take_for_replay(false).unwrap_err(),
        NotReplayable::Overflow
    );
}

#[test]
fn commands_a_replay_cannot_repeat_make_the_transaction_unreplayable() {
    let mut execute_cursor = vec![cmd::STMT_EXECUTE, 1, 0, 0, 0, 1];
    execute_cursor.extend_from_slice(&1u32.to_le_bytes());
    for (payload, continued) in [
        (query("UPDATE t SET a = 1"), true),
        (
            vec![cmd::STMT_SEND_LONG_DATA, 1, 0, 0, 0, 0, 0, b'x'],
            false,
        ),
        (vec![cmd::STMT_FETCH, 1, 0, 0, 0, 1, 0, 0, 0], false),
        (execute_cursor, false),
        (vec![cmd::INIT_DB, b'd'], false),
        (vec![cmd::FIELD_LIST, b't', 0], false),
        (vec![cmd::SET_OPTION, 0, 0], false),
        (vec![cmd::CHANGE_USER, b'u', 0], false),
    ] {
        let mut log = open_log();
        assert!(
            matches!(classify(&payload, continued), Class::Unreplayable(_)),
            "{payload:?}"
        );
        log.settle(After {
            class: classify(&payload, continued),
            ..after(true, &payload)
        });
        assert!(
            matches!(log.refused(), Some(NotReplayable::Unreplayable(_))),
            "{payload:?}"
        );
    }
    // LOAD DATA LOCAL INFILE: the server asks for the file mid-answer
    let mut log = open_log();
    let load = query("LOAD DATA LOCAL INFILE 'f' INTO TABLE t");
    log.record(load.clone(), None);
    log.refuse_current("LOAD DATA LOCAL INFILE");
    log.settle(after(true, &load));
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable("LOAD DATA LOCAL INFILE"))
    );
    // closing a statement the transaction executed
    let mut log = open_log();
    let mut execute = vec![cmd::STMT_EXECUTE];
    execute.extend_from_slice(&7u32.to_le_bytes());
    execute.extend_from_slice(&[0, 1, 0, 0, 0]);
    run(
        &mut log,
        &execute,
        None,
        &ok(1, 0, 3, 0, b"", b""),
        after(true, &execute),
    );
    log.closed_stmt(8);
    assert!(log.replayable(), "another statement");
    log.closed_stmt(7);
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable(CLOSED_STMT))
    );
}

#[test]
fn harmless_commands_are_left_out_and_a_statement_not_recorded_is_refused() {
    let mut log = open_log();
    for payload in [
        vec![cmd::PING],
        vec![cmd::STMT_PREPARE, b'S'],
        vec![cmd::STMT_CLOSE, 1, 0, 0, 0],
        vec![cmd::STMT_RESET, 1, 0, 0, 0],
    ] {
        assert_eq!(classify(&payload, false), Class::Harmless);
        log.settle(after(true, &payload));
    }
    assert!(log.replayable());
    assert_eq!(log.take_for_replay(false).unwrap().entries().len(), 2);
    let mut log = open_log();
    let select = query("SELECT 1");
    log.settle(after(true, &select));
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable(UNRECORDED))
    );
}

#[test]
fn a_transaction_begun_from_an_unknown_or_pinned_state_is_not_replayable() {
    let mut log = TxLog::new(true, MAX);
    let begin = query("BEGIN");
    run(
        &mut log,
        &begin,
        Some(Err("not exact")),
        &ok(0, 0, 3, 0, b"", b""),
        after(true, &begin),
    );
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable("not exact"))
    );
    let mut log = TxLog::new(true, MAX);
    run(
        &mut log,
        &begin,
        Some(start()),
        &ok(0, 0, 3, 0, b"", b""),
        After {
            pinned: Some("a temporary table"),
            ..after(true, &begin)
        },
    );
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable("a temporary table"))
    );
    // a transaction that began unrecorded (no start)
    let mut log = TxLog::new(true, MAX);
    let call = query("CALL p()");
    log.settle(after(true, &call));
    assert_eq!(
        log.refused(),
        Some(&NotReplayable::Unreplayable(UNRECORDED_START))
    );
}

#[test]
fn nothing_is_recorded_or_kept_when_replay_is_off() {
    let mut log = TxLog::new(false, MAX);
    let begin = query("BEGIN");
    run(
        &mut log,
        &begin,
        Some(start()),
        &ok(0, 0, 3, 0, b"", b""),
        after(true, &begin),
    );
    assert!(!log.recording() && !log.is_open() && !log.enabled());
    assert!(log.take_for_replay(false).is_err());
}

#[test]
fn a_statement_in_flight_is_replayed_after_the_log_or_from_the_state_it_began_from() {
    let mut log = open_log();
    let select = query("SELECT a FROM t");
    log.record(select.clone(), None);
    log.feed(b"\x01", Carrier::None);
    let r = log.take_for_replay(true).unwrap();
    assert_eq!(r.entries().len(), 2);
    assert_eq!(r.rerun.as_deref(), Some(select.as_slice()));
    // autocommit off, no transaction yet: the statement in flight was to begin one
    let mut log = TxLog::new(true, MAX);
    let update = query("UPDATE t SET a = 1");
    log.record(update.clone(), Some(start()));
    let mut r = log.take_for_replay(true).unwrap();
    assert!(r.entries().is_empty());
    assert_eq!(r.rerun.take().as_deref(), Some(update.as_slice()));
    log.resume(r);
    assert!(
        !log.is_open(),
        "the transaction begins when the statement runs again"
    );
    // a statement in flight that was not recorded cannot be run again
    let mut log = open_log();
    assert_eq!(
        log.take_for_replay(true).unwrap_err(),
        NotReplayable::Unreplayable(IN_FLIGHT_UNRECORDED)
    );
}

#[test]
fn answers_that_differ_only_in_status_flags_or_session_state_have_one_checksum() {
    let a = sum_of(&[(&ok(1, 0, 0x0003, 0, b"Rows matched: 1", b""), Carrier::Ok)]);
    let b = sum_of(&[(
        &ok(1, 0, 0x0001, 0, b"Rows matched: 1", b"\x05\x09\x08T_______"),
        Carrier::Ok,
    )]);
    assert_eq!(a, b);
    let rows = |eof_flags: u16| {
        sum_of(&[
            (b"\x01", Carrier::None),
            (b"\x03def\x00\x00\x00\x01a\x00", Carrier::None),
            (&eof_payload(0, eof_flags), Carrier::Eof),
            (b"\x011", Carrier::None),
            (&eof_payload(0, eof_flags | 0x0008), Carrier::Eof),
        ])
    };
    assert_eq!(rows(0x0002), rows(0x4003));
}

#[test]
fn answers_that_differ_in_what_the_client_reads_have_other_checksums() {
    let base = ok(1, 5, 3, 0, b"info", b"");
    let mut sums = vec![
        sum_of(&[(&base, Carrier::Ok)]),
        sum_of(&[(&ok(2, 5, 3, 0, b"info", b""), Carrier::Ok)]),
        sum_of(&[(&ok(1, 6, 3, 0, b"info", b""), Carrier::Ok)]),
        sum_of(&[(&ok(1, 5, 3, 1, b"info", b""), Carrier::Ok)]),
        sum_of(&[(&ok(1, 5, 3, 0, b"infp", b""), Carrier::Ok)]),
        sum_of(&[(&eof_payload(1, 2), Carrier::Eof)]),
        sum_of(&[(&eof_payload(2, 2), Carrier::Eof)]),
        sum_of(&[(b"\x011", Carrier::None)]),
        sum_of(&[(b"\x012", Carrier::None)]),
        sum_of(&[(b"\x011", Carrier::None), (b"\x011", Carrier::None)]),
        sum_of(&[(
            &err_payload(1062, "23000", "Duplicate entry '1'"),
            Carrier::None,
        )]),
        sum_of(&[(
            &err_payload(1062, "23000", "Duplicate entry '2'"),
            Carrier::None,
        )]),
        sum_of(&[(&err_payload(1213, "40001", "Deadlock"), Carrier::None)]),
    ];
    let n = sums.len();
    sums.sort_unstable();
    sums.dedup();
    assert_eq!(sums.len(), n, "two different answers had one checksum");
}

proptest! {
    #[test]
    fn an_ok_checksum_follows_its_fields_and_nothing_else(
        affected in any::<u64>(), insert_id in any::<u64>(), warnings in any::<u16>(),
        info in proptest::collection::vec(any::<u8>(), 0..40),
        flags1 in any::<u16>(), flags2 in any::<u16>(),
        state in proptest::collection::vec(any::<u8>(), 0..20),
        other in any::<u64>(),
    ) {
        let a = sum_of(&[(&ok(affected, insert_id, flags1 & !status::SESSION_STATE_CHANGED, warnings, &info, b""), Carrier::Ok)]);
        let b = sum_of(&[(&ok(affected, insert_id, flags2, warnings, &info, &state), Carrier::Ok)]);
        prop_assert_eq!(a, b);
        if other != affected {
            let c = sum_of(&[(&ok(other, insert_id, flags1, warnings, &info, b""), Carrier::Ok)]);
            prop_assert_ne!(a, c);
        }
    }

    #[test]
    fn the_log_keeps_every_command_under_its_bound_and_counts_past_it(
        sizes in proptest::collection::vec(1usize..200, 1..30),
        max in 0usize..3000,
    ) {
        let mut log = TxLog::new(true, max);
        let begin = query("BEGIN");
        let mut total = begin.len() + ENTRY_OVERHEAD;
        run(&mut log, &begin, Some(start()), &ok(0, 0, 3, 0, b"", b""), after(true, &begin));
        for (i, n) in sizes.iter().enumerate() {
            let q = query(&"x".repeat(*n));
            if log.replayable() {
                log.record(q.clone(), None);
                log.feed(&ok(i as u64, 0, 3, 0, b"", b""), Carrier::Ok);
            }
            log.settle(after(true, &q));
            total += q.len() + ENTRY_OVERHEAD;
        }
        prop_assert_eq!(log.bytes(), total);
        match log.take_for_replay(false) {
            Ok(r) => {
                prop_assert!(total <= max);
                prop_assert_eq!(r.entries().len(), sizes.len() + 1);
                for (e, n) in r.entries().iter().skip(1).zip(&sizes) {
                    prop_assert_eq!(e.payload.len(), n + 1);
                }
            }
            Err(e) => {
                prop_assert!(total > max);
                prop_assert_eq!(e, NotReplayable::Overflow);
            }
        }
    }
}
