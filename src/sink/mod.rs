//! The `Sink` trait every sink implements, the one place that classifies delivery
//! failures, and the sinks themselves.
//!
//! Sinks only deliver: they never touch the store or a source.

pub(crate) mod airflow;
pub(crate) mod file;
pub(crate) mod http;
pub(crate) mod stdout;
pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;

use crate::event::Event;

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
}

/// Classifies an HTTP status the way every HTTP sink must: 2xx acknowledged; 408, 429
/// and 5xx retried; every other status permanent. Kept here so webhook-like sinks
/// agree on it.
pub fn classify_http_status(status: u16, retry_after: Option<Duration>, what: &str) -> Delivery {
    match status {
        200..=299 => Delivery::Acknowledged,
        408 | 429 | 500..=599 => {
            Delivery::RetryLater { reason: format!("{what} answered HTTP {status}"), after: retry_after }
        }
        _ => Delivery::permanent(format!("{what} answered HTTP {status}")),
    }
}

/// Encodes events as JSON lines (one object and a newline each), the format of the
/// `stdout` and `file` sinks. An event that cannot be encoded is a permanent failure.
pub fn json_lines(events: &[Event]) -> Result<Vec<u8>, Delivery> {
    let mut buffer = Vec::new();
    for event in events {
        if let Err(e) = serde_json::to_writer(&mut buffer, event) {
            return Err(Delivery::permanent(format!("cannot encode event {}: {e}", event.id)));
        }
        buffer.push(b'\n');
    }
    Ok(buffer)
}

/// A destination for events.
#[async_trait]
pub trait Sink: Send {
    /// Delivers a batch, in order. Answer `Acknowledged` only once every event is
    /// durably with the receiver. A batch may be delivered again after a crash or a
    /// retry; the events then carry the same ids.
    async fn deliver(&mut self, events: &[Event]) -> Delivery;

    /// Checks that the receiver answers and accepts our credentials, without delivering
    /// anything, for `highwater check --connect`. The default has nothing to check.
    async fn check(&mut self) -> Result<(), String> {
        Ok(())
    }
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

    /// Builds the runtime sink. Cheap and local: nothing is contacted until the first
    /// delivery.
    fn build(&self) -> Result<Box<dyn Sink>, BuildError>;
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

    /// Builds the runtime sink (see [`SinkKind::build`]).
    pub fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        self.get().build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_classified_once() {
        assert_eq!(classify_http_status(200, None, "x"), Delivery::Acknowledged);
        assert_eq!(classify_http_status(204, None, "x"), Delivery::Acknowledged);
        for retried in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(classify_http_status(retried, None, "x"), Delivery::RetryLater { .. }));
        }
        for permanent in [400, 401, 403, 404, 409, 422, 301] {
            assert!(matches!(classify_http_status(permanent, None, "x"), Delivery::Permanent { .. }));
        }
    }
}
