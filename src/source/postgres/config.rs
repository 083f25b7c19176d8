//! The `postgres` source's config (`source: {type: postgres}`) and its pure validation:
//! no network, no environment.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::Postgres;
use super::connect::{self, ConnectSettings, TlsMode};
use crate::source::{Source, SourceKind};
use crate::value::{HumanDuration, Kind};

/// `source: {type: postgres}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string (`host=db dbname=app user=reader`) or URL
    /// (`postgres://reader@db/app`). What it leaves out comes from the standard
    /// variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGSSLMODE,
    /// PGSSLROOTCERT, PGCONNECT_TIMEOUT). Better without a password: use
    /// `password_env` or `password_file`.
    #[serde(default)]
    pub connection: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (one line; read at every connect, so rotating it
    /// needs no restart).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `disable`, `prefer` (default), `require` or `verify-full`. Overrides the
    /// connection string and PGSSLMODE.
    #[serde(default)]
    pub sslmode: Option<TlsMode>,
    /// PEM file of the certificate authorities `verify-full` trusts (default: the
    /// system's).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// The table, `schema.table` (a bare name means `public`). Names are taken as
    /// written, case included, and always quoted.
    pub table: String,
    /// The column or columns that order the rows (`id`, or `[updated_at, id]`). Their
    /// values together must be unique; they also identify a row in its event id.
    #[serde(deserialize_with = "one_or_many")]
    pub cursor: Vec<String>,
    /// `xid` (default): commit-order safe, needs `xid_column`. `cursor`: plain keyset
    /// on the cursor columns (see README for what it can miss).
    #[serde(default)]
    pub mode: Mode,
    /// The `xid8` column filled by `DEFAULT pg_current_xact_id()`, indexed (mode `xid`).
    #[serde(default)]
    pub xid_column: Option<String>,
    /// Mode `cursor` only: announce a row only once its first cursor column (a
    /// timestamp) is this much older than the server's clock, so that transactions
    /// committing up to this late are not missed.
    #[serde(default)]
    pub grace: Option<HumanDuration>,
    /// The columns identifying a row (default: the primary key, else the cursor).
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub key: Option<Vec<String>>,
    /// More columns to carry into each event (default: none; key and cursor values are
    /// always there).
    #[serde(default)]
    pub columns: Vec<String>,
    /// An SQL condition rows must meet (`status = 'ready'`). It is SQL, taken as
    /// written: the only part of the config that is not quoted. Queries run read-only.
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// `row` (default): one event per row. `batch`: one event per poll, listing up to
    /// `batch_size` rows.
    #[serde(default)]
    pub emit: Emit,
}

/// How new rows are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// By writing transaction, using snapshots: exact.
    #[default]
    Xid,
    /// By cursor value alone.
    Cursor,
}

/// One event per row or per batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emit {
    /// One event per row.
    #[default]
    Row,
    /// One event per poll batch.
    Batch,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|c| c.trim().to_string()).collect(),
        OneOrMany::Many(v) => v,
    })
}

fn one_or_many_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(d).map(Some)
}

impl PostgresConfig {
    /// `(schema, table)`.
    pub(super) fn names(&self) -> (String, String) {
        match self.table.split_once('.') {
            Some((schema, table)) => (schema.to_string(), table.to_string()),
            None => ("public".to_string(), self.table.clone()),
        }
    }

    pub(super) fn settings(&self) -> ConnectSettings {
        ConnectSettings {
            connection: self.connection.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
        }
    }
}

impl Kind for PostgresConfig {
    const TAG: &'static str = "postgres";
}

impl SourceKind for PostgresConfig {
    /// No connection string: it may hold a password.
    fn describe(&self) -> String {
        let (schema, table) = self.names();
        let mode = match self.mode {
            Mode::Xid => format!("xid column {}", self.xid_column.as_deref().unwrap_or("?")),
            Mode::Cursor => "cursor".into(),
        };
        format!("postgres {schema}.{table} ({mode}; cursor {})", self.cursor.join(", "))
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = connect::validate(&self.settings());
        let (schema, table) = self.names();
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            errors.push(("table".into(), "write `schema.table` or `table`".into()));
        }
        if self.cursor.is_empty() || self.cursor.iter().any(String::is_empty) {
            errors.push(("cursor".into(), "name at least one column".into()));
        }
        if self.key.as_ref().is_some_and(|k| k.is_empty() || k.iter().any(String::is_empty)) {
            errors.push(("key".into(), "name at least one column".into()));
        }
        match self.mode {
            Mode::Xid => {
                if self.xid_column.is_none() {
                    errors.push((
                        "xid_column".into(),
                        "mode xid needs the column filled by `DEFAULT pg_current_xact_id()` \
                         (or set `mode: cursor`; see README for what it can miss)"
                            .into(),
                    ));
                }
                if self.grace.is_some() {
                    errors.push(("grace".into(), "only for `mode: cursor`".into()));
                }
            }
            Mode::Cursor => {
                if self.xid_column.is_some() {
                    errors.push(("xid_column".into(), "only for `mode: xid`".into()));
                }
            }
        }
        if self.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            errors.push(("where".into(), "must not be empty".into()));
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(Postgres::new(self.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> PostgresConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn xid_mode_needs_its_column() {
        let c = config("table: app.orders\ncursor: id\n");
        assert_eq!(c.validate()[0].0, "xid_column");
        let c = config("table: app.orders\ncursor: id\nmode: cursor\ngrace: 5s\n");
        assert!(c.validate().is_empty());
        let c = config("table: app.orders\ncursor: [updated_at, id]\nxid_column: hx\n");
        assert!(c.validate().is_empty());
        assert_eq!(c.cursor, vec!["updated_at", "id"]);
    }
}
