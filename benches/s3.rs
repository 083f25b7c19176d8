//! S3 benchmark: how long highwater takes to discover and emit every object of a
//! prefix, next to a bare paginated ListObjectsV2 walk of the same prefix in the same
//! run; requests per idle poll in each key order; peak RSS of each run.
//!
//! Run it with `scripts/bench-s3.sh` (which installs SeaweedFS first);
//! `HIGHWATER_BENCH_OBJECTS` sets the number of objects (default 100000).

#[path = "../tests/integration/s3_support.rs"]
#[allow(dead_code)]
mod s3_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3_support::{ACCESS_KEY, Bucket, SECRET_KEY, rt, weed};

const BUCKET: &str = "bench";
const PREFIX: &str = "in/";

/// The watcher set-ups measured: a name and extra `source` keys.
const MODES: &[(&str, &str)] = &[
    ("any", ""),
    ("lexicographic", "  key_order: lexicographic\n"),
    // The remembered set is what memory grows with, up to this cap, whatever the prefix.
    ("lexicographic-10k", "  key_order: lexicographic\n  max_remembered: 10000\n"),
];

/// What one `highwater once` run did.
struct Run {
    events: usize,
    elapsed: Duration,
    peak_rss_kib: i64,
    /// `requests` from the source's debug line: ListObjectsV2 calls of the poll.
    requests: Option<u64>,
}

fn main() {
    let objects: usize =
        std::env::var("HIGHWATER_BENCH_OBJECTS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let batch_size: usize =
        std::env::var("HIGHWATER_BENCH_BATCH").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // Which watcher set-ups to run (comma-separated names from MODES); default all.
    // A million keys in `any` order take long to drain: `HIGHWATER_BENCH_MODES=lexicographic`.
    let only = std::env::var("HIGHWATER_BENCH_MODES").unwrap_or_default();
    let endpoint = weed().endpoint.clone();
    eprintln!("SeaweedFS at {endpoint}; putting {objects} objects…");
    let bucket = Bucket::new(BUCKET);
    let started = Instant::now();
    let keys: Vec<(String, String)> =
        (0..objects).map(|i| (format!("{PREFIX}{i:08}.csv"), "x".to_string())).collect();
    for chunk in keys.chunks(10_000) {
        bucket.put_many(chunk);
    }
    let put_time = started.elapsed();

    // Baseline: a bare paginated walk, as any tool that lists the prefix must do. Best
    // of three, so that a warm server is compared with a warm server.
    let mut baseline = Duration::MAX;
    let mut pages = 0;
    for _ in 0..3 {
        let (took, n, p) = walk(&bucket);
        assert_eq!(n, objects, "the walk listed {n} objects");
        baseline = baseline.min(took);
        pages = p;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mut report = Vec::new();
    for (mode, extra) in MODES {
        if !only.is_empty() && !only.split(',').any(|m| m == *mode) {
            continue;
        }
        let project = dir.path().join(mode.replace(',', "-"));
        std::fs::create_dir_all(project.join("config")).expect("mkdir");
        std::fs::create_dir_all(project.join("watchers")).expect("mkdir");
        std::fs::write(project.join("config/highwater.yaml"), "state: {type: sqlite, path: state.db}\n")
            .expect("config");
        std::fs::write(
            project.join("watchers/bench.yaml"),
            format!(
                "name: bench\nsource:\n  type: s3\n  bucket: {BUCKET}\n  prefix: {PREFIX}\n  endpoint_url: {endpoint}\n  force_path_style: true\n{extra}sink: {{type: stdout}}\nbatch_size: {batch_size}\n"
            ),
        )
        .expect("watcher");
        let mut emitted = 0;
        let mut took = Duration::ZERO;
        let mut peak = 0;
        let mut runs = 0;
        while emitted < objects {
            let run = once(&project);
            assert!(run.events > 0, "{mode}: a run emitted nothing with {emitted} of {objects} done");
            emitted += run.events;
            took += run.elapsed;
            peak = peak.max(run.peak_rss_kib);
            runs += 1;
        }
        assert_eq!(emitted, objects, "{mode}: emitted {emitted} events for {objects} objects");
        let idle = once(&project);
        assert_eq!(idle.events, 0, "{mode}: an idle poll emitted events");
        report.push(format!(
            "{mode:>20}: {runs} runs of `highwater once`, {:.2} s = {:.1} x the bare walk; idle poll: {} ListObjectsV2 request(s), {:.2} s; peak RSS {} MiB",
            took.as_secs_f64(),
            took.as_secs_f64() / baseline.as_secs_f64(),
            idle.requests.map_or("?".to_string(), |r| r.to_string()),
            idle.elapsed.as_secs_f64(),
            peak.max(idle.peak_rss_kib) / 1024,
        ));
    }

    println!(
        "highwater S3 benchmark (reproduce: scripts/bench-s3.sh; HIGHWATER_BENCH_OBJECTS={objects} HIGHWATER_BENCH_BATCH={batch_size})"
    );
    println!(
        "machine: {} CPU(s); server: SeaweedFS `weed mini` on loopback; release build",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("objects: {objects} under s3://{BUCKET}/{PREFIX} (put in {:.1} s)", put_time.as_secs_f64());
    println!(
        "            baseline: bare paginated ListObjectsV2 walk, {pages} pages, {:.2} s (best of 3)",
        baseline.as_secs_f64()
    );
    for line in report {
        println!("{line}");
    }
    println!(
        "peak RSS grows with the keys remembered (`max_remembered`, default 100000), not with the prefix"
    );
    println!(
        "each `highwater once` is a fresh process: start, open the store, one poll (batch_size {batch_size}), write the outbox, print the events, commit"
    );
}

/// Lists the whole prefix page by page; returns time, objects and pages.
fn walk(bucket: &Bucket) -> (Duration, usize, usize) {
    rt().block_on(async {
        let started = Instant::now();
        let (mut n, mut pages) = (0, 0);
        let mut token = None;
        loop {
            let page = bucket
                .client
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(PREFIX)
                .set_continuation_token(token)
                .send()
                .await
                .expect("list");
            pages += 1;
            n += page.contents().len();
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) {
                break;
            }
        }
        (started.elapsed(), n, pages)
    })
}

/// One `highwater once` in `project`, counting the events it prints and measuring
/// its peak RSS. The child is reaped with wait4(2), which returns its resource usage,
/// instead of `Child::wait`, which does not.
#[allow(clippy::zombie_processes)]
fn once(project: &Path) -> Run {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_highwater"))
        .current_dir(project)
        .args(["--log-format", "json", "once"])
        .env("RUST_LOG", "highwater=debug")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn highwater");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let counter = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    let logs = std::thread::spawn(move || {
        let mut requests = None;
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("Listed s3://")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            {
                requests = v["requests"].as_u64();
            }
            all.push(line);
        }
        (requests, all)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` outlives the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    let events = counter.join().expect("stdout reader");
    let (requests, all) = logs.join().expect("stderr reader");
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "highwater once failed:\n{}",
        all.join("\n")
    );
    Run { events, elapsed, peak_rss_kib: usage.ru_maxrss, requests }
}
