//! Webhook sink throughput and the cost of signing, next to a bare HTTP client posting
//! the same bodies to the same local receiver in the same run; and the rate at which the
//! real daemon delivers through its whole loop (a `local_dir` watcher, `batch: 1`,
//! `batch_size: 50`) to a receiver that fails a seeded 20 % of requests with 503, next
//! to one that fails none.
//!
//! Run: `cargo bench --bench webhook` (optionally `-- EVENTS`, default 3000, and
//! `--loop ITEMS`, default 5000: a thousand went through in a tenth of a second, too short
//! a run for its ratio to mean much). Numbers depend on the machine; the ratios to the bare
//! client, and of the failing receiver to the one that fails none, are what to compare
//! between runs. Requests go to a receiver on 127.0.0.1 only, one at a time, as a
//! watcher sends them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use highwater::event::{Change, Encoded, Event, FileItem, Item};
use highwater::sink::webhook::{Signer, WebhookConfig, WebhookFormat, WebhookSink, encode_body, webhook_id};
use highwater::sink::{Acked, Delivery, Sink};
use highwater::value::{HttpUrl, HumanDuration, SecretFile};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn events(n: usize) -> Vec<Encoded> {
    (0..n)
        .map(|i| Event {
            id: format!("{i:032x}"),
            namespace: "bench".into(),
            watcher: "landing".into(),
            source: "local_dir".into(),
            change: Change::Created,
            item: Item::File(FileItem {
                path: format!("landing/2026/11/25/orders-{i:06}.csv"),
                relative_path: format!("2026/11/25/orders-{i:06}.csv"),
                size: 1024 + i as u64,
                modified: chrono::Utc::now(),
            }),
            watermark: serde_json::json!({"changed": "2026-11-25T15:13:50.120000000Z", "remembered": 3}),
            emitted_at: chrono::Utc::now(),
        })
        .map(|event| Encoded::of(&event).expect("encode"))
        .collect()
}

/// One measured run: events per second and time per request.
struct Measured {
    events_per_s: f64,
    per_request: Duration,
}

fn measure(events: usize, requests: usize, took: Duration) -> Measured {
    Measured { events_per_s: events as f64 / took.as_secs_f64(), per_request: took / requests.max(1) as u32 }
}

/// Delivers `events` through the real sink, one `deliver` per `per_call` events (as a
/// watcher with that batch size would).
async fn through_sink(
    url: &str,
    events: &[Encoded],
    batch: usize,
    signed: bool,
    secret_file: &std::path::Path,
) -> Measured {
    let config = WebhookConfig {
        url: HttpUrl::parse(url).expect("receiver URL"),
        format: WebhookFormat::Cloudevents,
        batch,
        secret_env: None,
        secret_file: signed.then(|| SecretFile::Path(secret_file.to_path_buf())),
        bearer_token_env: None,
        bearer_token_file: None,
        headers: Default::default(),
        timeout: HumanDuration(Duration::from_secs(10)),
    };
    let mut sink = WebhookSink::new(&config).expect("sink");
    let per_call = batch.max(100);
    let started = Instant::now();
    for chunk in events.chunks(per_call) {
        let outcome = sink.deliver(chunk, &Acked::new()).await;
        assert_eq!(outcome, Delivery::Acknowledged, "the local receiver refused a batch");
    }
    measure(events.len(), events.len().div_ceil(batch), started.elapsed())
}

/// Posts the very bodies the sink would send, with a plain reqwest client and no
/// signing: the floor the sink is compared with.
async fn bare(url: &str, events: &[Encoded], batch: usize) -> Measured {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
    let bodies: Vec<(Vec<u8>, &str, String)> = events
        .chunks(batch)
        .map(|chunk| {
            let (body, content_type) =
                encode_body(WebhookFormat::Cloudevents, chunk, batch > 1).expect("encode");
            (body, content_type, webhook_id(chunk))
        })
        .collect();
    let started = Instant::now();
    for (body, content_type, id) in &bodies {
        let response = client
            .post(url)
            .header("content-type", *content_type)
            .header("webhook-id", id)
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert!(response.status().is_success());
    }
    measure(events.len(), bodies.len(), started.elapsed())
}

/// A receiver that answers 503 to a seeded share of requests and counts the distinct
/// event ids it accepted (`webhook-id` is the event id with `batch: 1`).
#[derive(Default)]
struct Flaky {
    /// Requests so far: the input of the seeded choice.
    requests: AtomicU64,
    /// Percent of requests refused.
    fail_percent: u64,
    accepted: Mutex<HashSet<String>>,
}

impl Flaky {
    /// Whether request `n` fails: a fixed hash of `n`, the same in every run.
    fn fails(&self, n: u64) -> bool {
        let mut x = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        x % 100 < self.fail_percent
    }
}

