//! The one event shape every sink receives, how event ids are derived, and the event
//! as encoded once ([`Encoded`]): the bytes the outbox stores and every sink sends.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    #[serde(serialize_with = "rfc3339")]
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
    #[serde(serialize_with = "rfc3339")]
    pub last_modified: DateTime<Utc>,
    /// The version id, when the listing gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The storage class, when the listing gives one (`STANDARD`, `GLACIER`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// Writes `time` as chrono's `Serialize` does (RFC 3339 in UTC, `Z`, as many fraction
/// digits as it needs: none, 3, 6 or 9), byte for byte, but into a buffer of its own:
/// chrono's goes through `fmt` one character at a time, and an item's time was half the
/// cost of encoding an S3 event. Years outside 0000–9999 and leap seconds are left to
/// chrono.
fn rfc3339<S: serde::Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let (year, nano) = (time.year(), time.nanosecond());
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        return time.serialize(serializer);
    }
    // At most "9999-12-31T23:59:59.999999999Z": 30 bytes.
    let mut text = Digits { buffer: [0; 30], len: 0 };
    text.number(year as u32, 4);
    for (separator, value) in [
        (b'-', time.month()),
        (b'-', time.day()),
        (b'T', time.hour()),
        (b':', time.minute()),
        (b':', time.second()),
    ] {
        text.byte(separator);
        text.number(value, 2);
    }
    let (fraction, width) = match nano {
        0 => (0, 0),
        _ if nano % 1_000_000 == 0 => (nano / 1_000_000, 3),
        _ if nano % 1_000 == 0 => (nano / 1_000, 6),
        _ => (nano, 9),
    };
    if width > 0 {
        text.byte(b'.');
        text.number(fraction, width);
    }
    text.byte(b'Z');
    // Only ASCII digits and separators were written.
    let text = std::str::from_utf8(&text.buffer[..text.len]).map_err(serde::ser::Error::custom)?;
    serializer.serialize_str(text)
}

/// A time's text as [`rfc3339`] builds it.
struct Digits {
    buffer: [u8; 30],
    len: usize,
}

impl Digits {
    fn byte(&mut self, b: u8) {
        self.buffer[self.len] = b;
        self.len += 1;
    }

    /// `value` in `width` decimal digits, zero-padded.
    fn number(&mut self, value: u32, width: u32) {
        for i in (0..width).rev() {
            self.byte(b'0' + (value / 10u32.pow(i) % 10) as u8);
        }
    }
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

/// JSON text a source wrote once and the event carries as it is: nothing in it is
/// parsed or rounded on the way to the sink (a number in a Postgres `jsonb` keeps every
/// digit). Read back into an [`Event`] (tests; the loop never does) through a JSON
/// value, since a tagged item is buffered before its fields are read.
#[derive(Debug, Clone)]
pub struct RawJson(Box<RawValue>);

impl RawJson {
    /// Text the source encoded itself (so it is JSON).
    pub fn new(raw: Box<RawValue>) -> Self {
        RawJson(raw)
    }

    /// The text.
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for RawJson {
    /// Equal when the text is.
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        serde_json::value::to_raw_value(&value).map(RawJson).map_err(serde::de::Error::custom)
    }
}

/// A row found by the `postgres` source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowItem {
    /// `schema.table`.
    pub table: String,
    /// The columns that identify the row (the primary key unless configured), with
    /// their values: a JSON object.
    pub key: RawJson,
    /// The cursor columns with their values: where the row sits in the table's order.
    pub cursor: RawJson,
    /// Key, cursor and the configured `columns`, each as faithful JSON (integers,
    /// numeric as a string, RFC 3339 timestamps, bytea as base64, arrays, json and
    /// jsonb as the server wrote them).
    pub columns: RawJson,
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

/// The kinds of [`Item`], without their values: what a source's configuration says
/// its items will be, known before anything is polled (so that `check` can find a
/// template naming a field they never have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// [`Item::File`].
    File,
    /// [`Item::S3Object`].
    S3Object,
    /// [`Item::S3Objects`].
    S3Objects,
    /// [`Item::Row`].
    Row,
    /// [`Item::Rows`].
    Rows,
}

