//! Webhook sink tests: the real daemon posting to a receiver in the test that checks
//! every signature with its own HMAC code, fails on demand (5xx, 429 with Retry-After,
//! answers slower than the sink's timeout, dropped connections) and records what
//! arrived: nothing lost, repeats only with the same id, order kept.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{KeyInit, Mac};
use tokio::io::AsyncReadExt;

use crate::util::{ClosedPort, DEFAULT_CONFIG, Project, field_str, http_get};

/// The watcher every test here runs.
const LANDING: &str = "test/landing";

/// The signing secret, in the Standard Webhooks form.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver does with one request, in arrival order; once the plan is used up
/// it accepts everything.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Answer with this status.
    Status(u16),
    /// 429 with `Retry-After: <seconds>`.
    TooMany(u64),
    /// Answer 200, but only after this long (beyond the sink's timeout).
    Slow(Duration),
    /// Close the connection without answering.
    Drop,
    /// Answer with this status and, as the body, the request's headers (as a careless
    /// receiver's error page does).
    Echo(u16),
}

/// One request that reached the handler.
#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    webhook_id: String,
    content_type: String,
    authorization: Option<String>,
    team: Option<String>,
    /// How many `v1,` entries `webhook-signature` carried.
    signatures: usize,
    body: serde_json::Value,
    /// The status answered; None for a request answered too late to count.
    status: Option<u16>,
}

impl Arrival {
    /// The highwater event ids this request carried, in order.
    fn event_ids(&self) -> Vec<String> {
        let events = match &self.body {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        events.iter().map(|e| e["id"].as_str().expect("event id").to_string()).collect()
    }

    fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

struct Shared {
    plan: VecDeque<Fault>,
    arrivals: Vec<Arrival>,
    /// Requests whose signature did not verify (the receiver answered 401).
    bad_signatures: Vec<String>,
    dropped: usize,
    /// The secrets a signature may be made with (the receiver's side of a rotation).
    keys: Vec<String>,
    /// Keep connections open between requests (no `Connection: close`).
    keep_alive: bool,
    /// What `HEAD /hook` answers (the probe of `check --connect`).
    head_status: u16,
    /// Connections open at the front right now.
    open: usize,
    /// While set, every POST is answered with this status (after its signature checked).
    refuse: Option<u16>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            plan: VecDeque::new(),
            arrivals: Vec::new(),
            bad_signatures: Vec::new(),
            dropped: 0,
            keys: vec![SECRET.to_string()],
            keep_alive: false,
            head_status: 405,
            open: 0,
            refuse: None,
        }
    }
}

/// A webhook receiver on 127.0.0.1. Connections go through a small front that can drop
/// them; every response carries `Connection: close`, so one connection is one request
/// and the front knows which request it is dropping.
struct Receiver {
    /// Runs the servers; they stop when the receiver is dropped.
    _runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl Receiver {
    fn start(plan: Vec<Fault>) -> Self {
        Self::start_with(Shared { plan: plan.into(), ..Shared::default() })
    }

    fn start_with(shared: Shared) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Mutex::new(shared));
        let addr = runtime.block_on(async {
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(handle).head(head))
                .with_state(Arc::clone(&shared));
            let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
            let backend_addr = backend.local_addr().expect("backend addr");
            tokio::spawn(async move { axum::serve(backend, app).await.expect("serve") });
            let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind front");
            let addr = front.local_addr().expect("front addr");
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while let Ok((mut client, _)) = front.accept().await {
                    let drop_it = {
                        let mut shared = shared.lock().expect("lock");
                        shared.open += 1;
                        if matches!(shared.plan.front(), Some(Fault::Drop)) {
                            shared.plan.pop_front();
                            shared.dropped += 1;
                            true
                        } else {
                            false
                        }
                    };
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        if drop_it {
                            // Read the start of the request so the sender has written
                            // it, then hang up without a word.
                            let mut buf = [0u8; 512];
                            let _ = client.read(&mut buf).await;
                        } else if let Ok(mut server) = tokio::net::TcpStream::connect(backend_addr).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                        shared.lock().expect("lock").open -= 1;
                    });
                }
            });
            addr
        });
        Receiver { _runtime: runtime, addr, shared }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.shared.lock().expect("lock").arrivals.clone()
    }

    /// Event ids in the order they were first accepted.
    fn accepted_ids(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        for arrival in self.arrivals().iter().filter(|a| a.accepted()) {
            for id in arrival.event_ids() {
                if seen.insert(id.clone()) {
                    order.push(id);
                }
            }
        }
        order
    }

    /// Waits until `n` distinct events were accepted.
    fn wait_accepted(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let ids = self.accepted_ids();
            if ids.len() >= n {
                return ids;
            }
            if Instant::now() >= deadline {
                let bad = self.shared.lock().expect("lock").bad_signatures.clone();
                panic!(
                    "{} of {n} events accepted in {timeout:?}; bad signatures: {bad:?}; arrivals: {:#?}",
                    ids.len(),
                    self.arrivals()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn assert_signatures_verified(&self) {
        let shared = self.shared.lock().expect("lock");
        assert!(shared.bad_signatures.is_empty(), "bad signatures: {:?}", shared.bad_signatures);
    }
}

/// Verifies a Standard Webhooks signature with nothing but the HMAC primitives, the way a
/// receiver's library does: `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`, where
/// the key is the base64 after `whsec_`, and a timestamp within five minutes.
fn verify(keys: &[String], headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string).ok_or(format!("no {name}"))
    };
    let id = header("webhook-id")?;
    let timestamp = header("webhook-timestamp")?;
    let signatures = header("webhook-signature")?;
    let ts: i64 = timestamp.parse().map_err(|_| "timestamp not a number".to_string())?;
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return Err(format!("timestamp {ts} too far from now"));
    }
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    for key in keys {
        let key = base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(key.trim_start_matches("whsec_"))
            .map_err(|e| e.to_string())?;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(&signed);
        let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        // The header may carry several space-separated signatures (key rotation).
        if signatures.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str())) {
            return Ok(());
        }
    }
    Err(format!("signature mismatch for {id}"))
}

