//! The queue side of the `s3` source's `notifications:`: receiving messages and turning
//! them into keys to look at, remembering which message waits for which batch, deleting
//! a message only once the batch holding its events was committed, keeping messages
//! invisible while their batch waits for the sink, and setting aside messages that
//! cannot be read.
//!
//! A crash leaves every undeleted message in the queue: it comes back after its
//! visibility timeout, is looked at again, and announces nothing new (its batch, if it
//! was not committed, is redelivered first with the same ids).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::notice::{self, Action, Format, Message};
use super::queue::{MAX_PER_REQUEST, Queue};
use crate::source::SourceError;

/// SQS's longest visibility timeout: where a message that cannot be read is set aside.
const SET_ASIDE: Duration = Duration::from_secs(12 * 3600);

/// Most messages one poll receives.
const MAX_MESSAGES: usize = 100;

/// Most ids of messages set aside remembered (to log each once).
const MAX_LOGGED: usize = 10_000;

/// A message not yet deleted: its id (for logs) and the handle of this receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The message id.
    pub id: String,
    /// The receipt handle.
    pub receipt: String,
}

/// What one poll received: the keys to look at, each with the messages that named it.
#[derive(Debug, Default)]
pub struct Inbound {
    /// Keys (decoded; of this bucket and in scope) → indexes into `messages`.
    pub keys: BTreeMap<String, Vec<usize>>,
    /// The messages that named keys.
    pub messages: Vec<Held>,
    /// Messages received (all kinds).
    pub received: usize,
    /// Records naming a removal (for the log).
    pub removals: usize,
}

/// Settings of the queue side.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a receive waits for a first message (SQS long polling).
    pub wait: Duration,
    /// How long a received message stays invisible; extended while its batch waits.
    pub visibility: Duration,
}

/// The queue and the messages this source holds.
pub struct Inbox {
    queue: Queue,
    format: Format,
    timing: Timing,
    /// The first receive of a process does not wait: `highwater once` must not.
    waited: bool,
    /// Per batch handed out by the last notified poll, oldest first: the messages to
    /// delete once it is committed.
    awaiting: VecDeque<Vec<Held>>,
    /// Messages to delete: their batch was committed, or they had nothing to announce.
    done: Vec<Held>,
    /// Receipt handles of messages received and not yet deleted, by message id: the
    /// background task keeps them invisible.
    in_flight: Arc<Mutex<HashMap<String, String>>>,
    /// The background task extending visibility.
    extender: Option<tokio::task::JoinHandle<()>>,
    /// Ids of messages set aside and logged (once per process).
    set_aside: HashSet<String>,
    /// Messages set aside since the last `take_set_aside`.
    set_aside_count: u64,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Some(task) = self.extender.take() {
            task.abort();
        }
    }
}

impl Inbox {
    /// An inbox on `queue`; nothing is received until the first poll.
    pub fn new(queue: Queue, format: Format, timing: Timing) -> Self {
        Inbox {
            queue,
            format,
            timing,
            waited: false,
            awaiting: VecDeque::new(),
            done: Vec::new(),
            in_flight: Arc::default(),
            extender: None,
            set_aside: HashSet::new(),
            set_aside_count: 0,
        }
    }

    /// The queue, for `check --connect`.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Messages set aside since the last call (for the watcher's skipped-items count).
    pub fn take_set_aside(&mut self) -> u64 {
        std::mem::take(&mut self.set_aside_count)
    }

    /// True once a receive has waited (the loop may poll again at once: the wait is in
    /// the queue).
    pub fn waits(&self) -> bool {
        self.waited
    }

