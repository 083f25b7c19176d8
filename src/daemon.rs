//! The daemon: open the store, build every watcher, run one task each, reload on SIGHUP,
//! stop cleanly; tell systemd and the HTTP endpoints where it stands.
//!
//! The supervisor loop ([`run`]) owns the running watchers. Each has its own
//! cancellation token, so a reload can stop one (it finishes the delivery in flight:
//! committed, or left pending for its successor) without touching the others.
//!
//! On a store several instances share, a watcher runs only while this instance holds
//! its lease: the lease task (`lease.rs`) orders watchers started, under their lease,
//! and stopped; the supervisor keeps every configured watcher ready to start.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{self, Config, WatcherConfig};
use crate::lease::{self, Coordinator, Order};
use crate::sink::Sink;
use crate::source::Source;
use crate::state::{self, Fence, Store, StoreError};
use crate::telemetry::{Telemetry, WatcherState, WatcherStats, now_ms};
use crate::watcher::{Ended, Watcher};
use crate::{http, notify, outbox};

/// How often the supervisor loop turns: checks for watcher tasks that died, updates
/// systemd's status line. Cheap: one pass over the running watchers.
const TICK: Duration = Duration::from_secs(1);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A watcher could not be built from its (valid) config.
    #[error("cannot build watchers:\n{}", .0.join("\n"))]
    Build(Vec<String>),
    /// An operating-system resource the daemon needs (a signal handler, the HTTP
    /// listener's address) is not available.
    #[error("{0}")]
    System(String),
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
    build_keeping_stats(configs, store, &BTreeMap::new())
}

/// [`build_watchers`], reusing the counters in `stats` for watchers that have them (a
/// watcher restarted by a reload keeps counting where it was).
fn build_keeping_stats(
    configs: &[WatcherConfig],
    store: &Arc<dyn Store>,
    stats: &BTreeMap<String, Arc<WatcherStats>>,
) -> Result<Vec<BuiltWatcher>, DaemonError> {
    let mut built = Vec::new();
    let mut errors = Vec::new();
    for config in configs {
        match build_parts(config) {
            Ok((source, sink)) => {
                let stats = stats.get(&config.id()).cloned().unwrap_or_default();
                let watcher = Watcher::new(config, source, sink, Arc::clone(store), Arc::clone(&stats));
                built.push(BuiltWatcher { config: config.clone(), watcher, stats });
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() { Ok(built) } else { Err(DaemonError::Build(errors)) }
}

/// A watcher's built source and sink.
pub type Parts = (Box<dyn Source>, Box<dyn Sink>);

/// Builds a watcher's source and sink: what `run` does before it starts the watcher,
/// and what `check` does to report the same failures (a sink's secret that cannot be
/// read). The error names the file and the watcher.
pub fn build_parts(config: &WatcherConfig) -> Result<Parts, String> {
    let sink = config
        .sink
        .build()
        .map_err(|e| format!("{}: watcher {}: sink: {e}", config.file.display(), config.id()))?;
    Ok((config.source.build(), sink))
}

/// Warns about state that belongs to no configured watcher: most often a watcher whose
/// file was renamed (its name comes from the file name), which would announce
/// everything again under its new name. Counts rows only; a failure here is not fatal.
async fn warn_about_orphans(store: &dyn Store, config: &Config) {
    let Ok(counts) = store.count(None, None, state::Keys::Under("")).await else { return };
    let orphans: Vec<String> = counts
        .keys()
        .filter(|(ns, name)| !config.watchers.iter().any(|w| w.namespace == *ns && w.name == *name))
        .map(|(ns, name)| format!("{ns}/{name}"))
        .collect();
    if !orphans.is_empty() && store.leases().is_some() {
        // A shared store: other instances may run watchers this one does not have.
        tracing::info!(
            others = orphans.len(),
            watchers = %orphans.join(", "),
            "Stored state belongs to watchers this instance does not have: another instance's, or a renamed \
             or removed watcher's (`highwater state rename OLD NEW`, `highwater state reset`)."
        );
    } else if !orphans.is_empty() {
        tracing::warn!(
            orphaned = orphans.len(),
            watchers = %orphans.join(", "),
            "Stored state belongs to no configured watcher. A renamed watcher file renames its watcher: \
             `highwater state rename OLD NEW` moves the state; `highwater state reset` forgets it."
        );
    }
}

/// What stops and reloads the daemon: SIGTERM/SIGINT and SIGHUP, or whatever a test
/// feeds in.
pub struct Control<S> {
    /// Completes when the daemon should stop.
    pub shutdown: S,
    /// One message per reload request.
    pub reloads: mpsc::Receiver<()>,
}

/// Installs the SIGTERM, SIGINT and SIGHUP handlers. Call it first thing: until a
/// handler is installed, SIGHUP's default action would kill the process.
pub fn signals() -> Result<Control<impl Future<Output = ()>>, DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| DaemonError::System(format!("cannot install the {name} handler: {e}")))
    };
    let mut term = install(SignalKind::terminate(), "SIGTERM")?;
    let mut int = install(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
    // A capacity of one folds a burst of SIGHUPs into one reload: each reload reads
    // the files as they are when it starts.
    let (tx, reloads) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "Received signal.");
            let _ = tx.try_send(());
        }
    });
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "Received signal."),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "Received signal."),
        }
    };
    Ok(Control { shutdown, reloads })
}

