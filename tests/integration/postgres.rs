//! Postgres source tests against a real server: commit order, long and rolled-back
//! transactions, restarts, killed connections, types and query plans.
//!
//! The server is the one `HIGHWATER_TEST_PG_URL` names (`tests/setup/postgres.sh`
//! exports it; `scripts/test.sh` runs it). Each test works in a schema of its own and
//! drops it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::conformance::{self, SourceFixture};
use crate::util::{Daemon, POLL_ERRORS, Project, field_str};

const WAIT: Duration = Duration::from_secs(20);

/// The watcher every test here runs.
const ROWS: &str = "pg/rows";

pub(crate) fn url() -> String {
    std::env::var("HIGHWATER_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "HIGHWATER_TEST_PG_URL is not set: run the tests with scripts/test.sh, which finds or starts \
             a PostgreSQL server (tests/setup/postgres.sh) and points the Postgres tests at it"
        )
    })
}

/// A connection of the test's own, driven by a runtime of its own so that tests stay
/// plain blocking code like the rest of the suite.
pub(crate) struct Pg {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    pub(crate) fn connect() -> Pg {
        Pg::connect_to(&url())
    }

    /// A connection to another server (a private cluster of a test's own).
    pub(crate) fn connect_to(url: &str) -> Pg {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = rt.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap_or_else(|e| {
                    panic!("cannot connect to {url} (HIGHWATER_TEST_PG_URL; scripts/test.sh sets it up): {e}")
                });
            tokio::spawn(async move {
                let _ = connection.await;
            });
            client
        });
        Pg { rt, client }
    }

    pub(crate) fn exec(&self, sql: &str) {
        self.rt.block_on(self.client.batch_execute(sql)).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    pub(crate) fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.rt.block_on(self.client.query(sql, &[])).unwrap_or_else(|e| panic!("{sql}: {e:?}"))
    }

    pub(crate) fn text(&self, sql: &str) -> String {
        self.query(sql)[0].get(0)
    }
}

/// A schema for one test, dropped at the end.
pub(crate) struct Schema {
    pub(crate) pg: Pg,
    pub(crate) name: String,
}

impl Schema {
    pub(crate) fn new(name: &str) -> Schema {
        let pg = Pg::connect();
        let name = format!("hw_{name}");
        pg.exec(&format!("DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"));
        Schema { pg, name }
    }

    /// `orders(id bigserial primary key, note, hx xid8 default pg_current_xact_id())`,
    /// indexed on `(hx, id)` as docs/reference/postgres.md advises.
    pub(crate) fn orders(&self) -> String {
        let table = format!("{}.orders", self.name);
        self.pg.exec(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, note text, \
             hx xid8 NOT NULL DEFAULT pg_current_xact_id()); CREATE INDEX ON {table} (hx, id)"
        ));
        table
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let _ = self
            .pg
            .rt
            .block_on(self.pg.client.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)));
    }
}

pub(crate) fn watcher_project(table: &str, extra: &str) -> Project {
    let project = Project::default_config();
    project.watcher(
        "rows",
        &format!(
            "namespace: pg\nname: rows\npoll_interval: 100ms\nbatch_size: 100\n\
             source:\n  type: postgres\n  connection: \"{}\"\n  table: {table}\n{extra}\nsink: {{type: stdout}}\n",
            url()
        ),
    );
    project
}

fn xid_project(table: &str, batch_size: usize) -> Project {
    let project = watcher_project(table, "  cursor: id\n  xid_column: hx");
    let path = project.path().join("watchers/rows.yaml");
    let text = std::fs::read_to_string(&path).expect("read watcher");
    std::fs::write(&path, text.replace("batch_size: 100", &format!("batch_size: {batch_size}")))
        .expect("write");
    project
}

pub(crate) fn ids(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["item"]["key"]["id"].as_i64().expect("id")).collect()
}

fn assert_unique(events: &[Value]) {
    let set: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(set.len(), events.len(), "repeated event ids: {events:?}");
}

pub(crate) fn start(project: &Project) -> Daemon {
    project.start_with(&[("RUST_LOG", "highwater=debug")], &[])
}