    /// Deletes the messages that are done. A delete the queue refuses (a receipt that
    /// expired) is let go: the message comes back and announces nothing new.
    pub async fn flush(&mut self) -> Result<(), SourceError> {
        if self.done.is_empty() {
            return Ok(());
        }
        let done = std::mem::take(&mut self.done);
        let pairs: Vec<(String, String)> = done.iter().map(|h| (h.id.clone(), h.receipt.clone())).collect();
        match self.queue.delete(&pairs).await {
            Ok(refused) => {
                if !refused.is_empty() {
                    tracing::debug!(
                        refused = refused.len(),
                        "The queue refused to delete some messages; they come back."
                    );
                }
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for h in &done {
                    in_flight.remove(&h.id);
                }
                Ok(())
            }
            Err(e) => {
                // Tried again at the next poll.
                self.done = done;
                Err(e)
            }
        }
    }

    /// Receives up to [`MAX_MESSAGES`] messages: keys of `bucket` that `in_scope`
    /// accepts, with the messages naming them. Messages with nothing for this watcher
    /// (the test event, other buckets, other prefixes) are done at once; those that
    /// cannot be read are set aside.
    pub async fn receive(
        &mut self,
        bucket: &str,
        in_scope: impl Fn(&str) -> bool,
    ) -> Result<Inbound, SourceError> {
        let mut inbound = Inbound::default();
        let mut wait = if self.waited { self.timing.wait } else { Duration::ZERO };
        self.waited = true;
        loop {
            let batch = match self.queue.receive(wait, self.timing.visibility).await {
                Ok(batch) => batch,
                // What came before is kept: those messages are held already.
                Err(e) if inbound.received > 0 => {
                    tracing::debug!(error = %e, "A further receive failed; going on with the messages received.");
                    break;
                }
                Err(e) => return Err(e),
            };
            // Only the first receive waits; the rest take what is there.
            wait = Duration::ZERO;
            let got = batch.len();
            inbound.received += got;
            {
                let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                for message in &batch {
                    in_flight.insert(message.id.clone(), message.receipt.clone());
                }
            }
            for message in batch {
                let held = Held { id: message.id.clone(), receipt: message.receipt.clone() };
                match notice::parse(&message.body, self.format) {
                    Ok(Message::Test) => self.done.push(held),
                    Ok(Message::Notices(notices)) => {
                        let index = inbound.messages.len();
                        let mut named = false;
                        for n in notices {
                            if n.bucket != bucket || !in_scope(&n.key) {
                                continue;
                            }
                            if n.action == Action::Removed {
                                inbound.removals += 1;
                            }
                            let list = inbound.keys.entry(n.key).or_default();
                            if !list.contains(&index) {
                                list.push(index);
                            }
                            named = true;
                        }
                        if named {
                            inbound.messages.push(held);
                        } else {
                            self.done.push(held);
                        }
                    }
                    Err(reason) => self.set_aside(&message.id, &message.receipt, &reason).await,
                }
            }
            if got < MAX_PER_REQUEST || inbound.received >= MAX_MESSAGES {
                break;
            }
        }
        Ok(inbound)
    }

    /// Makes a message that cannot be read invisible for as long as SQS allows, counts
    /// it, and logs it once.
    async fn set_aside(&mut self, id: &str, receipt: &str, reason: &str) {
        self.set_aside_count += 1;
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        if self.set_aside.len() >= MAX_LOGGED {
            // Bounded: a queue full of foreign messages logs them again, never grows this.
            self.set_aside.clear();
        }
        if self.set_aside.insert(id.to_string()) {
            tracing::warn!(
                queue = %self.queue.shown(),
                message_id = %id,
                reason = %reason,
                "Setting aside a queue message that is not an S3 event notification; it stays in the queue, invisible for 12 hours (the queue's redrive policy may move it to a dead-letter queue)."
            );
        }
        if let Err(e) = self.queue.extend(&[receipt.to_string()], SET_ASIDE).await {
            tracing::debug!(message_id = %id, error = %e, "Could not set the message aside; it comes back.");
        }
    }

