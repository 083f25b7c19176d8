//! The `webhook` sink: events POSTed as JSON (CloudEvents 1.0 structured mode, or the
//! plain event), signed the Standard Webhooks way so receivers can verify them with the
//! libraries they already have.
//!
//! One `deliver` call makes one attempt: with `batch: N` it sends the events in
//! requests of at most N, in order, and acknowledges only when every request was
//! accepted. The watcher loop retries a failed batch whole, with the same event ids
//! and the same `webhook-id`s.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::http::{self, Secret, SecretKeys};
use super::{BuildError, Delivery, Sink, SinkKind};
use crate::event::Event;
use crate::value::{Headers, HttpUrl, HumanDuration, Kind};

/// `sink: {type: webhook}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where events are POSTed (`http://` or `https://`; TLS by rustls, certificates
    /// checked against the system's trust store). Shown without user info or query
    /// string.
    pub url: HttpUrl,
    /// `cloudevents` (CloudEvents 1.0, structured mode) or `plain` (the event JSON as
    /// `highwater` writes it everywhere).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Most events per request. With 1 (the default) a request carries one event; above
    /// 1 every request carries a JSON array (a CloudEvents batch with `cloudevents`).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Environment variable holding the signing secret, in the Standard Webhooks form:
    /// `whsec_` followed by base64 (the prefix is optional). Without a secret, requests
    /// are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding the signing secret (instead of `secret_env`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Environment variable holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token_env: Option<String>,
    /// File holding the bearer token (instead of `bearer_token_env`).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Extra headers sent with every request. Their values are shown by nothing but
    /// are not treated as secrets either: put credentials in `bearer_token_*`.
    #[serde(default)]
    pub headers: Headers,
    /// How long one request may take, connecting included. A request that takes longer
    /// is abandoned and the batch retried.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// The body format of the `webhook` sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// CloudEvents 1.0, structured mode (`application/cloudevents+json`, batches as
    /// `application/cloudevents-batch+json`); `data` is the plain event.
    #[default]
    Cloudevents,
    /// The event JSON (`application/json`); batches as a JSON array.
    Plain,
}

fn default_batch() -> usize {
    1
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// Headers that the sink writes itself and a config may not replace.
const RESERVED_HEADERS: &[&str] =
    &["content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"];

/// Most events one request may carry; beyond it receivers tend to refuse the body size.
const MAX_BATCH: usize = 10_000;

impl WebhookConfig {
    fn secret_keys(&self) -> SecretKeys<'_> {
        SecretKeys { key: "secret", env: self.secret_env.as_deref(), file: self.secret_file.as_deref() }
    }

    fn bearer_keys(&self) -> SecretKeys<'_> {
        SecretKeys {
            key: "bearer_token",
            env: self.bearer_token_env.as_deref(),
            file: self.bearer_token_file.as_deref(),
        }
    }
}

impl Kind for WebhookConfig {
    const TAG: &'static str = "webhook";
}

impl SinkKind for WebhookConfig {
    /// Never a secret, nor the URL's query or user info.
    fn describe(&self) -> String {
        let url = &self.url;
        let format = match self.format {
            WebhookFormat::Cloudevents => "cloudevents",
            WebhookFormat::Plain => "plain",
        };
        let signed = if self.secret_keys().is_set() { ", signed" } else { "" };
        let batch = if self.batch > 1 { format!(", batches of {}", self.batch) } else { String::new() };
        format!("{} {url} ({format}{batch}{signed})", Self::TAG)
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.batch == 0 || self.batch > MAX_BATCH {
            errors.push(("batch".into(), format!("must be between 1 and {MAX_BATCH}")));
        }
        if self.timeout.0.is_zero() {
            errors.push(("timeout".into(), "must be more than 0".into()));
        }
        errors.extend(self.secret_keys().validate());
        errors.extend(self.bearer_keys().validate());
        for header in self.headers.iter() {
            let key = format!("headers.{}", header.written);
            if RESERVED_HEADERS.contains(&header.name.as_str()) {
                errors.push((key, "is set by the sink itself".into()));
            } else if header.name == AUTHORIZATION && self.bearer_keys().is_set() {
                errors.push((key, "conflicts with `bearer_token_env`/`bearer_token_file`".into()));
            }
        }
        errors
    }

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(WebhookSink::new(self)?))
    }
}

/// Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>` over
/// `"{webhook-id}.{webhook-timestamp}.{body}"`.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// A signer for a secret in the Standard Webhooks form (`whsec_` + base64, the
    /// prefix optional). The error never holds the secret.
    pub fn new(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = BASE64.decode(encoded.trim()).map_err(|_| {
            "is not in the Standard Webhooks form (`whsec_` followed by base64), which receivers' libraries expect"
                .to_string()
        })?;
        if key.is_empty() {
            return Err("is empty".into());
        }
        Ok(Signer { key })
    }

    /// The `webhook-signature` header value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // Any key length is valid for HMAC, so this cannot fail.
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// One CloudEvents 1.0 event in structured mode.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    time: String,
    datacontenttype: &'static str,
    data: &'a Event,
}

