//! Postgres values as faithful JSON, and identifier quoting.
//!
//! Rows are read in the binary protocol and decoded here by column type: integers stay
//! integers, timestamps become RFC 3339, bytea becomes base64, arrays (of any number of
//! dimensions) become nested JSON arrays. Types without an exact JSON form (numeric,
//! money, intervals, enums, ranges, …) are cast to text by the query itself (see
//! [`needs_text`]), so that a value is never rounded or reinterpreted.
//!
//! Every value Postgres can store becomes JSON: dates and times are decoded here, not
//! by a date library, so that the infinities, `24:00:00` and years outside 1–9999 come
//! out as Postgres writes them. What still cannot be decoded goes as text, marked
//! ([`Cell::as_text`]); decoding never fails.

use base64::Engine;
use serde_json::Value;
use tokio_postgres::types::{FromSql, Kind, Type};

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Quotes an identifier the way `quote_ident` does: always, so that case and any
/// character survive and nothing from the config is read as SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A column value as the raw bytes of the binary protocol; accepts every type.
pub struct Raw<'a>(pub Option<&'a [u8]>);

impl<'a> FromSql<'a> for Raw<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Raw(Some(raw)))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// True when a column of this type is selected as `::text` (or `::text[]`) because
/// [`decode`] has no exact JSON form for it. Unknown types (extensions, enums,
/// composites) are sent as text too.
pub fn needs_text(ty: &Type) -> bool {
    match ty.kind() {
        Kind::Array(element) => needs_text(element),
        _ => !SCALARS.contains(ty),
    }
}

/// Scalar types decoded natively.
const SCALARS: &[Type] = &[
    Type::BOOL,
    Type::INT2,
    Type::INT4,
    Type::INT8,
    Type::OID,
    Type::FLOAT4,
    Type::FLOAT8,
    Type::TEXT,
    Type::VARCHAR,
    Type::BPCHAR,
    Type::NAME,
    Type::CHAR,
    Type::JSON,
    Type::JSONB,
    Type::UUID,
    Type::BYTEA,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMP,
    Type::DATE,
    Type::TIME,
    Type::XID8,
];

/// A decoded column value.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The value as JSON.
    pub value: Value,
    /// True when the value (or an element of it) is Postgres' text form because it
    /// could not be decoded: the event lists the column in `as_text`.
    pub as_text: bool,
}

impl Cell {
    fn json(value: impl Into<Value>) -> Cell {
        Cell { value: value.into(), as_text: false }
    }

    fn text(text: String) -> Cell {
        Cell { value: Value::String(text), as_text: true }
    }
}

/// Decodes one value of type `ty` (NULL becomes `null`). Never fails: a value with no
/// JSON form that can be decoded becomes its text form, marked (see [`Cell`]), so that
/// one odd value never holds back a row, let alone a watcher.
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Cell {
    let Some(raw) = raw else { return Cell::json(Value::Null) };
    if let Kind::Array(element) = ty.kind() {
        return decode_array(element, raw).unwrap_or_else(|_| fallback(ty, raw));
    }
    decode_scalar(ty, raw).unwrap_or_else(|_| fallback(ty, raw))
}

/// The last resort for a value that did not decode: the text the server sent (types
/// selected as text), else the bytes as Postgres writes a bytea (`\x…`).
fn fallback(ty: &Type, raw: &[u8]) -> Cell {
    if needs_text(ty) || matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME) {
        return Cell::text(String::from_utf8_lossy(raw).into_owned());
    }
    Cell::text(format!("\\x{}", hex::encode(raw)))
}

