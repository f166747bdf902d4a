//! Tests of the session bookkeeping: pins, per-statement outcomes, statement ids.

use super::*;
use switchyard::wire::cmd;

const OK: Outcome = Outcome {
    error: false,
    results: 1,
};

fn run(s: &mut Session, sql: &str, outcome: Outcome) {
    let p = s.before_query(sql.as_bytes());
    s.after_query(p, outcome);
}

fn failed_after(results: u32) -> Outcome {
    Outcome {
        error: true,
        results,
    }
}

#[test]
fn a_failed_query_that_may_change_state_still_marks_the_session() {
    let mut s = Session::new();
    assert!(s.exact());
    run(&mut s, "SELECT 1", OK);
    assert!(s.exact());
    run(&mut s, "SET @a = 1; SELECT nope", failed_after(1));
    assert!(!s.exact());
    s.moved(Snapshot::login_defaults(), &[], false);
    assert!(s.exact());
    s.reset();
    assert!(!s.exact());
}

#[test]
fn blockers_follow_the_tracked_state() {
    let mut s = Session::new();
    assert_eq!(s.blocker(), None);
    s.set_status(status::AUTOCOMMIT | status::IN_TRANS);
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
    s.set_status(status::AUTOCOMMIT);
    run(&mut s, "CREATE TEMPORARY TABLE t (a int)", OK);
    assert_eq!(s.blocker(), Some(Pin::TemporaryTable));
    run(&mut s, "DROP TABLE t", OK);
    assert_eq!(s.blocker(), None);
    run(&mut s, "PREPARE p FROM 'bad sql'", failed_after(0));
    assert_eq!(s.sql_prepared().count(), 0);
    run(&mut s, "SET ROLE admin", OK);
    assert_eq!(s.blocker(), Some(Pin::Role));
    run(&mut s, "SET ROLE NONE", OK);
    s.lose("because");
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
    s.reset();
    assert_eq!(s.blocker(), None);
}

#[test]
fn inside_a_transaction_held_names_what_a_lost_transaction_cannot_take_along() {
    let mut s = Session::new();
    run(&mut s, "CREATE TEMPORARY TABLE t (a int)", OK);
    s.set_status(status::AUTOCOMMIT | status::IN_TRANS);
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
    assert_eq!(s.held(), Some(Pin::TemporaryTable));
    assert!(s.transaction_open() && s.autocommit());
    run(&mut s, "DROP TABLE t", OK);
    assert_eq!(s.held(), None);
    s.set_status(status::IN_TRANS);
    assert!(!s.autocommit());
}

#[test]
fn after_a_replay_the_carried_state_is_read_afresh_and_the_transaction_is_open() {
    let mut s = Session::new();
    s.moved(Snapshot::login_defaults(), &[], true);
    assert!(s.exact_state().is_some());
    s.replayed(Some(status::AUTOCOMMIT | status::IN_TRANS), false);
    assert!(s.exact_state().is_none() && !s.exact());
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
}

#[test]
fn the_transaction_state_follows_the_server_reports_and_a_failure_leaves_it_unverified() {
    let mut s = Session::new();
    s.server_reports([StateChange::TransactionState(b"I___W___")].into_iter());
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
    s.server_reports([StateChange::TransactionState(b"________")].into_iter());
    assert_eq!(s.blocker(), None);
    s.statement_ended(true);
    assert!(s.trx_unverified());
    s.verified(true);
    assert!(!s.trx_unverified());
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
}

#[test]
fn only_the_statements_that_ran_before_a_failure_take_effect() {
    let mut s = Session::new();
    // the lock was taken, the temporary table never created
    run(
        &mut s,
        "DO GET_LOCK('a', 0); SELECT nope; CREATE TEMPORARY TABLE t (a int)",
        failed_after(1),
    );
    assert_eq!(s.named_locks().len(), 1);
    assert_eq!(s.blocker(), None);
    run(
        &mut s,
        "CREATE TEMPORARY TABLE t (a int); DROP TABLE t",
        failed_after(1),
    );
    assert_eq!(s.blocker(), Some(Pin::TemporaryTable));
    // the scan found more statements than the server ran without an error
    let mut s = Session::new();
    run(&mut s, "SELECT 1; LOCK TABLES t READ", OK);
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
}

