//! The source interface of releases up to 0.1 ("whole watermark in, whole watermark
//! out") and the adapter that runs such a source under today's [`super::Source`]: its
//! whole watermark is the head, it remembers no members, and each poll gives at most one
//! batch. A source moves off it by implementing [`super::Source`] itself (`local_dir`
//! is the example).

use async_trait::async_trait;

use super::{Batch, ChangeSet, Found, SourceError, SourceState};
use crate::json::Json;
use crate::value::Start;

/// The result of one poll of a [`Source`].
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    /// New items, at most the limit the poll was given, in the order they should be
    /// delivered.
    pub items: Vec<Found>,
    /// The watermark to store once every item above has been acknowledged. Owned by the
    /// source: the loop stores it and hands it back, and never looks inside.
    pub next: serde_json::Value,
    /// True when the source stopped at the limit and more is waiting, so the loop polls
    /// again at once instead of sleeping.
    pub more: bool,
}

/// A source that takes the whole stored watermark on every poll and returns the whole
/// next one.
#[async_trait]
pub trait Source: Send {
    /// The source kind, as in the config's `type` and the event's `source` field.
    fn kind(&self) -> &'static str;

    /// Looks for items past `watermark` (None on a watcher's first poll), returning at
    /// most `limit` of them. Must not have side effects that a repeat of the same call
    /// would notice: after a crash the loop polls again from the same watermark.
    async fn poll(
        &mut self,
        watermark: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<Polled, SourceError>;

    /// See [`super::Source::begin`]: the first watermark for `start:`, None for none.
    /// The default supports `beginning` only.
    async fn begin(&mut self, start: &Start) -> Result<Option<serde_json::Value>, SourceError> {
        match start {
            Start::Beginning => Ok(None),
            other => Err(SourceError::needs_attention(format!(
                "the {} source does not support `start: {other}` yet; remove `start:` or use `start: beginning`",
                self.kind()
            ))),
        }
    }

    /// See [`super::Source::check`].
    async fn check(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// After a poll that found nothing: true when the watermark it returned must be
    /// stored all the same, because a restart must not lose it (the `s3` source in
    /// ordered mode: when its last full listing ran). Rare by contract: a source asks
    /// for it at most once per its own schedule, so an idle watcher stays quiet. The
    /// adapter hands such a watermark over as a batch without items, which the loop
    /// commits without a delivery.
    fn store_idle(&self) -> bool {
        false
    }

    /// See [`super::Source::take_skipped`].
    fn take_skipped(&mut self) -> u64 {
        0
    }

    /// A short form of a stored watermark for events and `highwater state list`.
    fn summarize(&self, watermark: &serde_json::Value) -> serde_json::Value {
        watermark.clone()
    }
}

/// Reads a stored watermark back into the source's own type (None on a watcher's first
/// poll). One that does not fit (another source's, or edited by hand) needs an operator.
pub fn read_watermark<T: serde::de::DeserializeOwned>(
    kind: &str,
    watermark: Option<&serde_json::Value>,
) -> Result<Option<T>, SourceError> {
    // Deserialized from the borrowed value: a watermark can hold many thousands of
    // remembered items, and a copy of it per poll would be wasted memory.
    watermark
        .map(|value| T::deserialize(value).map_err(|e| SourceError::unreadable_state(kind, "watermark", e)))
        .transpose()
}

/// Runs a [`Source`] as a [`super::Source`].
pub struct Legacy<S> {
    inner: S,
    /// The watermark the next poll starts from: the committed one, or one a poll that
    /// found nothing moved to in memory.
    watermark: Option<serde_json::Value>,
    /// The watermark of the batch handed out last, decoded, with its text: its commit
    /// then costs a comparison of the text instead of a parse.
    handed_out: Option<(Json, serde_json::Value)>,
}

/// Boxes a [`Source`] behind the adapter, for a kind's `build`.
pub fn boxed<S: Source + 'static>(inner: S) -> Box<dyn super::Source> {
    Box::new(Legacy { inner, watermark: None, handed_out: None })
}

impl<S: Source> Legacy<S> {
    fn decode(&self, text: &Json, what: &str) -> Result<serde_json::Value, SourceError> {
        text.decode_owned().map_err(|e| SourceError::unreadable_state(self.inner.kind(), what, e))
    }
}

#[async_trait]
impl<S: Source> super::Source for Legacy<S> {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn restore(&mut self, state: SourceState) -> Result<(), SourceError> {
        // Members are not this source's: a state of another kind left them, and they
        // are ignored (a reset removes them).
        self.watermark = state.head.as_ref().map(|head| self.decode(head, "watermark")).transpose()?;
        self.handed_out = None;
        Ok(())
    }

    async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
        match self.inner.begin(start).await? {
            Some(first) => {
                let text = Json::encode(&first)
                    .map_err(|e| SourceError::transient(format!("cannot encode the watermark: {e}")))?;
                Ok(ChangeSet::head(text))
            }
            None => Ok(ChangeSet::default()),
        }
    }

