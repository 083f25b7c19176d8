//! The `s3` source against a real S3-compatible server (SeaweedFS on loopback), through
//! the real binary: pagination, ties, late objects, odd keys, overwrites, deletes,
//! restarts between every step, server errors and a missing bucket; keys XML cannot
//! carry, a server that lists out of byte order, clocks ahead, a changed scope, objects
//! re-created, `once` from cron, a file sink after a crash, and the credentials,
//! proxies, private CAs and regions of the networks people use.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::conformance::{self, SourceFixture};
use crate::s3_support::{
    ACCESS_KEY, Bucket, ConnectProxy, Proxy, SECRET_KEY, Silent, SsoPortal, TlsFront, rt, weed,
};
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
    watcher_at(name, bucket, endpoint, &format!("  prefix: in/\n{extra}"), batch_size, "{type: stdout}")
}

/// A watcher file whose source keys past bucket and endpoint are `keys` (indented by
/// two spaces), with `sink`.
fn watcher_at(name: &str, bucket: &str, endpoint: &str, keys: &str, batch_size: usize, sink: &str) -> String {
    format!(
        "name: {name}\nsource:\n  type: s3\n  bucket: {bucket}\n  endpoint_url: {endpoint}\n  force_path_style: true\n{keys}sink: {sink}\npoll_interval: 200ms\nbatch_size: {batch_size}\nretry: {{initial: 100ms, max: 1s}}\n"
    )
}