impl ItemKind {
    /// The top-level fields of such an item's JSON: `kind`, then the struct's own,
    /// read from the struct's `Deserialize` (so they cannot drift from it). Optional
    /// fields are among them: an item may have them.
    pub fn fields(self) -> Vec<&'static str> {
        let own = match self {
            ItemKind::File => struct_fields::<FileItem>(),
            ItemKind::S3Object => struct_fields::<S3Object>(),
            ItemKind::S3Objects => struct_fields::<S3Objects>(),
            ItemKind::Row => struct_fields::<RowItem>(),
            ItemKind::Rows => struct_fields::<RowsItem>(),
        };
        std::iter::once("kind").chain(own.iter().copied()).collect()
    }
}

/// The field names a derived `Deserialize` of a struct hands to its deserializer:
/// a deserializer that only records them, then stops.
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    // The error is the point: the deserializer stops once it has the names.
    let _ = T::deserialize(Fields(&mut fields));
    fields
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
/// This struct is the JSON every sink writes (docs/reference/events.md); the outbox stores
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

/// An event's parts, borrowed from where they live, to encode it without building an
/// [`Event`] first. Serializes exactly as [`Event`] does.
#[derive(Debug, Serialize)]
pub struct EventRef<'a> {
    /// See [`Event::id`].
    pub id: &'a str,
    /// See [`Event::namespace`].
    pub namespace: &'a str,
    /// See [`Event::watcher`].
    pub watcher: &'a str,
    /// See [`Event::source`].
    pub source: &'a str,
    /// See [`Event::change`].
    #[serde(rename = "type")]
    pub change: Change,
    /// See [`Event::item`].
    pub item: &'a Item,
    /// See [`Event::watermark`], already encoded (one summary serves a whole batch).
    pub watermark: &'a RawValue,
    /// See [`Event::emitted_at`], already encoded as [`Event`] writes it (one time
    /// serves a whole batch: formatting it for each event was a measurable share of
    /// encoding).
    #[serde(rename = "emitted_at")]
    pub emitted_at_json: &'a RawValue,
    /// The same time, kept in [`Encoded::emitted_at`]; not written again.
    #[serde(skip)]
    pub emitted_at: DateTime<Utc>,
}

/// An event encoded once: the JSON text the outbox stores and every sink sends as it
/// is (so a value read from a source stays exact all the way), and the few fields a sink
/// needs without reading the text. Built by the loop from an [`EventRef`], or read back
/// from a stored batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The event id.
    pub id: String,
    /// The watcher's namespace (shared by the events of a batch).
    pub namespace: Arc<str>,
    /// The watcher's name (shared by the events of a batch).
    pub watcher: Arc<str>,
    /// The source kind (shared by the events of a batch).
    pub source: Arc<str>,
    /// What happened to the item.
    pub change: Change,
    /// The item's `kind` tag.
    pub kind: Cow<'static, str>,
    /// When the event was built.
    pub emitted_at: DateTime<Utc>,
    /// The event, as [`Event`] serializes it.
    pub json: Box<RawValue>,
}

impl PartialEq for Encoded {
    /// Equal when the text is: every other field is read from it.
    fn eq(&self, other: &Self) -> bool {
        self.json.get() == other.json.get()
    }
}

/// The fields of an encoded event a sink needs, read back without building a tree.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    #[serde(borrow)]
    watcher: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(rename = "type")]
    change: Change,
    #[serde(borrow)]
    item: ItemHead<'a>,
    emitted_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct ItemHead<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

/// The kinds of [`Item`], to keep a kind read back without an allocation.
const KINDS: [&str; 5] = ["file", "s3_object", "s3_objects", "row", "rows"];

impl Encoded {
    /// Encodes an event; `namespace`, `watcher` and `source` are shared with the other
    /// events of its batch.
    pub fn encode(
        event: &EventRef<'_>,
        namespace: &Arc<str>,
        watcher: &Arc<str>,
        source: &Arc<str>,
    ) -> Result<Encoded, serde_json::Error> {
        Ok(Encoded {
            json: serde_json::value::to_raw_value(event)?,
            id: event.id.to_string(),
            namespace: Arc::clone(namespace),
            watcher: Arc::clone(watcher),
            source: Arc::clone(source),
            change: event.change,
            kind: Cow::Borrowed(event.item.kind()),
            emitted_at: event.emitted_at,
        })
    }

    /// Encodes a whole [`Event`] (tests and benchmarks; the loop encodes from parts).
    pub fn of(event: &Event) -> Result<Encoded, serde_json::Error> {
        Ok(Encoded {
            json: serde_json::value::to_raw_value(event)?,
            id: event.id.clone(),
            namespace: Arc::from(event.namespace.as_str()),
            watcher: Arc::from(event.watcher.as_str()),
            source: Arc::from(event.source.as_str()),
            change: event.change,
            kind: Cow::Borrowed(event.item.kind()),
            emitted_at: event.emitted_at,
        })
    }

