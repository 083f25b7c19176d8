//! The `highwater` binary: parse the command line, set up logging, run, map errors to
//! exit codes.

use std::io::IsTerminal;

use clap::Parser;
use highwater::cli::{Cli, execute, exit};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    init_logging(cli.log_format.as_deref());
    highwater::init_tls();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = match runtime.block_on(execute(cli)) {
        Ok(()) => exit::OK,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    };
    // Dropping the runtime would wait for blocking tasks (a directory scan) to finish.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// Logs go to standard error (standard output carries events for the stdout sink).
/// `RUST_LOG` filters them (default `info`).
fn init_logging(format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(f) => f == "json",
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.with_target(false).init();
    }
}
