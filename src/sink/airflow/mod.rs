//! The `airflow` sink: Airflow 3 asset events through the REST API
//! (`POST /api/v2/assets/events`), so that a DAG scheduled on the asset runs: one per
//! highwater event, or one per batch (`emit: batch`).
//!
//! The API takes a numeric asset id; the watcher names the asset by URI (or name).
//! Before each batch the sink asks which DAGs consume the asset ([`asset`]); tokens
//! come from `POST /auth/token` and are fetched again, once, when Airflow answers 401
//! ([`api`]). Airflow does not deduplicate asset events, so the sink avoids repeats
//! itself: an event whose POST got no usable answer is looked up by its id among the
//! asset's recent events before it is sent again, and a retried batch skips the
//! events Airflow already took ([`events`]). After each batch, a task makes sure the
//! consuming DAGs have a run that includes its last event ([`coverage`]).
//!
//! Every event carries its highwater id in `extra.event_id`, the same on every
//! redelivery, for the DAG to drop what repeats anyway.

mod api;
mod asset;
mod coverage;
mod events;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use self::api::{Api, Auth, Failed};
use self::asset::{Asset, AssetRef, Current};
use self::coverage::{Coverage, Target};
use self::events::{PostError, Posted, Unit};
use super::http;
use super::webhook::webhook_id;
use super::{Acked, BuildError, Checked, Delivery, Sink, SinkKind};
use crate::event::Encoded;
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
    /// field of the item (`"{key}"` for an `s3` object, `"{relative_path}"` for a
    /// `local_dir` file), `{{` and `}}` are literal braces. `check` refuses a field the
    /// source's items never have. Default: no partition key.
    #[serde(default)]
    pub partition_key: Option<Template>,
    /// How long one request may take, connecting included.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How long to wait before trying again when Airflow cannot take events until an
    /// operator acts: the asset does not exist (no DAG declares it yet), no DAG is
    /// scheduled on it, or the credentials are refused. Events are held, never
    /// dropped, meanwhile.
    #[serde(default = "default_slow_retry")]
    pub slow_retry: HumanDuration,
    /// `event` (default): one asset event per highwater event. `batch`: one asset event
    /// per delivered batch, its events listed in `extra.events`.
    #[serde(default)]
    pub emit: Emit,
    /// Most asset events posted per second, so that a first run over a large bucket
    /// does not flood Airflow. Default 20.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// After each batch, make sure every DAG consuming the asset has a run that
    /// includes the batch's last event, and post that event again when Airflow left it
    /// without one (see docs/reference/airflow.md). Default true.
    #[serde(default = "default_ensure_runs")]
    pub ensure_runs: bool,
}

/// How many asset events a batch becomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// One asset event per highwater event.
    #[default]
    Event,
    /// One asset event per delivered batch.
    Batch,
}

fn default_rate_limit() -> u32 {
    20
}

fn default_ensure_runs() -> bool {
    true
}

