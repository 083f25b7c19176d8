//! What the Postgres source makes of its table and its session, against the real
//! server: quoted table names and `where` comments, the xid column's default and
//! index, lock and statement timeouts, and the time zone a `grace` delay compares in.

use serde_json::Value;

use crate::postgres::{Pg, Schema, ids, start, url, watcher_project};
use crate::util::{Project, WAIT};

const ROWS: &str = "pg/rows";

/// The JSON log lines of a finished command.
fn log_lines(stderr: &str) -> Vec<Value> {
    stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[test]
fn a_table_name_with_a_dot_is_quoted_and_a_where_comment_cuts_nothing() {
    let schema = Schema::new("names");
    let table = format!("{}.\"Odd.Table\"", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, note text, hx xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         CREATE INDEX ON {table} (hx, id); \
         INSERT INTO {table} (id, note) VALUES (1, 'a'), (2, 'skip'), (3, 'b')"
    ));
    let project = watcher_project(
        &format!("'{table}'"),
        "  cursor: id\n  xid_column: hx\n  where: \"note <> 'skip' -- rows marked skip are drafts\"",
    );
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let events: Vec<Value> = out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(ids(&events), vec![1, 3]);
    assert_eq!(events[0]["item"]["table"], table);
    // A dotted name without quotes is refused before anything connects.
    let project = watcher_project(&format!("{}.Odd.Table", schema.name), "  cursor: id\n  xid_column: hx");
    let out = project.run(&["check"]);
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(out.stderr.contains("in double quotes"), "{}", out.stderr);
}

#[test]
fn an_xid_column_postgres_does_not_fill_is_refused_and_a_missing_index_is_warned() {
    let schema = Schema::new("xid_checks");
    let zero = format!("{}.zero", schema.name);
    let plain = format!("{}.plain", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {zero} (id int PRIMARY KEY, hx xid8 NOT NULL DEFAULT '0'); \
         CREATE INDEX ON {zero} (hx, id); \
         CREATE TABLE {plain} (id int PRIMARY KEY, hx xid8 NOT NULL DEFAULT pg_current_xact_id())"
    ));
    let project = watcher_project(&zero, "  cursor: id\n  xid_column: hx");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(
        out.stderr.contains("xid_column hx of")
            && out.stderr.contains("must have DEFAULT pg_current_xact_id() (it has DEFAULT '0'::xid8)"),
        "{}",
        out.stderr
    );
    // The right default without an index works, with a warning naming the column.
    let project = watcher_project(&plain, "  cursor: id\n  xid_column: hx");
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let warned = log_lines(&out.stderr)
        .into_iter()
        .any(|l| l["level"] == "WARN" && l["column"] == "hx" && l["table"] == plain);
    assert!(warned, "no warning about the missing index:\n{}", out.stderr);
    schema.pg.exec(&format!("CREATE INDEX ON {plain} (hx, id)"));
    let out = project.run(&["check", "--connect"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!log_lines(&out.stderr).iter().any(|l| l["column"] == "hx"), "{}", out.stderr);
}

#[test]
fn a_poll_waiting_on_a_lock_gives_up_shows_state_waiting_and_resumes() {
    let schema = Schema::new("lock_wait");
    let table = schema.orders();
    schema.pg.exec(&format!("INSERT INTO {table} (note) VALUES ('a')"));
    let locker = Pg::connect();
    locker.exec(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"));
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx\n  lock_timeout: 200ms");
    // `once` returns instead of waiting for the lock, and says why.
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("waiting on a lock another session holds"), "{}", out.stderr);
    let mut daemon = start(&project);
    daemon.wait_state(ROWS, "waiting");
    locker.exec("COMMIT");
    assert_eq!(ids(&daemon.events(1, WAIT)), vec![1]);
    daemon.wait_state(ROWS, "ok");
    daemon.stop();
    // A statement that runs too long is cancelled and retried, not waited on forever.
    let project = watcher_project(
        &table,
        "  cursor: id\n  xid_column: hx\n  statement_timeout: 100ms\n  where: \"(SELECT pg_sleep(0.5)) IS NOT NULL\"",
    );
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.contains("statement timeout"), "{}", out.stderr);
}

#[test]
fn grace_on_a_local_timestamp_counts_in_the_servers_time_zone() {
    let schema = Schema::new("grace_zone");
    // Writers far west and far east of UTC, each writing its local time.
    let zones = [("west", "America/New_York"), ("east", "Asia/Tokyo")];
    let project = Project::default_config();
    for (name, zone) in zones {
        let table = format!("{}.{name}", schema.name);
        schema.pg.exec(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, at timestamp NOT NULL); CREATE INDEX ON {table} (at, id)"
        ));
        // The server's zone, as a session that sets none gets it.
        let url = url();
        let joint = if url.contains('?') { '&' } else { '?' };
        let connection = format!("{url}{joint}options=-c%20TimeZone%3D{}", zone.replace('/', "%2F"));
        project.watcher(
            name,
            &format!(
                "namespace: pg\nname: {name}\npoll_interval: 100ms\nsource:\n  type: postgres\n  \
                 connection: \"{connection}\"\n  table: {table}\n  mode: cursor\n  cursor: [at, id]\n  \
                 grace: 2s\nsink: {{type: stdout}}\n"
            ),
        );
    }
    let mut daemon = start(&project);
    daemon.wait_polls("pg/west", 1);
    daemon.wait_polls("pg/east", 1);
    for (name, zone) in zones {
        schema.pg.exec(&format!(
            "SET TimeZone = '{zone}'; INSERT INTO {}.{name} VALUES (1, localtimestamp); RESET TimeZone",
            schema.name
        ));
    }
    // Held back by the grace delay in both zones: west of UTC the row is not five hours
    // old already...
    daemon.assert_idle(&["pg/west", "pg/east"], 3);
    // ...and east of UTC it is not nine hours in the future.
    let events = daemon.events(2, WAIT);
    let mut watchers: Vec<&str> = events.iter().map(|e| e["watcher"].as_str().expect("watcher")).collect();
    watchers.sort_unstable();
    assert_eq!(watchers, vec!["east", "west"]);
    daemon.stop();
}