async fn head(State(shared): State<Arc<Mutex<Shared>>>) -> Response {
    let status = shared.lock().expect("lock").head_status;
    StatusCode::from_u16(status).expect("status").into_response()
}

async fn handle(State(shared): State<Arc<Mutex<Shared>>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let webhook_id = text("webhook-id").unwrap_or_default();
    let (keys, keep_alive) = {
        let shared = shared.lock().expect("lock");
        (shared.keys.clone(), shared.keep_alive)
    };
    let close = |response| if keep_alive { response } else { close(response) };
    if let Err(e) = verify(&keys, &headers, &body) {
        shared.lock().expect("lock").bad_signatures.push(e);
        return close((StatusCode::UNAUTHORIZED, "bad signature").into_response());
    }
    let signatures = text("webhook-signature").map_or(0, |s| s.split(' ').count());
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let fault = {
        let mut shared = shared.lock().expect("lock");
        match shared.refuse {
            Some(code) => Some(Fault::Status(code)),
            None => shared.plan.pop_front(),
        }
    };
    let status = match fault {
        None => Some(200),
        Some(Fault::Status(code)) => Some(code),
        Some(Fault::TooMany(_)) => Some(429),
        Some(Fault::Echo(code)) => Some(code),
        Some(Fault::Slow(_)) | Some(Fault::Drop) => None,
    };
    shared.lock().expect("lock").arrivals.push(Arrival {
        at: Instant::now(),
        webhook_id,
        content_type: text("content-type").unwrap_or_default(),
        authorization: text("authorization"),
        team: text("x-team"),
        signatures,
        body,
        status,
    });
    let response = match fault {
        None => StatusCode::OK.into_response(),
        Some(Fault::Status(code)) => {
            (StatusCode::from_u16(code).expect("status"), "failing on purpose").into_response()
        }
        Some(Fault::TooMany(seconds)) => {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", seconds.to_string())], "slow down")
                .into_response()
        }
        Some(Fault::Slow(delay)) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        // The front drops these before they get here.
        Some(Fault::Drop) => StatusCode::OK.into_response(),
        Some(Fault::Echo(code)) => {
            let echoed: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().into()))
                .collect();
            (StatusCode::from_u16(code).expect("status"), serde_json::Value::Object(echoed).to_string())
                .into_response()
        }
    };
    close(response)
}

fn close(mut response: Response) -> Response {
    response.headers_mut().insert("connection", "close".parse().expect("header"));
    response
}

/// A project with one `local_dir` watcher (`test/landing`) posting to `url`.
fn project(sink_yaml: &str, watcher_extra: &str) -> Project {
    let project = Project::default_config();
    std::fs::create_dir_all(project.path().join("landing")).expect("mkdir landing");
    project.watcher(
        "landing",
        &format!(
            "namespace: test\nname: landing\nsource: {{type: local_dir, path: landing, min_age: 0s}}\n\
             sink:\n{sink_yaml}\npoll_interval: 100ms\nretry: {{initial: 100ms, max: 1s}}\n{watcher_extra}"
        ),
    );
    project
}