/// Most asset events per second `rate_limit` allows.
const MAX_RATE_LIMIT: u32 = 10_000;

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
        if self.rate_limit == 0 || self.rate_limit > MAX_RATE_LIMIT {
            errors.push((
                "rate_limit".into(),
                format!("must be between 1 and {MAX_RATE_LIMIT} events per second"),
            ));
        }
        if self.emit == Emit::Batch && self.partition_key.is_some() {
            errors.push((
                "partition_key".into(),
                "is made from one item, and `emit: batch` posts one event for many".into(),
            ));
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

    fn item_templates(&self) -> Vec<(&'static str, &Template)> {
        self.partition_key.iter().map(|t| ("partition_key", t)).collect()
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
    emit: Emit,
    /// Spaces the POSTs by `rate_limit`.
    pacer: Pacer,
    /// Whether to watch each batch's last event into a DAG run.
    ensure_runs: bool,
    /// The task doing that, started with the first delivery.
    coverage: Option<Coverage>,
    /// Asset events whose POST may have reached Airflow without an answer, by key:
    /// looked up before they are posted again.
    doubts: HashMap<String, Doubt>,
    /// Nothing delivered yet by this sink: the first delivery may be the rest of a
    /// batch that a process which stopped had partly posted (after the progress it
    /// last stored), so its events are looked up first.
    fresh: bool,
}

/// A POST whose outcome is unknown.
#[derive(Debug, Clone, Copy)]
struct Doubt {
    /// No copy of the event in Airflow is stamped earlier than this (with room for
    /// clocks that disagree).
    since: DateTime<Utc>,
    /// When the request's own deadline passes: a copy committed slowly is visible then.
    settled: tokio::time::Instant,
}

/// How far Airflow's clock may lag ours when an event is looked up.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// Spaces requests evenly: at most `per_second` a second, no bursts.
struct Pacer {
    interval: Duration,
    next: Option<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_second: u32) -> Self {
        Pacer { interval: Duration::from_secs(1) / per_second.max(1), next: None }
    }

    /// When a request wanted at `now` may go; the one after it waits an interval more.
    fn slot(&mut self, now: tokio::time::Instant) -> tokio::time::Instant {
        let at = self.next.map_or(now, |next| next.max(now));
        self.next = Some(at + self.interval);
        at
    }

    async fn wait(&mut self) {
        let at = self.slot(tokio::time::Instant::now());
        tokio::time::sleep_until(at).await;
    }
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
            emit: config.emit,
            pacer: Pacer::new(config.rate_limit),
            // Partition keys queue runs per partition, not by the queue this watches.
            ensure_runs: config.ensure_runs && config.partition_key.is_none(),
            coverage: None,
            doubts: HashMap::new(),
            fresh: true,
        })
    }

    /// The asset events a batch becomes.
    fn units(&self, events: &[Encoded]) -> Result<Vec<Unit>, Failed> {
        match self.emit {
            Emit::Batch => {
                let Some(first) = events.first() else { return Ok(Vec::new()) };
                let key = webhook_id(events);
                let extra = events::batch_extra(events, &key)?;
                Ok(vec![Unit {
                    key,
                    field: events::BATCH_ID,
                    extra,
                    partition_key: None,
                    emitted_at: first.emitted_at,
                    events: events.len(),
                }])
            }
            Emit::Event => events
                .iter()
                .map(|event| {
                    let partition_key = match &self.partition_key {
                        // Only a template reads the item as values.
                        Some(template) => {
                            let item: serde_json::Value = serde_json::from_str(events::item_of(event)?.get())
                                .map_err(|e| {
                                    Delivery::permanent(format!("cannot read event {}: {e}", event.id))
                                })?;
                            Some(template.render(&item).map_err(|message| {
                                Delivery::permanent(format!("event {}: partition_key: {message}", event.id))
                            })?)
                        }
                        None => None,
                    };
                    Ok(Unit {
                        key: event.id.clone(),
                        field: events::EVENT_ID,
                        extra: events::event_extra(event)?,
                        partition_key,
                        emitted_at: event.emitted_at,
                        events: 1,
                    })
                })
                .collect(),
        }
    }

    /// The units Airflow may already have: those whose earlier POST got no answer and,
    /// in a sink's first delivery, all of them. Looked up together once the last of
    /// those requests' deadlines passed; returns the keys Airflow has.
    async fn already_posted(
        &mut self,
        asset_id: i64,
        units: &[Unit],
    ) -> Result<HashMap<String, Posted>, Failed> {
        let doubted: Vec<(&Unit, Doubt)> = units
            .iter()
            .filter_map(|unit| match self.doubts.get(&unit.key) {
                Some(doubt) => Some((unit, *doubt)),
                None if self.fresh => Some((
                    unit,
                    Doubt { since: unit.emitted_at - CLOCK_SLACK, settled: tokio::time::Instant::now() },
                )),
                None => None,
            })
            .collect();
        let (Some(settled), Some(since)) =
            (doubted.iter().map(|(_, d)| d.settled).max(), doubted.iter().map(|(_, d)| d.since).min())
        else {
            return Ok(HashMap::new());
        };
        tokio::time::sleep_until(settled).await;
        let keys: HashSet<&str> = doubted.iter().map(|(u, _)| u.key.as_str()).collect();
        let found = events::find(&mut self.api, asset_id, units[0].field, &keys, since).await?;
        self.doubts.clear();
        Ok(found)
    }

    /// Posts the asset events Airflow does not have yet, in order, counting each that
    /// Airflow has into `acked`. Returns the last one Airflow has, with its index.
    async fn post_all(
        &mut self,
        current: &mut Current,
        units: &[Unit],
        acked: &Acked,
    ) -> Result<Option<(Posted, usize)>, Failed> {
        // Only what this delivery carries can be in doubt now.
        self.doubts.retain(|key, _| units.iter().any(|u| u.key == *key));
        let present = self.already_posted(current.id, units).await?;
        self.fresh = false;
        let mut last = None;
        let mut looked_again = false;
        let mut i = 0;
        while i < units.len() {
            let unit = &units[i];
            if let Some(posted) = present.get(&unit.key) {
                // `skipped`: a field log queries (and the tests) can match.
                tracing::info!(event = %unit.key, skipped = true, "Airflow already has this asset event; not posting it again.");
                acked.add(unit.events);
                last = Some((posted.clone(), i));
                i += 1;
                continue;
            }
            self.pacer.wait().await;
            let started = Utc::now();
            let settled = tokio::time::Instant::now() + self.api.timeout;
            match events::post(&mut self.api, current.id, &unit.extra, unit.partition_key.as_deref()).await {
                Ok(posted) => {
                    tracing::debug!(event = %unit.key, asset_id = current.id, airflow_id = posted.id, "Posted asset event.");
                    acked.add(unit.events);
                    last = Some((posted, i));
                    i += 1;
                }
                Err(PostError::Unknown(failed)) => {
                    self.doubts.insert(unit.key.clone(), Doubt { since: started - CLOCK_SLACK, settled });
                    return Err(failed);
                }
                Err(PostError::AssetGone) if !looked_again => {
                    // Removed, or re-created under a new id: look it up and go on.
                    tracing::info!(asset = %self.asset.name, id = current.id, "Airflow no longer knows the asset id; looking it up again.");
                    self.asset.forget();
                    *current = self.asset.current(&mut self.api).await?;
                    looked_again = true;
                }
                Err(PostError::AssetGone) => {
                    self.asset.forget();
                    return Err(self.api.needs_operator(format!(
                        "{} answered 404 for {} (id {})",
                        self.api.shown("/api/v2/assets/events"),
                        self.asset.name,
                        current.id
                    )));
                }
                Err(PostError::Failed(failed)) => return Err(failed),
            }
        }
        Ok(last)
    }

    /// Hands the batch's last asset event to the task that sees it into a DAG run.
    fn watch_coverage(&mut self, current: &Current, unit: &Unit, posted: Posted) {
        if !self.ensure_runs {
            return;
        }
        let coverage = self.coverage.get_or_insert_with(|| Coverage::start(self.api.fork()));
        coverage.watch(Target {
            asset_id: current.id,
            key: unit.key.clone(),
            extra: unit.extra.clone(),
            posted,
            consumers: current.consumers.clone(),
        });
    }
}

