//! `highwater state`: look at and edit the stored state, through each watcher's
//! [`Outbox`] (which alone knows what its keys mean).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, print_table, resolve};
use crate::config::{self, Config, DaemonFile};
use crate::json::Json;
use crate::outbox::{self, Outbox, Replay, Summary};
use crate::state::Record;
use crate::value::HumanDuration;

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
    /// Show a watcher's keys, or one key. `watermark` is shown whole: its head with
    /// every remembered member.
    Get {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// One key (`watermark`, `pending`, `dead_letter/<batch id>`). Default: all.
        key: Option<String>,
    },
    /// Write a key (a JSON value, given as an argument, or with `--file` from a file or
    /// standard input). Setting `watermark` replaces it whole (as `state get` shows it)
    /// and drops a pending batch, whose items are found again by the next poll if they
    /// lie past the new watermark. A watermark the watcher's source cannot read is
    /// refused.
    ///
    /// A watermark's head, by source (`state get WATCHER watermark` shows the stored one):
    ///   local_dir  {"high_ns": 1700000000000000000}: the newest change time announced,
    ///              ns since the epoch; "floor_ns": files changed at or before it are
    ///              not looked at again
    ///   s3         {"high_ms": 1700000000000}: the newest LastModified announced, ms
    ///              since the epoch; "floor_ms" likewise; "after": the last key
    ///              announced with `key_order: lexicographic`
    ///   postgres   {"mode": "cursor", "after": ["42"]}: the last cursor values
    ///              announced, as text; {"mode": "xid"} (or "cursor") alone starts over
    /// With remembered items the whole is {"head": {…}, "members": {"<name>": …}}.
    #[command(verbatim_doc_comment)]
    Set {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
        /// The value, as JSON.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file (`-`: standard input) instead.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
    /// Delete a key.
    Delete {
        /// `namespace/name`, or `name` when it is unique.
        watcher: String,
        /// The key.
        key: String,
    },
    /// Forget a watcher's watermark and pending batch, so it starts again where its
    /// `start:` says (the beginning by default). Dead letters are kept.
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
    /// Move a watcher's state (watermark, pending batch, dead letters) to a new name,
    /// in one transaction: a watcher's name is part of its events' ids, so a renamed
    /// watcher file without this announces everything again. Run it before the daemon
    /// picks up the renamed file (or with the daemon stopped).
    Rename {
        /// The old `namespace/name` (or `name` when it is unique), with stored state.
        from: String,
        /// The new `namespace/name`; it must have no state yet.
        to: String,
    },
    /// Print the state of every watcher (or those named) as JSON lines, one watcher
    /// each: its whole watermark and its other keys.
    Export {
        /// `namespace/name`, or `name` when it is unique. Default: every watcher stored.
        watchers: Vec<String>,
    },
    /// Write the state of watchers from JSON lines as `state export` prints them (from a
    /// file, or `-` for standard input): moves a deployment from one store to another
    /// (SQLite to Postgres and back). Every line is checked before anything is written;
    /// each watcher is then written in one transaction. Run it with the daemon stopped.
    Import {
        /// The file (`-`: standard input).
        file: PathBuf,
        /// Replace the state of watchers that have some already (default: refuse them).
        #[arg(long)]
        replace: bool,
    },
    /// Delete dead letters set aside longer ago than `--older-than`, of one watcher or
    /// of every watcher in the store. Replay what you still want first
    /// (`state replay`).
    PurgeDeadLetters {
        /// `namespace/name`, or `name` when it is unique. Default: every watcher stored.
        watcher: Option<String>,
        /// Age beyond which a dead letter goes: `30d`, `12h`, `90m` (as durations are
        /// written in the config; `0s` purges them all).
        #[arg(long, value_parser = parse_age)]
        older_than: HumanDuration,
    },
    /// Copy the whole store to a new file while it is in use (SQLite's online backup):
    /// a consistent copy, whatever the daemon is writing. The copy is a store of its
    /// own, in the format it had (it is not upgraded first).
    Backup {
        /// The file to write; it must not exist.
        file: PathBuf,
    },
}

