//! The `airflow` sink: one Airflow 3 asset event per highwater event, through the REST
//! API (`POST /api/v2/assets/events`), so that a DAG scheduled on the asset runs.
//!
//! The API takes a numeric asset id; the watcher names the asset by URI (or name). The
//! id is looked up with `GET /api/v2/assets?uri_pattern=…` (a case-insensitive
//! substring match, so the exact URI is picked here), cached, and looked up again when
//! Airflow answers 404 ([`asset`]). Tokens come from `POST /auth/token` and are fetched
//! again, once, when Airflow answers 401 ([`api`]).
//!
//! The API has no idempotency of its own: every event carries its highwater id in
//! `extra.event_id`, the same on every redelivery, for the DAG to drop repeats.

mod api;
mod asset;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use self::api::{Api, Auth};
use self::asset::{Asset, AssetRef};
use super::http;
use super::{Acked, BuildError, Checked, Delivery, Sink, SinkKind};
use crate::event::{Change, Encoded};
use crate::value::{EnvVar, HttpUrl, HumanDuration, Kind, SecretFile, SecretRef, Template};

/// `sink: {type: airflow}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirflowConfig {
    /// Airflow's API server, e.g. `https://airflow.example.com`; `/auth/token` and
    /// `/api/v2/…` are called under it.
    pub base_url: HttpUrl,
    /// User whose password is exchanged for a token at `POST /auth/token`.
    #[serde(default)]
    pub username: Option<String>,
    /// Environment variable holding the password of `username`.
    #[serde(default)]
    pub password_env: Option<EnvVar>,
    /// File holding the password of `username` (instead of `password_env`), or
    /// `credential:NAME` for a systemd credential. Read each time a token is fetched:
    /// a fixed password needs no reload.
    #[serde(default)]
    pub password_file: Option<SecretFile>,
    /// Environment variable holding a token to send as is (instead of
    /// `username`/`password_*`). A token cannot be renewed by the sink.
    #[serde(default)]
    pub token_env: Option<EnvVar>,
    /// File holding such a token (instead of `token_env`), or `credential:NAME`; read
    /// for every request.
    #[serde(default)]
    pub token_file: Option<SecretFile>,
    /// The asset's URI, exactly as the DAG declares it
    /// (`Asset(name="…", uri="s3://bucket/landing")`).
    #[serde(default)]
    pub asset_uri: Option<String>,
    /// The asset's name (instead of `asset_uri`).
    #[serde(default)]
    pub asset_name: Option<String>,
    /// The event's partition key, built from the item: `{field}` is replaced by that
    /// field of the item (`"{relative_path}"`, `"day={date}"`), `{{` and `}}` are
    /// literal braces. Default: no partition key.
    #[serde(default)]
    pub partition_key: Option<Template>,
    /// How long one request may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How long to wait before trying again when Airflow cannot take events until an
    /// operator acts: the asset does not exist (no DAG declares it yet) or the
    /// credentials are refused. Events are held, never dropped, meanwhile.
    #[serde(default = "default_slow_retry")]
    pub slow_retry: HumanDuration,
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

fn default_slow_retry() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

impl AirflowConfig {
    fn password(&self) -> Option<SecretRef> {
        SecretRef::from_pair("password", self.password_env.as_ref(), self.password_file.as_ref())
    }

    fn token(&self) -> Option<SecretRef> {
        SecretRef::from_pair("token", self.token_env.as_ref(), self.token_file.as_ref())
    }

    fn asset(&self) -> AssetRef {
        match (&self.asset_uri, &self.asset_name) {
            (Some(uri), _) => AssetRef::Uri(uri.clone()),
            (None, Some(name)) => AssetRef::Name(name.clone()),
            (None, None) => AssetRef::Uri(String::new()),
        }
    }
}

impl Kind for AirflowConfig {
    const TAG: &'static str = "airflow";
}

impl SinkKind for AirflowConfig {
    /// Never a secret.
    fn describe(&self) -> String {
        let url = &self.base_url;
        let auth = match (&self.username, self.token().is_some()) {
            (Some(user), _) => format!(", as {user}"),
            (None, true) => ", with a token".to_string(),
            (None, false) => String::new(),
        };
        format!("{} {url} {}{auth}", Self::TAG, self.asset())
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        match (&self.asset_uri, &self.asset_name) {
            (None, None) => {
                errors.push(("asset_uri".into(), "name the asset with `asset_uri` or `asset_name`".into()))
            }
            (Some(_), Some(_)) => {
                errors.push(("asset_name".into(), "give `asset_uri` or `asset_name`, not both".into()))
            }
            (Some(v), None) | (None, Some(v)) if v.trim().is_empty() => {
                let key = if self.asset_uri.is_some() { "asset_uri" } else { "asset_name" };
                errors.push((key.into(), "must not be empty".into()));
            }
            _ => {}
        }
        errors.extend(SecretRef::validate_pair(
            "password",
            self.password_env.as_ref(),
            self.password_file.as_ref(),
        ));
        errors.extend(SecretRef::validate_pair("token", self.token_env.as_ref(), self.token_file.as_ref()));
        let (user, password, token) =
            (self.username.is_some(), self.password().is_some(), self.token().is_some());
        if user && !password {
            errors.push(("username".into(), "needs `password_env` or `password_file`".into()));
        }
        if !user && password {
            errors.push(("password_env".into(), "needs `username`".into()));
        }
        if user && token {
            errors.push(("token_env".into(), "give `username`/`password_*` or `token_*`, not both".into()));
        }
        for (key, value) in [("timeout", self.timeout), ("slow_retry", self.slow_retry)] {
            if value.0.is_zero() {
                errors.push((key.into(), "must be more than 0".into()));
            }
        }
        errors
    }

