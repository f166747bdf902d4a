//! The score table on its own: no actors, no runtime, time passed in by hand.
//!
//! Connections are [`Link`]s that record the redirects they are asked for and answer with
//! whatever delivery the test sets. Every helper checks the table's invariants after its step.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::error::InvariantError;

/// What the links of one table share: the redirects asked, and per-connection answers.
#[derive(Debug, Default)]
struct Wire {
    asked: Vec<(u64, String)>,
    closed: Vec<u64>,
    answers: HashMap<u64, Delivery>,
}

/// A connection as the table sees it.
#[derive(Debug)]
struct Link {
    id: u64,
    wire: Rc<RefCell<Wire>>,
}

impl ConnLink for Link {
    fn id(&self) -> u64 {
        self.id
    }

    fn redirect(&self, to: BackendInst) -> Delivery {
        let mut wire = self.wire.borrow_mut();
        let answer = wire
            .answers
            .get(&self.id)
            .copied()
            .unwrap_or(Delivery::Sent);
        if answer == Delivery::Sent {
            wire.asked.push((self.id, to.addr().to_string()));
        }
        answer
    }

    fn close(&self, _reason: &str) -> Delivery {
        let mut wire = self.wire.borrow_mut();
        let answer = wire
            .answers
            .get(&self.id)
            .copied()
            .unwrap_or(Delivery::Sent);
        if answer == Delivery::Sent {
            wire.closed.push(self.id);
        }
        answer
    }
}

struct Harness {
    table: ScoreTable<Link>,
    wire: Rc<RefCell<Wire>>,
    next_id: u64,
    now: Instant,
}

const BACKOFF: Duration = Duration::from_secs(3);

/// Backends `a` (down) and `b`, one connection each; the one on `a` is asked to move to `b`.
/// Returns its id.
fn redirecting_off_a_dead_backend() -> (Harness, u64) {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(2);
    h.down("a");
    assert_eq!(h.rebalance(10), 1);
    let asked = h.asked();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].1, "b");
    (h, asked[0].0)
}

fn harness() -> Harness {
    Harness {
        table: ScoreTable::new(RouterConfig {
            rebalance_interval: Duration::ZERO,
            redirect_fail_backoff: BACKOFF,
            ..RouterConfig::default()
        }),
        wire: Rc::default(),
        next_id: 1,
        now: Instant::now(),
    }
}

impl Harness {
    fn ok(&self) {
        if let Err(e) = self.table.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }

    fn report(&mut self, backends: &[(&str, BackendHealth)]) {
        let backends = backends
            .iter()
            .map(|(a, h)| (a.to_string(), h.clone()))
            .collect();
        self.table.backends_changed(backends, None, self.now);
        self.ok();
    }

    fn healthy(&mut self, addrs: &[&str]) {
        let all: Vec<(&str, BackendHealth)> = addrs
            .iter()
            .map(|a| (*a, BackendHealth::healthy()))
            .collect();
        self.report(&all);
    }

    fn down(&mut self, addr: &str) {
        self.report(&[(addr, BackendHealth::down("test"))]);
    }

    fn link(&mut self) -> Link {
        let id = self.next_id;
        self.next_id += 1;
        Link {
            id,
            wire: self.wire.clone(),
        }
    }

    /// Routes and registers a connection; returns its id and backend.
    fn connect(&mut self) -> (u64, String) {
        let inst = self.table.route(&[], self.now).expect("a backend");
        let link = self.link();
        let id = link.id;
        self.table.conn_created(inst.addr(), Some(link));
        self.ok();
        (id, inst.addr().to_string())
    }

    fn connect_n(&mut self, n: usize) -> Vec<u64> {
        (0..n).map(|_| self.connect().0).collect()
    }

    fn rebalance(&mut self, max: usize) -> usize {
        let n = self.table.rebalance(max, self.now);
        self.ok();
        n
    }

    /// The redirects asked since the last call, in order.
    fn asked(&self) -> Vec<(u64, String)> {
        std::mem::take(&mut self.wire.borrow_mut().asked)
    }

