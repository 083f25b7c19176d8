//! Asset events as the sink posts them: what `extra` carries (one event, or one batch),
//! the POST itself, telling a refused POST from one whose outcome is unknown, and
//! looking an event up among the asset's recent events by highwater's id, so that an
//! event Airflow already has is not posted again.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use super::api::{Api, Failed, SendError};
use crate::event::{Change, Encoded};
use crate::sink::Delivery;

/// The keys of `extra` that carry highwater's id for one asset event.
pub(super) const EVENT_ID: &str = "event_id";
pub(super) const BATCH_ID: &str = "batch_id";

/// One asset event to post: highwater's id for it (an event id, or a batch id) and its
/// `extra`.
#[derive(Debug, Clone)]
pub(super) struct Unit {
    /// The id Airflow's copy carries in `extra` (`event_id`, or `batch_id`).
    pub(super) key: String,
    /// `event_id` or `batch_id`: which field of `extra` holds `key`.
    pub(super) field: &'static str,
    /// `extra` as JSON text: the items go in as their events hold them, exact.
    pub(super) extra: Box<RawValue>,
    pub(super) partition_key: Option<String>,
    /// When the first event it carries was built: no copy of it in Airflow is older.
    pub(super) emitted_at: DateTime<Utc>,
    /// How many highwater events it carries.
    pub(super) events: usize,
}

/// The item of an encoded event, as its text holds it.
pub(super) fn item_of(event: &Encoded) -> Result<&RawValue, Failed> {
    #[derive(Deserialize)]
    struct ItemOf<'a> {
        #[serde(borrow)]
        item: &'a RawValue,
    }
    serde_json::from_str::<ItemOf<'_>>(event.text())
        .map(|found| found.item)
        .map_err(|e| Delivery::permanent(format!("cannot read event {}: {e}", event.id)))
}

/// The `extra` of the asset event for one highwater event.
#[derive(Serialize)]
struct Extra<'a> {
    event_id: &'a str,
    namespace: &'a str,
    watcher: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    change: Change,
    item: &'a RawValue,
    emitted_at: DateTime<Utc>,
}

/// `extra` of the asset event for one highwater event.
pub(super) fn event_extra(event: &Encoded) -> Result<Box<RawValue>, Failed> {
    let extra = Extra {
        event_id: &event.id,
        namespace: &event.namespace,
        watcher: &event.watcher,
        source: &event.source,
        change: event.change,
        item: item_of(event)?,
        emitted_at: event.emitted_at,
    };
    serde_json::value::to_raw_value(&extra)
        .map_err(|e| Delivery::permanent(format!("cannot encode event {}: {e}", event.id)))
}

/// One event of a batch's asset event.
#[derive(Serialize)]
struct Listed<'a> {
    event_id: &'a str,
    #[serde(rename = "type")]
    change: Change,
    item: &'a RawValue,
}

/// `extra` of the one asset event for a whole batch (`emit: batch`).
#[derive(Serialize)]
struct BatchExtra<'a> {
    batch_id: &'a str,
    namespace: &'a str,
    watcher: &'a str,
    source: &'a str,
    emitted_at: DateTime<Utc>,
    events: Vec<Listed<'a>>,
}

/// `extra` of the one asset event for a whole batch (`emit: batch`): the batch's id (a
/// digest of its event ids, the same on every redelivery) and its events, each with
/// its id, type and item. `events` is not empty.
pub(super) fn batch_extra(events: &[Encoded], batch_id: &str) -> Result<Box<RawValue>, Failed> {
    let first = &events[0];
    let listed = events
        .iter()
        .map(|event| Ok(Listed { event_id: &event.id, change: event.change, item: item_of(event)? }))
        .collect::<Result<Vec<_>, Failed>>()?;
    let extra = BatchExtra {
        batch_id,
        namespace: &first.namespace,
        watcher: &first.watcher,
        source: &first.source,
        emitted_at: first.emitted_at,
        events: listed,
    };
    serde_json::value::to_raw_value(&extra)
        .map_err(|e| Delivery::permanent(format!("cannot encode batch {batch_id}: {e}")))
}

/// `extra` marked as a re-post that queues a DAG run (`"requeued": true` first), the
/// rest of its text as it was.
pub(super) fn requeued(extra: &RawValue) -> Box<RawValue> {
    let text = extra.get().trim_start();
    let rest = text.strip_prefix('{').unwrap_or(text).trim_start();
    let marked = if rest.starts_with('}') {
        format!("{{\"requeued\":true{rest}")
    } else {
        format!("{{\"requeued\":true,{rest}")
    };
    RawValue::from_string(marked).unwrap_or_else(|_| extra.to_owned())
}

