//! The one event shape every sink receives, and how event ids are derived.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What happened to the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The item was seen for the first time.
    Created,
    /// The item was seen before, with other content (new ETag, size or mtime).
    Updated,
    /// The item is gone.
    Deleted,
}

impl Change {
    /// The lower-case name used in event types and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Deleted => "deleted",
        }
    }
}

/// A file found by the `local_dir` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileItem {
    /// Path of the file, as configured (the watched directory joined with the relative path).
    pub path: String,
    /// Path relative to the watched directory, with `/` separators: what globs match.
    pub relative_path: String,
    /// Size in bytes when the file was seen.
    pub size: u64,
    /// Modification time when the file was seen.
    pub modified: DateTime<Utc>,
}

/// An object found by the `s3` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Object {
    /// The bucket it is in.
    pub bucket: String,
    /// Its full key (prefix included), exactly as S3 lists it.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag without its surrounding quotes: what tells one content of a key from
    /// another (for multipart uploads it is not an MD5 of the content).
    pub etag: String,
    /// `LastModified` as the server listed it.
    pub last_modified: DateTime<Utc>,
    /// The version id, when the listing gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The storage class, when the listing gives one (`STANDARD`, `GLACIER`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// Several objects in one event (`emit: batch`), all with the event's `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Objects {
    /// The bucket they are in.
    pub bucket: String,
    /// The objects, in the order they were found.
    pub objects: Vec<S3Object>,
}

/// A row found by the `postgres` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowItem {
    /// `schema.table`.
    pub table: String,
    /// The columns that identify the row (the primary key unless configured), with
    /// their values.
    pub key: serde_json::Map<String, serde_json::Value>,
    /// The cursor columns with their values: where the row sits in the table's order.
    pub cursor: serde_json::Map<String, serde_json::Value>,
    /// Key, cursor and the configured `columns`, each as faithful JSON (integers,
    /// numeric as a string, RFC 3339 timestamps, bytea as base64, arrays, json).
    pub columns: serde_json::Map<String, serde_json::Value>,
    /// Columns whose value (or an element of it) is Postgres' text form because it
    /// could not be decoded into JSON; absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub as_text: Vec<String>,
}

/// The rows of one poll, for `emit: batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsItem {
    /// `schema.table`.
    pub table: String,
    /// The rows, in delivery order.
    pub rows: Vec<RowItem>,
}

/// The thing an event is about. Tagged by `kind` so that a stored batch reads back
/// into the same variant it was written from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Item {
    /// A file in a local directory.
    File(FileItem),
    /// An object under an S3 prefix.
    S3Object(S3Object),
    /// Several objects under an S3 prefix, one event per poll and change (`emit: batch`).
    S3Objects(S3Objects),
    /// A table row.
    Row(RowItem),
    /// The rows of one poll of a table (`emit: batch`).
    Rows(RowsItem),
}

impl Item {
    /// The `kind` tag, as in the event's JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::File(_) => "file",
            Item::S3Object(_) => "s3_object",
            Item::S3Objects(_) => "s3_objects",
            Item::Row(_) => "row",
            Item::Rows(_) => "rows",
        }
    }
}

/// One event: the unit a sink delivers and a consumer deduplicates on.
///
/// This struct is the JSON every sink writes (README, "Event shape"); the outbox stores
/// it verbatim so that a redelivery is byte-for-byte the event first attempted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Deterministic id: the same item seen by the same watcher always gets the same id,
    /// so consumers can drop repeats.
    pub id: String,
    /// The watcher's namespace.
    pub namespace: String,
    /// The watcher's name.
    pub watcher: String,
    /// The source kind (`local_dir`, `s3`, `postgres`).
    pub source: String,
    /// What happened to the item.
    #[serde(rename = "type")]
    pub change: Change,
    /// The item itself.
    pub item: Item,
    /// The watermark this event was found past (the stored one when the poll started).
    pub watermark: serde_json::Value,
    /// When the event was built (not when it was delivered: redeliveries keep it).
    pub emitted_at: DateTime<Utc>,
}

/// Derives a stable event id from the watcher identity and the parts that identify the
/// item. Parts are length-prefixed so that `("ab","c")` and `("a","bc")` differ.
pub fn event_id(namespace: &str, watcher: &str, parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in [namespace, watcher].iter().chain(parts.iter()) {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    // 128 bits is plenty against accidental collisions and keeps ids short in logs.
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_id_is_stable_across_releases() {
        // Pinned: a change here breaks deduplication for every consumer.
        assert_eq!(
            event_id("demo", "inbox", &["a.csv", "12", "1700000000000000000"]),
            event_id("demo", "inbox", &["a.csv", "12", "1700000000000000000"])
        );
        assert_eq!(event_id("demo", "inbox", &["a.csv"]), "34ba8efe89d40d5a9754989b5da1f9a5");
    }

    #[test]
    fn item_kinds_match_their_json_tags() {
        let file = Item::File(FileItem {
            path: "p".into(),
            relative_path: "p".into(),
            size: 0,
            modified: DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default(),
        });
        assert_eq!(serde_json::to_value(&file).unwrap()["kind"], file.kind());
        let rows = Item::Rows(RowsItem { table: "t".into(), rows: Vec::new() });
        assert_eq!(serde_json::to_value(&rows).unwrap()["kind"], rows.kind());
    }

    #[test]
    fn event_id_parts_are_length_prefixed() {
        assert_ne!(event_id("ns", "w", &["ab", "c"]), event_id("ns", "w", &["a", "bc"]));
        assert_ne!(event_id("ns", "w", &["x"]), event_id("ns", "w2", &["x"]));
        assert_ne!(event_id("ns", "w", &["x"]), event_id("ns2", "w", &["x"]));
    }
}
