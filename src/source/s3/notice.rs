//! S3 event notifications as they arrive in a queue message, read into [`Notice`]s:
//! S3's own message (`{"Records": [...]}`), the same wrapped by SNS
//! (`{"Type": "Notification", "Message": "..."}`), or an EventBridge event
//! (`{"detail-type": "Object Created", "source": "aws.s3", "detail": {...}}`).
//!
//! A record's `sequencer` is not needed: every notified key is looked up, and S3's
//! answer orders a delete and a re-PUT of one key whatever order their messages came
//! in. Pure: no network, no clock. A message that is none of these, or one whose records
//! lack what a notice needs, is an error the caller counts and sets aside; one record it
//! has no use for (a restore, a tag change) is skipped, not an error.

use serde::Deserialize;
use serde_json::Value;

/// Which message shape the queue carries (`notifications.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Told apart by their shape: S3's own, SNS-wrapped or EventBridge.
    #[default]
    Auto,
    /// S3's own notification messages (or SNS with raw message delivery).
    S3,
    /// S3 notifications published to an SNS topic the queue subscribes to.
    Sns,
    /// S3 events routed by an EventBridge rule to the queue.
    Eventbridge,
}

/// What happened to an object, as far as the watcher cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `ObjectCreated:*` / `Object Created`: a PUT, POST, copy or completed upload.
    Created,
    /// `ObjectRemoved:*`, `LifecycleExpiration:*` / `Object Deleted`.
    Removed,
}

/// One record of a message: an object created or removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The bucket.
    pub bucket: String,
    /// The key, decoded (S3 and SNS messages URL-encode it, with `+` for a space).
    pub key: String,
    /// What happened.
    pub action: Action,
    /// The ETag without quotes, when the message carries one (not for removals).
    pub etag: Option<String>,
}

/// What one message holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Object records (possibly none of interest).
    Notices(Vec<Notice>),
    /// `s3:TestEvent`, sent once when a notification configuration is saved: nothing to
    /// announce; the message is deleted.
    Test,
}

/// Reads a message body. `Err` names what is wrong (never the body: it may be large
/// and is the operator's to look at in the queue).
pub fn parse(body: &str, format: Format) -> Result<Message, String> {
    let value: Value = serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    match format {
        Format::Auto => auto(&value, true),
        Format::S3 => s3(&value),
        Format::Sns => sns(&value),
        Format::Eventbridge => eventbridge(&value),
    }
}

/// Tells the shapes apart. An SNS envelope is opened once.
fn auto(value: &Value, envelope: bool) -> Result<Message, String> {
    if value.get("Records").is_some() || value.get("Event").is_some() {
        return s3(value);
    }
    if value.get("detail-type").is_some() {
        return eventbridge(value);
    }
    if envelope && value.get("Type").is_some() {
        return sns(value);
    }
    Err("neither an S3 notification, an SNS notification nor an EventBridge event".into())
}

/// An SNS envelope: its `Message` is the S3 notification (or an EventBridge event), as text.
fn sns(value: &Value) -> Result<Message, String> {
    match value.get("Type").and_then(Value::as_str) {
        Some("Notification") => {}
        Some(other) => {
            return Err(format!(
                "an SNS message of type `{other}`, not `Notification` (a subscription to confirm in SNS?)"
            ));
        }
        None => return Err("not an SNS notification (no `Type`)".into()),
    }
    let inner =
        value.get("Message").and_then(Value::as_str).ok_or("an SNS notification without `Message` text")?;
    let inner: Value = serde_json::from_str(inner)
        .map_err(|e| format!("the SNS notification's `Message` is not JSON ({e})"))?;
    auto(&inner, false)
}

/// S3's own message: `Records`, or the test event.
fn s3(value: &Value) -> Result<Message, String> {
    if let Some(event) = value.get("Event") {
        return match event.as_str() {
            Some("s3:TestEvent") => Ok(Message::Test),
            _ => Err(format!("an S3 message with `Event` {event}, not `s3:TestEvent`")),
        };
    }
    let records =
        value.get("Records").and_then(Value::as_array).ok_or("not an S3 notification (no `Records` list)")?;
    let mut notices = Vec::with_capacity(records.len());
    for (n, record) in records.iter().enumerate() {
        let name = record
            .get("eventName")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("record {n} has no `eventName`"))?;
        // Some servers (MinIO) write `s3:ObjectCreated:Put`.
        let name = name.strip_prefix("s3:").unwrap_or(name);
        let Some(action) = s3_action(name) else { continue };
        let s3 = record.get("s3").ok_or_else(|| format!("record {n} has no `s3`"))?;
        let bucket = s3
            .pointer("/bucket/name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("record {n} has no `s3.bucket.name`"))?;
        let object = s3.get("object").ok_or_else(|| format!("record {n} has no `s3.object`"))?;
        let encoded = object
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("record {n} has no `s3.object.key`"))?;
        let key = super::decode_key(encoded)
            .ok_or_else(|| format!("record {n}'s key is not URL-encoded UTF-8: {encoded}"))?;
        notices.push(Notice {
            bucket: bucket.to_string(),
            key,
            action,
            etag: text(object, "eTag").map(|e| e.trim_matches('"').to_string()),
        });
    }
    Ok(Message::Notices(notices))
}

/// The action of an S3 `eventName` (without `s3:`); None for records of no interest.
fn s3_action(name: &str) -> Option<Action> {
    let family = name.split(':').next().unwrap_or(name);
    match family {
        "ObjectCreated" => Some(Action::Created),
        "ObjectRemoved" | "LifecycleExpiration" => Some(Action::Removed),
        _ => None,
    }
}

