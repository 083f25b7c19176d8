//! The `s3` source against a real S3-compatible server (SeaweedFS on loopback), through
//! the real binary: pagination, ties, late objects, odd keys, overwrites, deletes,
//! restarts between every step, server errors and a missing bucket.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::conformance::{self, SourceFixture};
use crate::s3_support::{ACCESS_KEY, Bucket, Proxy, SECRET_KEY, weed};
use crate::util::{Daemon, Output, Project, WAIT, eventually, field_str};

/// The AWS environment every daemon under test gets: static credentials (with a secret
/// that must never be printed), a region, and no instance metadata look-ups.
const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent/highwater-test"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/highwater-test"),
];

/// A watcher file for `bucket` at `endpoint`, prefix `in/`; `extra` holds more source
/// keys, each line indented by two spaces.
fn watcher(name: &str, bucket: &str, endpoint: &str, extra: &str, batch_size: usize) -> String {
    format!(
        "name: {name}\nsource:\n  type: s3\n  bucket: {bucket}\n  prefix: in/\n  endpoint_url: {endpoint}\n  force_path_style: true\n{extra}sink: {{type: stdout}}\npoll_interval: 200ms\nbatch_size: {batch_size}\nretry: {{initial: 100ms, max: 1s}}\n"
    )
}

fn project(watchers: &[(&str, String)]) -> Project {
    let project = Project::default_config();
    for (name, yaml) in watchers {
        project.watcher(name, yaml);
    }
    project
}

/// `highwater once [watchers…]` with the AWS environment; the events it printed.
fn once(project: &Project, watchers: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let mut args = vec!["once"];
    args.extend_from_slice(watchers);
    let out = project.command(&args).envs(AWS_ENV.iter().copied()).output().expect("run highwater once");
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!out.stdout.contains(SECRET_KEY) && !out.stderr.contains(SECRET_KEY), "secret printed");
    let events = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}\n{}", out.stderr)))
        .collect();
    (out, events)
}

/// `once` that must succeed.
fn once_ok(project: &Project, watchers: &[&str]) -> Vec<serde_json::Value> {
    let (out, events) = once(project, watchers);
    assert_eq!(out.code, Some(0), "once failed:\n{}", out.stderr);
    events
}

fn start(project: &Project) -> Daemon {
    project.start_with(AWS_ENV, &[])
}

fn key(event: &serde_json::Value) -> String {
    event["item"]["key"].as_str().unwrap_or_else(|| panic!("no key in {event}")).to_string()
}

fn of<'a>(events: &'a [serde_json::Value], watcher: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["watcher"] == watcher).collect()
}

/// Keys announced per watcher across runs, failing on any repeat.
#[derive(Default)]
struct Tally(BTreeMap<String, BTreeSet<String>>);

impl Tally {
    fn add(&mut self, events: &[serde_json::Value]) {
        for e in events {
            let watcher = e["watcher"].as_str().expect("watcher").to_string();
            let id = format!("{} {}", e["type"], key(e));
            assert!(self.0.entry(watcher.clone()).or_default().insert(id.clone()), "{watcher} repeated {id}");
        }
    }
}

#[test]
fn s3_pagination_and_ties_announce_every_object_once_across_restarts() {
    let bucket = Bucket::new("pages");
    let objects: Vec<(String, String)> =
        (0..1100).map(|i| (format!("in/{i:05}.csv"), format!("{i}\n"))).collect();
    bucket.put_many(&objects);
    let endpoint = &weed().endpoint;
    let p = project(&[
        ("any", watcher("any", "pages", endpoint, "", 400)),
        ("ordered", watcher("ordered", "pages", endpoint, "  key_order: lexicographic\n", 300)),
    ]);
    let mut tally = Tally::default();
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs <= 10, "still announcing after 10 runs");
        // A fresh process each time: a restart between every batch.
        let events = once_ok(&p, &[]);
        if events.is_empty() {
            break;
        }
        assert!(of(&events, "any").len() <= 400 && of(&events, "ordered").len() <= 300);
        for e in &events {
            assert_eq!(e["source"], "s3");
            assert_eq!(e["type"], "created");
            assert_eq!(e["item"]["kind"], "s3_object");
            assert_eq!(e["item"]["bucket"], "pages");
            assert!(!e["item"]["etag"].as_str().unwrap_or("").is_empty(), "{e}");
            if e["watcher"] == "any" {
                *times.entry(e["item"]["last_modified"].to_string()).or_default() += 1;
            }
        }
        tally.add(&events);
    }
    let expected: BTreeSet<String> = objects.iter().map(|(k, _)| format!("\"created\" {k}")).collect();
    assert_eq!(tally.0["any"], expected);
    assert_eq!(tally.0["ordered"], expected);
    // The server stamps whole seconds: many objects share one LastModified, and every
    // one of a tie was announced although batches cut through ties.
    assert!(times.values().any(|&n| n > 50), "expected ties, got {times:?}");
}

