//! The command line: `switchyard [--config PATH]` runs the service, `switchyard demo` the demo.
//!
//! Parsed with clap; a bad command line exits 2 (clap's own convention, and DESIGN section 9's).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

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
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}
