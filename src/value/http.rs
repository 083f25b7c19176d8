//! HTTP values from the config: URLs of receivers and extra request headers.

use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// An `http://` or `https://` URL with a host, checked while read.
///
/// `Display` and `Debug` show it without user info, query or fragment, which may
/// carry credentials; messages never repeat the text as written for the same reason.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(reqwest::Url);

impl HttpUrl {
    /// Parses and checks a URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(text).map_err(|e| format!("not a valid URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("must be an http:// or https:// URL, not {}://", parsed.scheme()));
        }
        if parsed.host_str().is_none() {
            return Err("must name a host".into());
        }
        Ok(HttpUrl(parsed))
    }

    /// The URL itself, for the one place that sends a request to it.
    pub fn url(&self) -> &reqwest::Url {
        &self.0
    }

    /// True for `https://`.
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = &self.0;
        write!(f, "{}://{}", url.scheme(), url.host_str().unwrap_or(""))?;
        if let Some(port) = url.port() {
            write!(f, ":{port}")?;
        }
        f.write_str(url.path())
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({self})")
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::parse_text(deserializer, "an http:// or https:// URL", HttpUrl::parse)
    }
}

/// One extra header: its name as written (for messages) and as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The name as the config spells it.
    pub written: String,
    /// The name, checked.
    pub name: HeaderName,
    /// The value, checked. Not a secret (credentials have keys of their own), but
    /// shown by nothing either.
    pub value: HeaderValue,
}

/// Most extra headers a sink may send; servers refuse requests with many more.
const MAX_HEADERS: usize = 64;

/// Extra request headers (a mapping of name to value), each checked while read, in
/// the order written. A name given twice (in any case) is an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// Builds headers from pairs, checking each as the config reader does.
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut headers = Headers::default();
        for (name, value) in pairs {
            headers.push(name, value)?;
        }
        Ok(headers)
    }

    fn push(&mut self, written: &str, value: &str) -> Result<(), String> {
        let name = self.name(written)?;
        let value = header_value(written, value)?;
        self.0.push(Header { written: written.to_string(), name, value });
        Ok(())
    }

    /// Checks the name of a header to add.
    fn name(&self, written: &str) -> Result<HeaderName, String> {
        if self.0.len() >= MAX_HEADERS {
            return Err(format!("at most {MAX_HEADERS} headers"));
        }
        let name = HeaderName::from_bytes(written.as_bytes())
            .map_err(|_| format!("`{written}` is not a valid HTTP header name"))?;
        if self.0.iter().any(|h| h.name == name) {
            return Err(format!("header `{written}` is given twice"));
        }
        Ok(name)
    }

    /// The headers in the order written.
    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A visitor over the mapping, so that each entry's error has the entry's line.
        struct HeadersVisitor;
        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of header names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Headers::default();
                while let Some((written, name)) = map.next_key_seed(NameSeed(&headers))? {
                    let value = map.next_value_seed(ValueSeed(&written))?;
                    headers.0.push(Header { written, name, value });
                }
                Ok(headers)
            }
        }
        deserializer.deserialize_map(HeadersVisitor)
    }
}

/// Reads a header name (as written, and checked against those read before it).
struct NameSeed<'a>(&'a Headers);

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = (String, HeaderName);
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        super::parse_text(deserializer, "a header name", |text| Ok((text.to_string(), self.0.name(text)?)))
    }
}

/// Reads the value of the header named `.0`.
struct ValueSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = HeaderValue;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<HeaderValue, D::Error> {
        super::parse_text(deserializer, "a header value", |text| header_value(self.0, text))
    }
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(value).map_err(|_| format!("`{name}` is not a valid HTTP header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_drop_credentials_and_queries() {
        let url = HttpUrl::parse("https://user:pw@hooks.example.com:8443/in/x?token=abc#f").unwrap();
        assert_eq!(url.to_string(), "https://hooks.example.com:8443/in/x");
        assert_eq!(format!("{url:?}"), "HttpUrl(https://hooks.example.com:8443/in/x)");
        assert!(url.is_https());
        assert!(HttpUrl::parse("ftp://example.com/").is_err());
        assert!(HttpUrl::parse("not a url").is_err());
    }

    #[test]
    fn headers_are_checked_and_keep_their_spelling() {
        let headers = Headers::new([("X-Team", "data"), ("x-b", "1")]).unwrap();
        let written: Vec<&str> = headers.iter().map(|h| h.written.as_str()).collect();
        assert_eq!(written, ["X-Team", "x-b"]);
        assert_eq!(headers.0[0].name.as_str(), "x-team");
        assert!(Headers::new([("a b", "x")]).is_err());
        assert!(Headers::new([("X-A", "line\nbreak")]).is_err());
        assert_eq!(Headers::new([("X-A", "1"), ("x-a", "2")]).unwrap_err(), "header `x-a` is given twice");
    }
}
