//! The differential migration tester (issue 9): seeded client sessions run twice against a real
//! 3-node Galera cluster — once straight to a node, once through the real `switchyard` binary
//! (`protocol: mysql`, the 3 nodes as static backends) with a move forced before every command —
//! and every answer, the session's state at its end and the tables afterwards must be the same.
//! Any difference is a failure that prints the seed and the shortest script that reproduces it.
//!
//! `cargo test --test differential` runs a fixed set of 100 sessions. The long run:
//!
//! ```text
//! SWITCHYARD_DIFF_SESSIONS=2000 SWITCHYARD_DIFF_SEED=1000 \
//!   cargo test --release --test differential -- --ignored --nocapture long_run
//! ```
//!
//! Environment:
//! - `SWITCHYARD_DIFF_SESSIONS`: how many sessions (CI test: 100; long run: 2000).
//! - `SWITCHYARD_DIFF_SEED`: the first seed; session `i` uses seed + i (default 1).
//! - `SWITCHYARD_DIFF_FEATURES`: generator switches for bugs known today, comma-separated
//!   (`all`, `none`, or names from `gen::Feature`); default [`DEFAULT_FEATURES`]. Turn one on
//!   for good, in [`DEFAULT_FEATURES`], once its fix has landed.
//! - `SWITCHYARD_DIFF_MINIMIZE`: how many distinct divergences to minimize (default 3).

mod support;

#[path = "differential/gen.rs"]
mod gen;
#[path = "differential/minimize.rs"]
mod minimize;
#[path = "differential/observe.rs"]
mod observe;
#[path = "differential/run.rs"]
mod run;
#[path = "differential/script.rs"]
mod script;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use gen::Features;
use observe::{compare, Divergence};
use run::Env;
use script::{Cmd, Script};
use switchyard_testkit::Galera;

/// The test users (name, password): both in `mysql.users`, so their sessions can move.
pub const USERS: [(&str, &str); 2] = [("sy_a", "sy-a-pw"), ("sy_b", "sy-b-pw")];

/// Generator switches on by default: those whose bugs are fixed (see `gen::Feature`); add each
/// name here once its fix has landed.
const DEFAULT_FEATURES: &str = "set_option,unknown_statement_id,one_shot_isolation,last_insert_id,\
     select_limit,failed_multi_statement_transaction,hidden_user_lock";

/// Candidate scripts the minimizer may run for one divergence.
const MINIMIZE_BUDGET: usize = 150;

struct Settings {
    sessions: u64,
    seed: u64,
    features: Features,
    minimize: usize,
}

fn settings(default_sessions: u64) -> Settings {
    let num = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| {
                let v = v.trim();
                let parsed = match v.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
            })
            .unwrap_or(default)
    };
    let spec =
        std::env::var("SWITCHYARD_DIFF_FEATURES").unwrap_or_else(|_| DEFAULT_FEATURES.into());
    Settings {
        sessions: num("SWITCHYARD_DIFF_SESSIONS", default_sessions),
        seed: num("SWITCHYARD_DIFF_SEED", 1),
        features: Features::parse(&spec)
            .unwrap_or_else(|e| panic!("SWITCHYARD_DIFF_FEATURES: {e}")),
        minimize: num("SWITCHYARD_DIFF_MINIMIZE", 3) as usize,
    }
}

/// The cluster, with the tester's schema and users, shared by the tests of this binary; the
/// tests take turns (they share the data and switchyard's global counters).
fn cluster() -> Option<(&'static Galera, std::sync::MutexGuard<'static, ()>)> {
    static TURN: Mutex<()> = Mutex::new(());
    static READY: OnceLock<()> = OnceLock::new();
    let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let g = Galera::shared()?;
    READY.get_or_init(|| {
        eprintln!(
            "differential: Galera cluster (3 nodes) Synced in {:.1?}",
            g.started_in()
        );
        run::prepare_cluster(g);
    });
    Some((g, turn))
}

/// One script's verdict: its two runs, compared.
fn check(env: &mut Env, script: &Script) -> Option<Divergence> {
    let direct = env.run(script, false);
    let proxied = env.run(script, true);
    compare(&direct, &proxied)
}

/// A divergence found, minimized or not.
struct Found {
    seed: u64,
    divergence: Divergence,
    script: Script,
    minimized: bool,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "=== seed {:#x} ({}) ===", self.seed, self.seed)?;
        writeln!(f, "{}", self.divergence)?;
        writeln!(
            f,
            "{} script ({} commands):",
            if self.minimized { "shortest" } else { "full" },
            self.script.cmds.len()
        )?;
        write!(f, "{}", self.script)
    }
}

/// What a divergence is about, to minimize each kind once: the diverging command with its
/// numbers blanked, or the end-of-session check.
fn signature(script: &Script, d: &Divergence) -> String {
    let what = match d.at {
        Some(n) => script
            .cmds
            .get(n - 1)
            .map(|c| c.to_string())
            .unwrap_or_default(),
        None => d.what.clone(),
    };
    what.chars().filter(|c| !c.is_ascii_digit()).collect()
}

