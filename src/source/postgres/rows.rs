//! Selected rows to what the watcher delivers: one item per row (or one per batch),
//! each with the identity its event id is derived from (table, key and cursor values,
//! and in mode `xid` the writing transaction), and the keyset position a page ended
//! at.
//!
//! A row's values are decoded once and written straight into the item's JSON (its
//! `key`, `cursor` and `columns` objects), names in order as before: no JSON tree is
//! built per row, and json/jsonb values go in as the server sent them.

use serde::ser::{Serialize, SerializeMap, Serializer};
use tokio_postgres::Row;

use super::config::Emit;
use super::plan::Plan;
use super::query_error;
use super::values::{Cell, Raw, decode};
use crate::event::{Change, Item, RawJson, RowItem, RowsItem};
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
    let value: Option<&str> = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
    // Cursor and xid columns are never NULL here (the query excludes such rows); a
    // NULL key column is written as an empty marker that no text value can equal.
    Ok(value.map_or_else(|| "\u{0}NULL".into(), str::to_string))
}

/// Some of a row's decoded values as a JSON object, names in the plan's order.
struct Fields<'r, 'a> {
    plan: &'r Plan,
    /// Indexes into `cells` (and the plan's values), in name order.
    pick: &'r [usize],
    cells: &'r [Cell<'a>],
}

impl Serialize for Fields<'_, '_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.pick.len()))?;
        for &i in self.pick {
            map.serialize_entry(&self.plan.values[i], &self.cells[i])?;
        }
        map.end()
    }
}

/// One row's item and identity.
pub(super) fn found(plan: &Plan, row: &Row) -> Result<Found, SourceError> {
    let mut identity = Vec::with_capacity(2 + plan.key.len() + plan.cursor.len());
    identity.push(plan.name.clone());
    for i in 0..plan.key.len() {
        identity.push(text(plan, row, plan.key_text(i))?);
    }
    for i in 0..plan.cursor.len() {
        identity.push(text(plan, row, plan.cursor_text(i))?);
    }
    // The transaction that wrote the row tells a row deleted and written again with
    // the same key (or a table dropped and made again) from the row before.
    if plan.has_xid() {
        identity.push(text(plan, row, plan.xid_text())?);
    }
    let columns = row.columns();
    let mut cells = Vec::with_capacity(plan.values.len());
    let mut as_text = Vec::new();
    for (i, column) in plan.values.iter().enumerate() {
        let index = plan.value(i);
        let raw: Raw = row.try_get(index).map_err(|e| query_error(&plan.name, e))?;
        let decoded = decode(columns[index].type_(), raw.0);
        if decoded.as_text {
            as_text.push(column.clone());
        }
        cells.push(decoded.cell);
    }
    let raw = |pick: &[usize]| -> Result<RawJson, SourceError> {
        let fields = Fields { plan, pick, cells: &cells };
        serde_json::value::to_raw_value(&fields)
            .map(RawJson::new)
            .map_err(|e| SourceError::transient(format!("{}: cannot encode a row: {e}", plan.name)))
    };
    let key = raw(&plan.key_fields)?;
    // The cursor is often the key itself (`cursor: id` on a table keyed by `id`).
    let cursor = if plan.cursor_fields == plan.key_fields { key.clone() } else { raw(&plan.cursor_fields)? };
    let item = RowItem { table: plan.name.clone(), key, cursor, columns: raw(&plan.column_fields)?, as_text };
    Ok(Found { change: Change::Created, item: Item::Row(item), identity })
}

/// The rows of a page as what the loop delivers: one item per row, or one for the
/// batch (`emit: batch`).
pub(super) fn emit(plan: &Plan, items: Vec<Found>, emit: Emit) -> Vec<Found> {
    if emit == Emit::Row || items.is_empty() {
        return items;
    }
    let mut identity = vec![plan.name.clone(), "batch".to_string()];
    let mut rows = Vec::with_capacity(items.len());
    for f in items {
        identity.push(f.identity[1..].join("\u{1f}"));
        if let Item::Row(row) = f.item {
            rows.push(row);
        }
    }
    let item = Item::Rows(RowsItem { table: plan.name.clone(), rows });
    vec![Found { change: Change::Created, item, identity }]
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