#[test]
fn nothing_inside_a_routine_definition_takes_effect() {
    let mut s = Session::new();
    run(&mut s, "DO GET_LOCK('held', 0)", OK);
    run(
        &mut s,
        "CREATE PROCEDURE p() BEGIN DO RELEASE_ALL_LOCKS(); DROP TABLE x; CREATE TEMPORARY TABLE y (a int); END",
        OK,
    );
    assert_eq!(s.named_locks().len(), 1, "the release is in the body");
    assert_eq!(s.blocker(), None, "so is the temporary table");
    // a definition followed by statements that ran: the proxy cannot place them
    run(
        &mut s,
        "CREATE VIEW v AS SELECT 1; CREATE TEMPORARY TABLE y (a int)",
        Outcome {
            error: false,
            results: 2,
        },
    );
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
}

#[test]
fn statements_the_proxy_cannot_see_into_pin_the_session_until_a_reset() {
    for sql in [
        "CALL p()",
        "BEGIN NOT ATOMIC DO GET_LOCK('x', 0); END",
        "EXECUTE IMMEDIATE @q",
        "EXECUTE never_prepared",
    ] {
        let mut s = Session::new();
        run(&mut s, sql, OK);
        assert_eq!(s.blocker(), Some(Pin::UnknownState), "{sql}");
        s.reset();
        assert_eq!(s.blocker(), None);
    }
    // a CALL that failed may have done things before failing; a transaction it opened is
    // named first, since a close at a safe point waits for it
    let mut s = Session::new();
    run(&mut s, "CALL p()", failed_after(0));
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
    s.verified(true);
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
}

#[test]
fn executing_a_prepared_text_applies_what_the_text_does() {
    let mut s = Session::new();
    run(&mut s, "PREPARE take FROM 'DO GET_LOCK(''job'', 0)'", OK);
    assert!(s.named_locks().is_empty());
    run(&mut s, "EXECUTE take", OK);
    assert!(s.named_locks().contains("job"));
    run(
        &mut s,
        "PREPARE tmp FROM 'CREATE TEMPORARY TABLE t (a int)'",
        OK,
    );
    run(&mut s, "EXECUTE tmp", OK);
    assert_eq!(s.blocker(), Some(Pin::TemporaryTable));
    run(&mut s, "PREPARE c FROM 'CALL p()'", OK);
    run(&mut s, "EXECUTE c", OK);
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
    // binary: prepared through COM_STMT_PREPARE, run by COM_STMT_EXECUTE
    let mut s = Session::new();
    let id = s.add_stmt(4, b"SELECT GET_LOCK('bin', 0)".to_vec(), 0, 1);
    assert!(s.named_locks().is_empty());
    s.stmt_ran(id, false);
    assert!(s.named_locks().contains("bin"));
    let call = s.add_stmt(5, b"CALL p(?)".to_vec(), 1, 0);
    s.stmt_ran(call, false);
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
}

#[test]
fn statement_ids_survive_a_reset_without_naming_old_statements() {
    let mut s = Session::new();
    let first = s.add_stmt(10, b"SELECT 1".to_vec(), 0, 1);
    s.stmt_long_data(first);
    assert_eq!(s.blocker(), Some(Pin::LongData));
    s.reset();
    assert_eq!(s.blocker(), None);
    assert_eq!(s.stmts().count(), 0);
    let second = s.add_stmt(10, b"SELECT 1".to_vec(), 0, 1);
    assert_ne!(first, second);
    let mut close = [cmd::STMT_CLOSE, 0, 0, 0, 0];
    close[1..].copy_from_slice(&first.to_le_bytes());
    assert_eq!(s.map_stmt(&mut close), Err(UnknownStmt(first)));
}

