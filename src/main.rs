//! The `switchyard` binary: parse the command line, load the configuration, run.
//!
//! Exit codes (DESIGN section 9): 0 after a clean shutdown or a finished demo, 1 for a runtime
//! failure, 2 for a bad command line or configuration.

use std::process::ExitCode;

use clap::Parser;
use switchyard_server::cli::{Cli, Command};
use switchyard_server::config::{Config, LogFormat};
use switchyard_server::demo::{self, DemoOptions};
use switchyard_server::service;

fn main() -> ExitCode {
    // clap exits 2 on a bad command line and 0 after --help / --version.
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Demo { duration }) => {
            service::init_tracing_with("warn", LogFormat::Text);
            let opts = DemoOptions {
                duration,
                ..DemoOptions::default()
            };
            match demo::run(opts, &mut std::io::stdout()) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
        None => {
            let cfg = match Config::load(&cli.config) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("switchyard: bad configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            service::init_tracing(&cfg);
            match service::run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchyard: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
