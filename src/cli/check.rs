//! `highwater check`: validate the configuration and what each sink needs from this
//! host and, with `--connect`, try every source and sink.

use super::Failure;
use crate::config::{Config, ConfigError, ConfigErrors, WatcherConfig};
use crate::daemon::{self, DaemonError};

/// Reports a loaded (so valid) configuration OK, after checking what the sinks need
/// from this host (a trust store for `https://`) and, when `connect` is set, trying
/// every source and sink. The `OK` line names the config file, which may have been
/// found rather than named.
pub(super) async fn run(config: &Config, connect: bool, skip_secrets: bool) -> Result<(), Failure> {
    if let Some(warning) = config.daemon.http.as_ref().and_then(|h| h.exposure_warning()) {
        super::err(format_args!("warning: {}: {warning}", config.file.display()));
    }
    check_watchers(&config.watchers, connect, skip_secrets).await?;
    let dir = config.daemon.watchers_dir.display();
    if config.watchers.is_empty() {
        // Valid, and a daemon that does nothing: most likely files in the wrong place.
        super::err(format_args!(
            "warning: {}: no watcher files (*.yaml, *.yml) in {dir}: the daemon would watch nothing",
            config.file.display()
        ));
    }
    super::out(format_args!(
        "{}: OK, {} watcher{} in {dir}",
        config.file.display(),
        config.watchers.len(),
        if config.watchers.len() == 1 { "" } else { "s" },
    ));
    Ok(())
}

/// `check FILE…`: the same checks for watcher files loaded on their own; one `OK` line
/// per file.
pub(super) async fn run_files(
    watchers: &[WatcherConfig],
    connect: bool,
    skip_secrets: bool,
) -> Result<(), Failure> {
    check_watchers(watchers, connect, skip_secrets).await?;
    if watchers.is_empty() {
        super::err(format_args!("warning: no watcher files (*.yaml, *.yml) found: nothing was checked"));
    }
    for w in watchers {
        super::out(format_args!("{}: OK, watcher {}", w.file.display(), w.id()));
    }
    Ok(())
}

/// What both forms check past loading: the host, the secrets, and with `connect`
/// every source and sink.
async fn check_watchers(
    watchers: &[WatcherConfig],
    connect: bool,
    skip_secrets: bool,
) -> Result<(), Failure> {
    check_host(watchers)?;
    if !skip_secrets {
        // The same building `run` does before it starts: a secret it cannot read makes
        // `run` exit 78, so it fails `check` the same way.
        let failures: Vec<String> = watchers.iter().filter_map(|w| daemon::build_parts(w).err()).collect();
        if !failures.is_empty() {
            return Err(DaemonError::Build(failures).into());
        }
    }
    if connect {
        check_connections(watchers).await?;
    }
    Ok(())
}

/// What a sink lacks on this host, without the network (no trust store for an
/// `https://` receiver): `run` holds such a watcher in state `error`.
fn check_host(watchers: &[WatcherConfig]) -> Result<(), Failure> {
    let mut errors = Vec::new();
    for w in watchers {
        let error = |key: Option<String>, message: String| ConfigError {
            file: w.file.clone(),
            line: None,
            column: None,
            key,
            message: format!("watcher {}: {message}", w.id()),
        };
        for (key, message) in w.sink.check_host() {
            errors.push(error(Some(format!("sink.{key}")), message));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Failure::Config(ConfigErrors(errors))) }
}

/// `check --connect`: tries every source and sink, reporting every failure; what a sink
/// noted or warned about goes to standard error and does not fail the check.
async fn check_connections(watchers: &[WatcherConfig]) -> Result<(), Failure> {
    let mut problems = Vec::new();
    for w in watchers {
        let place = format!("{}: watcher {}", w.file.display(), w.id());
        if let Err(e) = w.source.build().check().await {
            problems.push(format!("{place}: source: {e}"));
        }
        match w.sink.build() {
            Ok(mut sink) => match sink.check().await {
                Ok(checked) => {
                    for note in checked.notes {
                        super::err(format_args!("{place}: sink: {note}"));
                    }
                    for warning in checked.warnings {
                        super::err(format_args!("warning: {place}: sink: {warning}"));
                    }
                }
                Err(e) => problems.push(format!("{place}: sink: {e}")),
            },
            Err(e) => problems.push(format!("{place}: sink: {e}")),
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
