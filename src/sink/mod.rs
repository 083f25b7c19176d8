//! The `Sink` trait every sink implements, the one place that classifies delivery
//! failures, and the sinks themselves.
//!
//! Sinks only deliver: they never touch the store or a source.

pub(crate) mod airflow;
pub(crate) mod file;
pub(crate) mod http;
pub(crate) mod stdout;
pub mod webhook;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::event::Encoded;
use crate::value::Template;

/// A sink's answer to one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Every event of the batch is durably with the receiver: the watermark may move.
    Acknowledged,
    /// Try again later (connection error, timeout, 408, 429, 5xx). `after` is the
    /// receiver's own hint (Retry-After), when it gave one.
    RetryLater {
        /// Why, for logs and metrics. Never holds a secret.
        reason: String,
        /// The receiver's requested delay, if any.
        after: Option<Duration>,
    },
    /// An operator must act before this can pass (credentials refused, an Airflow asset
    /// that no DAG consumes, no trust store for `https://`): the batch is held and
    /// retried slowly, never set aside, and the watcher shows state `error`. `after` is
    /// how long to wait (None: the watcher's `retry.max`).
    NeedsAttention {
        /// What the operator must fix, for logs and metrics. Never holds a secret.
        reason: String,
        /// The sink's own pace for trying again, if it has one.
        after: Option<Duration>,
    },
    /// Retrying the same batch will not help (other 4xx, a body the receiver rejects):
    /// the watcher's `on_permanent_failure` policy decides.
    Permanent {
        /// Why, for logs, metrics and the dead-letter record. Never holds a secret.
        reason: String,
    },
}

impl Delivery {
    /// A retriable failure without a delay hint.
    pub fn retry(reason: impl Into<String>) -> Self {
        Delivery::RetryLater { reason: reason.into(), after: None }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl Into<String>) -> Self {
        Delivery::Permanent { reason: reason.into() }
    }

    /// A failure an operator must fix, retried at the watcher's `retry.max` pace.
    pub fn attention(reason: impl Into<String>) -> Self {
        Delivery::NeedsAttention { reason: reason.into(), after: None }
    }

    /// The reason of a failure (empty for `Acknowledged`).
    pub fn reason(&self) -> &str {
        match self {
            Delivery::Acknowledged => "",
            Delivery::RetryLater { reason, .. }
            | Delivery::NeedsAttention { reason, .. }
            | Delivery::Permanent { reason } => reason,
        }
    }

    /// The same outcome with its reason rewritten (a prefix, a redaction).
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Delivery::Acknowledged => Delivery::Acknowledged,
            Delivery::RetryLater { reason, after } => Delivery::RetryLater { reason: f(reason), after },
            Delivery::NeedsAttention { reason, after } => {
                Delivery::NeedsAttention { reason: f(reason), after }
            }
            Delivery::Permanent { reason } => Delivery::Permanent { reason: f(reason) },
        }
    }
}

/// Classifies an HTTP status the way every HTTP sink must: 2xx acknowledged; 408, 429
/// and 5xx retried; 401, 403 and 407 (credentials refused: no batch passes until an
/// operator fixes them) need attention; every other status permanent (400, 404, 410,
/// 422: this batch is refused). Kept here so webhook-like sinks agree on it.
pub fn classify_http_status(status: u16, retry_after: Option<Duration>, what: &str) -> Delivery {
    let reason = format!("{what} answered HTTP {status}");
    match status {
        200..=299 => Delivery::Acknowledged,
        408 | 429 | 500..=599 => Delivery::RetryLater { reason, after: retry_after },
        401 | 403 | 407 => Delivery::NeedsAttention {
            reason: format!("{reason}: the credentials are refused; check the sink's secrets"),
            after: None,
        },
        _ => Delivery::permanent(reason),
    }
}

/// Events as JSON lines (each event's text and a newline), the format of the `stdout`
/// and `file` sinks, with where each line ends.
#[derive(Debug, Default)]
pub struct Lines {
    /// The lines.
    pub bytes: Vec<u8>,
    /// The offset just past each line's newline.
    ends: Vec<usize>,
}