#[test]
fn s3_odd_keys_overwrites_and_deletes_across_restarts() {
    let bucket = Bucket::new("odd");
    let keys = [
        "in/a b.csv",
        "in/a+b.csv",
        "in/a%20b.csv",
        "in/Z.csv",
        "in/z.csv",
        "in/é.csv",
        "in/日本/データ.csv",
        "in/\u{1F600}.csv",
        "in/x&y<z>.csv",
    ];
    for k in keys {
        bucket.put(k, "one");
    }
    bucket.put("in/folder/", "");
    bucket.put("in/empty.csv", "");
    bucket.put("out/elsewhere.csv", "x");
    let endpoint = &weed().endpoint;
    let extra = "  events: [created, updated, deleted]\n  min_size: 1\n";
    let p = project(&[("odd", watcher("odd", "odd", endpoint, extra, 100))]);

    let created = once_ok(&p, &[]);
    let got: BTreeSet<String> = created.iter().map(key).collect();
    assert_eq!(
        got,
        keys.iter().map(|k| k.to_string()).collect(),
        "folder marker, empty and out-of-prefix skipped"
    );
    assert!(created.iter().all(|e| e["type"] == "created"));
    assert!(once_ok(&p, &[]).is_empty(), "nothing new after a restart");

    bucket.put("in/a+b.csv", "two, longer");
    let updated = once_ok(&p, &[]);
    assert_eq!(updated.len(), 1, "{updated:?}");
    assert_eq!(updated[0]["type"], "updated");
    assert_eq!(key(&updated[0]), "in/a+b.csv");
    assert_eq!(updated[0]["item"]["size"], 11);
    let first = created.iter().find(|e| key(e) == "in/a+b.csv").expect("created a+b");
    assert_ne!(first["id"], updated[0]["id"]);
    assert_ne!(first["item"]["etag"], updated[0]["item"]["etag"]);
    assert!(once_ok(&p, &[]).is_empty());

    bucket.delete("in/é.csv");
    let deleted = once_ok(&p, &[]);
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(deleted[0]["type"], "deleted");
    assert_eq!(key(&deleted[0]), "in/é.csv");
    assert!(once_ok(&p, &[]).is_empty());
}

