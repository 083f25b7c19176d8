//! The `s3` source with `notifications:` against moto's server (real S3 and SQS APIs on
//! loopback, which sends S3 event notifications to SQS), through the real binary.

use crate::moto_support::{Notified, moto};
use crate::s3_support::{ACCESS_KEY, SECRET_KEY};
use crate::util::Project;

/// The AWS environment every daemon under test gets (see `s3.rs`).
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/highwater-test"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/highwater-test"),
];

/// A watcher of `bucket` on moto, prefix `in/`, notified through `queue_url`; `extra`
/// holds more source keys, each line indented by two spaces.
fn watcher(name: &str, bucket: &str, queue_url: &str, extra: &str) -> String {
    format!(
        "name: {name}\nsource:\n  type: s3\n  bucket: {bucket}\n  prefix: in/\n  endpoint_url: {}\n  force_path_style: true\n  notifications:\n    queue_url: {queue_url}\n{extra}sink: {{type: stdout}}\npoll_interval: 200ms\nbatch_size: 100\nretry: {{initial: 100ms, max: 1s}}\n",
        moto().endpoint
    )
}

#[test]
fn s3_notify_check_connect_reads_the_queue() {
    let n = Notified::new("hw-notify-check", false);
    let project = Project::default_config();
    project.watcher("good", &watcher("good", &n.bucket, &n.queue_url, ""));
    let check =
        project.command(&["check", "--connect"]).envs(AWS_ENV.iter().copied()).output().expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");

    let missing = n.queue_url.replace("hw-notify-check-events", "no-such-queue-hw");
    project.watcher("bad", &watcher("bad", &n.bucket, &missing, ""));
    let check =
        project.command(&["check", "--connect"]).envs(AWS_ENV.iter().copied()).output().expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("no-such-queue-hw") && stderr.contains("queue does not exist"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY));
}

#[test]
fn s3_notify_moto_sends_the_test_event_then_one_message_per_put() {
    let n = Notified::new("hw-notify-setup", true);
    n.put("in/a.csv", "a");
    let (visible, hidden) = n.messages();
    assert_eq!((visible, hidden), (2, 0), "s3:TestEvent and the PUT's record");
}
