//! The S3 client of the `s3` source and what its errors mean for a watcher.
//!
//! The client is built on the first poll (building a source never touches the network):
//! HTTPS through rustls with ring (the process-wide provider `init_tls` installs), the
//! proxy from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, the system's CA certificates plus
//! `AWS_CA_BUNDLE`, credentials from the standard AWS chain (including
//! `credential_process` and IAM Identity Center profiles). The region comes from the
//! config, `AWS_REGION` or the profile, never from instance metadata: an unset region
//! is assumed to be `us-east-1` and said so, instead of waiting on an address that
//! answers only on EC2.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::ProvideRegion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{ConfigBag, Intercept, Region, RuntimeComponents, SharedHttpClient};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};

use super::S3Config;
use crate::source::{ErrorClass, SourceError};

/// Region used when neither the config, `AWS_REGION` nor the profile names one: what
/// S3-compatible servers expect when they care at all, and where AWS tells a request
/// for a bucket elsewhere which region to use.
const FALLBACK_REGION: &str = "us-east-1";

/// Where the AWS SDK's default credential chain looks, in its order: said when none
/// of them gave credentials, since the SDK's error names only the last one.
const CREDENTIAL_CHAIN: &str = "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), \
    the profile files (AWS_PROFILE or `default` in ~/.aws/credentials and ~/.aws/config, \
    or AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE: keys, SSO, credential_process, a role), \
    web identity (AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN), \
    the ECS container endpoint (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI), \
    EC2 instance metadata (IMDS)";

/// The variable naming a PEM file of extra CA certificates, as the AWS CLI reads it.
const CA_BUNDLE_VAR: &str = "AWS_CA_BUNDLE";

/// A built client and what it was built with.
pub struct Built {
    /// The client.
    pub client: Client,
    /// The region requests are signed for.
    pub region: String,
    /// Where the region came from: `config`, `environment`, `profile` or `assumed`.
    pub region_from: &'static str,
    /// The server's clock as its last answer told it.
    pub clock: ServerClock,
    /// What the client was built from (HTTP client, credentials, region): the queue
    /// client of `notifications` is built from it too, and shares its credentials.
    pub shared: aws_config::SdkConfig,
}

/// The server's clock: the `Date` header of the last response, in milliseconds since
/// the epoch (`i64::MIN` before any). Object times are the server's, so they are
/// judged against its clock, not against this machine's.
#[derive(Debug, Clone)]
pub struct ServerClock(Arc<AtomicI64>);

impl ServerClock {
    fn new() -> Self {
        ServerClock(Arc::new(AtomicI64::new(i64::MIN)))
    }

    /// The last `Date` the server sent, if any.
    pub fn last(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|ms| *ms != i64::MIN)
    }

    /// Forgets the last `Date`, so that a poll reads only its own answers'.
    pub fn reset(&self) {
        self.0.store(i64::MIN, Ordering::Relaxed);
    }
}

impl Intercept for ServerClock {
    fn name(&self) -> &'static str {
        "ServerClock"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context.response().headers().get("date");
        if let Some(ms) = date
            .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
            .and_then(|d| d.to_millis().ok())
        {
            self.0.store(ms, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Builds the client. Reads the environment and the profile files; touches no network.
pub async fn build(config: &S3Config) -> Result<Built, SourceError> {
    let http = http_client(tls_context()?);
    let (region, region_from) = region(config).await;
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(region.clone()))
        .load()
        .await;
    let clock = ServerClock::new();
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style)
        .interceptor(clock.clone())
        // Listing pages read in one pass (see `page`).
        .interceptor(super::page::PageReader)
        // A listing page should never take long; a stalled connection is a retried
        // poll, not a watcher that hangs.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    Ok(Built { client: Client::from_conf(builder.build()), region, region_from, clock, shared })
}

/// The region and where it came from: the config, `AWS_REGION`/`AWS_DEFAULT_REGION`,
/// the profile, else [`FALLBACK_REGION`]. Not instance metadata: off EC2 its address
/// does not answer, and waiting on it would stall every start and `check --connect`.
async fn region(config: &S3Config) -> (String, &'static str) {
    if let Some(region) = &config.region {
        return (region.clone(), "config");
    }
    if let Some(region) = aws_config::environment::EnvironmentVariableRegionProvider::new().region().await {
        return (region.to_string(), "environment");
    }
    if let Some(region) = aws_config::profile::ProfileFileRegionProvider::new().region().await {
        return (region.to_string(), "profile");
    }
    (FALLBACK_REGION.to_string(), "assumed")
}

/// The system's CA certificates, plus those of `AWS_CA_BUNDLE` (for an `endpoint_url`
/// server with a private CA). The bundle is checked here: the TLS layer would panic on
/// a certificate it cannot parse.
fn tls_context() -> Result<TlsContext, SourceError> {
    let mut trust = TrustStore::default();
    if let Some(path) = std::env::var_os(CA_BUNDLE_VAR).filter(|p| !p.is_empty()) {
        let path = std::path::PathBuf::from(path);
        let pem = std::fs::read(&path).map_err(|e| {
            SourceError::needs_attention(format!("cannot read {CA_BUNDLE_VAR} {}: {e}", path.display()))
        })?;
        check_ca_bundle(&pem)
            .map_err(|e| SourceError::needs_attention(format!("{CA_BUNDLE_VAR} {}: {e}", path.display())))?;
        trust = trust.with_pem_certificate(pem);
    }
    TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| SourceError::needs_attention(format!("cannot set up TLS: {e}")).with_source(e))
}

