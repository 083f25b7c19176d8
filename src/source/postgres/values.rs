//! Postgres values as faithful JSON, and identifier quoting.
//!
//! Rows are read in the binary protocol and decoded here by column type into a
//! [`Cell`], which borrows text from the row and is serialized straight into the
//! event's JSON (no JSON tree per row): integers stay integers, timestamps become
//! RFC 3339, bytea becomes base64, arrays (of any number of dimensions) become nested
//! JSON arrays, and json/jsonb go as the exact text the server sent, so no number in
//! them is rounded. Types without an exact JSON form (numeric, money, intervals, enums,
//! ranges, …) are cast to text by the query itself (see [`needs_text`]), so that a
//! value is never rounded or reinterpreted.
//!
//! Every value Postgres can store becomes JSON: dates and times are decoded here, not
//! by a date library, so that the infinities, `24:00:00` and years outside 1–9999 come
//! out as Postgres writes them. What still cannot be decoded goes as text, marked
//! ([`Decoded::as_text`]); decoding never fails.

use std::borrow::Cow;

use base64::Engine;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;
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

/// A decoded column value, ready to be written as JSON. Text borrows from the row.
#[derive(Debug, Clone)]
pub enum Cell<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float JSON can write (not NaN nor an infinity).
    Float(f64),
    /// A string.
    Text(Cow<'a, str>),
    /// JSON text as the server sent it (json, jsonb), embedded as it is.
    Json(Box<RawValue>),
    /// An array; nested for more dimensions.
    Array(Vec<Cell<'a>>),
    /// An array whose lower bounds are not all 1: `{"lower_bounds": […], "values": […]}`.
    Bounded(Vec<i32>, Box<Cell<'a>>),
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Null => serializer.serialize_unit(),
            Cell::Bool(b) => serializer.serialize_bool(*b),
            Cell::Int(i) => serializer.serialize_i64(*i),
            Cell::Float(f) => serializer.serialize_f64(*f),
            Cell::Text(text) => serializer.serialize_str(text),
            Cell::Json(raw) => raw.serialize(serializer),
            Cell::Array(cells) => {
                let mut seq = serializer.serialize_seq(Some(cells.len()))?;
                for cell in cells {
                    seq.serialize_element(cell)?;
                }
                seq.end()
            }
            Cell::Bounded(lower_bounds, values) => {
                let mut map = serializer.serialize_map(Some(2))?;
                map.serialize_entry("lower_bounds", lower_bounds)?;
                map.serialize_entry("values", values)?;
                map.end()
            }
        }
    }
}

/// A decoded value and whether it (or an element of it) is Postgres' text form because
/// it could not be decoded: the event lists the column in `as_text`.
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    /// The value.
    pub cell: Cell<'a>,
    /// Went as text, undecoded.
    pub as_text: bool,
}

impl<'a> Decoded<'a> {
    fn json(cell: Cell<'a>) -> Decoded<'a> {
        Decoded { cell, as_text: false }
    }

    fn string(text: impl Into<Cow<'a, str>>) -> Decoded<'a> {
        Decoded { cell: Cell::Text(text.into()), as_text: false }
    }

    fn text(text: impl Into<Cow<'a, str>>) -> Decoded<'a> {
        Decoded { cell: Cell::Text(text.into()), as_text: true }
    }
}

/// Decodes one value of type `ty` (NULL becomes `null`). Never fails: a value with no
/// JSON form that can be decoded becomes its text form, marked (see [`Decoded`]), so
/// that one odd value never holds back a row, let alone a watcher.
pub fn decode<'a>(ty: &Type, raw: Option<&'a [u8]>) -> Decoded<'a> {
    let Some(raw) = raw else { return Decoded::json(Cell::Null) };
    if let Kind::Array(element) = ty.kind() {
        return decode_array(element, raw).unwrap_or_else(|_| fallback(ty, raw));
    }
    decode_scalar(ty, raw).unwrap_or_else(|_| fallback(ty, raw))
}

/// The last resort for a value that did not decode: the text the server sent (types
/// selected as text), else the bytes as Postgres writes a bytea (`\x…`).
fn fallback<'a>(ty: &Type, raw: &'a [u8]) -> Decoded<'a> {
    if needs_text(ty) || matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON) {
        return Decoded::text(String::from_utf8_lossy(raw));
    }
    if *ty == Type::JSONB
        && let Some((1, text)) = raw.split_first()
    {
        return Decoded::text(String::from_utf8_lossy(text));
    }
    Decoded::text(format!("\\x{}", hex::encode(raw)))
}

