//! The `s3` source: new, changed and deleted objects under an S3 prefix.
//!
//! Listings are streamed page by page (ListObjectsV2, keys URL-encoded by the server and
//! decoded here, so that no key is mangled on its way through XML) through a
//! [`scan::Scan`], which keeps at most one batch of candidates; the watermark and its
//! semantics are in [`scan`]. [`client`] builds the SDK client and classifies its errors.

pub mod client;
pub mod notice;
pub mod notified;
pub mod page;
pub mod queue;
pub mod scan;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use aws_sdk_s3::types::EncodingType;

use self::notified::{Held, Inbox, Timing};
use self::scan::{Candidate, Flow, Head, Listed, OrderNote, Planned, Rules, Scan, Seen, State};
use super::{Batch, ChangeSet, Found, Polled, Source, SourceError, SourceKind, SourceState};
use crate::event::{Change, Item, ItemKind, S3Object, S3Objects};
use crate::json::Json;
use crate::value::{Glob, HttpUrl, HumanDuration, Kind, Start};

/// Whether keys can be trusted to grow in byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrder {
    /// No assumption: every poll lists the whole prefix.
    #[default]
    Any,
    /// New keys sort after older ones (dates, ULIDs): polls list only past the newest
    /// key announced, and a full listing runs every `full_relist_every`.
    Lexicographic,
}

/// How found objects become events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// One event per object.
    #[default]
    Object,
    /// One event per poll and kind of change, listing its objects.
    Batch,
}

/// `source: {type: s3}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket to watch.
    pub bucket: String,
    /// Only keys that start with this (`landing/orders/`); empty watches the whole
    /// bucket. A prefix is a string, not a directory: `in` also matches `inbox/x`.
    #[serde(default)]
    pub prefix: String,
    /// Only keys whose part after `prefix` matches (`**/*.parquet`). `*` stays within
    /// one `/`-separated level; `**` crosses levels. Default: every key.
    #[serde(default)]
    pub glob: Option<Glob>,
    /// Objects smaller than this many bytes are not announced.
    #[serde(default)]
    pub min_size: u64,
    /// Also announce zero-byte keys ending in `/`, which consoles and some tools create
    /// as "folders". Off by default: they are not data.
    #[serde(default)]
    pub include_folder_markers: bool,
    /// The bucket's region. Default: from the AWS chain (`AWS_REGION`, the profile),
    /// else `us-east-1`.
    #[serde(default)]
    pub region: Option<String>,
    /// An S3-compatible server (MinIO, Ceph, R2, Garage, SeaweedFS):
    /// `http://127.0.0.1:9000`. Default: AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`; most
    /// S3-compatible servers need it.
    #[serde(default)]
    pub force_path_style: bool,
    /// `any` (default) or `lexicographic`: whether new keys sort after older ones.
    #[serde(default)]
    pub key_order: KeyOrder,
    /// How far behind the newest announced `LastModified` to keep looking for objects
    /// that show up late: a multipart upload's `LastModified` is the time it *started*.
    #[serde(default = "default_lookback")]
    pub lookback: HumanDuration,
    /// With `key_order: lexicographic` or `notifications`: time between full listings,
    /// which catch keys that arrived out of order or that no notification announced.
    /// Default 1h.
    #[serde(default)]
    pub full_relist_every: Option<HumanDuration>,
    /// Read S3 event notifications from an SQS queue (S3's own messages, SNS-wrapped or
    /// EventBridge events), so that objects are announced within a second of landing;
    /// the listing stays as the backstop, every `full_relist_every`.
    #[serde(default)]
    pub notifications: Option<NotificationsConfig>,
    /// Which changes become events: `created`, `updated` (the same key with a new
    /// ETag), `deleted`.
    #[serde(default = "default_events")]
    pub events: Vec<Change>,
    /// `object` (one event per object, default) or `batch` (one event per poll and
    /// change, listing the objects).
    #[serde(default)]
    pub emit: Emit,
    /// Most keys remembered (bounds the state's size and the source's memory).
    #[serde(default = "default_max_remembered")]
    pub max_remembered: usize,
    /// Most objects one listing hands over, in batches of the watcher's `batch_size`;
    /// the rest wait for the next listing. Bounds the memory of a poll.
    #[serde(default = "default_max_per_poll")]
    pub max_per_poll: usize,
}

/// `notifications:` of an `s3` source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The SQS queue the bucket's event notifications go to, as `aws sqs get-queue-url`
    /// prints it: `https://sqs.eu-west-1.amazonaws.com/123456789012/landing-events`. One
    /// queue per watcher: watchers sharing a queue would take each other's messages
    /// (fan out through an SNS topic to one queue each instead).
    pub queue_url: HttpUrl,
    /// The messages' shape: `auto` (default: told apart by their shape), `s3` (S3's
    /// own, or SNS with raw message delivery), `sns` (S3's wrapped by an SNS topic), or
    /// `eventbridge` (an EventBridge rule's S3 events).
    #[serde(default)]
    pub format: notice::Format,
    /// How long one receive waits for a message (SQS long polling, 1s to 20s): longer
    /// means fewer requests while the queue is idle, shorter a quicker shutdown.
    #[serde(default = "default_wait_time")]
    pub wait_time: HumanDuration,
    /// How long a received message stays invisible to other receivers (1s to 12h); it
    /// is extended while the batch holding its events waits for the sink, and it is how
    /// soon a message comes back after a crash.
    #[serde(default = "default_visibility_timeout")]
    pub visibility_timeout: HumanDuration,
}