/// An asset event Airflow has: its id there and Airflow's own timestamp for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(super) struct Posted {
    pub(super) id: i64,
    pub(super) timestamp: DateTime<Utc>,
}

/// Why a POST did not give a [`Posted`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PostError {
    /// Nothing was stored: report this.
    Failed(Failed),
    /// No usable answer after the request was sent (a 5xx, a timeout, a connection
    /// lost): Airflow may have stored the event.
    Unknown(Failed),
    /// Airflow answered 404: it has no asset with this id (any more).
    AssetGone,
}

impl From<SendError> for PostError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Failed(failed) => PostError::Failed(failed),
            SendError::Unknown(failed) => PostError::Unknown(failed),
        }
    }
}

/// Posts one asset event.
pub(super) async fn post(
    api: &mut Api,
    asset_id: i64,
    extra: &RawValue,
    partition_key: Option<&str>,
) -> Result<Posted, PostError> {
    /// The body of `POST /api/v2/assets/events`.
    #[derive(Serialize)]
    struct Body<'a> {
        asset_id: i64,
        extra: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        partition_key: Option<&'a str>,
    }
    let what = api.shown("/api/v2/assets/events");
    let url = api.url("/api/v2/assets/events");
    let body = Body { asset_id, extra, partition_key };
    let response = api.send_telling(&what, |client| client.post(url.clone()).json(&body)).await?;
    let status = response.status();
    if status.is_success() {
        return response.json::<Posted>().await.map_err(|e| {
            // Airflow stored it, most likely: say so, so that it is looked up first.
            PostError::Unknown(Delivery::retry(format!("{what} answered {status} without the event: {e}")))
        });
    }
    if status == StatusCode::NOT_FOUND {
        return Err(PostError::AssetGone);
    }
    let failed = api.failure(response, &what).await;
    if status.is_server_error() { Err(PostError::Unknown(failed)) } else { Err(PostError::Failed(failed)) }
}

/// Most pages of recent events read when looking an event up; past them the event is
/// taken as not there (and a warning says so).
const MAX_LOOKUP_PAGES: usize = 20;

/// Which of `keys` Airflow has in `extra[field]` of the asset's events stamped at or
/// after `since` (Airflow's clock), reading them newest first; with Airflow's copy of
/// each (the newest, when there are several).
pub(super) async fn find(
    api: &mut Api,
    asset_id: i64,
    field: &str,
    keys: &HashSet<&str>,
    since: DateTime<Utc>,
) -> Result<HashMap<String, Posted>, Failed> {
    const PAGE: usize = 100;
    let what = api.shown("/api/v2/assets/events");
    /// An asset event as listed: its id, timestamp and `extra` (of which only `field`
    /// is read).
    #[derive(Deserialize)]
    struct Found {
        id: i64,
        timestamp: DateTime<Utc>,
        #[serde(default)]
        extra: serde_json::Map<String, Value>,
    }
    #[derive(Deserialize)]
    struct Page {
        asset_events: Vec<Found>,
    }
    let mut found_keys = HashMap::new();
    for page in 0..MAX_LOOKUP_PAGES {
        let mut url = api.url("/api/v2/assets/events");
        url.query_pairs_mut()
            .append_pair("asset_id", &asset_id.to_string())
            .append_pair("timestamp_gte", &since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .append_pair("order_by", "-timestamp")
            .append_pair("limit", &PAGE.to_string())
            .append_pair("offset", &(page * PAGE).to_string());
        let Some(found) = api.get_json::<Page>(url, &what).await? else {
            return Err(Delivery::retry(format!("{what} answered HTTP 404 for asset id {asset_id}")));
        };
        let n = found.asset_events.len();
        for event in found.asset_events {
            if let Some(key) = event.extra.get(field).and_then(Value::as_str)
                && keys.contains(key)
                && !found_keys.contains_key(key)
            {
                found_keys.insert(key.to_string(), Posted { id: event.id, timestamp: event.timestamp });
            }
        }
        if n < PAGE || found_keys.len() == keys.len() {
            return Ok(found_keys);
        }
    }
    tracing::warn!(
        asset_id,
        "More recent asset events than the sink reads to look events up; posting the others."
    );
    Ok(found_keys)
}