fn decode_scalar<'a>(ty: &Type, raw: &'a [u8]) -> Result<Decoded<'a>, BoxError> {
    Ok(match *ty {
        Type::BOOL => Decoded::json(Cell::Bool(bool::from_sql(ty, raw)?)),
        Type::INT2 => Decoded::json(Cell::Int(i16::from_sql(ty, raw)?.into())),
        Type::INT4 => Decoded::json(Cell::Int(i32::from_sql(ty, raw)?.into())),
        Type::INT8 => Decoded::json(Cell::Int(i64::from_sql(ty, raw)?)),
        Type::OID => Decoded::json(Cell::Int(u32::from_sql(ty, raw)?.into())),
        Type::FLOAT4 => float(f64::from(f32::from_sql(ty, raw)?)),
        Type::FLOAT8 => float(f64::from_sql(ty, raw)?),
        Type::CHAR => Decoded::string(char::from(i8::from_sql(ty, raw)? as u8).to_string()),
        Type::JSON => Decoded::json(Cell::Json(json_text(std::str::from_utf8(raw)?)?)),
        // jsonb's binary form: a version byte (1), then the text.
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => Decoded::json(Cell::Json(json_text(std::str::from_utf8(text)?)?)),
            _ => return Err("unsupported jsonb version".into()),
        },
        Type::UUID => Decoded::string(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::BYTEA => Decoded::string(base64::engine::general_purpose::STANDARD.encode(raw)),
        Type::TIMESTAMPTZ => Decoded::string(timestamp(i64::from_sql(&Type::INT8, raw)?, true)),
        Type::TIMESTAMP => Decoded::string(timestamp(i64::from_sql(&Type::INT8, raw)?, false)),
        Type::DATE => Decoded::string(date(i32::from_sql(&Type::INT4, raw)?)),
        Type::TIME => Decoded::string(time(i64::from_sql(&Type::INT8, raw)?)?),
        Type::XID8 => Decoded::string(u64::from_be_bytes(raw.try_into()?).to_string()),
        // Text and everything the query cast to text: borrowed from the row.
        _ => Decoded::string(<&str>::from_sql(&Type::TEXT, raw)?),
    })
}

/// A json or jsonb value as the exact text the server sent: nothing rounded, nothing
/// reordered. Line breaks between tokens (a `json` value keeps its input's layout) are
/// dropped, so that the event stays one line; nothing else changes. Checked to be JSON.
fn json_text(text: &str) -> Result<Box<RawValue>, BoxError> {
    let text = if text.contains(['\n', '\r']) { one_line(text) } else { text.to_string() };
    Ok(RawValue::from_string(text)?)
}

/// `text` without the line breaks that stand between JSON tokens (inside a string a
/// line break is always escaped, so any raw one is between tokens).
fn one_line(text: &str) -> String {
    text.chars().filter(|c| *c != '\n' && *c != '\r').collect()
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

/// Appends `n` in decimal, zero-padded to `width` digits (the hot path of every date
/// and time: `format!` costs several times as much per row).
fn push_padded(out: &mut String, n: i64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    while rest > 0 {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let start = at.min(digits.len() - width.min(digits.len()));
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// Appends fractional seconds as RFC 3339 output usually gives them: none, 3 or 6
/// digits.
fn push_fraction(out: &mut String, micros: i64) {
    match micros {
        0 => {}
        m if m % 1000 == 0 => {
            out.push('.');
            push_padded(out, m / 1000, 3);
        }
        m => {
            out.push('.');
            push_padded(out, m, 6);
        }
    }
}

/// Appends `YYYY-MM-DD` (a year from 1 to 9999).
fn push_ymd(out: &mut String, year: i64, month: i64, day: i64) {
    push_padded(out, year, 4);
    out.push('-');
    push_padded(out, month, 2);
    out.push('-');
    push_padded(out, day, 2);
}

/// Appends `HH:MM:SS`.
fn push_hms(out: &mut String, h: i64, m: i64, s: i64) {
    push_padded(out, h, 2);
    out.push(':');
    push_padded(out, m, 2);
    out.push(':');
    push_padded(out, s, 2);
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
                1..=9999 => {
                    let mut out = String::with_capacity(10);
                    push_ymd(&mut out, year, month, day);
                    out
                }
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
                1..=9999 => {
                    let mut out = String::with_capacity(27);
                    push_ymd(&mut out, year, month, day);
                    out.push('T');
                    push_hms(&mut out, h, m, s);
                    push_fraction(&mut out, f);
                    if zoned {
                        out.push('Z');
                    }
                    out
                }
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
    let mut out = String::with_capacity(15);
    push_hms(&mut out, h, m, s);
    push_fraction(&mut out, f);
    Ok(out)
}

/// JSON has no NaN or infinity: those stay strings, as Postgres writes them.
fn float<'a>(f: f64) -> Decoded<'a> {
    if f.is_finite() {
        Decoded::json(Cell::Float(f))
    } else if f.is_nan() {
        Decoded::string("NaN")
    } else if f > 0.0 {
        Decoded::string("Infinity")
    } else {
        Decoded::string("-Infinity")
    }
}

/// The binary array format: dimensions, a null flag, the element type, each
/// dimension's length and lower bound, then each element as a length and its bytes
/// (length -1 for NULL), in row-major order. An array whose lower bounds are all 1
/// (the default) becomes nested JSON arrays; any other keeps its bounds:
/// `{"lower_bounds": [0], "values": […]}`.
fn decode_array<'a>(element: &Type, raw: &'a [u8]) -> Result<Decoded<'a>, BoxError> {
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
            values.push(Cell::Null);
        } else {
            let len = usize::try_from(len)?;
            if buf.len() < len {
                return Err("truncated array element".into());
            }
            let (bytes, rest) = buf.split_at(len);
            buf = rest;
            let decoded = decode(element, Some(bytes));
            as_text |= decoded.as_text;
            values.push(decoded.cell);
        }
    }
    if ndim == 0 {
        return Ok(Decoded { cell: Cell::Array(Vec::new()), as_text });
    }
    let nested = nest(&dims, &mut values.into_iter());
    if lower_bounds.iter().all(|b| *b == 1) {
        return Ok(Decoded { cell: nested, as_text });
    }
    Ok(Decoded { cell: Cell::Bounded(lower_bounds, Box::new(nested)), as_text })
}

