//! `EtcdFetcher` against a real etcd (topology, bad entries, etcd stopped and restarted, endpoint
//! fail-over) and against HTTP doubles that are not etcd at all. Keys are written through etcd's
//! JSON gateway, the same API the fetcher reads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use switchyard::*;
use switchyard_testkit::doubles::{refused_addr, HttpBehaviour, HttpDouble};
use switchyard_testkit::Collector;
use switchyard_testkit::{Etcd, MariaDb};
use tokio::sync::mpsc;

/// Short timeouts so failure paths finish quickly.
fn fast() -> EtcdConfig {
    EtcdConfig {
        request_timeout: Duration::from_millis(500),
        rounds: 3,
        backoff: Duration::from_millis(50),
    }
}

async fn put(etcd: &Etcd, key: &str, value: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{}/v3/kv/put", etcd.endpoint()))
        .json(&serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) }))
        .send()
        .await
        .expect("put reaches etcd");
    assert!(resp.status().is_success(), "put {key}: {}", resp.status());
}

/// Registers a TiDB the way TiDB does: `info` JSON plus a `ttl` key.
async fn register(etcd: &Etcd, addr: &str, ip: &str, status_port: u16) {
    let info = serde_json::json!({
        "version": "8.0.11-TiDB-v8.5.0", "git_hash": "abc", "ip": ip,
        "listening_port": 4000, "status_port": status_port, "deploy_path": "/tidb",
        "start_timestamp": 1_700_000_000, "labels": {},
    });
    put(
        etcd,
        &format!("/topology/tidb/{addr}/info"),
        &info.to_string(),
    )
    .await;
    put(
        etcd,
        &format!("/topology/tidb/{addr}/ttl"),
        "1700000000000000000",
    )
    .await;
}

fn info(ip: &str, status_port: u16) -> BackendInfo {
    BackendInfo {
        ip: ip.into(),
        status_port,
    }
}

#[actix_rt::test]
async fn the_topology_lists_backends_that_have_both_info_and_ttl() {
    let Some(etcd) = Etcd::start() else { return };
    register(&etcd, "10.0.0.1:4000", "10.0.0.1", 10080).await;
    register(&etcd, "10.0.0.2:4000", "10.0.0.2", 10081).await;
    put(
        &etcd,
        "/topology/tidb/10.0.0.3:4000/info",
        r#"{"ip":"10.0.0.3","status_port":10080}"#,
    )
    .await;
    put(
        &etcd,
        "/topology/tidb/10.0.0.4:4000/ttl",
        "1700000000000000000",
    )
    .await;
    put(&etcd, "/topology/tikv/10.0.0.5:20160/info", "{}").await;

    let list = EtcdFetcher::new(vec![etcd.endpoint()])
        .get_backend_list()
        .await
        .expect("fetch");
    assert_eq!(
        list,
        HashMap::from([
            ("10.0.0.1:4000".to_string(), info("10.0.0.1", 10080)),
            ("10.0.0.2:4000".to_string(), info("10.0.0.2", 10081)),
        ])
    );
}