impl Lines {
    /// The lines of `events`: their text as encoded once, copied, not encoded again.
    pub fn of(events: &[Encoded]) -> Lines {
        let size = events.iter().map(|e| e.text().len() + 1).sum();
        let mut lines = Lines { bytes: Vec::with_capacity(size), ends: Vec::with_capacity(events.len()) };
        for event in events {
            lines.bytes.extend_from_slice(event.text().as_bytes());
            lines.bytes.push(b'\n');
            lines.ends.push(lines.bytes.len());
        }
        lines
    }

    /// How many whole lines the first `written` bytes hold.
    pub fn whole(&self, written: usize) -> usize {
        self.ends.partition_point(|end| *end <= written)
    }
}

/// Writes all of `bytes` to `out`, and says how many were written before an error.
pub fn write_counting(out: &mut impl Write, bytes: &[u8]) -> (usize, std::io::Result<()>) {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Err(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Err(e)),
        }
    }
    (written, Ok(()))
}

/// The leading events of a delivery that the receiver has taken so far, counted while
/// the sink delivers. A sink that delivers in parts (a request per event, per `batch:`
/// chunk, a write per line) adds each part once it is durably with the receiver; the
/// watcher then retries only the rest, and keeps the count with the pending batch now
/// and then, so that a restart also sends only the rest (up to what it had not kept
/// yet, with the same ids). A sink that never adds to it is retried whole.
#[derive(Debug, Default)]
pub struct Acked {
    count: AtomicUsize,
    moved: Notify,
}

impl Acked {
    /// Nothing acknowledged yet.
    pub fn new() -> Self {
        Acked::default()
    }

    /// `n` more leading events (after those counted so far) are with the receiver.
    pub fn add(&self, n: usize) {
        if n > 0 {
            self.count.fetch_add(n, Ordering::Relaxed);
            self.moved.notify_one();
        }
    }

    /// Leading events acknowledged so far.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Resolves once more was added since the last time it resolved.
    pub async fn moved(&self) {
        self.moved.notified().await
    }
}

/// A destination for events.
#[async_trait]
pub trait Sink: Send {
    /// Delivers a batch, in order. Answer `Acknowledged` only once every event is
    /// durably with the receiver. A sink that takes the batch in parts counts into
    /// `acked` each leading part as it is taken, so that a failure part-way costs a
    /// retry of the rest only. A batch (or its rest) may be delivered again after a
    /// crash or a retry; the events then carry the same ids, and the same bytes.
    async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery;

    /// After a `RetryLater`, resolves once the receiver looks able to take the batch
    /// again (its health endpoint answers), so that the watcher tries again at once
    /// rather than at the end of its backoff: recovery after an outage takes seconds,
    /// not `retry.max`. The watcher races it against the backoff and drops it then. The
    /// default never resolves: the backoff alone decides.
    async fn recovered(&mut self) {
        std::future::pending::<()>().await
    }

    /// Checks that the receiver answers and accepts our credentials, without delivering
    /// anything, for `highwater check --connect`. Err: it cannot be used. The default
    /// has nothing to check.
    async fn check(&mut self) -> Result<Checked, String> {
        Ok(Checked::default())
    }
}

/// What `highwater check --connect` learned about a sink that can be used.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What was reached, for the operator (`… reachable (HTTP 405)`).
    pub notes: Vec<String>,
    /// What will not stop delivery but is probably wrong (a receiver answering 5xx, a
    /// DAG that ignores partition keys).
    pub warnings: Vec<String>,
}

/// A failure to build a sink from its config.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    /// What is wrong; never a secret.
    pub message: String,
}

/// What every sink kind's config offers; each kind's module implements it (and
/// [`Kind`](crate::value::Kind) for its `type` value) and adds one line to
/// [`SinkConfig`].
pub trait SinkKind {
    /// One line for `highwater watchers` (never a secret).
    fn describe(&self) -> String;

