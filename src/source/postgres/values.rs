//! Postgres values as faithful JSON, and identifier quoting.
//!
//! Rows are read in the binary protocol and decoded here by column type: integers stay
//! integers, timestamps become RFC 3339, bytea becomes base64, arrays (of any number of
//! dimensions) become nested JSON arrays. Types without an exact JSON form (numeric,
//! money, intervals, enums, ranges, …) are cast to text by the query itself (see
//! [`needs_text`]), so that a value is never rounded or reinterpreted.

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
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

/// Decodes one value of type `ty` (NULL becomes `null`).
pub fn decode(ty: &Type, raw: Option<&[u8]>) -> Result<Value, BoxError> {
    let Some(raw) = raw else { return Ok(Value::Null) };
    if let Kind::Array(element) = ty.kind() {
        return decode_array(element, raw);
    }
    Ok(match *ty {
        Type::BOOL => Value::Bool(bool::from_sql(ty, raw)?),
        Type::INT2 => i16::from_sql(ty, raw)?.into(),
        Type::INT4 => i32::from_sql(ty, raw)?.into(),
        Type::INT8 => i64::from_sql(ty, raw)?.into(),
        Type::OID => u32::from_sql(ty, raw)?.into(),
        Type::FLOAT4 => float(f64::from(f32::from_sql(ty, raw)?)),
        Type::FLOAT8 => float(f64::from_sql(ty, raw)?),
        Type::CHAR => Value::String(char::from(i8::from_sql(ty, raw)? as u8).to_string()),
        Type::JSON | Type::JSONB => Value::from_sql(ty, raw)?,
        Type::UUID => Value::String(uuid::Uuid::from_sql(ty, raw)?.to_string()),
        Type::BYTEA => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(<&[u8]>::from_sql(ty, raw)?))
        }
        Type::TIMESTAMPTZ => {
            Value::String(DateTime::<Utc>::from_sql(ty, raw)?.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        }
        // No zone was stored, so none is invented: ISO 8601 without an offset.
        Type::TIMESTAMP => {
            Value::String(NaiveDateTime::from_sql(ty, raw)?.format("%Y-%m-%dT%H:%M:%S%.f").to_string())
        }
        Type::DATE => Value::String(NaiveDate::from_sql(ty, raw)?.format("%Y-%m-%d").to_string()),
        Type::TIME => Value::String(NaiveTime::from_sql(ty, raw)?.format("%H:%M:%S%.f").to_string()),
        Type::XID8 => Value::String(u64::from_be_bytes(raw.try_into()?).to_string()),
        // Text and everything the query cast to text.
        _ => Value::String(<&str>::from_sql(&Type::TEXT, raw)?.to_string()),
    })
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
/// (length -1 for NULL), in row-major order.
fn decode_array(element: &Type, raw: &[u8]) -> Result<Value, BoxError> {
    let mut buf = raw;
    let mut int = || -> Result<i32, BoxError> {
        let (head, rest) = buf.split_first_chunk::<4>().ok_or("truncated array")?;
        buf = rest;
        Ok(i32::from_be_bytes(*head))
    };
    let ndim = usize::try_from(int()?)?;
    let _has_null = int()?;
    let _element_oid = int()?;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        dims.push(usize::try_from(int()?)?);
        let _lower_bound = int()?;
    }
    let total: usize = if ndim == 0 { 0 } else { dims.iter().product() };
    let mut values = Vec::with_capacity(total.min(1 << 16));
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
            values.push(decode(element, Some(bytes))?);
        }
    }
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    Ok(nest(&dims, &mut values.into_iter()))
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
        let value = decode(&Type::INT4_ARRAY, Some(&raw)).unwrap();
        assert_eq!(value, serde_json::json!([[1, 2], [3, null]]));
    }
}
