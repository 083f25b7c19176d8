//! `status`: one line per watcher (state, lag, pending batch, last delivery, dead
//! letters, owner), from the store and, when the daemon file sets `http:`, the running
//! daemon's `/status`; `--watch` refreshes it, `--json` is for scripts.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Failure, print_table};
use crate::config::{self, Config, DaemonFile};
use crate::outbox::{self, Glance};

/// How long `status` waits for the daemon's answer: a daemon too busy to answer must
/// not keep an operator from seeing the store.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(3);

/// Widest watcher name shown in full in the table (the rest is cut, with `~`): the
/// line stays within 100 columns.
const WATCHER_WIDTH: usize = 28;

/// What the daemon's `/status` says of one watcher (see `http.rs`).
#[derive(Debug, Clone, Deserialize)]
struct Live {
    watcher: String,
    state: String,
    lag_seconds: f64,
    backlog_events: u64,
    last_poll_ms: i64,
    last_delivery_ms: i64,
    dead_letters: u64,
}

/// The daemon's `/status` answer.
#[derive(Debug, Deserialize)]
struct LiveAnswer {
    watchers: Vec<Live>,
}

/// What `status` learnt from the daemon.
enum Daemon {
    /// No `http:` in the daemon file: only the store is read.
    NotConfigured,
    /// Its answer, by `namespace/name`.
    Answered { url: String, watchers: BTreeMap<String, Live> },
    /// It did not answer (not running, another address, too busy).
    Unreachable { url: String, error: String },
}

