//! The SQS queue an `s3` source reads event notifications from (`notifications:`): its
//! client, built from the S3 client's AWS configuration (same HTTP stack, proxy, CA
//! bundle and credentials), and the few requests the source makes: long-poll receive,
//! batched delete, batched visibility extension, and the check of `check --connect`.
//!
//! The queue URL names the queue's region (`https://sqs.eu-west-1.amazonaws.com/…`),
//! which the client signs for; a URL on another host (an SQS-compatible server on
//! loopback) is used as the endpoint, with the bucket's region.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::Region;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, MessageSystemAttributeName,
    QueueAttributeName,
};

use super::client::chain;
use crate::source::{ErrorClass, SourceError};
use crate::value::HttpUrl;

/// Most messages one request receives, deletes or extends (SQS's limit).
pub const MAX_PER_REQUEST: usize = 10;

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The message id, for logs and the set-aside count.
    pub id: String,
    /// The handle that deletes the message or extends its visibility (of this receipt only).
    pub receipt: String,
    /// The body.
    pub body: String,
    /// How many times SQS has handed out this message (1 on the first receipt).
    pub receive_count: u32,
}

/// A queue and its client.
#[derive(Debug, Clone)]
pub struct Queue {
    client: Client,
    /// The queue URL, as requests name it.
    url: String,
    /// The URL without query, for messages.
    shown: String,
}

/// The region named by an AWS queue URL's host (`sqs.REGION.amazonaws.com`, or the
/// legacy `REGION.queue.amazonaws.com`); None for any other host.
pub fn aws_region(url: &HttpUrl) -> Option<String> {
    let host = url.url().host_str()?;
    let rest = host.strip_suffix(".amazonaws.com").or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let region = match rest.strip_prefix("sqs.") {
        Some(region) => region,
        None => rest.strip_suffix(".queue")?,
    };
    // `sqs-fips.us-east-1`, dual-stack names and the like are AWS's too, but their
    // region is not where the plain form has it: leave those to the config's region.
    (!region.is_empty() && !region.contains('.')).then(|| region.to_string())
}

