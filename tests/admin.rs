//! End-to-end: the admin API's guard (token, CSRF, open-listen refusal), the status page and its
//! history, and `switchyard ctl` against the real binary.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use support::{
    echo, free_port, http, http_with, scratch_dir, wait_until, Backend, Behaviour, Service,
};

const TOKEN: &str = "s3cret-Token_1";

/// A service whose admin API wants [`TOKEN`].
fn with_token(backends: &[&str]) -> Service {
    let list = backends.join(", ");
    Service::start_with(|proxy, admin| {
        format!(
            "proxy: {{ listen: {proxy}, protocol: tcp }}\n\
             admin: {{ listen: {admin}, token: {TOKEN} }}\n\
             backends: {{ static: [{list}] }}\n\
             health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 300ms }}\n"
        )
    })
}

fn drained(svc: &Service, addr: &str) -> bool {
    svc.backends()
        .iter()
        .any(|b| b["addr"] == addr && b["drained"] == true)
}

fn ctl(admin: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("ctl")
        .args(args)
        .args(["--admin", admin])
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .output()
        .expect("run switchyard ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn with_a_token_every_post_needs_it_and_gets_stay_open() {
    let a = Backend::start(Behaviour::Echo);
    let svc = with_token(&[&a.addr]);
    svc.wait_healthy(1);
    let drain = format!("/backends/{}/drain", a.addr);
    let json = ("Content-Type", "application/json");

    for headers in [
        vec![json],
        vec![json, ("Authorization", "Bearer wrong")],
        vec![json, ("Authorization", "Bearer s3cret-Token_")],
        vec![("Authorization", TOKEN)],
    ] {
        let (code, body) = http_with(svc.admin, "POST", &drain, &headers).expect("admin answers");
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
    }
    for path in ["/refresh", "/redirect", "/backends/127.0.0.1:1/undrain"] {
        let (code, _) = http(svc.admin, "POST", path).expect("admin answers");
        assert_eq!(code, 401, "{path}");
    }
    assert!(!drained(&svc, &a.addr), "a refused drain changed nothing");

    let bearer = format!("Bearer {TOKEN}");
    // the token alone makes the request one no web page can send: no JSON type needed
    let (code, body) = http_with(svc.admin, "POST", &drain, &[("Authorization", &bearer)]).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(drained(&svc, &a.addr));

    for path in ["/", "/health", "/backends", "/metrics", "/history"] {
        let (code, _) = http(svc.admin, "GET", path).expect("admin answers");
        assert_eq!(code, 200, "GET {path} stays open");
    }
}

#[test]
fn without_a_token_a_post_a_web_page_could_send_is_refused() {
    let a = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr], "");
    svc.wait_healthy(1);
    let drain = format!("/backends/{}/drain", a.addr);

    for headers in [
        vec![],
        vec![("Content-Type", "text/plain")],
        vec![("Content-Type", "application/x-www-form-urlencoded")],
        vec![("Content-Type", "multipart/form-data; boundary=x")],
    ] {
        let (code, body) = http_with(svc.admin, "POST", &drain, &headers).expect("admin answers");
        assert_eq!(code, 415, "{headers:?}: {body}");
        assert!(body.contains("application/json"), "{body}");
    }
    assert!(!drained(&svc, &a.addr));

    // a browser asks before a cross-site JSON POST; the API never grants it
    let (code, body) = http_with(
        svc.admin,
        "OPTIONS",
        &drain,
        &[
            ("Origin", "http://evil.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
    )
    .expect("admin answers");
    assert!(
        !(200..300).contains(&code),
        "preflight refused: {code} {body}"
    );

    // a page that rebinds its own DNS name to 127.0.0.1 sends its name as Host
    let mut s = std::net::TcpStream::connect(svc.admin).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("POST {drain} HTTP/1.1\r\nHost: rebind.example:6080\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!drained(&svc, &a.addr));

    let (code, body) = http(svc.admin, "POST", &drain).expect("admin answers");
    assert_eq!(code, 200, "a JSON POST passes: {body}");
    assert!(drained(&svc, &a.addr));
}

fn run_with_admin_listen(admin: &str, extra: &str) -> (Option<i32>, String) {
    let dir = scratch_dir();
    let path = dir.join("config.yaml");
    let proxy = free_port();
    std::fs::write(
        &path,
        format!(
            "proxy: {{ listen: 127.0.0.1:{proxy} }}\nadmin: {{ listen: \"{admin}\"{extra} }}\nbackends: {{ static: [127.0.0.1:1] }}\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut status = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        status = child.try_wait().expect("try_wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("output");
    let _ = std::fs::remove_dir_all(&dir);
    (status.and_then(|s| s.code()), text(&out.stderr))
}

#[test]
fn an_admin_api_open_to_other_hosts_without_a_token_does_not_start() {
    let port = free_port();
    let (code, stderr) = run_with_admin_listen(&format!("0.0.0.0:{port}"), "");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("admin.listen"), "{stderr}");
    assert!(stderr.contains("admin.token"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // the operator's explicit override: it starts (and is still running when we look)
    let (code, stderr) =
        run_with_admin_listen(&format!("0.0.0.0:{port}"), ", allow_insecure: true");
    assert_eq!(code, None, "runs until killed: {stderr}");
}

#[test]
fn the_status_page_is_one_self_contained_html_page() {
    let a = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr], "");
    let (code, page) = http(svc.admin, "GET", "/").expect("admin answers");
    assert_eq!(code, 200);
    assert!(
        page.starts_with("<!doctype html>"),
        "{}",
        &page[..80.min(page.len())]
    );
    assert!(
        page.contains(env!("CARGO_PKG_VERSION")),
        "shows the version"
    );
    for external in ["src=", "href=", "@import", "url("] {
        assert!(
            !page.contains(external),
            "loads nothing from elsewhere: {external}"
        );
    }
    for piece in ["<table", "<svg", "sessionStorage", "Authorization", "2000"] {
        assert!(page.contains(piece), "{piece}");
    }
}

#[test]
fn the_history_counts_the_connections_routed_in_the_last_minute() {
    let a = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr], "");
    svc.wait_healthy(1);
    for i in 0..5u8 {
        let mut c = svc.client();
        assert_eq!(echo(&mut c, &[i; 16]).expect("echo"), vec![i; 16]);
    }
    let routed = || -> u64 {
        let (_, body) = http(svc.admin, "GET", "/history").expect("admin answers");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["interval_seconds"], 1);
        assert!(v["routes"].as_array().is_some_and(|r| r.len() <= 60));
        v["routes"]
            .as_array()
            .map(|r| r.iter().filter_map(|n| n.as_u64()).sum())
            .unwrap_or(0)
    };
    wait_until("5 routes in /history", Duration::from_secs(5), || {
        routed() >= 5
    });
    assert_eq!(routed(), 5);
}

