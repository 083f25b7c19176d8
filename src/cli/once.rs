//! `highwater once`: one poll-deliver-commit cycle of each chosen watcher, then exit.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Failure, resolve};
use crate::config::Config;
use crate::daemon;
use crate::state;
use crate::watcher::WatcherError;

/// Runs one cycle of each watcher named (all when none is), with a few delivery
/// attempts each; a watcher that does not finish leaves its batch pending and fails
/// the command with [`Failure::Incomplete`].
pub(super) async fn run(config: &Config, names: &[String]) -> Result<(), Failure> {
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
            Ok(r) => super::err(format_args!(
                "{id}: {} delivered, {} redelivered, {} dead-lettered{}",
                r.delivered,
                r.redelivered,
                r.dead_lettered,
                if r.more { " (more waiting)" } else { "" }
            )),
            Err(e) => {
                super::err(format_args!("{id}: {e}"));
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
