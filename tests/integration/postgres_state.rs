//! The shared Postgres state store (`state: {type: postgres}`) through the real binary:
//! a deployment moved from SQLite with `state export` / `state import`, the daemon
//! running on it, the `state` commands against it, and a server that is not there at
//! start waited for. The store's own behaviour (the suite every store runs, racing
//! migrations, compatibility) is tested in `src/state/postgres.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::postgres::{Pg, url};
use crate::util::{ClosedPort, Project, eventually, http_get};

const WAIT: Duration = Duration::from_secs(60);

const WATCHER: &str = "namespace: t\nname: inbox\nsource:\n  type: local_dir\n  path: inbox\n  min_age: 0s\n\
     sink:\n  type: file\n  path: out/events.jsonl\npoll_interval: 100ms\n";

/// A daemon file on a Postgres store in a schema of the test's own.
fn postgres_config(url: &str, schema: &str) -> String {
    format!(
        "watchers_dir: watchers\nstate:\n  type: postgres\n  connection: \"{url}\"\n  sslmode: disable\n  \
         schema: \"{schema}\"\nshutdown_timeout: 10s\nhttp:\n  listen: 127.0.0.1:0\n"
    )
}

fn events(project: &Project) -> Vec<serde_json::Value> {
    std::fs::read_to_string(project.path().join("out/events.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn ids(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().expect("id").to_string()).collect()
}

#[test]
fn a_deployment_moves_from_sqlite_to_postgres_and_runs_on_with_the_same_ids() {
    let schema = format!("hw move {}", std::process::id());
    let pg = Pg::connect();
    pg.exec(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));

    // On SQLite: two files announced, and a pending batch left behind by hand (a
    // delivery cut short), which must be delivered after the move with its ids.
    let project = Project::default_config();
    project.watcher("inbox", WATCHER);
    project.write("inbox/a.csv", "a");
    project.write("inbox/b.csv", "b");
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let before = ids(&events(&project));
    assert_eq!(before.len(), 2);
    let export = project.run(&["state", "export"]);
    assert_eq!(export.code, Some(0), "{export:?}");
    project.write("state.jsonl", &export.stdout);

    // Into Postgres.
    std::fs::write(project.path().join("config/highwater.yaml"), postgres_config(&url(), &schema)).unwrap();
    let bad = project
        .write("bad.jsonl", "{\"namespace\": \"t\", \"name\": \"x\", \"watermark\": null}\nnot json\n");
    let out = project.run(&["state", "import", bad.to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("bad.jsonl line 2"), "{}", out.stderr);
    let out = project.run(&["state", "import", "state.jsonl"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("1 watchers imported"), "{}", out.stderr);
    let again = project.run(&["state", "import", "state.jsonl"]);
    assert_ne!(again.code, Some(0), "a watcher with state is refused: {again:?}");
    assert!(again.stderr.contains("--replace"), "{}", again.stderr);
    assert_eq!(project.run(&["state", "import", "--replace", "state.jsonl"]).code, Some(0));
    let exported = project.run(&["state", "export"]);
    assert_eq!(exported.stdout, export.stdout, "the state reads back as it was exported");
    let list = project.run(&["state", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("state list JSON");
    assert_eq!(list[0]["watermark"]["remembered"], 2);

    // The daemon on Postgres announces only what is new.
    let mut daemon = project.start();
    project.land("inbox/c.csv", "c");
    daemon.wait_delivered("t/inbox", 1);
    let all = events(&project);
    assert_eq!(all.len(), 3, "{all:?}");
    assert_eq!(ids(&all[..2]), before);
    let (code, _, body) = http_get(&daemon.http_addr(), "/readyz");
    assert_eq!(code, 200, "{body}");
    daemon.stop();

    // And back to SQLite, into a new file: the same state.
    let exported = project.run(&["state", "export"]);
    std::fs::write(
        project.path().join("config/highwater.yaml"),
        "watchers_dir: watchers\nstate:\n  type: sqlite\n  path: state/back.db\n",
    )
    .unwrap();
    project.write("back.jsonl", &exported.stdout);
    assert_eq!(project.run(&["state", "import", "back.jsonl"]).code, Some(0));
    assert_eq!(project.run(&["state", "export"]).stdout, exported.stdout);
    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 0 delivered"), "{}", out.stderr);
    let unique: BTreeSet<String> = ids(&events(&project)).into_iter().collect();
    assert_eq!(unique.len(), 3);

    pg.exec(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
}

#[test]
fn a_store_that_is_not_there_at_start_is_waited_for_then_used() {
    // A port with nothing listening: the daemon must wait, say so, and not start
    // watchers; then it is stopped cleanly.
    let closed = ClosedPort::new();
    let project = Project::new(&postgres_config(
        &format!("postgres://postgres@127.0.0.1:{}/none", closed.port),
        "highwater",
    ));
    project.watcher("inbox", WATCHER);
    let mut daemon = project.start();
    let line = daemon.wait_log_field("waiting", true);
    assert!(line.to_string().contains("cannot be reached"), "{line}");
    let addr = daemon.http_addr();
    let (code, _, body) = eventually("readyz to say why", WAIT, || {
        let got = http_get(&addr, "/readyz");
        (got.0 == 503 && got.2.contains("cannot be reached")).then_some(got)
    });
    assert_eq!(code, 503, "{body}");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn the_writing_state_commands_work_on_a_postgres_store() {
    let schema = format!("hw commands {}", std::process::id());
    let pg = Pg::connect();
    pg.exec(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
    let project = Project::new(&postgres_config(&url(), &schema));
    project.watcher("inbox", WATCHER);
    project.write("inbox/a.csv", "a");
    project.write("inbox/b.csv", "b");
    let run = |args: &[&str]| {
        let out = project.run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        out
    };
    run(&["once"]);
    let first = ids(&events(&project));
    assert_eq!(first.len(), 2);

    // get, then set the same value back: the watcher's source reads it, nothing moves.
    let watermark = run(&["state", "get", "t/inbox", "watermark"]).stdout;
    project.write("watermark.json", &watermark);
    run(&["state", "set", "t/inbox", "watermark", "--file", "watermark.json"]);
    assert_eq!(run(&["state", "get", "t/inbox", "watermark"]).stdout, watermark);
    run(&["once"]);
    assert_eq!(events(&project).len(), 2, "the same watermark announces nothing again");

    // A key of the operator's, written and deleted.
    run(&["state", "set", "t/inbox", "note", "\"moved by hand\""]);
    assert!(run(&["state", "get", "t/inbox", "note"]).stdout.contains("moved by hand"));
    run(&["state", "delete", "t/inbox", "note"]);

    // rename away and back: the state goes with the name, in one transaction.
    run(&["state", "rename", "t/inbox", "t/elsewhere"]);
    let list: serde_json::Value =
        serde_json::from_str(&run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    let rows = list.as_array().expect("a list");
    let moved = rows.iter().find(|w| w["name"] == "elsewhere").expect("t/elsewhere listed");
    assert_eq!(moved["remembered"], 2, "{list}");
    let left = rows.iter().find(|w| w["name"] == "inbox");
    assert!(left.is_none_or(|w| w["watermark"].is_null()), "nothing stays under the old name: {list}");
    run(&["state", "rename", "t/elsewhere", "t/inbox"]);

    // reset: the watcher starts again where `start:` says, with the same ids.
    run(&["state", "reset", "t/inbox"]);
    run(&["once"]);
    let all = ids(&events(&project));
    assert_eq!(all.len(), 4, "{all:?}");
    let again: BTreeSet<&String> = all[2..].iter().collect();
    assert_eq!(again, first.iter().collect(), "announced again under the same ids");

    pg.exec(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
}