/// The structured log lines (JSON) of a run's standard error.
fn logs(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `highwater state list --json`, by watcher name.
fn state_list(project: &Project) -> BTreeMap<String, serde_json::Value> {
    let out = project.run(&["state", "list", "--json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("state list JSON");
    rows.into_iter().map(|r| (r["name"].as_str().unwrap_or("").to_string(), r)).collect()
}

/// Waits until the wall clock is past the second of `event`'s `LastModified`: servers
/// stamp it in whole seconds (on this machine's clock), and a new write must be told
/// from the last one.
fn past_last_modified(event: &serde_json::Value) {
    let stamped: chrono::DateTime<chrono::Utc> =
        event["item"]["last_modified"].as_str().and_then(|t| t.parse().ok()).expect("last_modified");
    while chrono::Utc::now().timestamp() <= stamped.timestamp() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes the next poll of an ordered watcher a full listing, as if its
/// `full_relist_every` had passed, by editing its watermark as an operator could.
fn full_listing_due(project: &Project, watcher: &str) {
    let out = project.run(&["state", "get", watcher, "watermark"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut mark: serde_json::Value = serde_json::from_str(&out.stdout).expect("watermark JSON");
    // The head alone, or `{"head", "members"}` when keys are remembered.
    match mark.get_mut("head") {
        Some(head) => head["full_at_ms"] = 0.into(),
        None => mark["full_at_ms"] = 0.into(),
    }
    let out = project.run(&["state", "set", watcher, "watermark", &mark.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
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
        // One listing hands over at most `max_per_poll`: each `once` below takes one
        // batch, so a restart falls between every two.
        ("any", watcher("any", "pages", endpoint, "  max_per_poll: 400\n", 400)),
        (
            "ordered",
            watcher("ordered", "pages", endpoint, "  key_order: lexicographic\n  max_per_poll: 300\n", 300),
        ),
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
    // The daemon reads listing pages itself: each event says of its object what the
    // SDK's own reader makes of the same listing.
    let listed =
        rt().block_on(bucket.client.list_objects_v2().bucket("odd").prefix("in/").send()).expect("list");
    let sdk: BTreeMap<&str, &aws_sdk_s3::types::Object> =
        listed.contents().iter().map(|o| (o.key().expect("key"), o)).collect();
    for event in &created {
        let object = sdk[key(event).as_str()];
        let item = &event["item"];
        assert_eq!(item["etag"], object.e_tag().expect("etag").trim_matches('"'), "{event}");
        assert_eq!(item["size"], object.size().expect("size"), "{event}");
        assert_eq!(item["storage_class"], object.storage_class().expect("class").as_str(), "{event}");
        let time = chrono::DateTime::parse_from_rfc3339(item["last_modified"].as_str().expect("time"))
            .expect("time");
        assert_eq!(Some(time.timestamp_millis()), object.last_modified().and_then(|t| t.to_millis().ok()));
    }
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

/// `highwater once` with `env` instead of `AWS_ENV` (and the AWS variables a developer's
/// shell may hold removed), events printed and the log.
fn once_with(project: &Project, watchers: &[&str], env: &[(&str, &str)]) -> (Output, Vec<serde_json::Value>) {
    let mut args = vec!["once"];
    args.extend_from_slice(watchers);
    let mut cmd = project.command(&args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_CA_BUNDLE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().expect("run highwater once");
    let out = Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let events = out.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (out, events)
}

/// Keys with control characters come back from a listing without `encoding-type=url` as
/// U+FFFD: events named keys that do not exist, two such keys flip-flopped as `updated`,
/// and deletes stopped the watcher.
#[test]
fn s3_keys_with_control_characters_are_named_exactly() {
    let bucket = Bucket::new("ctl");
    let keys =
        ["in/ctl\u{1}.csv", "in/ctl\u{2}.csv", "in/ctl\u{1f}x.csv", "in/tab\tx.csv", "in/a+b c%2B.csv"];
    for (i, k) in keys.iter().enumerate() {
        bucket.put(k, &"x".repeat(i + 1));
    }
    let endpoint = &weed().endpoint;
    let p =
        project(&[("ctl", watcher("ctl", "ctl", endpoint, "  events: [created, updated, deleted]\n", 100))]);
    let created = once_ok(&p, &[]);
    assert_eq!(
        created.iter().map(key).collect::<BTreeSet<_>>(),
        keys.iter().map(|k| k.to_string()).collect()
    );
    assert!(created.iter().all(|e| e["type"] == "created"), "{created:?}");
    for _ in 0..2 {
        assert!(once_ok(&p, &[]).is_empty(), "no flip-flop between keys that XML would merge");
    }
    bucket.delete("in/ctl\u{2}.csv");
    let deleted = once_ok(&p, &[]);
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert_eq!(
        (deleted[0]["type"].as_str(), key(&deleted[0])),
        (Some("deleted"), "in/ctl\u{2}.csv".to_string())
    );
    assert!(once_ok(&p, &[]).is_empty());
}

/// SeaweedFS lists a directory's entries in walk order: `2026-11-25/part-0.parquet`
/// before `2026-11-25.manifest`. With deletes on, every poll used to fail.
#[test]
fn s3_a_server_listing_out_of_byte_order_stops_no_watcher() {
    let bucket = Bucket::new("walk");
    for k in [
        "in/2026-11-24/part-0.parquet",
        "in/2026-11-24.manifest",
        "in/2026-11-25/part-0.parquet",
        "in/2026-11-25.manifest",
    ] {
        bucket.put(k, "x");
    }
    let endpoint = &weed().endpoint;
    let p = project(&[
        ("any", watcher("any", "walk", endpoint, "  events: [created, deleted]\n", 100)),
        (
            "ordered",
            watcher(
                "ordered",
                "walk",
                endpoint,
                "  key_order: lexicographic\n  events: [created, deleted]\n",
                100,
            ),
        ),
        ("ordered-2", watcher("ordered-2", "walk", endpoint, "  key_order: lexicographic\n", 2)),
    ]);
    let mut tally = Tally::default();
    let mut first = Vec::new();
    for _ in 0..3 {
        let (out, events) = once(&p, &[]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        let warned: Vec<String> = logs(&out.stderr)
            .iter()
            .filter(|l| l["listing_order"] == "unordered")
            .map(|l| l["watcher"].to_string() + &l["key"].to_string())
            .collect();
        if first.is_empty() {
            assert!(warned.len() >= 3, "said once per watcher: {}", out.stderr);
        } else {
            assert!(warned.is_empty(), "said once, not at every run: {warned:?}");
        }
        tally.add(&events);
        first.extend(events);
    }
    for w in ["any", "ordered", "ordered-2"] {
        assert_eq!(tally.0[w].len(), 4, "{w}: {:?}", tally.0[w]);
    }
    let states = state_list(&p);
    for w in ["any", "ordered", "ordered-2"] {
        assert_eq!(states[w]["watermark"]["listing"], "unordered", "{w}: {}", states[w]);
    }
    let check = p.command(&["check", "--connect"]).envs(AWS_ENV.iter().copied()).output().expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(logs(&stderr).iter().any(|l| l["listing_order"] == "unordered"), "{stderr}");

    // A delete, a key past the ordered cursor and one below it: all seen, none stops.
    bucket.delete("in/2026-11-24.manifest");
    bucket.put("in/2026-11-24/part-1.parquet", "late");
    bucket.put("in/2026-11-26/part-0.parquet", "new");
    let events = once_ok(&p, &[]);
    let mut got: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (e["watcher"].as_str().unwrap_or("").into(), e["type"].as_str().unwrap_or("").into(), key(e))
        })
        .collect();
    got.sort();
    let mut expected = Vec::new();
    for w in ["any", "ordered"] {
        expected.push((w.to_string(), "created".to_string(), "in/2026-11-24/part-1.parquet".to_string()));
        expected.push((w.to_string(), "created".to_string(), "in/2026-11-26/part-0.parquet".to_string()));
        expected.push((w.to_string(), "deleted".to_string(), "in/2026-11-24.manifest".to_string()));
    }
    expected.push(("ordered-2".into(), "created".into(), "in/2026-11-24/part-1.parquet".into()));
    expected.push(("ordered-2".into(), "created".into(), "in/2026-11-26/part-0.parquet".into()));
    expected.sort();
    assert_eq!(got, expected);
    assert!(once_ok(&p, &[]).is_empty());
}

/// One object stamped two days ahead (clock skew, a restored object) used to hide every
/// object after it: the watermark jumped into the future.
#[test]
fn s3_an_object_from_the_future_hides_nothing() {
    let bucket = Bucket::new("future");
    let proxy = Proxy::start();
    let ahead = (chrono::Utc::now() + chrono::Duration::days(2)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    proxy.state().last_modified.insert("in/m-future.csv".into(), ahead);
    bucket.put("in/m-future.csv", "f");
    let p = project(&[
        ("any", watcher("any", "future", &proxy.endpoint, "  lookback: 1h\n", 100)),
        (
            "ordered",
            watcher(
                "ordered",
                "future",
                &proxy.endpoint,
                "  lookback: 1h\n  key_order: lexicographic\n",
                100,
            ),
        ),
    ]);
    let mut tally = Tally::default();
    let (out, events) = once(&p, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(events.len(), 2, "announced once by each: {events:?}");
    assert!(
        logs(&out.stderr).iter().any(|l| l["key"] == "in/m-future.csv"),
        "a warning names it: {}",
        out.stderr
    );
    tally.add(&events);
    for (name, state) in state_list(&p) {
        let moved: chrono::DateTime<chrono::Utc> =
            state["watermark"]["last_modified"].as_str().and_then(|t| t.parse().ok()).expect("last_modified");
        assert!(moved < chrono::Utc::now() + chrono::Duration::minutes(1), "{name}: {state}");
    }
    // Objects of the present, one of them below the ordered cursor.
    bucket.put("in/a-present.csv", "a");
    bucket.put("in/z-present.csv", "z");
    // The ordered watcher finds the one below its cursor at its next full listing.
    full_listing_due(&p, "ordered");
    let events = once_ok(&p, &[]);
    tally.add(&events);
    for w in ["any", "ordered"] {
        let keys: BTreeSet<String> = of(&events, w).iter().map(|e| key(e)).collect();
        assert_eq!(keys, ["in/a-present.csv".to_string(), "in/z-present.csv".to_string()].into(), "{w}");
    }
    full_listing_due(&p, "ordered");
    assert!(once_ok(&p, &[]).is_empty());
}

/// Changing `prefix` or `glob` with deletes on used to announce `deleted` for objects
/// that still exist, and `created` again when changed back.
#[test]
fn s3_a_changed_prefix_or_glob_forgets_keys_outside_it_silently() {
    let bucket = Bucket::new("scope");
    bucket.put("in/a/1.csv", "a");
    bucket.put("in/b/1.csv", "b");
    let endpoint = &weed().endpoint;
    let any = |keys: &str| watcher_at("any", "scope", endpoint, keys, 100, "{type: stdout}");
    let ordered = |prefix: &str| {
        watcher_at(
            "ordered",
            "scope",
            endpoint,
            &format!("  prefix: {prefix}\n  key_order: lexicographic\n  events: [created, deleted]\n"),
            100,
            "{type: stdout}",
        )
    };
    let deletes = "  events: [created, updated, deleted]\n";
    let p = project(&[("any", any(&format!("  prefix: in/\n{deletes}"))), ("ordered", ordered("in/b/"))]);
    let mut all = once_ok(&p, &[]);
    assert_eq!(of(&all, "any").len(), 2);
    assert_eq!(of(&all, "ordered").iter().map(|e| key(e)).collect::<Vec<_>>(), ["in/b/1.csv"]);
    let first_b =
        of(&all, "any").iter().find(|e| key(e) == "in/b/1.csv").map(|e| e["id"].clone()).expect("b");

    // Narrowed: the prefix, then the glob. Nothing is announced; the change is logged.
    p.watcher("any", &any(&format!("  prefix: in/a/\n{deletes}")));
    p.watcher("ordered", &ordered("in/a/"));
    let (out, events) = once(&p, &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(of(&events, "any").is_empty(), "{events:?}");
    assert!(
        logs(&out.stderr).iter().any(|l| l["forgotten"] == 1 && l["from_prefix"] == "in/"),
        "{}",
        out.stderr
    );
    // The ordered cursor was past every key of the new prefix: the window judges them,
    // and the cursor moves into the prefix, so new keys there are found again.
    assert_eq!(of(&events, "ordered").iter().map(|e| key(e)).collect::<Vec<_>>(), ["in/a/1.csv"]);
    all.extend(events);
    bucket.put("in/a/2.csv", "a2");
    let events = once_ok(&p, &[]);
    assert_eq!(events.iter().map(|e| (e["watcher"].to_string(), key(e))).collect::<BTreeSet<_>>().len(), 2);
    all.extend(events);
    p.watcher("any", &any(&format!("  prefix: in/\n  glob: \"a/**\"\n{deletes}")));
    all.extend(once_ok(&p, &[]));
    bucket.put("in/b/2.csv", "b2");
    assert!(of(&once_ok(&p, &[]), "any").is_empty(), "outside the glob");

    // Widened again: what comes back into scope is judged by the look-back window. The
    // object that never changed is announced as the repeat it is, with its first id.
    p.watcher("any", &any(&format!("  prefix: in/\n{deletes}")));
    let events = once_ok(&p, &["any"]);
    let back: BTreeMap<String, serde_json::Value> =
        events.iter().map(|e| (key(e), e["id"].clone())).collect();
    assert_eq!(back.keys().cloned().collect::<Vec<_>>(), ["in/b/1.csv", "in/b/2.csv"]);
    assert_eq!(back["in/b/1.csv"], first_b);
    all.extend(events);
    assert!(all.iter().all(|e| e["type"] == "created"), "no delete for a key that exists: {all:?}");
}

/// A key deleted and written again with the same content used to get its first id back,
/// so a consumer dropping repeats by id dropped the re-creation.
#[test]
fn s3_an_object_written_again_is_a_new_object() {
    let bucket = Bucket::new("again");
    let endpoint = &weed().endpoint;
    let p = project(&[(
        "again",
        watcher("again", "again", endpoint, "  events: [created, updated, deleted]\n", 100),
    )]);
    bucket.put("in/a.csv", "same");
    let created = once_ok(&p, &[]);
    assert_eq!(created.len(), 1);
    bucket.delete("in/a.csv");
    let deleted = once_ok(&p, &[]);
    assert_eq!(deleted[0]["type"], "deleted");
    past_last_modified(&created[0]);
    bucket.put("in/a.csv", "same");
    let again = once_ok(&p, &[]);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0]["type"], "created");
    assert_eq!(again[0]["item"]["etag"], created[0]["item"]["etag"], "the same content");
    assert_ne!(again[0]["id"], created[0]["id"], "a new object, a new id");
    assert!(once_ok(&p, &[]).is_empty(), "a repeat of the listing is not a new object");
    // The same content written over it: a new write, announced as S3 itself would.
    past_last_modified(&again[0]);
    bucket.put("in/a.csv", "same");
    let overwritten = once_ok(&p, &[]);
    assert_eq!(overwritten.len(), 1, "{overwritten:?}");
    assert_eq!(overwritten[0]["type"], "updated");
    let ids: BTreeSet<String> =
        [&created[0], &deleted[0], &again[0], &overwritten[0]].iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(ids.len(), 4);
    bucket.delete("in/a.csv");
    let deleted_again = once_ok(&p, &[]);
    assert_ne!(deleted_again[0]["id"], deleted[0]["id"], "the delete of another generation");
}

/// `highwater once` from cron in `lexicographic` order used to list the whole prefix at
/// every run after an idle `full_relist_every`: when the last full listing ran was kept
/// in memory only.
#[test]
fn s3_once_from_cron_remembers_its_last_full_listing() {
    let bucket = Bucket::new("cron");
    let proxy = Proxy::start();
    bucket.put("in/2026-01-01.csv", "x");
    let p = project(&[
        ("ordered", watcher("ordered", "cron", &proxy.endpoint, "  key_order: lexicographic\n", 100)),
        ("any", watcher("any", "cron", &proxy.endpoint, "", 100)),
    ]);
    assert_eq!(once_ok(&p, &[]).len(), 2);
    let version = |w: &str| state_list(&p)[w]["watermark_version"].as_i64().expect("version");
    let any_v = version("any");
    // Idle and not due: a listing after the cursor, nothing stored.
    let ordered_v = version("ordered");
    proxy.state().full_listings = 0;
    assert!(once_ok(&p, &["ordered"]).is_empty());
    assert_eq!((proxy.state().full_listings, version("ordered")), (0, ordered_v));
    // Due (an hour passed): one full listing, stored although it found nothing…
    full_listing_due(&p, "ordered");
    let ordered_v = version("ordered");
    assert!(once_ok(&p, &["ordered"]).is_empty());
    assert_eq!((proxy.state().full_listings, version("ordered")), (1, ordered_v + 1));
    // …so the next run does not list in full again.
    for _ in 0..2 {
        assert!(once_ok(&p, &["ordered"]).is_empty());
        assert_eq!((proxy.state().full_listings, version("ordered")), (1, ordered_v + 1));
    }
    // `any` order lists in full every time and stores nothing when idle.
    assert!(once_ok(&p, &["any"]).is_empty());
    assert_eq!(version("any"), any_v);
}

/// After kill -9 the file sink's file can end in a torn line; the redelivered batch was
/// glued onto it.
#[test]
fn s3_file_sink_ends_a_torn_line_before_appending() {
    let bucket = Bucket::new("torn");
    bucket.put("in/1.csv", "1");
    let endpoint = &weed().endpoint;
    let p = project(&[(
        "torn",
        watcher_at("torn", "torn", endpoint, "  prefix: in/\n", 100, "{type: file, path: out/events.jsonl}"),
    )]);
    assert!(once_ok(&p, &[]).is_empty(), "events go to the file");
    let path = p.path().join("out/events.jsonl");
    let text = std::fs::read_to_string(&path).expect("events file");
    // A crash in the middle of the next write leaves part of a line.
    let torn = &text[..text.len() / 2];
    std::fs::write(&path, format!("{text}{torn}")).expect("tear");
    bucket.put("in/2.csv", "2");
    assert!(once_ok(&p, &[]).is_empty());
    let text = std::fs::read_to_string(&path).expect("events file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[1], torn, "the torn line stays on its own");
    let last: serde_json::Value = serde_json::from_str(lines[2]).expect("the new event is a whole line");
    assert_eq!(key(&last), "in/2.csv");
    assert!(text.ends_with('\n'));
}

/// Without a region anywhere, `check --connect` used to wait on the instance metadata
/// address, which answers only on EC2.
#[test]
fn s3_without_a_region_one_is_assumed_and_instance_metadata_is_not_asked() {
    let bucket = Bucket::new("noregion");
    bucket.put("in/a.csv", "a");
    let imds = Silent::start();
    let endpoint = &weed().endpoint;
    let p = project(&[("noregion", watcher("noregion", "noregion", endpoint, "", 100))]);
    let env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_CONFIG_FILE", "/nonexistent/highwater-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/highwater-test"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint.as_str()),
    ];
    let check = p
        .command(&["check", "--connect"])
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .envs(env.iter().copied())
        .output()
        .expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(
        logs(&stderr).iter().any(|l| l["region"] == "us-east-1" && l["region_from"] == "assumed"),
        "says which region it assumed: {stderr}"
    );
    let (out, events) = once_with(&p, &[], &env);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(events.len(), 1);
    assert_eq!(imds.connections.load(std::sync::atomic::Ordering::SeqCst), 0, "instance metadata was asked");
}

/// Profiles that use `credential_process` or IAM Identity Center failed: the AWS chain
/// was built without them.
#[test]
fn s3_credentials_from_credential_process_and_identity_center_profiles() {
    let bucket = Bucket::new("profiles");
    bucket.put("in/a.csv", "a");
    let proxy = Proxy::start();
    let portal = SsoPortal::start("cached-sso-token", "HWSSOROLEKEY");
    let p = project(&[
        ("proc", watcher("proc", "profiles", &proxy.endpoint, "", 100)),
        ("sso", watcher("sso", "profiles", &proxy.endpoint, "", 100)),
    ]);
    let script = p.write(
        "bin/creds.sh",
        "#!/bin/sh\necho '{\"Version\": 1, \"AccessKeyId\": \"HWPROCESSKEY\", \"SecretAccessKey\": \"process-secret\"}'\n",
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let start_url = "https://highwater-test.awsapps.com/start";
    let config = p.write(
        "aws/config",
        &format!(
            "[profile proc]\ncredential_process = {}\nregion = us-east-1\n\n\
             [profile sso]\nsso_start_url = {start_url}\nsso_region = us-east-1\nsso_account_id = 123456789012\nsso_role_name = Reader\nregion = us-east-1\n",
            script.display()
        ),
    );
    // The token `aws sso login` leaves in the cache, under the SHA-1 of the start URL.
    let digest = <sha1::Sha1 as sha1::Digest>::digest(start_url.as_bytes());
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    p.write(
        &format!(".aws/sso/cache/{name}.json"),
        &format!(
            "{{\"accessToken\": \"cached-sso-token\", \"expiresAt\": \"2099-01-01T00:00:00Z\", \"region\": \"us-east-1\", \"startUrl\": \"{start_url}\"}}"
        ),
    );
    let home = p.path().display().to_string();
    let config = config.display().to_string();
    let base = [
        ("HOME", home.as_str()),
        ("AWS_CONFIG_FILE", config.as_str()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/highwater-test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_SSO", portal.endpoint.as_str()),
    ];
    for (watcher, profile, key_id) in [("proc", "proc", "HWPROCESSKEY"), ("sso", "sso", "HWSSOROLEKEY")] {
        let mut env = base.to_vec();
        env.push(("AWS_PROFILE", profile));
        let (out, events) = once_with(&p, &[watcher], &env);
        assert_eq!(out.code, Some(0), "{watcher}: {}", out.stderr);
        assert_eq!(events.len(), 1, "{watcher}");
        assert!(proxy.state().access_keys.contains(key_id), "{watcher}: {:?}", proxy.state().access_keys);
        assert!(!out.stderr.contains("process-secret") && !out.stderr.contains("sso-secret"));
    }
    assert_eq!(portal.answered.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// An `endpoint_url` server with a private CA (`AWS_CA_BUNDLE`), reached through
/// `HTTPS_PROXY` unless `NO_PROXY` says otherwise.
#[test]
fn s3_a_private_ca_and_an_https_proxy() {
    let bucket = Bucket::new("tls");
    bucket.put("in/a.csv", "a");
    bucket.put("in/b.csv", "b");
    let front = TlsFront::start();
    let proxy = ConnectProxy::start();
    let p = project(&[
        // One object per run: each run below must reach the server on its own.
        ("tls", watcher("tls", "tls", &front.endpoint, "  max_per_poll: 1\n", 1)),
        ("direct", watcher("direct", "tls", &front.endpoint, "  max_per_poll: 1\n", 1)),
    ]);
    let ca = front.ca_file.display().to_string();
    let creds = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/highwater-test"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/highwater-test"),
    ];
    fn with<'a>(creds: &[(&'a str, &'a str)], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        creds.iter().chain(extra).copied().collect()
    }
    let tunnels = || proxy.tunnels.load(std::sync::atomic::Ordering::SeqCst);

    // The private CA is not trusted by default: a TLS error, retried, nothing lost.
    let (out, _) = once_with(&p, &["tls"], &with(&creds, &[]));
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(out.stderr.to_lowercase().contains("certificate"), "{}", out.stderr);
    // A bundle that is not one is named, before any connection.
    let bogus = p.write("bogus.pem", "not a certificate\n").display().to_string();
    let (out, _) = once_with(&p, &["tls"], &with(&creds, &[("AWS_CA_BUNDLE", bogus.as_str())]));
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("AWS_CA_BUNDLE") && out.stderr.contains("bogus.pem"), "{}", out.stderr);

    let (out, events) = once_with(
        &p,
        &["tls"],
        &with(&creds, &[("AWS_CA_BUNDLE", ca.as_str()), ("HTTPS_PROXY", proxy.url.as_str())]),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(events.len(), 1);
    assert!(tunnels() >= 1, "went through the proxy");
    let before = tunnels();
    let (out, events) = once_with(
        &p,
        &["direct"],
        &with(
            &creds,
            &[("AWS_CA_BUNDLE", ca.as_str()), ("HTTPS_PROXY", proxy.url.as_str()), ("NO_PROXY", "127.0.0.1")],
        ),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(events.len(), 1);
    assert_eq!(tunnels(), before, "NO_PROXY bypasses the proxy");
}

/// A backlog drains from one listing at any `batch_size`: each batch is committed on its
/// own, and the listing is not repeated per batch.
#[test]
fn s3_one_listing_hands_a_backlog_over_in_many_batches() {
    let bucket = Bucket::new("backlog");
    let objects: Vec<(String, String)> =
        (0..2500).map(|i| (format!("in/{i:05}.csv"), "x".to_string())).collect();
    bucket.put_many(&objects);
    let proxy = Proxy::start();
    let p = project(&[("any", watcher("any", "backlog", &proxy.endpoint, "", 100))]);
    let events = once_ok(&p, &["any"]);
    assert_eq!(events.len(), 2500);
    let keys: BTreeSet<String> = events.iter().map(key).collect();
    assert_eq!(keys.len(), 2500, "each once");
    let lists = proxy.state().list_requests;
    assert!(lists <= 2 * 3 + 2, "{lists} LIST requests for 2,500 keys in batches of 100");
    // Every batch was committed on its own: the state remembers them all, nothing is pending.
    let state = &state_list(&p)["any"];
    assert_eq!(state["remembered"], 2500, "{state}");
    assert!(once_ok(&p, &["any"]).is_empty());
}

/// `max_remembered` forcing the window to shrink is said, with a field to find it by.
#[test]
fn s3_the_cap_on_remembered_keys_is_logged_when_it_bites() {
    let bucket = Bucket::new("capped");
    bucket.put_many(&(0..30).map(|i| (format!("in/{i:02}.csv"), "x".to_string())).collect::<Vec<_>>());
    // One second apart each, so that the cap can give up the oldest 20.
    let proxy = Proxy::start();
    for i in 0..30 {
        proxy.state().last_modified.insert(format!("in/{i:02}.csv"), ago(100 - i));
    }
    let p =
        project(&[("capped", watcher("capped", "capped", &proxy.endpoint, "  max_remembered: 10\n", 100))]);
    let (out, events) = once(&p, &["capped"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(events.len(), 30);
    let warned: Vec<serde_json::Value> = logs(&out.stderr)
        .into_iter()
        .filter(|l| l["level"] == "WARN" && l["max_remembered"] == 10 && l["forgotten"] == 20)
        .collect();
    assert_eq!(warned.len(), 1, "{}", out.stderr);
    assert_eq!(state_list(&p)["capped"]["remembered"], 10);
}

/// `start: now` and `start: <time>` skip what is already there, and only while the
/// watcher has no watermark.
#[test]
fn s3_start_now_or_at_a_time_skips_what_is_there() {
    let bucket = Bucket::new("starts");
    bucket.put("in/1-old.csv", "old");
    let endpoint = &weed().endpoint;
    let at = chrono::Utc::now() + chrono::Duration::days(1);
    let p = project(&[
        ("now", format!("start: now\n{}", watcher("now", "starts", endpoint, "", 100))),
        (
            "ordered",
            format!(
                "start: now\n{}",
                watcher("ordered", "starts", endpoint, "  key_order: lexicographic\n", 100)
            ),
        ),
        ("later", format!("start: {}\n{}", at.to_rfc3339(), watcher("later", "starts", endpoint, "", 100))),
    ]);
    // Servers stamp whole seconds, and a start takes in its whole second (so that
    // nothing written just after it is lost): each write goes in a second of its own.
    let next_second = || {
        let stamped = chrono::Utc::now().timestamp();
        while chrono::Utc::now().timestamp() <= stamped {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    next_second();
    let first = once_ok(&p, &[]);
    assert!(first.is_empty(), "{first:?}");
    next_second();
    bucket.put("in/2-new.csv", "new");
    let events = once_ok(&p, &[]);
    let got: BTreeSet<(String, String)> =
        events.iter().map(|e| (e["watcher"].as_str().unwrap_or("").to_string(), key(e))).collect();
    let expected: BTreeSet<(String, String)> = [("now", "in/2-new.csv"), ("ordered", "in/2-new.csv")]
        .iter()
        .map(|(w, k)| (w.to_string(), k.to_string()))
        .collect();
    assert_eq!(got, expected);
}

/// A watermark written by 0.1 (the remembered keys inside it) is read as it is, and the
/// next batch stores the keys as rows of their own.
#[test]
fn s3_a_watermark_of_the_previous_release_is_split_into_rows() {
    let bucket = Bucket::new("upgrade");
    bucket.put("in/a.csv", "a");
    let p = project(&[("up", watcher("up", "upgrade", &weed().endpoint, "", 100))]);
    let events = once_ok(&p, &["up"]);
    assert_eq!(events.len(), 1);
    let last_modified: chrono::DateTime<chrono::Utc> =
        events[0]["item"]["last_modified"].as_str().and_then(|t| t.parse().ok()).expect("last_modified");
    let ms = last_modified.timestamp_millis();
    let etag = events[0]["item"]["etag"].as_str().expect("etag");
    let old = serde_json::json!({
        "high_ms": ms,
        "seen": {"in/a.csv": [ms, etag, 1]},
        "scope": {"bucket": "upgrade", "prefix": "in/"},
    });
    let out = p.run(&["state", "set", "up", "watermark", &old.to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(state_list(&p)["up"]["watermark"]["remembered"], 1);
    past_last_modified(&events[0]);
    bucket.put("in/b.csv", "b");
    let events = once_ok(&p, &["up"]);
    assert_eq!(events.iter().map(key).collect::<Vec<_>>(), ["in/b.csv"], "a.csv is remembered");
    let out = p.run(&["state", "get", "up", "watermark"]);
    let whole: serde_json::Value = serde_json::from_str(&out.stdout).expect("watermark JSON");
    assert!(whole["head"].get("seen").is_none(), "{whole}");
    let members: BTreeSet<&str> =
        whole["members"].as_object().expect("members").keys().map(String::as_str).collect();
    assert_eq!(members, BTreeSet::from(["in/a.csv", "in/b.csv"]));
}