fn decode_scalar(ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    Ok(match *ty {
        Type::BOOL => Cell::json(bool::from_sql(ty, raw)?),
        Type::INT2 => Cell::json(i16::from_sql(ty, raw)?),
        Type::INT4 => Cell::json(i32::from_sql(ty, raw)?),
        Type::INT8 => Cell::json(i64::from_sql(ty, raw)?),
        Type::OID => Cell::json(u32::from_sql(ty, raw)?),
        Type::FLOAT4 => Cell::json(float(f64::from(f32::from_sql(ty, raw)?))),
        Type::FLOAT8 => Cell::json(float(f64::from_sql(ty, raw)?)),
        Type::CHAR => Cell::json(char::from(i8::from_sql(ty, raw)? as u8).to_string()),
        Type::JSON => JsonText::from_json(raw)?.into_cell(),
        Type::JSONB => JsonText::from_jsonb(raw)?.into_cell(),
        Type::UUID => Cell::json(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::BYTEA => Cell::json(base64::engine::general_purpose::STANDARD.encode(raw)),
        Type::TIMESTAMPTZ => Cell::json(timestamp(i64::from_sql(&Type::INT8, raw)?, true)),
        Type::TIMESTAMP => Cell::json(timestamp(i64::from_sql(&Type::INT8, raw)?, false)),
        Type::DATE => Cell::json(date(i32::from_sql(&Type::INT4, raw)?)),
        Type::TIME => Cell::json(time(i64::from_sql(&Type::INT8, raw)?)?),
        Type::XID8 => Cell::json(u64::from_be_bytes(raw.try_into()?).to_string()),
        // Text and everything the query cast to text.
        _ => Cell::json(<&str>::from_sql(&Type::TEXT, raw)?.to_string()),
    })
}

/// A json or jsonb value as the exact text the server sent: nothing rounded, nothing
/// reordered. The event takes it as a parsed JSON value for now (numbers beyond a
/// 64-bit float are rounded there, and one beyond its range cannot be parsed at all
/// and goes as text); once events are carried as encoded bytes, this text is what goes
/// into them as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(pub String);

impl JsonText {
    fn from_json(raw: &[u8]) -> Result<JsonText, BoxError> {
        Ok(JsonText(std::str::from_utf8(raw)?.to_string()))
    }

    /// jsonb's binary form: a version byte (1), then the text.
    fn from_jsonb(raw: &[u8]) -> Result<JsonText, BoxError> {
        match raw.split_first() {
            Some((1, text)) => JsonText::from_json(text),
            _ => Err("unsupported jsonb version".into()),
        }
    }

    fn into_cell(self) -> Cell {
        match serde_json::from_str::<Value>(&self.0) {
            Ok(value) => Cell::json(value),
            Err(_) => Cell::text(self.0),
        }
    }
}

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01, the epoch of Postgres' binary dates and times.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `(year, month, day)` of a day counted from 1970-01-01 in the proleptic Gregorian
/// calendar, years astronomical (1 BC is 0); any day Postgres can store.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Fractional seconds as RFC 3339 output usually gives them: none, 3 or 6 digits.
fn fraction(micros: i64) -> String {
    match micros {
        0 => String::new(),
        m if m % 1000 == 0 => format!(".{:03}", m / 1000),
        m => format!(".{m:06}"),
    }
}

/// Fractional seconds as Postgres writes them: trailing zeros dropped.
fn pg_fraction(micros: i64) -> String {
    if micros == 0 { String::new() } else { format!(".{micros:06}").trim_end_matches('0').to_string() }
}

/// A date as ISO 8601 for years 1 to 9999; beyond them (BC, or after 9999) and for
/// the infinities as Postgres writes it.
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        days => {
            let (year, month, day) = civil(i64::from(days) + PG_EPOCH_DAYS);
            match year {
                1..=9999 => format!("{year:04}-{month:02}-{day:02}"),
                _ => pg_year(year, &format!("-{month:02}-{day:02}"), ""),
            }
        }
    }
}

/// `YYYY…`, then `rest`, then `zone`, and ` BC` for years before 1, as Postgres writes
/// them (1 BC is astronomical year 0).
fn pg_year(year: i64, rest: &str, zone: &str) -> String {
    if year >= 1 { format!("{year:04}{rest}{zone}") } else { format!("{:04}{rest}{zone} BC", 1 - year) }
}

/// A timestamp as RFC 3339 (`Z` when `zoned`, no offset otherwise) for years 1 to 9999;
/// beyond them and for the infinities as Postgres writes it (UTC, ISO DateStyle).
fn timestamp(micros: i64, zoned: bool) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        micros => {
            let (year, month, day) = civil(micros.div_euclid(DAY_US) + PG_EPOCH_DAYS);
            let of_day = micros.rem_euclid(DAY_US);
            let (h, m, s, f) = clock(of_day);
            match year {
                1..=9999 => format!(
                    "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{}{}",
                    fraction(f),
                    if zoned { "Z" } else { "" }
                ),
                _ => pg_year(
                    year,
                    &format!("-{month:02}-{day:02} {h:02}:{m:02}:{s:02}{}", pg_fraction(f)),
                    if zoned { "+00" } else { "" },
                ),
            }
        }
    }
}

