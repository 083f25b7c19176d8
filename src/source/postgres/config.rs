//! The `postgres` source's config (`source: {type: postgres}`) and its pure validation:
//! no network, no environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::Postgres;
use super::connect::{self, ConnectSettings, TlsMode};
use crate::event::ItemKind;
use crate::source::{Source, SourceKind};
use crate::value::{EnvVar, HumanDuration, Kind, SecretFile, Start};

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
    pub password_env: Option<EnvVar>,
    /// A file holding the password (one line; read at every connect, so rotating it
    /// needs no restart), or `credential:NAME` for a systemd credential.
    #[serde(default)]
    pub password_file: Option<SecretFile>,
    /// `disable`, `prefer` (default), `require` or `verify-full`. Overrides the
    /// connection string and PGSSLMODE.
    #[serde(default)]
    pub sslmode: Option<TlsMode>,
    /// PEM file of the certificate authorities `verify-full` trusts (default: the
    /// system's).
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// The table, `schema.table` (a bare name means `public`). Names are taken as
    /// written, case included, and always quoted in queries; a name holding a dot or a
    /// double quote is written in double quotes, as in SQL (`sales."order.lines"`).
    pub table: TableName,
    /// The column or columns that order the rows (`id`, or `[updated_at, id]`). Their
    /// values together must be unique; they also identify a row in its event id.
    #[serde(deserialize_with = "one_or_many")]
    pub cursor: Vec<String>,
    /// `xid` (default): commit-order safe, needs `xid_column`. `cursor`: plain keyset
    /// on the cursor columns (docs/reference/postgres.md says what it can miss).
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
    /// How long one query may run before the server cancels it; the poll is then
    /// retried. `0s`: no limit.
    #[serde(default = "default_statement_timeout")]
    pub statement_timeout: HumanDuration,
    /// How long a query may wait for a lock another session holds (an `ALTER TABLE`,
    /// `VACUUM FULL` or `LOCK TABLE` on the table) before it gives up; the watcher then
    /// shows state `waiting` and retries. `0s`: wait for as long as it takes.
    #[serde(default = "default_lock_timeout")]
    pub lock_timeout: HumanDuration,
    /// Most connections open at once to this server: watchers with the same connection
    /// settings share them (a pool of the largest size any of them asks for), each
    /// taking one for the length of a poll.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// The pool size when no watcher of a server sets one: enough for a 2-core machine,
/// where more polls at once would only queue for the CPU.
const DEFAULT_MAX_CONNECTIONS: usize = 4;
/// The largest pool a watcher may ask for.
const MAX_CONNECTIONS_CAP: usize = 64;

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

fn default_statement_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}

fn default_lock_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// A table's schema and name, parsed from `table:` once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The schema (`public` when the config names the table alone).
    pub schema: String,
    /// The table.
    pub table: String,
}

impl TableName {
    /// Reads `table`, `schema.table`, either part in double quotes (`""` for a quote
    /// inside them). Unquoted parts are taken as written, case included.
    pub fn parse(text: &str) -> Result<TableName, String> {
        let wrong = || {
            format!(
                "`{text}`: write `schema.table` or `table`, with a name that holds a dot or a \
                 double quote in double quotes (`\"my.schema\".\"my.table\"`)"
            )
        };
        let mut parts = Vec::new();
        let mut rest = text;
        loop {
            let (part, after) = match rest.strip_prefix('"') {
                Some(quoted) => {
                    let mut part = String::new();
                    let mut chars = quoted.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                                part.push('"');
                                chars.next();
                            }
                            Some((i, '"')) => break i + 1,
                            Some((_, c)) => part.push(c),
                            None => return Err(wrong()),
                        }
                    };
                    (part, &quoted[end..])
                }
                None => {
                    let end = rest.find(['.', '"']).unwrap_or(rest.len());
                    (rest[..end].to_string(), &rest[end..])
                }
            };
            if part.is_empty() {
                return Err(wrong());
            }
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(wrong()),
            }
        }
        match <[String; 1]>::try_from(parts) {
            Ok([table]) => Ok(TableName { schema: "public".into(), table }),
            Err(parts) => match <[String; 2]>::try_from(parts) {
                Ok([schema, table]) => Ok(TableName { schema, table }),
                Err(_) => Err(wrong()),
            },
        }
    }
}

/// `schema.table`, a part in double quotes when it holds a dot or a double quote (so
/// that the text reads back as the same name): for events and messages.
impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |name: &str| {
            if name.contains(['.', '"']) {
                format!("\"{}\"", name.replace('"', "\"\""))
            } else {
                name.to_string()
            }
        };
        write!(f, "{}.{}", part(&self.schema), part(&self.table))
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TableName::parse(&text).map_err(serde::de::Error::custom)
    }
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
        let mode = match self.mode {
            Mode::Xid => format!("xid column {}", self.xid_column.as_deref().unwrap_or("?")),
            Mode::Cursor => "cursor".into(),
        };
        format!("postgres {} ({mode}; cursor {})", self.table, self.cursor.join(", "))
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = connect::validate(&self.settings());
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
                         (or set `mode: cursor`; docs/reference/postgres.md says what it can miss)"
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
        if !(1..=MAX_CONNECTIONS_CAP).contains(&self.max_connections) {
            errors.push(("max_connections".into(), format!("must be between 1 and {MAX_CONNECTIONS_CAP}")));
        }
        if self.filter.as_deref().is_some_and(|f| f.trim().is_empty()) {
            errors.push(("where".into(), "must not be empty".into()));
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(Postgres::new(self.clone()))
    }

    fn item_kind(&self) -> ItemKind {
        match self.emit {
            Emit::Row => ItemKind::Row,
            Emit::Batch => ItemKind::Rows,
        }
    }

    /// Every form: `now` is the current snapshot (mode `xid`) or the last row (mode
    /// `cursor`); a time needs a first cursor column that holds one, which only the
    /// catalog tells (checked at the first poll and by `check --connect`).
    fn check_start(&self, _start: &Start) -> Result<(), String> {
        Ok(())
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
        assert_eq!(c.max_connections, 4);
        let c = config("table: app.orders\ncursor: id\nxid_column: hx\nmax_connections: 0\n");
        assert_eq!(c.validate(), vec![("max_connections".into(), "must be between 1 and 64".into())]);
    }

    #[test]
    fn table_names_with_dots_and_quotes_are_written_in_double_quotes() {
        let t = |text: &str| TableName::parse(text).map(|t| (t.schema, t.table));
        assert_eq!(t("orders"), Ok(("public".into(), "orders".into())));
        assert_eq!(t("Sales.Orders"), Ok(("Sales".into(), "Orders".into())));
        assert_eq!(t("sales.\"order.lines\""), Ok(("sales".into(), "order.lines".into())));
        assert_eq!(t("\"my.schema\".\"a \"\"b\"\"\""), Ok(("my.schema".into(), "a \"b\"".into())));
        assert_eq!(t("\"x.y\""), Ok(("public".into(), "x.y".into())));
        for bad in ["a.b.c", "", "a.", ".b", "\"open", "a\"b", "\"a\"b", "\"\".b"] {
            assert!(t(bad).is_err(), "{bad}");
        }
        let name = TableName::parse("\"my.schema\".\"a \"\"b\"\"\"").expect("parse");
        assert_eq!(name.to_string(), "\"my.schema\".\"a \"\"b\"\"\"");
        assert_eq!(TableName::parse(&name.to_string()), Ok(name));
        assert_eq!(TableName::parse("sales.orders").expect("parse").to_string(), "sales.orders");
    }
}