/// A watcher task the supervisor owns.
struct Running {
    token: CancellationToken,
    handle: JoinHandle<()>,
    /// The lease it runs under (a shared store).
    fence: Option<Fence>,
}

/// The link to the lease task, on a store several instances share.
struct Leasing {
    /// The watchers configured here, as the lease task sees them.
    defined: watch::Sender<std::collections::BTreeSet<String>>,
    /// Fires when shutdown begins: no new leases.
    draining: CancellationToken,
    /// Fires once the watchers have stopped: every lease is given up.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The running daemon: its store, its watchers, what it reports.
struct Supervisor {
    config: Config,
    store: Arc<dyn Store>,
    telemetry: Arc<Telemetry>,
    /// Parent of every watcher's token: cancelling it stops them all.
    token: CancellationToken,
    /// Every configured watcher, by `namespace/name` (on a shared store, those this
    /// instance does not hold a lease for are not running).
    defined: BTreeMap<String, WatcherConfig>,
    /// The counters of every watcher that ran, kept across its restarts.
    stats: BTreeMap<String, Arc<WatcherStats>>,
    /// Watchers whose task ended unexpectedly (or that could not be built when their
    /// lease was taken), with the lease they held: the next reload starts them again.
    dead: BTreeMap<String, Option<Fence>>,
    leasing: Option<Leasing>,
    running: BTreeMap<String, Running>,
    /// Watchers removed by a reload (by `namespace/name`), still finishing their
    /// delivery in flight.
    stopping: Vec<(String, JoinHandle<()>)>,
    /// The last `STATUS=` sent, so that an unchanged one is not sent again.
    status: String,
}

/// Runs every watcher until `control.shutdown` completes, reloading the config file
/// it was loaded from on every `control.reloads` message. On shutdown each watcher
/// finishes the delivery it has in flight (commit, or the batch stays pending) within
/// the configured shutdown timeout, after which what is left is abandoned, still
/// pending in the store.
pub async fn run<S: Future<Output = ()>>(config: Config, control: Control<S>) -> Result<(), DaemonError> {
    let Control { shutdown, mut reloads } = control;
    let store = outbox::open(&config.daemon.state)?;
    // Before anything else that could fail: a second daemon on a SQLite store is told
    // who holds it.
    store.claim().await?;
    let built = build_watchers(&config.watchers, &store)?;
    let telemetry = Arc::new(Telemetry::default());
    let token = CancellationToken::new();
    // Its own token: metrics and health stay up while deliveries drain at shutdown.
    let http_token = CancellationToken::new();
    let http_task = match &config.daemon.http {
        Some(http_config) => {
            let listener = http::bind(http_config).await.map_err(|e| {
                DaemonError::System(format!("cannot listen on {} (http.listen): {e}", http_config.listen))
            })?;
            let addr =
                listener.local_addr().map_or_else(|_| http_config.listen.to_string(), |a| a.to_string());
            tracing::info!(addr = %addr, "HTTP listener started: /metrics, /healthz, /readyz.");
            if let Some(warning) = http_config.exposure_warning() {
                tracing::warn!(addr = %addr, exposed = true, "{warning}");
            }
            let task = http::serve(
                listener,
                http_config,
                Arc::clone(&telemetry),
                Arc::clone(&store),
                http_token.clone(),
            );
            Some(task)
        }
        None => None,
    };

    tokio::pin!(shutdown);
    let mut watchdog = Watchdog::new();
    if !wait_for_store(&*store, &config.daemon.state.describe(), &mut shutdown, &mut watchdog).await? {
        watchdog.stop();
        http_token.cancel();
        tracing::info!("Stopped before the state store answered.");
        return Ok(());
    }
    state::writable(&*store).await?;
    warn_about_orphans(&*store, &config).await;

    let mut supervisor = Supervisor {
        defined: config.watchers.iter().map(|w| (w.id(), w.clone())).collect(),
        stats: BTreeMap::new(),
        dead: BTreeMap::new(),
        leasing: None,
        config,
        store,
        telemetry: Arc::clone(&telemetry),
        token: token.clone(),
        running: BTreeMap::new(),
        stopping: Vec::new(),
        status: String::new(),
    };
    let mut orders = None;
    if supervisor.store.leases().is_some() {
        // The watchers start as their leases are taken; those built above proved that
        // they can be.
        drop(built);
        let (tx, rx) = mpsc::unbounded_channel();
        orders = Some(rx);
        let ids: std::collections::BTreeSet<String> = supervisor.defined.keys().cloned().collect();
        let me = lease::this_instance(ids.iter().cloned().collect());
        let (defined, defined_rx) = watch::channel(ids);
        let coordinator =
            Coordinator::new(Arc::clone(&supervisor.store), me, defined_rx, tx, Arc::clone(&telemetry));
        tracing::info!(instance = %coordinator.id(), "The state store is shared: each watcher runs on the instance holding its lease.");
        let (draining, stop) = (CancellationToken::new(), CancellationToken::new());
        let task = tokio::spawn(coordinator.run(draining.clone(), stop.clone()));
        supervisor.leasing = Some(Leasing { defined, draining, stop, task });
    } else {
        for built in built {
            supervisor.start(built, None, None);
        }
    }
    supervisor.publish();
    tracing::info!(
        watchers = supervisor.defined.len(),
        store = %supervisor.config.daemon.state.describe(),
        config = %supervisor.config.file.display(),
        "Started."
    );
    telemetry.ready.store(true, Ordering::Relaxed);
    telemetry.supervisor_tick_ms.store(now_ms(), Ordering::Relaxed);
    supervisor.status = telemetry.summary();
    notify::ready(&supervisor.status);

    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let order = async {
            match &mut orders {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = reloads.recv() => supervisor.reload(),
            Some(order) = order => supervisor.order(order),
            _ = tick.tick() => supervisor.tick(),
            () = watchdog.due() => watchdog.ping(),
        }
    }

    telemetry.ready.store(false, Ordering::Relaxed);
    let deadline = supervisor.config.daemon.shutdown_timeout;
    notify::stopping(deadline.0);
    tracing::info!("Shutting down: finishing deliveries in flight.");
    if let Some(leasing) = &supervisor.leasing {
        leasing.draining.cancel();
    }
    supervisor.token.cancel();
    let mut handles: Vec<JoinHandle<()>> = supervisor.running.into_values().map(|r| r.handle).collect();
    handles.extend(supervisor.stopping.drain(..).map(|(_, handle)| handle));
    let drain = tokio::time::timeout(deadline.0, async {
        for handle in &mut handles {
            let _ = handle.await;
        }
    });
    tokio::pin!(drain);
    // The watchdog keeps being fed while deliveries finish: a slow drain within the
    // shutdown timeout is not a hang.
    let drained = loop {
        tokio::select! {
            drained = &mut drain => break drained,
            () = watchdog.due() => watchdog.ping(),
        }
    };
    if drained.is_err() {
        let left = handles.iter().filter(|h| !h.is_finished()).count();
        tracing::warn!(
            left,
            timeout = %deadline,
            "Shutdown timeout reached; abandoning deliveries in flight (their batches stay pending)."
        );
        for handle in &handles {
            handle.abort();
        }
    }
    if let Some(leasing) = supervisor.leasing.take() {
        // Every watcher has stopped: the leases go to the other instances now, not
        // when they expire.
        leasing.stop.cancel();
        let mut task = leasing.task;
        loop {
            tokio::select! {
                _ = &mut task => break,
                () = watchdog.due() => watchdog.ping(),
            }
        }
    }
    watchdog.stop();
    http_token.cancel();
    if let Some(task) = http_task {
        // A scraper holding a connection open must not hold up the exit.
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    // The store closes when its last handle goes: every watcher task has ended above.
    drop(supervisor.store);
    tracing::info!("Stopped.");
    Ok(())
}

/// Waits until the store answers (a shared store that is down at start, Postgres
/// restarting, is waited for, not a failed start), saying so in the log, in systemd's
/// status and on `/readyz` (which probes the store itself). False when the daemon was
/// told to stop first. A store that answers with a lasting error (a schema this
/// release cannot run on, a refused password) fails the start.
async fn wait_for_store<S: Future<Output = ()>>(
    store: &dyn Store,
    describe: &str,
    shutdown: &mut std::pin::Pin<&mut S>,
    watchdog: &mut Watchdog,
) -> Result<bool, DaemonError> {
    let mut delay = Duration::from_millis(200);
    let mut said = false;
    loop {
        match store.connect().await {
            Ok(()) => {
                if said {
                    tracing::info!(store = %describe, "The state store answers.");
                }
                return Ok(true);
            }
            Err(e @ StoreError::Unavailable { .. }) => {
                if !said {
                    tracing::warn!(store = %describe, error = %e, waiting = true, "Waiting for the state store.");
                    said = true;
                } else {
                    tracing::debug!(error = %e, "The state store still cannot be reached.");
                }
                notify::status(&format!("Waiting for the state store: {e}"));
            }
            Err(e) => return Err(e.into()),
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut *shutdown => return Ok(false),
                () = &mut sleep => break,
                () = watchdog.due() => watchdog.ping(),
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl Supervisor {
    /// Spawns a watcher's task, under `fence` on a shared store. With `after`, the task
    /// first waits for that one (the same watcher's previous incarnation) to end, so
    /// that two never run at once.
    fn start(&mut self, built: BuiltWatcher, after: Option<JoinHandle<()>>, fence: Option<Fence>) {
        let id = built.config.id();
        let token = self.token.child_token();
        let span = tracing::info_span!("watcher", watcher = %id);
        let run_token = token.clone();
        let watcher = match &fence {
            Some(fence) => built.watcher.fenced(fence.clone()),
            None => built.watcher,
        };
        self.stats.insert(id.clone(), Arc::clone(&built.stats));
        let handle = tokio::spawn(
            async move {
                if let Some(previous) = after {
                    let _ = previous.await;
                }
                if watcher.run(run_token.clone()).await == Ended::Fenced {
                    // Not a task that died: the lease task hears of the lease's loss
                    // from the store and orders the watcher stopped.
                    run_token.cancel();
                }
                // `lifecycle`: a field log queries (and tests) can match, unlike the text.
                tracing::debug!(lifecycle = "stopped", "Watcher stopped.");
            }
            .instrument(span),
        );
        self.running.insert(id, Running { token, handle, fence });
    }

    /// Carries out an order of the lease task.
    fn order(&mut self, order: Order) {
        match order {
            Order::Start { id, fence } => {
                let Some(config) = self.defined.get(&id).cloned() else {
                    // Removed by a reload meanwhile: the lease task gives it back.
                    return;
                };
                let built = match build_keeping_stats(std::slice::from_ref(&config), &self.store, &self.stats)
                {
                    Ok(mut built) if built.len() == 1 => built.remove(0),
                    Ok(_) => return,
                    Err(e) => {
                        tracing::error!(watcher = %id, error = %e, "Cannot build the watcher whose lease this instance took; a reload (SIGHUP) tries again.");
                        if let Some(stats) = self.stats.get(&id) {
                            stats.set_state(WatcherState::Error);
                        }
                        self.dead.insert(id, Some(fence));
                        return;
                    }
                };
                let previous = self.take_previous(&id);
                tracing::info!(watcher = %id, epoch = fence.epoch, lifecycle = "started", "Watcher started under its lease.");
                self.start(built, previous, Some(fence));
            }
            Order::Stop { id, done } => {
                self.dead.remove(&id);
                let previous = self.take_previous(&id);
                let waiter = tokio::spawn(async move {
                    if let Some(previous) = previous {
                        let _ = previous.await;
                    }
                    if let Some(done) = done {
                        let _: Result<(), ()> = done.send(());
                    }
                });
                self.stopping.push((id, waiter));
            }
        }
        self.publish();
    }

    /// The task of watcher `id`, running (told to stop) or still stopping, to wait for
    /// before the watcher starts again.
    fn take_previous(&mut self, id: &str) -> Option<JoinHandle<()>> {
        if let Some(r) = self.running.remove(id) {
            r.token.cancel();
            return Some(r.handle);
        }
        self.stopping
            .iter()
            .position(|(stopping, _)| stopping == id)
            .map(|index| self.stopping.swap_remove(index).1)
    }

    /// Shows the running watchers to the metrics endpoint.
    fn publish(&self) {
        self.telemetry.set_watchers(
            self.running
                .keys()
                .filter_map(|id| Some((id.clone(), Arc::clone(self.stats.get(id)?))))
                .collect(),
        );
    }

    /// One turn of the supervisor loop.
    fn tick(&mut self) {
        self.telemetry.supervisor_tick_ms.store(now_ms(), Ordering::Relaxed);
        // A watcher task ends on its own only by panicking; the others go on. It is
        // dropped from the running set, so the next reload starts it again.
        let died: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.handle.is_finished() && !r.token.is_cancelled())
            .map(|(id, _)| id.clone())
            .collect();
        for id in died {
            if let Some(r) = self.running.remove(&id) {
                if let Some(stats) = self.stats.get(&id) {
                    stats.set_state(WatcherState::Error);
                }
                tracing::error!(watcher = %id, "A watcher task ended unexpectedly; the other watchers go on. A reload (SIGHUP) starts it again.");
                self.dead.insert(id, r.fence);
            }
        }
        self.stopping.retain(|(_, h)| !h.is_finished());
        let status = self.telemetry.summary();
        if status != self.status {
            notify::status(&status);
            self.status = status;
        }
    }

    /// Re-reads the config and watcher files and applies the difference. An invalid
    /// config changes nothing: every error is logged and the running one stays.
    fn reload(&mut self) {
        notify::reloading();
        tracing::info!(config = %self.config.file.display(), "Reloading configuration.");
        let new = match config::load(&self.config.file) {
            Ok(new) => new,
            Err(errors) => {
                for error in &errors.0 {
                    tracing::error!(error = %error, "Config error.");
                }
                self.reject(errors.0.len());
                return;
            }
        };
        for (key, changed) in [
            ("state", new.daemon.state != self.config.daemon.state),
            ("http", new.daemon.http != self.config.daemon.http),
        ] {
            if changed {
                tracing::warn!(key, "Changed setting takes effect at the next restart, not on reload.");
            }
        }

        let mut diff = diff_watchers(self.defined.iter().map(|(id, c)| (id.as_str(), c)), &new.watchers);
        // A watcher whose task died is started again, as a changed one is.
        for watcher in &new.watchers {
            let id = watcher.id();
            if self.dead.contains_key(&id) && !diff.changed.iter().any(|c| c.id() == id) {
                diff.changed.push(watcher.clone());
                diff.unchanged = diff.unchanged.saturating_sub(1);
            }
        }

        // Build everything new before stopping anything: a watcher that cannot be built
        // rejects the whole reload, like a failed start.
        let mut to_build = diff.added.clone();
        to_build.extend(diff.changed.iter().cloned());
        let built = match build_keeping_stats(&to_build, &self.store, &self.stats) {
            Ok(built) => built,
            Err(DaemonError::Build(errors)) => {
                for error in &errors {
                    tracing::error!(error = %error, "Config error.");
                }
                self.reject(errors.len());
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot build watchers.");
                self.reject(1);
                return;
            }
        };

        for id in &diff.removed {
            self.defined.remove(id);
            self.dead.remove(id);
            if let Some(r) = self.running.remove(id) {
                tracing::info!(watcher = %id, lifecycle = "removed", "Watcher removed; stopping it after its delivery in flight.");
                r.token.cancel();
                self.stopping.push((id.clone(), r.handle));
            }
        }
        for built in built {
            let id = built.config.id();
            self.defined.insert(id.clone(), built.config.clone());
            if let Some(r) = self.running.remove(&id) {
                r.token.cancel();
                tracing::info!(watcher = %id, lifecycle = "restarted", "Watcher changed; restarting it from its stored watermark.");
                self.start(built, Some(r.handle), r.fence);
                continue;
            }
            if let Some(fence) = self.dead.remove(&id) {
                tracing::info!(watcher = %id, lifecycle = "restarted", "Watcher starting again after its task ended.");
                self.start(built, None, fence);
                continue;
            }
            if self.leasing.is_some() {
                // Started, here or on another instance, once its lease is taken.
                tracing::info!(watcher = %id, lifecycle = "added", "Watcher added; it starts where its lease is taken.");
                continue;
            }
            tracing::info!(watcher = %id, lifecycle = "added", "Watcher added; starting it.");
            // Removed by an earlier reload and back before it finished stopping: it
            // starts once that one has ended.
            let previous = self
                .stopping
                .iter()
                .position(|(stopping, _)| *stopping == id)
                .map(|index| self.stopping.swap_remove(index).1);
            self.start(built, previous, None);
        }
        if let Some(leasing) = &self.leasing {
            leasing.defined.send_replace(self.defined.keys().cloned().collect());
        }
        self.config = Config {
            // The store and listener in use stay until a restart (warned above).
            daemon: config::DaemonFile {
                state: self.config.daemon.state.clone(),
                http: self.config.daemon.http.clone(),
                ..new.daemon
            },
            ..new
        };
        self.publish();
        self.telemetry.reloads_applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            added = diff.added.len(),
            removed = diff.removed.len(),
            changed = diff.changed.len(),
            unchanged = diff.unchanged,
            "Reloaded."
        );
        self.status = self.telemetry.summary();
        notify::ready(&self.status);
    }

    /// Ends a reload that changed nothing.
    fn reject(&mut self, errors: usize) {
        self.telemetry.reloads_rejected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(errors, "Reload rejected; the running configuration stays in effect.");
        self.status = format!(
            "{} (reload rejected: {errors} config error{}; running the previous configuration)",
            self.telemetry.summary(),
            if errors == 1 { "" } else { "s" }
        );
        notify::ready(&self.status);
    }
}

/// What a reload changes in the set of running watchers.
#[derive(Debug, Default, PartialEq)]
struct WatcherDiff {
    /// Configured now and not running: to start (in the order of the new config).
    added: Vec<WatcherConfig>,
    /// Running with another config: to restart with this one (in the order of the new
    /// config).
    changed: Vec<WatcherConfig>,
    /// Running and no longer configured: to stop (ids, in id order).
    removed: Vec<String>,
    /// Running with exactly the config given.
    unchanged: usize,
}

/// Compares the running watchers (id and config) with a newly loaded list. Watchers
/// are matched by id (`namespace/name`), and a watcher whose validated config differs
/// in any way is changed.
fn diff_watchers<'a>(
    running: impl IntoIterator<Item = (&'a str, &'a WatcherConfig)>,
    new: &[WatcherConfig],
) -> WatcherDiff {
    let mut running: BTreeMap<&str, &WatcherConfig> = running.into_iter().collect();
    let mut diff = WatcherDiff::default();
    for watcher in new {
        match running.remove(watcher.id().as_str()) {
            Some(config) if config == watcher => diff.unchanged += 1,
            Some(_) => diff.changed.push(watcher.clone()),
            None => diff.added.push(watcher.clone()),
        }
    }
    // What no new watcher claimed.
    diff.removed = running.into_keys().map(str::to_string).collect();
    diff
}

/// The systemd watchdog: pings every half timeout (as systemd recommends: one late
/// ping is not yet fatal), but only while a task on the runtime's worker pool keeps
/// bumping a heartbeat. The supervisor loop runs on the main thread and would go on
/// turning with every worker stuck; the heartbeat makes a stuck runtime miss its pings.
struct Watchdog {
    /// None when systemd set no watchdog.
    armed: Option<Armed>,
}

struct Armed {
    interval: tokio::time::Interval,
    heartbeat: Arc<AtomicU64>,
    /// The heartbeat count at the last ping.
    seen: u64,
    stop: CancellationToken,
}

impl Watchdog {
    fn new() -> Self {
        let Some(timeout) = notify::watchdog_timeout() else { return Watchdog { armed: None } };
        let heartbeat = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (beat, beat_stop) = (Arc::clone(&heartbeat), stop.clone());
        let period = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = interval.tick() => { beat.fetch_add(1, Ordering::Relaxed); }
                    () = beat_stop.cancelled() => return,
                }
            }
        });
        let mut interval = tokio::time::interval(timeout / 2);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::debug!(timeout_ms = timeout.as_millis() as u64, "Watchdog armed.");
        Watchdog { armed: Some(Armed { interval, heartbeat, seen: u64::MAX, stop }) }
    }

    /// Completes when a ping is due; never when no watchdog is set.
    async fn due(&mut self) {
        match &mut self.armed {
            Some(armed) => {
                armed.interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Pings if the heartbeat moved since the last ping.
    fn ping(&mut self) {
        let Some(armed) = &mut self.armed else { return };
        let now = armed.heartbeat.load(Ordering::Relaxed);
        if now != armed.seen {
            armed.seen = now;
            notify::watchdog();
        } else {
            tracing::warn!("Worker threads made no progress since the last watchdog ping; not pinging.");
        }
    }

    fn stop(&mut self) {
        if let Some(armed) = self.armed.take() {
            armed.stop.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{FailurePolicy, RetryConfig};
    use crate::sink::SinkConfig;
    use crate::source::SourceConfig;
    use crate::value::HumanDuration;

    /// A valid watcher config; `path` tells two configs of one watcher apart.
    fn watcher(namespace: &str, name: &str, path: &str) -> WatcherConfig {
        WatcherConfig {
            start: crate::value::Start::Beginning,
            file: format!("{name}.yaml").into(),
            namespace: namespace.into(),
            name: name.into(),
            source: SourceConfig::LocalDir(
                serde_yaml::from_str(&format!("path: {path}")).expect("local_dir config"),
            ),
            sink: SinkConfig::Stdout(crate::sink::stdout::StdoutConfig {}),
            poll_interval: Duration::from_secs(1),
            batch_size: 10,
            on_permanent_failure: FailurePolicy::Block,
            retry: RetryConfig {
                initial: HumanDuration(Duration::from_secs(1)),
                max: HumanDuration(Duration::from_secs(5)),
            },
        }
    }

    fn diff(running: &[WatcherConfig], new: &[WatcherConfig]) -> WatcherDiff {
        let ids: Vec<String> = running.iter().map(WatcherConfig::id).collect();
        diff_watchers(ids.iter().map(String::as_str).zip(running), new)
    }

    #[test]
    fn the_same_watchers_change_nothing() {
        let running = [watcher("a", "x", "in"), watcher("a", "y", "in")];
        assert_eq!(diff(&running, &running), WatcherDiff { unchanged: 2, ..WatcherDiff::default() });
        assert_eq!(diff(&[], &[]), WatcherDiff::default());
    }

    #[test]
    fn watchers_are_added_changed_removed_and_kept() {
        let running = [watcher("a", "kept", "in"), watcher("a", "edited", "in"), watcher("b", "gone", "in")];
        let new =
            [watcher("a", "new", "in"), watcher("a", "edited", "elsewhere"), watcher("a", "kept", "in")];
        assert_eq!(
            diff(&running, &new),
            WatcherDiff {
                added: vec![watcher("a", "new", "in")],
                changed: vec![watcher("a", "edited", "elsewhere")],
                removed: vec!["b/gone".to_string()],
                unchanged: 1,
            }
        );
    }

    #[test]
    fn watchers_are_matched_by_namespace_and_name() {
        // Same name in another namespace: a different watcher.
        let running = [watcher("a", "x", "in")];
        let new = [watcher("b", "x", "in")];
        let d = diff(&running, &new);
        assert_eq!(
            (d.added, d.removed, d.unchanged),
            (vec![watcher("b", "x", "in")], vec!["a/x".to_string()], 0)
        );
    }

    #[test]
    fn any_setting_that_differs_restarts_the_watcher() {
        let before = watcher("a", "x", "in");
        let mut after = before.clone();
        after.batch_size += 1;
        assert_eq!(diff(std::slice::from_ref(&before), std::slice::from_ref(&after)).changed, vec![after]);
        let mut moved = before.clone();
        moved.file = "renamed.yaml".into();
        assert_eq!(diff(std::slice::from_ref(&before), std::slice::from_ref(&moved)).changed.len(), 1);
    }

    #[test]
    fn removed_watchers_come_in_id_order_and_everything_goes_when_none_is_left() {
        let running = [watcher("b", "y", "in"), watcher("a", "z", "in"), watcher("a", "x", "in")];
        let d = diff(&running, &[]);
        assert_eq!(d.removed, vec!["a/x", "a/z", "b/y"]);
        assert_eq!((d.added.len(), d.changed.len(), d.unchanged), (0, 0, 0));
    }
}
