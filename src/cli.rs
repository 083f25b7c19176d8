//! The command line: what each `highwater` subcommand does, and the exit codes.
//!
//! `main.rs` parses arguments into [`Cli`], sets up logging and calls [`execute`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{self, Config, ConfigErrors, DaemonFile};
use crate::daemon::{self, DaemonError};
use crate::outbox::{self, Outbox, OutboxError, Replay, Summary};
use crate::state::{self, Record, StoreError};
use crate::value::HumanDuration;
use crate::watcher::WatcherError;

/// Exit codes, one per kind of failure (README, "Exit codes").
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
    /// The daemon config file.
    #[arg(long, short = 'c', global = true, env = "HIGHWATER_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log format: `text` for people, `json` for journald and log shippers. Default:
    /// text on a terminal, json otherwise.
    #[arg(long, global = true, env = "HIGHWATER_LOG_FORMAT", value_parser = ["text", "json"])]
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
        /// Also try every source and sink: connect, authenticate, and check that the
        /// directory, bucket, table or endpoint exists. Delivers nothing.
        #[arg(long)]
        connect: bool,
    },
    /// Run one poll-deliver-commit cycle of each watcher (or the ones named), then exit.
    Once {
        /// Watchers to run (`namespace/name`, or `name` when it is unique). Default: all.
        watchers: Vec<String>,
    },
    /// List the configured watchers with their sources and sinks.
    Watchers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect and edit the stored state (watermarks, pending batches, dead letters).
    State(StateArgs),
}

/// `highwater state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do with the state.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// `highwater state …`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Every watcher in the store: watermark, when it moved, pending and dead-lettered batches.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a watcher's keys, or one key.
    Get {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// One key (`watermark`, `pending`, `dead_letter/<batch id>`). Default: all.
        key: Option<String>,
    },
    /// Write a key (JSON value). Setting `watermark` also drops a pending batch, whose
    /// items are found again by the next poll if they lie past the new watermark.
    Set {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
    },
    /// Forget a watcher's watermark and pending batch, so it starts from the beginning.
    /// Dead letters are kept.
    Reset {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
    },
    /// Queue a dead-lettered batch for delivery again (the watermark does not move).
    Replay {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The batch id (the part after `dead_letter/`).
        batch_id: String,
    },
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
    match cli.command {
        Command::Run => {
            // Handlers first: SIGHUP's default action would kill a daemon still loading.
            let control = daemon::signals()?;
            let config = config::load(&cli.config)?;
            daemon::run(config, control).await?;
            Ok(())
        }
        Command::Check { connect } => {
            let config = config::load(&cli.config)?;
            if connect {
                check_connections(&config).await?;
            }
            println!(
                "{}: OK, {} watcher{} in {}",
                config.file.display(),
                config.watchers.len(),
                if config.watchers.len() == 1 { "" } else { "s" },
                config.daemon.watchers_dir.display()
            );
            Ok(())
        }
        Command::Once { watchers } => once(&config::load(&cli.config)?, &watchers).await,
        Command::Watchers { json } => {
            list_watchers(&config::load(&cli.config)?, json);
            Ok(())
        }
        Command::State(args) => state_command(&cli.config, args.command).await,
    }
}

async fn once(config: &Config, names: &[String]) -> Result<(), Failure> {
    let mut selected = Vec::new();
    for name in names {
        let (ns, n) = resolve(name, config.watchers.iter().map(|w| (w.namespace.clone(), w.name.clone())))?;
        selected.push((ns, n));
    }
    let chosen: Vec<_> = config
        .watchers
        .iter()
        .filter(|w| selected.is_empty() || selected.iter().any(|(ns, n)| *ns == w.namespace && *n == w.name))
        .cloned()
        .collect();
    let store = state::open(&config.daemon.state)?;
    let built = daemon::build_watchers(&chosen, &store)?;
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for b in built {
        let id = b.config.id();
        let token = shutdown.clone();
        let span = tracing::info_span!("watcher", watcher = %id);
        let mut watcher = b.watcher.with_attempt_limit(3);
        tasks.spawn(async move { (id, watcher.once(&token).await) }.instrument(span));
    }
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => results.push(("?".into(), Err(WatcherError::Delivery(format!("task failed: {e}"))))),
        }
    }
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failed = Vec::new();
    for (id, result) in results {
        match result {
            Ok(r) => eprintln!(
                "{id}: {} delivered, {} redelivered, {} dead-lettered{}",
                r.delivered,
                r.redelivered,
                r.dead_lettered,
                if r.more { " (more waiting)" } else { "" }
            ),
            Err(e) => {
                eprintln!("{id}: {e}");
                failed.push(id);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Incomplete(format!("{} watcher(s) did not finish: {}", failed.len(), failed.join(", "))))
    }
}