#[test]
fn backlog_larger_than_one_batch_is_drained_once_in_order() {
    let schema = Schema::new("backlog");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'n' || g FROM generate_series(1, 250) g"));
    let project = xid_project(&table, 100);
    let mut daemon = start(&project);
    let events = daemon.events(250, WAIT);
    assert_eq!(ids(&events), (1..=250).collect::<Vec<_>>());
    assert_unique(&events);
    daemon.assert_idle(&[ROWS], 2);
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

/// The daemon reads the next batch while it delivers one: rows that commit meanwhile
/// (one of them late, out of order) and a kill -9 in the middle of the drain lose
/// nothing, and whatever comes twice comes with the id it had.
#[test]
fn reading_ahead_through_commits_and_a_kill_loses_nothing() {
    let schema = Schema::new("ahead");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'n' || g FROM generate_series(1, 3000) g"));
    let late = Pg::connect();
    late.exec(&format!("BEGIN; INSERT INTO {table} (note) VALUES ('late')")); // id 3001
    let project = xid_project(&table, 7);
    let mut daemon = start(&project);
    let mut events = daemon.events(1000, WAIT);
    for _ in 0..10 {
        schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'm' || g FROM generate_series(1, 10) g"));
    }
    late.exec("COMMIT");
    events.extend(daemon.events(50, WAIT));
    daemon.signal(libc::SIGKILL);
    daemon.wait(WAIT);
    events.extend(daemon.events_written());
    let mut daemon = start(&project);
    // 3101 rows in all; after the kill, up to a batch (and what was read ahead of it)
    // may come again, with the same ids.
    let mut seen: BTreeMap<i64, String> = BTreeMap::new();
    while seen.len() < 3101 {
        for event in std::mem::take(&mut events) {
            let id = event["id"].as_str().expect("event id").to_string();
            let row = event["item"]["key"]["id"].as_i64().expect("row id");
            if let Some(before) = seen.insert(row, id.clone()) {
                assert_eq!(before, id, "row {row} came again under another id");
            }
        }
        if seen.len() < 3101 {
            events = daemon.events(1, WAIT);
        }
    }
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), (1..=3101).collect::<Vec<_>>());
    daemon.assert_idle(&[ROWS], 2);
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn out_of_order_commit_race_loses_nothing() {
    let schema = Schema::new("race");
    let table = schema.orders();
    let project = xid_project(&table, 100);
    let mut daemon = start(&project);
    daemon.wait_polls(ROWS, 1);
    // Connection A takes id 1 and holds its transaction open; B takes id 2 and commits.
    let a = Pg::connect();
    a.exec(&format!("BEGIN; INSERT INTO {table} (note) VALUES ('a')"));
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('b')"));
    let first = daemon.events(1, WAIT);
    assert_eq!(ids(&first), vec![2]);
    daemon.assert_idle(&[ROWS], 2);
    // A commits last: its lower id still gets its event, once.
    a.exec("COMMIT");
    let second = daemon.events(1, WAIT);
    assert_eq!(ids(&second), vec![1]);
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

#[test]
fn long_open_transaction_delays_only_itself_across_a_restart() {
    let schema = Schema::new("long_txn");
    let table = schema.orders();
    let project = xid_project(&table, 100);
    let long = Pg::connect();
    long.exec(&format!("BEGIN; INSERT INTO {table} (note) VALUES ('long')"));
    let mut daemon = start(&project);
    for round in 0..3 {
        schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('r{round}')"));
        let events = daemon.events(1, WAIT);
        assert_eq!(ids(&events), vec![round + 2]);
    }
    daemon.stop();
    let mut daemon = start(&project);
    daemon.assert_idle(&[ROWS], 2);
    long.exec("COMMIT");
    let events = daemon.events(1, WAIT);
    assert_eq!(ids(&events), vec![1]);
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

#[test]
fn rollback_gap_does_not_stall() {
    let schema = Schema::new("rollback");
    let table = schema.orders();
    let project = xid_project(&table, 100);
    let mut daemon = start(&project);
    let a = Pg::connect();
    a.exec(&format!("BEGIN; INSERT INTO {table} (note) SELECT 'x' FROM generate_series(1, 5)"));
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('kept')"));
    a.exec("ROLLBACK");
    let events = daemon.events(1, WAIT);
    assert_eq!(ids(&events), vec![6]);
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('after')"));
    let events = daemon.events(1, WAIT);
    assert_eq!(ids(&events), vec![7]);
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

/// Ties and batches ending inside them are the conformance suite's; this is the order.
#[test]
fn cursor_mode_announces_in_cursor_order_not_key_order() {
    let schema = Schema::new("ties");
    let table = format!("{}.events", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, at timestamptz NOT NULL); \
         CREATE INDEX ON {table} (at, id); \
         INSERT INTO {table} SELECT g, '2026-01-01T00:00:00Z' FROM generate_series(1, 10) g; \
         INSERT INTO {table} VALUES (11, '2025-12-31T00:00:00Z'), (12, '2026-01-02T00:00:00Z')"
    ));
    let project = watcher_project(&table, "  mode: cursor\n  cursor: [at, id]");
    let path = project.path().join("watchers/rows.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("batch_size: 100", "batch_size: 3")).expect("write");
    let mut daemon = start(&project);
    let events = daemon.events(12, WAIT);
    assert_eq!(ids(&events), vec![11, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]);
    assert_eq!(events[1]["item"]["cursor"], json!({"at": "2026-01-01T00:00:00Z", "id": 1}));
    assert_unique(&events);
    daemon.stop();
}

#[test]
fn types_round_trip_as_faithful_json() {
    let schema = Schema::new("types");
    let table = format!("{}.typed", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, small smallint, big bigint, amount numeric(20,6), \
         ratio float8, flag boolean, label text, at timestamptz, local timestamp, day date, doc jsonb, \
         raw json, uid uuid, bytes bytea, tags text[], grid int[], amounts numeric[], span interval, \
         nothing text, hx xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         INSERT INTO {table} VALUES (9007199254740993, -3, -9223372036854775808, 12345678901234.000001, \
         0.5, true, 'é \"quoted\"', '2026-03-04 05:06:07.123456+02', '2026-03-04 05:06:07', '2026-03-04', \
         '{{\"a\": [1, 2.5, null]}}', '{{\"b\": 1}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\xdeadbeef', \
         ARRAY['x', NULL, 'y'], '{{{{1,2}},{{3,4}}}}', ARRAY[1.10, 2], '1 day 2 hours', NULL)"
    ));
    let columns = "[small, big, amount, ratio, flag, label, at, local, day, doc, raw, uid, bytes, tags, grid, amounts, span, nothing]";
    let project = watcher_project(&table, &format!("  cursor: id\n  xid_column: hx\n  columns: {columns}"));
    let mut daemon = start(&project);
    let event = daemon.events(1, WAIT).remove(0);
    let expected = json!({
        "id": 9007199254740993_i64, "small": -3, "big": i64::MIN, "amount": "12345678901234.000001",
        "ratio": 0.5, "flag": true, "label": "é \"quoted\"", "at": "2026-03-04T03:06:07.123456Z",
        "local": "2026-03-04T05:06:07", "day": "2026-03-04", "doc": {"a": [1, 2.5, null]},
        "raw": {"b": 1}, "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "bytes": "3q2+7w==",
        "tags": ["x", null, "y"], "grid": [[1, 2], [3, 4]], "amounts": ["1.10", "2"],
        "span": "1 day 02:00:00", "nothing": null
    });
    assert_eq!(event["item"]["columns"], expected);
    assert_eq!(event["item"]["kind"], "row");
    assert_eq!(event["item"]["table"], table);
    assert_eq!(event["item"]["key"], json!({"id": 9007199254740993_i64}));
    daemon.stop();
}

#[test]
fn restart_between_every_step_neither_loses_nor_repeats() {
    let schema = Schema::new("restarts");
    let table = schema.orders();
    let project = xid_project(&table, 2);
    let long = Pg::connect();
    let mut seen: Vec<i64> = Vec::new();
    let mut once = |project: &Project| {
        let out = project.run(&["once"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        for line in out.stdout.lines() {
            let event: Value = serde_json::from_str(line).expect("JSON");
            seen.push(event["item"]["key"]["id"].as_i64().expect("id"));
        }
    };
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'a' FROM generate_series(1, 5)"));
    once(&project); // 1, 2
    long.exec(&format!("BEGIN; INSERT INTO {table} (note) VALUES ('late')")); // id 6
    once(&project); // 3, 4
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('b')")); // id 7
    once(&project); // 5, then the pair is done
    once(&project); // 7
    once(&project); // nothing
    long.exec("COMMIT");
    once(&project); // 6
    once(&project); // nothing
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=7).collect::<Vec<_>>(), "delivered in this order: {seen:?}");
}

#[test]
fn terminated_connection_mid_poll_reconnects_without_loss_or_repeat() {
    let schema = Schema::new("terminate");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'a' FROM generate_series(1, 30)"));
    // Every query sleeps a little, so the test can kill the connection while one runs.
    let project = watcher_project(
        &table,
        "  cursor: id\n  xid_column: hx\n  where: \"(SELECT pg_sleep(0.3)) IS NOT NULL\"",
    );
    let path = project.path().join("watchers/rows.yaml");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text.replace("batch_size: 100", "batch_size: 10")).expect("write");
    let mut daemon = start(&project);
    let mut killed = 0;
    let deadline = std::time::Instant::now() + WAIT;
    while killed < 2 && std::time::Instant::now() < deadline {
        let n = schema.pg.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'highwater' AND state = 'active' AND query LIKE '%pg_sleep%'",
        );
        killed += n.len();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(killed >= 1, "never caught a poll in flight");
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'b' FROM generate_series(1, 5)"));
    let events = daemon.events(35, Duration::from_secs(60));
    assert_eq!(ids(&events), (1..=35).collect::<Vec<_>>());
    assert_unique(&events);
    daemon.assert_idle(&[ROWS], 2);
    assert!(daemon.metrics().watcher(POLL_ERRORS, ROWS) >= 1, "a terminated connection fails its poll");
    daemon.stop();
}

