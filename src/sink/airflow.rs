//! The `airflow` sink: one Airflow 3 asset event per highwater event, through the REST
//! API (`POST /api/v2/assets/events`), so that a DAG scheduled on the asset runs.
//!
//! The API takes a numeric asset id; the watcher names the asset by URI (or name). The
//! id is looked up with `GET /api/v2/assets?uri_pattern=…` (a case-insensitive
//! substring match, so the exact URI is picked here), cached, and looked up again when
//! Airflow answers 404. Tokens come from `POST /auth/token` and are fetched again, once,
//! when Airflow answers 401.
//!
//! The API has no idempotency of its own: every event carries its highwater id in
//! `extra.event_id`, the same on every redelivery, for the DAG to drop repeats.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::json;

use super::http::{self, Secret, SecretKeys};
use super::{BuildError, Delivery, Sink, SinkKind, classify_http_status};
use crate::event::Event;
use crate::value::{HttpUrl, HumanDuration, Kind, Template};

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
    pub password_env: Option<String>,
    /// File holding the password of `username` (instead of `password_env`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding a token to send as is (instead of
    /// `username`/`password_*`). A token cannot be renewed by the sink.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding such a token (instead of `token_env`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
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
    fn password_keys(&self) -> SecretKeys<'_> {
        SecretKeys { key: "password", env: self.password_env.as_deref(), file: self.password_file.as_deref() }
    }

    fn token_keys(&self) -> SecretKeys<'_> {
        SecretKeys { key: "token", env: self.token_env.as_deref(), file: self.token_file.as_deref() }
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
        let auth = match (&self.username, self.token_keys().is_set()) {
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
        errors.extend(self.password_keys().validate());
        errors.extend(self.token_keys().validate());
        let (user, password, token) =
            (self.username.is_some(), self.password_keys().is_set(), self.token_keys().is_set());
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

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(AirflowSink::new(self)?))
    }
}

/// How the watcher names its asset.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AssetRef {
    Uri(String),
    Name(String),
}

impl std::fmt::Display for AssetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetRef::Uri(uri) => write!(f, "asset URI `{uri}`"),
            AssetRef::Name(name) => write!(f, "asset name `{name}`"),
        }
    }
}

/// How requests authenticate.
enum Auth {
    /// No `Authorization` header (an Airflow that lets everyone in).
    None,
    /// A token given in the config.
    Static(Secret),
    /// A username and password exchanged for a token, kept until Airflow refuses it.
    Password { username: String, password: Secret, token: Option<Secret> },
}

/// Why a request did not get the answer it needed: the delivery outcome to report.
type Failed = Delivery;

/// The runtime `airflow` sink.
pub struct AirflowSink {
    client: reqwest::Client,
    base: reqwest::Url,
    /// `base` as logs may show it.
    shown: String,
    auth: Auth,
    asset: AssetRef,
    /// The asset's id, once looked up.
    asset_id: Option<i64>,
    partition_key: Option<Template>,
    timeout: Duration,
    slow_retry: Duration,
}

impl AirflowSink {
    /// Builds the sink: reads the secrets and prepares the client. Nothing is contacted.
    pub fn new(config: &AirflowConfig) -> Result<Self, BuildError> {
        let auth = match (&config.username, config.password_keys().load()?, config.token_keys().load()?) {
            (Some(username), Some(password), _) => {
                Auth::Password { username: username.clone(), password, token: None }
            }
            (_, _, Some(token)) => Auth::Static(token),
            _ => Auth::None,
        };
        Ok(AirflowSink {
            client: http::client(config.timeout.0)?,
            shown: config.base_url.to_string(),
            base: config.base_url.url().clone(),
            auth,
            asset: config.asset(),
            asset_id: None,
            partition_key: config.partition_key.clone(),
            timeout: config.timeout.0,
            slow_retry: config.slow_retry.0,
        })
    }

    /// `base_url` joined with an absolute API path (keeping any path prefix of its own).
    fn url(&self, path: &str) -> reqwest::Url {
        let mut url = self.base.clone();
        let joined = format!("{}{path}", self.base.path().trim_end_matches('/'));
        url.set_path(&joined);
        url.set_query(None);
        url
    }