/// The CloudEvents `type` of an event: `io.highwater.<source>.<item kind>.<change>`,
/// e.g. `io.highwater.s3.object.created`.
pub fn cloudevents_type(event: &Event) -> String {
    // `s3` + `s3_object` reads `s3.object`, not `s3.s3_object`.
    let kind = event.item.kind();
    let kind = kind.strip_prefix(event.source.as_str()).and_then(|k| k.strip_prefix('_')).unwrap_or(kind);
    format!("io.highwater.{}.{kind}.{}", event.source, event.change.as_str())
}

fn cloud_event(event: &Event) -> CloudEvent<'_> {
    CloudEvent {
        specversion: "1.0",
        id: &event.id,
        source: format!("/highwater/{}/{}", event.namespace, event.watcher),
        kind: cloudevents_type(event),
        time: event.emitted_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        datacontenttype: "application/json",
        data: event,
    }
}

/// The body and content type of one request. `as_array` makes it a batch (a JSON
/// array) even for a single event, so a receiver configured for batches always gets
/// an array.
pub fn encode_body(
    format: WebhookFormat,
    events: &[Event],
    as_array: bool,
) -> Result<(Vec<u8>, &'static str), serde_json::Error> {
    match (format, as_array) {
        (WebhookFormat::Plain, false) => Ok((serde_json::to_vec(&events[0])?, "application/json")),
        (WebhookFormat::Plain, true) => Ok((serde_json::to_vec(events)?, "application/json")),
        (WebhookFormat::Cloudevents, false) => {
            Ok((serde_json::to_vec(&cloud_event(&events[0]))?, "application/cloudevents+json"))
        }
        (WebhookFormat::Cloudevents, true) => {
            let batch: Vec<CloudEvent<'_>> = events.iter().map(cloud_event).collect();
            Ok((serde_json::to_vec(&batch)?, "application/cloudevents-batch+json"))
        }
    }
}

/// The `webhook-id` of a request: the event id for one event, else a digest of the
/// ids it carries. Either way a redelivery of the same events has the same id.
pub fn webhook_id(events: &[Event]) -> String {
    match events {
        [one] => one.id.clone(),
        many => {
            let mut hasher = Sha256::new();
            for event in many {
                hasher.update(event.id.as_bytes());
                hasher.update(b"\n");
            }
            format!("batch_{}", hex::encode(&hasher.finalize()[..16]))
        }
    }
}

/// The runtime `webhook` sink.
pub struct WebhookSink {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logs may show it.
    shown: String,
    format: WebhookFormat,
    batch: usize,
    timeout: Duration,
    signer: Option<Signer>,
    /// Configured headers plus `Authorization`, ready to send.
    headers: HeaderMap,
}

impl WebhookSink {
    /// Builds the sink: reads the secrets and prepares the client. Nothing is contacted.
    pub fn new(config: &WebhookConfig) -> Result<Self, BuildError> {
        let signer = match config.secret_keys().load()? {
            Some(secret) => Some(Signer::new(secret.expose()).map_err(|m| BuildError {
                message: format!(
                    "the secret from {} {m}",
                    secret_origin(config.secret_env.as_deref(), "secret")
                ),
            })?),
            None => None,
        };
        let mut headers = HeaderMap::new();
        for header in config.headers.iter() {
            headers.insert(header.name.clone(), header.value.clone());
        }
        if let Some(token) = config.bearer_keys().load()? {
            headers.insert(AUTHORIZATION, bearer(&token)?);
        }
        Ok(WebhookSink {
            client: http::client(config.timeout.0)?,
            shown: config.url.to_string(),
            url: config.url.url().clone(),
            format: config.format,
            batch: config.batch,
            timeout: config.timeout.0,
            signer,
            headers,
        })
    }

    /// Sends one request with `events` and classifies the answer.
    async fn send(&self, events: &[Event]) -> Delivery {
        let (body, content_type) = match encode_body(self.format, events, self.batch > 1) {
            Ok(encoded) => encoded,
            Err(e) => return Delivery::permanent(format!("cannot encode event {}: {e}", events[0].id)),
        };
        let id = webhook_id(events);
        // A fresh timestamp per attempt: receivers reject signatures older than a few
        // minutes, and a retried batch may be hours old.
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, content_type)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &self.signer {
            request = request.header("webhook-signature", signer.sign(&id, timestamp, &body));
        }
        match request.body(body).send().await {
            Ok(response) => http::classify_response(response, &self.shown).await,
            Err(e) => http::transport_failure(e, &self.shown, self.timeout),
        }
    }
}

/// Where a secret came from, for messages: the variable's name or "the file".
fn secret_origin(env: Option<&str>, key: &str) -> String {
    env.map_or_else(|| format!("`{key}_file`"), |name| format!("`{name}`"))
}