/// An EventBridge event from S3. Its key is not URL-encoded (unlike S3's own messages).
fn eventbridge(value: &Value) -> Result<Message, String> {
    let source = value.get("source").and_then(Value::as_str);
    if source != Some("aws.s3") {
        return Err(format!("an EventBridge event from `{}`, not `aws.s3`", source.unwrap_or("")));
    }
    let kind = value
        .get("detail-type")
        .and_then(Value::as_str)
        .ok_or("an EventBridge event without `detail-type`")?;
    let action = match kind {
        "Object Created" => Action::Created,
        "Object Deleted" => Action::Removed,
        _ => return Ok(Message::Notices(Vec::new())),
    };
    let detail = value.get("detail").ok_or("an EventBridge event without `detail`")?;
    let bucket = detail
        .pointer("/bucket/name")
        .and_then(Value::as_str)
        .ok_or("an EventBridge event without `detail.bucket.name`")?;
    let object = detail.get("object").ok_or("an EventBridge event without `detail.object`")?;
    let key = object
        .get("key")
        .and_then(Value::as_str)
        .ok_or("an EventBridge event without `detail.object.key`")?;
    Ok(Message::Notices(vec![Notice {
        bucket: bucket.to_string(),
        key: key.to_string(),
        action,
        etag: text(object, "etag").map(|e| e.trim_matches('"').to_string()),
    }]))
}

fn text(object: &Value, field: &str) -> Option<String> {
    object.get(field).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3_body(name: &str, key: &str) -> String {
        serde_json::json!({"Records": [{
            "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": "landing"},
                   "object": {"key": key, "size": 3, "eTag": "\"abc\"", "sequencer": "0055AED6DCD90281E5"}}
        }]})
        .to_string()
    }

    fn notices(message: Message) -> Vec<Notice> {
        match message {
            Message::Notices(n) => n,
            Message::Test => panic!("a test event"),
        }
    }

    #[test]
    fn s3_messages_give_decoded_keys() {
        let n = notices(
            parse(&s3_body("ObjectCreated:Put", "orders%2F2026%2Fa+b%2Bc.csv"), Format::Auto).unwrap(),
        );
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].key, "orders/2026/a b+c.csv");
        assert_eq!(n[0].bucket, "landing");
        assert_eq!(n[0].action, Action::Created);
        assert_eq!(n[0].etag.as_deref(), Some("abc"));
        let n = notices(parse(&s3_body("ObjectRemoved:DeleteMarkerCreated", "x"), Format::S3).unwrap());
        assert_eq!(n[0].action, Action::Removed);
        let n = notices(parse(&s3_body("s3:LifecycleExpiration:Delete", "x"), Format::S3).unwrap());
        assert_eq!(n[0].action, Action::Removed);
        assert!(notices(parse(&s3_body("ObjectTagging:Put", "x"), Format::S3).unwrap()).is_empty());
    }

    #[test]
    fn the_test_event_is_recognised() {
        let body = r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-01-01T00:00:00Z","Bucket":"landing"}"#;
        assert_eq!(parse(body, Format::Auto), Ok(Message::Test));
        assert_eq!(parse(body, Format::S3), Ok(Message::Test));
    }

    #[test]
    fn sns_envelopes_are_opened() {
        let body = serde_json::json!({
            "Type": "Notification", "MessageId": "m", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": s3_body("ObjectCreated:CompleteMultipartUpload", "in/%C3%A9t%C3%A9.csv"),
        })
        .to_string();
        for format in [Format::Auto, Format::Sns] {
            assert_eq!(notices(parse(&body, format).unwrap())[0].key, "in/été.csv");
        }
        assert!(parse(&body, Format::S3).is_err());
        let confirm = r#"{"Type":"SubscriptionConfirmation","Message":"x"}"#;
        assert!(parse(confirm, Format::Auto).unwrap_err().contains("SubscriptionConfirmation"));
    }

    #[test]
    fn eventbridge_events_keep_their_keys() {
        let body = serde_json::json!({
            "version": "0", "id": "1", "detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": "landing"}, "object": {"key": "in/a+b.csv", "etag": "e", "sequencer": "1"}},
        })
        .to_string();
        for format in [Format::Auto, Format::Eventbridge] {
            let n = notices(parse(&body, format).unwrap());
            assert_eq!((n[0].key.as_str(), n[0].action), ("in/a+b.csv", Action::Created));
        }
        let deleted = body.replace("Object Created", "Object Deleted");
        assert_eq!(notices(parse(&deleted, Format::Auto).unwrap())[0].action, Action::Removed);
        let tagged = body.replace("Object Created", "Object Tags Added");
        assert!(notices(parse(&tagged, Format::Auto).unwrap()).is_empty());
        assert!(parse(&body.replace("aws.s3", "aws.ec2"), Format::Auto).is_err());
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        assert!(parse("not json", Format::Auto).unwrap_err().starts_with("not JSON"));
        assert!(parse("{}", Format::Auto).unwrap_err().contains("neither"));
        assert!(parse(r#"{"Records": 3}"#, Format::Auto).is_err());
        assert!(
            parse(r#"{"Records": [{"eventName": "ObjectCreated:Put"}]}"#, Format::Auto)
                .unwrap_err()
                .contains("record 0 has no `s3`")
        );
        assert!(parse(&s3_body("ObjectCreated:Put", "in/%ZZ"), Format::Auto).unwrap_err().contains("in/%ZZ"));
        assert!(parse(&s3_body("ObjectCreated:Put", "x"), Format::Eventbridge).is_err());
    }
}