/// Runs the sessions `settings` names, printing a progress line; returns the divergences.
fn run_sessions(env: &mut Env, s: &Settings) -> Vec<Found> {
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut found: Vec<Found> = Vec::new();
    let mut minimized_kinds: Vec<String> = Vec::new();
    for i in 0..s.sessions {
        let seed = s.seed + i;
        let script = gen::session(seed, &s.features);
        if let Some(d) = check(env, &script) {
            let kind = signature(&script, &d);
            let mut f = Found {
                seed,
                divergence: d.clone(),
                script: script.clone(),
                minimized: false,
            };
            if minimized_kinds.len() < s.minimize && !minimized_kinds.contains(&kind) {
                minimized_kinds.push(kind);
                let (min, div, tries) =
                    minimize::minimize(&script, d, MINIMIZE_BUDGET, |c| check(env, c));
                eprintln!(
                    "differential: seed {seed:#x} minimized from {} to {} commands in {tries} runs",
                    script.cmds.len(),
                    min.cmds.len()
                );
                f.divergence = div;
                f.script = min;
                f.minimized = true;
            }
            eprintln!("{f}");
            found.push(f);
        }
        if last_progress.elapsed() >= Duration::from_secs(10) || i + 1 == s.sessions {
            last_progress = Instant::now();
            let st = env.stats;
            assert_verdicts_seen(&st, env);
            eprintln!(
                "differential: {}/{} sessions, {} divergent; moves {} moved, {} refused, {} waited, \
                 {} unsettled; {:.1?}",
                i + 1,
                s.sessions,
                found.len(),
                st.moved,
                st.refused,
                st.waited,
                st.unsettled,
                started.elapsed()
            );
        }
    }
    found
}

/// Most forced redirects must get a verdict the tester can see (moved, refused, or the log line
/// of a redirect kept for a safe point). If many do not, the tester waits out its deadline
/// before every command and compares sessions that never moved: a renamed log line once made
/// the 100-session run take over an hour.
fn assert_verdicts_seen(st: &run::MoveStats, env: &Env) {
    let seen = st.moved + st.refused + st.waited;
    assert!(
        st.unsettled <= 20 || st.unsettled * 10 <= seen,
        "{} forced redirects got no verdict the tester can see (against {seen} that did): does \
         the proxy still log run::WAITS_MARK?\n{}",
        st.unsettled,
        tail(&env.service_log())
    );
}

fn report(found: &[Found], s: &Settings, env: &Env) {
    let st = env.stats;
    assert_verdicts_seen(&st, env);
    assert!(
        st.moved > 0,
        "no forced redirect moved a session: the tester compared nothing \
         (moves {st:?})\n{}",
        tail(&env.service_log())
    );
    if !found.is_empty() {
        let seeds: Vec<String> = found.iter().map(|f| format!("{:#x}", f.seed)).collect();
        panic!(
            "{} of {} sessions diverged with a move before every command (features: {:?}); \
             seeds {}\n\n{}",
            found.len(),
            s.sessions,
            s.features.names(),
            seeds.join(", "),
            found
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn tail(log: &str) -> String {
    let start = log.len().saturating_sub(4000);
    log.get(start..).unwrap_or(log).to_string()
}

#[test]
fn sessions_answer_the_same_with_a_move_before_every_command() {
    let Some((g, _turn)) = cluster() else { return };
    let s = settings(100);
    let mut env = Env::new(g);
    let found = run_sessions(&mut env, &s);
    report(&found, &s, &env);
}

/// The long run (2,000 sessions by default); see the module docs.
#[test]
#[ignore = "long: about 10 min; see the module docs"]
fn long_run() {
    let Some((g, _turn)) = cluster() else { return };
    let s = settings(2000);
    let mut env = Env::new(g);
    let found = run_sessions(&mut env, &s);
    report(&found, &s, &env);
}

/// Hand-written scripts of the bugs behind the generator switches (`gen::Feature`): each must
/// diverge while its bug is open. When one stops diverging its fix has landed: turn its switch
/// on in [`DEFAULT_FEATURES`] and delete its script here.
#[test]
#[ignore = "shows open bugs: fails once one is fixed (then turn its switch on)"]
fn known_bugs_still_diverge() {
    let Some((g, _turn)) = cluster() else { return };
    let mut env = Env::new(g);
    let q = |s: &str| Cmd::Query(s.to_string());
    let scripts: Vec<(&str, Vec<Cmd>)> =
        vec![
        (
            "names_collate: the collation of SET NAMES ... COLLATE is lost from result metadata",
            vec![q("SET NAMES utf8mb4 COLLATE utf8mb4_bin"), q("SELECT @@sql_mode")],
        ),
        (
            "savepoint_outside_transaction: a savepoint made under autocommit = 0 before any \
             statement is lost",
            vec![
                q("SET autocommit = 0"),
                q("SAVEPOINT sp1"),
                q("ROLLBACK TO SAVEPOINT sp1"),
            ],
        ),
        (
            "read_only_after_autocommit: the server keeps a read-only flag a move drops",
            vec![
                q("SET autocommit = 0"),
                q("START TRANSACTION READ ONLY"),
                q("SET autocommit = 1"),
                q("BEGIN"),
            ],
        ),
    ];
    let mut fixed = Vec::new();
    for (what, cmds) in &scripts {
        let script = Script {
            seed: 0,
            deprecate_eof: false,
            cmds: cmds.clone(),
        };
        match check(&mut env, &script) {
            Some(d) => eprintln!("STILL DIVERGES: {what}\n{d}\n{script}"),
            None => {
                eprintln!("NO LONGER DIVERGES: {what}\n{script}");
                fixed.push(*what);
            }
        }
    }
    assert!(
        fixed.is_empty(),
        "{} known bug(s) no longer diverge; turn their switches on: {fixed:#?}",
        fixed.len()
    );
}