    fn answer(&self, id: u64, delivery: Delivery) {
        self.wire.borrow_mut().answers.insert(id, delivery);
    }

    fn snap(&self, addr: &str) -> Option<BackendSnapshot> {
        self.table.snapshots().into_iter().find(|b| b.addr == addr)
    }

    fn count(&self, addr: &str) -> usize {
        self.snap(addr).map_or(0, |b| b.conn_count)
    }

    fn conn_score(&self, addr: &str) -> i64 {
        self.snap(addr).map_or(0, |b| b.conn_score)
    }
}

#[test]
fn an_empty_table_routes_nowhere() {
    let mut h = harness();
    assert_eq!(h.table.route(&[], h.now), Err(RouteError::NoBackend));
    h.ok();
}

#[test]
fn a_route_goes_to_the_idlest_backend_and_counts_as_pending_until_it_is_settled() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let first = h.table.route(&[], h.now).expect("a backend");
    let second = h.table.route(&[], h.now).expect("a backend");
    assert_ne!(
        first.addr(),
        second.addr(),
        "the pending point spreads routes"
    );
    assert_eq!(h.conn_score(first.addr()), 1);
    assert_eq!(h.count(first.addr()), 0, "pending is not a connection yet");
    h.ok();
}

#[test]
fn a_route_skips_excluded_backends() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    for _ in 0..3 {
        let inst = h.table.route(&["a".to_string()], h.now).expect("b is left");
        assert_eq!(inst.addr(), "b");
    }
    assert_eq!(
        h.table.route(&["a".to_string(), "b".to_string()], h.now),
        Err(RouteError::NoBackend)
    );
    h.ok();
}

#[test]
fn a_failed_connect_takes_the_pending_point_back() {
    let mut h = harness();
    h.healthy(&["a"]);
    let inst = h.table.route(&[], h.now).expect("a backend");
    h.table.conn_created(inst.addr(), None);
    h.ok();
    assert_eq!(h.conn_score("a"), 0);
    assert_eq!(h.table.conn_count(), 0);
}

#[test]
fn a_registered_connection_replaces_its_pending_point() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.connect();
    let a = h.snap("a").expect("known");
    assert_eq!((a.conn_count, a.conn_score, a.score), (1, 1, 1));
}

#[test]
fn a_down_backend_gets_no_routes_and_its_handle_says_so() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let inst = h.table.route(&["b".to_string()], h.now).expect("a");
    h.down("a");
    assert!(!inst.healthy(), "a connection's handle sees the new status");
    for _ in 0..3 {
        assert_eq!(h.table.route(&[], h.now).expect("b").addr(), "b");
    }
}

#[test]
fn a_slow_backend_is_chosen_only_when_the_others_are_much_busier() {
    let mut h = harness();
    h.healthy(&["fast"]);
    h.report(&[(
        "slow",
        BackendHealth {
            status: BackendStatus::RunSlow,
            ..BackendHealth::default()
        },
    )]);
    h.connect_n(100);
    assert_eq!(h.count("slow"), 0);
    assert_eq!(h.count("fast"), 100);
}

#[test]
fn a_discovery_error_refuses_routes_until_a_clean_report() {
    let mut h = harness();
    h.healthy(&["a"]);
    let err = ObserveError::Fetch(crate::FetchError::new("etcd is down"));
    h.table
        .backends_changed(HashMap::new(), Some(err.clone()), h.now);
    assert_eq!(h.table.route(&[], h.now), Err(RouteError::Observe(err)));
    h.table.backends_changed(HashMap::new(), None, h.now);
    assert!(h.table.route(&[], h.now).is_ok());
    h.ok();
}

#[test]
fn an_unknown_backend_named_by_a_connection_is_created_as_down() {
    let mut h = harness();
    let link = h.link();
    h.table.conn_created("192.0.2.1:1", Some(link));
    h.ok();
    let s = h.snap("192.0.2.1:1").expect("created");
    assert_eq!(s.health.status, BackendStatus::CannotConnect);
    assert_eq!(s.conn_count, 1);
}

#[test]
fn a_new_backend_reported_down_is_not_added() {
    let mut h = harness();
    h.down("a");
    assert_eq!(h.table.backend_count(), 0);
}

