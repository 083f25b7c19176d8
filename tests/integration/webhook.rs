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

use crate::util::{ClosedPort, Project, field_str};

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
}

/// One request that reached the handler.
#[derive(Debug, Clone)]
struct Arrival {
    at: Instant,
    webhook_id: String,
    content_type: String,
    authorization: Option<String>,
    team: Option<String>,
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

#[derive(Default)]
struct Shared {
    plan: VecDeque<Fault>,
    arrivals: Vec<Arrival>,
    /// Requests whose signature did not verify (the receiver answered 401).
    bad_signatures: Vec<String>,
    dropped: usize,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shared = Arc::new(Mutex::new(Shared { plan: plan.into(), ..Shared::default() }));
        let addr = runtime.block_on(async {
            let app = axum::Router::new()
                .route("/hook", axum::routing::post(handle).head(|| async { StatusCode::METHOD_NOT_ALLOWED }))
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
                        if matches!(shared.plan.front(), Some(Fault::Drop)) {
                            shared.plan.pop_front();
                            shared.dropped += 1;
                            true
                        } else {
                            false
                        }
                    };
                    tokio::spawn(async move {
                        if drop_it {
                            // Read the start of the request so the sender has written
                            // it, then hang up without a word.
                            let mut buf = [0u8; 512];
                            let _ = client.read(&mut buf).await;
                            return;
                        }
                        if let Ok(mut server) = tokio::net::TcpStream::connect(backend_addr).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
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
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
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
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .map_err(|e| e.to_string())?;
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
    mac.update(&signed);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    // The header may carry several space-separated signatures (key rotation).
    if signatures.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str())) {
        Ok(())
    } else {
        Err(format!("signature mismatch for {id}"))
    }
}

async fn handle(State(shared): State<Arc<Mutex<Shared>>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let webhook_id = text("webhook-id").unwrap_or_default();
    if let Err(e) = verify(&headers, &body) {
        shared.lock().expect("lock").bad_signatures.push(e);
        return close((StatusCode::UNAUTHORIZED, "bad signature").into_response());
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let fault = shared.lock().expect("lock").plan.pop_front();
    let status = match fault {
        None => Some(200),
        Some(Fault::Status(code)) => Some(code),
        Some(Fault::TooMany(_)) => Some(429),
        Some(Fault::Slow(_)) | Some(Fault::Drop) => None,
    };
    shared.lock().expect("lock").arrivals.push(Arrival {
        at: Instant::now(),
        webhook_id,
        content_type: text("content-type").unwrap_or_default(),
        authorization: text("authorization"),
        team: text("x-team"),
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

/// Writes `n` files into `landing/`, one after the other. A `local_dir` source orders
/// files by change time, then path: a file written later never has an earlier change
/// time, and one written within the same clock tick has a later name, so they are
/// announced in this order.
fn drop_files(project: &Project, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("file-{i:02}.csv");
            project.write(&format!("landing/{name}"), &format!("row {i}\n"));
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
fn batches_are_arrays_and_acknowledged_only_when_every_request_was() {
    // The second request of the first batch fails: the whole batch goes again.
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
    assert_eq!(sizes, [2, 2, 2, 2, 1], "2 + 2 (refused), then 2 + 2 + 1: {arrivals:#?}");
    for arrival in &arrivals {
        assert_eq!(arrival.content_type, "application/json");
        assert!(arrival.body.is_array());
        assert!(arrival.webhook_id.starts_with("batch_") || arrival.event_ids().len() == 1);
    }
    assert_eq!(arrivals[0].webhook_id, arrivals[2].webhook_id, "a repeated request keeps its webhook-id");
    assert_eq!(arrivals[0].event_ids(), arrivals[2].event_ids());
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
    project.write("landing/later.csv", "y\n");
    let ids = receiver.wait_accepted(1, Duration::from_secs(20));
    assert_eq!(ids.len(), 1);
    assert_eq!(accepted_paths(&receiver), ["later.csv"], "the refused event is set aside, the next one goes");
    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0), "{}", logs.join("\n"));
    let list: serde_json::Value =
        serde_json::from_str(&project.run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    assert_eq!(list[0]["dead_letters"].as_array().map(Vec::len), Some(1), "{list}");
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
