//! The two proxies under test: switchyard and HAProxy, each a real process in front of the
//! three Galera nodes, and how the harness asks each which nodes it routes to.

use super::*;

/// Which proxy stands between the clients and the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Via {
    Switchyard,
    Haproxy,
}

impl Via {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Via::Switchyard => "switchyard",
            Via::Haproxy => "haproxy",
        }
    }
}

/// A proxy process in front of the cluster.
pub(crate) struct Proxy {
    pub(crate) path: Via,
    pub(crate) port: u16,
    /// switchyard: its admin port; HAProxy: unused.
    pub(crate) admin: u16,
    /// HAProxy's stats socket.
    pub(crate) stats: PathBuf,
    pub(crate) child: Child,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_proxy(k: &Knobs, path: Via, g: &Galera, work: &Path, tag: &str) -> Proxy {
    let port = free_port();
    let admin = free_port();
    let stats = work.join(format!("{tag}.sock"));
    let log = std::fs::File::create(work.join(format!("{tag}.log"))).expect("proxy log");
    let child = match path {
        Via::Switchyard => {
            let list: Vec<String> = g.addrs().iter().map(|a| a.to_string()).collect();
            let cfg = work.join(format!("{tag}.yaml"));
            std::fs::write(
                &cfg,
                format!(
                    "proxy: {{ listen: 127.0.0.1:{port}, protocol: mysql }}\n\
                     admin: {{ listen: 127.0.0.1:{admin} }}\n\
                     backends: {{ static: [{}] }}\n\
                     health_check: {{ interval: 1s }}\n\
                     balance: {{ rebalance_interval: 0s }}\n\
                     mysql: {{ users: [ {{ name: {USER}, password: {PASSWORD} }} ] }}\n\
                     log: {{ level: info }}\n",
                    list.join(", ")
                ),
            )
            .expect("write switchyard config");
            Command::new(&k.bin)
                .arg("--config")
                .arg(&cfg)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start switchyard")
        }
        Via::Haproxy => {
            let cfg = work.join(format!("{tag}.cfg"));
            let mut text = format!(
                "global\n  maxconn 8000\n  nbthread 2\n  stats socket {} level admin\n\
                 defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n\
                 listen db\n  bind 127.0.0.1:{port}\n  balance leastconn\n",
                stats.display()
            );
            for (i, a) in g.addrs().iter().enumerate() {
                text.push_str(&format!("  server n{i} {a} check inter 1s fall 2 rise 2\n"));
            }
            std::fs::write(&cfg, text).expect("write haproxy config");
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start haproxy (install Debian's haproxy)")
        }
    };
    Proxy {
        path,
        port,
        admin,
        stats,
        child,
    }
}

impl Proxy {
    /// How many of the nodes the proxy routes to (switchyard: healthy and not suspect;
    /// HAProxy: `UP`); `None` while it does not answer.
    pub(crate) async fn routable(&self, http: &reqwest::Client) -> Option<Vec<String>> {
        match self.path {
            Via::Switchyard => {
                let v: serde_json::Value = http
                    .get(format!("http://127.0.0.1:{}/backends", self.admin))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                Some(
                    v.as_array()?
                        .iter()
                        .filter(|b| {
                            b["status"] == "healthy" && !b["suspect"].as_bool().unwrap_or(false)
                        })
                        .filter_map(|b| b["addr"].as_str().map(str::to_string))
                        .collect(),
                )
            }
            Via::Haproxy => {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut s = tokio::net::UnixStream::connect(&self.stats).await.ok()?;
                s.write_all(b"show stat\n").await.ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).await.ok()?;
                let mut lines = out.lines();
                let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
                let col = |name: &str| header.iter().position(|h| *h == name);
                let (sv, st) = (col("svname")?, col("status")?);
                Some(
                    lines
                        .map(|l| l.split(',').collect::<Vec<_>>())
                        .filter(|f| f.get(sv).is_some_and(|n| n.starts_with('n')))
                        .filter(|f| f.get(st).is_some_and(|s| s.starts_with("UP")))
                        .filter_map(|f| f.get(sv).map(|s| s.to_string()))
                        .collect(),
                )
            }
        }
    }

    pub(crate) async fn wait_routable(&self, http: &reqwest::Client, want: usize) -> Duration {
        let started = Instant::now();
        while started.elapsed() < PROXY_WAIT {
            if self.routable(http).await.is_some_and(|r| r.len() == want) {
                return started.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{} did not route to {want} nodes within {PROXY_WAIT:?}",
            self.path.name()
        );
    }

    pub(crate) async fn metrics(&self, http: &reqwest::Client) -> String {
        if self.path != Via::Switchyard {
            return String::new();
        }
        match http
            .get(format!("http://127.0.0.1:{}/metrics", self.admin))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub(crate) fn opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .db_name(Some("sbtest"))
            .prefer_socket(false)
    }
}