    /// An event read back from its text (a stored batch): the fields sinks need are read
    /// from it once.
    pub fn from_json(json: Box<RawValue>) -> Result<Encoded, serde_json::Error> {
        let head: Head<'_> = serde_json::from_str(json.get())?;
        let kind = match KINDS.iter().find(|k| **k == head.item.kind) {
            Some(kind) => Cow::Borrowed(*kind),
            None => Cow::Owned(head.item.kind.into_owned()),
        };
        Ok(Encoded {
            id: head.id.into_owned(),
            namespace: Arc::from(head.namespace.as_ref()),
            watcher: Arc::from(head.watcher.as_ref()),
            source: Arc::from(head.source.as_ref()),
            change: head.change,
            kind,
            emitted_at: head.emitted_at,
            json,
        })
    }

    /// The event's JSON text.
    pub fn text(&self) -> &str {
        self.json.get()
    }
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
    // Lower-case hex as `hex::encode` writes it, byte by byte: its char iterator was a
    // measurable share of a batch of ten thousand ids.
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for byte in &digest[..16] {
        id.push(char::from(DIGITS[usize::from(byte >> 4)]));
        id.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    id
}

/// A `local_dir` event for the sinks' tests: file `in/a.csv` created, with `id`.
#[cfg(test)]
pub(crate) fn sample_file_event(id: &str) -> Event {
    Event {
        id: id.into(),
        namespace: "ns".into(),
        watcher: "w".into(),
        source: "local_dir".into(),
        change: Change::Created,
        item: Item::File(FileItem {
            path: "in/a.csv".into(),
            relative_path: "a.csv".into(),
            size: 3,
            modified: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }),
        watermark: serde_json::Value::Null,
        emitted_at: DateTime::from_timestamp(1_700_000_001, 5_000_000).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_times_are_written_exactly_as_chrono_writes_them() {
        #[derive(Serialize)]
        struct Fast(#[serde(serialize_with = "rfc3339")] DateTime<Utc>);
        let check = |time: DateTime<Utc>| {
            assert_eq!(serde_json::to_string(&Fast(time)).unwrap(), serde_json::to_string(&time).unwrap());
        };
        // Every fraction width, the ends of the fast path's years, and past them.
        let fractions =
            [0, 1, 7, 999, 1_000, 10_000, 100_000, 1_000_000, 5_000_000, 120_000_000, 999_999_999];
        let seconds = [
            -62_167_219_200, // 0000-01-01T00:00:00Z
            -62_167_219_201, // a second earlier: year -1
            -1,
            0,
            951_782_400, // 2000-02-29
            1_700_000_000,
            253_402_300_799, // 9999-12-31T23:59:59Z
            253_402_300_800, // year 10000
        ];
        for secs in seconds {
            for nanos in fractions {
                check(DateTime::from_timestamp(secs, nanos).unwrap());
            }
        }
        // A leap second (chrono keeps it in the fraction).
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_nano_opt(
            23,
            59,
            59,
            1_500_000_000,
        );
        check(leap.unwrap().and_utc());
        // A spread of times from a fixed seed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let secs = (x % 253_402_300_800) as i64 - 62_167_219_200 / 4;
            let nanos = match x % 4 {
                0 => 0,
                1 => (x >> 20) as u32 % 1_000 * 1_000_000,
                2 => (x >> 20) as u32 % 1_000_000 * 1_000,
                _ => (x >> 20) as u32 % 1_000_000_000,
            };
            check(DateTime::from_timestamp(secs, nanos).unwrap());
        }
    }

    #[test]
    fn item_fields_are_those_of_the_items_json() {
        assert_eq!(ItemKind::File.fields(), ["kind", "path", "relative_path", "size", "modified"]);
        let object = S3Object {
            bucket: "b".into(),
            key: "k".into(),
            size: 1,
            etag: "e".into(),
            last_modified: DateTime::<Utc>::UNIX_EPOCH,
            version_id: Some("v".into()),
            storage_class: Some("STANDARD".into()),
        };
        let objects = S3Objects { bucket: "b".into(), objects: vec![object.clone()] };
        for (kind, item) in
            [(ItemKind::S3Object, Item::S3Object(object)), (ItemKind::S3Objects, Item::S3Objects(objects))]
        {
            let json = serde_json::to_value(&item).unwrap();
            let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
            let mut fields = kind.fields();
            keys.sort();
            fields.sort();
            assert_eq!(keys, fields, "{kind:?}");
        }
        assert_eq!(ItemKind::Row.fields(), ["kind", "table", "key", "cursor", "columns", "as_text"]);
        assert_eq!(ItemKind::Rows.fields(), ["kind", "table", "rows"]);
    }

    #[test]
    fn event_id_is_stable_across_releases() {
        // Pinned: a change here breaks deduplication for every consumer.
        assert_eq!(
            event_id("demo", "inbox", &["a.csv", "12", "1700000000000000000"]),
            event_id("demo", "inbox", &["a.csv", "12", "1700000000000000000"])
        );
        assert_eq!(event_id("demo", "inbox", &["a.csv"]), "34ba8efe89d40d5a9754989b5da1f9a5");
        let mut hasher = Sha256::new();
        for part in ["demo", "inbox", "a.csv"] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        assert_eq!(event_id("demo", "inbox", &["a.csv"]), hex::encode(&hasher.finalize()[..16]));
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
    fn an_event_encoded_from_its_parts_is_the_event() {
        let item = Item::File(FileItem {
            path: "in/a.csv".into(),
            relative_path: "a.csv".into(),
            size: 3,
            modified: DateTime::<Utc>::from_timestamp(1_700_000_000, 5).unwrap_or_default(),
        });
        let summary = serde_json::json!({"changed": "2026-11-25T00:00:00Z", "remembered": 3});
        let event = Event {
            id: "e1".into(),
            namespace: "ns".into(),
            watcher: "w".into(),
            source: "local_dir".into(),
            change: Change::Updated,
            item: item.clone(),
            watermark: summary.clone(),
            emitted_at: DateTime::<Utc>::from_timestamp(1_700_000_001, 7).unwrap_or_default(),
        };
        let watermark = serde_json::value::to_raw_value(&summary).unwrap();
        let emitted_at_json = serde_json::value::to_raw_value(&event.emitted_at).unwrap();
        let parts = EventRef {
            id: "e1",
            namespace: "ns",
            watcher: "w",
            source: "local_dir",
            change: Change::Updated,
            item: &item,
            watermark: &watermark,
            emitted_at_json: &emitted_at_json,
            emitted_at: event.emitted_at,
        };
        let shared = |s: &str| Arc::<str>::from(s);
        let encoded = Encoded::encode(&parts, &shared("ns"), &shared("w"), &shared("local_dir")).unwrap();
        assert_eq!(encoded.text(), serde_json::to_string(&event).unwrap());
        let back = Encoded::from_json(encoded.json.clone()).unwrap();
        assert_eq!((back.id.as_str(), &*back.namespace, &*back.watcher), ("e1", "ns", "w"));
        assert_eq!((&*back.source, back.change, back.kind.as_ref()), ("local_dir", Change::Updated, "file"));
        assert!(matches!(back.kind, Cow::Borrowed(_)));
        assert_eq!(back.emitted_at, event.emitted_at);
        assert_eq!(serde_json::from_str::<Event>(back.text()).unwrap(), event);
    }

    #[test]
    fn a_row_item_carries_its_json_as_written() {
        let raw = |text: &str| RawJson::new(RawValue::from_string(text.to_string()).unwrap());
        let row = Item::Row(RowItem {
            table: "s.t".into(),
            key: raw(r#"{"id":1}"#),
            cursor: raw(r#"{"id":1}"#),
            columns: raw(r#"{"doc":{"n": 12345678901234567890123456789, "e": 1e400},"id":1}"#),
            as_text: Vec::new(),
        });
        let text = serde_json::to_string(&row).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"row","table":"s.t","key":{"id":1},"cursor":{"id":1},"columns":{"doc":{"n": 12345678901234567890123456789, "e": 1e400},"id":1}}"#
        );
        let back: Item = serde_json::from_str(
            r#"{"kind":"row","table":"s.t","key":{"id":1},"cursor":{"id":1},"columns":{"id":1}}"#,
        )
        .unwrap();
        assert!(matches!(back, Item::Row(r) if r.columns.get() == r#"{"id":1}"#));
    }

    #[test]
    fn event_id_parts_are_length_prefixed() {
        assert_ne!(event_id("ns", "w", &["ab", "c"]), event_id("ns", "w", &["a", "bc"]));
        assert_ne!(event_id("ns", "w", &["x"]), event_id("ns", "w2", &["x"]));
        assert_ne!(event_id("ns", "w", &["x"]), event_id("ns2", "w", &["x"]));
    }
}