#[test]
fn a_down_backend_is_kept_while_it_has_connections_and_dropped_when_empty() {
    let mut h = harness();
    h.healthy(&["a"]);
    let (id, _) = h.connect();
    h.down("a");
    assert!(h.snap("a").is_some(), "kept: a connection is on it");
    h.table.conn_closed("a", id);
    h.ok();
    assert!(h.snap("a").is_none(), "dropped once empty");
}

#[test]
fn a_drained_backend_gets_no_routes_and_is_kept_while_drained_even_down_and_empty() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.table.set_drained("a", true).expect("known");
    h.ok();
    for _ in 0..3 {
        assert_eq!(h.table.route(&[], h.now).expect("b").addr(), "b");
    }
    h.down("a");
    assert!(h.snap("a").is_some(), "kept while drained");
    assert_eq!(h.table.drained(), vec!["a".to_string()]);
    h.table.set_drained("a", false).expect("known");
    h.ok();
    assert!(h.snap("a").is_none(), "dropped once undrained");
    assert!(h.table.drained().is_empty());
}

#[test]
fn draining_an_unknown_backend_is_an_error() {
    let mut h = harness();
    assert_eq!(
        h.table.set_drained("nowhere:1", true),
        Err(RouterError::UnknownBackend("nowhere:1".into()))
    );
}

#[test]
fn rebalance_moves_the_longest_resident_connections_from_the_busiest_to_the_idlest() {
    let mut h = harness();
    h.healthy(&["a"]);
    let ids = h.connect_n(10);
    h.healthy(&["b"]);
    assert_eq!(h.rebalance(3), 3);
    let asked = h.asked();
    assert_eq!(
        asked,
        ids[..3]
            .iter()
            .map(|id| (*id, "b".to_string()))
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_redirect_moves_one_point_of_score_before_it_finishes() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.connect_n(4);
    h.healthy(&["b"]);
    assert_eq!(h.rebalance(1), 1);
    assert_eq!((h.count("a"), h.conn_score("a")), (4, 3));
    assert_eq!((h.count("b"), h.conn_score("b")), (0, 1));
}

#[test]
fn rebalance_stops_once_the_ratio_is_below_the_limit() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.connect_n(1);
    h.healthy(&["b"]);
    assert_eq!(
        h.rebalance(10),
        0,
        "1 / (0 + 1) < 1.2: a move only swaps the imbalance"
    );
    h.connect_n(10);
    assert_eq!(h.rebalance(10), 0, "routes went to the idle one: balanced");
}

#[test]
fn rebalance_with_one_backend_or_none_routable_moves_nothing() {
    let mut h = harness();
    assert_eq!(h.rebalance(10), 0);
    h.healthy(&["a"]);
    h.connect_n(5);
    assert_eq!(h.rebalance(10), 0);
    h.healthy(&["b"]);
    h.down("b");
    assert_eq!(h.rebalance(10), 0);
}

#[test]
fn a_successful_redirect_moves_the_connection_and_makes_it_the_newest_arrival() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let (first, on) = h.connect();
    let other = if on == "a" { "b" } else { "a" };
    h.connect(); // lands on `other`
    h.table.set_drained(&on, true).expect("known");
    assert_eq!(h.rebalance(10), 1);
    assert_eq!(h.asked(), vec![(first, other.to_string())]);
    h.table.redirect_succeeded(&on, other, first, h.now);
    h.ok();
    assert_eq!(h.count(other), 2);
    assert_eq!(h.count(&on), 0);
    // Drain `other`, undrain `on`: the older connection moves first, the moved one last.
    h.table.set_drained(&on, false).expect("known");
    h.table.set_drained(other, true).expect("known");
    assert_eq!(h.rebalance(1), 1);
    assert_ne!(
        h.asked()[0].0,
        first,
        "the moved connection is the newest on its backend"
    );
}

