//! The rebalance cooldown: a connection a rebalance moved off a healthy backend is no rebalance
//! candidate while that rebalance lasts (until the pool has looked even for a whole cooldown, at
//! most the cooldown's limit); drains and failing backends move it at once; the cluster's move
//! budget counts only connections that may move.

use super::*;

const COOLDOWN: Duration = Duration::from_secs(2);
/// `COOLDOWN_LIMIT` cooldowns.
const LIMIT: Duration = Duration::from_secs(4);

impl Harness {
    fn cooling_on(&mut self) {
        self.table.set_policy(RoutePolicy {
            rebalance_cooldown: COOLDOWN,
            ..RoutePolicy::default()
        });
        assert_eq!(self.table.policy().cooldown_limit(), LIMIT);
        self.ok();
    }

    /// Answers every asked redirect with success, now.
    fn land(&mut self) -> Vec<u64> {
        let asked = self.asked();
        for (id, to) in &asked {
            let from = self.table.conns[id].backend.to_string();
            self.table.redirect_succeeded(&from, to, *id, self.now);
            self.ok();
        }
        asked.into_iter().map(|(id, _)| id).collect()
    }

    fn peers(&mut self, conns: &[(&str, usize)]) {
        let conns = conns.iter().map(|(a, n)| (a.to_string(), *n)).collect();
        self.table.set_peer_load(conns);
        self.ok();
    }

    fn cooling(&self, ids: &[u64]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.table.cooling(&self.table.conns[id], self.now))
            .collect()
    }

    fn close_all_on(&mut self, addr: &str) {
        let on: Vec<u64> = self
            .table
            .conns
            .iter()
            .filter(|(_, c)| &*c.backend == addr)
            .map(|(id, _)| *id)
            .collect();
        for id in on {
            self.table.conn_closed(addr, id);
            self.ok();
        }
    }
}

/// `a` holds 10, `b` comes back; a rebalance moves 5 to `b` and they land. Returns their ids.
fn five_moved_to_b() -> (Harness, Vec<u64>) {
    let mut h = harness();
    h.cooling_on();
    h.healthy(&["a"]);
    h.connect_n(10);
    h.healthy(&["b"]);
    assert_eq!(h.rebalance(100), 5, "10/0 → 5/5");
    let moved = h.land();
    (h, moved)
}

#[test]
fn a_connection_a_rebalance_moved_is_no_candidate_while_that_rebalance_lasts() {
    let (mut h, moved) = five_moved_to_b();
    // New sessions pile onto b (say, peers' routes on an old view): b is now the busy one, and
    // the moved ones are its longest-resident connections here.
    h.table.set_drained("a", true).expect("known");
    h.connect_n(4);
    h.table.set_drained("a", false).expect("known");
    h.asked();
    assert_eq!((h.count("a"), h.count("b")), (5, 9));
    h.rebalance(100);
    let asked: Vec<u64> = h.asked().into_iter().map(|(id, _)| id).collect();
    assert!(
        !asked.is_empty(),
        "the sessions that never moved even it out"
    );
    assert!(asked.iter().all(|id| !moved.contains(id)), "{asked:?}");
}

#[test]
fn the_cooldown_ends_once_the_pool_has_looked_even_for_a_whole_cooldown() {
    let (mut h, moved) = five_moved_to_b();
    assert_eq!(h.rebalance(100), 0, "5/5: even from now");
    h.now += COOLDOWN - Duration::from_millis(1);
    h.rebalance(100);
    assert!(h.cooling(&moved).iter().all(|c| *c));
    h.now += Duration::from_millis(1);
    h.rebalance(100);
    assert!(h.cooling(&moved).iter().all(|c| !*c));
    h.close_all_on("a");
    assert_eq!(
        h.rebalance(100),
        2,
        "0/5: the moved ones are candidates again"
    );
}

#[test]
fn a_pool_that_turns_uneven_starts_the_wait_for_even_again() {
    let (mut h, moved) = five_moved_to_b();
    h.rebalance(100);
    h.now += COOLDOWN / 2;
    h.peers(&[("b", 20)]);
    assert_eq!(h.rebalance(100), 0, "uneven, and all of b's are cooling");
    h.peers(&[]);
    h.rebalance(100);
    h.now += COOLDOWN / 2;
    h.rebalance(100);
    assert!(
        h.cooling(&moved).iter().all(|c| *c),
        "even again only for half a cooldown"
    );
    h.now += COOLDOWN / 2;
    h.rebalance(100);
    assert!(h.cooling(&moved).iter().all(|c| !*c));
}

#[test]
fn a_pool_that_never_looks_even_frees_its_moved_connections_at_the_limit() {
    let (mut h, moved) = five_moved_to_b();
    h.close_all_on("a");
    assert_eq!(h.rebalance(100), 0, "0/5, but all five are cooling");
    h.now += LIMIT - Duration::from_millis(1);
    assert_eq!(h.rebalance(100), 0);
    h.now += Duration::from_millis(1);
    assert_eq!(h.rebalance(100), 2);
    assert!(h.asked().iter().all(|(id, _)| moved.contains(id)));
}

