//! Postgres values at the edges of what the server stores: each becomes JSON (json and
//! jsonb exactly as the server wrote them), without holding back its row or any other.
//! (What the source cannot decode goes as text, marked: no value the server sends is
//! known to, so the unit tests of `values` cover it.)

use serde_json::{Value, json};

use crate::postgres::{Schema, watcher_project};

/// The events of one `highwater once`, as JSON and as the lines the sink wrote.
fn once_events(project: &crate::util::Project) -> (Vec<Value>, Vec<String>, String) {
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    // Numbers beyond a 64-bit float are read as a marker here: the test's parser
    // cannot hold them (the lines themselves are checked as text).
    let events = lines
        .iter()
        .map(|l| {
            let readable =
                l.replace("1e400", "\"1e400\"").replace(&format!("1{}", "0".repeat(400)), "\"1e400\"");
            serde_json::from_str(&readable).expect("JSON event")
        })
        .collect();
    (events, lines, out.stderr)
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
           '24:00:00', '{{\"a\": 1e400, \"n\": 12345678901234567890123456789}}', \
           '[1e400, 2, 12345678901234567890123456789]', '[0:2]={{1,2,3}}', '[-1:0]={{1.50,2}}'); \
         INSERT INTO {table} VALUES (3, '-infinity', '4714-11-24 00:00:00+00 BC', 'infinity', \
           '00:00:00', '{{\"b\": 1}}', E'{{\"x\":\\n  [1,\\r\\n 2.50]}}', '{{7}}', '{{}}'); \
         INSERT INTO {table} (id, ts) VALUES (4, '9999-12-31 23:59:59.5')"
    ));
    let project = watcher_project(
        &table,
        "  cursor: id\n  xid_column: hx\n  columns: [ts, tstz, day, t, doc, raw, ints, nums]",
    );
    let (events, lines, stderr) = once_events(&project);
    let rows: Vec<&Value> = events.iter().map(|e| &e["item"]).collect();
    assert_eq!(
        rows.iter().map(|r| r["key"]["id"].as_i64().expect("id")).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    // json and jsonb go as the server wrote them: no number rounded. jsonb writes
    // 1e400 as the digits of a numeric; json keeps the text as written.
    let exact = format!("\"doc\":{{\"a\": 1{}, \"n\": 12345678901234567890123456789}}", "0".repeat(400));
    assert!(lines[1].contains(&exact), "{}", lines[1]);
    assert!(lines[1].contains("\"raw\":[1e400, 2, 12345678901234567890123456789]"), "{}", lines[1]);
    // A json value's line breaks are dropped, so the event stays one line.
    assert!(lines[2].contains("\"raw\":{\"x\":  [1, 2.50]}"), "{}", lines[2]);
    assert_eq!(rows[0]["columns"]["ts"], "2026-01-01T00:00:00");
    assert!(rows[0].get("as_text").is_none(), "{}", rows[0]);
    let odd = &rows[1]["columns"];
    assert_eq!(odd["ts"], "infinity");
    assert_eq!(odd["tstz"], "294276-12-31 23:59:59.999999+00");
    assert_eq!(odd["day"], "-infinity");
    assert_eq!(odd["t"], "24:00:00");
    assert_eq!(odd["ints"], json!({"lower_bounds": [0], "values": [1, 2, 3]}));
    assert_eq!(odd["nums"], json!({"lower_bounds": [-1], "values": ["1.50", "2"]}));
    assert!(rows[1].get("as_text").is_none(), "{}", rows[1]);
    let other = &rows[2]["columns"];
    assert_eq!(other["ts"], "-infinity");
    assert_eq!(other["tstz"], "4714-11-24 00:00:00+00 BC");
    assert_eq!(other["day"], "infinity");
    assert_eq!(other["t"], "00:00:00");
    assert_eq!(other["doc"], json!({"b": 1}));
    assert_eq!(other["raw"], json!({"x": [1, 2.5]}));
    assert_eq!(other["ints"], json!([7]));
    assert_eq!(other["nums"], json!([]));
    assert_eq!(rows[3]["columns"]["ts"], "9999-12-31T23:59:59.500");
    assert!(!stderr.contains("as_text_total"), "{stderr}");
}