    /// A failure that an operator must fix; the batch is held and retried slowly.
    fn needs_operator(&self, reason: String) -> Failed {
        Delivery::RetryLater { reason, after: Some(self.slow_retry) }
    }

    /// The token for the next request, fetching one if needed.
    async fn token(&mut self) -> Result<Option<String>, Failed> {
        let (username, password) = match &self.auth {
            Auth::None => return Ok(None),
            Auth::Static(token) => return Ok(Some(token.expose().to_string())),
            Auth::Password { token: Some(token), .. } => return Ok(Some(token.expose().to_string())),
            Auth::Password { username, password, token: None } => (username.clone(), password.clone()),
        };
        let what = format!("{} /auth/token", self.shown);
        let response = self
            .client
            .post(self.url("/auth/token"))
            .json(&json!({"username": username, "password": password.expose()}))
            .send()
            .await
            .map_err(|e| http::transport_failure(e, &what, self.timeout))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(self.needs_operator(format!(
                "{what} refused the password of user `{username}` (HTTP {}); check username and password_*",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(http::with_body(classify_http_status(status.as_u16(), None, &what), &body));
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: String,
        }
        let token = response
            .json::<TokenResponse>()
            .await
            .map_err(|_| Delivery::retry(format!("{what} answered without an `access_token`")))?
            .access_token;
        if let Auth::Password { token: slot, .. } = &mut self.auth {
            *slot = Some(Secret::new(token.clone()));
        }
        Ok(Some(token))
    }

    /// Sends a request built by `build`, with the current token; on 401 fetches a new
    /// token once and sends it again. Returns any HTTP answer but 401.
    async fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failed> {
        let mut renewed = false;
        loop {
            let mut request = build(&self.client);
            if let Some(token) = self.token().await? {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        Delivery::permanent("the Airflow token holds characters a header cannot carry")
                    })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            let response =
                request.send().await.map_err(|e| http::transport_failure(e, what, self.timeout))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            match &mut self.auth {
                // Expired: one new token, one more try.
                Auth::Password { token, .. } if !renewed => {
                    // `token`: a field log queries (and the end-to-end test) can match.
                    tracing::debug!(url = %self.shown, token = "refused", "Airflow refused the token (expired?); fetching a new one.");
                    *token = None;
                    renewed = true;
                }
                _ => {
                    return Err(self.needs_operator(format!(
                        "{what} answered HTTP 401: the token is refused; check the sink's credentials"
                    )));
                }
            }
        }
    }

    /// The asset's id: cached, else looked up by exact URI (or name) among the
    /// substring matches Airflow returns, page by page.
    async fn asset_id(&mut self) -> Result<i64, Failed> {
        if let Some(id) = self.asset_id {
            return Ok(id);
        }
        let (param, wanted, field) = match &self.asset {
            AssetRef::Uri(uri) => ("uri_pattern", uri.clone(), "uri"),
            AssetRef::Name(name) => ("name_pattern", name.clone(), "name"),
        };
        const PAGE: usize = 100;
        let what = format!("{} /api/v2/assets", self.shown);
        let mut offset = 0usize;
        loop {
            let mut url = self.url("/api/v2/assets");
            url.query_pairs_mut()
                .append_pair(param, &wanted)
                .append_pair("limit", &PAGE.to_string())
                .append_pair("offset", &offset.to_string())
                .append_pair("order_by", "id");
            let response = self.send(&what, |client| client.get(url.clone())).await?;
            let status = response.status();
            if status == StatusCode::FORBIDDEN {
                return Err(
                    self.needs_operator(format!("{what} answered HTTP 403: the user may not read assets"))
                );
            }
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(http::with_body(classify_http_status(status.as_u16(), None, &what), &body));
            }
            #[derive(Deserialize)]
            struct Page {
                assets: Vec<serde_json::Value>,
                #[serde(default)]
                total_entries: usize,
            }
            let page: Page = response
                .json()
                .await
                .map_err(|e| Delivery::retry(format!("{what} answered unexpected JSON: {e}")))?;
            let found =
                page.assets.iter().find(|a| a.get(field).and_then(|v| v.as_str()) == Some(wanted.as_str()));
            if let Some(id) = found.and_then(|a| a.get("id")).and_then(|v| v.as_i64()) {
                tracing::debug!(asset = %self.asset, id, "Resolved Airflow asset.");
                self.asset_id = Some(id);
                return Ok(id);
            }
            offset += page.assets.len();
            if page.assets.is_empty() || offset >= page.total_entries {
                return Err(self.needs_operator(format!(
                    "Airflow at {} has no {} (no active DAG declares it yet?); events are held and retried",
                    self.shown, self.asset
                )));
            }
        }
    }

