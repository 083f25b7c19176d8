//! S3 notification benchmark: PUT → event delivered, p50 and p95, for a watcher reading
//! S3 event notifications from SQS next to one listing at the default poll interval,
//! both running at once against the same bucket; and the SQS requests an idle notified
//! watcher makes per minute.
//!
//! Run it with `scripts/bench-s3.sh` (which installs moto's server first).

#[path = "../tests/integration/s3_support.rs"]
#[allow(dead_code)]
mod s3_support;

#[path = "../tests/integration/moto_support.rs"]
#[allow(dead_code)]
mod moto_support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use moto_support::{Notified, moto};
use s3_support::{ACCESS_KEY, SECRET_KEY};

/// What a daemon printed or logged, as it arrived.
enum Seen {
    Event(String),
    Log(serde_json::Value),
}

fn main() {
    let puts: usize = std::env::var("HIGHWATER_BENCH_PUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let endpoint = moto().endpoint.clone();
    let n = Notified::new("bench-notify", true);
    let dir = tempfile::tempdir().expect("tempdir");
    let notified = project(
        dir.path(),
        "notified",
        &format!("  notifications:\n    queue_url: {}\n", n.queue_url),
        &endpoint,
    );
    let listing = project(dir.path(), "listing", "", &endpoint);
    let (mut a, notified_rx) = run(&notified);
    let (mut b, listing_rx) = run(&listing);
    // Both have made their first poll (the notified one lists first, then reads the queue).
    wait_log(&notified_rx, |l| l["received"].is_u64());
    wait_log(&listing_rx, |l| l["listed"].is_u64());

    // PUTs spaced irregularly, so that they fall anywhere in a poll interval.
    let mut put_at = HashMap::new();
    for i in 0..puts {
        let key = format!("in/{i:04}.csv");
        n.put(&key, "x");
        put_at.insert(key, Instant::now());
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 7919 % 900)));
    }
    let notified_lat = latencies(&notified_rx, &put_at);
    let listing_lat = latencies(&listing_rx, &put_at);

    // Idle: receive requests in a minute (each `Read` line is one receive, or one per
    // ten messages when busy).
    let idle_from = Instant::now();
    let mut receives = 0;
    while idle_from.elapsed() < Duration::from_secs(60) {
        if let Ok((_, Seen::Log(l))) = notified_rx.recv_timeout(Duration::from_millis(200))
            && l["received"].is_u64()
        {
            receives += 1;
        }
    }
    stop(&mut a);
    stop(&mut b);

    println!(
        "highwater S3 notification benchmark (reproduce: scripts/bench-s3.sh; HIGHWATER_BENCH_PUTS={puts})"
    );
    println!(
        "machine: {} CPU(s); server: moto (S3 and SQS, notifications to SQS) on loopback; release build; defaults: poll_interval 5s, wait_time 20s",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("PUT -> event delivered, {puts} PUTs, both watchers running at once:");
    println!("  notifications: p50 {:.0} ms, p95 {:.0} ms", pct(&notified_lat, 50), pct(&notified_lat, 95));
    println!(
        "  listing every poll_interval (baseline): p50 {:.0} ms, p95 {:.0} ms",
        pct(&listing_lat, 50),
        pct(&listing_lat, 95)
    );
    println!(
        "idle notified watcher: {receives} SQS receive requests in 60 s (no deletes or visibility changes while idle)"
    );
}

fn project(root: &Path, name: &str, extra: &str, endpoint: &str) -> PathBuf {
    let project = root.join(name);
    std::fs::create_dir_all(project.join("config")).expect("mkdir");
    std::fs::create_dir_all(project.join("watchers")).expect("mkdir");
    std::fs::write(
        project.join("config/highwater.yaml"),
        "state: {type: sqlite, path: state.db}\nshutdown_timeout: 30s\n",
    )
    .expect("config");
    std::fs::write(
        project.join("watchers/bench.yaml"),
        format!(
            "name: bench\nsource:\n  type: s3\n  bucket: bench-notify\n  prefix: in/\n  endpoint_url: {endpoint}\n  force_path_style: true\n{extra}sink: {{type: stdout}}\n"
        ),
    )
    .expect("watcher");
    project
}

/// Starts `highwater run` in `project`; what it prints and logs arrives on the receiver.
fn run(project: &Path) -> (Child, Receiver<(Instant, Seen)>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_highwater"))
        .current_dir(project)
        .args(["--log-format", "json", "run"])
        .env("RUST_LOG", "highwater=debug")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn highwater run");
    let (tx, rx) = channel();
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), Seen::Event(line)));
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx2.send((Instant::now(), Seen::Log(v)));
            }
        }
    });
    (child, rx)
}

fn wait_log(rx: &Receiver<(Instant, Seen)>, matches: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok((_, Seen::Log(l))) = rx.recv_timeout(Duration::from_secs(1))
            && matches(&l)
        {
            return;
        }
    }
    panic!("the daemon did not start polling");
}

/// Milliseconds from each PUT to its event, once every PUT's event arrived.
fn latencies(rx: &Receiver<(Instant, Seen)>, put_at: &HashMap<String, Instant>) -> Vec<f64> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while out.len() < put_at.len() && Instant::now() < deadline {
        let Ok((at, seen)) = rx.recv_timeout(Duration::from_secs(1)) else { continue };
        if let Seen::Event(line) = seen {
            let event: serde_json::Value = serde_json::from_str(&line).expect("event JSON");
            let key = event["item"]["key"].as_str().unwrap_or("");
            if let Some(put) = put_at.get(key) {
                out.push(at.saturating_duration_since(*put).as_secs_f64() * 1000.0);
            }
        }
    }
    assert_eq!(out.len(), put_at.len(), "not every PUT was announced");
    out.sort_by(f64::total_cmp);
    out
}

fn pct(sorted: &[f64], p: usize) -> f64 {
    sorted[((sorted.len() - 1) * p).div_ceil(100).min(sorted.len() - 1)]
}

fn stop(child: &mut Child) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
