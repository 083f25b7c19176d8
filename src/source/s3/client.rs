//! The S3 client of the `s3` source and what its errors mean for a watcher.
//!
//! The client is built on the first poll (building a source never touches the network):
//! HTTPS through rustls with ring (the process-wide provider `init_tls` installs),
//! credentials and region from the standard AWS chain.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use super::S3Config;
use crate::source::{ErrorClass, SourceError};

/// Region used when neither the config nor the AWS chain names one: what S3-compatible
/// servers expect when they care at all.
const FALLBACK_REGION: &str = "us-east-1";

/// Builds the client. May read the environment, profile files and, where the chain
/// falls through to it, instance metadata (for the region).
pub async fn build(config: &S3Config) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &config.region {
        loader = loader.region(Region::new(region.clone()));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.force_path_style)
        // A listing page should never take long; a stalled connection is a retried
        // poll, not a watcher that hangs.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
    if shared.region().is_none() {
        builder = builder.region(Region::new(FALLBACK_REGION));
    }
    if let Some(url) = &config.endpoint_url {
        builder = builder.endpoint_url(url.clone());
    }
    Client::from_conf(builder.build())
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
            } else if status == 301 || code == "PermanentRedirect" {
                format!("{what}: bucket `{bucket}` is in another region; set `region` (HTTP {status} {code})")
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
                SourceError::needs_attention(format!("{what}: no usable AWS credentials: {text}"))
            } else {
                SourceError::transient(format!("{what}: {text}"))
            }
        }
    }
}

/// The messages of an error and its sources, joined with `: `, skipping a message
/// its predecessor already contains (the SDK repeats itself).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
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