fn nest<'a>(dims: &[usize], values: &mut impl Iterator<Item = Cell<'a>>) -> Cell<'a> {
    match dims {
        [] => Cell::Null,
        [n] => Cell::Array(values.take(*n).collect()),
        [n, rest @ ..] => Cell::Array((0..*n).map(|_| nest(rest, values)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON a decoded value writes, and whether it went as text.
    fn json(decoded: Decoded<'_>) -> (serde_json::Value, bool) {
        (serde_json::to_value(&decoded.cell).expect("JSON"), decoded.as_text)
    }

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
        let ts = |v: i64| json(decode(&Type::TIMESTAMP, Some(&int8(v)))).0;
        let tstz = |v: i64| json(decode(&Type::TIMESTAMPTZ, Some(&int8(v)))).0;
        let date = |v: i32| json(decode(&Type::DATE, Some(&v.to_be_bytes()))).0;
        let time = |v: i64| json(decode(&Type::TIME, Some(&int8(v)))).0;
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
    fn times_of_years_1_to_9999_are_written_as_a_date_library_writes_them() {
        use chrono::{DateTime, SecondsFormat};
        let pg_epoch_us = PG_EPOCH_DAYS * DAY_US;
        let first = -62_135_596_800_000_000 - pg_epoch_us; // 0001-01-01T00:00:00Z
        let last = 253_402_300_799_999_999 - pg_epoch_us; // 9999-12-31T23:59:59.999999Z
        let step = (last - first) / 7919;
        for micros in (first..=last).step_by(step as usize).chain([first, last, 0, 1000, 1, -1]) {
            for micros in [micros, micros - micros % 1000, micros - micros % 1_000_000] {
                let expected = DateTime::from_timestamp_micros(micros + pg_epoch_us).expect("in range");
                let written = timestamp(micros, true);
                assert_eq!(written, expected.to_rfc3339_opts(SecondsFormat::AutoSi, true));
                assert_eq!(timestamp(micros, false), written.trim_end_matches('Z'));
                let days = i32::try_from(micros.div_euclid(DAY_US)).expect("days");
                assert_eq!(date(days), written[..10]);
                assert_eq!(
                    time(micros.rem_euclid(DAY_US)).expect("time"),
                    written[11..].trim_end_matches('Z')
                );
            }
        }
    }

    #[test]
    fn json_goes_as_the_exact_text_the_server_sent() {
        let exact = |ty: &Type, raw: &[u8]| {
            let decoded = decode(ty, Some(raw));
            (serde_json::to_string(&decoded.cell).expect("JSON"), decoded.as_text)
        };
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(br#"{"a": 1e400, "n": 12345678901234567890123456789}"#);
        assert_eq!(
            exact(&Type::JSONB, &jsonb),
            (r#"{"a": 1e400, "n": 12345678901234567890123456789}"#.into(), false)
        );
        assert_eq!(exact(&Type::JSON, b"[1, 2.50]"), ("[1, 2.50]".into(), false));
        // A json value keeps its layout, but not its line breaks: an event is one line.
        assert_eq!(exact(&Type::JSON, b"{\"a\":\r\n  [1,\n 2]}"), ("{\"a\":  [1, 2]}".into(), false));
        // Not JSON (the server would not send it): its text, marked.
        assert_eq!(exact(&Type::JSON, b"{oops"), ("\"{oops\"".into(), true));
        assert!(decode(&Type::TEXT, Some(b"caf\xe9")).as_text);
        assert_eq!(
            json(decode(&Type::FLOAT8, Some(&f64::NAN.to_be_bytes()))),
            (serde_json::json!("NaN"), false)
        );
        assert_eq!(json(decode(&Type::FLOAT4, Some(&0.5f32.to_be_bytes()))), (serde_json::json!(0.5), false));
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
        assert_eq!(
            json(decode(&Type::INT4_ARRAY, Some(&raw))),
            (serde_json::json!([[1, 2], [3, null]]), false)
        );
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
        let expected = serde_json::json!({"lower_bounds": [0], "values": [1, 2, 3]});
        assert_eq!(json(decode(&Type::INT4_ARRAY, Some(&raw))), (expected, false));
    }
}
