//! `switchyard demo`: routing, failover, scale-out and drain, live, with nothing installed.
//!
//! Starts in-process backends speaking a tiny line protocol (each reply names the backend that
//! served it), a [`ScoreRouter`] observing them, and a stream of simulated clients. The clients
//! are connection actors like the proxy's and start the same way ([`ConnStart`]), except that
//! their protocol has a safe point between requests, so a [`Redirect`] really moves them: they
//! connect to the target, swap sockets and answer `RedirectSucceeded`. A scripted timeline kills one backend, adds another and drains a
//! third while a table (one block per second) shows status, connections, score and moves.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::{
    BackendFetcher, BackendInfo, DefaultHealthCheck, FetchError, GetBackends, GetDrained,
    HealthCheckConfig, Probe, Redirect, Registration, RouterConfig, ScoreRouter, SetDrained,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::debug;

use crate::entry::{connect_backend, ConnStart, Entry, LiveConns};

/// Bound on one connect to a demo backend (they are in-process: anything slower is a dead one).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Total run time; the timeline scales with it.
    pub duration: Duration,
    /// Simulated clients kept connected.
    pub clients: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(30),
            clients: 36,
        }
    }
}

/// What the demo saw, for its closing line (and for tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoSummary {
    /// Client sessions started.
    pub sessions: u64,
    /// Requests answered.
    pub requests: u64,
    /// Connections moved between backends.
    pub moves: u64,
    /// Sessions cut by a backend dying.
    pub lost: u64,
}

/// Runs the demo on its own actix system, writing the live table to `out`.
pub fn run(opts: DemoOptions, out: &mut dyn Write) -> std::io::Result<DemoSummary> {
    actix::System::new().block_on(run_async(opts, out))
}

// ---------------------------------------------------------------------------------------------
// Backends: a line echo server that names itself
// ---------------------------------------------------------------------------------------------

/// One in-process backend; killing it aborts its accept loop and every session on it.
struct EchoBackend {
    name: String,
    addr: String,
    task: Option<JoinHandle<()>>,
}