    fn check_host(&self) -> Vec<(String, String)> {
        http::host_problem(self.base_url.url())
            .map(|problem| ("base_url".to_string(), problem))
            .into_iter()
            .collect()
    }

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(AirflowSink::new(self)?))
    }
}

/// The runtime `airflow` sink.
pub struct AirflowSink {
    /// Requests to Airflow's API, with their credentials.
    api: Api,
    /// The asset events are posted to, and its id once looked up.
    asset: Asset,
    /// Makes each event's partition key, when configured.
    partition_key: Option<Template>,
}

impl AirflowSink {
    /// Builds the sink and checks that its secret can be read (it is read again each
    /// time it is used). Nothing is contacted.
    pub fn new(config: &AirflowConfig) -> Result<Self, BuildError> {
        let (password, token) = (config.password(), config.token());
        for secret in password.iter().chain(token.iter()) {
            secret.read().map_err(|e| BuildError { message: e.to_string() })?;
        }
        let auth = match (&config.username, password, token) {
            (Some(username), Some(password), _) => {
                Auth::Password { username: username.clone(), password, token: None }
            }
            (_, _, Some(token)) => Auth::Static(token),
            _ => Auth::None,
        };
        Ok(AirflowSink {
            api: Api::new(&config.base_url, auth, config.timeout.0, config.slow_retry.0),
            asset: Asset::new(config.asset()),
            partition_key: config.partition_key.clone(),
        })
    }

    /// Posts one asset event; looks the asset up again once if Airflow says it is gone.
    async fn post(&mut self, event: &Encoded) -> Delivery {
        // The item goes into `extra` as the event's text holds it (exact, not encoded
        // again); only a partition key template reads it as values.
        #[derive(Deserialize)]
        struct ItemOf<'a> {
            #[serde(borrow)]
            item: &'a RawValue,
        }
        let item = match serde_json::from_str::<ItemOf<'_>>(event.text()) {
            Ok(found) => found.item,
            Err(e) => return Delivery::permanent(format!("cannot read event {}: {e}", event.id)),
        };
        let partition_key = match &self.partition_key {
            Some(template) => match serde_json::from_str(item.get()).map(|item| template.render(&item)) {
                Ok(Ok(key)) => Some(key),
                Ok(Err(message)) => {
                    return Delivery::permanent(format!("event {}: partition_key: {message}", event.id));
                }
                Err(e) => return Delivery::permanent(format!("cannot read event {}: {e}", event.id)),
            },
            None => None,
        };
        let extra = Extra {
            event_id: &event.id,
            namespace: &event.namespace,
            watcher: &event.watcher,
            source: &event.source,
            change: event.change,
            item,
            emitted_at: event.emitted_at,
        };
        let what = self.api.shown("/api/v2/assets/events");
        let url = self.api.url("/api/v2/assets/events");
        let mut looked_again = false;
        loop {
            let asset_id = match self.asset.id(&mut self.api).await {
                Ok(id) => id,
                Err(failed) => return failed,
            };
            let body = AssetEvent { asset_id, extra: &extra, partition_key: partition_key.as_deref() };
            let response = match self.api.send(&what, |client| client.post(url.clone()).json(&body)).await {
                Ok(response) => response,
                Err(failed) => return failed,
            };
            if response.status() == StatusCode::NOT_FOUND && !looked_again {
                // The asset was removed or re-created under a new id.
                tracing::info!(asset = %self.asset.name, id = asset_id, "Airflow no longer knows the asset id; looking it up again.");
                self.asset.forget();
                looked_again = true;
                continue;
            }
            if response.status() == StatusCode::NOT_FOUND {
                self.asset.forget();
                return self
                    .api
                    .needs_operator(format!("{what} answered 404 for {} (id {asset_id})", self.asset.name));
            }
            if !response.status().is_success() {
                return self.api.failure(response, &what).await;
            }
            tracing::debug!(event = %event.id, asset_id, "Posted asset event.");
            return Delivery::Acknowledged;
        }
    }
}

/// The `extra` of an asset event: the highwater event's fields, its item as encoded.
#[derive(Serialize)]
struct Extra<'a> {
    event_id: &'a str,
    namespace: &'a str,
    watcher: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    change: Change,
    item: &'a RawValue,
    emitted_at: chrono::DateTime<chrono::Utc>,
}

/// The body of `POST /api/v2/assets/events`.
#[derive(Serialize)]
struct AssetEvent<'a> {
    asset_id: i64,
    extra: &'a Extra<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition_key: Option<&'a str>,
}

#[async_trait]
impl Sink for AirflowSink {
    async fn deliver(&mut self, events: &[Encoded], _acked: &Acked) -> Delivery {
        for event in events {
            // One event per request (the API takes no batches), in order; a failure
            // part-way sends the whole batch again later, with the same event ids.
            match self.post(event).await {
                Delivery::Acknowledged => {}
                failed => return failed,
            }
        }
        Delivery::Acknowledged
    }

    async fn check(&mut self) -> Result<Checked, String> {
        self.asset
            .id(&mut self.api)
            .await
            .map(|_| Checked::default())
            .map_err(|failed| failed.reason().to_string())
    }
}