/// Prints the status once, or every `interval` with `watch` until interrupted.
pub(super) async fn run(
    config_path: &std::path::Path,
    json: bool,
    watch: bool,
    interval: Duration,
) -> Result<(), Failure> {
    // As for `state`: a broken watcher file must not hide the state of the others.
    let daemon: DaemonFile = config::load_daemon(config_path)?;
    let full = config::load(config_path).ok();
    loop {
        let text = once(&daemon, full.as_ref(), json).await?;
        if watch && !json {
            // Home and clear, then the table: a terminal shows one screen, refreshed.
            super::out(format_args!("\x1b[H\x1b[2J{text}"));
        } else {
            super::out(format_args!("{text}"));
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}

/// One rendering of the status (a table, or one JSON document on one line).
async fn once(daemon: &DaemonFile, config: Option<&Config>, json: bool) -> Result<String, Failure> {
    // Looking must not create a store (as `state list`).
    let (stored, owners) = if daemon.state.get().exists() {
        let store = outbox::open(&daemon.state)?;
        (outbox::glance_all(&*store).await?, crate::lease::owners(&*store).await?)
    } else {
        (BTreeMap::new(), BTreeMap::new())
    };
    let live = ask_daemon(daemon).await;
    let now = Utc::now();
    let mut rows = gather(&stored, config, &live);
    for row in &mut rows {
        row.owner = owners.get(&row.watcher).cloned();
    }
    if json {
        let (url, reachable, error) = match &live {
            Daemon::NotConfigured => (None, false, None),
            Daemon::Answered { url, .. } => (Some(url.as_str()), true, None),
            Daemon::Unreachable { url, error } => (Some(url.as_str()), false, Some(error.as_str())),
        };
        let doc = json!({
            "now": now,
            "daemon": {"url": url, "reachable": reachable, "error": error},
            "watchers": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        return Ok(doc.to_string());
    }
    let mut text = String::new();
    match &live {
        Daemon::NotConfigured => text.push_str(
            "Live state unknown: the daemon file sets no http: listener; showing the store only.\n",
        ),
        Daemon::Unreachable { url, error } => {
            text.push_str(&format!("Live state unknown: the daemon at {url} did not answer ({error}).\n"))
        }
        Daemon::Answered { .. } => {}
    }
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells(now)).collect();
    text.push_str(&render_table(&cells));
    Ok(text.trim_end().to_string())
}

/// The table, as [`print_table`] lays it out, into a string.
fn render_table(rows: &[Vec<String>]) -> String {
    let mut buffer = Vec::new();
    print_table(&mut buffer, &HEADERS, rows);
    String::from_utf8_lossy(&buffer).into_owned()
}

const HEADERS: [&str; 8] = ["WATCHER", "STATE", "LAG", "PENDING", "AGE", "DELIVERED", "DEAD", "OWNER"];

/// Asks the daemon's `/status`, on loopback when it listens on every address.
async fn ask_daemon(daemon: &DaemonFile) -> Daemon {
    let Some(http) = &daemon.http else { return Daemon::NotConfigured };
    let mut addr = http.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let url = format!("http://{addr}/status");
    if addr.port() == 0 {
        let error = "http.listen has port 0, which the daemon picks at start".to_string();
        return Daemon::Unreachable { url, error };
    }
    let answer = async {
        let client = reqwest::Client::builder().timeout(DAEMON_TIMEOUT).no_proxy().build()?;
        client.get(&url).send().await?.error_for_status()?.json::<LiveAnswer>().await
    };
    match answer.await {
        Ok(answer) => Daemon::Answered {
            url,
            watchers: answer.watchers.into_iter().map(|w| (w.watcher.clone(), w)).collect(),
        },
        Err(e) => {
            let error = if e.is_connect() {
                "connection refused: is it running?".to_string()
            } else if e.is_timeout() {
                format!("no answer within {}s", DAEMON_TIMEOUT.as_secs())
            } else {
                e.without_url().to_string()
            };
            Daemon::Unreachable { url, error }
        }
    }
}

/// One watcher's line.
#[derive(Debug, Clone)]
struct Row {
    watcher: String,
    configured: bool,
    /// From the daemon: its state, lag, backlog, last poll and delivery (None when it
    /// did not answer or does not run the watcher).
    live: Option<Live>,
    pending_events: usize,
    pending_since: Option<DateTime<Utc>>,
    watermark_moved_at: Option<DateTime<Utc>>,
    dead_letters: u64,
    /// The instance holding the watcher's lease when several share the store.
    owner: Option<String>,
}

/// Every watcher configured, stored or running, sorted by `namespace/name`.
fn gather(stored: &BTreeMap<(String, String), Glance>, config: Option<&Config>, live: &Daemon) -> Vec<Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let blank = |watcher: &str| Row {
        watcher: watcher.to_string(),
        configured: false,
        live: None,
        pending_events: 0,
        pending_since: None,
        watermark_moved_at: None,
        dead_letters: 0,
        owner: None,
    };
    for ((ns, name), glanced) in stored {
        let id = format!("{ns}/{name}");
        let row = rows.entry(id.clone()).or_insert_with(|| blank(&id));
        row.pending_events = glanced.pending_events;
        row.pending_since = glanced.pending_since.filter(|_| glanced.pending_events > 0);
        row.watermark_moved_at = glanced.moved_at;
        row.dead_letters = glanced.dead_letters;
    }
    for w in config.iter().flat_map(|c| c.watchers.iter()) {
        let id = w.id();
        rows.entry(id.clone()).or_insert_with(|| blank(&id)).configured = true;
    }
    if let Daemon::Answered { watchers, .. } = live {
        for (id, l) in watchers {
            rows.entry(id.clone()).or_insert_with(|| blank(id)).live = Some(l.clone());
        }
    }
    rows.into_values().collect()
}

impl Row {
    /// The lag: the daemon's, else the age of the stored pending batch (the oldest item
    /// known not to be delivered).
    fn lag(&self, now: DateTime<Utc>) -> Option<f64> {
        match &self.live {
            Some(l) => Some(l.lag_seconds),
            None => self.pending_since.map(|t| age(now, t)),
        }
    }

    /// The last delivery the daemon saw, else the last commit the store holds.
    fn last_delivery(&self) -> Option<DateTime<Utc>> {
        self.live
            .as_ref()
            .and_then(|l| {
                (l.last_delivery_ms > 0).then(|| DateTime::from_timestamp_millis(l.last_delivery_ms))
            })
            .flatten()
            .or(self.watermark_moved_at)
    }

    fn to_json(&self) -> serde_json::Value {
        let now = Utc::now();
        let ms = |v: i64| (v > 0).then(|| DateTime::from_timestamp_millis(v)).flatten();
        let (ns, name) = self.watcher.split_once('/').unwrap_or(("", &self.watcher));
        json!({
            "watcher": self.watcher,
            "namespace": ns,
            "name": name,
            "configured": self.configured,
            "running": self.live.is_some(),
            "state": self.live.as_ref().map(|l| &l.state),
            "lag_seconds": self.lag(now),
            "backlog_events": self.live.as_ref().map(|l| l.backlog_events),
            "pending_events": self.pending_events,
            "pending_since": self.pending_since,
            "last_poll": self.live.as_ref().and_then(|l| ms(l.last_poll_ms)),
            "last_delivery": self.last_delivery(),
            "watermark_moved_at": self.watermark_moved_at,
            "dead_letters": self.dead_letters,
            "owner": self.owner,
        })
    }

    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        let dash = || "-".to_string();
        let mut watcher = self.watcher.clone();
        if watcher.chars().count() > WATCHER_WIDTH {
            watcher = watcher.chars().take(WATCHER_WIDTH - 1).collect::<String>() + "~";
        }
        let state = match &self.live {
            Some(l) => l.state.clone(),
            // Stored, but neither configured nor run: left behind by a removed watcher.
            None if !self.configured => "removed".to_string(),
            None => dash(),
        };
        let dead = match &self.live {
            // The daemon's count is the one alerts see; the store's is the same once
            // the watcher's next cycle recounted.
            Some(l) => l.dead_letters.max(self.dead_letters).to_string(),
            None => self.dead_letters.to_string(),
        };
        let mut owner = self.owner.as_deref().map_or_else(dash, |o| crate::lease::short_owner(o).to_string());
        if owner.chars().count() > 16 {
            owner = owner.chars().take(15).collect::<String>() + "~";
        }
        vec![
            watcher,
            state,
            self.lag(now).map_or_else(dash, short),
            self.pending_events.to_string(),
            self.pending_since.map_or_else(dash, |t| short(age(now, t))),
            self.last_delivery().map_or_else(dash, |t| short(age(now, t))),
            dead,
            owner,
        ]
    }
}

/// Seconds from `then` to `now` (0 for a time in the future).
fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    (now - then).num_milliseconds().max(0) as f64 / 1000.0
}