#[test]
fn a_failed_redirect_backs_off_until_the_backoff_has_passed() {
    let (mut h, id) = redirecting_off_a_dead_backend();
    let to = "b";
    h.table.redirect_failed("a", to, id, h.now);
    h.ok();
    assert_eq!(h.conn_score("b"), 1, "the point went back");
    h.now += BACKOFF - Duration::from_millis(1);
    assert_eq!(h.rebalance(10), 0, "within back-off");
    h.now += Duration::from_millis(1);
    assert_eq!(h.rebalance(10), 1, "retried after back-off");
}

#[test]
fn no_second_redirect_is_asked_while_one_is_in_flight() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(4);
    h.down("a");
    assert_eq!(h.rebalance(100), 2);
    assert_eq!(h.rebalance(100), 0);
    assert_eq!(h.asked().len(), 2);
}

#[test]
fn closing_a_redirecting_connection_releases_the_target() {
    let (mut h, id) = redirecting_off_a_dead_backend();
    assert_eq!(h.conn_score("b"), 2);
    h.table.conn_closed("a", id);
    h.ok();
    assert_eq!(h.conn_score("b"), 1);
    assert!(h.snap("a").is_none(), "down and empty: dropped");
}

#[test]
fn a_connection_with_a_full_mailbox_counts_as_a_failed_redirect() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let ids = h.connect_n(2);
    h.down("a");
    let on_a = ids
        .iter()
        .copied()
        .find(|id| h.table.conns[id].backend.as_ref() == "a")
        .expect("one on a");
    h.answer(on_a, Delivery::Busy);
    assert_eq!(h.rebalance(10), 0);
    assert_eq!(h.count("a"), 1, "still registered: its close will follow");
    h.answer(on_a, Delivery::Sent);
    assert_eq!(h.rebalance(10), 0, "in back-off");
    h.now += BACKOFF;
    assert_eq!(h.rebalance(10), 1);
}

#[test]
fn a_gone_connection_is_forgotten_by_rebalance_as_if_it_had_closed() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let ids = h.connect_n(4);
    h.table.set_drained("a", true).expect("known");
    let on_a: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| h.table.conns[id].backend.as_ref() == "a")
        .collect();
    h.answer(on_a[0], Delivery::Gone);
    assert_eq!(h.rebalance(10), 1, "the live one is asked");
    assert_eq!(h.table.conn_count(), 3);
    let a = h.snap("a").expect("kept while drained");
    assert_eq!((a.conn_count, a.conn_score), (1, 0));
    assert_eq!(
        h.conn_score("b"),
        3,
        "two settled and one incoming; nothing for the gone one"
    );
    // Its late close is a no-op.
    h.table.conn_closed("a", on_a[0]);
    h.ok();
    assert_eq!(h.table.conn_count(), 3);
}

#[test]
fn a_gone_connection_mid_list_is_forgotten_by_redirect_all_and_the_rest_are_asked() {
    let mut h = harness();
    h.healthy(&["a"]);
    let ids = h.connect_n(3);
    h.answer(ids[1], Delivery::Gone);
    assert_eq!(h.table.redirect_all(h.now), 2);
    h.ok();
    assert_eq!(h.table.conn_count(), 2);
    let a = h.snap("a").expect("known");
    assert_eq!((a.conn_count, a.conn_score), (2, 2));
}

#[test]
fn a_gone_connection_on_a_down_backend_lets_the_backend_be_dropped() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let (id, on) = h.connect();
    h.down(&on);
    h.answer(id, Delivery::Gone);
    assert_eq!(h.rebalance(10), 0);
    assert!(h.snap(&on).is_none(), "down and empty: dropped");
    assert_eq!(h.table.conn_count(), 0);
}

#[test]
fn redirect_all_asks_every_settled_connection_to_stay_where_it_is() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(4);
    assert_eq!(h.table.redirect_all(h.now), 4);
    h.ok();
    let mut asked = h.asked();
    asked.sort();
    for (id, to) in &asked {
        assert_eq!(&*h.table.conns[id].backend, to.as_str());
    }
    assert_eq!(h.table.redirect_all(h.now), 0, "all are mid-redirect");
    for (id, to) in asked {
        h.table.redirect_succeeded(&to, &to, id, h.now);
    }
    h.ok();
    assert_eq!((h.count("a"), h.count("b")), (2, 2));
}

