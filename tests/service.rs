//! End-to-end: the real `switchyard` binary, loopback backends, real sockets.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::{echo, http, wait_until, Backend, Behaviour, Service};

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn many_clients_are_echoed_and_spread_evenly_across_backends() {
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start(Behaviour::Echo)).collect();
    let addrs: Vec<&str> = backends.iter().map(|b| b.addr.as_str()).collect();
    let svc = Service::start(&addrs, "");
    svc.wait_healthy(3);

    let mut clients: Vec<TcpStream> = (0..30).map(|_| svc.client()).collect();
    let workers: Vec<_> = clients
        .iter_mut()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.try_clone().expect("clone");
            std::thread::spawn(move || {
                let data = payload(i as u8, 64 * 1024);
                let got = echo(&mut c, &data).expect("echo through the proxy");
                assert!(got == data, "client {i}: bytes differ");
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }

    wait_until(
        "all 30 connections registered",
        Duration::from_secs(10),
        || svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() == 30,
    );
    for (addr, n) in svc.conn_counts() {
        assert!(
            (8..=12).contains(&n),
            "backend {addr} has {n} of 30 connections: not balanced"
        );
    }
    let view = &svc.backends()[0];
    for field in [
        "addr",
        "status",
        "score",
        "conn_count",
        "server_version",
        "drained",
    ] {
        assert!(
            view.get(field).is_some(),
            "GET /backends lacks {field}: {view}"
        );
    }

    drop(clients);
    wait_until(
        "connections unregistered after close",
        Duration::from_secs(10),
        || svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() == 0,
    );
}

#[test]
fn a_killed_backend_is_marked_down_and_new_connections_avoid_it() {
    let mut doomed = Backend::start(Behaviour::Echo);
    let survivor = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&doomed.addr, &survivor.addr], "");
    svc.wait_healthy(2);
    let mut before: Vec<TcpStream> = (0..4).map(|_| svc.client()).collect();
    for c in &mut before {
        echo(c, b"hello").expect("echo before the kill");
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }

    doomed.kill();
    let gone = doomed.addr.clone();
    // Clients on the killed backend see their connection end; the others keep working.
    for c in &mut before {
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => {}
            Ok(_) => panic!("unexpected data"),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert_eq!(
                    echo(c, b"alive").expect("survivor's client works"),
                    b"alive"
                )
            }
            Err(e) => panic!("client saw {e} instead of an orderly end"),
        }
    }
    drop(before);
    wait_until(
        "the killed backend is down or dropped",
        Duration::from_secs(10),
        || {
            svc.backends()
                .iter()
                .all(|b| b["addr"] != gone.as_str() || b["status"] == "down")
        },
    );

    let mut after: Vec<TcpStream> = (0..10).map(|_| svc.client()).collect();
    for (i, c) in after.iter_mut().enumerate() {
        let data = payload(i as u8, 4096);
        assert_eq!(echo(c, &data).expect("echo after the kill"), data);
    }
    wait_until(
        "the 10 new connections registered",
        Duration::from_secs(10),
        || svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() >= 10,
    );
    for (addr, n) in svc.conn_counts() {
        if addr == gone {
            assert_eq!(n, 0, "a connection was routed to the killed backend");
        }
    }
    let on_survivor = svc
        .conn_counts()
        .into_iter()
        .find(|(a, _)| *a == survivor.addr)
        .map_or(0, |(_, n)| n);
    assert!(
        on_survivor >= 10,
        "{on_survivor} connections on the survivor"
    );
}