/// Runs a `state` subcommand.
pub(super) async fn run(config_path: &std::path::Path, command: StateCommand) -> Result<(), Failure> {
    // The state commands need only the daemon file: a broken watcher file must not keep
    // an operator from looking at or fixing the state.
    let daemon: DaemonFile = config::load_daemon(config_path)?;
    if let StateCommand::Backup { file } = &command {
        if !daemon.state.get().exists() {
            return Err(Failure::Runtime(format!(
                "no state yet: {} does not exist",
                daemon.state.describe()
            )));
        }
        outbox::open(&daemon.state)?.backup(file).await?;
        super::err(format_args!("State copied to {}.", file.display()));
        return Ok(());
    }
    let full = config::load(config_path).ok();
    // Looking must not create: a store that was never written holds no state, and
    // opening it would leave an empty database behind (owned by whoever looked).
    let read_only =
        matches!(command, StateCommand::List { .. } | StateCommand::Get { .. } | StateCommand::Export { .. });
    if read_only && !daemon.state.get().exists() {
        return match command {
            StateCommand::List { json } => {
                state_list(&BTreeMap::new(), full.as_ref(), json);
                Ok(())
            }
            StateCommand::Get { watcher, .. } => {
                let configured = full.iter().flat_map(|c| c.watchers.iter());
                let (ns, name) =
                    resolve(&watcher, configured.map(|w| (w.namespace.clone(), w.name.clone())))?;
                Err(Failure::Runtime(format!(
                    "{ns}/{name} has no state yet: {} does not exist",
                    daemon.state.describe()
                )))
            }
            _ => Err(Failure::Runtime(format!("no state yet: {} does not exist", daemon.state.describe()))),
        };
    }
    let store = outbox::open(&daemon.state)?;
    if !read_only && let Some(pid) = daemon.state.get().held_by() {
        // Allowed beside the daemon: every write is compare-and-set, so neither side
        // overwrites the other; the daemon reads the change at its next cycle.
        super::err(format_args!(
            "Note: a highwater daemon (pid {pid}) runs on this store. It takes the change at its \
             next cycle; a batch it is delivering meanwhile may go again, with the same event ids."
        ));
    }
    if !read_only && store.leases().is_some() {
        // Not through the lease: the write is compare-and-set under the watcher's lock
        // in the store, as the owner's own writes are, so neither overwrites the other.
        let owners = crate::lease::owners(&*store).await?;
        if !owners.is_empty() {
            let instances: std::collections::BTreeSet<&str> =
                owners.values().map(|o| crate::lease::short_owner(o)).collect();
            super::err(format_args!(
                "Note: {} instance{} run{} watchers on this store ({}). A watcher's owner takes the \
                 change at its next cycle; a batch it is delivering meanwhile may go again, with the \
                 same event ids.",
                instances.len(),
                if instances.len() == 1 { "" } else { "s" },
                if instances.len() == 1 { "s" } else { "" },
                instances.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
    }
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
            let whole = match outbox.state().await? {
                Some((_, state)) => Some(outbox::assemble(&state).map_err(encode_failure)?),
                None => None,
            };
            if key.as_deref() == Some("watermark") {
                let Some(whole) = whole else {
                    return Err(Failure::Runtime(format!("{ns}/{name} has no key \"watermark\"")));
                };
                print_json(&whole);
                return Ok(());
            }
            let rows = outbox.rows().await?;
            if let Some(key) = &key {
                let Some(mut record) = rows.into_iter().find(|r| r.key == *key) else {
                    return Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")));
                };
                outbox::make_readable(&mut record);
                print_json(&record.value);
            } else {
                let map: BTreeMap<String, Record> = rows
                    .into_iter()
                    .map(|mut record| {
                        if record.key == "watermark"
                            && let Some(whole) = &whole
                        {
                            record.value = whole.clone();
                        } else {
                            outbox::make_readable(&mut record);
                        }
                        (record.key.clone(), record)
                    })
                    .collect();
                print_json(&Json::encode(&map).map_err(encode_failure)?);
            }
            Ok(())
        }
        StateCommand::Set { watcher, key, value, file } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let text = match (value, file) {
                (Some(value), _) => value,
                (None, Some(path)) => read_value(&path)?,
                (None, None) => return Err(Failure::Usage("give the value, or --file".into())),
            };
            let value =
                Json::parse(text).map_err(|e| Failure::Usage(format!("the value is not JSON: {e}")))?;
            if key == "watermark" {
                check_watermark(full.as_ref(), &ns, &name, &value)?;
            }
            let dropped = outbox.set_key(&key, value).await?;
            report_dropped_pending(&ns, &name, dropped);
            super::err(format_args!("{ns}/{name}: {key} set."));
            Ok(())
        }
        StateCommand::Delete { watcher, key } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            if outbox.delete_key(&key).await? {
                super::err(format_args!("{ns}/{name}: {key} deleted."));
                Ok(())
            } else {
                Err(Failure::Runtime(format!("{ns}/{name} has no key {key:?}")))
            }
        }
        StateCommand::Reset { watcher } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            let dropped = outbox.reset().await?;
            report_dropped_pending(&ns, &name, dropped);
            super::err(format_args!(
                "{ns}/{name}: watermark reset; the next poll starts from the beginning."
            ));
            Ok(())
        }
        StateCommand::Replay { watcher, batch_id } => {
            let (ns, name, outbox) = outbox_of(&watcher)?;
            match outbox.replay(&batch_id).await? {
                Replay::Queued { events } => {
                    super::err(format_args!(
                        "{ns}/{name}: {events} events of batch {batch_id} queued; the watcher delivers them at its next cycle."
                    ));
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
        StateCommand::Backup { .. } => Ok(()),
        StateCommand::Import { file, replace } => {
            let lines = read_export(&file)?;
            let count = lines.len();
            for line in lines {
                let outbox = Outbox::new(Arc::clone(&store), line.namespace.as_str(), line.name.as_str());
                outbox.import(line.watermark, line.keys, replace).await?;
            }
            super::err(format_args!("{count} watchers imported into {}.", daemon.state.describe()));
            Ok(())
        }
        StateCommand::PurgeDeadLetters { watcher, older_than } => {
            let chosen = match watcher {
                Some(watcher) => vec![resolve(&watcher, known())?],
                None => stored
                    .iter()
                    .filter(|(_, s)| !s.dead_letters.is_empty())
                    .map(|(id, _)| id.clone())
                    .collect(),
            };
            let before = chrono::Utc::now()
                - chrono::Duration::from_std(older_than.0)
                    .map_err(|e| Failure::Usage(format!("--older-than {older_than}: {e}")))?;
            let mut total = 0;
            for (ns, name) in chosen {
                let outbox = Outbox::new(Arc::clone(&store), ns.as_str(), name.as_str());
                let purged = outbox.purge_dead_letters(before).await?;
                total += purged.removed.len();
                super::err(format_args!(
                    "{ns}/{name}: {} dead letter{} older than {older_than} purged, {} kept.",
                    purged.removed.len(),
                    if purged.removed.len() == 1 { "" } else { "s" },
                    purged.kept
                ));
            }
            if total == 0 {
                super::err(format_args!("No dead letter older than {older_than}."));
            }
            Ok(())
        }
        StateCommand::Rename { from, to } => {
            let (from_ns, from_name) = resolve(&from, stored.keys().cloned())?;
            let (to_ns, to_name) = match to.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name.to_string()),
                None => ("default".to_string(), to.clone()),
            };
            for part in [&to_ns, &to_name] {
                crate::value::Name::new(part).map_err(|m| Failure::Usage(format!("{to:?}: {m}")))?;
            }
            match store.rename((&from_ns, &from_name), (&to_ns, &to_name)).await {
                Ok(rows) => {
                    super::err(format_args!(
                        "{from_ns}/{from_name}: {rows} rows moved to {to_ns}/{to_name}."
                    ));
                    Ok(())
                }
                Err(crate::state::StoreError::Conflict { .. }) => Err(Failure::Usage(format!(
                    "{to_ns}/{to_name} has state already; reset or delete it first"
                ))),
                Err(e) => Err(e.into()),
            }
        }
        StateCommand::Export { watchers } => {
            let mut chosen = Vec::new();
            for watcher in &watchers {
                chosen.push(resolve(watcher, known())?);
            }
            if chosen.is_empty() {
                chosen = stored.keys().cloned().collect();
            }
            for (ns, name) in chosen {
                let outbox = Outbox::new(Arc::clone(&store), ns.as_str(), name.as_str());
                let whole = match outbox.state().await? {
                    Some((_, state)) => Some(outbox::assemble(&state).map_err(encode_failure)?),
                    None => None,
                };
                let keys: BTreeMap<String, Json> = outbox
                    .rows()
                    .await?
                    .into_iter()
                    .filter(|r| r.key != "watermark")
                    .map(|r| (r.key, r.value))
                    .collect();
                let line = json!({"namespace": ns, "name": name, "watermark": whole, "keys": keys});
                super::out(format_args!("{line}"));
            }
            Ok(())
        }
    }
}