#[test]
fn a_move_re_maps_statement_ids_and_starts_from_the_carried_state() {
    let mut s = Session::new();
    s.mark_changed();
    assert!(!s.exact());
    let id = s.add_stmt(3, b"SELECT ?".to_vec(), 1, 1);
    s.moved(Snapshot::login_defaults(), &[(id, 8)], true);
    assert!(s.exact() && s.tracking());
    let mut p = [cmd::STMT_CLOSE, 0, 0, 0, 0];
    p[1..].copy_from_slice(&id.to_le_bytes());
    assert_eq!(s.map_stmt(&mut p), Ok(id));
    assert_eq!(p[1..], 8u32.to_le_bytes());
}

/// Runs `sql` as the server would: every statement succeeds, or the last one fails after
/// the ones before it ran.
fn query(s: &mut Session, sql: &str, error: bool, status_after: u16) {
    let p = s.before_query(sql.as_bytes());
    let ran = u32::try_from(p.statements()).unwrap();
    if !error {
        s.set_status(status_after);
    }
    let results = if error { ran - 1 } else { ran };
    s.after_query(p, Outcome { error, results });
}

const IDLE: u16 = status::AUTOCOMMIT;
const IN_TRANS: u16 = status::AUTOCOMMIT | status::IN_TRANS;
const ONE_SHOT: Option<Pin> = Some(Pin::OneShotTransaction);

#[test]
fn a_one_shot_set_transaction_waits_until_a_transaction_settles_it() {
    // issue 9.6: a move between `SET TRANSACTION READ ONLY` and `BEGIN` lost it
    let mut s = Session::new();
    query(
        &mut s,
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        false,
        IDLE,
    );
    assert_eq!(s.blocker(), ONE_SHOT);
    // statements that may leave it pending keep the wait
    for sql in ["SELECT 1", "SET @a = 1", "SELECT * FROM t", "USE app"] {
        query(&mut s, sql, false, IDLE);
        assert_eq!(s.blocker(), ONE_SHOT, "{sql}");
    }
    query(&mut s, "START TRANSACTION", false, IN_TRANS);
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
    query(&mut s, "COMMIT", false, IDLE);
    assert_eq!(s.blocker(), None);
    // scoped forms change a carried variable instead
    query(&mut s, "SET SESSION TRANSACTION READ ONLY", false, IDLE);
    assert_eq!(s.blocker(), None);
    // a failed one-shot did not happen; COMMIT and ROLLBACK settle one
    query(&mut s, "SET TRANSACTION READ ONLY", true, IDLE);
    assert_eq!(s.blocker(), None);
    for end in ["COMMIT", "rollback", "BEGIN WORK"] {
        query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
        query(&mut s, end, false, IDLE);
        assert_eq!(s.blocker(), None, "{end}");
    }
    // a transaction opened by autocommit=0 takes it
    query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
    query(&mut s, "SELECT * FROM t", false, status::IN_TRANS);
    query(&mut s, "COMMIT", false, 0);
    assert_eq!(s.blocker(), None);
}

#[test]
fn closing_waits_for_a_transaction_or_long_data_but_not_for_a_one_shot() {
    let mut s = Session::new();
    query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
    assert_eq!(s.blocker(), ONE_SHOT);
    assert!(!s.closing_waits());
    query(&mut s, "BEGIN", false, IN_TRANS);
    assert!(s.closing_waits());
    query(&mut s, "COMMIT", false, IDLE);
    let id = s.add_stmt(1, b"SELECT ?".to_vec(), 1, 1);
    s.stmt_long_data(id);
    assert!(s.closing_waits());
    s.stmt_executed(id, false, IDLE);
    assert!(!s.closing_waits());
}

