//! `highwater once`: one poll-deliver-commit cycle of each chosen watcher, then exit;
//! with `--dry-run`, what that cycle would deliver, printed instead.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Failure, resolve};
use crate::config::Config;
use crate::daemon;
use crate::watcher::WatcherError;
use crate::{lease, outbox, state};

/// Runs one cycle of each watcher named (all when none is), with a few delivery
/// attempts each; a watcher that does not finish leaves its batch pending and fails
/// the command with [`Failure::Incomplete`].
pub(super) async fn run(config: &Config, names: &[String]) -> Result<(), Failure> {
    let chosen = choose(config, names)?;
    let store = outbox::open(&config.daemon.state)?;
    // `once` delivers and commits like a daemon: not beside one.
    state::claim_for_writing(&*store).await?;
    let built = daemon::build_watchers(&chosen, &store)?;
    // On a store several instances share, a watcher's cycle runs under its lease like a
    // daemon's, taken for the command and given back after it: one that an instance
    // runs is left to it.
    let leasing = store.leases().map(|_| lease::this_instance(chosen.iter().map(|w| w.id()).collect()));
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut skipped = Vec::new();
    for b in built {
        let id = b.config.id();
        let token = shutdown.clone();
        let span = tracing::info_span!("watcher", watcher = %id);
        let mut watcher = b.watcher.with_attempt_limit(3);
        if let (Some(me), Some(leases)) = (&leasing, store.leases()) {
            match leases.acquire(&me.id, (&b.config.namespace, &b.config.name)).await? {
                Some(epoch) => watcher = watcher.fenced(state::Fence { owner: me.id.clone(), epoch }),
                None => {
                    skipped.push(id);
                    continue;
                }
            }
        }
        tasks.spawn(async move { (id, watcher.once(&token).await) }.instrument(span));
    }
    // Renewed while the cycles run, as a daemon renews them.
    let renewing = leasing.as_ref().map(|me| {
        let (store, owner) = (std::sync::Arc::clone(&store), me.id.clone());
        tokio::spawn(async move {
            let Some(leases) = store.leases() else { return };
            loop {
                tokio::time::sleep(leases.ttl() / 3).await;
                if let Err(e) = leases.renew(&owner).await {
                    tracing::warn!(error = %e, "Cannot renew the leases.");
                }
            }
        })
    });
    let mut results = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => results.push(result),
            Err(e) => results.push(("?".into(), Err(WatcherError::Delivery(format!("task failed: {e}"))))),
        }
    }
    if let (Some(me), Some(leases)) = (&leasing, store.leases()) {
        if let Some(task) = renewing {
            task.abort();
        }
        if let Err(e) = leases.leave(&me.id).await {
            tracing::warn!(error = %e, "Cannot give the leases back; they pass on when they expire.");
        }
    }
    for id in skipped {
        super::err(format_args!("{id}: skipped: another instance holds its lease and runs it"));
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

/// The watchers named (all when none is).
fn choose(config: &Config, names: &[String]) -> Result<Vec<crate::config::WatcherConfig>, Failure> {
    let mut selected = Vec::new();
    for name in names {
        let (ns, n) = resolve(name, config.watchers.iter().map(|w| (w.namespace.clone(), w.name.clone())))?;
        selected.push((ns, n));
    }
    Ok(config
        .watchers
        .iter()
        .filter(|w| selected.is_empty() || selected.iter().any(|(ns, n)| *ns == w.namespace && *n == w.name))
        .cloned()
        .collect())
}

/// Prints, for each watcher named (all when none is), the events its next cycle would
/// deliver: the rest of a pending batch, else what one poll finds. Nothing is delivered
/// or stored; the sinks are not contacted.
pub(super) async fn dry_run(config: &Config, names: &[String]) -> Result<(), Failure> {
    let chosen = choose(config, names)?;
    // Looking must not create: without a store, the state is empty.
    let store = if config.daemon.state.get().exists() {
        outbox::open(&config.daemon.state)?
    } else {
        state::empty()?
    };
    let built = daemon::build_watchers(&chosen, &store)?;
    let mut failed = Vec::new();
    for b in built {
        let id = b.config.id();
        let mut watcher = b.watcher;
        let found = watcher.dry_run().instrument(tracing::info_span!("watcher", watcher = %id)).await;
        match found {
            Ok(found) => {
                for event in found.pending.iter().chain(&found.new) {
                    super::out(format_args!("{}", event.text()));
                }
                let what = if found.pending.is_empty() {
                    format!(
                        "would deliver {}{}",
                        found.new.len(),
                        if found.more { " (more waiting)" } else { "" }
                    )
                } else {
                    format!("would redeliver the {} pending events not yet acknowledged", found.pending.len())
                };
                super::err(format_args!("{id}: {what}; nothing delivered or stored"));
            }
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
