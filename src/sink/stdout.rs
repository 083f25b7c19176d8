//! The `stdout` sink: one JSON line per event on standard output.

use std::io::Write;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Acked, BuildError, Delivery, Lines, Sink, SinkKind};
use crate::event::Encoded;
use crate::value::Kind;

/// `sink: {type: stdout}`; it has no options.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl Kind for StdoutConfig {
    const TAG: &'static str = "stdout";
}

impl SinkKind for StdoutConfig {
    fn describe(&self) -> String {
        Self::TAG.to_string()
    }

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(StdoutSink))
    }
}

/// Writes events to standard output. Logs go to standard error, so the two never mix.
pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery {
        let lines = Lines::of(events);
        // One locked write per batch keeps lines of concurrent watchers whole; it runs
        // on the blocking pool because a reader that stops reading fills the pipe, and
        // the write must then stall only this watcher, not a runtime thread.
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            let (written, result) = super::write_counting(&mut out, &lines.bytes);
            (lines.whole(written), result.and_then(|()| out.flush()))
        })
        .await;
        match written {
            Ok((_, Ok(()))) => Delivery::Acknowledged,
            Ok((whole, Err(e))) => {
                // The lines written whole are out; a retry writes the rest.
                acked.add(whole);
                Delivery::retry(format!("cannot write to standard output: {e}"))
            }
            Err(e) => Delivery::retry(format!("stdout sink task failed: {e}")),
        }
    }
}
