//! The `s3` source with `notifications:` against moto's server (real S3 and SQS APIs on
//! loopback, which sends S3 event notifications to SQS), through the real binary.

use crate::moto_support::{Notified, moto};
use crate::s3_support::{ACCESS_KEY, SECRET_KEY};
use crate::util::{Daemon, Project, WAIT, eventually};

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

/// A watcher notified through `n`'s queue, announcing creates and deletes, with a short
/// long poll and visibility (so that a message comes back soon after a crash).
fn notified_watcher(name: &str, n: &Notified, extra: &str) -> String {
    watcher(
        name,
        &n.bucket,
        &n.queue_url,
        &format!("    wait_time: 1s\n    visibility_timeout: 2s\n  events: [created, deleted]\n{extra}"),
    )
}

/// The daemon with debug logs (the source's `Listed` and `Read` lines).
fn start(project: &Project) -> Daemon {
    let mut env: Vec<(&str, &str)> = AWS_ENV.to_vec();
    env.push(("RUST_LOG", "highwater=debug"));
    project.start_with(&env, &[])
}

fn key(event: &serde_json::Value) -> String {
    event["item"]["key"].as_str().unwrap_or("").to_string()
}

/// Waits until the queue holds no message, visible or not.
fn queue_drained(n: &Notified) {
    eventually("the queue is empty", WAIT, || (n.messages() == (0, 0)).then_some(()));
}