/// `LastModified` as S3 writes it, `seconds` before now.
fn ago(seconds: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::seconds(seconds)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Runs `once` for `watcher` until the proxy has seen `n` more full listings (when one
/// comes is the watcher's `full_relist_every`), and returns the events it printed.
fn once_until_full_listings(p: &Project, proxy: &Proxy, watcher: &str, n: u64) -> Vec<serde_json::Value> {
    let target = proxy.state().full_listings + n;
    let mut events = Vec::new();
    eventually(&format!("{n} more full listings by {watcher}"), WAIT, || {
        events.extend(once_ok(p, &[watcher]));
        (proxy.state().full_listings >= target).then_some(())
    });
    events
}

#[test]
fn s3_objects_older_than_the_watermark_are_announced_once_and_idle_polls_are_cheap() {
    let bucket = Bucket::new("late");
    let proxy = Proxy::start();
    bucket.put("in/a.csv", "a");
    bucket.put("in/b.csv", "b");
    let p = project(&[
        ("any", watcher("any", "late", &proxy.endpoint, "  lookback: 1h\n", 100)),
        (
            "ordered",
            watcher(
                "ordered",
                "late",
                &proxy.endpoint,
                "  lookback: 1h\n  key_order: lexicographic\n  full_relist_every: 1s\n",
                100,
            ),
        ),
        (
            "ordered-idle",
            watcher("ordered-idle", "late", &proxy.endpoint, "  key_order: lexicographic\n", 100),
        ),
    ]);
    let mut tally = Tally::default();
    let first = once_ok(&p, &[]);
    assert_eq!(first.len(), 6);
    tally.add(&first);

    // Requests per idle poll: one listing page in ordered mode between full listings,
    // and in `any` mode one per 1,000 keys of the prefix.
    proxy.state().list_requests = 0;
    assert!(once_ok(&p, &["ordered-idle"]).is_empty());
    assert_eq!(proxy.state().list_requests, 1);
    proxy.state().list_requests = 0;
    assert!(once_ok(&p, &["any"]).is_empty());
    assert_eq!(proxy.state().list_requests, 1);

    // A multipart-style late arrival: a new key whose LastModified is ten minutes older
    // than anything announced, and below the ordered cursor; and one older than the
    // look-back window, which is out of reach by design.
    {
        let mut state = proxy.state();
        state.last_modified.insert("in/0-late.csv".into(), ago(600));
        state.last_modified.insert("in/0-too-late.csv".into(), ago(3 * 3600));
    }
    bucket.put("in/0-late.csv", "late");
    bucket.put("in/0-too-late.csv", "too late");
    // `any` lists in full at every poll: it finds the late key at once, and only once.
    let mut late = once_ok(&p, &["any"]);
    late.extend(once_ok(&p, &["any"]));
    // The ordered watcher finds it at its next full listing; the one after repeats nothing.
    late.extend(once_until_full_listings(&p, &proxy, "ordered", 2));
    tally.add(&late);
    let keys: Vec<(String, String)> =
        late.iter().map(|e| (e["watcher"].as_str().unwrap_or("").to_string(), key(e))).collect();
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>(),
        [
            ("any".to_string(), "in/0-late.csv".to_string()),
            ("ordered".to_string(), "in/0-late.csv".to_string())
        ]
        .iter()
        .collect::<BTreeSet<_>>(),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 2, "announced once each: {keys:?}");
}

#[test]
fn s3_server_errors_are_retried_without_loss_or_repeats() {
    let bucket = Bucket::new("flaky");
    let proxy = Proxy::start();
    for i in 0..3 {
        bucket.put(&format!("in/{i}.csv"), "x");
    }
    {
        let mut state = proxy.state();
        state.fail_next = 8;
        state.fail_status = 503;
    }
    let p = project(&[("flaky", watcher("flaky", "flaky", &proxy.endpoint, "", 100))]);
    let mut daemon = start(&p);
    let mut tally = Tally::default();
    tally.add(&daemon.events(3, Duration::from_secs(120)));
    let failed = |code: &'static str| {
        move |l: &serde_json::Value| {
            field_str(l, "watcher") == Some("default/flaky")
                && field_str(l, "error").is_some_and(|e| e.contains(code))
        }
    };
    let line = daemon.wait_log_where("of a poll failed with SlowDown", failed("SlowDown"));
    let error = field_str(&line, "error").expect("error");
    assert!(error.contains("s3://flaky/in/") && error.contains("503"), "{line}");
    assert!(field_str(&line, "retry_in").is_some(), "the retry is announced: {line}");
    {
        let mut state = proxy.state();
        state.fail_next = 5;
        state.fail_status = 500;
    }
    bucket.put("in/3.csv", "x");
    bucket.put("in/4.csv", "x");
    tally.add(&daemon.events(2, Duration::from_secs(120)));
    daemon.wait_log_where("of a poll failed with InternalError (500s are retried)", failed("InternalError"));
    daemon.assert_idle(&["default/flaky"], 2);
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(logs.iter().all(|l| !l.contains(SECRET_KEY)));
    assert_eq!(tally.0["flaky"].len(), 5);
}

#[test]
fn s3_missing_bucket_needs_attention_and_other_watchers_go_on() {
    let bucket = Bucket::new("present");
    bucket.put("in/here.csv", "x");
    let endpoint = &weed().endpoint;
    let p = project(&[
        ("missing", watcher("missing", "no-such-bucket-hw", endpoint, "", 100)),
        ("present", watcher("present", "present", endpoint, "", 100)),
    ]);
    let check = p.command(&["check", "--connect"]).envs(AWS_ENV.iter().copied()).output().expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("no-such-bucket-hw") && stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.contains(SECRET_KEY));

    // No credentials anywhere in the chain: a clear error, the other watcher's batch
    // stays pending for the next run.
    let out = p
        .command(&["once", "present"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(
            AWS_ENV
                .iter()
                .copied()
                .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET")),
        )
        .output()
        .expect("once without credentials");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("no usable AWS credentials") && stderr.contains("s3://present/in/"), "{stderr}");

    let mut daemon = start(&p);
    let events = daemon.events(1, Duration::from_secs(60));
    assert_eq!(key(&events[0]), "in/here.csv");
    daemon.wait_state("default/missing", "error");
    let line = daemon.wait_log_where("of default/missing's failed poll", |l| {
        field_str(l, "watcher") == Some("default/missing") && field_str(l, "error").is_some()
    });
    let error = field_str(&line, "error").expect("error");
    assert!(error.contains("no-such-bucket-hw") && error.contains("does not exist"), "{line}");
    bucket.put("in/later.csv", "x");
    assert_eq!(key(&daemon.events(1, Duration::from_secs(60))[0]), "in/later.csv");
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(logs.iter().all(|l| !l.contains(SECRET_KEY)));
}