/// The SQL the source prepared, from the `sql` field of its debug log.
fn prepared_sql(daemon: &mut Daemon, needle: &str) -> String {
    let line = daemon.wait_log_where(&format!("with prepared SQL containing {needle}"), |l| {
        field_str(l, "sql").is_some_and(|sql| sql.contains(needle))
    });
    field_str(&line, "sql").expect("sql").to_string()
}

#[test]
fn queries_walk_an_index() {
    let schema = Schema::new("plan");
    let table = schema.orders();
    schema.pg.exec(&format!(
        // A history written by many transactions, as a real table's is (older xids).
        "INSERT INTO {table} (note, hx) SELECT 'n', (g % 500 + 3)::text::xid8 FROM generate_series(1, 20000) g; \
         ANALYZE {table}"
    ));
    let before = schema.pg.text("SELECT pg_current_snapshot()::text");
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'new' FROM generate_series(1, 5)"));
    let after = schema.pg.text("SELECT pg_current_snapshot()::text");
    let project = xid_project(&table, 100);
    let mut daemon = start(&project);
    let sql = prepared_sql(&mut daemon, "pg_snapshot_xmin($2");
    daemon.stop();
    let sql = sql.replace("$1", &format!("'{after}'")).replace("$2", &format!("'{before}'"));
    let sql = sql.replace("$3", "100");
    let plan: Vec<String> =
        schema.pg.query(&format!("EXPLAIN {sql}")).iter().map(|r| r.get::<_, String>(0)).collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan") || plan.contains("Index Only Scan") || plan.contains("Bitmap Index Scan"),
        "xid mode does not use the index:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "xid mode scans the table:\n{plan}");

    let project = watcher_project(&table, "  mode: cursor\n  cursor: id");
    let mut daemon = start(&project);
    let sql = prepared_sql(&mut daemon, "> ($1");
    daemon.stop();
    let sql = sql.replace("$1", "'19990'").replace("$2", "100");
    let plan: Vec<String> =
        schema.pg.query(&format!("EXPLAIN {sql}")).iter().map(|r| r.get::<_, String>(0)).collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan") || plan.contains("Index Only Scan"),
        "cursor mode does not use the index:\n{plan}"
    );
    assert!(!plan.contains("Seq Scan"), "cursor mode scans the table:\n{plan}");
}

