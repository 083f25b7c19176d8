//! Postgres values at the edges of what the server stores: each becomes JSON, and one
//! that cannot be decoded goes as text, marked, without holding back its row or any
//! other.

use serde_json::{Value, json};

use crate::postgres::{Schema, watcher_project};

fn once_events(project: &crate::util::Project) -> (Vec<Value>, String) {
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let events = out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON event")).collect();
    (events, out.stderr)
}

#[test]
fn every_value_postgres_stores_reaches_the_event_and_none_blocks_the_watcher() {
    let schema = Schema::new("odd_values");
    let table = format!("{}.odd", schema.name);
    schema.pg.exec(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, ts timestamp, tstz timestamptz, day date, \
         t time, doc jsonb, raw json, ints int[], nums numeric[], \
         hx xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         INSERT INTO {table} (id, ts) VALUES (1, '2026-01-01 00:00:00'); \
         INSERT INTO {table} VALUES (2, 'infinity', '294276-12-31 23:59:59.999999+00', '-infinity', \
           '24:00:00', '{{\"a\": 1e400}}', '[1e400, 2]', '[0:2]={{1,2,3}}', '[-1:0]={{1.50,2}}'); \
         INSERT INTO {table} VALUES (3, '-infinity', '4714-11-24 00:00:00+00 BC', 'infinity', \
           '00:00:00', '{{\"b\": 1}}', '{{}}', '{{7}}', '{{}}'); \
         INSERT INTO {table} (id, ts) VALUES (4, '9999-12-31 23:59:59.5')"
    ));
    let project = watcher_project(
        &table,
        "  cursor: id\n  xid_column: hx\n  columns: [ts, tstz, day, t, doc, raw, ints, nums]",
    );
    let (events, stderr) = once_events(&project);
    let rows: Vec<&Value> = events.iter().map(|e| &e["item"]).collect();
    assert_eq!(
        rows.iter().map(|r| r["key"]["id"].as_i64().expect("id")).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(rows[0]["columns"]["ts"], "2026-01-01T00:00:00");
    assert!(rows[0].get("as_text").is_none(), "{}", rows[0]);
    let odd = &rows[1]["columns"];
    assert_eq!(odd["ts"], "infinity");
    assert_eq!(odd["tstz"], "294276-12-31 23:59:59.999999+00");
    assert_eq!(odd["day"], "-infinity");
    assert_eq!(odd["t"], "24:00:00");
    // jsonb keeps 1e400 as the digits of a numeric; json keeps the text as written.
    assert!(odd["doc"].as_str().expect("doc as text").starts_with("{\"a\": 1000000000"), "{odd}");
    assert_eq!(odd["raw"], "[1e400, 2]");
    assert_eq!(odd["ints"], json!({"lower_bounds": [0], "values": [1, 2, 3]}));
    assert_eq!(odd["nums"], json!({"lower_bounds": [-1], "values": ["1.50", "2"]}));
    assert_eq!(rows[1]["as_text"], json!(["doc", "raw"]));
    let other = &rows[2]["columns"];
    assert_eq!(other["ts"], "-infinity");
    assert_eq!(other["tstz"], "4714-11-24 00:00:00+00 BC");
    assert_eq!(other["day"], "infinity");
    assert_eq!(other["t"], "00:00:00");
    assert_eq!(other["doc"], json!({"b": 1}));
    assert_eq!(other["raw"], json!({}));
    assert_eq!(other["ints"], json!([7]));
    assert_eq!(other["nums"], json!([]));
    assert_eq!(rows[3]["columns"]["ts"], "9999-12-31T23:59:59.500");
    // The warning counts what went as text.
    let warning = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l.get("as_text_total").is_some())
        .unwrap_or_else(|| panic!("no counted warning:\n{stderr}"));
    assert_eq!(warning["as_text_total"], 2);
    assert_eq!(warning["columns"], "doc, raw");
    assert_eq!(warning["level"], "WARN");
}