/// One line of `state export`.
struct Exported {
    namespace: String,
    name: String,
    watermark: Option<Json>,
    keys: BTreeMap<String, Json>,
}

/// Reads and checks every line of an export (`-`: standard input) before anything is
/// written; an error names the line.
fn read_export(path: &std::path::Path) -> Result<Vec<Exported>, Failure> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        namespace: String,
        name: String,
        watermark: Option<Box<serde_json::value::RawValue>>,
        #[serde(default)]
        keys: BTreeMap<String, Box<serde_json::value::RawValue>>,
    }
    let text = read_value(path)?;
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (index, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let at =
            |message: String| Failure::Usage(format!("{} line {}: {message}", path.display(), index + 1));
        let line: Line =
            serde_json::from_str(raw).map_err(|e| at(format!("not a line of `state export`: {e}")))?;
        for part in [&line.namespace, &line.name] {
            crate::value::Name::new(part).map_err(|m| at(format!("{part:?}: {m}")))?;
        }
        if !seen.insert((line.namespace.clone(), line.name.clone())) {
            return Err(at(format!("{}/{} appears twice", line.namespace, line.name)));
        }
        // `null` is what export writes for a watcher without a head.
        let watermark = line.watermark.map(Json::from).filter(|w| w.as_str() != "null");
        let keys = line.keys.into_iter().map(|(k, v)| (k, Json::from(v))).collect();
        out.push(Exported { namespace: line.namespace, name: line.name, watermark, keys });
    }
    Ok(out)
}