#[test]
fn a_failed_multi_statement_query_applies_only_the_statements_before_the_failure() {
    let mut s = Session::new();
    query(&mut s, "SET TRANSACTION READ ONLY; SELECT nope", true, IDLE);
    assert_eq!(s.blocker(), ONE_SHOT, "the one-shot ran before the failure");
    query(&mut s, "SELECT nope; COMMIT", true, IDLE);
    assert_eq!(
        s.blocker(),
        ONE_SHOT,
        "a COMMIT that failed settled nothing"
    );
    query(&mut s, "COMMIT; SELECT nope", true, IDLE);
    assert_eq!(s.blocker(), None, "COMMIT before the failure settled it");
    query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
    query(&mut s, "SET TRANSACTION READ ONLY; BEGIN", false, IN_TRANS);
    query(&mut s, "COMMIT", false, IDLE);
    assert_eq!(s.blocker(), None);
    // and `BEGIN`/`COMMIT` alone in a failed multi-statement query never pin a session
    query(
        &mut s,
        "BEGIN; INSERT INTO t VALUES (1); SELECT nope",
        true,
        IDLE,
    );
    assert_eq!(s.unknown_because(), None);
}

#[test]
fn set_option_is_kept_for_the_target_and_survives_a_reset() {
    let mut s = Session::new();
    assert_eq!(s.option_to_restore(), None);
    s.set_option(MULTI_STATEMENTS_ON);
    s.set_option(7);
    assert_eq!(s.option_to_restore(), Some(MULTI_STATEMENTS_ON));
    s.reset();
    s.set_option(MULTI_STATEMENTS_OFF);
    s.reset();
    assert_eq!(s.option_to_restore(), Some(MULTI_STATEMENTS_OFF));
}

#[test]
fn a_query_too_long_to_scan_pins_the_session_only_when_it_may_have_effects() {
    let long = |tail: &str| {
        let mut q = String::from("INSERT INTO t VALUES ('");
        q.push_str(&"x".repeat(super::super::scan::SCAN_MAX));
        q.push_str("')");
        q.push_str(tail);
        q
    };
    let mut s = Session::new();
    query(&mut s, &long(""), false, IDLE);
    assert_eq!(s.blocker(), None);
    assert!(!s.exact(), "unscanned: carried state is read in full");
    query(
        &mut s,
        &long("; CREATE TEMPORARY TABLE tt (a int)"),
        false,
        IDLE,
    );
    assert_eq!(s.blocker(), Some(Pin::UnknownState));
    assert_eq!(s.unknown_because(), Some(UNSCANNED));
}

#[test]
fn a_savepoint_under_autocommit_0_holds_the_session_until_the_transaction_ends() {
    // found by the differential tester (seed 2888): `SET autocommit = 0; SAVEPOINT sp1` leaves
    // a savepoint the server keeps while reporting no transaction; a move lost it and the next
    // `ROLLBACK TO SAVEPOINT sp1` failed with 1305
    let mut s = Session::new();
    query(&mut s, "SET autocommit = 0", false, 0);
    query(&mut s, "SAVEPOINT sp1", false, 0);
    assert_eq!(s.blocker(), Some(Pin::InTransaction));
    assert!(s.closing_waits());
    query(&mut s, "ROLLBACK TO SAVEPOINT sp1", false, 0);
    assert_eq!(
        s.blocker(),
        Some(Pin::InTransaction),
        "ROLLBACK TO ends nothing"
    );
    query(&mut s, "ROLLBACK", false, 0);
    assert_eq!(s.blocker(), None);
    query(&mut s, "SAVEPOINT sp2; SELECT 1", false, 0);
    query(&mut s, "COMMIT", false, 0);
    assert_eq!(s.blocker(), None);
    // a failed SAVEPOINT made nothing; under autocommit = 1 one outside a transaction is gone
    // when its statement ends
    query(&mut s, "SAVEPOINT sp3", true, 0);
    assert_eq!(s.blocker(), None);
    query(&mut s, "SAVEPOINT sp4", false, IDLE);
    assert_eq!(s.blocker(), None);
}