#[test]
fn missing_table_and_column_are_clear_errors_on_check_connect() {
    let schema = Schema::new("missing");
    let table = schema.orders();
    let project = watcher_project(&format!("{}.nope", schema.name), "  cursor: id\n  xid_column: hx");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("table {}.nope does not exist", schema.name)), "{}", out.stderr);
    let project = watcher_project(&table, "  cursor: created_at\n  xid_column: hx");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(out.stderr.contains("column created_at does not exist"), "{}", out.stderr);
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn null_cursor_rows_are_skipped_with_a_warning() {
    let schema = Schema::new("nulls");
    let table = format!("{}.t", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, seq int, hx xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         INSERT INTO {table} VALUES (1, 1), (2, NULL), (3, 3)"
    ));
    let project = watcher_project(&table, "  cursor: seq\n  xid_column: hx");
    let mut daemon = start(&project);
    let events = daemon.events(2, WAIT);
    assert_eq!(ids(&events), vec![1, 3]);
    daemon.wait_counter(ROWS, "highwater_watcher_items_skipped_total", 1);
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

#[test]
fn batch_emit_lists_the_rows_of_a_poll() {
    let schema = Schema::new("batch");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'n' FROM generate_series(1, 5)"));
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx\n  emit: batch\n  columns: [note]");
    let mut daemon = start(&project);
    let event = daemon.events(1, WAIT).remove(0);
    assert_eq!(event["item"]["kind"], "rows");
    let rows = event["item"]["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4]["columns"], json!({"id": 5, "note": "n"}));
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

#[test]
fn tls_require_encrypts_and_verify_full_checks_the_certificate() {
    let schema = Schema::new("tls");
    assert_eq!(
        schema.pg.text("SHOW ssl"),
        "on",
        "the test server does not offer TLS: run the tests with scripts/test.sh, whose private cluster \
         (tests/setup/postgres.sh) does"
    );
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('a')"));
    // A name of its own: the daemons of other tests, some without TLS, are connected too.
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx\n  sslmode: require");
    let path = project.path().join("watchers/rows.yaml");
    let text = std::fs::read_to_string(&path).expect("read watcher");
    let url = url();
    let named = format!("{url}{}application_name=highwater_tls", if url.contains('?') { '&' } else { '?' });
    std::fs::write(&path, text.replace(&format!("\"{url}\""), &format!("\"{named}\""))).expect("write");
    let mut daemon = start(&project);
    assert_eq!(ids(&daemon.events(1, WAIT)), vec![1]);
    let encrypted = schema.pg.query(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'highwater_tls'",
    );
    assert!(!encrypted.is_empty() && encrypted.iter().all(|r| r.get::<_, bool>(0)), "not encrypted");
    daemon.stop();
    // The test server's certificate is not signed by anything this machine trusts for
    // the name 127.0.0.1, so verify-full must refuse it.
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx\n  sslmode: verify-full");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(out.stderr.contains("certificate"), "{}", out.stderr);
}

#[test]
fn pg_variables_fill_the_connection_and_the_password_stays_out_of_sight() {
    let schema = Schema::new("env");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('a')"));
    // postgres://USER@HOST:PORT/DB
    let rest = url().split_once("://").map(|(_, r)| r.to_string()).expect("url");
    let (user, rest) = rest.split_once('@').expect("user");
    let (hostport, db) = rest.split_once('/').expect("db");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    let project = Project::default_config();
    project.watcher(
        "rows",
        &format!(
            "namespace: pg\nname: rows\npoll_interval: 100ms\nsource:\n  type: postgres\n  table: {table}\n  \
             cursor: id\n  xid_column: hx\n  password_env: HW_TEST_SECRET\nsink: {{type: stdout}}\n"
        ),
    );
    let env = [
        ("PGHOST", host),
        ("PGPORT", port),
        ("PGUSER", user),
        ("PGDATABASE", db),
        ("HW_TEST_SECRET", "sekret-value"),
        ("RUST_LOG", "highwater=debug"),
    ];
    let mut daemon = project.start_with(&env, &[]);
    assert_eq!(ids(&daemon.events(1, WAIT)), vec![1]);
    let (_, logs) = daemon.stop();
    assert!(logs.iter().all(|l| !l.contains("sekret")), "password in logs");
    let out = project.run(&["watchers"]);
    assert!(!out.stdout.contains("sekret") && !out.stderr.contains("sekret"));
    // A variable that is not set is named; no value is shown.
    let out = project.command(&["once"]).env_remove("HW_TEST_SECRET").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HW_TEST_SECRET is not set"), "{stderr}");
}

#[test]
fn cursor_mode_grace_holds_rows_back_until_they_are_old_enough() {
    let schema = Schema::new("grace");
    let table = format!("{}.events", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); \
         CREATE INDEX ON {table} (at, id)"
    ));
    let project = watcher_project(&table, "  mode: cursor\n  cursor: [at, id]\n  grace: 3s");
    let mut daemon = start(&project);
    daemon.wait_polls(ROWS, 1);
    schema.pg.exec(&format!("INSERT INTO {table} (id) VALUES (1)"));
    // Polls go on and leave the row alone while it is younger than the grace.
    daemon.assert_idle(&[ROWS], 2);
    assert_eq!(ids(&daemon.events(1, WAIT)), vec![1]);
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

/// A TCP proxy in front of the test server that can drop every connection and refuse
/// service for a while, as a server restart does.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, open2) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped at once: the "server" is down
                }
                let Ok(server) = std::net::TcpStream::connect(&upstream) else { continue };
                let mut list = open2.lock().expect("lock");
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        list.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone().expect("clone"), server.try_clone().expect("clone")),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, up, open }
    }

    /// Drops every open connection and refuses new ones until `restore`.
    fn go_down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for stream in self.open.lock().expect("lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn server_restart_is_retried_with_backoff_and_resumes_from_the_watermark() {
    let schema = Schema::new("restart");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'a' FROM generate_series(1, 5)"));
    let rest = url().split_once("://").map(|(_, r)| r.to_string()).expect("url");
    let (user, rest) = rest.split_once('@').expect("user");
    let (hostport, db) = rest.split_once('/').expect("db");
    let upstream = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:5432") };
    let proxy = Proxy::start(upstream);
    let project = Project::default_config();
    project.watcher(
        "rows",
        &format!(
            "namespace: pg\nname: rows\npoll_interval: 100ms\nretry: {{initial: 100ms, max: 1s}}\n\
             source:\n  type: postgres\n  connection: \"postgres://{user}@127.0.0.1:{}/{db}\"\n  \
             sslmode: disable\n  table: {table}\n  cursor: id\n  xid_column: hx\nsink: {{type: stdout}}\n",
            proxy.port
        ),
    );
    let mut daemon = start(&project);
    assert_eq!(ids(&daemon.events(5, WAIT)), (1..=5).collect::<Vec<_>>());
    proxy.go_down();
    schema.pg.exec(&format!("INSERT INTO {table} (note) SELECT 'b' FROM generate_series(1, 5)"));
    // Polls fail and are retried while the server is away.
    let errors = daemon.metrics().watcher(POLL_ERRORS, ROWS);
    daemon.wait_counter(ROWS, POLL_ERRORS, errors + 2);
    proxy.restore();
    let events = daemon.events(5, WAIT);
    assert_eq!(ids(&events), (6..=10).collect::<Vec<_>>());
    daemon.assert_idle(&[ROWS], 2);
    daemon.stop();
}

