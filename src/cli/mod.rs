//! The command line: arguments, exit codes and the mapping of failures to them. Each
//! subcommand but `run` lives in a module of its own.
//!
//! `main.rs` parses arguments into [`Cli`], sets up logging and calls [`execute`].

mod check;
pub mod env_file;
mod manual;
mod once;
mod state;
mod status;
mod watchers;

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigErrors};
use crate::daemon::{self, DaemonError};
use crate::outbox::OutboxError;
use crate::state::StoreError;

pub use state::{StateArgs, StateCommand};

/// Exit codes, one per kind of failure (docs/reference/cli.md, "Exit codes").
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A runtime failure not covered below.
    pub const FAILURE: i32 = 1;
    /// Bad command-line usage.
    pub const USAGE: i32 = 2;
    /// `check --connect`: a source or sink cannot be reached or used (sysexits
    /// EX_UNAVAILABLE).
    pub const UNAVAILABLE: i32 = 69;
    /// `run`: an operating-system resource the daemon needs is not available: a signal
    /// handler, or the HTTP listener's address (in use, not permitted) (sysexits
    /// EX_OSERR).
    pub const OSERR: i32 = 71;
    /// The state store could not be opened, read or written (sysexits EX_IOERR).
    pub const STORE: i32 = 74;
    /// `once`: a watcher could not finish its cycle; its batch stays pending and a
    /// later run delivers it (sysexits EX_TEMPFAIL).
    pub const TEMPFAIL: i32 = 75;
    /// The configuration is invalid (sysexits EX_CONFIG). systemd does not restart on it.
    pub const CONFIG: i32 = 78;
}

/// highwater: one event per new object or row, once, soon after it lands.
#[derive(Debug, Parser)]
#[command(name = "highwater", version, about, long_about = None)]
pub struct Cli {
    /// The daemon config file. Default: config/highwater.yaml when it exists, else
    /// /etc/highwater/highwater.yaml.
    #[arg(long, short = 'c', global = true, env = "HIGHWATER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format: `text` for people, `json` for log shippers, `journal` for the
    /// systemd journal's own protocol (priorities and fields). Default: journal when
    /// standard error is the journal, text on a terminal, json otherwise.
    #[arg(long, global = true, env = "HIGHWATER_LOG_FORMAT", value_parser = ["text", "json", "journal"])]
    pub log_format: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGINT or SIGTERM; SIGHUP reloads the config and watcher files.
    Run,
    /// Validate the config and every watcher file and report every error. Touches no
    /// network unless `--connect` is given.
    Check {
        /// Watcher files (or directories of them) to check on their own, without the
        /// daemon config. Default: the config and its whole watchers directory.
        paths: Vec<PathBuf>,
        /// Also try every source and sink: connect, authenticate, and check that the
        /// directory, bucket, table or endpoint exists. Delivers nothing.
        #[arg(long)]
        connect: bool,
        /// Do not read the secrets (`*_env` variables, `*_file` files) that `run` reads
        /// at start: for a file checked outside the service's environment.
        #[arg(long)]
        skip_secrets: bool,
        /// Add the variables of this file (systemd `EnvironmentFile=` syntax) to the
        /// environment first, so that the check sees what the service sees.
        #[arg(long, value_name = "FILE")]
        env_file: Option<PathBuf>,
    },
    /// Run one poll-deliver-commit cycle of each watcher (or the ones named), then exit.
    Once {
        /// Watchers to run (`namespace/name`, or `name` when it is unique). Default: all.
        watchers: Vec<String>,
        /// Print the events the cycle would deliver (JSON lines: a pending batch's rest,
        /// then what one poll finds) and deliver, commit and store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the configured watchers with their sources and sinks.
    Watchers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and edit the stored state (watermarks, pending batches, dead letters).
    State(StateArgs),
    /// One line per watcher: state, lag, pending batch, last delivery, dead letters,
    /// owner. Reads the store, and the running daemon's `http:` listener when the daemon
    /// file sets one (for live state such as `error` or `blocked`).
    Status {
        /// Print one JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted (with `--json`: one document per line each time).
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes with `--watch`.
        #[arg(long, default_value_t = 2.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// Print a shell completion script (the Debian package installs those of bash, zsh
    /// and fish): e.g. `highwater completions bash > ~/.local/share/bash-completion/completions/highwater`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (highwater.1 and one per subcommand) into a directory.
    #[command(hide = true)]
    Man {
        /// Where to write them; created when missing.
        dir: PathBuf,
    },
}

/// A refresh interval: a number of seconds from 0.1 to 86400.
fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.1..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds from 0.1 to 86400")),
    }
}

impl Cli {
    /// `check --env-file FILE`: the file whose variables the process takes first.
    pub fn env_file(&self) -> Option<&std::path::Path> {
        match &self.command {
            Command::Check { env_file, .. } => env_file.as_deref(),
            _ => None,
        }
    }

