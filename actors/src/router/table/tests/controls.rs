//! The operator's controls on the table: weights, the slow-start ramp, per-backend caps, panic
//! mode and closing a drained backend's connections. Same harness, same invariant checks.

use super::*;

impl Harness {
    fn policy(&mut self, policy: RoutePolicy) {
        self.table.set_policy(policy);
        self.ok();
    }

    fn listing(&mut self, backends: &[(&str, f64)]) {
        let list = backends.iter().map(|(a, w)| (a.to_string(), *w)).collect();
        self.table.set_listing(list, self.now);
        self.ok();
    }

    /// Routes and registers `n` connections; returns how many landed on each backend.
    fn spread(&mut self, n: usize) -> HashMap<String, usize> {
        let mut got = HashMap::new();
        for _ in 0..n {
            *got.entry(self.connect().1).or_default() += 1;
        }
        got
    }

    fn closed(&self) -> Vec<u64> {
        std::mem::take(&mut self.wire.borrow_mut().closed)
    }
}

fn capped(max: usize) -> RoutePolicy {
    RoutePolicy {
        max_conns_per_backend: max,
        ..RoutePolicy::default()
    }
}

#[test]
fn routes_split_in_proportion_to_the_weights() {
    let mut h = harness();
    h.listing(&[("a", 3.0), ("b", 1.0)]);
    h.healthy(&["a", "b"]);
    let got = h.spread(40);
    assert_eq!((got["a"], got["b"]), (30, 10));
}

#[test]
fn a_weight_from_a_later_list_applies_to_a_known_backend_at_once() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.listing(&[("a", 1.0), ("b", 4.0)]);
    let got = h.spread(10);
    assert_eq!((got["a"], got["b"]), (2, 8));
}

#[test]
fn rebalance_compares_weighted_loads() {
    let mut h = harness();
    h.listing(&[("a", 3.0), ("b", 1.0)]);
    h.healthy(&["a", "b"]);
    h.spread(8);
    assert_eq!((h.count("a"), h.count("b")), (6, 2));
    // 6 against 2 would be unbalanced by count; by weight it is even
    assert_eq!(h.rebalance(10), 0);

    // a weight-1 backend with 6 and an idle weight-3 one: moves until weighted loads meet
    let mut h = harness();
    h.listing(&[("a", 1.0)]);
    h.healthy(&["a"]);
    h.spread(6);
    h.listing(&[("a", 1.0), ("b", 3.0)]);
    h.healthy(&["b"]);
    let moved = h.rebalance(10);
    assert!(moved >= 3, "a weight-3 backend takes most of six: {moved}");
}

#[test]
fn a_backend_that_comes_up_while_others_serve_ramps_its_share_over_slow_start() {
    let mut h = harness();
    h.policy(RoutePolicy {
        slow_start: Duration::from_secs(10),
        ..RoutePolicy::default()
    });
    h.healthy(&["a"]);
    h.spread(10);
    h.healthy(&["b"]);
    // at the floor (weight 0.1) b holds one connection at a's load of 10
    let early = h.spread(10);
    assert!(early.get("b").copied().unwrap_or(0) <= 2, "{early:?}");
    // once the ramp is done, b takes the new connections until the loads meet
    h.now += Duration::from_secs(10);
    let late = h.spread(10);
    assert!(late["b"] >= 8, "{late:?}");
    assert_eq!(
        h.table.weights().iter().map(|w| w.2).collect::<Vec<_>>(),
        [1.0, 1.0]
    );
}

#[test]
fn the_first_backends_to_serve_take_their_full_weight_at_once() {
    let mut h = harness();
    h.policy(RoutePolicy {
        slow_start: Duration::from_secs(10),
        ..RoutePolicy::default()
    });
    h.healthy(&["a", "b"]);
    assert!(h.table.weights().iter().all(|w| w.2 == 1.0));
    let got = h.spread(10);
    assert_eq!((got["a"], got["b"]), (5, 5));
}

#[test]
fn a_backend_that_goes_down_mid_ramp_starts_over_when_it_comes_back() {
    let mut h = harness();
    h.policy(RoutePolicy {
        slow_start: Duration::from_secs(10),
        ..RoutePolicy::default()
    });
    h.healthy(&["a"]);
    h.healthy(&["b"]);
    h.now += Duration::from_secs(9);
    h.down("b");
    h.now += Duration::from_secs(5);
    h.healthy(&["b"]);
    h.connect();
    let b = h.table.weights().into_iter().find(|w| w.0 == "b");
    assert_eq!(b.map(|w| w.2), Some(SLOW_START_FLOOR_FOR_TESTS));
}

const SLOW_START_FLOOR_FOR_TESTS: f64 = crate::router::policy::SLOW_START_FLOOR;

#[test]
fn a_backend_at_its_cap_gets_no_routes_and_all_full_says_so() {
    let mut h = harness();
    h.policy(capped(2));
    h.healthy(&["a", "b"]);
    let (first, on) = h.connect();
    h.connect_n(3);
    assert_eq!(h.table.route(&[], h.now), Err(RouteError::AllFull));
    h.table.conn_closed(&on, first);
    let inst = h.table.route(&[], h.now).expect("room again");
    assert_eq!(inst.addr(), on);
    // a pending route counts against the cap as well
    assert_eq!(h.table.route(&[], h.now), Err(RouteError::AllFull));
    h.table.conn_created(&on, None);
    h.ok();
}