#[test]
fn drain_sends_new_connections_elsewhere_and_an_unknown_backend_is_404() {
    let a = Backend::start(Behaviour::Echo);
    let b = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr, &b.addr], "");
    svc.wait_healthy(2);

    let (code, body) = http(svc.admin, "POST", &format!("/backends/{}/drain", a.addr)).unwrap();
    assert_eq!(code, 200, "{body}");
    let drained: Vec<_> = svc
        .backends()
        .into_iter()
        .filter(|v| v["drained"] == true)
        .collect();
    assert_eq!(drained.len(), 1);
    assert_eq!(drained[0]["addr"], a.addr.as_str());

    let mut clients: Vec<TcpStream> = (0..6).map(|_| svc.client()).collect();
    for c in &mut clients {
        echo(c, b"ping").expect("echo");
    }
    wait_until("6 connections registered", Duration::from_secs(10), || {
        svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() == 6
    });
    assert!(
        svc.conn_counts().contains(&(b.addr.clone(), 6)),
        "all new connections should be on the undrained backend: {:?}",
        svc.conn_counts()
    );

    let (code, _) = http(svc.admin, "POST", &format!("/backends/{}/undrain", a.addr)).unwrap();
    assert_eq!(code, 200);
    assert!(svc.backends().iter().all(|v| v["drained"] == false));

    let (code, body) = http(svc.admin, "POST", "/backends/10.255.255.1:1/drain").unwrap();
    assert_eq!(code, 404, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    assert!(
        err["error"]
            .as_str()
            .unwrap_or("")
            .contains("10.255.255.1:1"),
        "{body}"
    );
}

/// One sample line of the Prometheus text format: `name{labels} value`.
fn is_sample_line(line: &str) -> bool {
    let (series, value) = match line.rsplit_once(' ') {
        Some(x) => x,
        None => return false,
    };
    let value_ok = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
    let name_end = series.find('{').unwrap_or(series.len());
    let name = &series[..name_end];
    let name_ok = !name.is_empty()
        && name.chars().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
        });
    let labels_ok = name_end == series.len()
        || (series.ends_with('}')
            && series[name_end + 1..series.len() - 1]
                .split("\",")
                .all(|kv| {
                    kv.split_once("=\"").is_some_and(|(k, _)| {
                        !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                }));
    value_ok && name_ok && labels_ok
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_traffic() {
    let backend = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&backend.addr], "");
    wait_until("a healthy backend", Duration::from_secs(10), || {
        svc.backends().iter().any(|b| b["status"] == "healthy")
    });
    let mut c = svc.client();
    echo(&mut c, &payload(7, 10_000)).expect("echo");
    wait_until("the connection registered", Duration::from_secs(10), || {
        svc.conn_counts().iter().any(|(_, n)| *n == 1)
    });
    // In tcp mode a redirect is refused: that shows as a failed migration.
    let (code, _) = http(svc.admin, "POST", "/redirect").unwrap();
    assert_eq!(code, 200);
    let (code, _) = http(svc.admin, "POST", "/refresh").unwrap();
    assert_eq!(code, 200);

    let mut text = String::new();
    wait_until(
        "metrics show the traffic and the refused move",
        Duration::from_secs(10),
        || {
            let (code, body) = http(svc.admin, "GET", "/metrics").unwrap();
            assert_eq!(code, 200);
            text = body;
            text.contains("switchyard_migrations_total{result=\"failed\"} 1")
                && text
                    .lines()
                    .any(|l| l.starts_with("switchyard_bytes_in_total 10000"))
                && text
                    .lines()
                    .any(|l| l.starts_with("switchyard_bytes_out_total 10000"))
        },
    );
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let kind = comment.split_whitespace().next().unwrap_or("");
            assert!(["HELP", "TYPE"].contains(&kind), "bad comment line: {line}");
            continue;
        }
        assert!(
            is_sample_line(line),
            "not a Prometheus sample line: {line:?}"
        );
        assert!(
            line.starts_with("switchyard_"),
            "series without the switchyard_ prefix: {line}"
        );
    }
    for series in [
        "switchyard_routes_total 1",
        "switchyard_route_failures_total 0",
        "switchyard_connections_active 1",
        &format!(
            "switchyard_backend_connections{{backend=\"{}\"}} 1",
            backend.addr
        ),
        &format!(
            "switchyard_backend_status{{backend=\"{}\",status=\"healthy\"}} 1",
            backend.addr
        ),
        "switchyard_migration_duration_seconds_bucket{result=\"failed\",le=\"+Inf\"} 1",
        "switchyard_health_cycle_seconds_count",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // The connection still works after the refused move.
    assert_eq!(echo(&mut c, b"still here").expect("echo"), b"still here");
}