/// Lands `n` files in `landing/`, one after the other, each whole ([`Project::land`]).
/// A `local_dir` source orders files by change time, then path: a file landed later
/// never has an earlier change time, and one landed within the same clock tick has a
/// later name, so they are announced in this order.
fn drop_files(project: &Project, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("file-{i:02}.csv");
            project.land(&format!("landing/{name}"), &format!("row {i}\n"));
            name
        })
        .collect()
}

/// The relative paths of accepted events, in first-accepted order.
fn accepted_paths(receiver: &Receiver) -> Vec<String> {
    let mut paths = Vec::new();
    let mut seen = HashSet::new();
    for arrival in receiver.arrivals().iter().filter(|a| a.accepted()) {
        let events = match &arrival.body {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        for event in events {
            // CloudEvents carry the highwater event in `data`.
            let event = if event.get("specversion").is_some() { event["data"].clone() } else { event };
            if seen.insert(event["id"].as_str().expect("id").to_string()) {
                paths.push(event["item"]["relative_path"].as_str().expect("path").to_string());
            }
        }
    }
    paths
}

/// Every arrival of the same event id carries the same event.
fn assert_repeats_are_identical(receiver: &Receiver) {
    let mut by_id = std::collections::HashMap::new();
    for arrival in receiver.arrivals() {
        let events = match &arrival.body {
            serde_json::Value::Array(items) => items.clone(),
            one => vec![one.clone()],
        };
        for event in events {
            let id = event["id"].as_str().expect("id").to_string();
            if let Some(earlier) = by_id.insert(id.clone(), event.clone()) {
                assert_eq!(earlier, event, "event {id} changed between deliveries");
            }
        }
    }
}

#[test]
fn signed_cloudevents_arrive_once_each() {
    let receiver = Receiver::start(Vec::new());
    let project = project(
        &format!(
            "  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n  bearer_token_file: token.txt\n  \
             headers: {{X-Team: data}}\n",
            receiver.url()
        ),
        "",
    );
    project.write("token.txt", "tok-123\n");
    let mut daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    let files = drop_files(&project, 3);
    receiver.wait_accepted(3, Duration::from_secs(20));
    daemon.wait_delivered(LANDING, 3);

    receiver.assert_signatures_verified();
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 3, "one request per event: {arrivals:#?}");
    for arrival in &arrivals {
        assert_eq!(arrival.content_type, "application/cloudevents+json");
        assert_eq!(arrival.authorization.as_deref(), Some("Bearer tok-123"));
        assert_eq!(arrival.team.as_deref(), Some("data"));
        let ce = &arrival.body;
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "io.highwater.local_dir.file.created");
        assert_eq!(ce["source"], "/highwater/test/landing");
        assert_eq!(ce["datacontenttype"], "application/json");
        assert_eq!(ce["id"], ce["data"]["id"]);
        assert_eq!(arrival.webhook_id, ce["id"].as_str().expect("id"), "webhook-id is the event id");
    }
    assert_eq!(accepted_paths(&receiver), files);

    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    assert!(
        !logs.iter().any(|l| l.contains("tok-123") || l.contains("MfKQ9r8")),
        "a secret reached the logs"
    );
}

#[test]
fn failures_are_retried_without_loss_repeats_keep_their_ids_and_order() {
    let receiver = Receiver::start(vec![
        Fault::Status(500),
        Fault::Drop,
        Fault::TooMany(1),
        Fault::Slow(Duration::from_secs(2)),
        Fault::Status(503),
        Fault::Drop,
    ]);
    let project = project(
        &format!("  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n  timeout: 500ms\n", receiver.url()),
        "batch_size: 2\n",
    );
    let mut daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    let files = drop_files(&project, 6);
    receiver.wait_accepted(6, Duration::from_secs(40));

    receiver.assert_signatures_verified();
    assert_eq!(accepted_paths(&receiver), files, "every file once, in the order it landed");
    assert_repeats_are_identical(&receiver);
    let shared = receiver.shared.lock().expect("lock");
    assert!(shared.plan.is_empty(), "every fault was played: {:?}", shared.plan);
    assert_eq!(shared.dropped, 2);
    // The request after the 429 waited for its Retry-After.
    let arrivals = &shared.arrivals;
    let too_many = arrivals.iter().position(|a| a.status == Some(429)).expect("a 429");
    let gap = arrivals[too_many + 1].at - arrivals[too_many].at;
    assert!(gap >= Duration::from_millis(900), "Retry-After: 1 was not honoured: {gap:?}");
    drop(shared);
    // Each failed attempt is logged with the reason the receiver gave.
    for reason in ["did not answer within 0.5s", "HTTP 429"] {
        daemon.wait_log_where(&format!("of a failed delivery: {reason}"), |l| {
            field_str(l, "reason").is_some_and(|r| r.contains(reason))
        });
    }
}