    /// Posts one asset event; looks the asset up again once if Airflow says it is gone.
    async fn post(&mut self, event: &Event) -> Delivery {
        let item = match serde_json::to_value(&event.item) {
            Ok(item) => item,
            Err(e) => return Delivery::permanent(format!("cannot encode event {}: {e}", event.id)),
        };
        let partition_key = match &self.partition_key {
            Some(template) => match template.render(&item) {
                Ok(key) => Some(key),
                Err(message) => {
                    return Delivery::permanent(format!("event {}: partition_key: {message}", event.id));
                }
            },
            None => None,
        };
        let extra = json!({
            "event_id": event.id,
            "namespace": event.namespace,
            "watcher": event.watcher,
            "source": event.source,
            "type": event.change,
            "item": item,
            "emitted_at": event.emitted_at,
        });
        let what = format!("{} /api/v2/assets/events", self.shown);
        let url = self.url("/api/v2/assets/events");
        let mut looked_again = false;
        loop {
            let asset_id = match self.asset_id().await {
                Ok(id) => id,
                Err(failed) => return failed,
            };
            let mut body = json!({"asset_id": asset_id, "extra": extra});
            if let Some(key) = &partition_key {
                body["partition_key"] = json!(key);
            }
            let response = match self.send(&what, |client| client.post(url.clone()).json(&body)).await {
                Ok(response) => response,
                Err(failed) => return failed,
            };
            if response.status() == StatusCode::NOT_FOUND && !looked_again {
                // The asset was removed or re-created under a new id.
                tracing::info!(asset = %self.asset, id = asset_id, "Airflow no longer knows the asset id; looking it up again.");
                self.asset_id = None;
                looked_again = true;
                continue;
            }
            if response.status() == StatusCode::NOT_FOUND {
                self.asset_id = None;
                return self
                    .needs_operator(format!("{what} answered 404 for {} (id {asset_id})", self.asset));
            }
            let outcome = http::classify_response(response, &what).await;
            if outcome == Delivery::Acknowledged {
                tracing::debug!(event = %event.id, asset_id, "Posted asset event.");
            }
            return outcome;
        }
    }
}