#[test]
fn a_backend_that_resets_or_hangs_mid_stream_affects_only_its_own_clients() {
    let good = Backend::start(Behaviour::Echo);
    let reset = Backend::start(Behaviour::ResetAfter(1500));
    let hang = Backend::start(Behaviour::HangAfter(1500));
    let svc = Service::start(&[&good.addr, &reset.addr, &hang.addr], "");
    svc.wait_healthy(3);
    let mut clients: Vec<TcpStream> = (0..9).map(|_| svc.client()).collect();
    for c in &mut clients {
        echo(c, &payload(1, 1000)).expect("the first 1000 bytes echo everywhere");
        c.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
    }
    wait_until("9 connections registered", Duration::from_secs(10), || {
        svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() == 9
    });
    assert!(
        svc.conn_counts().iter().all(|(_, n)| *n == 3),
        "{:?}",
        svc.conn_counts()
    );

    // Everyone sends more; every client is served on its own thread so a hang cannot block others.
    let results: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut c = c.try_clone().expect("clone");
            std::thread::spawn(move || echo(&mut c, &payload(2, 4000)).map(|_| ()))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let timed_out = results
        .iter()
        .filter(|r| matches!(r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)))
        .count();
    let cut = results.len() - ok - timed_out;
    assert_eq!((ok, cut, timed_out), (3, 3, 3), "results: {results:?}");

    // The good clients go on working; the reset ones are gone from the router.
    for (c, r) in clients.iter_mut().zip(&results) {
        if r.is_ok() {
            assert_eq!(
                echo(c, b"again").expect("good client still works"),
                b"again"
            );
        }
    }
    let reset_addr = reset.addr.clone();
    wait_until(
        "the reset clients are unregistered",
        Duration::from_secs(10),
        || {
            svc.conn_counts()
                .iter()
                .all(|(a, n)| *a != reset_addr || *n == 0)
        },
    );
}

#[test]
fn sigterm_lets_open_clients_finish_then_exits_0() {
    let backend = Backend::start(Behaviour::Echo);
    let mut svc = Service::start(&[&backend.addr], "shutdown_timeout: 20s\n");
    let mut clients: Vec<TcpStream> = (0..5).map(|_| svc.client()).collect();
    for c in &mut clients {
        echo(c, b"before").expect("echo");
    }
    wait_until("5 connections registered", Duration::from_secs(10), || {
        svc.conn_counts().iter().map(|(_, n)| n).sum::<u64>() == 5
    });

    svc.signal(libc::SIGTERM);
    let proxy = svc.proxy;
    wait_until("the proxy stops accepting", Duration::from_secs(10), || {
        TcpStream::connect_timeout(&proxy, Duration::from_millis(200)).is_err()
    });
    assert!(
        svc.child.try_wait().unwrap().is_none(),
        "exited with clients still open"
    );
    for c in &mut clients {
        assert_eq!(
            echo(c, b"during").expect("open clients keep working"),
            b"during"
        );
    }
    for c in clients {
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let mut c = c;
        c.read_to_end(&mut rest)
            .expect("clean close: EOF, not a reset");
        assert!(rest.is_empty());
    }
    assert_eq!(
        svc.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        svc.log()
    );
}

#[test]
fn sigterm_closes_lingering_clients_at_the_shutdown_timeout_and_exits_0() {
    let backend = Backend::start(Behaviour::Echo);
    let mut svc = Service::start(&[&backend.addr], "shutdown_timeout: 300ms\n");
    let mut c = svc.client();
    echo(&mut c, b"hi").expect("echo");
    svc.signal(libc::SIGINT);
    assert_eq!(
        svc.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        svc.log()
    );
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the client sees an orderly close");
}

