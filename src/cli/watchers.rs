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
    let owners: Option<BTreeMap<String, String>> = match &config.daemon.state {
        crate::state::StateConfig::Sqlite(_) => None,
        state => Some(lease::owners(&*outbox::open(state)?).await?),
    };
    let owner_of = |id: &str| owners.as_ref().map(|o| o.get(id).cloned());
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
                    "owner": owner_of(&w.id()).flatten(),
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
                row.push(owner.as_deref().map_or("-", lease::short_owner).to_string());
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
