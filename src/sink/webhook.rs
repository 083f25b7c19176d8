//! The `webhook` sink: events POSTed as JSON (CloudEvents 1.0 structured mode, or the
//! plain event), signed the Standard Webhooks way so receivers can verify them with the
//! libraries they already have.
//!
//! One `deliver` call makes one attempt: with `batch: N` it sends the events in
//! requests of at most N, in order, counts each accepted request's events as
//! acknowledged, and acknowledges the batch once every request was accepted. The
//! watcher loop retries only the events after the last accepted request, in the same
//! requests (the rest starts where a request started), so with the same event ids and
//! the same `webhook-id`s. Bodies are built from each event's text as encoded once.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::http::{self, Redactor};
use super::{Acked, BuildError, Checked, Delivery, Sink, SinkKind};
use serde_json::value::RawValue;

use crate::event::Encoded;
use crate::value::{EnvVar, Headers, HttpUrl, HumanDuration, Kind, Secret, SecretFile, SecretRef};

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
    /// `whsec_` followed by base64 (the prefix is optional, padding too). Several
    /// secrets separated by spaces or line breaks sign every request with each (key
    /// rotation: `webhook-signature: v1,… v1,…`). Without a secret, requests are not
    /// signed.
    #[serde(default)]
    pub secret_env: Option<EnvVar>,
    /// File holding the signing secret or secrets (instead of `secret_env`), or
    /// `credential:NAME` for a systemd credential. Read for every batch: a rotated
    /// file needs no reload.
    #[serde(default)]
    pub secret_file: Option<SecretFile>,
    /// Environment variable holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token_env: Option<EnvVar>,
    /// File holding the bearer token (instead of `bearer_token_env`), or
    /// `credential:NAME`; read for every batch.
    #[serde(default)]
    pub bearer_token_file: Option<SecretFile>,
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
    fn secret(&self) -> Option<SecretRef> {
        SecretRef::from_pair("secret", self.secret_env.as_ref(), self.secret_file.as_ref())
    }

    fn bearer(&self) -> Option<SecretRef> {
        SecretRef::from_pair("bearer_token", self.bearer_token_env.as_ref(), self.bearer_token_file.as_ref())
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
        let signed = if self.secret().is_some() { ", signed" } else { "" };
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
        errors.extend(SecretRef::validate_pair(
            "secret",
            self.secret_env.as_ref(),
            self.secret_file.as_ref(),
        ));
        errors.extend(SecretRef::validate_pair(
            "bearer_token",
            self.bearer_token_env.as_ref(),
            self.bearer_token_file.as_ref(),
        ));
        for header in self.headers.iter() {
            let key = format!("headers.{}", header.written);
            if RESERVED_HEADERS.contains(&header.name.as_str()) {
                errors.push((key, "is set by the sink itself".into()));
            } else if header.name == AUTHORIZATION && self.bearer().is_some() {
                errors.push((key, "conflicts with `bearer_token_env`/`bearer_token_file`".into()));
            }
        }
        errors
    }

    fn check_host(&self) -> Vec<(String, String)> {
        http::host_problem(self.url.url()).map(|problem| ("url".to_string(), problem)).into_iter().collect()
    }

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(WebhookSink::new(self)?))
    }
}

/// Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>` over
/// `"{webhook-id}.{webhook-timestamp}.{body}"`, one `v1,` entry per secret (separated
/// by spaces), so a receiver verifies with either key while keys rotate.
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl Signer {
    /// A signer for one or more secrets (separated by spaces or line breaks), each in
    /// the Standard Webhooks form: `whsec_` + base64, the prefix and the padding
    /// optional. The error names which secret is wrong, never what it holds.
    pub fn new(secrets: &str) -> Result<Self, String> {
        let parts: Vec<&str> = secrets.split_whitespace().collect();
        let mut keys = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let which = if parts.len() > 1 {
                format!(" (secret {} of {})", i + 1, parts.len())
            } else {
                String::new()
            };
            let encoded = part.strip_prefix("whsec_").unwrap_or(part);
            // Standard Webhooks libraries accept unpadded base64 too.
            let key = STANDARD_PAD_INDIFFERENT.decode(encoded).map_err(|_| {
                format!(
                    "is not in the Standard Webhooks form (`whsec_` followed by base64), which receivers' libraries expect{which}"
                )
            })?;
            if key.is_empty() {
                return Err(format!("is empty{which}"));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("is empty".into());
        }
        Ok(Signer { keys })
    }

    /// The `webhook-signature` header value for one request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let timestamp = timestamp.to_string();
        let mut header = String::new();
        for key in &self.keys {
            // Any key length is valid for HMAC, so this cannot fail.
            let mut mac =
                <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !header.is_empty() {
                header.push(' ');
            }
            header.push_str("v1,");
            header.push_str(&BASE64.encode(mac.finalize().into_bytes()));
        }
        header
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
    data: &'a RawValue,
}

