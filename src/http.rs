//! The HTTP listener: `/metrics` (Prometheus text format), `/healthz` (the daemon is
//! alive), `/readyz` (the store answers and no watcher has been blocked too long) and
//! `/status` (each running watcher's live state as JSON, for `highwater status`).
//!
//! Off unless `http:` is set in the daemon file, and loopback-bound by default: the
//! endpoints carry no secrets but have no authentication either.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::state::Store;
use crate::telemetry::{Telemetry, WatcherState, WatcherStats, now_ms};
use crate::value::HumanDuration;

/// `http:` in the daemon file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on (`127.0.0.1:9850` unless set). Keep it on
    /// loopback or a private network: the endpoints have no authentication. Port 0
    /// picks a free port, which the start-up log line names.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `/readyz` answers 503 once a watcher has been blocked (its sink refusing a batch
    /// for good, `on_permanent_failure: block`) or in state `error` (its source or sink
    /// needs an operator) for longer than this.
    #[serde(default = "default_ready_max_blocked")]
    pub ready_max_blocked: HumanDuration,
    /// A connection is closed when a request's headers take longer than this to
    /// arrive, and when it sits idle between requests for this long: a client that
    /// opens connections and sends nothing cannot hold them.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Most connections open at once; one more is closed as soon as it is accepted
    /// (and counted in `highwater_http_connections_refused_total`), so that the
    /// listener cannot use up the file descriptors the watchers need.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Also export the poll-duration histogram of each watcher
    /// (`highwater_watcher_poll_duration_seconds`, 15 series a watcher), not only the
    /// daemon-wide one (`highwater_poll_duration_seconds`). Off by default: with it a
    /// scrape is about twice as large, which matters from a few thousand watchers.
    #[serde(default)]
    pub per_watcher_histograms: bool,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9850))
}

fn default_ready_max_blocked() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_max_connections() -> usize {
    64
}

/// Longest a connection lives, whatever it does: also bounds a client that reads a
/// response slowly, which the header timeout does not see.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(300);

/// How long `/readyz` waits for the store before calling it unavailable.
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz` fails when the supervisor loop (which turns every second) has not turned
/// for this long.
const SUPERVISOR_STALL: Duration = Duration::from_secs(30);

impl HttpConfig {
    /// Cross-key checks, as `(key under http, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.idle_timeout.0 < Duration::from_millis(100) {
            errors.push(("idle_timeout".into(), "must be at least 100ms".into()));
        }
        if !(1..=10_000).contains(&self.max_connections) {
            errors.push(("max_connections".into(), "must be between 1 and 10000".into()));
        }
        errors
    }

    /// Why the address is a risk, when it is not on loopback: the endpoints have no
    /// authentication. `check` prints it and the daemon logs it at start.
    pub fn exposure_warning(&self) -> Option<String> {
        (!self.listen.ip().is_loopback()).then(|| {
            format!(
                "http.listen {} is not a loopback address: /metrics, /healthz, /readyz and /status answer anyone \
                 who can reach it, without authentication",
                self.listen
            )
        })
    }
}

/// Binds the listener; a failure here stops the start, so that a port conflict is seen.
pub async fn bind(config: &HttpConfig) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen).await
}

/// What the handlers read.
#[derive(Clone)]
struct AppState {
    telemetry: Arc<Telemetry>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    ready_max_blocked: Duration,
}

/// Serves the endpoints on `listener` until `shutdown` is cancelled.
pub fn serve(
    listener: tokio::net::TcpListener,
    config: &HttpConfig,
    telemetry: Arc<Telemetry>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(WatcherCollector {
        telemetry: Arc::clone(&telemetry),
        per_watcher_histograms: config.per_watcher_histograms,
    }));
    let state = AppState {
        telemetry,
        store,
        registry: Arc::new(registry),
        ready_max_blocked: config.ready_max_blocked.0,
    };
    let telemetry = Arc::clone(&state.telemetry);
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    let limits = Limits { idle_timeout: config.idle_timeout.0, max_connections: config.max_connections };
    tokio::spawn(accept_loop(listener, app, limits, telemetry, shutdown))
}

/// What bounds the listener's connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    idle_timeout: Duration,
    max_connections: usize,
}