fn run_with_config(yaml: Option<&str>) -> (Option<i32>, String) {
    let dir = support::scratch_dir();
    let path = dir.join("config.yaml");
    if let Some(y) = yaml {
        std::fs::write(&path, y).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run switchyard");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_config_files_exit_2_with_one_line_naming_the_key() {
    let ok_backends = "backends: { static: [127.0.0.1:4000] }\n";
    let cases: Vec<(Option<String>, &str)> = vec![
        (
            Some(format!(
                "{ok_backends}health_check: {{ max_retries: many }}\n"
            )),
            "health_check.max_retries",
        ),
        (
            Some(format!("{ok_backends}health_check: {{ interval: soon }}\n")),
            "health_check.interval",
        ),
        (
            Some(format!(
                "{ok_backends}balance: {{ max_score_ratio: 0.5 }}\n"
            )),
            "balance.max_score_ratio",
        ),
        (
            Some(format!("{ok_backends}health_chek: {{ interval: 1s }}\n")),
            "health_chek",
        ),
        (
            Some(format!("{ok_backends}proxy: {{ listn: 127.0.0.1:1 }}\n")),
            "listn",
        ),
        (
            Some(format!("{ok_backends}proxy: {{ listen: 'localhost' }}\n")),
            "proxy.listen",
        ),
        (
            Some("backends: { static: [127.0.0.1:4000, 'db:notaport'] }\n".into()),
            "backends.static[1]",
        ),
        (
            Some(format!("{ok_backends}proxy: {{ protocol: udp }}\n")),
            "proxy.protocol",
        ),
        (
            Some("proxy: { listen: 127.0.0.1:6000 }\n".into()),
            "backends",
        ),
        (None, "config.yaml"),
    ];
    for (yaml, key) in cases {
        let (code, stderr) = run_with_config(yaml.as_deref());
        assert_eq!(code, Some(2), "config {yaml:?}: stderr {stderr}");
        assert!(
            stderr.contains(key),
            "config {yaml:?}: stderr {stderr:?} should name {key}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "one line, got {stderr:?}"
        );
    }
}

#[test]
fn help_version_and_a_bad_command_line_exit_as_documented() {
    let bin = env!("CARGO_BIN_EXE_switchyard");
    let help = Command::new(bin).arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--config"));
    let version = Command::new(bin).arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let bad = Command::new(bin).arg("--no-such-flag").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_demo_moves_connections_and_exits_0() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--duration", "6s"])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = stdout
        .lines()
        .find(|l| l.starts_with("done:"))
        .expect("a closing line");
    let moves: u64 = done
        .split(", ")
        .find_map(|p| p.strip_suffix(" moves between backends"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a move count");
    assert!(moves > 0, "the demo should move connections: {done}");
    assert!(stdout.contains("drained"), "the table shows the drain");
    let _ = std::io::stdout().flush();
}

#[test]
fn a_listen_address_in_use_is_a_runtime_failure_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = taken.local_addr().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let yaml = support::config_yaml(proxy, admin, &["127.0.0.1:1"], "");
    let (code, stderr) = run_with_config(Some(&yaml));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("proxy.listen"), "{stderr}");
}

#[test]
fn the_admin_api_survives_garbage_and_lists_a_never_healthy_backend_as_down() {
    let a = Backend::start(Behaviour::Echo);
    // Nothing listens on the second backend: configured, never healthy.
    let dead = format!("127.0.0.1:{}", support::free_port());
    let svc = Service::start(&[&a.addr, &dead], "");
    wait_until(
        "both backends listed, one healthy and one down",
        Duration::from_secs(10),
        || {
            let b = svc.backends();
            b.iter()
                .any(|v| v["addr"] == a.addr.as_str() && v["status"] == "healthy")
                && b.iter()
                    .any(|v| v["addr"] == dead.as_str() && v["status"] == "down")
        },
    );

    // Garbage, a request line with no end, and a reset: the admin port shrugs them off.
    for junk in [&b"\x00\xff\x16\x03\x01garbage\r\n\r\n"[..], b"GET /", b""] {
        let mut s = TcpStream::connect(svc.admin).expect("admin accepts");
        let _ = s.write_all(junk);
        drop(s);
    }
    for (method, path) in [
        ("GET", "/no/such/thing"),
        ("DELETE", "/backends"),
        ("POST", "/backends/%zz/drain"),
        ("GET", "/backends/127.0.0.1:1/drain"),
    ] {
        let (code, body) = http(svc.admin, method, path).expect("admin answers");
        assert!((400..500).contains(&code), "{method} {path}: {code} {body}");
    }
    let (code, _) = http(svc.admin, "GET", "/health").expect("admin answers");
    assert_eq!(code, 200, "still serving after bad input");
    let mut c = svc.client();
    assert_eq!(echo(&mut c, b"still proxying").unwrap(), b"still proxying");
}