#[test]
fn batches_are_arrays_and_a_retry_sends_only_the_requests_not_accepted() {
    // The second request of the first batch fails: the retry starts with it, and the
    // first request's events are not sent again.
    let receiver = Receiver::start(vec![Fault::Status(200), Fault::Status(502)]);
    let project = project(
        &format!(
            "  type: webhook\n  url: {}\n  format: plain\n  batch: 2\n  secret_file: secret.txt\n",
            receiver.url()
        ),
        "batch_size: 5\n",
    );
    project.write("secret.txt", &format!("{SECRET}\n"));
    let files = drop_files(&project, 5);
    let _daemon = project.start_with(&[], &[]);
    receiver.wait_accepted(5, Duration::from_secs(20));

    receiver.assert_signatures_verified();
    assert_eq!(accepted_paths(&receiver), files);
    assert_repeats_are_identical(&receiver);
    let arrivals = receiver.arrivals();
    let sizes: Vec<usize> = arrivals.iter().map(|a| a.event_ids().len()).collect();
    assert_eq!(sizes, [2, 2, 2, 1], "2 + 2 (refused), then 2 + 1: {arrivals:#?}");
    for arrival in &arrivals {
        assert_eq!(arrival.content_type, "application/json");
        assert!(arrival.body.is_array());
        assert!(arrival.webhook_id.starts_with("batch_") || arrival.event_ids().len() == 1);
    }
    assert_eq!(arrivals[1].webhook_id, arrivals[2].webhook_id, "a repeated request keeps its webhook-id");
    assert_eq!(arrivals[1].event_ids(), arrivals[2].event_ids());
    assert_eq!(arrivals[1].body, arrivals[2].body, "and its bytes");
    assert_ne!(arrivals[0].event_ids(), arrivals[2].event_ids(), "the accepted request is not sent again");
}

#[test]
fn client_errors_follow_the_failure_policy() {
    let receiver = Receiver::start(vec![Fault::Status(422)]);
    let project = project(
        &format!("  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n", receiver.url()),
        "on_permanent_failure: dead_letter\n",
    );
    let mut daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    drop_files(&project, 1);
    daemon.wait_counter(LANDING, "highwater_watcher_batches_dead_lettered_total", 1);
    project.land("landing/later.csv", "y\n");
    let ids = receiver.wait_accepted(1, Duration::from_secs(20));
    assert_eq!(ids.len(), 1);
    assert_eq!(accepted_paths(&receiver), ["later.csv"], "the refused event is set aside, the next one goes");
    daemon
        .wait_metrics("the dead letter held", |m| m.watcher("highwater_watcher_dead_letters", LANDING) == 1);
    let list: serde_json::Value =
        serde_json::from_str(&project.run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    assert_eq!(list[0]["dead_letters"].as_array().map(Vec::len), Some(1), "{list}");
    // Replayed while the daemon runs: delivered, and no longer held.
    let batch = list[0]["dead_letters"][0].as_str().expect("batch id");
    assert_eq!(project.run(&["state", "replay", LANDING, batch]).code, Some(0));
    receiver.wait_accepted(2, Duration::from_secs(20));
    daemon.wait_metrics("the replayed dead letter gone", |m| {
        m.watcher("highwater_watcher_dead_letters", LANDING) == 0
    });
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    let set_aside = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| field_str(l, "key").is_some_and(|k| k.starts_with("dead_letter/")))
        .expect("the dead letter is logged with its key");
    assert!(
        field_str(&set_aside, "reason").is_some_and(|r| r.contains("HTTP 422")),
        "the reason names the status"
    );
}

#[test]
fn secrets_and_reachability_are_checked_up_front() {
    let receiver = Receiver::start(Vec::new());
    let project =
        project(&format!("  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n", receiver.url()), "");
    // No secret in the environment: a config error naming the variable, exit 78.
    let out = project.command(&["run"]).env_remove("HOOK_SECRET").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("HOOK_SECRET"), "{stderr}");
    // A secret that is not in the Standard Webhooks form is refused without being shown.
    let out =
        project.command(&["check", "--connect"]).env("HOOK_SECRET", "plain words!").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("whsec_") && !stderr.contains("plain words!"), "{stderr}");
    // Reachable: check --connect passes.
    let out = project.command(&["check", "--connect"]).env("HOOK_SECRET", SECRET).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Nothing listening: exit 69.
    let closed = ClosedPort::new();
    let project = project_at_port(closed.port);
    let out = project.command(&["check", "--connect"]).env("HOOK_SECRET", SECRET).output().expect("run");
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
}