fn default_wait_time() -> HumanDuration {
    HumanDuration(Duration::from_secs(20))
}

fn default_visibility_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_lookback() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}

fn default_full_relist_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_events() -> Vec<Change> {
    vec![Change::Created]
}

fn default_max_remembered() -> usize {
    100_000
}

fn default_max_per_poll() -> usize {
    100_000
}

/// The most either cap may be set to: what a 2-core box holds without trouble.
const MAX_CAP: usize = 1_000_000;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl S3Config {
    /// `s3://bucket/prefix`, as messages name the watched place.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn rules(&self) -> Rules {
        Rules {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            glob: self.glob.clone(),
            min_size: self.min_size,
            include_folder_markers: self.include_folder_markers,
            events: self.events.clone(),
            ordered: self.key_order == KeyOrder::Lexicographic,
            lookback_ms: millis(self.lookback.0),
            full_relist_every_ms: millis(self.full_relist_every.unwrap_or_else(default_full_relist_every).0),
            max_remembered: self.max_remembered,
            max_per_poll: self.max_per_poll,
            notified: self.notifications.is_some(),
        }
    }
}

impl Kind for S3Config {
    const TAG: &'static str = "s3";
}

impl SourceKind for S3Config {
    fn describe(&self) -> String {
        let mut notes = vec![self.glob.as_ref().map_or("every key".to_string(), |g| g.pattern.clone())];
        if self.key_order == KeyOrder::Lexicographic {
            notes.push("keys in order".into());
        }
        if let Some(url) = &self.endpoint_url {
            notes.push(format!("at {url}"));
        }
        if let Some(notifications) = &self.notifications {
            notes.push(format!("notified by {}", notifications.queue_url));
        }
        format!("s3 {} ({})", self.url(), notes.join(", "))
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.bucket.is_empty() {
            errors.push(("bucket".into(), "must not be empty".into()));
        } else if self.bucket.contains('/') || self.bucket.starts_with("s3:") {
            errors.push((
                "bucket".into(),
                "is a bucket name only; put the rest of the path in `prefix`".into(),
            ));
        }
        if self.prefix.starts_with('/') {
            errors.push(("prefix".into(), "S3 keys do not start with `/`; drop the leading slash".into()));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(("endpoint_url".into(), "must start with http:// or https://".into()));
        }
        if self.events.is_empty() {
            errors.push(("events".into(), "must name at least one of created, updated, deleted".into()));
        }
        for (key, value) in [("max_remembered", self.max_remembered), ("max_per_poll", self.max_per_poll)] {
            if value == 0 {
                errors.push((key.into(), "must be at least 1".into()));
            } else if value > MAX_CAP {
                errors.push((key.into(), format!("must be at most {MAX_CAP}")));
            }
        }
        match (self.key_order, self.full_relist_every) {
            (KeyOrder::Any, Some(_)) if self.notifications.is_none() => errors.push((
                "full_relist_every".into(),
                "only applies with `key_order: lexicographic` or `notifications` (in `any` order every \
                 poll lists in full)"
                    .into(),
            )),
            (_, Some(every)) if every.0 < Duration::from_secs(1) => {
                errors.push(("full_relist_every".into(), "must be at least 1s".into()));
            }
            _ => {}
        }
        if let Some(notifications) = &self.notifications {
            let url = notifications.queue_url.url();
            let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
            if segments.len() != 2 || segments.iter().any(|s| s.is_empty()) {
                errors.push((
                    "notifications.queue_url".into(),
                    "must be a queue URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/QUEUE`, as `aws sqs \
                     get-queue-url` prints it)"
                        .into(),
                ));
            } else if url.query().is_some() || url.fragment().is_some() {
                errors.push(("notifications.queue_url".into(), "must not carry a query or fragment".into()));
            }
            let wait = notifications.wait_time.0;
            if wait < Duration::from_secs(1) || wait > Duration::from_secs(20) {
                errors.push((
                    "notifications.wait_time".into(),
                    "must be from 1s to 20s (SQS long polling)".into(),
                ));
            }
            let visibility = notifications.visibility_timeout.0;
            if visibility < Duration::from_secs(1) || visibility > Duration::from_secs(12 * 3600) {
                errors.push(("notifications.visibility_timeout".into(), "must be from 1s to 12h".into()));
            }
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(S3Source::new(self.clone()))
    }

    fn item_kind(&self) -> ItemKind {
        match self.emit {
            Emit::Object => ItemKind::S3Object,
            Emit::Batch => ItemKind::S3Objects,
        }
    }

    fn check_start(&self, _start: &Start) -> Result<(), String> {
        // Every form: `now` and a time become a floor on `LastModified`.
        Ok(())
    }
}

/// The runtime `s3` source.
pub struct S3Source {
    config: S3Config,
    /// Shared with each poll's scan, which borrows it while the source lists.
    rules: Arc<Rules>,
    /// The committed state: head and remembered keys. Shared with a poll's scan (which
    /// only reads it); changed only by `restore` and `committed`.
    state: Arc<State>,
    /// When the cap's warning was last logged, to say it again only now and then.
    cap_warned: Option<Instant>,
    /// Built by the first poll or check.
    client: Option<client::Built>,
    /// Keys skipped since the last `take_skipped` (not decodable as UTF-8).
    skipped: u64,
    /// The scope change was logged (once per process).
    scope_logged: bool,
    /// The queue of `notifications` and the messages held, built with the client.
    inbox: Option<Inbox>,
    /// The last listing stopped at `max_per_poll`: with notifications, the next poll
    /// lists again instead of reading the queue.
    listing_more: bool,
    /// Objects scheduled listings found that no message had announced, since the last
    /// `take_unnotified`.
    unnotified: u64,
}

impl S3Source {
    /// Builds the source; nothing is touched until the first poll.
    pub fn new(config: S3Config) -> Self {
        let rules = std::sync::Arc::new(config.rules());
        S3Source {
            config,
            rules,
            state: Arc::default(),
            cap_warned: None,
            client: None,
            skipped: 0,
            scope_logged: false,
            inbox: None,
            listing_more: false,
            unnotified: 0,
        }
    }