    /// Hands the messages of a poll to its batches: `waits_for[m]` is the batch message
    /// `m`'s events are in (the last one, when in several), None when it has nothing to
    /// announce (done at once).
    pub fn hand_out(&mut self, messages: Vec<Held>, waits_for: &[Option<usize>], batches: usize) {
        self.awaiting = (0..batches).map(|_| Vec::new()).collect();
        for (held, batch) in
            messages.into_iter().zip(waits_for.iter().copied().chain(std::iter::repeat(None)))
        {
            match batch {
                Some(b) if b < batches => self.awaiting[b].push(held),
                _ => self.done.push(held),
            }
        }
        if batches > 0 {
            self.start_extender();
        }
    }

    /// The oldest batch handed out was committed (or set aside): its messages are done.
    pub fn committed(&mut self) {
        if let Some(messages) = self.awaiting.pop_front() {
            self.done.extend(messages);
        }
    }

    /// Messages received by a poll that failed before handing them out: no longer kept
    /// invisible, so they come back once their visibility ends.
    pub fn release(&mut self, messages: &[Held]) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for held in messages {
            in_flight.remove(&held.id);
        }
    }

    /// The state was restored from the store: batches handed out are dropped, and their
    /// messages come back by themselves once their visibility ends.
    pub fn forget(&mut self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        for held in self.awaiting.drain(..).flatten() {
            in_flight.remove(&held.id);
        }
    }

    /// Starts the task that keeps messages not yet deleted invisible, once.
    fn start_extender(&mut self) {
        if self.extender.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let queue = self.queue.clone();
        let in_flight = Arc::clone(&self.in_flight);
        let visibility = self.timing.visibility;
        // A third of the timeout: two chances before a message would show again.
        let every = (visibility / 3).max(Duration::from_millis(300));
        self.extender = Some(runtime.spawn(async move {
            let mut round: u64 = 0;
            loop {
                tokio::time::sleep(every).await;
                round += 1;
                let receipts: Vec<String> =
                    in_flight.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
                if receipts.is_empty() {
                    continue;
                }
                match queue.extend(&receipts, visibility).await {
                    Ok(()) => tracing::debug!(
                        extended = receipts.len(),
                        round,
                        "Extended the visibility of messages in flight."
                    ),
                    Err(e) => tracing::warn!(error = %e, "Could not extend the visibility of messages in flight; they may be received again (with the same ids)."),
                }
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::HttpUrl;

    fn inbox() -> Inbox {
        let shared =
            aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
        let url = HttpUrl::parse("http://127.0.0.1:9/123456789012/q").unwrap();
        let timing = Timing { wait: Duration::from_secs(1), visibility: Duration::from_secs(2) };
        Inbox::new(Queue::new(&shared, &url), Format::Auto, timing)
    }

    fn held(id: &str) -> Held {
        Held { id: id.into(), receipt: format!("receipt-{id}") }
    }

    fn done(inbox: &Inbox) -> Vec<&str> {
        inbox.done.iter().map(|h| h.id.as_str()).collect()
    }

    #[test]
    fn a_message_is_done_only_when_the_batch_holding_its_events_is_committed() {
        let mut inbox = inbox();
        inbox.hand_out(vec![held("a"), held("b"), held("c")], &[Some(0), Some(1), None], 2);
        assert_eq!(done(&inbox), ["c"], "nothing to announce: done at once");
        inbox.committed();
        assert_eq!(done(&inbox), ["c", "a"]);
        inbox.committed();
        assert_eq!(done(&inbox), ["c", "a", "b"]);
        inbox.committed();
        assert_eq!(done(&inbox).len(), 3, "a commit of another poll's batch changes nothing");
    }

    #[test]
    fn a_restore_lets_the_messages_of_dropped_batches_come_back() {
        let mut inbox = inbox();
        inbox.in_flight.lock().unwrap().insert("a".into(), "receipt-a".into());
        inbox.hand_out(vec![held("a")], &[Some(0)], 1);
        inbox.forget();
        inbox.committed();
        assert!(done(&inbox).is_empty(), "not deleted: it comes back and is judged again");
        assert!(inbox.in_flight.lock().unwrap().is_empty(), "no longer kept invisible");
        assert!(!inbox.waits(), "the first receive of a process does not wait");
    }
}
