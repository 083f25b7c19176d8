//! `highwater state`: look at and edit the stored state, through each watcher's
//! [`Outbox`] (which alone knows what its keys mean).

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, print_table, resolve};
use crate::config::{self, Config, DaemonFile};
use crate::outbox::{self, Outbox, Replay, Summary};
use crate::state::{self, Record};

/// `highwater state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// What to do with the state.
    #[command(subcommand)]
    pub command: StateCommand,
}

/// `highwater state …`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Every watcher in the store: watermark, when it moved, pending and dead-lettered batches.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a watcher's keys, or one key.
    Get {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// One key (`watermark`, `pending`, `dead_letter/<batch id>`). Default: all.
        key: Option<String>,
    },
    /// Write a key (JSON value). Setting `watermark` also drops a pending batch, whose
    /// items are found again by the next poll if they lie past the new watermark.
    Set {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
    },
    /// Forget a watcher's watermark and pending batch, so it starts from the beginning.
    /// Dead letters are kept.
    Reset {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
    },
    /// Queue a dead-lettered batch for delivery again (the watermark does not move).
    Replay {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The batch id (the part after `dead_letter/`).
        batch_id: String,
    },
}

/// Runs a `state` subcommand.
pub(super) async fn run(config_path: &std::path::Path, command: StateCommand) -> Result<(), Failure> {
    // The state commands need only the daemon file: a broken watcher file must not keep
    // an operator from looking at or fixing the state.
    let daemon: DaemonFile = config::load_daemon(config_path)?;
    let full = config::load(config_path).ok();
    let store = state::open(&daemon.state)?;
    let stored = outbox::survey(&*store).await?;
    let known = || {
        let mut ids: Vec<(String, String)> = stored.keys().cloned().collect();
        if let Some(c) = &full {
            ids.extend(c.watchers.iter().map(|w| (w.namespace.clone(), w.name.clone())));
        }
        ids.into_iter()
    };
    let outbox_of = |watcher: &str| -> Result<(String, String, Outbox), Failure> {
        let (ns, name) = resolve(watcher, known())?;
        let outbox = Outbox::new(Arc::clone(&store), ns.as_str(), name.as_str());
        Ok((ns, name, outbox))
    };
    match command {
        StateCommand::List { json } => {
            state_list(&stored, full.as_ref(), json);
            Ok(())
        }
        StateCommand::Get { watcher, key } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let rows = outbox.rows().await?;
            if let Some(key) = &key {
                let Some(record) = rows.iter().find(|r| r.key == *key) else {
                    return Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")));
                };
                println!("{}", serde_json::to_string_pretty(&record.value).unwrap_or_default());
            } else {
                let map: BTreeMap<&str, &Record> = rows.iter().map(|r| (r.key.as_str(), r)).collect();
                println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
            }
            Ok(())
        }
        StateCommand::Set { watcher, key, value } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let value: serde_json::Value = serde_json::from_str(&value)
                .map_err(|e| Failure::Usage(format!("the value is not JSON: {e}")))?;
            let dropped = outbox.set_key(&key, value).await?;
            report_dropped_pending(&ns, &name, dropped);
            eprintln!("{ns}/{name}: {key} set.");
            Ok(())
        }
        StateCommand::Delete { watcher, key } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            if outbox.delete_key(&key).await? {
                eprintln!("{ns}/{name}: {key} deleted.");
                Ok(())
            } else {
                Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")))
            }
        }
        StateCommand::Reset { watcher } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let dropped = outbox.reset().await?;
            report_dropped_pending(&ns, &name, dropped);
            eprintln!("{ns}/{name}: watermark reset; the next poll starts from the beginning.");
            Ok(())
        }
        StateCommand::Replay { watcher, batch_id } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            match outbox.replay(&batch_id).await? {
                Replay::Queued { events } => {
                    eprintln!(
                        "{ns}/{name}: {events} events of batch {batch_id} queued; the watcher delivers them at its next cycle."
                    );
                    Ok(())
                }
                Replay::NotFound => {
                    Err(Failure::Runtime(format!("{ns}/{name} has no dead letter {batch_id:?}")))
                }
                Replay::PendingExists => Err(Failure::Runtime(format!(
                    "{ns}/{name} has a batch pending already; replay once it is delivered"
                ))),
            }
        }
    }
}

/// Says that a pending batch was dropped along with the watermark it led to.
fn report_dropped_pending(ns: &str, name: &str, dropped: Option<usize>) {
    if let Some(n) = dropped {
        eprintln!(
            "{ns}/{name}: dropping a pending batch of {n} events; polls find its items again if they lie past the new watermark."
        );
    }
}

fn state_list(stored: &BTreeMap<(String, String), Summary>, config: Option<&Config>, json: bool) {
    let mut by_watcher: BTreeMap<(String, String), Option<&Summary>> =
        stored.iter().map(|(id, summary)| (id.clone(), Some(summary))).collect();
    // Configured watchers with no state yet are listed too.
    if let Some(c) = config {
        for w in &c.watchers {
            by_watcher.entry((w.namespace.clone(), w.name.clone())).or_default();
        }
    }
    let summarize = |ns: &str, name: &str, value: &serde_json::Value| -> serde_json::Value {
        config
            .and_then(|c| c.watchers.iter().find(|w| w.namespace == ns && w.name == name))
            .map(|w| w.source.build())
            .map_or_else(|| value.clone(), |source| source.summarize(value))
    };
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for ((ns, name), summary) in &by_watcher {
        let watermark = summary.and_then(|s| s.watermark.as_ref());
        let pending_events = summary.map_or(0, |s| s.pending_events);
        let dead: Vec<&str> =
            summary.map(|s| s.dead_letters.iter().map(String::as_str).collect()).unwrap_or_default();
        let summary = watermark.map(|w| summarize(ns, name, &w.value));
        out.push(json!({
            "namespace": ns,
            "name": name,
            "configured": config.is_some_and(|c| c.watchers.iter().any(|w| w.namespace == *ns && w.name == *name)),
            "watermark": summary,
            "watermark_moved_at": watermark.map(|w| w.updated_at),
            "watermark_version": watermark.map(|w| w.version),
            "pending_events": pending_events,
            "dead_letters": dead,
        }));
        let mut text = summary.map_or_else(|| "-".to_string(), |s| s.to_string());
        if text.chars().count() > 60 {
            text = text.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            format!("{ns}/{name}"),
            text,
            watermark.map_or_else(|| "-".into(), |w| w.updated_at.format("%Y-%m-%d %H:%M:%S").to_string()),
            pending_events.to_string(),
            dead.len().to_string(),
        ]);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_table(&["WATCHER", "WATERMARK", "MOVED (UTC)", "PENDING", "DEAD LETTERS"], &rows);
    }
}