impl EchoBackend {
    async fn start(name: &str) -> std::io::Result<EchoBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let label = name.to_string();
        let task = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        sessions.spawn(echo_session(stream, label.clone()));
                    }
                    Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                }
            }
        });
        Ok(EchoBackend {
            name: name.to_string(),
            addr,
            task: Some(task),
        })
    }

    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn echo_session(stream: TcpStream, label: String) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if w.write_all(format!("{label} {line}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Discovery for the demo: whatever list the timeline last published.
struct DemoFetcher(watch::Receiver<Vec<String>>);

impl BackendFetcher for DemoFetcher {
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError> {
        Ok(self
            .0
            .borrow()
            .iter()
            .map(|a| (a.clone(), BackendInfo::default()))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: connection actors that can move
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Stats {
    summary: DemoSummary,
    moves_in: HashMap<String, u64>,
    moves_out: HashMap<String, u64>,
}

type Shared = Rc<RefCell<Stats>>;

type Line = BufReader<crate::entry::Stream>;

/// One simulated client session: a request every 250 ms, until `ends_at`.
struct DemoClient {
    /// Its place in the live count, and how it reaches a backend.
    start: ConnStart,
    stats: Shared,
    stream: Option<Line>,
    /// Set once routed; dropping it (with the actor) unregisters the client.
    registration: Option<Registration>,
    ends_at: Instant,
    seq: u64,
}

impl DemoClient {
    fn request(&mut self, ctx: &mut Context<Self>) {
        if Instant::now() >= self.ends_at {
            ctx.stop();
            return;
        }
        let Some(mut stream) = self.stream.take() else {
            ctx.stop();
            return;
        };
        self.seq += 1;
        let line = format!("client {} request {}\n", self.start.id(), self.seq);
        let fut = async move {
            stream.get_mut().write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            let n = tokio::time::timeout(Duration::from_secs(2), stream.read_line(&mut reply))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(stream)
        };
        // `wait`: no Redirect is handled mid-request; moves happen between requests.
        ctx.wait(
            fut.into_actor(self)
                .map(|r: std::io::Result<Line>, act, ctx| match r {
                    Ok(stream) => {
                        act.stream = Some(stream);
                        act.stats.borrow_mut().summary.requests += 1;
                    }
                    Err(e) => {
                        debug!(client = act.start.id(), error = %e, "backend lost");
                        act.stats.borrow_mut().summary.lost += 1;
                        ctx.stop();
                    }
                }),
        );
    }
}

impl Actor for DemoClient {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start.connect_then(ctx, |act: &mut Self, routed, ctx| {
            act.registration = Some(routed.registration);
            act.stream = Some(BufReader::new(routed.backend));
            ctx.run_interval(Duration::from_millis(250), |act, ctx| act.request(ctx));
        });
    }
}

/// The demo's clients are closed like `tcp` connections: at once.
impl Handler<switchyard::CloseConnection> for DemoClient {
    type Result = ();

    fn handle(&mut self, _: switchyard::CloseConnection, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Redirect> for DemoClient {
    type Result = ();

    fn handle(&mut self, msg: Redirect, ctx: &mut Context<Self>) {
        if self.registration.is_none() {
            return;
        }
        let to = msg.to.addr().to_string();
        let started = Instant::now();
        let target = to.clone();
        let fut = async move { connect_backend(&target, CONNECT_TIMEOUT).await };
        ctx.wait(fut.into_actor(self).map(move |r, act, _| {
            let Some(registration) = act.registration.as_mut() else {
                return;
            };
            match r {
                Ok(s) => {
                    let from = registration.backend().to_string();
                    act.stream = Some(BufReader::new(s.into()));
                    registration.redirect_succeeded(&to);
                    let mut st = act.stats.borrow_mut();
                    st.summary.moves += 1;
                    *st.moves_in.entry(to).or_default() += 1;
                    *st.moves_out.entry(from).or_default() += 1;
                    crate::metrics::migration(true, started.elapsed());
                }
                Err(_) => {
                    registration.redirect_failed(&to);
                    crate::metrics::migration(false, started.elapsed());
                }
            }
        }));
    }
}

// ---------------------------------------------------------------------------------------------
// The timeline and the table
// ---------------------------------------------------------------------------------------------

/// A small xorshift generator: the demo needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn run_async(opts: DemoOptions, out: &mut dyn Write) -> std::io::Result<DemoSummary> {
    let mut backends = Vec::new();
    for name in ["b1", "b2", "b3"] {
        backends.push(EchoBackend::start(name).await?);
    }
    let (publish, list) = watch::channel(backends.iter().map(|b| b.addr.clone()).collect());
    let health = HealthCheckConfig {
        interval: Duration::from_millis(500),
        max_retries: 0,
        retry_interval: Duration::from_millis(100),
        dial_timeout: Duration::from_millis(300),
        probe: Probe::Tcp,
        ..HealthCheckConfig::default()
    };
    let router = ScoreRouter::start_observed(
        RouterConfig::default(),
        DemoFetcher(list),
        DefaultHealthCheck::new(health.clone()),
        health,
    );
    let entry = Entry::new(router.clone(), CONNECT_TIMEOUT);

    let stats: Shared = Rc::new(RefCell::new(Stats::default()));
    let d = opts.duration;
    let mut timeline: Vec<(Duration, Step)> = vec![
        (d.mul_f64(0.2), Step::Kill(0)),
        (d.mul_f64(0.4), Step::Add("b4")),
        (d.mul_f64(0.6), Step::Drain(1)),
        (d.mul_f64(0.8), Step::Undrain(1)),
    ];
    timeline.reverse();

    let start = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()));
    let mut next_id = 1u64;
    let mut events: Vec<String> = Vec::new();
    let tty = std::io::stdout().is_terminal();
    let mut spawn_tick = tokio::time::interval(Duration::from_millis(100));
    let mut table_tick = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    writeln!(
        out,
        "switchyard demo: {} clients over 3 backends for {:?} (Ctrl-C to stop)",
        opts.clients, d
    )?;

    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = spawn_tick.tick() => {
                let elapsed = start.elapsed();
                if elapsed >= d {
                    break;
                }
                while let Some((at, _)) = timeline.last() {
                    if *at > elapsed {
                        break;
                    }
                    let Some((_, step)) = timeline.pop() else { break };
                    let line = step.apply(&mut backends, &publish, &router).await;
                    events.push(format!("{:>4.1}s  {line}", elapsed.as_secs_f64()));
                }
                // Keep the client count up, a few arrivals per tick.
                for _ in 0..3 {
                    if entry.live.get() >= opts.clients {
                        break;
                    }
                    let life = Duration::from_millis(4_000 + rng.next() % 8_000);
                    stats.borrow_mut().summary.sessions += 1;
                    DemoClient {
                        // Counted live from here, not from `started`, so arrivals never overshoot.
                        start: ConnStart::without_client(next_id, &entry),
                        stats: stats.clone(),
                        stream: None,
                        registration: None,
                        ends_at: Instant::now() + life,
                        seq: 0,
                    }
                    .start();
                    next_id += 1;
                }
            }
            _ = table_tick.tick() => {
                let table = render(&router, &backends, &stats, &entry.live, start.elapsed(), &events).await;
                if tty {
                    write!(out, "\x1b[H\x1b[2J")?;
                }
                out.write_all(table.as_bytes())?;
                out.flush()?;
            }
        }
    }

    let summary = stats.borrow().summary.clone();
    writeln!(
        out,
        "done: {} sessions, {} requests, {} moves between backends, {} sessions cut by the killed backend",
        summary.sessions, summary.requests, summary.moves, summary.lost
    )?;
    for b in &mut backends {
        b.kill();
    }
    router.do_send(switchyard::StopRouter);
    Ok(summary)
}

enum Step {
    Kill(usize),
    Add(&'static str),
    Drain(usize),
    Undrain(usize),
}

impl Step {
    async fn apply(
        &self,
        backends: &mut Vec<EchoBackend>,
        publish: &watch::Sender<Vec<String>>,
        router: &Addr<ScoreRouter>,
    ) -> String {
        match self {
            Step::Kill(i) => {
                let b = &mut backends[*i];
                b.kill();
                format!(
                    "killed {} ({}): its clients drop, health check marks it down",
                    b.name, b.addr
                )
            }
            Step::Add(name) => match EchoBackend::start(name).await {
                Ok(b) => {
                    let line = format!(
                        "added {} ({}): rebalance moves connections onto it",
                        b.name, b.addr
                    );
                    backends.push(b);
                    let _ = publish.send(backends.iter().map(|b| b.addr.clone()).collect());
                    router.do_send(switchyard::RefreshBackends);
                    line
                }
                Err(e) => format!("could not start {name}: {e}"),
            },
            Step::Drain(i) | Step::Undrain(i) => {
                let drained = matches!(self, Step::Drain(_));
                let b = &backends[*i];
                let msg = SetDrained {
                    addr: b.addr.clone(),
                    drained,
                };
                let verb = if drained { "drained" } else { "undrained" };
                match router.send(msg).await {
                    Ok(Ok(())) if drained => format!("{verb} {}: its connections move off", b.name),
                    Ok(Ok(())) => format!("{verb} {}: it takes connections again", b.name),
                    Ok(Err(e)) => format!("{verb} {} failed: {e}", b.name),
                    Err(_) => "router is gone".to_string(),
                }
            }
        }
    }
}

async fn render(
    router: &Addr<ScoreRouter>,
    backends: &[EchoBackend],
    stats: &Shared,
    live: &LiveConns,
    elapsed: Duration,
    events: &[String],
) -> String {
    use std::fmt::Write as _;
    let snaps = router.send(GetBackends).await.unwrap_or_default();
    let drained = router.send(GetDrained).await.unwrap_or_default();
    let by_addr: BTreeMap<&str, _> = snaps.iter().map(|s| (s.addr.as_str(), s)).collect();
    let st = stats.borrow();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "t={:>3}s  clients {:>3}  requests {:>6}  moves {:>4}",
        elapsed.as_secs(),
        live.get(),
        st.summary.requests,
        st.summary.moves
    );
    let _ = writeln!(
        t,
        "  {:<4} {:<16} {:<16} {:>5} {:>6}  moves in/out",
        "", "backend", "status", "conns", "score"
    );
    for b in backends {
        let (status, conns, score) = match by_addr.get(b.addr.as_str()) {
            Some(s) => {
                let mut status = s.health.status.to_string();
                if drained.contains(&b.addr) {
                    status.push_str(", drained");
                }
                (status, s.conn_count.to_string(), s.score.to_string())
            }
            None if b.task.is_none() => ("down (removed)".into(), "0".into(), "-".into()),
            None => ("(checking)".into(), "0".into(), "-".into()),
        };
        let score = if score.len() > 6 { "max".into() } else { score };
        let _ = writeln!(
            t,
            "  {:<4} {:<16} {:<16} {:>5} {:>6} {:>6}/{}",
            b.name,
            b.addr,
            status,
            conns,
            score,
            st.moves_in.get(&b.addr).copied().unwrap_or(0),
            st.moves_out.get(&b.addr).copied().unwrap_or(0),
        );
    }
    for e in events.iter().rev().take(4).rev() {
        let _ = writeln!(t, "  > {e}");
    }
    t.push('\n');
    t
}