/// Starts a [`Flaky`] receiver; returns its URL and state.
async fn flaky(fail_percent: u64) -> (String, Arc<Flaky>) {
    let state = Arc::new(Flaky { fail_percent, ..Flaky::default() });
    let shared = Arc::clone(&state);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, _body: axum::body::Bytes| {
            let state = Arc::clone(&shared);
            async move {
                let n = state.requests.fetch_add(1, Ordering::Relaxed);
                if state.fails(n) {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                    state.accepted.lock().expect("lock").insert(id.to_string());
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, state)
}

/// `highwater run` with one `local_dir` watcher over `items` files and a webhook sink
/// (`batch: 1`, `batch_size: 50`) posting to a receiver failing `fail_percent` % of
/// requests, until every item was accepted. Returns the time taken and the requests
/// made.
async fn through_the_loop(items: usize, fail_percent: u64, retry: &str) -> (Duration, u64) {
    let (url, receiver) = flaky(fail_percent).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path();
    for sub in ["config", "watchers", "landing"] {
        std::fs::create_dir_all(project.join(sub)).expect("mkdir");
    }
    std::fs::write(
        project.join("config/highwater.yaml"),
        "watchers_dir: watchers\nstate: {type: sqlite, path: state/highwater.db}\n",
    )
    .expect("config");
    std::fs::write(
        project.join("watchers/landing.yaml"),
        format!(
            "namespace: bench\nname: landing\nsource: {{type: local_dir, path: landing, min_age: 0s}}\n\
             sink: {{type: webhook, url: \"{url}\", batch: 1}}\nbatch_size: 50\npoll_interval: 100ms\n\
             retry: {retry}\n"
        ),
    )
    .expect("watcher");
    for i in 0..items {
        std::fs::write(project.join(format!("landing/orders-{i:06}.csv")), format!("{i}\n")).expect("file");
    }
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_highwater"))
        .current_dir(project)
        .arg("run")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start highwater");
    let deadline = Instant::now() + Duration::from_secs(600);
    while receiver.accepted.lock().expect("lock").len() < items {
        assert!(Instant::now() < deadline, "not every item was accepted within 10 minutes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    (took, receiver.requests.load(Ordering::Relaxed))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let loop_items: usize = args
        .iter()
        .position(|a| a == "--loop")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let n: usize = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || args[i - 1] != "--loop")
        .find_map(|(_, a)| a.parse().ok())
        .unwrap_or(3000);
    highwater::init_tls();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let secret_file = secret_dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("write secret");

    runtime.block_on(async {
        let received = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(body.len() as u64, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

        let events = events(n);
        // Warm up connections and allocators before measuring.
        let _ = bare(&url, &events[..n.min(200)], 1).await;

        println!("highwater webhook sink benchmark: {n} events, CloudEvents, receiver on loopback");
        println!("reproduce: cargo bench --bench webhook -- {n} --loop {loop_items}");
        println!(
            "machine: {} CPUs (shared; compare ratios, not absolute numbers)",
            std::thread::available_parallelism().map_or(0, |p| p.get())
        );
        println!();
        println!("{:<34} {:>12} {:>14} {:>16}", "case", "events/s", "per request", "vs bare client");
        for batch in [1usize, 50] {
            let floor = bare(&url, &events, batch).await;
            let plain = through_sink(&url, &events, batch, false, &secret_file).await;
            let signed = through_sink(&url, &events, batch, true, &secret_file).await;
            let row = |name: String, m: &Measured| {
                println!(
                    "{name:<34} {:>12.0} {:>12.1}µs {:>15.2}x",
                    m.events_per_s,
                    m.per_request.as_secs_f64() * 1e6,
                    m.events_per_s / floor.events_per_s
                );
            };
            row(format!("bare reqwest, batch {batch}"), &floor);
            row(format!("webhook sink, batch {batch}, unsigned"), &plain);
            row(format!("webhook sink, batch {batch}, signed"), &signed);
            let added = signed.per_request.as_secs_f64() - plain.per_request.as_secs_f64();
            println!("{:<34} {:>+27.1}µs per request", format!("  signing, batch {batch}"), added * 1e6);
        }

        // Encoding and signing alone, without the network: what the sink adds per
        // request on top of the bare client, which posts bodies encoded beforehand.
        let signer = Signer::new(SECRET).expect("signer");
        println!();
        for batch in [1usize, 50] {
            let rounds = 20_000 / batch;
            let started = Instant::now();
            for i in 0..rounds {
                let chunk = &events[(i * batch) % (n - batch + 1)..][..batch];
                std::hint::black_box(
                    encode_body(WebhookFormat::Cloudevents, chunk, batch > 1).expect("encode"),
                );
            }
            let each = started.elapsed() / rounds as u32;
            println!("CloudEvents encoding of {batch} event(s): {:.1}µs", each.as_secs_f64() * 1e6);
        }
        for batch in [1usize, 50] {
            let (body, _) =
                encode_body(WebhookFormat::Cloudevents, &events[..batch], batch > 1).expect("encode");
            let rounds = 20_000 / batch;
            let started = Instant::now();
            for i in 0..rounds {
                std::hint::black_box(signer.sign("id", i as i64, &body));
            }
            let each = started.elapsed() / rounds as u32;
            println!(
                "HMAC-SHA256 signature of a {}-byte body (batch {batch}): {:.1}µs",
                body.len(),
                each.as_secs_f64() * 1e6
            );
        }
        println!("bytes received: {}", received.load(Ordering::Relaxed));

        // The whole loop against a receiver that fails a seeded share of requests.
        println!();
        println!(
            "through the daemon: {loop_items} items, local_dir -> webhook (batch: 1, batch_size: 50), receiver answering 503 to a seeded share of requests"
        );
        println!("{:<44} {:>10} {:>10} {:>12} {:>14}", "case", "seconds", "requests", "items/s", "vs failing none");
        for retry in ["{initial: 1s, max: 5m}", "{initial: 100ms, max: 5s}"] {
            let (clean, clean_requests) = through_the_loop(loop_items, 0, retry).await;
            let (flaky, flaky_requests) = through_the_loop(loop_items, 20, retry).await;
            let rate = |took: Duration| loop_items as f64 / took.as_secs_f64();
            for (name, took, requests) in
                [("failing none", clean, clean_requests), ("failing 20 %", flaky, flaky_requests)]
            {
                println!(
                    "{:<44} {:>10.2} {:>10} {:>12.0} {:>13.2}x",
                    format!("{name}, retry {retry}"),
                    took.as_secs_f64(),
                    requests,
                    rate(took),
                    rate(took) / rate(clean)
                );
            }
        }
    });
}
