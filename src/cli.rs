//! The command line: `switchyard [--config PATH]` runs the service, `switchyard demo` the demo,
//! `switchyard ctl …` talks to a running instance's admin API.
//!
//! Parsed with clap; a bad command line exits 2 (clap's own convention, and DESIGN section 9's).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// switchyard: a connection router for database proxies.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short = 'c', value_name = "PATH", default_value = "config.yaml")]
    pub config: PathBuf,
    /// What to run; the service when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a live demo: in-process backends and clients, with failover, scale-out and drain.
    Demo {
        /// How long the demo runs (e.g. 30s, 2m).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Operate a running instance through its admin API: list, drain or undrain backends,
    /// refresh, redirect.
    Ctl(CtlArgs),
}

/// `switchyard ctl`: where the instance is, how to prove the right to change it, what to do.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The instance's admin API [default: $SWITCHYARD_ADMIN, else http://127.0.0.1:6080].
    #[arg(long, global = true, value_name = "URL")]
    pub admin: Option<String>,
    /// The instance's admin.token, sent on changes [default: $SWITCHYARD_ADMIN_TOKEN]. The
    /// environment variable keeps it out of `ps`.
    #[arg(long, global = true, value_name = "T")]
    pub token: Option<String>,
    /// Print the admin API's JSON answer instead of a table or a sentence.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: CtlAction,
}

/// What `switchyard ctl` asks the instance to do.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum CtlAction {
    /// List the backends (`GET /backends`).
    Backends,
    /// Send no new connections to a backend and move its connections off.
    Drain {
        /// The backend's address, as `ctl backends` shows it.
        addr: String,
    },
    /// Undo a drain.
    Undrain {
        /// The backend's address, as `ctl backends` shows it.
        addr: String,
    },
    /// Run a discovery and health-check cycle now.
    Refresh,
    /// Ask every connection to move (a testing aid; `tcp` connections refuse).
    Redirect,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}
