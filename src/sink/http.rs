//! What the HTTP sinks (`webhook`, `airflow`) share: the client, secrets read from the
//! environment or a file, and turning transport errors and
//! `Retry-After` into delivery outcomes. Statuses are classified by
//! [`super::classify_http_status`], nowhere else.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{BuildError, Delivery, classify_http_status};

/// A secret read from the environment or a file. `Debug` does not show it, so it cannot
/// reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret obtained at run time (a fetched token).
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The pair of keys that name one secret: `<key>_env` (an environment variable) or
/// `<key>_file` (a file holding it).
#[derive(Debug, Clone, Copy)]
pub struct SecretKeys<'a> {
    /// The secret's key without suffix (`secret`, `password`), for messages.
    pub key: &'a str,
    /// `<key>_env`.
    pub env: Option<&'a str>,
    /// `<key>_file`.
    pub file: Option<&'a Path>,
}

impl SecretKeys<'_> {
    /// True when either key is given.
    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some()
    }

    /// Cross-key checks, as `(key, message)` pairs.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.env.is_some() && self.file.is_some() {
            errors.push((
                format!("{}_env", self.key),
                format!("give `{0}_env` or `{0}_file`, not both", self.key),
            ));
        }
        if self.env.is_some_and(|name| name.is_empty() || name.contains('=')) {
            errors.push((format!("{}_env", self.key), "must name an environment variable".into()));
        }
        if self.file.is_some_and(|path| path.as_os_str().is_empty()) {
            errors.push((format!("{}_file", self.key), "must not be empty".into()));
        }
        errors
    }

    /// Reads the secret, if one is configured. Errors name the variable or file, never
    /// the value. A file's trailing line break is not part of the secret.
    pub fn load(&self) -> Result<Option<Secret>, BuildError> {
        let value = if let Some(name) = self.env {
            match std::env::var(name) {
                Ok(value) if !value.is_empty() => value,
                _ => {
                    return Err(BuildError {
                        message: format!(
                            "{}_env: environment variable `{name}` is not set or empty",
                            self.key
                        ),
                    });
                }
            }
        } else if let Some(path) = self.file {
            let text = std::fs::read_to_string(path).map_err(|e| BuildError {
                message: format!("{}_file: cannot read `{}`: {}", self.key, path.display(), e.kind()),
            })?;
            let value = text.trim_end_matches(['\n', '\r']).to_string();
            if value.is_empty() {
                return Err(BuildError {
                    message: format!("{}_file: `{}` is empty", self.key, path.display()),
                });
            }
            value
        } else {
            return Ok(None);
        };
        Ok(Some(Secret(value)))
    }
}

/// The HTTP client of one sink. Redirects are not followed: a POST that is redirected
/// would silently become a GET, so a 3xx is reported (as a permanent failure) instead.
pub fn client(timeout: Duration) -> Result<reqwest::Client, BuildError> {
    crate::init_tls();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("highwater/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuildError { message: format!("cannot build the HTTP client: {}", error_chain(&e)) })
}

/// Classifies a request that got no HTTP answer. Everything but a malformed request is
/// worth retrying: refused and dropped connections, timeouts, TLS hiccups.
pub fn transport_failure(error: reqwest::Error, what: &str, timeout: Duration) -> Delivery {
    let error = error.without_url();
    if error.is_builder() {
        return Delivery::permanent(format!("cannot build a request to {what}: {}", error_chain(&error)));
    }
    if error.is_timeout() {
        return Delivery::retry(format!("{what} did not answer within {:.1}s", timeout.as_secs_f64()));
    }
    if error.is_connect() {
        return Delivery::retry(format!("cannot connect to {what}: {}", error_chain(&error)));
    }
    Delivery::retry(format!("request to {what} failed: {}", error_chain(&error)))
}

/// Classifies a response: the status by [`classify_http_status`], with `Retry-After`
/// as the delay hint and the start of the body in the reason when it failed.
pub async fn classify_response(response: reqwest::Response, what: &str) -> Delivery {
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    match classify_http_status(status, after, what) {
        Delivery::Acknowledged => Delivery::Acknowledged,
        failed => {
            let body = response.text().await.unwrap_or_default();
            with_body(failed, &body)
        }
    }
}

/// Appends the start of a response body to a failure's reason: receivers explain a
/// refusal there.
pub fn with_body(delivery: Delivery, body: &str) -> Delivery {
    let body = body.trim();
    if body.is_empty() {
        return delivery;
    }
    let mut excerpt: String = body.chars().take(200).collect();
    if excerpt.len() < body.len() {
        excerpt.push('…');
    }
    match delivery {
        Delivery::RetryLater { reason, after } => {
            Delivery::RetryLater { reason: format!("{reason}: {excerpt}"), after }
        }
        Delivery::Permanent { reason } => Delivery::Permanent { reason: format!("{reason}: {excerpt}") },
        Delivery::Acknowledged => Delivery::Acknowledged,
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delay = at.signed_duration_since(chrono::Utc::now());
    Some(delay.to_std().unwrap_or(Duration::ZERO))
}

/// An error and its causes on one line (reqwest's own `Display` stops at the top).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(RETRY_AFTER, later.parse().unwrap());
        let delay = retry_after(&headers).unwrap();
        assert!(delay > Duration::from_secs(100) && delay <= Duration::from_secs(120), "{delay:?}");
        headers.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn secrets_come_from_env_or_file_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let keys = SecretKeys { key: "secret", env: None, file: Some(&path) };
        let secret = keys.load().unwrap().unwrap();
        assert_eq!(secret.expose(), "s3cr3t");
        assert_eq!(format!("{secret:?}"), "Secret(***)");

        let missing = SecretKeys { key: "password", env: Some("HIGHWATER_TEST_SURELY_UNSET"), file: None };
        let message = missing.load().unwrap_err().message;
        assert!(message.contains("HIGHWATER_TEST_SURELY_UNSET"), "{message}");

        let both = SecretKeys { key: "token", env: Some("X"), file: Some(&path) };
        assert_eq!(both.validate().len(), 1);
        assert!(SecretKeys { key: "token", env: None, file: None }.load().unwrap().is_none());
    }
}