#[test]
fn a_redirect_result_for_an_unknown_or_settled_connection_changes_nothing() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let (id, on) = h.connect();
    let before = h.table.snapshots();
    h.table.redirect_succeeded(&on, "b", 999, h.now);
    h.table.redirect_succeeded(&on, "b", id, h.now);
    h.table.redirect_failed(&on, "b", id, h.now);
    h.ok();
    assert_eq!(h.table.snapshots(), before);
}

#[test]
fn a_redirect_result_that_names_other_backends_trusts_the_router() {
    let (mut h, id) = redirecting_off_a_dead_backend();
    h.table.redirect_succeeded("x", "y", id, h.now);
    h.ok();
    assert_eq!(h.count("b"), 2);
    assert!(h.snap("x").is_none() && h.snap("y").is_none());
}

#[test]
fn a_connection_id_registered_twice_replaces_the_first() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let (id, on) = h.connect();
    let twin = Link {
        id,
        wire: h.wire.clone(),
    };
    let inst = h.table.route(&[], h.now).expect("a backend");
    h.table.conn_created(inst.addr(), Some(twin));
    h.ok();
    assert_eq!(h.table.conn_count(), 1);
    assert_eq!(h.count(inst.addr()), 1);
    if inst.addr() != on {
        assert_eq!(h.count(&on), 0);
    }
}

#[test]
fn a_drained_backend_is_emptied_first_even_when_the_pool_is_balanced() {
    let mut h = harness();
    h.healthy(&["a", "b", "c"]);
    h.connect_n(30);
    h.table.set_drained("a", true).expect("known");
    h.rebalance(100);
    let asked = h.asked();
    assert_eq!(
        asked.len(),
        10,
        "every connection of the drained backend is asked"
    );
    assert!(asked
        .iter()
        .all(|(id, to)| { &*h.table.conns[id].backend == "a" && to != "a" }));
}

#[test]
fn server_version_is_the_last_one_a_healthy_backend_announced() {
    let mut h = harness();
    assert_eq!(h.table.server_version(), "");
    h.report(&[("a", BackendHealth::healthy_with_version("8.0.11-TiDB"))]);
    assert_eq!(h.table.server_version(), "8.0.11-TiDB");
    h.report(&[("a", BackendHealth::healthy())]);
    assert_eq!(
        h.table.server_version(),
        "8.0.11-TiDB",
        "an empty version is no news"
    );
}

#[test]
fn snapshots_are_ascending_by_score_then_address() {
    let mut h = harness();
    // One report each, so ties break in this order: a, b, c.
    for addr in ["a", "b", "c"] {
        h.healthy(&[addr]);
    }
    h.connect_n(2);
    let snaps = h.table.snapshots();
    let order: Vec<(&str, i64)> = snaps.iter().map(|b| (b.addr.as_str(), b.score)).collect();
    assert_eq!(order, vec![("c", 0), ("a", 1), ("b", 1)]);
}

#[test]
fn the_invariant_check_names_a_negative_pending_count() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.table.update("a", |b| b.pending = -1);
    assert_eq!(
        h.table.check_invariants(),
        Err(InvariantError::NegativePending {
            backend: "a".into(),
            pending: -1
        })
    );
}

#[test]
fn the_invariant_check_names_redirect_counters_out_of_step_with_the_connections() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(2);
    h.table.update("b", |b| b.incoming += 1);
    assert_eq!(
        h.table.check_invariants(),
        Err(InvariantError::RedirectCounts {
            backend: "b".into(),
            incoming: 1,
            outgoing: 0,
            counted_incoming: 0,
            counted_outgoing: 0,
        })
    );
}

#[test]
fn the_invariant_check_names_a_score_index_out_of_step() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.connect();
    // Change a counter behind the index's back.
    if let Some(b) = h.table.backends.get_mut("a") {
        b.pending += 1;
    }
    assert_eq!(
        h.table.check_invariants(),
        Err(InvariantError::RoutableIndex {
            indexed: 1,
            expected: 1
        })
    );
}