#[actix_rt::test]
async fn malformed_info_and_keys_without_an_address_are_skipped_without_spoiling_the_rest() {
    let Some(etcd) = Etcd::start() else { return };
    register(&etcd, "10.0.0.1:4000", "10.0.0.1", 10080).await;
    put(&etcd, "/topology/tidb/10.0.0.2:4000/info", "{not json").await;
    put(&etcd, "/topology/tidb/10.0.0.2:4000/ttl", "1").await;
    put(
        &etcd,
        "/topology/tidb/10.0.0.3:4000/info",
        r#"["an array"]"#,
    )
    .await;
    put(&etcd, "/topology/tidb/10.0.0.3:4000/ttl", "1").await;
    put(&etcd, "/topology/tidb//info", r#"{"ip":"x"}"#).await;
    put(&etcd, "/topology/tidb//ttl", "1").await;
    put(&etcd, "/topology/tidb/info", r#"{"ip":"x"}"#).await;
    put(&etcd, "/topology/tidb/\u{1f}\u{0}/info", r#"{"ip":"x"}"#).await;

    let fetcher = EtcdFetcher::new(vec![etcd.endpoint()]);
    for _ in 0..2 {
        let list = fetcher.get_backend_list().await.expect("fetch");
        assert_eq!(list.keys().collect::<Vec<_>>(), vec!["10.0.0.1:4000"]);
    }
}

#[actix_rt::test]
async fn an_empty_topology_is_an_empty_list_not_an_error() {
    let Some(etcd) = Etcd::start() else { return };
    let list = EtcdFetcher::new(vec![etcd.endpoint()])
        .get_backend_list()
        .await
        .expect("fetch");
    assert!(list.is_empty());
}

#[actix_rt::test]
async fn a_stopped_etcd_is_a_bounded_fetch_error_and_a_restarted_one_serves_again() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    register(&etcd, "10.0.0.1:4000", "10.0.0.1", 10080).await;
    let fetcher = EtcdFetcher::with_config(vec![etcd.endpoint()], fast());
    assert_eq!(fetcher.get_backend_list().await.expect("fetch").len(), 1);

    etcd.stop();
    let started = Instant::now();
    let err = fetcher.get_backend_list().await.unwrap_err();
    let took = started.elapsed();
    assert!(err.message().contains("failed 3 time(s)"), "{err}");
    assert!(err.message().to_lowercase().contains("refused"), "{err}");
    // Three rounds, two back-offs (50 + 100 ms); refused connections fail at once.
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");

    etcd.restart();
    let list = fetcher
        .get_backend_list()
        .await
        .expect("fetch after restart");
    assert_eq!(list["10.0.0.1:4000"], info("10.0.0.1", 10080));
}

#[actix_rt::test]
async fn a_dead_endpoint_fails_over_to_a_live_one_and_the_live_one_is_tried_first_next_time() {
    let Some(etcd) = Etcd::start() else { return };
    register(&etcd, "10.0.0.1:4000", "10.0.0.1", 10080).await;

    let refused = refused_addr().await;
    let list = EtcdFetcher::with_config(vec![refused.to_string(), etcd.endpoint()], fast())
        .get_backend_list()
        .await
        .expect("fail-over past a refused endpoint");
    assert_eq!(list.len(), 1);

    let hung = HttpDouble::start(HttpBehaviour::Silent).await;
    let fetcher = EtcdFetcher::with_config(
        vec![format!("http://{}", hung.addr()), etcd.endpoint()],
        fast(),
    );
    let started = Instant::now();
    assert_eq!(fetcher.get_backend_list().await.expect("fetch").len(), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited out the hung one"
    );
    let started = Instant::now();
    assert_eq!(fetcher.get_backend_list().await.expect("fetch").len(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the endpoint that answered last is tried first"
    );
    assert_eq!(hung.accepted(), 1);
}

#[actix_rt::test]
async fn hung_endpoints_give_a_fetch_error_within_the_bound() {
    let a = HttpDouble::start(HttpBehaviour::Silent).await;
    let b = HttpDouble::start(HttpBehaviour::Silent).await;
    let cfg = EtcdConfig {
        request_timeout: Duration::from_millis(200),
        rounds: 2,
        backoff: Duration::from_millis(50),
    };
    let fetcher = EtcdFetcher::with_config(vec![a.addr().to_string(), b.addr().to_string()], cfg);
    let started = Instant::now();
    let err = fetcher.get_backend_list().await.unwrap_err();
    let took = started.elapsed();
    assert!(err.message().contains("timed out after 200ms"), "{err}");
    // 2 rounds × 2 endpoints × 200 ms + 50 ms back-off.
    assert!(took >= Duration::from_millis(850), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert_eq!((a.accepted(), b.accepted()), (2, 2));
}

#[actix_rt::test]
async fn an_endpoint_that_is_not_etcd_is_an_error_not_an_empty_topology() {
    for behaviour in [
        HttpBehaviour::Status(200),
        HttpBehaviour::Status(404),
        HttpBehaviour::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec()),
        HttpBehaviour::Raw(b"\x16\x03\x01 not http".to_vec()),
    ] {
        let http = HttpDouble::start(behaviour.clone()).await;
        let cfg = EtcdConfig {
            rounds: 1,
            ..fast()
        };
        let res = EtcdFetcher::with_config(vec![http.addr().to_string()], cfg)
            .get_backend_list()
            .await;
        assert!(res.is_err(), "{behaviour:?} gave {res:?}");
    }
}

#[actix_rt::test]
async fn an_endpoint_streaming_without_end_is_cut_off_with_a_bounded_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n";
                if s.write_all(head).await.is_err() {
                    return;
                }
                let block = vec![b' '; 1 << 20];
                // Until the client hangs up.
                while s.write_all(&block).await.is_ok() {}
            });
        }
    });
    let cfg = EtcdConfig {
        rounds: 1,
        request_timeout: Duration::from_secs(20),
        ..fast()
    };
    let started = Instant::now();
    let err = EtcdFetcher::with_config(vec![format!("http://{addr}")], cfg)
        .get_backend_list()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut off by size, not by the timeout"
    );
}

// ---- Inside the observer ----------------------------------------------------------------------

async fn next(rx: &mut mpsc::UnboundedReceiver<BackendsChanged>) -> BackendsChanged {
    tokio::time::timeout(Duration::from_secs(15), rx.recv())
        .await
        .expect("a report within 15 s")
        .expect("observer alive")
}

#[actix_rt::test]
async fn the_observer_finds_a_real_mariadb_through_etcd_and_reports_etcd_going_away() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let Some(db) = MariaDb::shared() else { return };
    let status = HttpDouble::start(HttpBehaviour::Status(200)).await;
    let addr = db.addr().to_string();
    register(&etcd, &addr, "127.0.0.1", status.addr().port()).await;

    let cfg = HealthCheckConfig {
        interval: Duration::from_secs(3600),
        max_retries: 0,
        ..HealthCheckConfig::default()
    };
    let (collector, mut rx) = Collector::start_new();
    let observer = BackendObserver::new(
        EtcdFetcher::with_config(vec![etcd.endpoint()], fast()),
        DefaultHealthCheck::new(cfg.clone()),
        cfg,
        collector.clone().recipient(),
    )
    .start();

    let first = next(&mut rx).await;
    assert!(first.error.is_none());
    assert_eq!(first.backends[&addr].status, BackendStatus::Healthy);
    assert!(first.backends[&addr].server_version.contains("MariaDB"));
    assert_eq!(
        status.accepted(),
        1,
        "the status port from etcd's info was probed"
    );

    etcd.stop();
    observer.do_send(Refresh);
    let report = next(&mut rx).await;
    assert!(
        matches!(report.error, Some(ObserveError::Fetch(_))),
        "{report:?}"
    );

    etcd.restart();
    observer.do_send(Refresh);
    let report = next(&mut rx).await;
    assert!(report.error.is_none(), "{report:?}");
}