/// A table of its own in a schema of its own. In `xid` mode the rows of one
/// [`SourceFixture::add`] are one transaction (they share `hx`); in `cursor` mode they
/// share the timestamp `at`: either way, a tie on the first cursor column.
struct PgSource {
    schema: Schema,
    table: String,
    xid: bool,
}

impl PgSource {
    fn new(name: &str, xid: bool) -> Self {
        let schema = Schema::new(name);
        let table = format!("{}.items", schema.name);
        let order =
            if xid { "hx xid8 NOT NULL DEFAULT pg_current_xact_id()" } else { "at timestamptz NOT NULL" };
        let first = if xid { "hx" } else { "at" };
        schema.pg.exec(&format!(
            "CREATE TABLE {table} (id bigserial PRIMARY KEY, name text NOT NULL, {order}); \
             CREATE INDEX ON {table} ({first}, id)"
        ));
        PgSource { schema, table, xid }
    }
}

impl SourceFixture for PgSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn source_keys(&self) -> String {
        let mode = if self.xid {
            "  cursor: id\n  xid_column: hx\n"
        } else {
            "  mode: cursor\n  cursor: [at, id]\n"
        };
        format!("  connection: \"{}\"\n  table: {}\n{mode}  columns: [name]\n", url(), self.table)
    }

    fn add(&self, names: &[&str]) {
        let rows: Vec<String> = names
            .iter()
            .map(|n| if self.xid { format!("('{n}')") } else { format!("('{n}', now())") })
            .collect();
        let columns = if self.xid { "name" } else { "name, at" };
        // One statement: one transaction, and one `now()`.
        self.schema.pg.exec(&format!("INSERT INTO {} ({columns}) VALUES {}", self.table, rows.join(", ")));
    }

    fn name_of(&self, event: &Value) -> String {
        event["item"]["columns"]["name"].as_str().expect("name column").to_string()
    }

    fn check_item(&self, event: &Value) {
        let item = &event["item"];
        assert_eq!(item["kind"], "row", "{event}");
        assert_eq!(item["table"], self.table.as_str(), "{event}");
        assert!(item["key"]["id"].is_i64(), "{event}");
        assert_eq!(item["columns"]["id"], item["key"]["id"], "{event}");
        if !self.xid {
            assert_eq!(item["cursor"]["id"], item["key"]["id"], "{event}");
            assert!(item["cursor"]["at"].is_string(), "{event}");
        }
    }
}

#[test]
fn postgres_conformance_xid_mode() {
    conformance::run(&PgSource::new("conformance_xid", true));
}

#[test]
fn postgres_conformance_cursor_mode() {
    conformance::run(&PgSource::new("conformance_cursor", false));
}