fn project_at_port(port: u16) -> Project {
    project(&format!("  type: webhook\n  url: http://127.0.0.1:{port}/hook\n  secret_env: HOOK_SECRET\n"), "")
}

/// The dead letters the project's store holds for the watcher, as `state get` shows them.
fn dead_letters(project: &Project) -> Vec<serde_json::Value> {
    let out = project.run(&["state", "get", LANDING]);
    let rows: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("state get: {e}: {}", out.stdout));
    rows.into_iter().filter(|(key, _)| key.starts_with("dead_letter/")).map(|(_, row)| row).collect()
}

#[test]
fn an_echoed_token_reaches_neither_logs_nor_dead_letters() {
    // A receiver whose error page shows the request's headers, bearer token included.
    let receiver = Receiver::start(vec![Fault::Echo(400)]);
    let project = project(
        &format!(
            "  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n  bearer_token_file: token.txt\n",
            receiver.url()
        ),
        "on_permanent_failure: dead_letter\n",
    );
    project.write("token.txt", "tok-echoed-9f31\n");
    let mut daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    drop_files(&project, 1);
    daemon.wait_counter(LANDING, "highwater_watcher_batches_dead_lettered_total", 1);
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals[0].authorization.as_deref(), Some("Bearer tok-echoed-9f31"), "the token was sent");

    let set_aside = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| field_str(l, "key").is_some_and(|k| k.starts_with("dead_letter/")))
        .expect("the dead letter is logged with its key");
    let reason = field_str(&set_aside, "reason").expect("reason");
    assert!(
        reason.contains("HTTP 400") && reason.contains("Bearer ***"),
        "the echo is kept, redacted: {reason}"
    );
    assert!(!logs.iter().any(|l| l.contains("tok-echoed-9f31")), "the token reached the logs");
    let letters = dead_letters(&project);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let stored = letters[0].to_string();
    assert!(stored.contains("Bearer ***") && !stored.contains("tok-echoed-9f31"), "{stored}");
}

#[test]
fn refused_credentials_need_attention_and_hold_the_batch() {
    let receiver = Receiver::start_with(Shared { refuse: Some(401), ..Shared::default() });
    let project = Project::new(&format!("{DEFAULT_CONFIG}  ready_max_blocked: 1s\n"));
    std::fs::create_dir_all(project.path().join("landing")).expect("mkdir landing");
    project.watcher(
        "landing",
        &format!(
            "namespace: test\nname: landing\nsource: {{type: local_dir, path: landing, min_age: 0s}}\n\
             sink: {{type: webhook, url: \"{}\", secret_env: HOOK_SECRET}}\npoll_interval: 100ms\n\
             retry: {{initial: 100ms, max: 500ms}}\non_permanent_failure: dead_letter\n",
            receiver.url()
        ),
    );
    let mut daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    let files = drop_files(&project, 2);
    daemon.wait_state(LANDING, "error");
    let logged = daemon.wait_log_where("of the refused delivery at ERROR", |l| {
        field_str(l, "level") == Some("ERROR")
            && field_str(l, "reason").is_some_and(|r| r.contains("HTTP 401"))
    });
    assert!(field_str(&logged, "reason").is_some_and(|r| r.contains("credentials")), "{logged}");
    let addr = daemon.http_addr();
    let body = crate::util::eventually("/readyz failing", Duration::from_secs(20), || {
        let (status, _, body) = http_get(&addr, "/readyz");
        (status == 503).then_some(body)
    });
    assert!(body.contains("watcher test/landing needs attention"), "{body}");
    // 403 is the same class; the batch is still held, not set aside.
    receiver.shared.lock().expect("lock").refuse = Some(403);
    let before = receiver.arrivals().len();
    crate::util::eventually("a refused retry with 403", Duration::from_secs(20), || {
        receiver.arrivals().iter().skip(before).any(|a| a.status == Some(403)).then_some(())
    });
    let metrics = daemon.metrics();
    assert!(
        metrics
            .get("highwater_watcher_delivery_failures_total", &[("watcher", LANDING), ("kind", "attention")])
            >= Some(2.0),
        "{}",
        metrics.text
    );
    assert_eq!(metrics.watcher("highwater_watcher_batches_dead_lettered_total", LANDING), 0);

    // Credentials fixed on the receiver's side: the held batch goes, and readiness returns.
    receiver.shared.lock().expect("lock").refuse = None;
    receiver.wait_accepted(2, Duration::from_secs(20));
    daemon.wait_state(LANDING, "ok");
    crate::util::eventually("/readyz ready again", Duration::from_secs(20), || {
        (http_get(&addr, "/readyz").0 == 200).then_some(())
    });
    assert_eq!(accepted_paths(&receiver), files);
}

