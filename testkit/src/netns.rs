//! A network namespace joined to this one by a veth pair, for tests that need a peer address
//! other than loopback (MariaDB's host cache, and so `max_connect_errors`, ignores 127.0.0.1).
//!
//! Everything it makes (the namespace, the pair, their two addresses, the namespace's own
//! `/etc/netns/<name>/hosts`) is named after this process and removed on drop; nothing else on
//! the host is touched. It needs root and iproute2's `ip`.
//!
//! MariaDB counts connect errors only against a host whose name lookup gave a definite answer
//! (a name that maps back to the address, or "no such name"); a lookup that fails for want of a
//! DNS server leaves the host uncounted. So the namespace gets a hosts file naming the outside
//! address (`ip netns exec` mounts it over `/etc/hosts` for the programs it runs).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::proc::{find_binary, is_root, skip_or_fail};

/// Attempts at a free /30 before giving up (another run may hold the first one picked).
const ATTEMPTS: u32 = 8;

/// A namespace `name` whose end of the pair has [`NetNs::inside`]; this namespace's end has
/// [`NetNs::outside`]. A connection from here to `inside` leaves from `outside`, so a server in
/// the namespace sees a non-loopback peer.
#[derive(Debug)]
pub struct NetNs {
    ip: PathBuf,
    name: String,
    outside_if: String,
    outside: Ipv4Addr,
    inside: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace and the pair, addresses both ends and brings them (and the
    /// namespace's loopback) up. `None`, after printing why, when not root or `ip` is missing —
    /// unless `SWITCHYARD_REQUIRE_SERVERS=1`, where that is a failure. A command that fails
    /// otherwise panics with its output, after removing what it made.
    pub fn create() -> Option<NetNs> {
        if !is_root() {
            return skip_or_fail("creating a network namespace and a veth pair needs root");
        }
        let Some(ip) = find_binary("ip") else {
            return skip_or_fail("iproute2's `ip` not found; install Debian's iproute2");
        };
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            // /30 blocks in 10.213.0.0/16, spread by pid so parallel runs rarely meet
            let block = (pid.wrapping_mul(7).wrapping_add(n)) % (1 << 14);
            let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + block * 4;
            let ns = NetNs {
                ip: ip.clone(),
                name: format!("switchyard-{pid}-{n}"),
                // interface names hold at most 15 bytes
                outside_if: format!("sy{}o", (pid % 1_000_000) * 100 + n % 100),
                outside: Ipv4Addr::from(base + 1),
                inside: Ipv4Addr::from(base + 2),
            };
            match ns.set_up() {
                Ok(()) => return Some(ns),
                Err(e) => last = e, // dropping `ns` removes what was made
            }
        }
        panic!("cannot set up a network namespace after {ATTEMPTS} attempts: {last}");
    }

    /// Where `ip netns exec` finds this namespace's own `/etc` files.
    fn etc(&self) -> PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    fn set_up(&self) -> Result<(), String> {
        let etc = self.etc();
        std::fs::create_dir_all(&etc).map_err(|e| format!("create {}: {e}", etc.display()))?;
        let hosts = format!(
            "127.0.0.1 localhost\n{} {}\n",
            self.outside,
            self.outside_name()
        );
        std::fs::write(etc.join("hosts"), hosts)
            .map_err(|e| format!("write {}/hosts: {e}", etc.display()))?;
        let inside_if = format!("{}i", self.outside_if.trim_end_matches('o'));
        let (o, i) = (self.outside.to_string(), self.inside.to_string());
        let ns = self.name.as_str();
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link",
                "add",
                &self.outside_if,
                "type",
                "veth",
                "peer",
                "name",
                &inside_if,
            ],
            &["link", "set", &inside_if, "netns", ns],
            &["addr", "add", &format!("{o}/30"), "dev", &self.outside_if],
            &["link", "set", &self.outside_if, "up"],
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{i}/30"),
                "dev",
                &inside_if,
            ],
            &["-n", ns, "link", "set", &inside_if, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
        ];
        for args in steps {
            self.run(args)?;
        }
        Ok(())
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let out = Command::new(&self.ip)
            .args(args)
            .output()
            .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of this namespace's end: what a server inside sees as our address.
    pub fn outside(&self) -> Ipv4Addr {
        self.outside
    }

    /// The name the namespace's hosts file gives [`NetNs::outside`] (what a server inside that
    /// resolves names shows as our host).
    pub fn outside_name(&self) -> String {
        format!("{}-outside", self.name)
    }

    /// The address of the namespace's end: where a server inside listens.
    pub fn inside(&self) -> Ipv4Addr {
        self.inside
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`, which execs the
    /// program, so the child's pid is the program's own).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    /// Removes the pair and the namespace (each step is harmless when the thing is gone). A
    /// process still inside keeps the namespace alive until it exits: drop servers first.
    fn drop(&mut self) {
        let _ = self.run(&["link", "del", &self.outside_if]);
        let _ = self.run(&["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(self.etc());
        // the parent too, if this left it empty (it fails harmlessly while others use it)
        let _ = std::fs::remove_dir("/etc/netns");
    }
}