/// Fails unless `pem` holds at least one certificate and every one of them can serve
/// as a trust anchor.
fn check_ca_bundle(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| format!("certificate {} cannot be used ({e})", n + 1))?;
    }
    Ok(())
}

/// The HTTP client: rustls with ring, `tls` for trust, and the proxy the environment
/// names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`), read when a
/// connection pool is set up. The same client serves the credential providers (STS,
/// SSO), which then go through the proxy too.
fn http_client(tls: TlsContext) -> SharedHttpClient {
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut builder = aws_smithy_http_client::Connector::builder()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .tls_context(tls.clone());
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    })
}

/// S3 error codes that retrying will not fix: the bucket, the credentials or the
/// permissions need an operator.
const NEEDS_ATTENTION_CODES: &[&str] = &[
    "NoSuchBucket",
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "PermanentRedirect",
    "AuthorizationHeaderMalformed",
    "InvalidBucketName",
    "InvalidRequest",
];

/// Turns a failed request into a watcher error. `what` names the request and its
/// target (`listing s3://bucket/prefix`); the message never holds credentials (the SDK's
/// errors carry codes and server messages, never the signing secret).
pub fn classify<E>(error: &SdkError<E>, bucket: &str, what: &str) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code().unwrap_or("");
            let detail = context.err().message().unwrap_or("");
            let class = service_class(code, status);
            let message = if code == "NoSuchBucket"
                || (status == 404 && (code.is_empty() || code == "NotFound"))
            {
                format!("{what}: bucket `{bucket}` does not exist (HTTP {status})")
            } else if status == 301 || code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" {
                // AWS names the bucket's region in a header of the refusal.
                match context.raw().headers().get("x-amz-bucket-region") {
                    Some(region) => format!(
                        "{what}: bucket `{bucket}` is in region {region}; set `region: {region}` (HTTP {status} {code})"
                    ),
                    None => format!(
                        "{what}: bucket `{bucket}` is in another region; set `region` (HTTP {status} {code})"
                    ),
                }
            } else {
                let code = if code.is_empty() { "no error code".to_string() } else { code.to_string() };
                let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
                format!("{what}: HTTP {status} {code}{detail}")
            };
            SourceError { class, message, source: None }
        }
        SdkError::ConstructionFailure(_) => {
            SourceError::needs_attention(format!("{what}: cannot build the request: {}", chain(error)))
        }
        _ => {
            let text = chain(error);
            // No credentials anywhere in the chain is an operator's problem, not a
            // network one, although it shows up as a failed dispatch.
            if text.contains("credential") {
                no_credentials(what, &text)
            } else {
                SourceError::transient(format!("{what}: {text}"))
            }
        }
    }
}

/// No credentials from the chain: where it looked, and what its last provider said.
pub(super) fn no_credentials(what: &str, text: &str) -> SourceError {
    let last = text.strip_prefix("dispatch failure: other: ").unwrap_or(text);
    // When no provider was set up the SDK lists each one's answer, a line each.
    let said = match last.split_once("Attempted:") {
        Some((_, attempts)) => {
            let each: Vec<&str> = attempts.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            format!("each said: {}", each.join("; "))
        }
        None => format!("the last said: {last}"),
    };
    SourceError::needs_attention(format!(
        "{what}: no usable AWS credentials; looked in {CREDENTIAL_CHAIN}; {said}"
    ))
}

/// The messages of an error and its sources, joined with `: `, skipping a message
/// its predecessor already contains (the SDK repeats itself).
pub(super) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The class of an error the server answered.
fn service_class(code: &str, status: u16) -> ErrorClass {
    if matches!(code, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" | "Throttling") {
        return ErrorClass::Transient;
    }
    if NEEDS_ATTENTION_CODES.contains(&code) {
        return ErrorClass::NeedsAttention;
    }
    match status {
        408 | 429 => ErrorClass::Transient,
        500..=599 => ErrorClass::Transient,
        301 | 400..=499 => ErrorClass::NeedsAttention,
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundles_are_checked_before_the_tls_layer_sees_them() {
        assert!(check_ca_bundle(b"").unwrap_err().contains("no PEM certificate"));
        assert!(check_ca_bundle(b"hello").unwrap_err().contains("no PEM certificate"));
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(check_ca_bundle(bad).is_err());
    }

    #[test]
    fn server_errors_are_classified() {
        assert_eq!(service_class("SlowDown", 503), ErrorClass::Transient);
        assert_eq!(service_class("InternalError", 500), ErrorClass::Transient);
        assert_eq!(service_class("", 502), ErrorClass::Transient);
        assert_eq!(service_class("RequestTimeout", 400), ErrorClass::Transient);
        assert_eq!(service_class("NoSuchBucket", 404), ErrorClass::NeedsAttention);
        assert_eq!(service_class("AccessDenied", 403), ErrorClass::NeedsAttention);
        assert_eq!(service_class("", 403), ErrorClass::NeedsAttention);
        assert_eq!(service_class("", 429), ErrorClass::Transient);
    }
}
