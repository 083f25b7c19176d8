//! The asset events go to: named by URI or name in the config, known to Airflow's API
//! by a numeric id, and consumed by the DAGs scheduled on it. Before each batch the sink
//! asks Airflow again which DAGs consume it (one request): an asset whose DAG was
//! removed holds the batch instead of taking events that start nothing. The id itself
//! is looked up again among the active assets every few minutes and on every 404.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::api::{Api, Failed};

/// How long a looked-up id is trusted before it is looked up again by URI (or name)
/// among the active assets: an asset re-created under a new id, or no longer active,
/// is noticed within this even when its old id still answers.
const LOOK_UP_EVERY: Duration = Duration::from_secs(120);

/// How the watcher names its asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AssetRef {
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

/// The asset as Airflow's API shows it (the fields the sink reads).
#[derive(Debug, Clone, Deserialize)]
struct AssetDoc {
    id: i64,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uri: String,
    /// The DAGs scheduled on the asset.
    #[serde(default)]
    scheduled_dags: Vec<DagRef>,
}

#[derive(Debug, Clone, Deserialize)]
struct DagRef {
    dag_id: String,
}

/// What a batch needs to know about the asset, as Airflow says it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Current {
    /// The asset's id.
    pub(super) id: i64,
    /// The DAGs scheduled on it; never empty.
    pub(super) consumers: Vec<String>,
}

/// The asset, and its id once looked up.
pub(super) struct Asset {
    /// How the config names it.
    pub(super) name: AssetRef,
    /// Its id and when it was looked up by name.
    id: Option<(i64, Instant)>,
}

impl Asset {
    pub(super) fn new(name: AssetRef) -> Self {
        Asset { name, id: None }
    }

    /// Drops the cached id: Airflow answered 404 for it.
    pub(super) fn forget(&mut self) {
        self.id = None;
    }

    /// The asset's id and consumers now: read by id while the id is fresh, else looked
    /// up by URI (or name) among the active assets. An asset Airflow does not have, or
    /// that no DAG is scheduled on, holds the batch (an operator must deploy or fix the
    /// DAG).
    pub(super) async fn current(&mut self, api: &mut Api) -> Result<Current, Failed> {
        let mut doc = None;
        if let Some((id, at)) = self.id
            && at.elapsed() < LOOK_UP_EVERY
        {
            let what = api.shown(&format!("/api/v2/assets/{id}"));
            doc = api.get_json::<AssetDoc>(api.url(&format!("/api/v2/assets/{id}")), &what).await?;
            if doc.is_none() {
                tracing::info!(asset = %self.name, id, "Airflow no longer knows the asset id; looking it up again.");
                self.id = None;
            }
        }
        let doc = match doc {
            Some(doc) => doc,
            None => self.look_up(api).await?,
        };
        let consumers: Vec<String> = doc.scheduled_dags.into_iter().map(|d| d.dag_id).collect();
        if consumers.is_empty() {
            return Err(api.needs_operator(format!(
                "Airflow at {} has {} (id {}), but no DAG is scheduled on it (was its DAG removed or \
                 changed?); events are held and retried",
                api.base_shown(),
                self.name,
                doc.id
            )));
        }
        Ok(Current { id: doc.id, consumers })
    }

    /// The asset, looked up by exact URI (or name) among the substring matches Airflow
    /// returns for active assets, page by page.
    async fn look_up(&mut self, api: &mut Api) -> Result<AssetDoc, Failed> {
        let (param, wanted) = match &self.name {
            AssetRef::Uri(uri) => ("uri_pattern", uri.clone()),
            AssetRef::Name(name) => ("name_pattern", name.clone()),
        };
        const PAGE: usize = 100;
        let what = api.shown("/api/v2/assets");
        let mut offset = 0usize;
        loop {
            let mut url = api.url("/api/v2/assets");
            url.query_pairs_mut()
                .append_pair(param, &wanted)
                .append_pair("limit", &PAGE.to_string())
                .append_pair("offset", &offset.to_string())
                .append_pair("order_by", "id");
            #[derive(Deserialize)]
            struct Page {
                assets: Vec<AssetDoc>,
                #[serde(default)]
                total_entries: usize,
            }
            let page: Page =
                api.get_json(url, &what).await?.unwrap_or(Page { assets: Vec::new(), total_entries: 0 });
            let n = page.assets.len();
            let found = page.assets.into_iter().find(|a| match &self.name {
                AssetRef::Uri(_) => a.uri == wanted,
                AssetRef::Name(_) => a.name == wanted,
            });
            if let Some(found) = found {
                tracing::debug!(asset = %self.name, id = found.id, "Resolved Airflow asset.");
                self.id = Some((found.id, Instant::now()));
                return Ok(found);
            }
            offset += n;
            if n == 0 || offset >= page.total_entries {
                return Err(api.needs_operator(format!(
                    "Airflow at {} has no {} (no active DAG declares it yet?); events are held and retried",
                    api.base_shown(),
                    self.name
                )));
            }
        }
    }
}