#[test]
fn a_drained_backend_moves_its_cooling_connections_at_once() {
    let (mut h, moved) = five_moved_to_b();
    h.table.set_drained("b", true).expect("known");
    assert_eq!(h.rebalance(100), moved.len());
    assert!(h.asked().iter().all(|(_, to)| to == "a"));
}

#[test]
fn a_failing_backend_moves_its_cooling_connections_at_once() {
    let (mut h, moved) = five_moved_to_b();
    h.down("b");
    assert_eq!(h.rebalance(100), moved.len());
}

#[test]
fn a_move_off_a_drained_backend_starts_no_cooldown() {
    let mut h = harness();
    h.cooling_on();
    h.healthy(&["a", "b"]);
    h.connect_n(10);
    h.table.set_drained("a", true).expect("known");
    assert_eq!(h.rebalance(100), 5);
    h.land();
    h.table.set_drained("a", false).expect("known");
    assert!(h.table.conns.values().all(|c| c.rebalanced_at.is_none()));
    assert_eq!(
        h.rebalance(100),
        5,
        "10/0 evened at once: the drain's moves were no rebalance"
    );
}

#[test]
fn a_rebalance_move_that_failed_starts_no_cooldown() {
    let mut h = harness();
    h.cooling_on();
    h.healthy(&["a"]);
    h.connect_n(10);
    h.healthy(&["b"]);
    h.rebalance(1);
    let (id, to) = h.asked().remove(0);
    h.table.redirect_failed("a", &to, id, h.now);
    h.ok();
    assert_eq!(h.table.conns[&id].rebalanced_at, None);
}

#[test]
fn without_a_cooldown_a_moved_connection_may_move_straight_back() {
    let mut h = harness();
    h.healthy(&["a"]);
    h.connect_n(10);
    h.healthy(&["b"]);
    h.rebalance(100);
    h.land();
    h.close_all_on("a");
    assert_eq!(h.rebalance(100), 2, "the policy's default changes nothing");
}

#[test]
fn the_cluster_budget_counts_only_connections_that_may_move() {
    let (mut h, _) = five_moved_to_b();
    // Peers put 20 more on b: global a 5, b 25; mean 15, b's excess 10. This instance holds 5
    // of b's 25, all cooling: its share is 10 × 0 ÷ 25, not 10 × 5 ÷ 25.
    h.peers(&[("b", 20)]);
    assert_eq!(h.rebalance(100), 0);
    assert_eq!(h.table.peer_budget, Some(0));
}

#[test]
fn a_quiet_view_grants_a_new_budget_once_the_cooldown_reaches_its_limit() {
    let (mut h, _) = five_moved_to_b();
    h.peers(&[("b", 20)]);
    assert_eq!(h.rebalance(100), 0, "cooling");
    h.now += LIMIT;
    // The view did not change since: it is as fresh as it gets.
    assert_eq!(h.rebalance(100), 2, "10 × 5 ÷ 25");
}

#[test]
fn a_cooldown_ending_soon_after_a_new_view_waits_for_the_view_to_be_quiet() {
    let (mut h, _) = five_moved_to_b();
    h.now += LIMIT - Duration::from_millis(100);
    h.peers(&[("b", 20)]);
    assert_eq!(h.rebalance(100), 0, "cooling");
    h.now += Duration::from_millis(100);
    assert_eq!(
        h.rebalance(100),
        0,
        "free to move, but the view is 100 ms old: peers' moves may not show yet"
    );
    h.now += COOLDOWN - Duration::from_millis(100);
    assert_eq!(h.rebalance(100), 2, "quiet for a whole cooldown");
}

#[test]
fn a_new_view_after_the_limit_grants_at_once() {
    let (mut h, _) = five_moved_to_b();
    h.peers(&[("b", 20)]);
    h.rebalance(100);
    h.now += LIMIT;
    h.peers(&[("b", 19)]);
    assert_eq!(
        h.rebalance(100),
        1,
        "(24 − 14.5) × 5 ÷ 24 = 1.98, rounded down"
    );
}

#[test]
fn a_cooldown_too_long_for_the_clock_keeps_its_connections_without_panicking() {
    let mut h = harness();
    h.table.set_policy(RoutePolicy {
        rebalance_cooldown: Duration::MAX,
        ..RoutePolicy::default()
    });
    h.healthy(&["a"]);
    h.connect_n(10);
    h.healthy(&["b"]);
    h.rebalance(100);
    h.land();
    h.close_all_on("a");
    h.peers(&[("b", 20)]);
    h.now += Duration::from_secs(3600);
    assert_eq!(h.rebalance(100), 0, "still cooling");
}
