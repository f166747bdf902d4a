//! The `switchyard` binary: parse the command line, load the configuration, run.
//!
//! Exit codes (DESIGN section 9): 0 after a clean shutdown or a finished demo, 1 for a runtime
//! failure, 2 for a bad command line or configuration.

use std::process::ExitCode;

use clap::Parser;
use switchyard_server::cli::{Cli, Command};
use switchyard_server::config::{Config, LogFormat};
use switchyard_server::demo::{self, DemoOptions};
use switchyard_server::{ctl, service};

fn main() -> ExitCode {
    return_large_blocks_to_the_system();
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
        Some(Command::Ctl(args)) => match ctl::run(&args, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard ctl: {e}");
                ExitCode::from(1)
            }
        },
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

/// Blocks of 1 MiB and more (the buffers of a long packet) are `mmap`ed and unmapped when freed,
/// so their memory goes back to the system at once. By default glibc raises this threshold to the
/// largest block freed so far (up to 32 MiB) and keeps up to twice that per arena: after 4 MiB
/// rows, about 16 MiB stayed resident with two workers, although every buffer had been freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks_to_the_system() {
    const MMAP_THRESHOLD: std::ffi::c_int = 1 << 20;
    // SAFETY: mallopt only sets an allocator parameter; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_system() {}