#[async_trait]
impl Sink for AirflowSink {
    async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery {
        let units = match self.units(events) {
            Ok(units) => units,
            Err(failed) => return failed,
        };
        if units.is_empty() {
            return Delivery::Acknowledged;
        }
        // Which DAGs consume the asset now: none holds the batch.
        let mut current = match self.asset.current(&mut self.api).await {
            Ok(current) => current,
            Err(failed) => return failed,
        };
        match self.post_all(&mut current, &units, acked).await {
            Ok(last) => {
                if let Some((posted, index)) = last {
                    self.watch_coverage(&current, &units[index], posted);
                }
                Delivery::Acknowledged
            }
            Err(failed) => failed,
        }
    }

    async fn recovered(&mut self) {
        // Only an Airflow that was out of reach can be seen coming back; one that
        // answered with an error of its own (a 500 from its database) is retried at the
        // backoff's pace, or the retries would follow each other a second apart.
        if !self.api.unreachable {
            return std::future::pending().await;
        }
        // Airflow's health endpoint needs no credentials and costs it nothing.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if self.api.healthy().await {
                return;
            }
        }
    }

    async fn check(&mut self) -> Result<Checked, String> {
        let current =
            self.asset.current(&mut self.api).await.map_err(|failed| failed.reason().to_string())?;
        let mut checked = Checked::default();
        checked.notes.push(format!(
            "{} is asset id {}, consumed by {}",
            self.asset.name,
            current.id,
            current.consumers.join(", ")
        ));
        for dag_id in &current.consumers {
            let dag = coverage::fetch_dag(&mut self.api, dag_id)
                .await
                .map_err(|failed| failed.reason().to_string())?;
            let Some(dag) = dag else { continue };
            if dag.is_paused {
                checked
                    .warnings
                    .push(format!("DAG {dag_id} is paused: events posted meanwhile start no run of it"));
            }
            match (self.partition_key.is_some(), dag.timetable_partitioned) {
                (true, false) => checked.warnings.push(format!(
                    "DAG {dag_id} is not partitioned: Airflow queues no run of it for events with a \
                     partition key; remove `partition_key` or partition the DAG"
                )),
                (false, true) => checked.warnings.push(format!(
                    "DAG {dag_id} is partitioned: Airflow queues no run of it for events without a \
                     partition key; set `partition_key`"
                )),
                _ => {}
            }
        }
        Ok(checked)
    }
}