#[test]
fn a_rotated_credential_signs_with_every_key_while_keys_change() {
    const NEW: &str = "whsec_c2Vjb25kIGtleSBmb3IgaGlnaHdhdGVy"; // unpadded base64
    let receiver = Receiver::start(Vec::new());
    let project = project(
        &format!("  type: webhook\n  url: {}\n  secret_file: credential:hook-secret\n", receiver.url()),
        "",
    );
    // systemd's LoadCredential= puts the file here and says where in the variable.
    let credentials = project.path().join("credentials");
    project.write("credentials/hook-secret", &format!("{SECRET}\n"));
    let credentials_dir = credentials.to_str().expect("utf-8 path");
    let out =
        project.command(&["check"]).env("CREDENTIALS_DIRECTORY", credentials_dir).output().expect("check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Outside the service, where systemd gave no credentials, `run` says what is missing.
    let out = project.command(&["run"]).env_remove("CREDENTIALS_DIRECTORY").output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("secret_file") && stderr.contains("CREDENTIALS_DIRECTORY"), "{stderr}");

    let mut daemon = project.start_with(&[("CREDENTIALS_DIRECTORY", credentials_dir)], &[]);
    project.land("landing/first.csv", "1\n");
    receiver.wait_accepted(1, Duration::from_secs(20));
    // Rotation, first step: both keys, the receiver already verifies with the new one
    // only. No reload: the credential is read for every batch.
    project.write("credentials/hook-secret", &format!("{SECRET}\n{NEW}\n"));
    receiver.shared.lock().expect("lock").keys = vec![NEW.to_string()];
    project.land("landing/second.csv", "2\n");
    receiver.wait_accepted(2, Duration::from_secs(20));
    // Second step: the new key alone.
    project.write("credentials/hook-secret", &format!("{NEW}\n"));
    project.land("landing/third.csv", "3\n");
    receiver.wait_accepted(3, Duration::from_secs(20));
    daemon.wait_delivered(LANDING, 3);

    receiver.assert_signatures_verified();
    let signatures: Vec<usize> = receiver.arrivals().iter().map(|a| a.signatures).collect();
    assert_eq!(signatures, [1, 2, 1], "one v1 entry per key in use");
    assert_eq!(accepted_paths(&receiver), ["first.csv", "second.csv", "third.csv"]);
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    assert!(
        !logs.iter().any(|l| l.contains("c2Vjb25k") || l.contains("MfKQ9r8")),
        "a secret reached the logs"
    );
}

