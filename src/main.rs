//! The `highwater` binary: parse the command line, set up logging, run, map errors to
//! exit codes.

use std::io::{IsTerminal, Write};

use clap::Parser;
use highwater::cli::{Cli, execute, exit};
use tracing_subscriber::EnvFilter;

/// Threads for blocking calls; see where the runtime is built.
const MAX_BLOCKING_THREADS: usize = 32;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    if let Some(path) = cli.env_file() {
        match highwater::cli::env_file::read(path) {
            Ok(file) => {
                for warning in &file.warnings {
                    let _ = writeln!(std::io::stderr(), "warning: {warning}");
                }
                for (name, value) in file.vars {
                    // SAFETY: no other thread runs yet (neither logging nor the runtime
                    // has started), so nothing reads the environment meanwhile.
                    unsafe { std::env::set_var(name, value) };
                }
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "error: {e}");
                std::process::exit(exit::CONFIG);
            }
        }
    }
    let journal = init_logging(cli.log_format.as_deref(), cli.quiet_sdk());
    highwater::init_tls();
    // Blocking work is short (store calls on one shared SQLite connection, directory
    // scans, file appends). Tokio's default of 512 threads let a start with a thousand
    // watchers leave a hundred threads taking turns at it; a few dozen serve as well.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let code = match runtime.block_on(execute(cli)) {
        Ok(()) => exit::OK,
        Err(failure) if journal => {
            // Standard error lands at priority info in the journal; the record makes
            // the reason the service stopped show in `journalctl -p err`.
            tracing::error!(exit_code = failure.exit_code(), "{failure}");
            failure.exit_code()
        }
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "error: {failure}");
            failure.exit_code()
        }
    };
    // Dropping the runtime would wait for blocking tasks (a directory scan) to finish.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

/// Logs go to standard error (standard output carries events for the stdout sink):
/// text on a terminal, JSON lines otherwise, which log shippers take as they are. When
/// standard error is the journal (`JOURNAL_STREAM`, set by systemd), records go to the
/// journal's own socket instead, with their priority (`journalctl -p err` finds the
/// errors) and their fields; JSON lines would all land at priority info. Each record
/// of a watcher carries its name (the `watcher` span). `RUST_LOG` filters them
/// (default `info`; with `quiet_sdk`, without the AWS SDK's records, whose substance
/// the command reports itself). True when records go to the journal.
fn init_logging(format: Option<&str>, quiet_sdk: bool) -> bool {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(e) => {
            // A typo in RUST_LOG should be seen, not silently turn logging back to info.
            if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: RUST_LOG is not a valid filter ({e}); logging at info"
                );
            }
            // Directives match targets by prefix: `aws` covers aws_config, aws_sdk_s3,
            // aws_smithy_runtime and the rest.
            EnvFilter::new(if quiet_sdk { "info,aws=off" } else { "info" })
        }
    };
    let journal = match format {
        Some(f) => f == "journal",
        None => stderr_is_journal(),
    };
    if journal {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_syslog_identifier("highwater".to_string());
                tracing_subscriber::registry().with(filter).with(layer).init();
                return true;
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: cannot log to the journal ({e}); logging JSON lines"
                );
            }
        }
    }
    let json = match format {
        Some(f) => f != "text",
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| QuietStderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        // Colours only for a terminal: `--log-format text` into a file stays plain.
        builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).init();
    }
    false
}

/// True when standard error is the stream systemd connected to the journal: the
/// device and inode in `JOURNAL_STREAM` are those of file descriptor 2. (A child that
/// inherited the variable but not the stream must not log to the journal.)
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Standard error for log lines, which never fails: a closed or full standard error
/// (the reader of a pipe gone) loses log lines but must not stop the daemon, and the
/// formatter panics on a failed write.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