/// `check --connect`: tries every source and sink, reporting every failure.
async fn check_connections(config: &Config) -> Result<(), Failure> {
    let mut problems = Vec::new();
    for w in &config.watchers {
        if let Err(e) = w.source.build().check().await {
            problems.push(format!("{}: watcher {}: source: {e}", w.file.display(), w.id()));
        }
        match w.sink.build() {
            Ok(mut sink) => {
                if let Err(e) = sink.check().await {
                    problems.push(format!("{}: watcher {}: sink: {e}", w.file.display(), w.id()));
                }
            }
            Err(e) => problems.push(format!("{}: watcher {}: sink: {e}", w.file.display(), w.id())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::Unreachable(format!(
            "{} connection check{} failed:\n  {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        )))
    }
}

fn list_watchers(config: &Config, json: bool) {
    if json {
        let list: Vec<_> = config
            .watchers
            .iter()
            .map(|w| {
                json!({
                    "namespace": w.namespace,
                    "name": w.name,
                    "file": w.file,
                    "source": {"type": w.source.kind(), "description": w.source.describe()},
                    "sink": {"type": w.sink.kind(), "description": w.sink.describe()},
                    "poll_interval": HumanDuration(w.poll_interval).to_string(),
                    "batch_size": w.batch_size,
                    "on_permanent_failure": w.on_permanent_failure,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return;
    }
    let rows: Vec<Vec<String>> = config
        .watchers
        .iter()
        .map(|w| {
            vec![
                w.id(),
                w.source.describe(),
                w.sink.describe(),
                HumanDuration(w.poll_interval).to_string(),
                w.file.display().to_string(),
            ]
        })
        .collect();
    print_table(&["WATCHER", "SOURCE", "SINK", "EVERY", "FILE"], &rows);
}

/// Prints aligned columns.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
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

/// Resolves `namespace/name` or a bare `name` that is unique among `known`.
fn resolve(arg: &str, known: impl Iterator<Item = (String, String)>) -> Result<(String, String), Failure> {
    if let Some((ns, name)) = arg.split_once('/') {
        return Ok((ns.to_string(), name.to_string()));
    }
    let mut matches: Vec<(String, String)> = known.filter(|(_, n)| n == arg).collect();
    matches.sort();
    matches.dedup();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(Failure::Usage(format!("no watcher named {arg:?} (write namespace/name)"))),
        _ => Err(Failure::Usage(format!(
            "{arg:?} is ambiguous: {}",
            matches.iter().map(|(ns, n)| format!("{ns}/{n}")).collect::<Vec<_>>().join(", ")
        ))),
    }
}

async fn state_command(config_path: &std::path::Path, command: StateCommand) -> Result<(), Failure> {
    // The state commands need only the daemon file: a broken watcher file must not keep
    // an operator from looking at or fixing the state.
    let daemon: DaemonFile = config::load_daemon(config_path)?;
    let full = config::load(config_path).ok();
    let store = state::open(&daemon.state)?;
    let stored = outbox::survey(&*store).await?;
    let known = || {
        let mut ids: Vec<(String, String)> = stored.keys().cloned().collect();
        if let Some(c) = &full {
            ids.extend(c.watchers.iter().map(|w| (w.namespace.clone(), w.name.clone())));
        }
        ids.into_iter()
    };
    let outbox_of = |watcher: &str| -> Result<(String, String, Outbox), Failure> {
        let (ns, name) = resolve(watcher, known())?;
        let outbox = Outbox::new(std::sync::Arc::clone(&store), ns.as_str(), name.as_str());
        Ok((ns, name, outbox))
    };
    match command {
        StateCommand::List { json } => {
            state_list(&stored, full.as_ref(), json);
            Ok(())
        }
        StateCommand::Get { watcher, key } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let rows = outbox.rows().await?;
            if let Some(key) = &key {
                let Some(record) = rows.iter().find(|r| r.key == *key) else {
                    return Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")));
                };
                println!("{}", serde_json::to_string_pretty(&record.value).unwrap_or_default());
            } else {
                let map: BTreeMap<&str, &Record> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
                println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
            }
            Ok(())
        }
        StateCommand::Set { watcher, key, value } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let value: serde_json::Value = serde_json::from_str(&value)
                .map_err(|e| Failure::Usage(format!("the value is not JSON: {e}")))?;
            let dropped = outbox.set_key(&key, value).await?;
            report_dropped_pending(&ns, &name, dropped);
            eprintln!("{ns}/{name}: {key} set.");
            Ok(())
        }
        StateCommand::Delete { watcher, key } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            if outbox.delete_key(&key).await? {
                eprintln!("{ns}/{name}: {key} deleted.");
                Ok(())
            } else {
                Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")))
            }
        }
        StateCommand::Reset { watcher } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let dropped = outbox.reset().await?;
            report_dropped_pending(&ns, &name, dropped);
            eprintln!("{ns}/{name}: watermark reset; the next poll starts from the beginning.");
            Ok(())
        }
        StateCommand::Replay { watcher, batch_id } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            match outbox.replay(&batch_id).await? {
                Replay::Queued { events } => {
                    eprintln!(
                        "{ns}/{name}: {events} events of batch {batch_id} queued; the watcher delivers them at its next cycle."
                    );
                    Ok(())
                }
                Replay::NotFound => {
                    Err(Failure::Runtime(format!("{ns}/{name} has no dead letter {batch_id:?}")))
                }
                Replay::PendingExists => Err(Failure::Runtime(format!(
                    "{ns}/{name} has a batch pending already; replay once it is delivered"
                ))),
            }
        }
    }
}

/// Says that a pending batch was dropped along with the watermark it led to.
fn report_dropped_pending(ns: &str, name: &str, dropped: Option<usize>) {
    if let Some(n) = dropped {
        eprintln!(
            "{ns}/{name}: dropping a pending batch of {n} events; polls find its items again if they lie past the new watermark."
        );
    }
}

fn state_list(stored: &BTreeMap<(String, String), Summary>, config: Option<&Config>, json: bool) {
    let mut by_watcher: BTreeMap<(String, String), Option<&Summary>> =
        stored.iter().map(|(id, summary)| (id.clone(), Some(summary))).collect();
    // Configured watchers with no state yet are listed too.
    if let Some(c) = config {
        for w in &c.watchers {
            by_watcher.entry((w.namespace.clone(), w.name.clone())).or_default();
        }
    }
    let summarize = |ns: &str, name: &str, value: &serde_json::Value| -> serde_json::Value {
        config
            .and_then(|c| c.watchers.iter().find(|w| w.namespace == ns && w.name == name))
            .map(|w| w.source.build())
            .map_or_else(|| value.clone(), |source| source.summarize(value))
    };
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for ((ns, name), summary) in &by_watcher {
        let watermark = summary.and_then(|s| s.watermark.as_ref());
        let pending_events = summary.map_or(0, |s| s.pending_events);
        let dead: Vec<&str> =
            summary.map(|s| s.dead_letters.iter().map(String::as_str).collect()).unwrap_or_default();
        let summary = watermark.map(|w| summarize(ns, name, &w.value));
        out.push(json!({
            "namespace": ns,
            "name": name,
            "configured": config.is_some_and(|c| c.watchers.iter().any(|w| w.namespace == *ns && w.name == *name)),
            "watermark": summary,
            "watermark_moved_at": watermark.map(|w| w.updated_at),
            "watermark_version": watermark.map(|w| w.version),
            "pending_events": pending_events,
            "dead_letters": dead,
        }));
        let mut text = summary.map_or_else(|| "-".to_string(), |s| s.to_string());
        if text.chars().count() > 60 {
            text = text.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            format!("{ns}/{name}"),
            text,
            watermark.map_or_else(|| "-".into(), |w| w.updated_at.format("%Y-%m-%d %H:%M:%S").to_string()),
            pending_events.to_string(),
            dead.len().to_string(),
        ]);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_table(&["WATCHER", "WATERMARK", "MOVED (UTC)", "PENDING", "DEAD LETTERS"], &rows);
    }
}