    /// Whether the AWS SDK's own log records are kept out of the output: `check`
    /// reports their substance in its own words (unless `RUST_LOG` asks for them).
    pub fn quiet_sdk(&self) -> bool {
        matches!(self.command, Command::Check { .. })
    }
}

/// A failed command, mapped to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Invalid configuration.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// Something else at run time.
    #[error("{0}")]
    Runtime(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// `once`: some watchers did not finish.
    #[error("{0}")]
    Incomplete(String),
    /// `check --connect`: a source or sink cannot be reached or used.
    #[error("{0}")]
    Unreachable(String),
    /// `run`: a signal handler or the HTTP listener could not be set up.
    #[error("{0}")]
    System(String),
}

impl Failure {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) => exit::CONFIG,
            Failure::Store(_) => exit::STORE,
            Failure::Runtime(_) => exit::FAILURE,
            Failure::Usage(_) => exit::USAGE,
            Failure::Incomplete(_) => exit::TEMPFAIL,
            Failure::Unreachable(_) => exit::UNAVAILABLE,
            Failure::System(_) => exit::OSERR,
        }
    }
}

impl From<OutboxError> for Failure {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Store(e) => Failure::Store(e),
            e @ OutboxError::Encode { .. } => Failure::Runtime(e.to_string()),
            OutboxError::Refused(message) => Failure::Usage(message),
        }
    }
}

impl From<DaemonError> for Failure {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::Store(e) => Failure::Store(e),
            // A watcher whose valid config cannot be built is still a config problem:
            // restarting will not fix it.
            DaemonError::Build(errors) => Failure::Config(ConfigErrors(
                errors.into_iter().map(|m| config::ConfigError::file("", m)).collect(),
            )),
            DaemonError::System(message) => Failure::System(message),
        }
    }
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> Result<(), Failure> {
    let named = cli.config.as_deref();
    match cli.command {
        Command::Run => {
            // Handlers first: SIGHUP's default action would kill a daemon still loading.
            let control = daemon::signals()?;
            let path = config::find(named)?;
            // First, so that whoever reads the log knows which file the rest is about.
            tracing::info!(config = %path.display(), "Starting: loading the config file.");
            let config = config::load(&path)?;
            daemon::run(config, control).await?;
            Ok(())
        }
        // `--env-file` was applied by `main`, before any thread started.
        Command::Check { paths, connect, skip_secrets, env_file: _ } => {
            if paths.is_empty() {
                check::run(&config::load(&config::find(named)?)?, connect, skip_secrets).await
            } else {
                check::run_files(&config::load_watcher_paths(&paths)?, connect, skip_secrets).await
            }
        }
        Command::Once { watchers, dry_run } => {
            let config = config::load(&config::find(named)?)?;
            if dry_run {
                once::dry_run(&config, &watchers).await
            } else {
                once::run(&config, &watchers).await
            }
        }
        Command::Watchers { json } => watchers::list(&config::load(&config::find(named)?)?, json).await,
        Command::State(args) => state::run(&config::find(named)?, args.command).await,
        Command::Status { json, watch, interval } => {
            let path = config::find(named)?;
            status::run(&path, json, watch, std::time::Duration::from_secs_f64(interval)).await
        }
        Command::Completions { shell } => {
            // A reader that went away ends the output, not the process.
            let _ = std::io::stdout().lock().write_all(&manual::completions(shell));
            Ok(())
        }
        Command::Man { dir } => manual::pages(&dir),
    }
}

/// Writes a line of command output. A reader that went away (`| head`) ends the
/// output, not the process: `println!` would panic on the broken pipe.
pub(crate) fn out(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout().lock(), "{args}");
}

