//! Webhook sink throughput and the cost of signing, next to a bare HTTP client posting
//! the same bodies to the same local receiver in the same run.
//!
//! Run: `cargo bench --bench webhook` (optionally `-- EVENTS`, default 3000). Numbers
//! depend on the machine; the ratios to the bare client are what to compare between
//! runs. Requests go to a receiver on 127.0.0.1 only, one at a time, as a watcher sends
//! them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3000);
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
        println!("reproduce: cargo bench --bench webhook -- {n}");
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
    });
}
