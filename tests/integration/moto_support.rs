//! moto's standalone server (real S3 and SQS APIs, and S3 event notifications sent to
//! SQS) on a free loopback port, one per test binary, and clients for the tests' own
//! buckets, objects and queues.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::s3_support::{self, ACCESS_KEY, SECRET_KEY, rt};

/// The shared server.
pub struct Moto {
    /// `http://127.0.0.1:PORT`: its S3 and SQS APIs.
    pub endpoint: String,
}

/// Starts the server on first use; every test of this binary shares it. Fails (never
/// skips) when scripts/test.sh did not install it.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| match start() {
        Ok(moto) => moto,
        Err(e) => panic!("{e}"),
    })
}

static MOTO_PID: AtomicI32 = AtomicI32::new(0);
static MOTO_LOG: OnceLock<PathBuf> = OnceLock::new();

/// Runs at exit: stops the server.
extern "C" fn stop() {
    let pid = MOTO_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signals the server this process started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if let Some(log) = MOTO_LOG.get() {
        let _ = std::fs::remove_file(log);
    }
}

fn start() -> Result<Moto, String> {
    let Some(program) = std::env::var_os("HIGHWATER_TEST_MOTO") else {
        return Err("HIGHWATER_TEST_MOTO is not set: run the tests with scripts/test.sh, which installs \
             moto's server (tests/setup/moto.sh) and points the notification tests at it"
            .into());
    };
    let program = PathBuf::from(program);
    let mut failures = Vec::new();
    // A port picked free may be taken before the server binds it: then it exits, and
    // starts again on another.
    for _ in 0..3 {
        let port =
            TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&program);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().map_err(|e| e.to_string())?)
            .stderr(log.reopen().map_err(|e| e.to_string())?);
        // SAFETY: prctl in the child between fork and exec; async-signal-safe. The
        // signal comes when the thread that started the server ends: a thread of its
        // own that lives as long as the server (at the latest, the process).
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let (started, exited) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (started_tx, started_rx) = started;
        let (exit_tx, exit_rx) = exited;
        let shown = program.display().to_string();
        std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                MOTO_PID.store(child.id() as i32, Ordering::SeqCst);
                static AT_EXIT: std::sync::Once = std::sync::Once::new();
                // SAFETY: registers a plain extern "C" function with no arguments, once.
                AT_EXIT.call_once(|| unsafe {
                    libc::atexit(stop);
                });
                let _ = started_tx.send(Ok(()));
                let _ = child.wait();
                let _ = exit_tx.send(());
            }
            Err(e) => {
                let _ = started_tx.send(Err(format!("cannot start {shown}: {e}")));
            }
        });
        started_rx.recv().map_err(|e| e.to_string())??;
        let endpoint = format!("http://127.0.0.1:{port}");
        let sqs = sqs(&endpoint);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if exit_rx.try_recv().is_ok() {
                failures.push(std::fs::read_to_string(log.path()).unwrap_or_default());
                break;
            }
            if rt().block_on(sqs.list_queues().send()).is_ok() {
                // The log lives as long as the server; `stop` removes it.
                if let Ok((_, path)) = log.keep() {
                    let _ = MOTO_LOG.set(path);
                }
                return Ok(Moto { endpoint });
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "moto did not become ready in 60s; its log:\n{}",
                    std::fs::read_to_string(log.path()).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(format!("moto exited at start three times; its logs:\n{}", failures.join("\n---\n")))
}

/// An SQS client for the tests' own queues and messages.
pub fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    let _ = rt();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sqs::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

/// A bucket on moto with a queue of its own that receives the bucket's object-created
/// and object-removed notifications.
pub struct Notified {
    pub bucket: String,
    pub queue_url: String,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
}

impl Notified {
    /// Creates the bucket and the queue; with `notify`, S3 sends the bucket's events to
    /// the queue (the test event first, which the test drains here).
    pub fn new(name: &str, notify: bool) -> Self {
        let endpoint = &moto().endpoint;
        let s3 = s3_support::client(endpoint);
        let sqs = sqs(endpoint);
        let queue_url = rt().block_on(async {
            s3.create_bucket().bucket(name).send().await.expect("create bucket");
            let queue =
                sqs.create_queue().queue_name(format!("{name}-events")).send().await.expect("create queue");
            let url = queue.queue_url().expect("queue url").to_string();
            if notify {
                use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
                let arn = format!("arn:aws:sqs:us-east-1:123456789012:{name}-events");
                let config = NotificationConfiguration::builder()
                    .queue_configurations(
                        QueueConfiguration::builder()
                            .queue_arn(arn)
                            .events(Event::S3ObjectCreated)
                            .events(Event::S3ObjectRemoved)
                            .build()
                            .expect("queue configuration"),
                    )
                    .build();
                s3.put_bucket_notification_configuration()
                    .bucket(name)
                    .notification_configuration(config)
                    .send()
                    .await
                    .expect("put notification configuration");
            }
            url
        });
        Notified { bucket: name.to_string(), queue_url, s3, sqs }
    }

    pub fn put(&self, key: &str, body: &str) {
        rt().block_on(async {
            self.s3
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(aws_sdk_s3::primitives::ByteStream::from(body.as_bytes().to_vec()))
                .send()
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        });
    }

    pub fn delete(&self, key: &str) {
        rt().block_on(async {
            self.s3.delete_object().bucket(&self.bucket).key(key).send().await.expect("delete");
        });
    }

    /// Sends a message of the test's own making to the queue.
    pub fn send(&self, body: &str) {
        rt().block_on(async {
            self.sqs.send_message().queue_url(&self.queue_url).message_body(body).send().await.expect("send");
        });
    }

    /// Messages in the queue, visible or not (SQS's approximate counts, exact on moto).
    pub fn messages(&self) -> (u64, u64) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        rt().block_on(async {
            let out = self
                .sqs
                .get_queue_attributes()
                .queue_url(&self.queue_url)
                .attribute_names(A::ApproximateNumberOfMessages)
                .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
                .send()
                .await
                .expect("queue attributes");
            let n = |a: A| out.attributes().and_then(|m| m.get(&a)).and_then(|v| v.parse().ok()).unwrap_or(0);
            (n(A::ApproximateNumberOfMessages), n(A::ApproximateNumberOfMessagesNotVisible))
        })
    }
}