#[test]
fn s3_notify_objects_put_and_deleted_arrive_from_the_queue() {
    let n = Notified::new("hw-notify-flow", true);
    let project = Project::default_config();
    project.watcher("flow", &notified_watcher("flow", &n, "  full_relist_every: 1h\n"));
    let mut daemon = start(&project);
    // The first poll lists the (empty) prefix; the queue is read after it.
    daemon.wait_log_where("reading the queue", |l| l["received"].is_u64());
    n.put("in/a b+c.csv", "a");
    n.put("out/skipped.csv", "x");
    let created = daemon.events(1, WAIT);
    assert_eq!((created[0]["type"].as_str(), key(&created[0]).as_str()), (Some("created"), "in/a b+c.csv"));
    // The same id a listing gives: bucket, key, ETag, LastModified.
    assert!(created[0]["item"]["last_modified"].as_str().is_some_and(|t| !t.is_empty()));
    n.delete("in/a b+c.csv");
    let deleted = daemon.events(1, WAIT);
    assert_eq!((deleted[0]["type"].as_str(), key(&deleted[0]).as_str()), (Some("deleted"), "in/a b+c.csv"));
    queue_drained(&n);
    let listings = daemon.log_lines_where(|l| l["listed"].is_u64());
    assert_eq!(listings.len(), 1, "the listing ran once, on the first poll");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
    // What the queue announced is what a listing remembers: no repeat.
    let out = project.command(&["once"]).envs(AWS_ENV.iter().copied()).output().expect("once");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

#[test]
fn s3_notify_a_lost_message_is_caught_by_the_listing() {
    // No notification configuration: the queue never hears of the object.
    let n = Notified::new("hw-notify-lost", false);
    let project = Project::default_config();
    project.watcher("lost", &notified_watcher("lost", &n, "  full_relist_every: 2s\n"));
    let mut daemon = start(&project);
    daemon.wait_metrics("a first poll", |m| m.watcher("highwater_watcher_polls_total", "default/lost") >= 1);
    n.put("in/lost.csv", "x");
    let events = daemon.events(1, WAIT);
    assert_eq!(key(&events[0]), "in/lost.csv");
    let warned = daemon.wait_log_where("with unnotified", |l| l["unnotified"] == 1);
    assert_eq!(warned["level"], "WARN");
    daemon.wait_metrics("the unnotified count", |m| {
        m.watcher("highwater_watcher_items_unnotified_total", "default/lost") == 1
    });
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn s3_notify_sns_wrapped_and_eventbridge_messages_and_a_malformed_one() {
    let n = Notified::new("hw-notify-shapes", false);
    let project = Project::default_config();
    project.watcher("shapes", &notified_watcher("shapes", &n, ""));
    let mut daemon = start(&project);
    daemon.wait_log_where("reading the queue", |l| l["received"].is_u64());
    n.put("in/sns file.csv", "s");
    n.put("in/eb+file.csv", "e");
    // A message that is no notification first: it must not hold up the others.
    n.send("this is not JSON");
    let s3 = serde_json::json!({"Records": [{"eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": n.bucket}, "object": {"key": "in/sns+file.csv", "sequencer": "01"}}}]});
    n.send(
        &serde_json::json!({"Type": "Notification", "MessageId": "m1", "Message": s3.to_string()})
            .to_string(),
    );
    n.send(
        &serde_json::json!({"version": "0", "id": "e1", "detail-type": "Object Created", "source": "aws.s3",
            "detail": {"bucket": {"name": n.bucket}, "object": {"key": "in/eb+file.csv"}}})
        .to_string(),
    );
    let events = daemon.events(2, WAIT);
    let got: std::collections::BTreeSet<String> = events.iter().map(key).collect();
    assert_eq!(got, ["in/eb+file.csv", "in/sns file.csv"].iter().map(|k| k.to_string()).collect());
    let set_aside = daemon.wait_log_where("setting a message aside", |l| l["message_id"].is_string());
    assert!(set_aside["reason"].as_str().is_some_and(|r| r.starts_with("not JSON")), "{set_aside}");
    daemon.wait_metrics("the skipped message counted", |m| {
        m.watcher("highwater_watcher_items_skipped_total", "default/shapes") == 1
    });
    // The malformed message stays in the queue, out of the way; the others are gone.
    eventually("only the malformed message left", WAIT, || (n.messages() == (0, 1)).then_some(()));
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn s3_notify_a_crash_between_delivery_and_commit_redelivers_and_deletes_after() {
    let n = Notified::new("hw-notify-crash", true);
    let project = Project::default_config();
    let fifo = project.path().join("out.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: mkfifo(3) with a valid C string and mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // The file sink opens the FIFO for each batch; with no reader the open blocks: the
    // batch is pending and never acknowledged.
    let yaml = notified_watcher("crash", &n, "")
        .replace("sink: {type: stdout}", "sink: {type: file, path: out.fifo}");
    project.watcher("crash", &yaml);
    let mut daemon = start(&project);
    daemon.wait_log_where("reading the queue", |l| l["received"].is_u64());
    n.put("in/crash.csv", "c");
    daemon.wait_metrics("a pending batch", |m| {
        m.watcher("highwater_watcher_pending_events", "default/crash") == 1
    });
    let out = project.run(&["state", "get", "crash", "pending"]);
    let pending: serde_json::Value = serde_json::from_str(&out.stdout).expect("pending JSON");
    let id = pending["events"][0]["id"].as_str().expect("id").to_string();
    // The message stays in flight while its batch waits, past its visibility timeout:
    // extended, not deleted (the test event, with nothing to announce, is gone).
    daemon.wait_log_where("a visibility extension", |l| l["extended"].as_u64().is_some_and(|n| n >= 1));
    daemon.wait_log_where("a second extension", |l| {
        l["extended"].as_u64().is_some_and(|n| n >= 1) && l["round"].as_u64().is_some_and(|r| r >= 4)
    });
    assert_eq!(n.messages(), (0, 1), "the PUT's message is not deleted while its batch waits");
    daemon.kill9();

    let (tx, lines) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        while let Ok(file) = std::fs::File::open(&path) {
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    });
    let daemon = start(&project);
    let line = lines.recv_timeout(WAIT).expect("the pending batch redelivered");
    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
    assert_eq!(event["id"], id.as_str(), "the same id");
    // The message comes back once its visibility ends, announces nothing, and goes.
    queue_drained(&n);
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
    // Whatever the daemon wrote is in the FIFO before it exited: a line written after
    // it must be the next one read.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).expect("open FIFO");
    std::io::Write::write_all(&mut writer, b"end\n").expect("write FIFO");
    drop(writer);
    assert_eq!(lines.recv_timeout(WAIT).as_deref(), Ok("end"), "nothing repeated");
}
