//! The behaviour every `process_state` store must show, over the [`Store`] trait: each
//! backend's tests run it against a fresh store and keep only what is specific to them.

use serde_json::json;

use super::{Expect, Keys, Op, Record, Store, StoreError, prefix_end};
use crate::json::Json;

/// The stored text of a JSON value.
fn j(value: serde_json::Value) -> Json {
    Json::encode(&value).expect("encode")
}

/// Writes one key under `expect`; returns the version written.
async fn put(s: &dyn Store, key: &str, value: serde_json::Value, expect: Expect) -> Result<i64, StoreError> {
    let written = s.write("ns", "w", vec![Op::put(key, j(value), expect)]).await?;
    Ok(written[0].expect("a put returns its version"))
}

/// Runs every case against `s`, which must be empty.
pub async fn run(s: &dyn Store) {
    put_get_versions_grow(s).await;
    clear(s).await;
    write_returns_the_versions_it_wrote(s).await;
    clear(s).await;
    runs_of_untracked_puts_write_every_row_in_order(s).await;
    clear(s).await;
    a_stale_version_is_refused(s).await;
    clear(s).await;
    a_failed_transaction_writes_nothing(s).await;
    clear(s).await;
    list_and_delete(s).await;
    clear(s).await;
    ranges_of_keys_are_listed_counted_and_deleted(s).await;
    clear(s).await;
    rename_moves_every_row_at_once_and_never_onto_rows(s).await;
    clear(s).await;
    values_keep_their_text(s).await;
}

/// Deletes every row, watcher by watcher.
async fn clear(s: &dyn Store) {
    for ((ns, name), _) in s.count(None, None, Keys::Under("")).await.unwrap() {
        s.write(&ns, &name, vec![Op::delete_under("")]).await.unwrap();
    }
    assert!(s.list(None, None, Keys::Under("")).await.unwrap().is_empty());
}