/// Hours, minutes, seconds and microseconds of a time of day.
fn clock(micros: i64) -> (i64, i64, i64, i64) {
    let seconds = micros / 1_000_000;
    (seconds / 3600, seconds / 60 % 60, seconds % 60, micros % 1_000_000)
}

/// A time of day, `24:00:00` included (Postgres allows it; it is not midnight).
fn time(micros: i64) -> Result<String, BoxError> {
    if !(0..=DAY_US).contains(&micros) {
        return Err("time of day out of range".into());
    }
    let (h, m, s, f) = clock(micros);
    Ok(format!("{h:02}:{m:02}:{s:02}{}", fraction(f)))
}

/// JSON has no NaN or infinity: those stay strings, as Postgres writes them.
fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or_else(
        || {
            Value::String(if f.is_nan() {
                "NaN".into()
            } else if f > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            })
        },
        Value::Number,
    )
}

/// The binary array format: dimensions, a null flag, the element type, each
/// dimension's length and lower bound, then each element as a length and its bytes
/// (length -1 for NULL), in row-major order. An array whose lower bounds are all 1
/// (the default) becomes nested JSON arrays; any other keeps its bounds:
/// `{"lower_bounds": [0], "values": […]}`.
fn decode_array(element: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    let mut buf = raw;
    let mut int = || -> Result<i32, BoxError> {
        let (head, rest) = buf.split_first_chunk::<4>().ok_or("truncated array")?;
        buf = rest;
        Ok(i32::from_be_bytes(*head))
    };
    let ndim = usize::try_from(int()?)?;
    let _has_null = int()?;
    let _element_oid = int()?;
    let mut dims = Vec::with_capacity(ndim.min(6));
    let mut lower_bounds = Vec::with_capacity(ndim.min(6));
    for _ in 0..ndim {
        dims.push(usize::try_from(int()?)?);
        lower_bounds.push(int()?);
    }
    let total: usize = if ndim == 0 { 0 } else { dims.iter().product() };
    let mut values = Vec::with_capacity(total.min(1 << 16));
    let mut as_text = false;
    for _ in 0..total {
        let (head, rest) = buf.split_first_chunk::<4>().ok_or("truncated array")?;
        let len = i32::from_be_bytes(*head);
        buf = rest;
        if len < 0 {
            values.push(Value::Null);
        } else {
            let len = usize::try_from(len)?;
            if buf.len() < len {
                return Err("truncated array element".into());
            }
            let (bytes, rest) = buf.split_at(len);
            buf = rest;
            let cell = decode(element, Some(bytes));
            as_text |= cell.as_text;
            values.push(cell.value);
        }
    }
    if ndim == 0 {
        return Ok(Cell { value: Value::Array(Vec::new()), as_text });
    }
    let nested = nest(&dims, &mut values.into_iter());
    if lower_bounds.iter().all(|b| *b == 1) {
        return Ok(Cell { value: nested, as_text });
    }
    let value = serde_json::json!({ "lower_bounds": lower_bounds, "values": nested });
    Ok(Cell { value, as_text })
}