/// Accepts connections until `shutdown`, each served on its own task within the
/// limits. (`axum::serve` has neither a header timeout nor a connection cap: 1,050
/// idle connections once used up every file descriptor of the process.)
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait a little instead of
                // spinning on a listener that keeps failing.
                tracing::warn!(error = %e, "HTTP listener cannot accept a connection.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            telemetry.http_connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.idle_timeout);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = &mut connection => {}
                _ = tokio::time::sleep(MAX_CONNECTION_LIFE) => {}
                () = shutdown.cancelled() => {
                    // Finish the request in flight, briefly; then the connection goes.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
            drop(slot);
        });
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode metrics\n".to_string(),
        ),
    }
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    let tick = state.telemetry.supervisor_tick_ms.load(Ordering::Relaxed);
    let stalled_ms = now_ms().saturating_sub(tick);
    if tick != 0 && stalled_ms > SUPERVISOR_STALL.as_millis() as i64 {
        let secs = stalled_ms / 1000;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the supervisor loop has not run for {secs}s\n"),
        );
    }
    (StatusCode::OK, "ok\n".to_string())
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.telemetry.store_lost.load(Ordering::Relaxed) {
        let body = "not ready: the leases could not be renewed within lease_ttl; every watcher is stopped until the state store answers\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body.to_string());
    }
    // A read of a key nobody writes: it proves the store answers without touching data.
    match tokio::time::timeout(STORE_PROBE_TIMEOUT, state.store.get("highwater", "readyz", "probe")).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the state store does not answer\n".to_string(),
            );
        }
    }
    // Without waiting for ready_max_blocked: a store that cannot be written holds back
    // every watcher that finds something, and an operator must act.
    let mut body = String::new();
    if let Err(e) = state.store.check().await {
        body.push_str(&format!("not ready: {e}\n"));
    }
    let failed = state.telemetry.store_failed();
    if !failed.is_empty() {
        body.push_str(&format!(
            "not ready: the state store failed for watchers {} (state error; see the log)\n",
            failed.join(", ")
        ));
    }
    if !body.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    // After the store probe: a daemon waiting for its store at start says why.
    if !state.telemetry.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or stopping\n".to_string());
    }
    let blocked = state.telemetry.blocked_longer_than(state.ready_max_blocked, now_ms());
    if blocked.is_empty() {
        return (StatusCode::OK, "ready\n".to_string());
    }
    for (id, watcher_state, how_long) in blocked {
        let what =
            if watcher_state == WatcherState::Error { "needs attention (state error)" } else { "blocked" };
        body.push_str(&format!(
            "not ready: watcher {id} {what} for {} (ready_max_blocked: {})\n",
            HumanDuration(Duration::from_secs(how_long.as_secs())),
            HumanDuration(state.ready_max_blocked)
        ));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

/// `/status`: each running watcher's live state (what the store does not know), as
/// `highwater status` reads it. Times are Unix milliseconds, 0 for "not yet".
async fn status(State(state): State<AppState>) -> impl IntoResponse {
    let now = now_ms();
    let watchers: Vec<serde_json::Value> = state
        .telemetry
        .watchers()
        .iter()
        .map(|(id, s)| {
            let ms = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed);
            serde_json::json!({
                "watcher": id,
                "state": s.state().as_str(),
                "state_since_ms": ms(&s.state_since_ms),
                "lag_seconds": s.lag_seconds(now),
                "backlog_events": s.backlog_events.load(Ordering::Relaxed),
                "pending_events": s.pending_events.load(Ordering::Relaxed),
                "pending_since_ms": ms(&s.pending_since_ms),
                "last_poll_ms": ms(&s.last_poll_ms),
                "last_delivery_ms": ms(&s.last_delivery_ms),
                "dead_letters": s.dead_letters.load(Ordering::Relaxed),
            })
        })
        .collect();
    let body = serde_json::json!({ "now_ms": now, "watchers": watchers });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}

/// Reads every running watcher's counters at scrape time: nothing to register or
/// unregister when a reload adds or removes watchers.
#[derive(Debug)]
struct WatcherCollector {
    telemetry: Arc<Telemetry>,
    /// `http.per_watcher_histograms`.
    per_watcher_histograms: bool,
}

type Rows = [(String, Arc<WatcherStats>)];

