//! Tests of configuration loading: defaults, every key, and the errors a bad file gets.

use super::*;

pub(super) fn load(yaml: &str) -> Result<Config, ConfigError> {
    load_env(yaml, vec![])
}

pub(super) fn load_env(yaml: &str, env: Vec<(&str, &str)>) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-config-test-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let env = env
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = Config::load_with_env(&path, Some(env));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

const MINIMAL: &str = "backends:\n  static: [127.0.0.1:4000, db1.local:4001]\n";

#[test]
fn a_minimal_file_takes_the_documented_defaults() {
    let c = load(MINIMAL).expect("valid");
    assert_eq!(c.proxy_listen, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(c.admin_listen, "127.0.0.1:6080".parse().unwrap());
    assert_eq!(c.protocol, Protocol::Tcp);
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.login_timeout, Duration::from_secs(10));
    assert_eq!(c.max_connections, 0);
    assert_eq!(c.half_close_timeout, Duration::from_secs(30));
    assert_eq!(c.health.probe, Probe::Tcp);
    assert_eq!(c.health.interval, Duration::from_secs(3));
    assert_eq!(c.router, RouterConfig::default());
    assert_eq!(c.shutdown_timeout, Duration::from_secs(15));
    assert_eq!(
        c.discovery,
        Discovery::Static(vec!["127.0.0.1:4000".into(), "db1.local:4001".into()])
    );
}

#[test]
fn durations_read_as_humans_write_them() {
    let c = load(
        "backends: { static: [127.0.0.1:1] }\nhealth_check: { interval: 10ms, dial_timeout: 1m }\nshutdown_timeout: 3s\n",
    )
    .expect("valid");
    assert_eq!(c.health.interval, Duration::from_millis(10));
    assert_eq!(c.health.dial_timeout, Duration::from_secs(60));
    assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
}

