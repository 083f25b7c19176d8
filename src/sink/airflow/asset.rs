//! The asset events go to: named by URI or name in the config, known to Airflow's API
//! by a numeric id that is looked up once and cached until Airflow no longer knows it.

use reqwest::StatusCode;
use serde::Deserialize;

use super::api::{Api, Failed};
use crate::sink::Delivery;

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

/// The asset, and its id once looked up.
pub(super) struct Asset {
    /// How the config names it.
    pub(super) name: AssetRef,
    /// Its id, once looked up.
    id: Option<i64>,
}

impl Asset {
    pub(super) fn new(name: AssetRef) -> Self {
        Asset { name, id: None }
    }

    /// Drops the cached id: Airflow answered 404 for it.
    pub(super) fn forget(&mut self) {
        self.id = None;
    }

    /// The asset's id: cached, else looked up by exact URI (or name) among the
    /// substring matches Airflow returns, page by page.
    pub(super) async fn id(&mut self, api: &mut Api) -> Result<i64, Failed> {
        if let Some(id) = self.id {
            return Ok(id);
        }
        let (param, wanted, field) = match &self.name {
            AssetRef::Uri(uri) => ("uri_pattern", uri.clone(), "uri"),
            AssetRef::Name(name) => ("name_pattern", name.clone(), "name"),
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
            let response = api.send(&what, |client| client.get(url.clone())).await?;
            let status = response.status();
            if status == StatusCode::FORBIDDEN {
                return Err(
                    api.needs_operator(format!("{what} answered HTTP 403: the user may not read assets"))
                );
            }
            if !status.is_success() {
                return Err(api.failure(response, &what).await);
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
                tracing::debug!(asset = %self.name, id, "Resolved Airflow asset.");
                self.id = Some(id);
                return Ok(id);
            }
            offset += page.assets.len();
            if page.assets.is_empty() || offset >= page.total_entries {
                return Err(api.needs_operator(format!(
                    "Airflow at {} has no {} (no active DAG declares it yet?); events are held and retried",
                    api.base_shown(),
                    self.name
                )));
            }
        }
    }
}