#[test]
fn all_full_only_when_a_full_backend_is_a_candidate() {
    let mut h = harness();
    h.policy(capped(1));
    h.healthy(&["a"]);
    h.connect();
    assert_eq!(
        h.table.route(&["a".to_string()], h.now),
        Err(RouteError::NoBackend),
        "the only full backend is excluded: nothing to wait for"
    );
    h.table.set_drained("a", true).expect("known");
    assert_eq!(h.table.route(&[], h.now), Err(RouteError::NoBackend));
}

#[test]
fn rebalance_never_moves_a_connection_onto_a_full_backend() {
    let mut h = harness();
    h.policy(capped(2));
    h.healthy(&["a"]);
    h.connect_n(2);
    h.healthy(&["b"]);
    h.connect();
    assert_eq!((h.count("a"), h.count("b")), (2, 1));
    h.down("a");
    // both of a's connections should move, but b has room for one more only
    assert_eq!(h.rebalance(10), 1);
    assert_eq!(h.rebalance(10), 0);
}

#[test]
fn panic_mode_routes_to_every_known_backend_that_is_not_drained() {
    let mut h = harness();
    h.policy(RoutePolicy {
        panic_threshold: 0.5,
        ..RoutePolicy::default()
    });
    h.healthy(&["a"]);
    h.listing(&[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)]);
    assert!(h.table.panic(), "1 of 4 healthy is below half");
    let got = h.spread(8);
    assert_eq!(got.len(), 4, "every known backend takes routes: {got:?}");
    assert!(got.values().all(|n| *n == 2), "{got:?}");
    // nothing moves off the "down" backends while in panic
    assert_eq!(h.rebalance(10), 0);

    h.table.set_drained("b", true).expect("known now");
    let got = h.spread(3);
    assert!(
        !got.contains_key("b"),
        "a drained backend is spared: {got:?}"
    );

    h.healthy(&["c"]);
    assert!(!h.table.panic(), "2 of 4 is not below half");
    assert_eq!(h.table.route(&[], h.now).expect("healthy").addr(), "a");
}

#[test]
fn without_a_list_panic_mode_counts_the_backends_the_table_holds() {
    let mut h = harness();
    h.policy(RoutePolicy {
        panic_threshold: 0.5,
        ..RoutePolicy::default()
    });
    h.healthy(&["a", "b", "c"]);
    h.connect_n(3);
    h.down("a");
    h.down("b");
    assert!(h.table.panic(), "1 of 3");
    let got = h.spread(3);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn panic_mode_is_off_by_default() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.down("a");
    h.listing(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
    assert!(!h.table.panic());
    assert_eq!(h.table.route(&[], h.now).expect("b").addr(), "b");
}

#[test]
fn closing_a_backend_asks_each_of_its_connections_and_no_other() {
    let mut h = harness();
    h.healthy(&["a", "b"]);
    h.connect_n(4);
    let on_a: Vec<u64> = h
        .table
        .conns
        .iter()
        .filter(|(_, c)| &*c.backend == "a")
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(h.table.close_conns_on("a", "test"), 2);
    let mut closed = h.closed();
    closed.sort();
    let mut expected = on_a.clone();
    expected.sort();
    assert_eq!(closed, expected);
    assert_eq!(h.table.close_conns_on("nowhere", "test"), 0);
}

#[test]
fn a_suspect_backend_is_no_candidate_for_the_wait_queue() {
    let mut h = harness();
    h.policy(capped(1));
    h.healthy(&["a", "b"]);
    h.connect_n(2);
    h.table.backend_suspect("b", "reset");
    h.ok();
    assert_eq!(
        h.table.route(&["a".to_string()], h.now),
        Err(RouteError::NoBackend),
        "only the suspect is left: no room will come there, so the route does not wait"
    );
    assert_eq!(
        h.table.route(&[], h.now),
        Err(RouteError::AllFull),
        "the healthy backend is full: the route may wait for it"
    );
}

#[test]
fn a_suspicion_neither_starts_panic_mode_nor_a_slow_start() {
    let mut h = harness();
    h.policy(RoutePolicy {
        panic_threshold: 0.5,
        slow_start: Duration::from_secs(10),
        ..RoutePolicy::default()
    });
    h.healthy(&["a", "b", "c"]);
    h.table.backend_suspect("a", "reset");
    h.table.backend_suspect("b", "reset");
    h.ok();
    assert!(
        !h.table.panic(),
        "panic mode counts the observer's word, not a connection's"
    );
    let got = h.spread(3);
    assert_eq!(got.get("c"), Some(&3), "the suspects get no routes");
    for _ in 0..suspect::DEFAULT_SUSPECT_REPORTS {
        h.report(&[]);
    }
    let got = h.spread(3);
    assert_eq!(
        got.get("c"),
        None,
        "an unconfirmed suspicion ends at full weight (no slow start): {got:?}"
    );
    assert_eq!(got.len(), 2, "both suspects are routable again: {got:?}");
}