#[test]
fn ctl_lists_drains_and_undrains_through_the_admin_api() {
    let a = Backend::start(Behaviour::Echo);
    let b = Backend::start(Behaviour::Echo);
    let svc = with_token(&[&a.addr, &b.addr]);
    svc.wait_healthy(2);
    let admin = format!("http://{}", svc.admin);

    let out = ctl(&admin, &["backends", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        listed,
        serde_json::Value::Array(svc.backends()),
        "same list as GET /backends"
    );

    let out = ctl(&admin, &["backends"]);
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(table.starts_with("BACKEND"), "{table}");
    assert!(
        table.contains(&a.addr) && table.contains(&b.addr),
        "{table}"
    );
    assert!(table.contains("healthy"), "{table}");

    let out = ctl(&admin, &["drain", &a.addr, "--token", TOKEN]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("drained {}", a.addr)));
    assert!(drained(&svc, &a.addr));

    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["ctl", "--admin", &admin, "undrain", &a.addr, "--json"])
        .env("SWITCHYARD_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        answer,
        serde_json::json!({ "addr": a.addr, "drained": false })
    );
    assert!(!drained(&svc, &a.addr));

    for action in [&["refresh"][..], &["redirect"][..]] {
        let mut args = action.to_vec();
        args.extend(["--token", TOKEN]);
        let out = ctl(&admin, &args);
        assert!(out.status.success(), "{action:?}: {}", text(&out.stderr));
    }
}

#[test]
fn ctl_says_clearly_when_the_instance_refuses_or_cannot_be_reached() {
    let a = Backend::start(Behaviour::Echo);
    let svc = with_token(&[&a.addr]);
    let admin = format!("http://{}", svc.admin);

    let out = ctl(&admin, &["drain", &a.addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("401") && err.contains("--token"), "{err}");
    assert!(!drained(&svc, &a.addr));

    let out = ctl(&admin, &["drain", "10.255.255.1:1", "--token", TOKEN]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("404") && err.contains("10.255.255.1:1"),
        "{err}"
    );

    let nobody: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let out = ctl(&nobody.to_string(), &["backends"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the admin API"), "{err}");
    assert!(err.contains(&nobody.to_string()), "{err}");

    let out = ctl(&admin, &["drain"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing ADDR is a bad command line"
    );
}

#[test]
fn sighup_reloads_and_does_not_end_the_service() {
    let a = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr], "");
    svc.wait_healthy(1);
    svc.signal(libc::SIGHUP);
    wait_until("the reload is logged", Duration::from_secs(5), || {
        svc.log().contains("SIGHUP")
    });
    let (code, _) = http(svc.admin, "GET", "/health").expect("still serving");
    assert_eq!(code, 200);
    let mut c = svc.client();
    assert_eq!(
        echo(&mut c, b"after reload").expect("echo"),
        b"after reload"
    );
}

/// Every `switchyard_…` series a dashboard query names, with a histogram's `_bucket` suffix
/// taken off.
fn series_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("switchyard_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        out.push(name.strip_suffix("_bucket").unwrap_or(name).to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_grafana_dashboard_asks_only_for_series_the_service_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../deploy/grafana-dashboard.json")).expect("JSON");
    let sources = [
        include_str!("../src/metrics.rs"),
        include_str!("../actors/src/observer.rs"),
    ]
    .concat();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "a dashboard with queries");
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        for series in series_in(expr) {
            assert!(
                sources.contains(&format!("\"{series}\"")),
                "the dashboard asks for {series}, which nothing exports: {expr}"
            );
            used.insert(series);
        }
    }
    for core in [
        "switchyard_connections_active",
        "switchyard_backend_connections",
        "switchyard_routes_total",
        "switchyard_migrations_total",
        "switchyard_backend_status",
    ] {
        assert!(used.contains(core), "the dashboard shows {core}");
    }
}

#[test]
fn the_systemd_unit_is_hardened_and_reloads_with_sighup() {
    let unit = include_str!("../deploy/switchyard.service");
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "RestartPreventExitStatus=2",
    ] {
        assert!(unit.contains(line), "the unit has {line:?}");
    }
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
    else {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"skipping systemd-analyze verify: not installed\n",
        );
        return;
    };
    // verify the unit as written, with ExecStart pointing at the binary under test
    let dir = scratch_dir();
    let path = dir.join("switchyard.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/switchyard",
            env!("CARGO_BIN_EXE_switchyard"),
        ),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