    /// Checks that need more than one key; `(key under sink, message)` pairs.
    fn validate(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// What the sink needs from this host, checked without the network (a trust store
    /// for `https://`); `(key under sink, message)` pairs. A problem here stops only
    /// this watcher: `run` starts the others and this one waits in state `error`, and
    /// `highwater check` reports it.
    fn check_host(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Builds the runtime sink. Cheap and local: nothing is contacted until the first
    /// delivery.
    fn build(&self) -> Result<Box<dyn Sink>, BuildError>;

    /// The templates filled from each event's item, with their keys under `sink`:
    /// `check` finds the fields they name that the source's items never have.
    fn item_templates(&self) -> Vec<(&'static str, &Template)> {
        Vec::new()
    }
}

crate::value::kinds! {
    /// Where a watcher's events go (`sink:` in a watcher file, tagged by `type`).
    pub enum SinkConfig("sink") as dyn SinkKind {
        /// One JSON line per event on standard output.
        Stdout(stdout::StdoutConfig),
        /// JSON lines appended to a file, synced before acknowledging.
        File(file::FileSinkConfig),
        /// HTTP POSTs, CloudEvents or plain JSON, signed the Standard Webhooks way.
        Webhook(webhook::WebhookConfig),
        /// Airflow 3 asset events, through its REST API.
        Airflow(airflow::AirflowConfig),
    }
}

impl SinkConfig {
    /// One line for `highwater watchers` (never a secret).
    pub fn describe(&self) -> String {
        self.get().describe()
    }

    /// Checks that need more than one key; `(key under sink, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        self.get().validate()
    }

    /// The templates filled from each item (see [`SinkKind::item_templates`]).
    pub fn item_templates(&self) -> Vec<(&'static str, &Template)> {
        self.get().item_templates()
    }

    /// What the sink needs from this host (see [`SinkKind::check_host`]).
    pub fn check_host(&self) -> Vec<(String, String)> {
        self.get().check_host()
    }

    /// Builds the runtime sink (see [`SinkKind::build`]).
    pub fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        self.get().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes `room` bytes, a few at a time, then fails.
    struct Full {
        room: usize,
        taken: Vec<u8>,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room).min(7);
            if n == 0 {
                return Err(std::io::Error::other("no space left"));
            }
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_written_whole_before_a_failure_are_counted() {
        let event = |id: &str| {
            let event = crate::event::Event {
                id: id.into(),
                namespace: "ns".into(),
                watcher: "w".into(),
                source: "local_dir".into(),
                change: crate::event::Change::Created,
                item: crate::event::Item::Rows(crate::event::RowsItem {
                    table: "t".into(),
                    rows: Vec::new(),
                }),
                watermark: serde_json::Value::Null,
                emitted_at: chrono::DateTime::UNIX_EPOCH,
            };
            Encoded::of(&event).unwrap()
        };
        let lines = Lines::of(&[event("a"), event("b"), event("c")]);
        let first = lines.ends[0];
        let mut out = Full { room: first + 5, taken: Vec::new() };
        let (written, result) = write_counting(&mut out, &lines.bytes);
        assert!(result.is_err());
        assert_eq!((written, lines.whole(written)), (first + 5, 1));
        assert_eq!(lines.whole(lines.bytes.len()), 3);
        assert!(lines.bytes.ends_with(b"\n") && out.taken.starts_with(event("a").text().as_bytes()));
    }

    #[tokio::test]
    async fn acked_counts_and_wakes() {
        let acked = Acked::new();
        acked.add(0);
        acked.add(2);
        acked.moved().await;
        acked.add(1);
        assert_eq!(acked.get(), 3);
    }

    #[test]
    fn http_statuses_are_classified_once() {
        assert_eq!(classify_http_status(200, None, "x"), Delivery::Acknowledged);
        assert_eq!(classify_http_status(204, None, "x"), Delivery::Acknowledged);
        for retried in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify_http_status(retried, None, "x"), Delivery::RetryLater { .. }));
        }
        for permanent in [400, 404, 409, 410, 422, 301] {
            assert!(matches!(classify_http_status(permanent, None, "x"), Delivery::Permanent { .. }));
        }
        for attention in [401, 403, 407] {
            let outcome = classify_http_status(attention, None, "x");
            assert!(matches!(outcome, Delivery::NeedsAttention { after: None, .. }), "{outcome:?}");
        }
    }
}