impl Collector for WatcherCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.telemetry.watchers();
        let now = now_ms();
        let secs = |ms: i64| ms as f64 / 1000.0;

        let family = encoder.encode_descriptor(
            "highwater_watchers",
            "Watchers running in this daemon.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(rows.len() as i64).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "highwater_config_reloads",
            "Configuration reloads (SIGHUP), by result: applied, or rejected with the old config kept.",
            None,
            MetricType::Counter,
        )?;
        for (result, n) in [
            ("applied", self.telemetry.reloads_applied.load(Ordering::Relaxed)),
            ("rejected", self.telemetry.reloads_rejected.load(Ordering::Relaxed)),
        ] {
            ConstCounter::new(n).encode(family.encode_family(&[("result", result)])?)?;
        }
        let family = encoder.encode_descriptor(
            "highwater_http_connections_refused",
            "Connections to this listener closed at once because http.max_connections were open.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.telemetry.http_connections_refused.load(Ordering::Relaxed)).encode(family)?;
        if self.telemetry.leasing.load(Ordering::Relaxed) {
            let family = encoder.encode_descriptor(
                "highwater_leases_held",
                "Watcher leases this instance holds (a store several instances share).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(self.telemetry.leases_held.load(Ordering::Relaxed) as i64).encode(family)?;
            for (name, help, value) in [
                (
                    "highwater_lease_acquisitions",
                    "Watcher leases this instance took (at start, from an instance that died or handed over).",
                    &self.telemetry.lease_acquisitions,
                ),
                (
                    "highwater_lease_handovers",
                    "Watcher leases this instance gave up (rebalancing, a removed watcher, a stop) or lost.",
                    &self.telemetry.lease_handovers,
                ),
                (
                    "highwater_lease_renew_failures",
                    "Lease renewals that failed: the store could not be reached.",
                    &self.telemetry.lease_renew_failures,
                ),
            ] {
                let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                ConstCounter::new(value.load(Ordering::Relaxed)).encode(family)?;
            }
        }

        counter(&mut encoder, &rows, "highwater_watcher_polls", "Polls that returned.", |s| &s.polls)?;
        counter(&mut encoder, &rows, "highwater_watcher_poll_errors", "Polls that failed.", |s| {
            &s.poll_errors
        })?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_poll_interval_seconds",
            "The watcher's configured poll_interval.",
            |s| Some(s.poll_interval_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        )?;
        let mut family = encoder.encode_descriptor(
            "highwater_poll_duration_seconds",
            "How long successful polls took, every watcher of this daemon together.",
            None,
            MetricType::Histogram,
        )?;
        let (sum, count, buckets) = self.telemetry.poll_duration();
        family.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        if self.per_watcher_histograms {
            let mut family = encoder.encode_descriptor(
                "highwater_watcher_poll_duration_seconds",
                "How long successful polls took (http.per_watcher_histograms: true).",
                None,
                MetricType::Histogram,
            )?;
            for (id, stats) in &rows {
                let (sum, count, buckets) = stats.poll_duration.snapshot();
                family
                    .encode_family(&[("watcher", id.as_str())])?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        counter(&mut encoder, &rows, "highwater_watcher_items_found", "Items found by polls.", |s| {
            &s.items_found
        })?;
        counter(
            &mut encoder,
            &rows,
            "highwater_watcher_items_skipped",
            "Items a poll could not announce and skipped with a warning (a row with a NULL cursor column).",
            |s| &s.items_skipped,
        )?;
        counter(
            &mut encoder,
            &rows,
            "highwater_watcher_items_unnotified",
            "Objects a scheduled listing found that no event notification had announced (an s3 source with notifications).",
            |s| &s.items_unnotified,
        )?;
        counter(
            &mut encoder,
            &rows,
            "highwater_watcher_events_delivered",
            "Events the sink acknowledged.",
            |s| &s.events_delivered,
        )?;
        let mut family = encoder.encode_descriptor(
            "highwater_watcher_delivery_failures",
            "Failed delivery attempts, by kind: retry (the sink said try later) or permanent (refused for good).",
            None,
            MetricType::Counter,
        )?;
        for (id, stats) in &rows {
            for (kind, n) in [
                ("retry", stats.delivery_retries.load(Ordering::Relaxed)),
                ("permanent", stats.delivery_permanent_failures.load(Ordering::Relaxed)),
                ("attention", stats.delivery_attention.load(Ordering::Relaxed)),
            ] {
                ConstCounter::new(n)
                    .encode(family.encode_family(&[("watcher", id.as_str()), ("kind", kind)])?)?;
            }
        }
        counter(
            &mut encoder,
            &rows,
            "highwater_watcher_batches_dead_lettered",
            "Batches set aside under a dead_letter key.",
            |s| &s.batches_dead_lettered,
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_pending_events",
            "Events in the batch waiting for acknowledgement.",
            |s| Some(s.pending_events.load(Ordering::Relaxed) as f64),
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_pending_age_seconds",
            "How long the batch waiting for acknowledgement has waited (0: none waits): delivery lag.",
            |s| {
                let since = s.pending_since_ms.load(Ordering::Relaxed);
                Some(if since == 0 { 0.0 } else { secs(now.saturating_sub(since).max(0)) })
            },
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_backlog_events",
            "Items found and not yet delivered: the batches of the last poll still queued and the rest of the pending batch.",
            |s| Some(s.backlog_events.load(Ordering::Relaxed) as f64),
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_lag_seconds",
            "Age of the oldest item found and not yet delivered (0: everything found was delivered).",
            |s| Some(s.lag_seconds(now)),
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_dead_letters",
            "Batches held under dead_letter keys in the store (set aside, not yet replayed or purged).",
            |s| Some(s.dead_letters.load(Ordering::Relaxed) as f64),
        )?;
        gauge(
            &mut encoder,
            &rows,
            "highwater_watcher_watermark_age_seconds",
            "Seconds since the stored watermark last moved (absent until known).",
            |s| {
                let moved = s.watermark_moved_ms.load(Ordering::Relaxed);
                (moved != 0).then(|| secs(now.saturating_sub(moved).max(0)))
            },
        )?;
        timestamp(
            &mut encoder,
            &rows,
            "highwater_watcher_last_poll_timestamp_seconds",
            "Unix time of the last successful poll (absent until one).",
            |s| &s.last_poll_ms,
        )?;
        timestamp(
            &mut encoder,
            &rows,
            "highwater_watcher_last_delivery_timestamp_seconds",
            "Unix time of the last acknowledged delivery (absent until one).",
            |s| &s.last_delivery_ms,
        )?;
        let mut family = encoder.encode_descriptor(
            "highwater_watcher_state",
            "1 for the state the watcher is in (ok, retrying, blocked, error, waiting), 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for (id, stats) in &rows {
            let current = stats.state();
            for state in WatcherState::ALL {
                let labels = [("watcher", id.as_str()), ("state", state.as_str())];
                ConstGauge::new(i64::from(state == current)).encode(family.encode_family(&labels)?)?;
            }
        }
        timestamp(
            &mut encoder,
            &rows,
            "highwater_watcher_state_since_timestamp_seconds",
            "Unix time the watcher entered its current state (absent while it never changed).",
            |s| &s.state_since_ms,
        )?;
        Ok(())
    }
}

/// One counter family with a `watcher` label.
fn counter(
    encoder: &mut DescriptorEncoder,
    rows: &Rows,
    name: &str,
    help: &str,
    value: impl Fn(&WatcherStats) -> &std::sync::atomic::AtomicU64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (id, stats) in rows {
        let n = value(stats).load(Ordering::Relaxed);
        ConstCounter::new(n).encode(family.encode_family(&[("watcher", id.as_str())])?)?;
    }
    Ok(())
}

/// One gauge family with a `watcher` label; watchers whose value is None are left out.
fn gauge(
    encoder: &mut DescriptorEncoder,
    rows: &Rows,
    name: &str,
    help: &str,
    value: impl Fn(&WatcherStats) -> Option<f64>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (id, stats) in rows {
        if let Some(v) = value(stats) {
            ConstGauge::new(v).encode(family.encode_family(&[("watcher", id.as_str())])?)?;
        }
    }
    Ok(())
}

/// One gauge family of Unix times kept in milliseconds, 0 meaning "not yet".
fn timestamp(
    encoder: &mut DescriptorEncoder,
    rows: &Rows,
    name: &str,
    help: &str,
    value: impl Fn(&WatcherStats) -> &std::sync::atomic::AtomicI64,
) -> Result<(), std::fmt::Error> {
    gauge(encoder, rows, name, help, |s| {
        let ms = value(s).load(Ordering::Relaxed);
        (ms != 0).then(|| ms as f64 / 1000.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::WatcherState;

    fn app_state(dir: &std::path::Path, telemetry: Arc<Telemetry>) -> AppState {
        let store: Arc<dyn Store> =
            Arc::new(crate::state::sqlite::SqliteStore::open(&dir.join("state.db")).expect("open store"));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(WatcherCollector {
            telemetry: Arc::clone(&telemetry),
            per_watcher_histograms: false,
        }));
        AppState {
            telemetry,
            store,
            registry: Arc::new(registry),
            ready_max_blocked: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn readyz_fails_while_starting_and_once_a_watcher_is_blocked_too_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        let telemetry = Arc::new(Telemetry::default());
        let stuck = Arc::new(WatcherStats::default());
        telemetry.set_watchers([("ns/stuck".to_string(), Arc::clone(&stuck))].into_iter().collect());
        let state = app_state(dir.path(), Arc::clone(&telemetry));

        let (status, body) = readyz(State(state.clone())).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting or stopping\n")
        );

        telemetry.ready.store(true, Ordering::Relaxed);
        stuck.set_state(WatcherState::Blocked);
        let (status, _) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::OK, "blocked for less than ready_max_blocked");

        stuck.state_since_ms.store(now_ms() - 120_000, Ordering::Relaxed);
        let (status, body) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("not ready: watcher ns/stuck blocked for 2m"), "{body}");
    }

    #[tokio::test]
    async fn readyz_fails_at_once_naming_the_watchers_whose_store_failed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let telemetry = Arc::new(Telemetry::default());
        let (failing, fine) = (Arc::new(WatcherStats::default()), Arc::new(WatcherStats::default()));
        telemetry.set_watchers(
            [("ns/a".to_string(), Arc::clone(&failing)), ("ns/b".to_string(), fine)].into_iter().collect(),
        );
        telemetry.ready.store(true, Ordering::Relaxed);
        let state = app_state(dir.path(), Arc::clone(&telemetry));
        failing.set_state(WatcherState::Error);
        failing.store_failed.store(true, Ordering::Relaxed);
        let (status, body) = readyz(State(state.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "without waiting for ready_max_blocked");
        assert_eq!(body, "not ready: the state store failed for watchers ns/a (state error; see the log)\n");
        failing.store_failed.store(false, Ordering::Relaxed);
        failing.set_state(WatcherState::Ok);
        assert_eq!(readyz(State(state)).await, (StatusCode::OK, "ready\n".to_string()));
    }

    #[test]
    fn only_a_loopback_listener_goes_unremarked() {
        let config = |listen: &str| HttpConfig {
            listen: listen.parse().unwrap(),
            ..serde_yaml::from_str("{}").unwrap()
        };
        assert_eq!(config("127.0.0.1:9850").exposure_warning(), None);
        assert_eq!(config("[::1]:9850").exposure_warning(), None);
        let warning = config("0.0.0.0:9850").exposure_warning().expect("a warning");
        assert!(warning.starts_with("http.listen 0.0.0.0:9850 is not a loopback address"), "{warning}");
        assert!(config("192.168.1.5:80").exposure_warning().is_some());
    }

    #[test]
    fn a_blocked_watcher_shows_in_the_state_metric() {
        let dir = tempfile::tempdir().expect("tempdir");
        let telemetry = Arc::new(Telemetry::default());
        let stuck = Arc::new(WatcherStats::default());
        stuck.set_state(WatcherState::Blocked);
        stuck.set_pending(3, now_ms() - 5_000);
        telemetry.set_watchers([("ns/stuck".to_string(), stuck)].into_iter().collect());
        let state = app_state(dir.path(), telemetry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &state.registry).expect("encode");
        assert!(text.contains("highwater_watcher_state{watcher=\"ns/stuck\",state=\"blocked\"} 1"), "{text}");
        assert!(text.contains("highwater_watcher_state{watcher=\"ns/stuck\",state=\"ok\"} 0"), "{text}");
        assert!(text.contains("highwater_watcher_pending_events{watcher=\"ns/stuck\"} 3"), "{text}");
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("highwater_watcher_pending_age_seconds{watcher=\"ns/stuck\"} "))
            .and_then(|v| v.parse().ok())
            .expect("pending age");
        assert!((5.0..60.0).contains(&age), "{age}");
        assert!(!text.contains("highwater_watcher_last_poll_timestamp_seconds{"), "absent until a poll");
    }
}