fn nest(dims: &[usize], values: &mut impl Iterator<Item = Value>) -> Value {
    match dims {
        [] => Value::Null,
        [n] => Value::Array(values.take(*n).collect()),
        [n, rest @ ..] => Value::Array((0..*n).map(|_| nest(rest, values)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("id"), "\"id\"");
        assert_eq!(quote_ident("Weird \"name\"; drop"), "\"Weird \"\"name\"\"; drop\"");
    }

    #[test]
    fn numeric_and_unknown_types_go_as_text() {
        assert!(needs_text(&Type::NUMERIC));
        assert!(needs_text(&Type::NUMERIC_ARRAY));
        assert!(needs_text(&Type::INTERVAL));
        assert!(!needs_text(&Type::INT8_ARRAY));
        assert!(!needs_text(&Type::TIMESTAMPTZ));
    }

    #[test]
    fn days_match_the_calendar_of_a_date_library() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("date");
        for days in (-800_000i64..800_000).step_by(997).chain([-719_528, -1, 0, 59, 60, 10_957]) {
            let expected = epoch + chrono::Duration::days(days);
            let (y, m, d) = civil(days);
            use chrono::Datelike;
            assert_eq!(
                (y, m, d),
                (i64::from(expected.year()), i64::from(expected.month()), i64::from(expected.day()))
            );
        }
    }

    fn int8(v: i64) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    #[test]
    fn every_date_and_time_postgres_stores_has_a_json_form() {
        let ts = |v: i64| decode(&Type::TIMESTAMP, Some(&int8(v))).value;
        let tstz = |v: i64| decode(&Type::TIMESTAMPTZ, Some(&int8(v))).value;
        let date = |v: i32| decode(&Type::DATE, Some(&v.to_be_bytes())).value;
        let time = |v: i64| decode(&Type::TIME, Some(&int8(v))).value;
        assert_eq!(ts(i64::MAX), "infinity");
        assert_eq!(tstz(i64::MIN), "-infinity");
        assert_eq!(date(i32::MIN), "-infinity");
        assert_eq!(date(i32::MAX), "infinity");
        // 2026-03-04 03:06:07.123456 UTC, as the date library wrote it before.
        let micros = (9559 * 86_400 + 3 * 3600 + 6 * 60 + 7) * 1_000_000 + 123_456;
        assert_eq!(tstz(micros), "2026-03-04T03:06:07.123456Z");
        assert_eq!(ts(micros - 123_456 + 120_000), "2026-03-04T03:06:07.120");
        assert_eq!(ts(0), "2000-01-01T00:00:00");
        // The largest timestamp Postgres takes, and the earliest: as Postgres writes them.
        assert_eq!(tstz(9_223_371_331_199_999_999), "294276-12-31 23:59:59.999999+00");
        assert_eq!(ts(-211_813_488_000_000_000 + 500_000), "4714-11-24 00:00:00.5 BC");
        assert_eq!(date(2_147_483_493 - 2_451_545), "5874897-12-31");
        assert_eq!(date(-730_485), "0001-01-01 BC");
        assert_eq!(time(86_400_000_000), "24:00:00");
        assert_eq!(time(43_200_120_000), "12:00:00.120");
        assert!(decode(&Type::TIME, Some(&int8(86_400_000_001))).as_text);
    }

    #[test]
    fn json_that_does_not_parse_goes_as_its_text_marked() {
        let mut raw = vec![1u8];
        raw.extend_from_slice(b"{\"a\": 1e400}");
        assert_eq!(decode(&Type::JSONB, Some(&raw)), Cell::text("{\"a\": 1e400}".into()));
        assert_eq!(decode(&Type::JSON, Some(b"[1, 2.5]")), Cell::json(serde_json::json!([1, 2.5])));
        assert!(decode(&Type::TEXT, Some(b"caf\xe9")).as_text);
    }

    #[test]
    fn two_dimensional_arrays_nest() {
        // {{1,2},{3,NULL}} as int4[]
        let mut raw = Vec::new();
        for v in [2i32, 1, 23, 2, 1, 2, 1] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        for v in [Some(1i32), Some(2), Some(3), None] {
            match v {
                Some(v) => {
                    raw.extend_from_slice(&4i32.to_be_bytes());
                    raw.extend_from_slice(&v.to_be_bytes());
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        let cell = decode(&Type::INT4_ARRAY, Some(&raw));
        assert_eq!(cell, Cell::json(serde_json::json!([[1, 2], [3, null]])));
    }

    #[test]
    fn an_array_keeps_a_lower_bound_other_than_one() {
        // [0:2]={1,2,3} as int4[]
        let mut raw = Vec::new();
        for v in [1i32, 0, 23, 3, 0] {
            raw.extend_from_slice(&v.to_be_bytes());
        }
        for v in [1i32, 2, 3] {
            raw.extend_from_slice(&4i32.to_be_bytes());
            raw.extend_from_slice(&v.to_be_bytes());
        }
        let cell = decode(&Type::INT4_ARRAY, Some(&raw));
        assert_eq!(cell, Cell::json(serde_json::json!({"lower_bounds": [0], "values": [1, 2, 3]})));
    }
}
