//! Three real `switchyard` processes sharing one pool through a real etcd (issue 12): routes
//! follow the global load, a drain sent to one instance reaches the others, a killed instance
//! drops out of the others' view within its lease, and a stopped etcd stops nobody serving.

mod support;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use support::{echo, free_port, http, wait_until, Backend, Behaviour, Service};
use switchyard_testkit::Etcd;

/// The lease the instances run on: short, so a killed one drops out quickly.
const LEASE_TTL: Duration = Duration::from_secs(3);

fn instance(backends: &[&str], etcd: &str, cluster: &str, id: &str) -> Service {
    Service::start(
        backends,
        &format!(
            "cluster: {{ etcd: {{ endpoints: [{etcd}] }}, name: {cluster}, instance_id: {id}, \
             lease_ttl: 3s, publish_interval: 200ms }}\n"
        ),
    )
}

/// `GET /cluster`, parsed.
fn cluster_view(s: &Service) -> serde_json::Value {
    let (code, body) = http(s.admin, "GET", "/cluster").expect("GET /cluster");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The global per-backend counts `s` sees.
fn global(s: &Service) -> BTreeMap<String, u64> {
    cluster_view(s)["backends"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn instance_ids(s: &Service) -> Vec<String> {
    cluster_view(s)["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["instance_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn own(s: &Service, addr: &str) -> u64 {
    s.conn_counts()
        .into_iter()
        .find(|(a, _)| a == addr)
        .map_or(0, |(_, n)| n)
}

fn drained(s: &Service, addr: &str) -> bool {
    s.backends()
        .iter()
        .any(|b| b["addr"] == addr && b["drained"] == true)
}

/// Opens `n` clients through `s`, each proven connected by an echo.
fn clients(s: &Service, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = s.client();
            let msg = format!("client {i}");
            assert_eq!(echo(&mut c, msg.as_bytes()).expect("echo"), msg.as_bytes());
            c
        })
        .collect()
}

#[test]
fn three_instances_share_one_pool_through_etcd() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let endpoint = etcd.endpoint();
    let name = format!("t{}", std::process::id());
    let b1 = Backend::start(Behaviour::Echo);
    // Backend 2 is down at first: nothing listens on its address yet.
    let addr2 = format!("127.0.0.1:{}", free_port());
    let list = [b1.addr.as_str(), addr2.as_str()];
    let a = instance(&list, &endpoint, &name, "a");
    let mut b = instance(&list, &endpoint, &name, "b");
    let c = instance(&list, &endpoint, &name, "c");
    for s in [&a, &b, &c] {
        wait_until("three live instances", Duration::from_secs(10), || {
            instance_ids(s).len() == 3
        });
        s.wait_healthy(1);
    }

    // (a) 20 clients held on A while backend 2 is down, all on backend 1.
    let _held_a = clients(&a, 20);
    assert_eq!(own(&a, &b1.addr), 20);
    wait_until("B sees A's 20 clients", Duration::from_secs(5), || {
        global(&b).get(&b1.addr) == Some(&20)
    });
    let _b2 = Backend::start_on(&addr2, Behaviour::Echo);
    b.wait_healthy(2);
    // New clients at B all go to backend 2 until the global counts even out (20/20).
    let _held_b = clients(&b, 20);
    assert_eq!(
        own(&b, &addr2),
        20,
        "B routed by the global view: {:?}\n{}",
        b.conn_counts(),
        b.log()
    );
    assert_eq!(own(&b, &b1.addr), 0);
    wait_until("the global counts even out", Duration::from_secs(5), || {
        let g = global(&c);
        g.get(&b1.addr) == Some(&20) && g.get(&addr2) == Some(&20)
    });

    // (b) A drain sent to A stops B and C routing there within 2 s.
    let (code, body) = http(a.admin, "POST", &format!("/backends/{addr2}/drain")).expect("drain");
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("cluster_error"), "{body}");
    for s in [&b, &c] {
        wait_until(
            "the drain reaches every instance",
            Duration::from_secs(2),
            || drained(s, &addr2),
        );
    }
    let before = own(&c, &addr2);
    let _held_c = clients(&c, 5);
    assert_eq!(own(&c, &addr2), before, "C routed to a drained backend");
    let (code, _) = http(b.admin, "POST", &format!("/backends/{addr2}/undrain")).expect("undrain");
    assert_eq!(code, 200);
    for s in [&a, &c] {
        wait_until(
            "the undrain reaches every instance",
            Duration::from_secs(2),
            || !drained(s, &addr2),
        );
    }

    // (c) Killing B (SIGKILL) removes its counts from A's view within lease_ttl + 2 s.
    b.signal(libc::SIGKILL);
    b.wait_exit(Duration::from_secs(5));
    wait_until(
        "B drops out of A's view",
        LEASE_TTL + Duration::from_secs(2),
        || instance_ids(&a) == ["a", "c"] && global(&a).get(&addr2).copied().unwrap_or(0) == 0,
    );

    // (d) Stopping etcd keeps everyone serving.
    etcd.stop();
    for s in [&a, &c] {
        clients(s, 2);
    }
    wait_until(
        "A falls back to its own view",
        LEASE_TTL + Duration::from_secs(3),
        || cluster_view(&a)["local_only"] == true,
    );
    clients(&a, 2);
    clients(&c, 2);
    let (_, metrics) = http(a.admin, "GET", "/metrics").expect("metrics");
    assert!(metrics.contains("switchyard_cluster_peers 0"), "{metrics}");
    assert!(metrics.contains("switchyard_cluster_view_age_seconds"));
}

#[test]
fn a_restarted_instance_picks_up_the_clusters_drains() {
    let Some(etcd) = Etcd::start() else {
        return;
    };
    let name = format!("r{}", std::process::id());
    let b1 = Backend::start(Behaviour::Echo);
    let b2 = Backend::start(Behaviour::Echo);
    let list = [b1.addr.as_str(), b2.addr.as_str()];
    let a = instance(&list, &etcd.endpoint(), &name, "a");
    a.wait_healthy(2);
    let (code, body) =
        http(a.admin, "POST", &format!("/backends/{}/drain", b1.addr)).expect("drain");
    assert_eq!(code, 200, "{body}");
    drop(a);
    let again = instance(&list, &etcd.endpoint(), &name, "a");
    wait_until(
        "the drain is back after a restart",
        Duration::from_secs(5),
        || drained(&again, &b1.addr),
    );
}

#[test]
fn without_a_cluster_section_nothing_is_shared_and_etcd_is_never_contacted() {
    let b1 = Backend::start(Behaviour::Echo);
    let s = Service::start(&[b1.addr.as_str()], "");
    s.wait_healthy(1);
    let _c = clients(&s, 3);
    let view = cluster_view(&s);
    assert_eq!(view["enabled"], false);
    assert_eq!(view["backends"][&b1.addr], 3);
    let (_, metrics) = http(s.admin, "GET", "/metrics").expect("metrics");
    assert!(!metrics.contains("switchyard_cluster_peers "), "{metrics}");
    assert!(!s.log().contains("joining the cluster"), "{}", s.log());
}