#[test]
fn the_proxy_connect_timeout_is_its_own_key_and_must_be_positive() {
    let c = load(
        "proxy: { connect_timeout: 750ms }\nbackends: { static: [127.0.0.1:1] }\nhealth_check: { dial_timeout: 5s }\n",
    )
    .expect("valid");
    assert_eq!(c.connect_timeout, Duration::from_millis(750));
    assert_eq!(c.health.dial_timeout, Duration::from_secs(5));
    let e =
        load("proxy: { connect_timeout: 0s }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
    assert_eq!(e.key, "proxy.connect_timeout", "{e}");
    let e = load("proxy: { connect_timeout: soon }\nbackends: { static: [127.0.0.1:1] }\n")
        .unwrap_err();
    assert_eq!(e.key, "proxy.connect_timeout", "{e}");
}

#[test]
fn the_front_door_keys_are_read_and_their_timeouts_must_be_positive() {
    let c = load(
        "proxy: { login_timeout: 1500ms, max_connections: 300, half_close_timeout: 2m }\nbackends: { static: [127.0.0.1:1] }\n",
    )
    .expect("valid");
    assert_eq!(c.login_timeout, Duration::from_millis(1500));
    assert_eq!(c.max_connections, 300);
    assert_eq!(c.half_close_timeout, Duration::from_secs(120));
    for key in ["login_timeout", "half_close_timeout"] {
        let e = load(&format!(
            "proxy: {{ {key}: 0s }}\nbackends: {{ static: [127.0.0.1:1] }}\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, format!("proxy.{key}"), "{e}");
    }
    let e =
        load("proxy: { max_connections: -1 }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
    assert_eq!(e.key, "proxy.max_connections", "{e}");
}

#[test]
fn failover_settings_default_to_on_1_mib_and_10_seconds_and_read_byte_sizes() {
    let c = load(MINIMAL).unwrap();
    assert!(c.failover.reattach && c.failover.replay_transactions);
    assert_eq!(c.failover.max_replay_bytes, 1 << 20);
    assert_eq!(c.failover.timeout, Duration::from_secs(10));
    let c = load(
        "backends: { static: [127.0.0.1:1] }\nfailover: { reattach: false, replay_transactions: false, max_replay_bytes: 512KiB, timeout: 3s }\n",
    )
    .unwrap();
    assert!(!c.failover.reattach && !c.failover.replay_transactions);
    assert_eq!(c.failover.max_replay_bytes, 512 << 10);
    assert_eq!(c.failover.timeout, Duration::from_secs(3));
    let c = load("backends: { static: [127.0.0.1:1] }\nfailover: { max_replay_bytes: 4096 }\n")
        .unwrap();
    assert_eq!(c.failover.max_replay_bytes, 4096);
    let e = load("backends: { static: [127.0.0.1:1] }\nfailover: { max_replay_bytes: lots }\n")
        .unwrap_err();
    assert_eq!(e.key, "failover.max_replay_bytes", "{e}");
    let e = load("backends: { static: [127.0.0.1:1] }\nfailover: { timeout: 0s }\n").unwrap_err();
    assert_eq!(e.key, "failover.timeout", "{e}");
}

#[test]
fn the_mysql_move_timeout_defaults_to_five_seconds_and_must_be_positive() {
    assert_eq!(
        load(MINIMAL).unwrap().mysql_move_timeout,
        Duration::from_secs(5)
    );
    let c = load("backends: { static: [127.0.0.1:1] }\nmysql: { move_timeout: 750ms }\n")
        .expect("valid");
    assert_eq!(c.mysql_move_timeout, Duration::from_millis(750));
    let e = load("backends: { static: [127.0.0.1:1] }\nmysql: { move_timeout: 0s }\n").unwrap_err();
    assert_eq!(e.key, "mysql.move_timeout", "{e}");
}

#[test]
fn an_unknown_key_is_an_error_naming_it() {
    let e =
        load("backends: { static: [127.0.0.1:1] }\nhealth_check: { intervl: 3s }\n").unwrap_err();
    assert!(e.key.contains("health_check"), "{e}");
    assert!(e.to_string().contains("intervl"), "{e}");
}

#[test]
fn a_wrong_type_names_the_key() {
    let e = load("backends: { static: [127.0.0.1:1] }\nhealth_check: { max_retries: lots }\n")
        .unwrap_err();
    assert_eq!(e.key, "health_check.max_retries", "{e}");
    let e = load("backends: { static: [127.0.0.1:1] }\nbalance: { rebalance_interval: soon }\n")
        .unwrap_err();
    assert_eq!(e.key, "balance.rebalance_interval", "{e}");
}

#[test]
fn bad_addresses_name_the_key() {
    let e = load("proxy: { listen: nowhere }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
    assert_eq!(e.key, "proxy.listen");
    let e = load("backends: { static: [127.0.0.1:1, 'bad host:99999'] }\n").unwrap_err();
    assert_eq!(e.key, "backends.static[1]");
}

#[test]
fn backends_must_be_given_one_way() {
    assert_eq!(
        load("proxy: { protocol: tcp }\n").unwrap_err().key,
        "backends"
    );
    let e =
        load("backends: { static: [127.0.0.1:1], etcd: { endpoints: [http://127.0.0.1:2379] } }\n")
            .unwrap_err();
    assert_eq!(e.key, "backends");
    let c = load("backends: { etcd: { endpoints: [http://127.0.0.1:2379] } }\n").unwrap();
    assert_eq!(
        c.discovery,
        Discovery::Etcd(vec!["http://127.0.0.1:2379".into()], EtcdConfig::default())
    );
    let c = load(
        "backends: { etcd: { endpoints: [http://127.0.0.1:2379], request_timeout: 500ms, rounds: 5 } }\n",
    )
    .unwrap();
    let Discovery::Etcd(_, etcd) = c.discovery else {
        panic!("etcd discovery");
    };
    assert_eq!(etcd.request_timeout, Duration::from_millis(500));
    assert_eq!(
        (etcd.rounds, etcd.backoff),
        (5, EtcdConfig::default().backoff)
    );
    let e = load("backends: { etcd: { endpoints: [http://127.0.0.1:2379], rounds: 0 } }\n")
        .unwrap_err();
    assert_eq!(e.key, "backends.etcd.rounds");
}

#[test]
fn environment_overrides_the_file() {
    let c = load_env(
        MINIMAL,
        vec![
            ("SWITCHYARD__HEALTH_CHECK__INTERVAL", "250ms"),
            ("SWITCHYARD__PROXY__LISTEN", "127.0.0.1:7000"),
            ("SWITCHYARD__BACKENDS__STATIC", "127.0.0.1:1,127.0.0.1:2"),
        ],
    )
    .expect("valid");
    assert_eq!(c.health.interval, Duration::from_millis(250));
    assert_eq!(c.proxy_listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(
        c.discovery,
        Discovery::Static(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()])
    );
}

#[test]
fn mysql_users_take_a_password_or_a_hash() {
    let c = load(
        "proxy: { protocol: mysql }\nbackends: { static: [127.0.0.1:1] }\nmysql:\n  users:\n    - { name: app, password: pw }\n    - { name: ro, password_hash: \"*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19\" }\n",
    )
    .expect("valid");
    assert_eq!(c.health.probe, Probe::Mysql);
    assert_eq!(c.mysql_users.len(), 2);
    assert_eq!(
        c.mysql_users[1].secret,
        MysqlSecret::Hash([
            0x24, 0x70, 0xC0, 0xC0, 0x6D, 0xEE, 0x42, 0xFD, 0x16, 0x18, 0xBB, 0x99, 0x00, 0x5A,
            0xDC, 0xA2, 0xEC, 0x9D, 0x1E, 0x19
        ])
    );
    let e = load(
        "backends: { static: [127.0.0.1:1] }\nmysql: { users: [ { name: x, password_hash: \"abc\" } ] }\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "mysql.users[0].password_hash");
}

#[test]
fn a_missing_file_is_reported_with_its_path() {
    let e =
        Config::load_with_env(Path::new("/nonexistent/switchyard.yaml"), Some(vec![])).unwrap_err();
    assert!(
        e.to_string().contains("/nonexistent/switchyard.yaml"),
        "{e}"
    );
}

#[test]
fn the_admin_api_on_loopback_needs_no_token() {
    let c = load(MINIMAL).expect("valid");
    assert_eq!(c.admin_token, None);
    let c = load("admin: { listen: \"[::1]:6080\" }\nbackends: { static: [127.0.0.1:1] }\n")
        .expect("valid");
    assert_eq!(c.admin_token, None);
}

#[test]
fn an_admin_api_reachable_from_other_hosts_without_a_token_is_refused() {
    let e =
        load("admin: { listen: 0.0.0.0:6080 }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
    assert_eq!(e.key, "admin.listen");
    assert!(e.msg.contains("admin.token"), "{e}");
    assert!(e.msg.contains("allow_insecure"), "{e}");

    let c = load(
        "admin: { listen: 0.0.0.0:6080, allow_insecure: true }\nbackends: { static: [127.0.0.1:1] }\n",
    )
    .expect("the operator accepted the risk");
    assert_eq!(c.admin_token, None);
    let c = load(
        "admin: { listen: 0.0.0.0:6080, token: s3cret }\nbackends: { static: [127.0.0.1:1] }\n",
    )
    .expect("a token protects it");
    assert_eq!(c.admin_token, Some(AdminToken::new("s3cret")));
}

#[test]
fn the_admin_token_comes_from_the_environment_and_never_shows_in_debug_output() {
    let c = load_env(
        "admin: { listen: 0.0.0.0:6080 }\nbackends: { static: [127.0.0.1:1] }\n",
        vec![("SWITCHYARD__ADMIN__TOKEN", "from-env")],
    )
    .expect("valid");
    assert_eq!(
        c.admin_token.as_ref().map(AdminToken::as_str),
        Some("from-env")
    );
    assert!(!format!("{c:?}").contains("from-env"));
}

#[test]
fn an_admin_token_that_cannot_travel_in_a_header_is_refused() {
    let e =
        load("admin: { token: \"two words\" }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
    assert_eq!(e.key, "admin.token");
}

#[test]
fn tls_and_proxy_protocol_mistakes_name_their_key() {
    let b = "backends: { static: [127.0.0.1:1] }\n";
    let cases = [
        (
            "proxy: { tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem } }\n",
            "proxy.tls.cert",
        ),
        (
            "proxy: { tls: { cert: /nonexistent/c.pem } }\n",
            "proxy.tls.key",
        ),
        (
            "proxy: { proxy_protocol: v2 }\n",
            "proxy.proxy_protocol_from",
        ),
        (
            "proxy: { proxy_protocol: v1, proxy_protocol_from: [10.0.0.0/8] }\n",
            "proxy.proxy_protocol",
        ),
        (
            "proxy: { proxy_protocol: v2, proxy_protocol_from: [10.0.0.0/8, nowhere] }\n",
            "proxy.proxy_protocol_from[1]",
        ),
        (
            "proxy: { proxy_protocol_from: [10.0.0.0/8] }\n",
            "proxy.proxy_protocol_from",
        ),
    ];
    for (yaml, key) in cases {
        let e = load(&format!("{yaml}{b}")).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
    }
    let e = load(
        "backends: { static: [127.0.0.1:1], tls: { enable: true, ca: /nonexistent/ca.pem } }\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "backends.tls.ca", "{e}");
    assert!(e.msg.contains("/nonexistent/ca.pem"), "{e}");
    let c = load(
        "proxy: { proxy_protocol: v2, proxy_protocol_from: [10.0.0.0/8] }\nbackends: { static: [127.0.0.1:1], send_proxy_protocol: true, tls: { enable: true, insecure_skip_verify: true } }\n",
    )
    .expect("valid");
    assert!(c.door.proxy_protocol.is_some() && c.door.tls.is_none());
    assert!(c.door.backend.send_proxy_protocol && c.door.backend.tls.is_some());
    assert!(
        c.door.backend.tls_at_connect,
        "tcp mode: TLS from the first byte"
    );
    let c = load(MINIMAL).expect("valid");
    assert!(c.door.is_open() && c.door.backend.tls.is_none());
}

#[test]
fn no_cluster_section_means_no_cluster() {
    let c = load(MINIMAL).expect("valid");
    assert_eq!(c.cluster, None);
    assert_eq!(
        c.policy.rebalance_cooldown,
        Duration::ZERO,
        "no cooldown alone"
    );
}

#[test]
fn a_cluster_cools_rebalanced_connections_for_four_publish_intervals() {
    let c = load(&format!(
        "{MINIMAL}cluster: {{ etcd: {{ endpoints: [http://127.0.0.1:2379] }}, lease_ttl: 3s, publish_interval: 500ms }}\n"
    ))
    .expect("valid");
    assert_eq!(c.policy.rebalance_cooldown, Duration::from_secs(2));
}

#[test]
fn a_cluster_section_takes_its_defaults_and_checks_its_keys() {
    let c = load(&format!(
        "{MINIMAL}cluster: {{ etcd: {{ endpoints: [http://127.0.0.1:2379] }} }}\n"
    ))
    .expect("valid")
    .cluster
    .expect("cluster");
    assert_eq!(c.name, "default");
    assert!(c.instance_id.ends_with(":6080"), "{}", c.instance_id);
    assert_eq!(c.lease_ttl, Duration::from_secs(10));
    assert_eq!(c.publish_interval, Duration::from_secs(1));
    for (yaml, key) in [
        (
            "cluster: { etcd: { endpoints: [] } }",
            "cluster.etcd.endpoints",
        ),
        (
            "cluster: { etcd: { endpoints: [e:2379] }, name: a/b }",
            "cluster.name",
        ),
        (
            "cluster: { etcd: { endpoints: [e:2379] }, lease_ttl: 1s }",
            "cluster.lease_ttl",
        ),
        (
            "cluster: { etcd: { endpoints: [e:2379] }, lease_ttl: 4s, publish_interval: 3s }",
            "cluster.publish_interval",
        ),
    ] {
        let e = load(&format!("{MINIMAL}{yaml}\n")).expect_err(yaml);
        assert_eq!(e.key, key, "{yaml}: {e:?}");
    }
}