#[test]
fn s3_batches_and_ordered_full_listings_see_overwrites_and_deletes() {
    let bucket = Bucket::new("batches");
    let proxy = Proxy::start();
    for i in 0..3 {
        bucket.put(&format!("in/{i}.csv"), "one");
    }
    let endpoint = &proxy.endpoint;
    let p = project(&[
        (
            "batch",
            watcher("batch", "batches", endpoint, "  emit: batch\n  events: [created, deleted]\n", 100),
        ),
        (
            "ordered",
            watcher(
                "ordered",
                "batches",
                endpoint,
                "  key_order: lexicographic\n  full_relist_every: 1s\n  events: [created, updated, deleted]\n",
                100,
            ),
        ),
    ]);
    let events = once_ok(&p, &[]);
    let batch = of(&events, "batch");
    assert_eq!(batch.len(), 1, "{events:?}");
    assert_eq!(batch[0]["type"], "created");
    assert_eq!(batch[0]["item"]["kind"], "s3_objects");
    let keys: Vec<&str> = batch[0]["item"]["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .filter_map(|o| o["key"].as_str())
        .collect();
    assert_eq!(keys, ["in/0.csv", "in/1.csv", "in/2.csv"]);
    assert_eq!(of(&events, "ordered").len(), 3);

    bucket.put("in/1.csv", "two");
    bucket.delete("in/2.csv");
    let events = once_ok(&p, &["batch"]);
    let batch = of(&events, "batch");
    assert_eq!(batch.len(), 1, "{events:?}");
    assert_eq!(batch[0]["type"], "deleted");
    assert_eq!(batch[0]["item"]["objects"][0]["key"], "in/2.csv");
    // Overwrites and deletes behind the ordered cursor wait for its next full listing.
    let events = once_until_full_listings(&p, &proxy, "ordered", 1);
    let mut ordered: Vec<(String, String)> = of(&events, "ordered")
        .iter()
        .map(|e| (e["type"].as_str().unwrap_or("").to_string(), key(e)))
        .collect();
    ordered.sort();
    assert_eq!(ordered, [("deleted".into(), "in/2.csv".into()), ("updated".into(), "in/1.csv".into())]);
    assert!(
        once_until_full_listings(&p, &proxy, "ordered", 1).is_empty(),
        "the next full listing repeats nothing"
    );
    assert!(once_ok(&p, &["batch"]).is_empty());
}

/// A bucket of its own behind a proxy that reports one `LastModified` for the objects
/// of one [`SourceFixture::add`]: a tie whatever second the server stamps them with.
struct S3Source {
    bucket: Bucket,
    proxy: Proxy,
    /// The source's `key_order`.
    key_order: &'static str,
}

impl S3Source {
    fn new(bucket: &str, key_order: &'static str) -> Self {
        S3Source { bucket: Bucket::new(bucket), proxy: Proxy::start(), key_order }
    }
}

impl SourceFixture for S3Source {
    fn kind(&self) -> &'static str {
        "s3"
    }

    fn source_keys(&self) -> String {
        format!(
            "  bucket: {}\n  prefix: in/\n  endpoint_url: {}\n  force_path_style: true\n  key_order: {}\n",
            self.bucket.name, self.proxy.endpoint, self.key_order
        )
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        AWS_ENV.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    fn add(&self, names: &[&str]) {
        let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S.000Z").to_string();
        // Before the objects exist, so that no listing shows another time for them.
        let mut state = self.proxy.state();
        for name in names {
            state.last_modified.insert(format!("in/{name}"), at.clone());
        }
        drop(state);
        let objects: Vec<(String, String)> =
            names.iter().map(|n| (format!("in/{n}"), n.to_string())).collect();
        self.bucket.put_many(&objects);
    }

    fn name_of(&self, event: &serde_json::Value) -> String {
        key(event)
            .strip_prefix("in/")
            .unwrap_or_else(|| panic!("key outside the prefix: {event}"))
            .to_string()
    }

    fn check_item(&self, event: &serde_json::Value) {
        let item = &event["item"];
        assert_eq!(item["kind"], "s3_object", "{event}");
        assert_eq!(item["bucket"], self.bucket.name.as_str(), "{event}");
        assert_eq!(item["size"], self.name_of(event).len(), "{event}");
        assert!(item["etag"].as_str().is_some_and(|e| !e.is_empty()), "{event}");
        let at = &self.proxy.state().last_modified[&key(event)];
        let reported =
            chrono::DateTime::parse_from_rfc3339(item["last_modified"].as_str().expect("last_modified"))
                .expect("last_modified is a time");
        assert_eq!(reported, chrono::DateTime::parse_from_rfc3339(at).expect("time"), "{event}");
    }
}

#[test]
fn s3_conformance_any_key_order() {
    conformance::run(&S3Source::new("conformance-any", "any"));
}

#[test]
fn s3_conformance_lexicographic_key_order() {
    conformance::run(&S3Source::new("conformance-lexicographic", "lexicographic"));
}