/// The CloudEvents `type` of an event: `io.highwater.<source>.<item kind>.<change>`,
/// e.g. `io.highwater.s3.object.created`.
pub fn cloudevents_type(event: &Encoded) -> String {
    // `s3` + `s3_object` reads `s3.object`, not `s3.s3_object`.
    let kind: &str = &event.kind;
    let kind = kind.strip_prefix(&*event.source).and_then(|k| k.strip_prefix('_')).unwrap_or(kind);
    format!("io.highwater.{}.{kind}.{}", event.source, event.change.as_str())
}

fn cloud_event(event: &Encoded) -> CloudEvent<'_> {
    CloudEvent {
        specversion: "1.0",
        id: &event.id,
        source: format!("/highwater/{}/{}", event.namespace, event.watcher),
        kind: cloudevents_type(event),
        time: event.emitted_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        datacontenttype: "application/json",
        data: &event.json,
    }
}

/// The body and content type of one request. `as_array` makes it a batch (a JSON
/// array) even for a single event, so a receiver configured for batches always gets
/// an array.
pub fn encode_body(
    format: WebhookFormat,
    events: &[Encoded],
    as_array: bool,
) -> Result<(Vec<u8>, &'static str), serde_json::Error> {
    match (format, as_array) {
        // The plain bodies are the events' text, copied.
        (WebhookFormat::Plain, false) => Ok((events[0].text().as_bytes().to_vec(), "application/json")),
        (WebhookFormat::Plain, true) => {
            let mut body = Vec::with_capacity(events.iter().map(|e| e.text().len() + 1).sum::<usize>() + 1);
            body.push(b'[');
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(event.text().as_bytes());
            }
            body.push(b']');
            Ok((body, "application/json"))
        }
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
pub fn webhook_id(events: &[Encoded]) -> String {
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
    url: reqwest::Url,
    /// The URL as logs may show it.
    shown: String,
    format: WebhookFormat,
    batch: usize,
    timeout: Duration,
    /// The signing secret or secrets, read for every batch.
    secret: Option<SecretRef>,
    /// The bearer token, read for every batch.
    bearer: Option<SecretRef>,
    /// The configured extra headers.
    headers: HeaderMap,
}

/// What one batch is sent with: the secrets as they are now.
struct Credentials {
    signer: Option<Signer>,
    /// The configured headers plus `Authorization`.
    headers: HeaderMap,
    /// The secrets to keep out of what receivers answer.
    redactor: Redactor,
}

impl WebhookSink {
    /// Builds the sink and checks that its secrets can be read and used (they are read
    /// again for every batch). Nothing is contacted.
    pub fn new(config: &WebhookConfig) -> Result<Self, BuildError> {
        let sink = WebhookSink {
            shown: config.url.to_string(),
            url: config.url.url().clone(),
            format: config.format,
            batch: config.batch,
            timeout: config.timeout.0,
            secret: config.secret(),
            bearer: config.bearer(),
            headers: config.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
        };
        sink.credentials().map_err(|message| BuildError { message })?;
        Ok(sink)
    }

    /// Reads the secrets: a rotated file takes effect with the next batch. An error
    /// (what an operator must fix) names the key and the file or variable.
    fn credentials(&self) -> Result<Credentials, String> {
        let mut redactor = Redactor::default();
        let signer = match &self.secret {
            Some(secret) => {
                let value = secret.read().map_err(|e| e.to_string())?;
                for part in value.expose().split_whitespace() {
                    redactor.add(part);
                    redactor.add(part.strip_prefix("whsec_").unwrap_or(part));
                }
                Some(Signer::new(value.expose()).map_err(|m| format!("{}: the secret {m}", secret.key()))?)
            }
            None => None,
        };
        let mut headers = self.headers.clone();
        if let Some(token) = &self.bearer {
            let token = token.read().map_err(|e| e.to_string())?;
            redactor.add(token.expose());
            headers.insert(AUTHORIZATION, bearer(&token)?);
        }
        Ok(Credentials { signer, headers, redactor })
    }

    /// Sends one request with `events` and classifies the answer.
    async fn send(
        &self,
        client: &reqwest::Client,
        credentials: &Credentials,
        events: &[Encoded],
    ) -> Delivery {
        let (body, content_type) = match encode_body(self.format, events, self.batch > 1) {
            Ok(encoded) => encoded,
            Err(e) => return Delivery::permanent(format!("cannot encode event {}: {e}", events[0].id)),
        };
        let id = webhook_id(events);
        // A fresh timestamp per attempt: receivers reject signatures older than a few
        // minutes, and a retried batch may be hours old.
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = client
            .post(self.url.clone())
            .timeout(self.timeout)
            .headers(credentials.headers.clone())
            .header(CONTENT_TYPE, content_type)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = &credentials.signer {
            request = request.header("webhook-signature", signer.sign(&id, timestamp, &body));
        }
        match request.body(body).send().await {
            Ok(response) => http::classify_response(response, &self.shown, &credentials.redactor).await,
            Err(e) => http::transport_failure(e, &self.shown, self.timeout),
        }
    }
}

/// An `Authorization: Bearer` value, marked sensitive so that HTTP-level debug output
/// hides it.
fn bearer(token: &Secret) -> Result<HeaderValue, String> {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .map_err(|_| "the bearer token holds characters a header cannot carry".to_string())?;
    value.set_sensitive(true);
    Ok(value)
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery {
        // An operator's problem: a secret that cannot be read (or used) holds the batch
        // until it is fixed, and nothing is sent without it.
        let client = match http::client_for(&self.url) {
            Ok(client) => client,
            Err(problem) => return Delivery::attention(format!("{}: {problem}", self.shown)),
        };
        let credentials = match self.credentials() {
            Ok(credentials) => credentials,
            Err(problem) => return Delivery::attention(problem),
        };
        let requests = events.len().div_ceil(self.batch);
        for (index, chunk) in events.chunks(self.batch).enumerate() {
            match self.send(&client, &credentials, chunk).await {
                // The receiver has these: a retry starts after them.
                Delivery::Acknowledged => acked.add(chunk.len()),
                failed if requests > 1 => {
                    return failed
                        .map_reason(|reason| format!("request {} of {requests}: {reason}", index + 1));
                }
                failed => return failed,
            }
        }
        Delivery::Acknowledged
    }

    async fn check(&mut self) -> Result<Checked, String> {
        let client = http::client_for(&self.url)?;
        let credentials = self.credentials()?;
        // A HEAD delivers nothing. It is not signed, so a correct receiver may refuse it
        // (401, 404, 405): any answer below 500 proves it is there.
        match client.head(self.url.clone()).timeout(self.timeout).headers(credentials.headers).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let mut checked = Checked::default();
                if status >= 500 {
                    checked
                        .warnings
                        .push(format!("{} answered HTTP {status} (reachable, but failing)", self.shown));
                } else {
                    checked.notes.push(format!("{} reachable (HTTP {status})", self.shown));
                }
                Ok(checked)
            }
            Err(e) => Err(http::transport_failure(e, &self.shown, self.timeout).reason().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Change, Event, Item};

    fn event(id: &str) -> Encoded {
        Encoded::of(&crate::event::sample_file_event(id)).unwrap()
    }

    #[test]
    fn cloudevents_types_name_source_kind_and_change() {
        assert_eq!(cloudevents_type(&event("a")), "io.highwater.local_dir.file.created");
        let mut s3 = crate::event::sample_file_event("b");
        s3.source = "s3".into();
        s3.item = Item::S3Objects(crate::event::S3Objects { bucket: "b".into(), objects: Vec::new() });
        s3.change = Change::Deleted;
        assert_eq!(cloudevents_type(&Encoded::of(&s3).unwrap()), "io.highwater.s3.objects.deleted");
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
    fn several_secrets_sign_with_each_and_unpadded_base64_is_accepted() {
        // The reference secret without its padding-free form changed, and a second key.
        let reference = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let other = "whsec_c2Vjb25kIGtleQ"; // "second key", base64 without its `==`
        let signer = Signer::new(&format!("{reference}\n {other}\n")).unwrap();
        let header = signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2, "{header}");
        assert_eq!(entries[0], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let second = Signer::new("whsec_c2Vjb25kIGtleQ==").unwrap();
        assert_eq!(
            entries[1],
            second.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#)
        );
        let error = Signer::new(&format!("{reference} whsec_!!")).err().unwrap();
        assert!(error.ends_with("(secret 2 of 2)"), "{error}");
        assert!(Signer::new("  \n").is_err());
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
        assert_eq!(back, crate::event::sample_file_event("e1"));
        let (body, _) = encode_body(WebhookFormat::Plain, &[event("e1")], true).unwrap();
        assert!(body.starts_with(b"["));
        let (body, _) = encode_body(WebhookFormat::Plain, &[event("e1"), event("e2")], true).unwrap();
        let back: Vec<Event> = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, vec![crate::event::sample_file_event("e1"), crate::event::sample_file_event("e2")]);
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
            secret_env: Some(EnvVar::new("HOOK_SECRET").unwrap()),
            secret_file: Some(SecretFile::parse("x").unwrap()),
            bearer_token_env: Some(EnvVar::new("TOKEN").unwrap()),
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