async fn rename_moves_every_row_at_once_and_never_onto_rows(s: &dyn Store) {
    s.write(
        "a",
        "old",
        vec![Op::put("k1", j(json!(1)), Expect::Any), Op::put("k2", j(json!(2)), Expect::Any)],
    )
    .await
    .unwrap();
    s.write("a", "taken", vec![Op::put("k1", j(json!(3)), Expect::Any)]).await.unwrap();
    let err = s.rename(("a", "old"), ("a", "taken")).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(s.rename(("a", "old"), ("b", "new")).await.unwrap(), 2);
    let all = Keys::Under("");
    assert!(s.list(Some("a"), Some("old"), all).await.unwrap().is_empty());
    let moved = s.list(Some("b"), Some("new"), all).await.unwrap();
    assert_eq!(moved.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
    assert_eq!(moved[1].version, 1, "versions move with the rows");
}

async fn put_get_versions_grow(s: &dyn Store) {
    assert_eq!(s.get("ns", "w", "k").await.unwrap(), None);
    assert_eq!(put(s, "k", json!({"a": 1}), Expect::Any).await.unwrap(), 1);
    assert_eq!(put(s, "k", json!({"a": 2}), Expect::Any).await.unwrap(), 2);
    let r = s.get("ns", "w", "k").await.unwrap().unwrap();
    assert_eq!((r.value, r.version), (j(json!({"a": 2})), 2));
}

async fn write_returns_the_versions_it_wrote(s: &dyn Store) {
    put(s, "b", json!(1), Expect::Any).await.unwrap();
    put(s, "b", json!(2), Expect::Any).await.unwrap();
    let written = s
        .write(
            "ns",
            "w",
            vec![
                Op::put("a", j(json!("new")), Expect::Absent),
                Op::put("b", j(json!(3)), Expect::Version(2)),
                Op::check("b", Expect::Version(3)),
                Op::put("b", j(json!(4)), Expect::Version(3)),
                Op::delete("c", Expect::Any),
            ],
        )
        .await
        .unwrap();
    assert_eq!(written, vec![Some(1), Some(3), None, Some(4), None]);
    assert_eq!(s.get("ns", "w", "b").await.unwrap().unwrap().version, 4);

    // An untracked put reports no version, but writes one: a later check sees it.
    let written = s
        .write("ns", "w", vec![Op::put_untracked("b", j(json!(5))), Op::put_untracked("d", j(json!(6)))])
        .await
        .unwrap();
    assert_eq!(written, vec![None, None]);
    let b = s.get("ns", "w", "b").await.unwrap().unwrap();
    assert_eq!((b.value.decode::<serde_json::Value>().unwrap(), b.version), (json!(5), 5));
    assert_eq!(s.get("ns", "w", "d").await.unwrap().unwrap().version, 1);
    let written =
        s.write("ns", "w", vec![Op::check("b", Expect::Version(5)), Op::delete("d", Expect::Any)]).await;
    assert_eq!(written.unwrap(), vec![None, None]);
    assert!(s.get("ns", "w", "d").await.unwrap().is_none());
}

/// A commit's members: hundreds of untracked puts in one transaction (a store may write
/// them several rows to a statement), a key twice among them, keys already there, and
/// a tracked write between two runs. Every row is written as one by one would write it.
async fn runs_of_untracked_puts_write_every_row_in_order(s: &dyn Store) {
    put(s, "m/0005", json!("old"), Expect::Any).await.unwrap();
    let mut ops: Vec<Op> = (0..250).map(|i| Op::put_untracked(format!("m/{i:04}"), j(json!(i)))).collect();
    // The same key again within the first hundred, and once more after them.
    ops.insert(50, Op::put_untracked("m/0010", j(json!("twice"))));
    ops.push(Op::put_untracked("m/0010", j(json!("thrice"))));
    ops.insert(120, Op::put("head", j(json!("h")), Expect::Absent));
    let n = ops.len();
    let written = s.write("ns", "w", ops).await.unwrap();
    assert_eq!(written.len(), n, "one answer per op");
    assert_eq!(written.iter().filter(|v| v.is_some()).count(), 1, "only the tracked put has a version");
    let rows = s.list(Some("ns"), Some("w"), Keys::Under("m/")).await.unwrap();
    assert_eq!(rows.len(), 250);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.key, format!("m/{i:04}"));
        let (value, version) = (row.value.decode::<serde_json::Value>().unwrap(), row.version);
        match i {
            5 => assert_eq!((value, version), (json!(5), 2), "an existing row is updated"),
            10 => assert_eq!((value, version), (json!("thrice"), 3), "the last of three puts wins"),
            _ => assert_eq!((value, version), (json!(i), 1)),
        }
    }
    assert!(s.get("ns", "w", "head").await.unwrap().is_some());
}

async fn a_stale_version_is_refused(s: &dyn Store) {
    put(s, "k", json!(1), Expect::Absent).await.unwrap();
    let err = put(s, "k", json!(2), Expect::Absent).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    put(s, "k", json!(3), Expect::Version(1)).await.unwrap();
    let err = put(s, "k", json!(4), Expect::Version(1)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "state of ns/w key \"k\" changed underneath us (expected version 1, found version 2)"
    );
    assert_eq!(s.get("ns", "w", "k").await.unwrap().unwrap().value, j(json!(3)));
}

async fn a_failed_transaction_writes_nothing(s: &dyn Store) {
    put(s, "b", json!("old"), Expect::Any).await.unwrap();
    let err = s
        .write(
            "ns",
            "w",
            vec![
                Op::put("a", j(json!("new")), Expect::Any),
                Op::put("b", j(json!("new")), Expect::Version(7)),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }));
    assert_eq!(s.get("ns", "w", "a").await.unwrap(), None);
    assert_eq!(s.get("ns", "w", "b").await.unwrap().unwrap().value, j(json!("old")));
}