/// Reads `--older-than` as the config reads durations.
fn parse_age(text: &str) -> Result<HumanDuration, String> {
    HumanDuration::parse(text).map(HumanDuration)
}

/// Reads a value for `state set --file` (`-`: standard input).
fn read_value(path: &std::path::Path) -> Result<String, Failure> {
    let mut text = String::new();
    let read = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut text)).map(|_| ())
    };
    read.map_err(|e| Failure::Usage(format!("cannot read the value from {}: {e}", path.display())))?;
    Ok(text)
}

fn encode_failure(e: serde_json::Error) -> Failure {
    Failure::Runtime(format!("cannot encode the state: {e}"))
}

/// Prints stored JSON indented, exactly as stored otherwise (numbers keep their digits).
fn print_json(value: &Json) {
    super::out(format_args!("{}", indent(value.as_str())));
}

/// Indents JSON text by two spaces per level without parsing it into values, so that
/// what was stored is what is shown (a number keeps every digit).
fn indent(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', depth * 2));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // Skip whitespace to see whether the container is empty.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}') | Some(']')) {
                    if let Some(close) = chars.next() {
                        out.push(close);
                    }
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// Says that a pending batch was dropped along with the watermark it led to.
/// Refuses a watermark the watcher's source could not restore from: the source's own
/// `restore` reads it, as the watcher would at its next cycle (where a wrong shape
/// would stop it until an operator came). A watcher that is not configured (or whose
/// config does not load) has no source to ask: said, and the value is taken.
fn check_watermark(config: Option<&Config>, ns: &str, name: &str, value: &Json) -> Result<(), Failure> {
    let watcher = config.and_then(|c| c.watchers.iter().find(|w| w.namespace == ns && w.name == name));
    let Some(watcher) = watcher else {
        super::err(format_args!(
            "Note: {ns}/{name} is not a watcher of a config that loads: the watermark is not checked \
             against its source."
        ));
        return Ok(());
    };
    let mut source = watcher.source.build();
    source.restore(outbox::disassemble(value.clone())).map_err(|e| {
        // The source's words are for a stored watermark found at a poll.
        let reason = e.message.trim_end_matches("; reset it with `highwater state reset`");
        let reason = reason.strip_prefix("stored ").unwrap_or(reason);
        Failure::Usage(format!(
            "{ns}/{name}: not set: {reason}; `highwater state set --help` shows the shape of each \
             source's watermark"
        ))
    })
}

fn report_dropped_pending(ns: &str, name: &str, dropped: Option<usize>) {
    if let Some(n) = dropped {
        super::err(format_args!(
            "{ns}/{name}: dropping a pending batch of {n} events; polls find its items again if they lie past the new watermark."
        ));
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
    let summarize = |ns: &str, name: &str, head: &Json, remembered: u64| -> serde_json::Value {
        let source = config
            .and_then(|c| c.watchers.iter().find(|w| w.namespace == ns && w.name == name))
            .map(|w| w.source.build());
        match source {
            Some(source) => source.summarize(head, remembered),
            // A watcher no longer configured: the head as stored, if it is short.
            None => match head.decode::<serde_json::Value>() {
                Ok(value) if head.len() <= 200 => value,
                _ => json!({"bytes": head.len(), "remembered": remembered}),
            },
        }
    };
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for ((ns, name), summary) in &by_watcher {
        let watermark = summary.and_then(|s| s.watermark.as_ref());
        let pending_events = summary.map_or(0, |s| s.pending_events);
        let remembered = summary.map_or(0, |s| s.remembered);
        let dead: Vec<&str> =
            summary.map(|s| s.dead_letters.iter().map(String::as_str).collect()).unwrap_or_default();
        let summary = watermark.map(|w| summarize(ns, name, &w.value, remembered));
        out.push(json!({
            "namespace": ns,
            "name": name,
            "configured": config.is_some_and(|c| c.watchers.iter().any(|w| w.namespace == *ns && w.name == *name)),
            "watermark": summary,
            "watermark_moved_at": watermark.map(|w| w.updated_at),
            "watermark_version": watermark.map(|w| w.version),
            "remembered": remembered,
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
        super::out(format_args!("{}", serde_json::to_string_pretty(&out).unwrap_or_default()));
    } else {
        print_table(
            &mut std::io::stdout().lock(),
            &["WATCHER", "WATERMARK", "MOVED (UTC)", "PENDING", "DEAD LETTERS"],
            &rows,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indenting_keeps_every_character_of_values() {
        let text = r#"{"a":[1,2.000000000000000000001],"b":{},"c":"x,{\"y\":[]}","d":[]}"#;
        let shown = indent(text);
        assert_eq!(
            shown,
            "{\n  \"a\": [\n    1,\n    2.000000000000000000001\n  ],\n  \"b\": {},\n  \"c\": \"x,{\\\"y\\\":[]}\",\n  \"d\": []\n}"
        );
        let back: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(text).unwrap());
    }
}