/// An `Authorization: Bearer` value, marked sensitive so that HTTP-level debug output
/// hides it.
pub(crate) fn bearer(token: &Secret) -> Result<HeaderValue, BuildError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| BuildError {
        message: "the bearer token holds characters a header cannot carry".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&mut self, events: &[Event]) -> Delivery {
        let requests = events.len().div_ceil(self.batch);
        for (index, chunk) in events.chunks(self.batch).enumerate() {
            match self.send(chunk).await {
                Delivery::Acknowledged => {}
                // The chunks before this one were accepted; the whole batch is sent
                // again on retry, so the receiver sees those events twice, with the
                // same ids.
                Delivery::RetryLater { reason, after } if requests > 1 => {
                    return Delivery::RetryLater {
                        reason: format!("request {} of {requests}: {reason}", index + 1),
                        after,
                    };
                }
                Delivery::Permanent { reason } if requests > 1 => {
                    return Delivery::permanent(format!("request {} of {requests}: {reason}", index + 1));
                }
                failed => return failed,
            }
        }
        Delivery::Acknowledged
    }

    async fn check(&mut self) -> Result<(), String> {
        // Any HTTP answer proves the receiver is there; a HEAD delivers nothing.
        match self.client.head(self.url.clone()).headers(self.headers.clone()).send().await {
            Ok(_) => Ok(()),
            Err(e) => match http::transport_failure(e, &self.shown, self.timeout) {
                Delivery::RetryLater { reason, .. } | Delivery::Permanent { reason } => Err(reason),
                Delivery::Acknowledged => Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Change, FileItem, Item};

    fn event(id: &str) -> Event {
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
                modified: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            }),
            watermark: serde_json::Value::Null,
            emitted_at: chrono::DateTime::from_timestamp(1_700_000_001, 5_000_000).unwrap(),
        }
    }

    #[test]
    fn cloudevents_types_name_source_kind_and_change() {
        assert_eq!(cloudevents_type(&event("a")), "io.highwater.local_dir.file.created");
        let mut s3 = event("b");
        s3.source = "s3".into();
        s3.item = Item::S3Objects(crate::event::S3Objects { bucket: "b".into(), objects: Vec::new() });
        s3.change = Change::Deleted;
        assert_eq!(cloudevents_type(&s3), "io.highwater.s3.objects.deleted");
    }

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(Signer::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        let error = Signer::new("not base64!").err().unwrap();
        assert!(!error.contains("not base64!"), "{error}");
    }

    #[test]
    fn cloudevents_structured_mode() {
        let (body, content_type) = encode_body(WebhookFormat::Cloudevents, &[event("e1")], false).unwrap();
        assert_eq!(content_type, "application/cloudevents+json");
        let ce: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], "e1");
        assert_eq!(ce["source"], "/highwater/ns/w");
        assert_eq!(ce["type"], "io.highwater.local_dir.file.created");
        assert_eq!(ce["time"], "2023-11-14T22:13:21.005Z");
        assert_eq!(ce["data"]["item"]["relative_path"], "a.csv");

        let (body, content_type) =
            encode_body(WebhookFormat::Cloudevents, &[event("e1"), event("e2")], true).unwrap();
        assert_eq!(content_type, "application/cloudevents-batch+json");
        let batch: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1]["id"], "e2");
    }

    #[test]
    fn plain_bodies_are_the_event_or_an_array() {
        let (body, content_type) = encode_body(WebhookFormat::Plain, &[event("e1")], false).unwrap();
        assert_eq!(content_type, "application/json");
        let back: Event = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, event("e1"));
        let (body, _) = encode_body(WebhookFormat::Plain, &[event("e1")], true).unwrap();
        assert!(body.starts_with(b"["));
    }

    #[test]
    fn webhook_ids_are_stable() {
        assert_eq!(webhook_id(&[event("e1")]), "e1");
        let two = webhook_id(&[event("e1"), event("e2")]);
        assert_eq!(two, webhook_id(&[event("e1"), event("e2")]));
        assert_ne!(two, webhook_id(&[event("e2"), event("e1")]));
        assert!(two.starts_with("batch_"));
    }

    #[test]
    fn validation_and_description_hide_secrets() {
        let config = WebhookConfig {
            url: HttpUrl::parse("https://user:pw@hooks.example.com/in?sig=abc").unwrap(),
            format: WebhookFormat::Plain,
            batch: 0,
            secret_env: Some("HOOK_SECRET".into()),
            secret_file: Some("x".into()),
            bearer_token_env: Some("TOKEN".into()),
            bearer_token_file: None,
            headers: Headers::new([("X-Team", "data"), ("Authorization", "Basic x"), ("webhook-id", "x")])
                .unwrap(),
            timeout: HumanDuration(Duration::from_secs(5)),
        };
        let keys: Vec<String> = config.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["batch", "secret_env", "headers.Authorization", "headers.webhook-id"]);
        let shown = config.describe();
        assert_eq!(shown, "webhook https://hooks.example.com/in (plain, signed)");
    }
}