#[async_trait]
impl Sink for AirflowSink {
    async fn deliver(&mut self, events: &[Event]) -> Delivery {
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

    async fn check(&mut self) -> Result<(), String> {
        self.asset_id().await.map(|_| ()).map_err(|failed| match failed {
            Delivery::RetryLater { reason, .. } | Delivery::Permanent { reason } => reason,
            Delivery::Acknowledged => String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::extract::{Query, State};
    use axum::http::{HeaderMap, StatusCode as Status};
    use axum::response::{IntoResponse, Response};

    use super::*;
    use crate::event::{Change, FileItem, Item};

    /// A stand-in for Airflow's API with just the calls the sink makes, answering the
    /// way Airflow 3.3 does.
    #[derive(Default)]
    struct Mock {
        tokens_issued: usize,
        /// The token currently accepted.
        valid_token: String,
        /// Assets: (id, name, uri).
        assets: Vec<(i64, String, String)>,
        lookups: usize,
        /// Events accepted: (asset id, body).
        events: Vec<(i64, serde_json::Value)>,
    }

    type Shared = Arc<Mutex<Mock>>;

    async fn token(State(mock): State<Shared>, Json(body): Json<serde_json::Value>) -> Response {
        if body["username"] != "admin" || body["password"] != "pw" {
            return (Status::UNAUTHORIZED, "Invalid credentials").into_response();
        }
        let mut mock = mock.lock().unwrap();
        mock.tokens_issued += 1;
        mock.valid_token = format!("t{}", mock.tokens_issued);
        (Status::CREATED, Json(json!({"access_token": mock.valid_token}))).into_response()
    }

    fn authorized(mock: &Mock, headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {}", mock.valid_token))
    }

    async fn assets(
        State(mock): State<Shared>,
        headers: HeaderMap,
        Query(query): Query<std::collections::HashMap<String, String>>,
    ) -> Response {
        let mut mock = mock.lock().unwrap();
        if !authorized(&mock, &headers) {
            return (Status::UNAUTHORIZED, "Token Expired").into_response();
        }
        mock.lookups += 1;
        let pattern = query.get("uri_pattern").cloned().unwrap_or_default().to_lowercase();
        let offset: usize = query.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
        let limit: usize = query.get("limit").and_then(|o| o.parse().ok()).unwrap_or(50);
        let matching: Vec<_> = mock
            .assets
            .iter()
            .filter(|(_, _, uri)| uri.to_lowercase().contains(&pattern))
            .map(|(id, name, uri)| json!({"id": id, "name": name, "uri": uri}))
            .collect();
        let page: Vec<_> = matching.iter().skip(offset).take(limit).cloned().collect();
        Json(json!({"assets": page, "total_entries": matching.len()})).into_response()
    }

    async fn events(
        State(mock): State<Shared>,
        headers: HeaderMap,
        Json(body): Json<serde_json::Value>,
    ) -> Response {
        let mut mock = mock.lock().unwrap();
        if !authorized(&mock, &headers) {
            return (Status::UNAUTHORIZED, "Token Expired").into_response();
        }
        let id = body["asset_id"].as_i64().unwrap_or(-1);
        if !mock.assets.iter().any(|(a, _, _)| *a == id) {
            return (Status::NOT_FOUND, format!("Asset with ID: `{id}` was not found")).into_response();
        }
        mock.events.push((id, body));
        Json(json!({"id": mock.events.len()})).into_response()
    }

    async fn start(mock: Mock) -> (String, Shared) {
        let shared = Arc::new(Mutex::new(mock));
        let app = axum::Router::new()
            .route("/auth/token", axum::routing::post(token))
            .route("/api/v2/assets", axum::routing::get(assets))
            .route("/api/v2/assets/events", axum::routing::post(events))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}"), shared)
    }

    fn config(base_url: &str) -> AirflowConfig {
        AirflowConfig {
            base_url: HttpUrl::parse(base_url).unwrap(),
            username: Some("admin".into()),
            password_env: None,
            password_file: None,
            token_env: None,
            token_file: None,
            asset_uri: Some("s3://landing/orders".into()),
            asset_name: None,
            partition_key: None,
            timeout: HumanDuration(Duration::from_secs(5)),
            slow_retry: HumanDuration(Duration::from_secs(42)),
        }
    }

    fn sink(config: &AirflowConfig) -> AirflowSink {
        let mut sink = AirflowSink::new(config).unwrap();
        sink.auth =
            Auth::Password { username: "admin".into(), password: Secret::new("pw".into()), token: None };
        sink
    }

    fn event(id: &str, path: &str) -> Event {
        Event {
            id: id.into(),
            namespace: "ns".into(),
            watcher: "w".into(),
            source: "local_dir".into(),
            change: Change::Created,
            item: Item::File(FileItem {
                path: format!("in/{path}"),
                relative_path: path.into(),
                size: 3,
                modified: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            }),
            watermark: serde_json::Value::Null,
            emitted_at: chrono::DateTime::from_timestamp(1_700_000_001, 0).unwrap(),
        }
    }

    fn assets_list() -> Vec<(i64, String, String)> {
        vec![
            (3, "older".into(), "s3://landing/orders-archive".into()),
            (7, "orders".into(), "s3://landing/orders".into()),
            (9, "upper".into(), "S3://LANDING/ORDERS/2".into()),
        ]
    }

    #[tokio::test]
    async fn picks_the_exact_uri_caches_it_and_renews_an_expired_token_once() {
        let (url, mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
        let mut sink = sink(&config(&url));
        assert_eq!(sink.deliver(&[event("e1", "a.csv"), event("e2", "b.csv")]).await, Delivery::Acknowledged);
        {
            let mock = mock.lock().unwrap();
            assert_eq!(mock.tokens_issued, 1);
            assert_eq!(mock.lookups, 1, "the asset id is cached");
            let ids: Vec<_> =
                mock.events.iter().map(|(id, b)| (*id, b["extra"]["event_id"].clone())).collect();
            assert_eq!(ids, [(7, json!("e1")), (7, json!("e2"))]);
            assert_eq!(mock.events[0].1["extra"]["item"]["relative_path"], "a.csv");
            assert!(mock.events[0].1.get("partition_key").is_none());
        }
        // Airflow forgets the token (expiry): one new token, and the event goes.
        mock.lock().unwrap().valid_token = "expired-meanwhile".into();
        assert_eq!(sink.deliver(&[event("e3", "c.csv")]).await, Delivery::Acknowledged);
        let mock = mock.lock().unwrap();
        assert_eq!(mock.tokens_issued, 2);
        assert_eq!(mock.events.len(), 3);
    }

    #[tokio::test]
    async fn a_missing_asset_is_held_and_retried_slowly_and_a_recreated_one_found_again() {
        let (url, mock) = start(Mock::default()).await;
        let mut sink = sink(&config(&url));
        match sink.deliver(&[event("e1", "a.csv")]).await {
            Delivery::RetryLater { reason, after } => {
                assert!(reason.contains("s3://landing/orders"), "{reason}");
                assert_eq!(after, Some(Duration::from_secs(42)));
            }
            other => panic!("expected a slow retry, got {other:?}"),
        }
        // The DAG is deployed: the asset appears.
        mock.lock().unwrap().assets = assets_list();
        assert_eq!(sink.deliver(&[event("e1", "a.csv")]).await, Delivery::Acknowledged);
        // Re-created under a new id: the 404 makes the sink look it up again.
        mock.lock().unwrap().assets = vec![(12, "orders".into(), "s3://landing/orders".into())];
        assert_eq!(sink.deliver(&[event("e2", "b.csv")]).await, Delivery::Acknowledged);
        let mock = mock.lock().unwrap();
        assert_eq!(mock.events.last().unwrap().0, 12);
    }

    #[tokio::test]
    async fn refused_credentials_are_held_not_dropped() {
        let (url, _mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
        let mut sink = sink(&config(&url));
        sink.auth =
            Auth::Password { username: "admin".into(), password: Secret::new("wrong".into()), token: None };
        match sink.deliver(&[event("e1", "a.csv")]).await {
            Delivery::RetryLater { reason, after: Some(_) } => {
                assert!(reason.contains("admin") && !reason.contains("wrong"), "{reason}")
            }
            other => panic!("expected a slow retry, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn partition_keys_come_from_the_item() {
        let (url, mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
        let mut config = config(&url);
        config.partition_key = Some(Template::parse("file={relative_path} {{{size}}}").unwrap());
        let mut sink = sink(&config);
        assert_eq!(sink.deliver(&[event("e1", "a.csv")]).await, Delivery::Acknowledged);
        assert_eq!(mock.lock().unwrap().events[0].1["partition_key"], "file=a.csv {3}");

        config.partition_key = Some(Template::parse("{bucket}").unwrap());
        let mut sink = self::sink(&config);
        assert!(matches!(sink.deliver(&[event("e2", "b.csv")]).await, Delivery::Permanent { .. }));
    }

    #[test]
    fn validation_reports_each_problem_and_describe_hides_secrets() {
        let mut config = config("http://airflow:8080");
        config.asset_name = Some("orders".into());
        config.token_env = Some("AIRFLOW_TOKEN".into());
        let keys: Vec<String> = config.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["asset_name", "username", "token_env"]);
        let mut ok = self::config("http://airflow:8080/");
        ok.password_env = Some("AIRFLOW_PASSWORD".into());
        assert!(ok.validate().is_empty(), "{:?}", ok.validate());
        assert_eq!(ok.describe(), "airflow http://airflow:8080/ asset URI `s3://landing/orders`, as admin");
    }
}