impl Queue {
    /// Builds the client (no network): `shared` is the S3 client's configuration.
    pub fn new(shared: &aws_config::SdkConfig, url: &HttpUrl) -> Queue {
        let mut builder = aws_sdk_sqs::config::Builder::from(shared).timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                // Above the longest long poll (20 s).
                .operation_attempt_timeout(Duration::from_secs(60))
                .build(),
        );
        match aws_region(url) {
            Some(region) => builder = builder.region(Region::new(region)),
            None => {
                let u = url.url();
                let mut origin = format!("{}://{}", u.scheme(), u.host_str().unwrap_or(""));
                if let Some(port) = u.port() {
                    origin.push_str(&format!(":{port}"));
                }
                builder = builder.endpoint_url(origin);
            }
        }
        Queue {
            client: Client::from_conf(builder.build()),
            url: url.url().to_string(),
            shown: url.to_string(),
        }
    }

    /// The queue URL as messages show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Receives up to [`MAX_PER_REQUEST`] messages, waiting up to `wait` (at most 20 s)
    /// for the first; each stays invisible to other receivers for `visibility`.
    pub async fn receive(&self, wait: Duration, visibility: Duration) -> Result<Vec<Received>, SourceError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_PER_REQUEST as i32)
            .wait_time_seconds(seconds(wait).min(20))
            .visibility_timeout(seconds(visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| classify(&e, &format!("receiving from {}", self.shown)))?;
        let mut received = Vec::new();
        for message in output.messages() {
            let (Some(id), Some(receipt)) = (message.message_id(), message.receipt_handle()) else {
                continue;
            };
            let receive_count = message
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            received.push(Received {
                id: id.to_string(),
                receipt: receipt.to_string(),
                body: message.body().unwrap_or("").to_string(),
                receive_count,
            });
        }
        Ok(received)
    }

    /// Deletes messages by receipt handle, [`MAX_PER_REQUEST`] per request. Returns the
    /// ids of those the queue refused to delete (an expired receipt: the message comes
    /// back, and gives the same ids again).
    pub async fn delete(&self, messages: &[(String, String)]) -> Result<Vec<String>, SourceError> {
        let mut refused = Vec::new();
        for chunk in messages.chunks(MAX_PER_REQUEST) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(n, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(n.to_string())
                        .receipt_handle(receipt)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SourceError::transient(format!("deleting from {}: {e}", self.shown)))?;
            let output = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(&e, &format!("deleting from {}", self.shown)))?;
            for failed in output.failed() {
                if let Some((id, _)) = failed.id().parse::<usize>().ok().and_then(|n| chunk.get(n)) {
                    refused.push(id.clone());
                }
            }
        }
        Ok(refused)
    }

    /// Keeps messages invisible for `visibility` from now (while their batch is retried).
    pub async fn extend(&self, receipts: &[String], visibility: Duration) -> Result<(), SourceError> {
        for chunk in receipts.chunks(MAX_PER_REQUEST) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(n, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(n.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(seconds(visibility))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SourceError::transient(format!("extending on {}: {e}", self.shown)))?;
            self.client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(&e, &format!("extending visibility on {}", self.shown)))?;
        }
        Ok(())
    }

    /// Checks that the queue exists and that these credentials may use it (its
    /// attributes: the same permission boundary as receiving, without taking a message
    /// from the watcher).
    pub async fn check(&self) -> Result<(), SourceError> {
        self.client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify(&e, &format!("checking {}", self.shown)))?;
        Ok(())
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Turns a failed queue request into a watcher error; never holds a credential.
fn classify<E>(error: &SdkError<E>, what: &str) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let code = context.err().code().unwrap_or("");
            let detail = context.err().message().unwrap_or("");
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                return SourceError::needs_attention(format!(
                    "{what}: the queue does not exist (HTTP {status})"
                ));
            }
            let class = service_class(code, status);
            let code = if code.is_empty() { "no error code" } else { code };
            let detail = if detail.is_empty() { String::new() } else { format!(": {detail}") };
            SourceError { class, message: format!("{what}: HTTP {status} {code}{detail}"), source: None }
        }
        SdkError::ConstructionFailure(_) => {
            SourceError::needs_attention(format!("{what}: cannot build the request: {}", chain(error)))
        }
        _ => {
            let text = chain(error);
            if text.contains("credential") {
                super::client::no_credentials(what, &text)
            } else {
                SourceError::transient(format!("{what}: {text}"))
            }
        }
    }
}

/// The class of an error the queue answered.
fn service_class(code: &str, status: u16) -> ErrorClass {
    let code = code.rsplit('.').next().unwrap_or(code);
    if matches!(
        code,
        "RequestThrottled"
            | "ThrottlingException"
            | "ServiceUnavailable"
            | "InternalError"
            | "InternalFailure"
            | "KmsThrottled"
    ) {
        return ErrorClass::Transient;
    }
    match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        400..=499 => ErrorClass::NeedsAttention,
        _ => ErrorClass::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_aws_queue_urls_only() {
        let region = |u: &str| aws_region(&HttpUrl::parse(u).unwrap());
        assert_eq!(
            region("https://sqs.eu-west-1.amazonaws.com/123456789012/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region("https://us-east-2.queue.amazonaws.com/123456789012/q").as_deref(),
            Some("us-east-2")
        );
        assert_eq!(region("https://sqs.cn-north-1.amazonaws.com.cn/1/q").as_deref(), Some("cn-north-1"));
        assert_eq!(region("http://127.0.0.1:5000/123456789012/q"), None);
        assert_eq!(region("https://sqs.amazonaws.com/1/q"), None);
    }

    #[test]
    fn queue_errors_are_classified() {
        assert_eq!(service_class("AWS.SimpleQueueService.RequestThrottled", 400), ErrorClass::Transient);
        assert_eq!(service_class("", 503), ErrorClass::Transient);
        assert_eq!(service_class("AccessDenied", 403), ErrorClass::NeedsAttention);
        assert_eq!(service_class("InvalidClientTokenId", 403), ErrorClass::NeedsAttention);
    }
}
