//! `highwater watchers`: the configured watchers with their sources and sinks.

use serde_json::json;

use super::print_table;
use crate::config::Config;
use crate::value::HumanDuration;

/// Prints the watchers as a table, or as JSON.
pub(super) fn list(config: &Config, json: bool) {
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
                })
            })
            .collect();
        super::out(format_args!("{}", serde_json::to_string_pretty(&list).unwrap_or_default()));
        return;
    }
    let rows: Vec<Vec<String>> = config
        .watchers
        .iter()
        .map(|w| {
            vec![
                w.id(),
                w.source.describe(),
                w.sink.describe(),
                HumanDuration(w.poll_interval).to_string(),
                w.file.display().to_string(),
            ]
        })
        .collect();
    print_table(&mut std::io::stdout().lock(), &["WATCHER", "SOURCE", "SINK", "EVERY", "FILE"], &rows);
}
