//! The daemon: open the store, build every watcher, run one task each, stop cleanly.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, WatcherConfig};
use crate::state::{self, Store, StoreError};
use crate::telemetry::WatcherStats;
use crate::watcher::Watcher;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A watcher could not be built from its (valid) config.
    #[error("cannot build watchers:\n{}", .0.join("\n"))]
    Build(Vec<String>),
}

/// A built watcher with the counters it updates.
pub struct BuiltWatcher {
    /// Its config.
    pub config: WatcherConfig,
    /// The runtime watcher.
    pub watcher: Watcher,
    /// Its counters.
    pub stats: Arc<WatcherStats>,
}

/// Builds every watcher against `store`, reporting every failure at once: a daemon
/// either starts with all its watchers or not at all.
pub fn build_watchers(
    configs: &[WatcherConfig],
    store: &Arc<dyn Store>,
) -> Result<Vec<BuiltWatcher>, DaemonError> {
    let mut built = Vec::new();
    let mut errors = Vec::new();
    for config in configs {
        let source = config.source.build();
        let sink = config.sink.build();
        match (source, sink) {
            (Ok(source), Ok(sink)) => {
                let stats = Arc::new(WatcherStats::default());
                let watcher = Watcher::new(config, source, sink, Arc::clone(store), Arc::clone(&stats));
                built.push(BuiltWatcher { config: config.clone(), watcher, stats });
            }
            (source, sink) => {
                if let Err(e) = source {
                    errors.push(format!("{}: watcher {}: source: {e}", config.file.display(), config.id()));
                }
                if let Err(e) = sink {
                    errors.push(format!("{}: watcher {}: sink: {e}", config.file.display(), config.id()));
                }
            }
        }
    }
    if errors.is_empty() { Ok(built) } else { Err(DaemonError::Build(errors)) }
}

/// Runs every watcher until `shutdown` completes, then stops them: each finishes the
/// delivery it has in flight (commit, or the batch stays pending) within the configured
/// shutdown timeout, after which what is left is abandoned, still pending in the store.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let store = state::open(&config.daemon.state)?;
    let watchers = build_watchers(&config.watchers, &store)?;
    let token = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for built in watchers {
        let span = tracing::info_span!("watcher", watcher = %built.config.id());
        tasks.spawn(built.watcher.run(token.child_token()).instrument(span));
    }
    tracing::info!(
        watchers = config.watchers.len(),
        store = %config.daemon.state.describe(),
        config = %config.file.display(),
        "Started."
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            joined = tasks.join_next(), if !tasks.is_empty() => {
                // A watcher task ends on its own only by panicking; the others go on.
                if let Some(Err(e)) = joined {
                    tracing::error!(error = %e, "A watcher task ended unexpectedly; the other watchers go on.");
                }
            }
        }
    }
    tracing::info!("Shutting down: finishing deliveries in flight.");
    token.cancel();
    let deadline = config.daemon.shutdown_timeout.0;
    let drained = tokio::time::timeout(deadline, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            timeout = %config.daemon.shutdown_timeout,
            "Shutdown timeout reached; abandoning deliveries in flight (their batches stay pending)."
        );
        tasks.shutdown().await;
    }
    tracing::info!("Stopped.");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops the daemon.");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "Received signal."),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "Received signal."),
    }
}
