//! What the HTTP sinks (`webhook`, `airflow`) share: the process's two HTTP clients
//! (one connection pool for every watcher), redaction of the sinks' own secrets from
//! what receivers answer, and turning transport errors and `Retry-After` into delivery
//! outcomes. Statuses are classified by [`super::classify_http_status`], nowhere else.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::{Delivery, classify_http_status};

/// Idle connections kept per receiver (host and port), for all watchers together: a
/// few hundred watchers posting to one receiver reuse these instead of holding a
/// socket each.
const MAX_IDLE_PER_HOST: usize = 8;

/// How long an idle connection is kept; receivers close theirs after a while anyway.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for a TCP (and TLS) connection; a request's own `timeout` is shorter
/// when it is.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest stretch of a receiver's answer kept in a failure's reason.
const BODY_EXCERPT_CHARS: usize = 200;

fn builder() -> reqwest::ClientBuilder {
    crate::init_tls();
    // Redirects are not followed: a POST that is redirected would silently become a
    // GET, so a 3xx is reported (as a permanent failure) instead.
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("highwater/", env!("CARGO_PKG_VERSION")))
}

/// The client for `http://` receivers. It is built without the system's trust store
/// (it never verifies a certificate, as it never speaks TLS), so plain HTTP works on a
/// host that has no CA certificates.
fn plain_client() -> Result<reqwest::Client, String> {
    static PLAIN: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            builder()
                .tls_certs_only([])
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)))
        })
        .clone()
}

/// The client for `https://` receivers, verifying certificates against the system's
/// trust store. Built on first use; a failure (no CA certificates on this host) is not
/// kept, so certificates installed later are found by the next attempt.
fn tls_client() -> Result<reqwest::Client, String> {
    static TLS: Mutex<Option<reqwest::Client>> = Mutex::new(None);
    let mut slot = TLS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(client) = slot.as_ref() {
        return Ok(client.clone());
    }
    let client = builder().https_only(true).build().map_err(|e| {
        format!(
            "https:// needs the system's trust store, which cannot be loaded: {} (install the CA \
             certificates, e.g. the ca-certificates package, or point SSL_CERT_FILE at a bundle)",
            error_chain(&e)
        )
    })?;
    *slot = Some(client.clone());
    Ok(client)
}

/// The shared client for requests to `url`: every HTTP sink of the process uses one of
/// two clients, so their connections are pooled together. Err (what an operator must
/// fix) when `url` is `https://` and the trust store cannot be loaded.
pub fn client_for(url: &reqwest::Url) -> Result<reqwest::Client, String> {
    if url.scheme() == "https" { tls_client() } else { plain_client() }
}

/// What this host lacks for requests to `url`, checked without the network: the trust
/// store, for `https://`. For `highwater check` and the sinks' own reports.
pub fn host_problem(url: &reqwest::Url) -> Option<String> {
    client_for(url).err()
}

/// The sink's own secrets as they are now, to be kept out of everything a receiver
/// answers before it is logged or stored (a receiver that echoes request headers would
/// otherwise put a bearer token into the logs and dead letters).
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Shortest secret redacted: below it, replacing would mangle ordinary words and say
    /// nothing about a secret that short anyway.
    const MIN_LEN: usize = 4;

    /// Adds a secret to redact (and its JSON-escaped form, as echoes often are JSON).
    pub fn add(&mut self, secret: &str) {
        if secret.len() < Self::MIN_LEN {
            return;
        }
        for form in [secret.to_string(), secret.replace('/', "\\/")] {
            if !self.secrets.contains(&form) {
                self.secrets.push(form);
            }
        }
        // Longest first, so that a secret containing another is replaced whole.
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "***");
            }
        }
        text
    }
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
/// as the delay hint and the start of the body, redacted, in the reason when it failed.
pub async fn classify_response(response: reqwest::Response, what: &str, redactor: &Redactor) -> Delivery {
    let status = response.status().as_u16();
    let after = retry_after(response.headers());
    match classify_http_status(status, after, what) {
        Delivery::Acknowledged => Delivery::Acknowledged,
        failed => {
            let body = response.text().await.unwrap_or_default();
            with_body(failed, &body, redactor)
        }
    }
}

/// Appends the start of a response body to a failure's reason (receivers explain a
/// refusal there), with the sink's secrets redacted before it is cut short, so that no
/// part of one survives.
pub fn with_body(delivery: Delivery, body: &str, redactor: &Redactor) -> Delivery {
    let body = redactor.redact(body.trim());
    if body.is_empty() {
        return delivery;
    }
    let mut excerpt: String = body.chars().take(BODY_EXCERPT_CHARS).collect();
    if excerpt.len() < body.len() {
        excerpt.push('…');
    }
    delivery.map_reason(|reason| format!("{reason}: {excerpt}"))
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
    fn echoed_secrets_are_redacted_before_the_body_is_cut() {
        let mut redactor = Redactor::default();
        redactor.add("tok/en+secret");
        redactor.add("abc"); // too short to redact
        let echo = format!(
            r#"{{"headers": {{"authorization": "Bearer tok\/en+secret"}}, "raw": "tok/en+secret", "pad": "{}"}}"#,
            "x".repeat(150)
        );
        let failed = with_body(Delivery::attention("receiver answered HTTP 401"), &echo, &redactor);
        let reason = failed.reason();
        assert!(!reason.contains("tok") && !reason.contains("en+secret"), "{reason}");
        assert!(reason.contains("Bearer ***") && reason.ends_with('…'), "{reason}");
        assert!(matches!(failed, Delivery::NeedsAttention { .. }));
        // A secret cut by the excerpt's end would leave its start: redaction runs first.
        let cut = format!("{}tok/en+secret", "y".repeat(195));
        let reason = with_body(Delivery::retry("x"), &cut, &redactor).reason().to_string();
        assert!(!reason.contains("tok"), "{reason}");
    }

    #[test]
    fn one_client_per_scheme_is_shared() {
        let http = reqwest::Url::parse("http://127.0.0.1:1/a").unwrap();
        assert!(client_for(&http).is_ok());
        assert!(host_problem(&http).is_none(), "plain HTTP never needs a trust store");
    }
}