/// Writes a line to standard error, which may be closed too.
pub(crate) fn err(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// Writes aligned columns to `out` (a closed standard output ends the output quietly).
fn print_table(out: &mut impl Write, headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// Resolves `namespace/name`, or a bare `name` that is unique, to one of the `known`
/// watchers. Names are checked as the config checks them; an unknown watcher is a usage
/// error that names the known ones (a typo must not silently do nothing).
fn resolve(arg: &str, known: impl Iterator<Item = (String, String)>) -> Result<(String, String), Failure> {
    let mut known: Vec<(String, String)> = known.collect();
    known.sort();
    known.dedup();
    let parts: Vec<&str> = arg.split('/').collect();
    let valid =
        |part: &str| crate::value::Name::new(part).map_err(|m| Failure::Usage(format!("{arg:?}: {m}")));
    let wanted = match parts.as_slice() {
        [name] => {
            valid(name)?;
            let matches: Vec<&(String, String)> = known.iter().filter(|(_, n)| n == name).collect();
            match matches.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => None,
                many => {
                    return Err(Failure::Usage(format!(
                        "{arg:?} is ambiguous: {}",
                        many.iter().map(|(ns, n)| format!("{ns}/{n}")).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        [ns, name] => {
            valid(ns)?;
            valid(name)?;
            Some((ns.to_string(), name.to_string()))
        }
        _ => return Err(Failure::Usage(format!("{arg:?} is not a watcher: write namespace/name or name"))),
    };
    if let Some(wanted) = wanted.filter(|w| known.contains(w)) {
        return Ok(wanted);
    }
    // At most a screenful of names: a store can hold thousands of watchers.
    const SHOWN: usize = 20;
    let mut names: Vec<String> = known.iter().take(SHOWN).map(|(ns, n)| format!("{ns}/{n}")).collect();
    if known.len() > SHOWN {
        names.push(format!("and {} more", known.len() - SHOWN));
    }
    let list = if names.is_empty() { "none".to_string() } else { names.join(", ") };
    Err(Failure::Usage(format!("no watcher named {arg:?}; known watchers: {list}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn store_error() -> StoreError {
        StoreError::Backend { location: "state.db".into(), message: "disk full".into() }
    }

    /// The codes the "Exit codes" table of docs/reference/cli.md promises, pinned as numbers: systemd units
    /// and scripts act on them.
    #[test]
    fn every_failure_has_its_documented_exit_code() {
        let config = ConfigErrors(vec![ConfigError::file("w.yaml", "bad")]);
        let cases = [
            (Failure::Config(config), 78),
            (Failure::Store(store_error()), 74),
            (Failure::Runtime("x".into()), 1),
            (Failure::Usage("x".into()), 2),
            (Failure::Incomplete("x".into()), 75),
            (Failure::Unreachable("x".into()), 69),
            (Failure::System("x".into()), 71),
        ];
        for (failure, code) in cases {
            assert_eq!(failure.exit_code(), code, "{failure:?}");
        }
        assert_eq!((exit::OK, exit::FAILURE, exit::USAGE), (0, 1, 2));
    }

    #[test]
    fn watchers_are_resolved_only_to_known_valid_names() {
        let known = || {
            [("default", "orders"), ("team", "orders"), ("team", "rows")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .into_iter()
        };
        let ok = |arg: &str| resolve(arg, known()).map_err(|e| e.to_string());
        assert_eq!(ok("rows"), Ok(("team".into(), "rows".into())));
        assert_eq!(ok("team/orders"), Ok(("team".into(), "orders".into())));
        for (arg, expected) in [
            ("orders", "\"orders\" is ambiguous: default/orders, team/orders"),
            (
                "pol/typo",
                "no watcher named \"pol/typo\"; known watchers: default/orders, team/orders, team/rows",
            ),
            ("typo", "no watcher named \"typo\"; known watchers: default/orders, team/orders, team/rows"),
            ("x/y/z", "\"x/y/z\" is not a watcher: write namespace/name or name"),
            ("evil/na me", "\"evil/na me\": `na me` may hold only letters, digits, `_`, `-` and `.`"),
            ("/rows", "\"/rows\": `` must be 1 to 128 characters long"),
        ] {
            let error = resolve(arg, known()).expect_err(arg);
            assert_eq!(error.exit_code(), exit::USAGE, "{arg}");
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn daemon_errors_map_to_store_config_and_system_failures() {
        let failure = Failure::from(DaemonError::Store(store_error()));
        assert!(matches!(failure, Failure::Store(_)), "{failure:?}");
        assert_eq!(failure.exit_code(), 74);

        // A watcher whose valid config cannot be built is a config problem: restarting
        // will not fix it, so systemd must not be told to try.
        let messages = vec!["w.yaml: watcher a/x: sink: no such file".to_string(), "second".to_string()];
        let failure = Failure::from(DaemonError::Build(messages));
        assert_eq!(failure.exit_code(), 78);
        let Failure::Config(errors) = &failure else { panic!("{failure:?}") };
        let reported: Vec<&str> = errors.0.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(reported, vec!["w.yaml: watcher a/x: sink: no such file", "second"]);

        let failure = Failure::from(DaemonError::System("cannot listen on 127.0.0.1:9".into()));
        assert_eq!(failure.exit_code(), 71);
        assert_eq!(failure.to_string(), "cannot listen on 127.0.0.1:9");
    }

    #[test]
    fn outbox_errors_map_to_store_and_runtime_failures() {
        assert_eq!(Failure::from(OutboxError::Store(store_error())).exit_code(), 74);
        let encode = OutboxError::Encode {
            namespace: "a".into(),
            name: "x".into(),
            key: "k".into(),
            message: "bad".into(),
        };
        let failure = Failure::from(encode);
        assert_eq!(failure.exit_code(), 1, "an encoding failure is not the store's");
        assert!(failure.to_string().contains("cannot encode"), "{failure}");
    }
}