    async fn client(&mut self) -> Result<(aws_sdk_s3::Client, client::ServerClock), SourceError> {
        if self.client.is_none() {
            let built = client::build(&self.config).await?;
            if built.region_from == "assumed" {
                tracing::info!(
                    bucket = %self.config.bucket,
                    region = %built.region,
                    region_from = built.region_from,
                    "No region in the config, AWS_REGION or the profile; assuming {}.",
                    built.region
                );
            } else {
                tracing::debug!(region = %built.region, region_from = built.region_from, "S3 client built.");
            }
            if let Some(n) = &self.config.notifications {
                let queue = queue::Queue::new(&built.shared, &n.queue_url);
                let timing = Timing { wait: n.wait_time.0, visibility: n.visibility_timeout.0 };
                self.inbox = Some(Inbox::new(queue, n.format, timing));
            }
            self.client = Some(built);
        }
        let built = self.client.as_ref().expect("built above");
        Ok((built.client.clone(), built.clock.clone()))
    }

    /// Lists from where the scan says, offering every object to it, until the listing
    /// ends, the scan has enough, or it asks to start again. The next page is asked for
    /// as soon as a page arrives, so that the server works on it while this one is
    /// judged.
    async fn list(
        &mut self,
        client: &aws_sdk_s3::Client,
        scan: &mut Scan<'_>,
        stats: &mut ListStats,
    ) -> Result<Listing, SourceError> {
        let url = self.config.url();
        let bucket = self.config.bucket.clone();
        let start_after = scan.start_after().map(str::to_string);
        let prefix = self.config.prefix.clone();
        let page_request = |token: Option<String>| {
            let mut request = client
                .list_objects_v2()
                .bucket(&bucket)
                .encoding_type(EncodingType::Url)
                .set_continuation_token(token);
            if !prefix.is_empty() {
                request = request.prefix(&prefix);
            }
            if let Some(after) = &start_after {
                request = request.start_after(after);
            }
            tokio::spawn(request.send())
        };
        let mut next = Some(page_request(None));
        // Dropping a task does not stop it: a listing that ends early aborts the request
        // it no longer needs.
        let abort = |next: Option<tokio::task::JoinHandle<_>>| {
            if let Some(task) = next {
                task.abort();
            }
        };
        while let Some(task) = next.take() {
            let page = task
                .await
                .map_err(|e| SourceError::transient(format!("listing {url}: the request task failed: {e}")))?
                .map_err(|e| client::classify(&e, &bucket, &format!("listing {url}")))?;
            stats.requests += 1;
            let more = page.is_truncated() == Some(true);
            let token = page.next_continuation_token().map(str::to_string);
            if more && token.is_none() {
                return Err(SourceError::transient(format!(
                    "listing {url}: the server said the listing goes on but gave no continuation token"
                )));
            }
            if more {
                next = Some(page_request(token));
            }
            // A server that ignores `encoding-type` says so by not echoing it; its keys
            // are then taken as they are.
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for object in page.contents() {
                let Some(object) = self.listed(object, encoded) else { continue };
                stats.listed += 1;
                match scan.offer(object) {
                    Flow::Continue => {}
                    Flow::Stop => {
                        abort(next);
                        return Ok(Listing::Stopped);
                    }
                    Flow::Restart { previous, key } => {
                        abort(next);
                        return Ok(Listing::Restart { previous, key });
                    }
                }
            }
        }
        Ok(Listing::Complete)
    }

    /// Converts one listed object; None for an entry without a key or with one that does
    /// not decode (counted and logged: it cannot be named in an event).
    fn listed(&mut self, object: &aws_sdk_s3::types::Object, encoded: bool) -> Option<Listed> {
        let raw = object.key()?;
        let key = if encoded {
            match decode_key(raw) {
                Some(key) => key,
                None => {
                    self.skipped += 1;
                    tracing::warn!(
                        bucket = %self.config.bucket,
                        encoded_key = raw,
                        "Skipping a listed key that is not URL-encoded UTF-8."
                    );
                    return None;
                }
            }
        } else {
            raw.to_string()
        };
        Some(Listed {
            key,
            // An object listed without a time sorts first: announced on a first poll, and
            // outside the window after that.
            last_modified_ms: object.last_modified().and_then(|t| t.to_millis().ok()).unwrap_or(0),
            etag: object.e_tag().unwrap_or("").trim_matches('"').to_string(),
            size: object.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
            storage_class: object.storage_class().map(|c| c.as_str().to_string()),
        })
    }

    fn object(&self, c: Candidate) -> S3Object {
        S3Object {
            bucket: self.config.bucket.clone(),
            key: c.key,
            size: c.size,
            etag: c.etag,
            last_modified: DateTime::<Utc>::from_timestamp_millis(c.time_ms).unwrap_or_default(),
            // ListObjectsV2 lists current versions without their ids.
            version_id: None,
            storage_class: c.storage_class,
        }
    }