async fn list_and_delete(s: &dyn Store) {
    for (ns, name, value) in [("a", "x", 1), ("a", "y", 2), ("b", "x", 3)] {
        s.write(ns, name, vec![Op::put("k1", j(json!(value)), Expect::Any)]).await.unwrap();
    }
    let all = Keys::Under("");
    assert_eq!(s.list(None, None, all).await.unwrap().len(), 3);
    assert_eq!(s.list(Some("a"), None, all).await.unwrap().len(), 2);
    assert_eq!(s.list(Some("a"), Some("y"), all).await.unwrap()[0].value, j(json!(2)));
    assert_eq!(s.write("a", "x", vec![Op::delete("k1", Expect::Version(1))]).await.unwrap(), vec![None]);
    let err = s.write("a", "x", vec![Op::delete("k1", Expect::Version(1))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(s.list(Some("a"), None, all).await.unwrap().len(), 1);
    // A delete expecting another version, or no row, leaves the row and everything
    // else the write did; one expecting no row where there is none succeeds.
    for expect in [Expect::Version(2), Expect::Absent] {
        let ops = vec![Op::put("k2", j(json!(9)), Expect::Any), Op::delete("k1", expect)];
        let err = s.write("a", "y", ops).await.unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{expect:?}: {err}");
        assert_eq!(s.version("a", "y", "k1").await.unwrap(), Some(1), "{expect:?}");
        assert_eq!(s.version("a", "y", "k2").await.unwrap(), None, "{expect:?}");
    }
    assert_eq!(s.write("a", "y", vec![Op::delete("k3", Expect::Absent)]).await.unwrap(), vec![None]);
}

async fn ranges_of_keys_are_listed_counted_and_deleted(s: &dyn Store) {
    let keys = ["watermark", "watermark/a", "watermark/b/c", "watermark0", "pending", "dead_letter/x"];
    let ops = keys.iter().map(|k| Op::put(*k, j(json!(k)), Expect::Any)).collect();
    s.write("ns", "w", ops).await.unwrap();
    s.write("ns", "v", vec![Op::put("watermark/a", j(json!(1)), Expect::Any)]).await.unwrap();
    let names = |records: Vec<Record>| records.into_iter().map(|r| r.key).collect::<Vec<_>>();
    let under = s.list(Some("ns"), Some("w"), Keys::Under("watermark/")).await.unwrap();
    assert_eq!(names(under), ["watermark/a", "watermark/b/c"]);
    let rest = s.list(Some("ns"), Some("w"), Keys::NotUnder("watermark/")).await.unwrap();
    assert_eq!(names(rest), ["dead_letter/x", "pending", "watermark", "watermark0"]);
    let counted = s.count(None, None, Keys::Under("watermark/")).await.unwrap();
    assert_eq!(
        counted.into_iter().collect::<Vec<_>>(),
        [(("ns".into(), "v".into()), 1), (("ns".into(), "w".into()), 2)]
    );
    s.write("ns", "w", vec![Op::delete_under("watermark/")]).await.unwrap();
    let left = s.list(Some("ns"), None, Keys::Under("")).await.unwrap();
    assert_eq!(left.len(), 5, "the other watcher's member stays: {left:?}");
    let refused = s.write("ns", "w", vec![Op { expect: Expect::Absent, ..Op::delete_under("x") }]).await;
    assert!(refused.is_err());
    assert_eq!(prefix_end("watermark/").as_deref(), Some("watermark0"));
    assert_eq!(prefix_end(""), None);
}

/// JSON is kept as the text it was written as: every digit, every escape.
async fn values_keep_their_text(s: &dyn Store) {
    let text = r#"{"n":123456789012345678901234567890.000,"u":"\u00e9\n","k":"a b"}"#;
    s.write("ns", "w", vec![Op::put("k", Json::parse(text).unwrap(), Expect::Any)]).await.unwrap();
    assert_eq!(s.get("ns", "w", "k").await.unwrap().unwrap().value.as_str(), text);
    assert_eq!(s.version("ns", "w", "k").await.unwrap(), Some(1));
    assert_eq!(s.version("ns", "w", "nothing").await.unwrap(), None);
}
