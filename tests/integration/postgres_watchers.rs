//! Postgres watchers beyond one table's rows: where a new watcher starts (`start: now`
//! and a time, in both modes), and many watchers of one server sharing a few
//! connections.

use std::time::Duration;

use serde_json::Value;

use crate::postgres::{Pg, Schema, ids, url, watcher_project};
use crate::util::{Metrics, POLLS, Project};

/// A watcher on `table` that starts where `start` says.
fn starting(table: &str, source: &str, start: &str) -> Project {
    let project = watcher_project(table, source);
    let path = project.path().join("watchers/rows.yaml");
    let text = std::fs::read_to_string(&path).expect("read watcher");
    std::fs::write(&path, format!("{text}start: {start}\n")).expect("write watcher");
    project
}

/// The events of one `highwater once`, which must succeed.
fn once(project: &Project) -> Vec<Value> {
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON event")).collect()
}

#[test]
fn start_now_announces_only_what_is_written_after_the_watcher_began() {
    let schema = Schema::new("start_now");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'old' FROM generate_series(1, 3)"));
    // Mode xid: a transaction still open when the watcher begins is not in its snapshot,
    // so its row is new when it commits, although its id is older.
    let open = Pg::connect();
    open.exec(&format!("BEGIN; INSERT INTO {table} (note) VALUES ('in flight')"));
    let xid = starting(&table, "  cursor: id\n  xid_column: hx", "now");
    let cursor = starting(&table, "  mode: cursor\n  cursor: id", "now");
    assert_eq!(once(&xid), Vec::<Value>::new());
    assert_eq!(once(&cursor), Vec::<Value>::new());
    // The start was stored: the next run does not begin again.
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('new')"));
    assert_eq!(ids(&once(&xid)), vec![5]);
    assert_eq!(ids(&once(&cursor)), vec![5]);
    open.exec("COMMIT");
    assert_eq!(ids(&once(&xid)), vec![4]);
    // Mode cursor is past id 4 already (docs/reference/postgres.md: what it can miss).
    assert_eq!(once(&cursor), Vec::<Value>::new());
}

#[test]
fn start_at_a_time_announces_the_rows_from_that_time_on() {
    let schema = Schema::new("start_at");
    let table = format!("{}.events", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, at timestamptz NOT NULL, local timestamp NOT NULL, \
         hx xid8 NOT NULL DEFAULT pg_current_xact_id()); CREATE INDEX ON {table} (hx, at, id); \
         INSERT INTO {table} VALUES (1, '2026-01-01T00:00:00Z', '2026-01-01 00:00'), \
           (2, '2026-01-02T00:00:00Z', '2026-01-02 00:00'), (3, '2026-01-02T00:00:00Z', '2026-01-02 00:00'), \
           (4, '2026-01-03T00:00:00Z', '2026-01-03 00:00')"
    ));
    let time = "2026-01-02T00:00:00Z";
    let xid = starting(&table, "  cursor: [at, id]\n  xid_column: hx", time);
    let cursor = starting(&table, "  mode: cursor\n  cursor: [at, id]", time);
    // A local time is read in the server's zone (UTC on the test server).
    let local = starting(&table, "  cursor: [local, id]\n  xid_column: hx", time);
    assert_eq!(ids(&once(&xid)), vec![2, 3, 4]);
    assert_eq!(ids(&once(&cursor)), vec![2, 3, 4]);
    assert_eq!(ids(&once(&local)), vec![2, 3, 4]);
    // A row written later with an earlier time: new to mode xid, behind mode cursor.
    schema.pg.exec(&format!("INSERT INTO {table} VALUES (5, '2025-12-31T00:00:00Z', '2025-12-31 00:00')"));
    assert_eq!(ids(&once(&xid)), vec![5]);
    assert_eq!(ids(&once(&cursor)), Vec::<i64>::new());

    // A first cursor column that holds no time cannot place one.
    let by_id = starting(&table, "  cursor: id\n  xid_column: hx", time);
    let out = by_id.run(&["once"]);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("needs the first cursor column (id) to hold one"), "{}", out.stderr);
}

#[test]
fn a_hundred_watchers_of_one_server_share_a_few_connections() {
    let schema = Schema::new("shared");
    let table = schema.orders();
    // A name of the test's own, so that only its sessions are counted.
    let app = format!("hw_shared_{}", std::process::id());
    let base = url();
    let connection = format!("{base}{}application_name={app}", if base.contains('?') { '&' } else { '?' });
    let project = Project::default_config();
    let watchers: Vec<String> = (0..100).map(|i| format!("w{i:03}")).collect();
    for name in &watchers {
        project.watcher(
            name,
            &format!(
                "namespace: pg\nname: {name}\npoll_interval: 100ms\nsource:\n  type: postgres\n  \
                 connection: \"{connection}\"\n  table: {table}\n  cursor: id\n  xid_column: hx\n\
                 sink: {{type: stdout}}\n"
            ),
        );
    }
    let sessions = || -> i64 {
        let n = schema
            .pg
            .text(&format!("SELECT count(*)::text FROM pg_stat_activity WHERE application_name = '{app}'"));
        n.parse().expect("count")
    };
    let mut daemon = project.start();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'n' FROM generate_series(1, 3)"));
    // Sampled while the watchers start, read the catalog and deliver.
    let mut most = 0;
    let mut events = Vec::new();
    while events.len() < 300 {
        most = most.max(sessions());
        events.extend(daemon.events(1, Duration::from_secs(30)));
    }
    assert_eq!(events.len(), 300, "each watcher announces the 3 rows");
    // Every watcher keeps polling on its own schedule through the shared connections.
    let polled = daemon.metrics();
    let target: Vec<(String, u64)> =
        watchers.iter().map(|w| (format!("pg/{w}"), polled.watcher(POLLS, &format!("pg/{w}")) + 3)).collect();
    daemon.wait_metrics("every watcher polling three more times", |m: &Metrics| {
        target.iter().all(|(w, n)| m.watcher(POLLS, w) >= *n)
    });
    most = most.max(sessions());
    assert!((1..=4).contains(&most), "{most} connections for 100 watchers (the pool holds 4)");
    daemon.stop();
}