#[test]
fn check_connect_calls_any_answer_below_500_reachable_and_warns_on_5xx() {
    let receiver = Receiver::start(Vec::new());
    let project =
        project(&format!("  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n", receiver.url()), "");
    for (head, reachable) in [(401, true), (404, true), (405, true), (503, false)] {
        receiver.shared.lock().expect("lock").head_status = head;
        let out =
            project.command(&["check", "--connect"]).env("HOOK_SECRET", SECRET).output().expect("check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "HEAD answered {head}: {stderr}");
        if reachable {
            assert!(stderr.contains(&format!("reachable (HTTP {head})")), "{stderr}");
            assert!(!stderr.contains("warning"), "{stderr}");
        } else {
            assert!(stderr.contains("warning:") && stderr.contains(&format!("HTTP {head}")), "{stderr}");
        }
    }
}

#[test]
fn three_hundred_watchers_share_a_few_connections() {
    const WATCHERS: usize = 300;
    let receiver = Receiver::start_with(Shared { keep_alive: true, ..Shared::default() });
    let project = Project::default_config();
    for i in 0..WATCHERS {
        let name = format!("w{i:03}");
        std::fs::create_dir_all(project.path().join(&name)).expect("mkdir");
        project.write(&format!("{name}/file.csv"), "x\n");
        project.watcher(
            &name,
            &format!(
                "namespace: many\nname: {name}\nsource: {{type: local_dir, path: {name}, min_age: 0s}}\n\
                 sink: {{type: webhook, url: \"{}\", secret_env: HOOK_SECRET}}\npoll_interval: 1s\n",
                receiver.url()
            ),
        );
    }
    let daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    receiver.wait_accepted(WATCHERS, Duration::from_secs(60));
    receiver.assert_signatures_verified();
    // Every watcher delivered its one event; the shared pool keeps at most 8 idle
    // connections to this receiver and closes the rest.
    let open = crate::util::eventually("at most 8 connections left open", Duration::from_secs(20), || {
        let open = receiver.shared.lock().expect("lock").open;
        (open <= 8).then_some(open)
    });
    eprintln!("{WATCHERS} watchers, one delivery each: {open} connections left open");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn plain_http_works_on_a_host_without_ca_certificates() {
    let receiver = Receiver::start(Vec::new());
    let project =
        project(&format!("  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\n", receiver.url()), "");
    let closed = ClosedPort::new();
    std::fs::create_dir_all(project.path().join("secure")).expect("mkdir");
    project.watcher(
        "secure",
        &format!(
            "namespace: test\nname: secure\nsource: {{type: local_dir, path: secure, min_age: 0s}}\n\
             sink: {{type: webhook, url: \"https://127.0.0.1:{}/hook\"}}\npoll_interval: 100ms\n",
            closed.port
        ),
    );
    // rustls reads only these when they are set: an empty bundle is a host without CA
    // certificates.
    let empty = project.write("no-ca/bundle.pem", "");
    let no_ca = [("SSL_CERT_FILE", empty.to_str().expect("utf-8")), ("SSL_CERT_DIR", "/nonexistent")];

    let out = project.command(&["check"]).envs(no_ca).env("HOOK_SECRET", SECRET).output().expect("check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("watcher test/secure") && stderr.contains("trust store"), "{stderr}");
    assert!(!stderr.contains("watcher test/landing"), "plain HTTP needs no trust store: {stderr}");

    let mut env = no_ca.to_vec();
    env.push(("HOOK_SECRET", SECRET));
    let mut daemon = project.start_with(&env, &[]);
    project.land("secure/a.csv", "a\n");
    let files = drop_files(&project, 2);
    receiver.wait_accepted(2, Duration::from_secs(20));
    assert_eq!(accepted_paths(&receiver), files);
    daemon.wait_state("test/secure", "error");
    let logged = daemon.wait_log_where("of the https watcher waiting for a trust store", |l| {
        field_str(l, "reason").is_some_and(|r| r.contains("trust store"))
    });
    assert_eq!(field_str(&logged, "level"), Some("ERROR"), "{logged}");
    daemon.wait_state(LANDING, "ok");
}

#[test]
fn a_restart_sends_only_what_the_receiver_had_not_taken() {
    // Three events taken, then the fourth refused five times (once after the progress,
    // then as many times as the watcher retries at once, and once more): the watcher
    // keeps its progress before it waits (its backoff is long), and is killed while it
    // waits.
    let mut plan = vec![Fault::Status(200); 3];
    plan.extend([Fault::Status(503); 5]);
    let receiver = Receiver::start(plan);
    let project = Project::default_config();
    std::fs::create_dir_all(project.path().join("landing")).expect("mkdir landing");
    project.watcher(
        "landing",
        &format!(
            "namespace: test\nname: landing\nsource: {{type: local_dir, path: landing, min_age: 0s}}\n\
             sink:\n  type: webhook\n  url: {}\n  secret_env: HOOK_SECRET\npoll_interval: 100ms\nbatch_size: 10\n\
             retry: {{initial: 30s, max: 30s}}\n",
            receiver.url()
        ),
    );
    let files = drop_files(&project, 6);
    let daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    let progress = crate::util::eventually("the progress kept", Duration::from_secs(30), || {
        let out = project.run(&["state", "get", LANDING, "progress"]);
        let value: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        (value["acked"] == 3).then_some(value)
    });
    assert!(progress["batch_id"].is_string(), "{progress}");
    assert_eq!(receiver.arrivals().len(), 8);
    daemon.kill9();

    let _daemon = project.start_with(&[("HOOK_SECRET", SECRET)], &[]);
    receiver.wait_accepted(6, Duration::from_secs(30));
    receiver.assert_signatures_verified();
    assert_eq!(accepted_paths(&receiver), files);
    assert_repeats_are_identical(&receiver);
    let arrivals = receiver.arrivals();
    let sent: Vec<Vec<String>> = arrivals.iter().map(Arrival::event_ids).collect();
    assert_eq!(arrivals.len(), 11, "3 taken, 5 refused, then only the 3 not taken: {sent:?}");
    assert!(sent[3..8].iter().all(|ids| *ids == sent[3]), "retries of the event refused: {sent:?}");
    assert_eq!(sent[8], sent[3], "the restart starts with the event first refused");
}

/// What docs/guides/postgres-to-webhook.md runs, cleaned up after the test: its schema
/// and the role the test made in the guide's place.
struct GuideDb {
    pg: crate::postgres::Pg,
    role: String,
}

impl Drop for GuideDb {
    fn drop(&mut self) {
        let role = &self.role;
        for sql in [
            "DROP SCHEMA IF EXISTS sales CASCADE".to_string(),
            format!("DROP OWNED BY {role}"),
            format!("DROP ROLE {role}"),
        ] {
            let _ = self.pg.query(&format!(
                "DO $$ BEGIN EXECUTE '{}'; EXCEPTION WHEN OTHERS THEN NULL; END $$",
                sql.replace('\'', "''")
            ));
        }
    }
}

#[test]
fn the_postgres_to_webhook_guide_delivers_a_new_row() {
    const GUIDE: &str = "docs/guides/postgres-to-webhook.md";
    let block = |name: &str| crate::docs::guide_block(GUIDE, name);
    // A role of its own per run: roles belong to the whole cluster.
    let role = format!("hw_guide_{}", std::process::id());
    let pg = crate::postgres::Pg::connect();
    let db = GuideDb { pg, role: role.clone() };
    db.pg.exec("DROP SCHEMA IF EXISTS sales CASCADE; CREATE SCHEMA sales");
    // The table the guide starts from: an application's, without the `hx` column.
    db.pg.exec("CREATE TABLE sales.orders (id bigserial PRIMARY KEY, customer_id int, amount numeric(10,2), status text)");
    db.pg.exec("INSERT INTO sales.orders (customer_id, amount, status) VALUES (1, 5.00, 'old')");
    // The guide's SQL, statement by statement (CREATE INDEX CONCURRENTLY refuses a
    // transaction block).
    let statements = |sql: String| -> Vec<String> {
        let lines: Vec<&str> = sql.lines().map(|l| l.split("--").next().unwrap_or("")).collect();
        lines.join("\n").split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    };
    for sql in statements(block("table-sql")) {
        db.pg.exec(&sql);
    }
    let role_sql = block("role-sql").replace("highwater", &role).replace("'…'", "'guide-pg-password'");
    for sql in statements(role_sql) {
        db.pg.exec(&sql);
    }

    let config: tokio_postgres::Config = crate::postgres::url().parse().expect("HIGHWATER_TEST_PG_URL");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config.get_dbname().expect("a database").to_string();
    let receiver = Receiver::start(vec![]);
    let mut watcher: serde_yaml::Value =
        serde_yaml::from_str(&block("watcher")).expect("the guide's watcher");
    // Where the database and the receiver are; no TLS on the test server.
    watcher["source"]["connection"] =
        format!("host=127.0.0.1 port={port} dbname={dbname} user={role}").into();
    watcher["source"]["sslmode"] = "disable".into();
    watcher["sink"]["url"] = receiver.url().into();
    let project = Project::new(DEFAULT_CONFIG);
    project.watcher("orders-table", &serde_yaml::to_string(&watcher).expect("yaml"));
    project.write("credentials/pg-password", "guide-pg-password\n");
    project.write("credentials/orders-hook-secret", &format!("{SECRET}\n"));
    let credentials = project.path().join("credentials").to_string_lossy().into_owned();
    let env = [("CREDENTIALS_DIRECTORY", credentials.as_str())];

    let check = project.command(&["check", "--connect"]).envs(env).output().expect("check");
    assert_eq!(check.status.code(), Some(0), "{}", String::from_utf8_lossy(&check.stderr));
    let mut daemon = project.start_with(&env, &[]);
    // `start: now`: the row already there is not announced; rows committed later are.
    daemon.wait_counter("sales/orders-table", crate::util::POLLS, 1);
    db.pg.exec("INSERT INTO sales.orders (customer_id, amount, status) VALUES (7, 19.90, 'paid')");
    let ids = receiver.wait_accepted(1, Duration::from_secs(60));
    assert_eq!(ids.len(), 1, "only the new row");
    receiver.assert_signatures_verified();
    let arrival = receiver.arrivals().into_iter().find(|a| a.accepted()).expect("an accepted request");
    assert_eq!(arrival.content_type, "application/cloudevents-batch+json", "batch: 50 posts arrays");
    let event = &arrival.body[0]["data"];
    assert_eq!(event["item"]["columns"]["status"], "paid", "{event}");
    assert_eq!(event["item"]["columns"]["amount"], "19.90", "{event}");
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(!logs.iter().any(|l| l.contains("guide-pg-password")), "the password reached the logs");
}