    /// The event id's input for one object: bucket, key, ETag, `LastModified` (and
    /// version id). `LastModified` tells generations apart: the same content written
    /// again, or deleted and re-created, is a new object with a new id, while a repeat of
    /// the same listing entry keeps its id. A delete is told from the creation.
    fn identity(object: &S3Object, change: Change) -> Vec<String> {
        let mut parts = vec![
            object.bucket.clone(),
            object.key.clone(),
            object.etag.clone(),
            object.last_modified.timestamp_millis().to_string(),
        ];
        if let Some(version) = &object.version_id {
            parts.push(version.clone());
        }
        if change == Change::Deleted {
            parts.push("deleted".into());
        }
        parts
    }

    fn found(&self, items: Vec<Candidate>) -> Vec<Found> {
        match self.config.emit {
            Emit::Object => items
                .into_iter()
                .map(|c| {
                    let change = c.change;
                    let object = self.object(c);
                    Found { change, identity: Self::identity(&object, change), item: Item::S3Object(object) }
                })
                .collect(),
            Emit::Batch => {
                let mut found = Vec::new();
                for change in [Change::Created, Change::Updated, Change::Deleted] {
                    let objects: Vec<S3Object> =
                        items.iter().filter(|c| c.change == change).map(|c| self.object(c.clone())).collect();
                    if objects.is_empty() {
                        continue;
                    }
                    let mut identity = vec!["batch".to_string(), change.as_str().to_string()];
                    for object in &objects {
                        identity.extend(Self::identity(object, change));
                    }
                    found.push(Found {
                        change,
                        identity,
                        item: Item::S3Objects(S3Objects { bucket: self.config.bucket.clone(), objects }),
                    });
                }
                found
            }
        }
    }
}

/// How far a listing got.
enum Listing {
    /// To its end.
    Complete,
    /// The scan had enough.
    Stopped,
    /// The scan met keys out of byte order and must start again.
    Restart { previous: String, key: String },
}

/// Requests and objects of one poll, for the debug log.
#[derive(Default)]
struct ListStats {
    requests: u64,
    listed: u64,
}

/// Decodes a key the server URL-encoded (`encoding-type=url`): `%XX` escapes, and `+`
/// for a space as AWS and the servers that follow it write it (a `+` itself comes as
/// `%2B`). None when the result is not UTF-8 or an escape is malformed.
fn decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// How often the cap's warning may repeat while it keeps biting.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(600);

fn encode(value: &impl serde::Serialize) -> Result<Json, SourceError> {
    Json::encode(value).map_err(|e| SourceError::transient(format!("cannot encode the state: {e}")))
}

fn unreadable(what: &str, error: impl std::fmt::Display) -> SourceError {
    SourceError::unreadable_state(S3Config::TAG, what, error)
}

/// The short form of a state: when the newest announced object was modified, how many
/// keys are remembered, the ordered cursor, and a server seen out of byte order.
fn summary_of(head: &Head, remembered: u64) -> serde_json::Value {
    let mut summary = serde_json::json!({
        "last_modified": DateTime::<Utc>::from_timestamp_millis(head.high_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "remembered": remembered,
    });
    if let Some(after) = &head.after {
        summary["after"] = after.clone().into();
    }
    if head.unordered {
        // The status operators read (`state list`, each event): this server's listings
        // cannot be resumed by key.
        summary["listing"] = "unordered".into();
    }
    summary
}

/// The first head of `start: now` or `start: <time>` at `at_ms`: objects modified before
/// the second it falls in are not announced (servers stamp whole seconds, so an object
/// written in that second after the start is not hidden).
fn start_head(at_ms: i64, rules: &Rules) -> Head {
    let floor = at_ms.div_euclid(1000) * 1000 - 1;
    Head { high_ms: floor, floor_ms: Some(floor), scope: Some(rules.scope()), ..Head::default() }
}

impl S3Source {
    /// Says that the cap made the window give up keys: once, then at most every
    /// [`CAP_WARNING_EVERY`] while it keeps biting.
    fn warn_capped(&mut self, (capped, floor): (usize, Option<i64>)) {
        if capped == 0 || self.cap_warned.is_some_and(|at| at.elapsed() < CAP_WARNING_EVERY) {
            return;
        }
        self.cap_warned = Some(Instant::now());
        let floor = floor.and_then(DateTime::<Utc>::from_timestamp_millis).map(|f| f.to_rfc3339());
        tracing::warn!(
            bucket = %self.config.bucket,
            forgotten = capped,
            max_remembered = self.config.max_remembered,
            floor = floor.as_deref().unwrap_or("-"),
            "max_remembered forces the look-back window to shrink: objects modified at or before the floor are no longer looked at; raise max_remembered or shorten lookback."
        );
    }

    /// A planned batch as the loop takes it: events, and the change set of its commit.
    fn batch(&self, planned: Planned) -> Result<Batch, SourceError> {
        // In key order already: collected, the map is built in one pass, not searched
        // once per member.
        let put =
            planned.put.into_iter().map(|(key, seen)| Ok((key, encode(&seen)?))).collect::<Result<_, _>>()?;
        let change = ChangeSet { head: Some(encode(&planned.head)?), put, remove: planned.remove };
        Ok(Batch { items: self.found(planned.items), change })
    }

    /// One listing: from the scan's start to the end of the prefix (or until the scan has
    /// enough), planned into batches of `limit`.
    async fn list_once(&mut self, limit: usize) -> Result<Polled, SourceError> {
        let (client, clock) = self.client().await?;
        let url = self.config.url();
        let rules = Arc::clone(&self.rules);
        let state = Arc::clone(&self.state);
        // A listing on the schedule (not a first one, nor one going on with a backlog).
        let scheduled = state.stored && !self.listing_more;
        let mut scan = Scan::new(&rules, &state, Utc::now().timestamp_millis());
        if let Some(change) = scan.scope_change()
            && !self.scope_logged
        {
            self.scope_logged = true;
            tracing::info!(
                from_bucket = %change.from.bucket,
                from_prefix = %change.from.prefix,
                from_glob = change.from.glob.as_deref().unwrap_or(""),
                forgotten = change.forgotten,
                "The watcher's bucket, prefix or glob changed: remembered keys outside it are forgotten, \
                 and objects it brings in are announced if inside the look-back window."
            );
        }
        clock.reset();
        let mut stats = ListStats::default();
        let complete = loop {
            match self.list(&client, &mut scan, &mut stats).await? {
                Listing::Complete => break true,
                Listing::Stopped => break false,
                Listing::Restart { previous, key } => {
                    tracing::debug!(
                        previous,
                        key,
                        "Listing out of byte order; listing again without relying on it."
                    );
                    scan = scan.restart();
                }
            }
        };
        let full = scan.is_full();
        let now = Utc::now().timestamp_millis();
        let outcome = scan.finish(complete, limit, now, clock.last().unwrap_or(now));
        match &outcome.order {
            OrderNote::Broken { previous, key } => tracing::warn!(
                bucket = %self.config.bucket,
                previous = %previous,
                key = %key,
                listing_order = "unordered",
                "The server lists keys out of UTF-8 byte order; `key_order: lexicographic` lists in full \
                 on every poll."
            ),
            OrderNote::Restored => tracing::info!(
                bucket = %self.config.bucket,
                listing_order = "byte",
                "The server listed every key in UTF-8 byte order again."
            ),
            OrderNote::Same => {}
        }
        self.report(&outcome.future, outcome.capped);
        let found: usize = outcome.batches.iter().map(|b| b.items.len()).sum();
        tracing::debug!(
            requests = stats.requests,
            listed = stats.listed,
            full,
            found,
            batches = outcome.batches.len(),
            more = outcome.more,
            "Listed {url}."
        );
        if self.inbox.is_some() && scheduled && found > 0 {
            // With notifications on, an object a listing finds first is one the queue
            // did not announce (lost, filtered, delayed, or not yet received).
            self.unnotified += found as u64;
            tracing::warn!(
                bucket = %self.config.bucket,
                unnotified = found,
                "The scheduled listing found objects that no notification announced; check the bucket's notification configuration and the queue."
            );
        }
        let more = outcome.more;
        self.listing_more = more;
        let batches = outcome.batches.into_iter().map(|p| self.batch(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Polled { batches, more })
    }

    /// With notifications: a listing runs instead of reading the queue on the first
    /// poll, to go on with a backlog, after a change of scope, and every
    /// `full_relist_every` (the backstop for what the queue lost).
    fn listing_due(&self, now_ms: i64) -> bool {
        let state = &self.state;
        !state.stored
            || self.listing_more
            || state.head.scope.as_ref() != Some(&self.rules.scope())
            || state
                .head
                .full_at_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= self.rules.full_relist_every_ms)
    }

    /// A poll of the queue: the keys its messages name, looked up and judged against
    /// the remembered keys as a listing would judge them, in batches of `limit`.
    async fn notified(&mut self, limit: usize) -> Result<Polled, SourceError> {
        let (client, clock) = self.client().await?;
        let rules = Arc::clone(&self.rules);
        let bucket = self.config.bucket.clone();
        let inbox = self.inbox.as_mut().expect("built with the client");
        let inbound = inbox.receive(&bucket, |key| rules.in_scope(key)).await?;
        let waits = inbox.waits();
        if inbound.keys.is_empty() {
            tracing::debug!(received = inbound.received, keys = 0, "Read {}.", inbox.queue().shown());
            inbox.hand_out(inbound.messages, &[], 0);
            self.flush().await;
            // After a receive that waited, the next one may follow at once: the wait is
            // in the queue.
            return Ok(Polled { batches: Vec::new(), more: waits || inbound.received > 0 });
        }
        clock.reset();
        let (objects, requests) = match self.look_up(&client, inbound.keys.keys()).await {
            Ok(found) => found,
            Err(e) => {
                if let Some(inbox) = self.inbox.as_mut() {
                    inbox.release(&inbound.messages);
                }
                return Err(e);
            }
        };
        let state = Arc::clone(&self.state);
        let mut candidates = Vec::new();
        for key in inbound.keys.keys() {
            let remembered = state.window.get(key);
            let (change, object) = match (objects.get(key), remembered) {
                (Some(object), _) if !rules.wanted(object) => continue,
                // The same object as announced (a message for it came back, or the
                // listing saw it first).
                (Some(object), Some((time, etag, _)))
                    if *etag == object.etag && *time == object.last_modified_ms =>
                {
                    continue;
                }
                (Some(object), Some(_)) => (Change::Updated, object.clone()),
                (Some(object), None) => (Change::Created, object.clone()),
                (None, Some((time, etag, size))) => (
                    Change::Deleted,
                    Listed {
                        key: key.clone(),
                        last_modified_ms: *time,
                        etag: etag.clone(),
                        size: *size,
                        storage_class: None,
                    },
                ),
                (None, None) => continue,
            };
            if !rules.events.contains(&change) {
                continue;
            }
            candidates.push(Candidate::listed(object, change));
        }
        candidates.sort();
        let now = Utc::now().timestamp_millis();
        let cuts =
            scan::cut(&rules, &state, candidates, usize::MAX, &[], limit, clock.last().unwrap_or(now), false);
        self.report(&cuts.future, cuts.capped);
        let base = state.stored_head();
        let mut waits_for: Vec<Option<usize>> = vec![None; inbound.messages.len()];
        let mut batches = Vec::with_capacity(cuts.cuts.len());
        for (n, cut) in cuts.cuts.into_iter().enumerate() {
            for item in &cut.items {
                for &m in inbound.keys.get(&item.key).map(Vec::as_slice).unwrap_or_default() {
                    waits_for[m] = Some(n);
                }
            }
            let head = Head { high_ms: cut.high_ms, floor_ms: cut.floor_ms, ..base.clone() };
            match self.batch(Planned { items: cut.items, head, put: cut.put, remove: cut.remove }) {
                Ok(batch) => batches.push(batch),
                Err(e) => {
                    if let Some(inbox) = self.inbox.as_mut() {
                        inbox.release(&inbound.messages);
                    }
                    return Err(e);
                }
            }
        }
        let found: usize = batches.iter().map(|b| b.items.len()).sum();
        tracing::debug!(
            received = inbound.received,
            keys = inbound.keys.len(),
            removals = inbound.removals,
            requests,
            found,
            batches = batches.len(),
            "Read {}.",
            self.inbox.as_ref().map_or("", |i| i.queue().shown())
        );
        let held: Vec<Held> = inbound.messages;
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.hand_out(held, &waits_for, batches.len());
        }
        self.flush().await;
        Ok(Polled { batches, more: true })
    }

    /// Deletes the messages that are done; a failure is said and tried again later.
    async fn flush(&mut self) {
        if let Some(inbox) = self.inbox.as_mut()
            && let Err(e) = inbox.flush().await
        {
            tracing::warn!(error = %e, "Could not delete handled messages from the queue; trying again at the next poll.");
        }
    }

    /// What the bucket holds now under each of `keys` (sorted): a ListObjectsV2 from just
    /// below the next key not yet resolved, so that keys lying close together share a
    /// request. Returns the objects found and the requests made.
    async fn look_up(
        &mut self,
        client: &aws_sdk_s3::Client,
        keys: impl Iterator<Item = &String>,
    ) -> Result<(std::collections::HashMap<String, Listed>, u64), SourceError> {
        let keys: Vec<String> = keys.cloned().collect();
        let bucket = self.config.bucket.clone();
        let url = self.config.url();
        let mut found = std::collections::HashMap::new();
        let mut requests = 0;
        let mut next = 0;
        let mut listed_to: Option<String> = None;
        while next < keys.len() {
            // Just below the key: the key without its last character (every key between
            // the two is one this watcher skips).
            let key = &keys[next];
            let mut below = key.clone();
            below.pop();
            let start_after = match &listed_to {
                Some(done) if *done > below => done.clone(),
                _ => below,
            };
            let max_keys = i32::try_from((2 * (keys.len() - next)).clamp(10, 1000)).unwrap_or(1000);
            let mut request = client
                .list_objects_v2()
                .bucket(&bucket)
                .encoding_type(EncodingType::Url)
                .max_keys(max_keys)
                .start_after(start_after);
            if !self.config.prefix.is_empty() {
                request = request.prefix(&self.config.prefix);
            }
            let page = request
                .send()
                .await
                .map_err(|e| client::classify(&e, &bucket, &format!("looking up keys in {url}")))?;
            requests += 1;
            let encoded = page.encoding_type() == Some(&EncodingType::Url);
            for object in page.contents() {
                let Some(object) = self.listed(object, encoded) else { continue };
                while next < keys.len() && keys[next] < object.key {
                    next += 1; // not there
                }
                if next < keys.len() && keys[next] == object.key {
                    next += 1;
                    listed_to = Some(object.key.clone());
                    found.insert(object.key.clone(), object);
                } else {
                    listed_to = Some(object.key);
                }
            }
            if page.is_truncated() != Some(true) {
                break; // every key left lies past the end
            }
        }
        Ok((found, requests))
    }

    /// Logs objects stamped in the future and the cap biting.
    fn report(&mut self, future: &[(String, i64)], capped: (usize, Option<i64>)) {
        for (key, time_ms) in future {
            tracing::warn!(
                bucket = %self.config.bucket,
                key = %key,
                last_modified = %DateTime::<Utc>::from_timestamp_millis(*time_ms).unwrap_or_default().to_rfc3339(),
                "Object's LastModified is ahead of the server's clock; announced, the watermark stays at the present."
            );
        }
        self.warn_capped(capped);
    }
}

#[async_trait]
impl Source for S3Source {
    fn kind(&self) -> &'static str {
        S3Config::TAG
    }