/// A duration in at most two units and seven characters: `0s`, `45s`, `12m05s`,
/// `3h07m`, `2d04h`, `>999d`.
fn short(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        86_400_000.. => ">999d".to_string(),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        let cases = [
            (0.4, "0s"),
            (45.0, "45s"),
            (725.0, "12m05s"),
            (11_220.0, "3h07m"),
            (187_200.0, "2d04h"),
            (9e9, ">999d"),
        ];
        for (secs, text) in cases {
            assert_eq!(short(secs), text);
        }
    }

    #[test]
    fn a_line_fits_100_columns_at_its_widest() {
        let now = Utc::now();
        let row = Row {
            watcher: format!("{}/{}", "n".repeat(60), "w".repeat(60)),
            configured: true,
            live: Some(Live {
                watcher: String::new(),
                state: "retrying".into(),
                lag_seconds: 9e9,
                backlog_events: 5,
                last_poll_ms: 1,
                last_delivery_ms: 1,
                dead_letters: 12_345,
            }),
            pending_events: 100_000,
            pending_since: Some(now - chrono::Duration::days(999)),
            watermark_moved_at: None,
            dead_letters: 12_345,
            owner: Some("an-instance-with-a-long-name".into()),
        };
        let text = render_table(&[row.cells(now)]);
        for line in text.lines() {
            assert!(line.chars().count() <= 100, "{} columns: {line}", line.chars().count());
        }
    }
}
