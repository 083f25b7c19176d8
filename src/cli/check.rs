//! `highwater check`: validate the configuration and, with `--connect`, try every
//! source and sink.

use super::Failure;
use crate::config::Config;

/// Reports a loaded (so valid) configuration OK, after trying every source and sink
/// when `connect` is set.
pub(super) async fn run(config: &Config, connect: bool) -> Result<(), Failure> {
    if let Some(warning) = config.daemon.http.as_ref().and_then(|h| h.exposure_warning()) {
        eprintln!("warning: {}: {warning}", config.file.display());
    }
    if connect {
        check_connections(config).await?;
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
