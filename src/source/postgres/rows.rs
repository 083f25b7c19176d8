//! Selected rows to what the watcher delivers: one item per row (or one per batch),
//! each with the identity its event id is derived from (table, key and cursor values,
//! and in mode `xid` the writing transaction), and the keyset position a page ended
//! at.

use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::config::Emit;
use super::plan::Plan;
use super::query_error;
use super::values::{Raw, decode};
use crate::event::{Change, Item, RowItem, RowsItem};
use crate::source::{Found, SourceError};

/// The keyset position of a row: (xid,) cursor values as text.
pub(super) fn position(plan: &Plan, row: &Row, with_xid: bool) -> Result<Vec<String>, SourceError> {
    let mut out = Vec::with_capacity(plan.cursor.len() + 1);
    if with_xid {
        out.push(text(plan, row, plan.xid_text())?);
    }
    for i in 0..plan.cursor.len() {
        out.push(text(plan, row, plan.cursor_text(i))?);
    }
    Ok(out)
}

fn text(plan: &Plan, row: &Row, index: usize) -> Result<String, SourceError> {
    let value: Option<String> = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
    // Cursor and xid columns are never NULL here (the query excludes such rows); a
    // NULL key column is written as an empty marker that no text value can equal.
    Ok(value.unwrap_or_else(|| "\u{0}NULL".into()))
}

/// Turns rows into what the loop delivers: one item per row, or one for the batch.
pub(super) fn found(plan: &Plan, rows: &[Row], emit: Emit) -> Result<Vec<Found>, SourceError> {
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let mut identity = vec![plan.name.clone()];
        for i in 0..plan.key.len() {
            identity.push(text(plan, row, plan.key_text(i))?);
        }
        for i in 0..plan.cursor.len() {
            identity.push(text(plan, row, plan.cursor_text(i))?);
        }
        // The transaction that wrote the row tells a row deleted and written again
        // with the same key (or a table dropped and made again) from the row before.
        if plan.has_xid() {
            identity.push(text(plan, row, plan.xid_text())?);
        }
        let mut decoded = Map::new();
        let mut as_text = Vec::new();
        for (i, column) in plan.values.iter().enumerate() {
            let index = plan.value(i);
            let ty = row.columns()[index].type_().clone();
            let raw: Raw = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
            let cell = decode(&ty, raw.0);
            if cell.as_text {
                as_text.push(column.clone());
            }
            decoded.insert(column.clone(), cell.value);
        }
        let pick = |names: &[String]| -> Map<String, Value> {
            names.iter().map(|n| (n.clone(), decoded.get(n).cloned().unwrap_or(Value::Null))).collect()
        };
        let item = RowItem {
            table: plan.name.clone(),
            key: pick(&plan.key),
            cursor: pick(&plan.cursor),
            columns: decoded.clone(),
            as_text,
        };
        items.push(Found { change: Change::Created, item: Item::Row(item), identity });
    }
    if emit == Emit::Batch && !items.is_empty() {
        let mut identity = vec![plan.name.clone(), "batch".to_string()];
        let mut rows = Vec::with_capacity(items.len());
        for f in items {
            identity.push(f.identity[1..].join("\u{1f}"));
            if let Item::Row(row) = f.item {
                rows.push(row);
            }
        }
        let item = Item::Rows(RowsItem { table: plan.name.clone(), rows });
        return Ok(vec![Found { change: Change::Created, item, identity }]);
    }
    Ok(items)
}

/// How many values of these items went as text, and in which columns.
pub(super) fn as_text(items: &[Found]) -> (u64, Vec<String>) {
    let mut n = 0;
    let mut columns: Vec<String> = Vec::new();
    let mut count = |row: &RowItem| {
        n += row.as_text.len() as u64;
        for column in &row.as_text {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
    };
    for found in items {
        match &found.item {
            Item::Row(row) => count(row),
            Item::Rows(rows) => rows.rows.iter().for_each(&mut count),
            _ => {}
        }
    }
    (n, columns)
}
