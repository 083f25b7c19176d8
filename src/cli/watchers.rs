//! `highwater watchers`: the configured watchers with their sources and sinks, and on a
//! store several instances share, the instance running each.

use std::collections::BTreeMap;

use serde_json::json;

use super::{Failure, print_table};
use crate::config::Config;
use crate::value::HumanDuration;
use crate::{lease, outbox};

/// Prints the watchers as a table, or as JSON.
pub(super) async fn list(config: &Config, json: bool) -> Result<(), Failure> {
    // Only a shared store has owners; a SQLite store is not even opened.
    // A store that does not answer leaves the owners unknown ("?"), not the listing.
    let owners: Option<Result<BTreeMap<String, String>, String>> = match &config.daemon.state {
        crate::state::StateConfig::Sqlite(_) => None,
        state => {
            let found = async { lease::owners(&*outbox::open(state)?).await };
            Some(found.await.map_err(|e: crate::state::StoreError| e.to_string()))
        }
    };
    if let Some(Err(e)) = &owners {
        super::err(format_args!("Note: owners unknown: {e}"));
    }
    let owner_of = |id: &str| {
        owners.as_ref().map(|o| match o {
            Ok(o) => o.get(id).map_or("-", |owner| lease::short_owner(owner)).to_string(),
            Err(_) => "?".to_string(),
        })
    };
    if json {
        let list: Vec<_> = config
            .watchers
            .iter()
            .map(|w| {
                json!({
                    "namespace": w.namespace,
                    "name": w.name,
                    "file": w.file,
                    "source": {"type": w.source.kind(), "description": w.source.describe()},
                    "sink": {"type": w.sink.kind(), "description": w.sink.describe()},
                    "poll_interval": HumanDuration(w.poll_interval).to_string(),
                    "batch_size": w.batch_size,
                    "on_permanent_failure": w.on_permanent_failure,
                    "owner": owners.as_ref().and_then(|o| o.as_ref().ok()).and_then(|o| o.get(&w.id())),
                })
            })
            .collect();
        super::out(format_args!("{}", serde_json::to_string_pretty(&list).unwrap_or_default()));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = config
        .watchers
        .iter()
        .map(|w| {
            let mut row = vec![
                w.id(),
                w.source.describe(),
                w.sink.describe(),
                HumanDuration(w.poll_interval).to_string(),
                w.file.display().to_string(),
            ];
            if let Some(owner) = owner_of(&w.id()) {
                row.push(owner);
            }
            row
        })
        .collect();
    let mut headers = vec!["WATCHER", "SOURCE", "SINK", "EVERY", "FILE"];
    if owners.is_some() {
        headers.push("OWNER");
    }
    print_table(&mut std::io::stdout().lock(), &headers, &rows);
    Ok(())
}