    fn restore(&mut self, state: SourceState) -> Result<(), SourceError> {
        let head: Option<Head> = state
            .head
            .as_ref()
            .map(|h| h.decode_owned())
            .transpose()
            .map_err(|e| unreadable("watermark", e))?;
        let mut members = Vec::with_capacity(state.members.len());
        for (key, value) in &state.members {
            let seen: Seen = value.decode_owned().map_err(|e| unreadable(&format!("member {key:?}"), e))?;
            members.push((key.clone(), seen));
        }
        self.state = Arc::new(State::restore(head, members));
        self.listing_more = false;
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.forget();
        }
        Ok(())
    }

    async fn begin(&mut self, start: &Start) -> Result<ChangeSet, SourceError> {
        let at = match start {
            Start::Beginning => return Ok(ChangeSet::default()),
            // This machine's clock: the server's is known only after a request, and a
            // start a second early announces a little more, never less.
            Start::Now => Utc::now().timestamp_millis(),
            Start::At(at) => at.timestamp_millis(),
        };
        Ok(ChangeSet::head(encode(&start_head(at, &self.rules))?))
    }

    async fn poll(&mut self, limit: usize) -> Result<Polled, SourceError> {
        if self.config.notifications.is_none() {
            return self.list_once(limit).await;
        }
        self.client().await?;
        self.flush().await;
        if self.listing_due(Utc::now().timestamp_millis()) {
            return self.list_once(limit).await;
        }
        self.notified(limit).await
    }

    fn committed(&mut self, change: &ChangeSet) -> Result<(), SourceError> {
        let head: Option<Head> = change
            .head
            .as_ref()
            .map(|h| h.decode_owned())
            .transpose()
            .map_err(|e| unreadable("watermark", e))?;
        let mut put = Vec::with_capacity(change.put.len());
        for (key, value) in &change.put {
            let seen: Seen = value.decode_owned().map_err(|e| unreadable(&format!("member {key:?}"), e))?;
            put.push((key.clone(), seen));
        }
        Arc::make_mut(&mut self.state).apply(head, &change.remove, put);
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.committed();
        }
        Ok(())
    }

    fn take_unnotified(&mut self) -> u64 {
        std::mem::take(&mut self.unnotified)
    }

    fn take_skipped(&mut self) -> u64 {
        let set_aside = self.inbox.as_mut().map_or(0, Inbox::take_set_aside);
        std::mem::take(&mut self.skipped) + set_aside
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        let (client, _) = self.client().await?;
        let bucket = self.config.bucket.clone();
        let url = self.config.url();
        // HeadBucket says whether the bucket exists and is ours to read; a listing of
        // the first page says whether the prefix may be listed, and whether the server
        // lists it in byte order.
        client
            .head_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| client::classify(&e, &bucket, &format!("checking {url}")))?;
        let mut request = client.list_objects_v2().bucket(&bucket).encoding_type(EncodingType::Url);
        if !self.config.prefix.is_empty() {
            request = request.prefix(&self.config.prefix);
        }
        let page =
            request.send().await.map_err(|e| client::classify(&e, &bucket, &format!("listing {url}")))?;
        let encoded = page.encoding_type() == Some(&EncodingType::Url);
        let mut previous: Option<String> = None;
        for object in page.contents() {
            let Some(object) = self.listed(object, encoded) else { continue };
            if let Some(previous) = previous.as_deref()
                && object.key.as_str() <= previous
            {
                tracing::warn!(
                    bucket = %bucket,
                    previous = %previous,
                    key = %object.key,
                    listing_order = "unordered",
                    "The server lists {url} out of UTF-8 byte order; deletes will be judged against the \
                     whole listing, and `key_order: lexicographic` will list in full on every poll."
                );
                break;
            }
            previous = Some(object.key);
        }
        // The queue: it exists, and these credentials may use it.
        if let Some(inbox) = &self.inbox {
            inbox.queue().check().await?;
        }
        Ok(())
    }

    fn summary(&self) -> serde_json::Value {
        if !self.state.stored {
            return serde_json::Value::Null;
        }
        summary_of(&self.state.stored_head(), self.state.window.len() as u64)
    }

    fn summarize(&self, head: &Json, remembered: u64) -> serde_json::Value {
        match head.decode_owned::<Head>() {
            Ok(head) => {
                let inline = head.seen.as_ref().map_or(0, |seen| seen.len() as u64);
                summary_of(&head, remembered + inline)
            }
            Err(_) => serde_json::Value::String(head.as_str().chars().take(60).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<S3Config, String> {
        serde_yaml::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse("bucket: b\n").unwrap();
        assert_eq!(c.prefix, "");
        assert_eq!(c.events, vec![Change::Created]);
        assert_eq!(c.key_order, KeyOrder::Any);
        assert_eq!(c.emit, Emit::Object);
        assert_eq!(c.lookback.0, Duration::from_secs(86400));
        assert!(c.validate().is_empty());
        assert_eq!(c.rules().full_relist_every_ms, 3_600_000);
    }

    #[test]
    fn notifications_are_checked() {
        let c = parse(
            "bucket: b\nnotifications:\n  queue_url: https://sqs.eu-west-1.amazonaws.com/123456789012/q\n  format: sns\nfull_relist_every: 10m\n",
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        let n = c.notifications.as_ref().unwrap();
        assert_eq!(n.format, notice::Format::Sns);
        assert!(c.describe().contains("notified by https://sqs.eu-west-1.amazonaws.com/123456789012/q"));
        assert_eq!(c.rules().full_relist_every_ms, 600_000);
        for bad in ["https://sqs.eu-west-1.amazonaws.com/q", "https://sqs.eu-west-1.amazonaws.com/1/q/x"] {
            let c = parse(&format!("bucket: b\nnotifications: {{queue_url: \"{bad}\"}}\n")).unwrap();
            let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
            assert_eq!(keys, ["notifications.queue_url"], "{bad}");
        }
        let c = parse("bucket: b\nnotifications: {queue_url: \"https://h/1/q?x=1\"}\n").unwrap();
        assert_eq!(c.validate()[0].1, "must not carry a query or fragment");
        assert!(parse("bucket: b\nnotifications: {queue_url: \"ftp://h/1/q\"}\n").is_err());
        assert!(parse("bucket: b\nnotifications: {queue_url: \"https://h/1/q\", format: xml}\n").is_err());
        assert!(parse("bucket: b\nnotifications: {queue: \"https://h/1/q\"}\n").is_err());
        // Without notifications, `any` order lists in full every poll: no schedule.
        let c = parse("bucket: b\nfull_relist_every: 10m\n").unwrap();
        assert_eq!(c.validate()[0].0, "full_relist_every");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(parse("bucket: b\nprefx: x\n").unwrap_err().contains("unknown field `prefx`"));
        assert!(parse("bucket: b\nkey_order: sorted\n").is_err());
        assert!(parse("bucket: b\nevents: [created, moved]\n").is_err());
        let c = parse(
            "bucket: s3://b/x\nprefix: /x\nendpoint_url: localhost:9000\nevents: []\nfull_relist_every: 5m\nmax_remembered: 0\n",
        )
        .unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["bucket", "prefix", "endpoint_url", "events", "max_remembered", "full_relist_every"]
        );
    }

    #[test]
    fn event_ids_follow_bucket_key_and_etag() {
        let source = S3Source::new(parse("bucket: b\nevents: [created, deleted]\n").unwrap());
        let candidate = |change| Candidate {
            time_ms: 1_700_000_000_000,
            key: "in/a b+c%.csv".into(),
            etag: "abc".into(),
            size: 3,
            storage_class: Some("STANDARD".into()),
            change,
        };
        let found = source.found(vec![candidate(Change::Created), candidate(Change::Deleted)]);
        assert_eq!(found[0].identity, ["b", "in/a b+c%.csv", "abc", "1700000000000"]);
        assert_ne!(found[0].identity, found[1].identity);
        let json = serde_json::to_value(&found[0].item).unwrap();
        assert_eq!(json["kind"], "s3_object");
        assert_eq!(json["last_modified"], "2023-11-14T22:13:20Z");
        assert!(json.get("version_id").is_none());
    }

    #[test]
    fn keys_are_decoded_as_servers_encode_them() {
        assert_eq!(decode_key("in/a+b%2Bc%25d.csv").as_deref(), Some("in/a b+c%d.csv"));
        assert_eq!(decode_key("in/ctl%01%1F%09.csv").as_deref(), Some("in/ctl\u{1}\u{1f}\t.csv"));
        assert_eq!(decode_key("in/%C3%A9%E6%97%A5.csv").as_deref(), Some("in/é日.csv"));
        assert_eq!(decode_key("in/~a_b-c.d/e"), Some("in/~a_b-c.d/e".into()));
        assert_eq!(decode_key("in/%ZZ"), None);
        assert_eq!(decode_key("in/%C3"), None, "not UTF-8");
        assert_eq!(decode_key("in/%4"), None);
    }

    #[test]
    fn summaries_are_short() {
        let source = S3Source::new(parse("bucket: b\n").unwrap());
        let head = Head { high_ms: 1_700_000_000_000, after: Some("in/9".into()), ..Head::default() };
        let summary = source.summarize(&Json::encode(&head).unwrap(), 1);
        assert_eq!(
            summary,
            serde_json::json!({"last_modified": "2023-11-14T22:13:20.000Z", "remembered": 1, "after": "in/9"})
        );
        let old = Json::parse(r#"{"high_ms": 1, "seen": {"in/1": [1, "e", 1]}, "unordered": true}"#).unwrap();
        let summary = source.summarize(&old, 0);
        assert_eq!(
            (summary["remembered"].as_u64(), summary["listing"].as_str()),
            (Some(1), Some("unordered"))
        );
        assert_eq!(source.summary(), serde_json::Value::Null, "nothing stored yet");
    }

    #[test]
    fn start_now_and_a_time_become_a_floor_below_their_second() {
        let rules = parse("bucket: b\nprefix: in/\n").unwrap().rules();
        let head = start_head(1_700_000_000_700, &rules);
        assert_eq!((head.high_ms, head.floor_ms), (1_699_999_999_999, Some(1_699_999_999_999)));
        assert_eq!(head.scope, Some(rules.scope()));
        let state = State::restore(Some(head), std::iter::empty());
        assert_eq!(state.window.horizon(rules.lookback_ms), 1_700_000_000_000);
    }

    #[test]
    fn batches_group_by_change() {
        let source = S3Source::new(parse("bucket: b\nemit: batch\nevents: [created, updated]\n").unwrap());
        let c = |key: &str, change| Candidate {
            time_ms: 0,
            key: key.into(),
            etag: "e".into(),
            size: 1,
            storage_class: None,
            change,
        };
        let found =
            source.found(vec![c("a", Change::Created), c("b", Change::Updated), c("c", Change::Created)]);
        assert_eq!(found.len(), 2);
        match &found[0].item {
            Item::S3Objects(batch) => assert_eq!(batch.objects.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(found[1].change, Change::Updated);
    }
}