#[test]
fn the_invariant_check_names_a_connection_missing_from_its_backend() {
    let mut h = harness();
    h.healthy(&["a"]);
    let (id, _) = h.connect();
    h.table.update("a", |b| b.conns.clear());
    assert_eq!(
        h.table.check_invariants(),
        Err(InvariantError::ConnNotListed {
            conn_id: id,
            backend: "a".into()
        })
    );
}

#[test]
fn a_suspect_backend_gets_no_routes_at_once_and_its_handle_says_so() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let inst_a = h.table.route(&["b".to_string()], h.now).expect("a");
    h.table.conn_created("a", None);
    assert!(h.table.backend_suspect("a", "connection reset"));
    h.ok();
    assert!(!inst_a.healthy(), "the handle shows the suspicion");
    for _ in 0..3 {
        assert_eq!(h.connect().1, "b");
    }
    assert!(
        matches!(
            h.table.route(&["b".to_string()], h.now),
            Err(RouteError::NoBackend)
        ),
        "a suspect is never a fallback"
    );
    assert!(
        !h.table.backend_suspect("a", "again"),
        "a second report is not news"
    );
}

#[test]
fn a_report_naming_the_suspect_settles_it_and_the_rise_brings_it_back() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(2);
    h.table.backend_suspect("a", "reset");
    h.ok();
    // the health check confirms: down, as any down backend
    h.down("a");
    assert_eq!(
        h.snap("a").unwrap().health.status,
        BackendStatus::CannotConnect
    );
    // clean reports after the confirmation do not make it routable: only its health can
    h.report(&[]);
    h.report(&[]);
    h.report(&[]);
    assert!(h.table.route(&["b".to_string()], h.now).is_err());
    // its rise: the observer reports it healthy again
    h.healthy(&["a"]);
    let inst = h.table.route(&["b".to_string()], h.now).expect("a is back");
    assert_eq!(inst.addr(), "a");
    assert!(inst.healthy());
}

#[test]
fn a_suspicion_the_health_check_does_not_confirm_ends_after_fall_plus_one_clean_reports() {
    let mut h = harness();
    h.table.set_suspect_reports(3);
    h.healthy(&["a", "b"]);
    h.table.backend_suspect("a", "one connection was killed");
    h.ok();
    h.report(&[]);
    h.report(&[]);
    assert!(
        h.table.route(&["b".to_string()], h.now).is_err(),
        "two reports may predate the failure"
    );
    h.report(&[]);
    assert_eq!(
        h.table
            .route(&["b".to_string()], h.now)
            .expect("routable again")
            .addr(),
        "a"
    );
}

#[test]
fn a_discovery_error_does_not_count_towards_ending_a_suspicion() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.table.backend_suspect("a", "reset");
    for _ in 0..5 {
        h.table.backends_changed(
            HashMap::new(),
            Some(ObserveError::Fetch(crate::FetchError::new("etcd"))),
            h.now,
        );
        h.ok();
    }
    h.report(&[]);
    assert!(h.table.route(&["b".to_string()], h.now).is_err());
}

#[test]
fn a_suspect_report_for_an_unknown_or_down_backend_changes_nothing() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(2);
    assert!(!h.table.backend_suspect("zz", "reset"));
    h.down("a");
    assert!(!h.table.backend_suspect("a", "reset"));
    h.ok();
    assert!(
        h.snap("zz").is_none(),
        "no backend is made up from a suspicion"
    );
    h.healthy(&["a"]);
    assert!(
        h.table.route(&["b".to_string()], h.now).is_ok(),
        "a was never suspect"
    );
}

#[test]
fn a_suspect_backend_keeps_its_connections_and_closes_them_cleanly() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    let conns: Vec<(u64, String)> = (0..4).map(|_| h.connect()).collect();
    h.table.backend_suspect("a", "reset");
    h.ok();
    assert_eq!(h.count("a"), 2, "a suspicion moves nothing by itself");
    for (id, addr) in conns {
        h.table.conn_closed(&addr, id);
        h.ok();
    }
    assert_eq!(h.table.conn_count(), 0);
}

mod controls;
mod cooldown;