    async fn poll(&mut self, limit: usize) -> Result<super::Polled, SourceError> {
        let polled = self.inner.poll(self.watermark.as_ref(), limit).await?;
        if polled.items.is_empty() && !self.inner.store_idle() {
            self.watermark = Some(polled.next);
            return Ok(super::Polled { batches: Vec::new(), more: polled.more });
        }
        let text = Json::encode(&polled.next)
            .map_err(|e| SourceError::transient(format!("cannot encode the watermark: {e}")))?;
        let batch = Batch { items: polled.items, change: ChangeSet::head(text.clone()) };
        self.handed_out = Some((text, polled.next));
        Ok(super::Polled { batches: vec![batch], more: polled.more })
    }

    fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError> {
        let Some(head) = &change.head else { return Ok(()) };
        self.watermark = match self.handed_out.take() {
            Some((text, value)) if text == *head => Some(value),
            _ => Some(self.decode(head, "watermark")?),
        };
        Ok(())
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        self.inner.check().await
    }

    fn take_skipped(&mut self) -> u64 {
        self.inner.take_skipped()
    }

    fn summary(&self) -> serde_json::Value {
        self.watermark.as_ref().map_or(serde_json::Value::Null, |w| self.inner.summarize(w))
    }

    fn summarize(&self, head: &Json, _remembered: u64) -> serde_json::Value {
        match head.decode_owned::<serde_json::Value>() {
            Ok(value) => self.inner.summarize(&value),
            Err(_) => serde_json::Value::String(head.as_str().chars().take(60).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::{Change, FileItem, Item};

    /// Counts up: the watermark is the number of items announced; `total` exist.
    struct Counter {
        total: u64,
        /// Asks for an idle watermark to be stored.
        store_idle: bool,
    }

    #[async_trait]
    impl Source for Counter {
        fn kind(&self) -> &'static str {
            "counter"
        }

        async fn poll(
            &mut self,
            watermark: Option<&serde_json::Value>,
            limit: usize,
        ) -> Result<Polled, SourceError> {
            let from: u64 = read_watermark("counter", watermark)?.unwrap_or(0);
            let to = (from + limit as u64).min(self.total);
            let items = (from..to)
                .map(|i| Found {
                    change: Change::Created,
                    identity: vec![i.to_string()],
                    item: Item::File(FileItem {
                        path: i.to_string(),
                        relative_path: i.to_string(),
                        size: 0,
                        modified: chrono::DateTime::UNIX_EPOCH,
                    }),
                })
                .collect();
            Ok(Polled { items, next: json!(to), more: to < self.total })
        }

        fn store_idle(&self) -> bool {
            self.store_idle
        }
    }

    #[tokio::test]
    async fn the_whole_watermark_is_the_head() {
        let mut source = boxed(Counter { total: 3, store_idle: false });
        source.restore(SourceState::default()).unwrap();
        assert_eq!(source.begin(&Start::Beginning).await.unwrap(), ChangeSet::default());
        assert!(source.begin(&Start::Now).await.unwrap_err().message.contains("start: now"));

        let polled = source.poll(2).await.unwrap();
        assert!(polled.more);
        assert_eq!(polled.batches.len(), 1);
        let change = polled.batches[0].change.clone();
        assert_eq!(change, ChangeSet::head(Json::parse("2").unwrap()));
        // Not committed: the next poll starts from the same place.
        assert_eq!(source.poll(2).await.unwrap().batches[0].change, change);
        source.committed(&change).unwrap();
        assert_eq!(source.summary(), json!(2));
        let last = source.poll(2).await.unwrap();
        assert_eq!(last.batches[0].items.len(), 1);
        source.committed(&last.batches[0].change).unwrap();
        // Idle: no batch, nothing to store.
        assert_eq!(source.poll(2).await.unwrap(), super::super::Polled::default());

        source.restore(SourceState { head: Some(Json::parse("1").unwrap()), members: Vec::new() }).unwrap();
        assert_eq!(source.poll(5).await.unwrap().batches[0].items.len(), 2);
        source.restore(SourceState { head: Some(Json::parse("\"x\"").unwrap()), members: vec![] }).unwrap();
        assert!(source.poll(1).await.is_err(), "not a counter's watermark");
        assert_eq!(source.summarize(&Json::parse("7").unwrap(), 0), json!(7));
    }

    #[tokio::test]
    async fn an_idle_watermark_the_source_asks_to_store_is_a_batch_without_items() {
        let mut source = boxed(Counter { total: 0, store_idle: true });
        source.restore(SourceState::default()).unwrap();
        let polled = source.poll(5).await.unwrap();
        assert_eq!(polled.batches.len(), 1);
        assert!(polled.batches[0].items.is_empty());
        assert_eq!(polled.batches[0].change, ChangeSet::head(Json::parse("0").unwrap()));
    }
}
