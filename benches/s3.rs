//! S3 benchmark: each row next to its baseline, measured in the same run.
//!
//! - 20k new keys, cold (a new watcher, `batch_size: 100000`): `highwater once` against
//!   a bare paginated ListObjectsV2 walk of the same prefix (medians of 5 runs each),
//!   and the steps after the listing as the daemon logs them.
//! - A backlog in `key_order: any` at the default `batch_size` (100) against
//!   `batch_size: 10000`: LIST requests (goal ≤ 2 × ⌈N/1000⌉ + 2) and time (goal ≤ 2×).
//! - An idle `lexicographic` poll with 100k keys remembered: CPU per poll of a running
//!   daemon (goal ≤ 5 ms) and requests per poll.
//! - Peak RSS of each run.
//!
//! Run it with `scripts/bench-s3.sh` (which installs SeaweedFS first).

#[path = "../tests/integration/s3_support.rs"]
#[allow(dead_code)]
mod s3_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use s3_support::{ACCESS_KEY, Bucket, SECRET_KEY, rt, weed};

const BUCKET: &str = "bench";

/// What one `highwater once` run did.
struct Run {
    events: usize,
    elapsed: Duration,
    peak_rss_kib: i64,
    /// ListObjectsV2 calls of the run (the source's debug lines, summed).
    requests: u64,
    /// Time inside the source's polls (the loop's debug lines, summed).
    poll: Duration,
    /// Milliseconds of the steps after a poll, summed over its batches (the loop's
    /// log lines): events encoded, batch staged, delivered, committed.
    steps: [u64; 4],
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let cold_n = env_usize("HIGHWATER_BENCH_COLD", 20_000);
    let backlog_n = env_usize("HIGHWATER_BENCH_BACKLOG", 100_000);
    let idle_n = env_usize("HIGHWATER_BENCH_REMEMBERED", 100_000);
    let runs = env_usize("HIGHWATER_BENCH_RUNS", 5).max(1);
    let endpoint = weed().endpoint.clone();
    let bucket = Bucket::new(BUCKET);
    // One prefix per size; the largest serves the backlog and the idle rows.
    let started = Instant::now();
    let mut sizes = vec![cold_n, backlog_n.max(idle_n)];
    if backlog_n != sizes[1] {
        sizes.push(backlog_n);
    }
    sizes.sort_unstable();
    sizes.dedup();
    for &n in &sizes {
        eprintln!("SeaweedFS at {endpoint}; putting {n} objects under {}…", prefix(n));
        let keys: Vec<(String, String)> =
            (0..n).map(|i| (format!("{}{i:08}.csv", prefix(n)), "x".to_string())).collect();
        for chunk in keys.chunks(10_000) {
            bucket.put_many(chunk);
        }
    }
    let put_time = started.elapsed();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();

    // Cold: a new watcher each run, everything in one batch. Each run comes right
    // after its two walks, so that the machine speeding up or slowing down during the
    // bench (it is shared) moves the baseline with it; the per-run ratios say how much
    // it moved.
    let mut walks = Vec::new();
    let mut encoded_walks = Vec::new();
    let mut ratios = Vec::new();
    let mut cold = Vec::new();
    let mut cold_polls = Vec::new();
    let mut cold_steps: [Vec<u64>; 4] = Default::default();
    let mut cold_rss = 0;
    for i in 0..runs {
        let walked = walk(&bucket, &prefix(cold_n), cold_n);
        walks.push(walked);
        encoded_walks.push(walk_as(&bucket, &prefix(cold_n), cold_n, true));
        let project = project(dir.path(), &format!("cold-{i}"), &endpoint, &prefix(cold_n), "", 100_000, "");
        let run = once(&project);
        assert_eq!(run.events, cold_n, "cold run {i}");
        ratios.push(run.elapsed.as_secs_f64() / walked.as_secs_f64());
        cold.push(run.elapsed);
        cold_polls.push(run.poll);
        for (all, ms) in cold_steps.iter_mut().zip(run.steps) {
            all.push(ms);
        }
        cold_rss = cold_rss.max(run.peak_rss_kib);
    }
    let (walk_m, cold_m, poll_m) = (median(walks), median(cold), median(cold_polls));
    let encoded_m = median(encoded_walks);
    ratios.sort_by(f64::total_cmp);
    let (ratio_low, ratio_m, ratio_high) = (ratios[0], ratios[ratios.len() / 2], ratios[ratios.len() - 1]);
    let [encode_ms, stage_ms, deliver_ms, commit_ms] = cold_steps.map(|mut all| {
        all.sort_unstable();
        all[all.len() / 2]
    });
    rows.push(format!(
        "{cold_n} new keys, cold (batch 100000) | {:.2} s (median of {runs}; the poll {:.2} s; then events encoded {encode_ms} ms, staged {stage_ms} ms, printed {deliver_ms} ms, committed {commit_ms} ms) | bare ListObjectsV2 walk {:.2} s (median of {runs}; asking for URL-encoded keys as highwater does: {:.2} s) | {:.2} × (goal ≤ 1.5 ×; each run against the walk just before it: {ratio_low:.2}–{ratio_high:.2} ×, median {ratio_m:.2} ×); the poll alone {:.2} × the encoded walk | {} MiB",
        cold_m.as_secs_f64(),
        poll_m.as_secs_f64(),
        walk_m.as_secs_f64(),
        encoded_m.as_secs_f64(),
        cold_m.as_secs_f64() / walk_m.as_secs_f64(),
        poll_m.as_secs_f64() / encoded_m.as_secs_f64(),
        cold_rss / 1024
    ));

    // Backlog in `any` order: the default batch_size against 10000.
    let mut backlogs = vec![cold_n, backlog_n];
    backlogs.dedup();
    for &n in &backlogs {
        let mut drained = Vec::new();
        for batch in [100, 10_000] {
            let project =
                project(dir.path(), &format!("backlog-{n}-{batch}"), &endpoint, &prefix(n), "", batch, "");
            let (mut events, mut took, mut requests, mut rss, mut onces) = (0, Duration::ZERO, 0, 0, 0);
            while events < n {
                let run = once(&project);
                assert!(run.events > 0, "backlog {n}/{batch}: a run emitted nothing at {events}");
                events += run.events;
                took += run.elapsed;
                requests += run.requests;
                rss = rss.max(run.peak_rss_kib);
                onces += 1;
            }
            drained.push((batch, took, requests, rss, onces));
        }
        let goal = 2 * n.div_ceil(1000) + 2;
        let (_, fast, fast_requests, _, _) = drained[1];
        let (_, slow, slow_requests, rss, onces) = drained[0];
        rows.push(format!(
            "{n}-key backlog, any, batch 100 | {:.2} s, {slow_requests} LIST requests in {onces} run(s) | batch 10000: {:.2} s, {fast_requests} LIST requests | {:.2} × the time (goal ≤ 2 ×), requests goal ≤ {goal} | {} MiB",
            slow.as_secs_f64(),
            fast.as_secs_f64(),
            slow.as_secs_f64() / fast.as_secs_f64(),
            rss / 1024
        ));
    }

    // Idle `lexicographic` with many keys remembered: a running daemon's CPU per poll.
    let idle_prefix = prefix(backlog_n.max(idle_n));
    let project = project(
        dir.path(),
        "idle",
        &endpoint,
        &idle_prefix,
        "  key_order: lexicographic\n",
        10_000,
        "poll_interval: 50ms\n",
    );
    let mut filled = 0;
    while filled < backlog_n.max(idle_n) {
        let run = once(&project);
        assert!(run.events > 0);
        filled += run.events;
    }
    let (cpu_ms, polls, requests, rss) = idle_daemon(&project, 100);
    rows.push(format!(
        "idle lexicographic poll, {filled} keys remembered | {:.2} ms CPU per poll over {polls} polls, {:.1} LIST request(s) per poll | goal ≤ 5 ms, reading nothing it holds | {} MiB",
        cpu_ms / polls as f64,
        requests as f64 / polls as f64,
        rss / 1024
    ));

    println!(
        "highwater S3 benchmark (reproduce: scripts/bench-s3.sh; HIGHWATER_BENCH_COLD={cold_n} HIGHWATER_BENCH_BACKLOG={backlog_n} HIGHWATER_BENCH_REMEMBERED={idle_n} HIGHWATER_BENCH_RUNS={runs})"
    );
    println!(
        "machine: {} CPU(s); server: SeaweedFS `weed mini` on loopback; release build; objects put in {:.1} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        put_time.as_secs_f64()
    );
    println!(
        "each `highwater once` is a fresh process: start, open the store, one listing, every batch staged, printed and committed"
    );
    println!("row | highwater | baseline in the same run | ratio and goal | peak RSS");
    for row in rows {
        println!("{row}");
    }
}

fn prefix(n: usize) -> String {
    format!("n{n}/")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A project directory with one watcher `bench` on `prefix`.
fn project(
    root: &Path,
    name: &str,
    endpoint: &str,
    prefix: &str,
    extra: &str,
    batch: usize,
    more: &str,
) -> PathBuf {
    let project = root.join(name);
    std::fs::create_dir_all(project.join("config")).expect("mkdir");
    std::fs::create_dir_all(project.join("watchers")).expect("mkdir");
    std::fs::write(project.join("config/highwater.yaml"), "state: {type: sqlite, path: state.db}\n")
        .expect("config");
    std::fs::write(
        project.join("watchers/bench.yaml"),
        format!(
            "name: bench\nsource:\n  type: s3\n  bucket: {BUCKET}\n  prefix: {prefix}\n  endpoint_url: {endpoint}\n  force_path_style: true\n{extra}sink: {{type: stdout}}\nbatch_size: {batch}\n{more}"
        ),
    )
    .expect("watcher");
    project
}

/// Lists the whole prefix page by page, as any tool that lists it must.
fn walk(bucket: &Bucket, prefix: &str, expected: usize) -> Duration {
    walk_as(bucket, prefix, expected, false)
}

/// The same walk asking for URL-encoded keys, as highwater does.
fn walk_as(bucket: &Bucket, prefix: &str, expected: usize, encoded: bool) -> Duration {
    rt().block_on(async {
        let started = Instant::now();
        let mut n = 0;
        let mut token = None;
        loop {
            let page = bucket
                .client
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(prefix)
                .set_encoding_type(encoded.then_some(aws_sdk_s3::types::EncodingType::Url))
                .set_continuation_token(token)
                .send()
                .await
                .expect("list");
            n += page.contents().len();
            token = page.next_continuation_token().map(str::to_string);
            if page.is_truncated() != Some(true) {
                break;
            }
        }
        assert_eq!(n, expected, "the walk listed {n} objects");
        started.elapsed()
    })
}

/// The daemon under test: `HIGHWATER_BENCH_BIN` when set (another build, to compare
/// two in the same run of the server), else the one this bench was built with.
fn daemon() -> std::ffi::OsString {
    std::env::var_os("HIGHWATER_BENCH_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_highwater").into())
}

fn command(project: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(daemon());
    cmd.current_dir(project)
        .args(["--log-format", "json"])
        .args(args)
        .env("RUST_LOG", "highwater=debug")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// One `highwater once` in `project`, counting the events it prints and measuring
/// its peak RSS. The child is reaped with wait4(2), which returns its resource usage,
/// instead of `Child::wait`, which does not.
#[allow(clippy::zombie_processes)]
fn once(project: &Path) -> Run {
    let started = Instant::now();
    let mut child = command(project, &["once"]).spawn().expect("spawn highwater");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let counter = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).count());
    let logs = std::thread::spawn(move || {
        let mut requests = 0;
        let mut poll_ms = 0;
        let mut steps = [0u64; 4];
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                requests += v["listed"].is_u64().then(|| v["requests"].as_u64()).flatten().unwrap_or(0);
                poll_ms += (v["message"] == "Polled.").then(|| v["took_ms"].as_u64()).flatten().unwrap_or(0);
                let field = |message: &str, name: &str| {
                    (v["message"] == message).then(|| v[name].as_u64()).flatten().unwrap_or(0)
                };
                steps[0] += field("Encoded events.", "took_ms");
                steps[1] += field("Wrote pending batch.", "took_ms");
                steps[2] += field("Delivered batch.", "deliver_ms");
                steps[3] += field("Delivered batch.", "commit_ms");
            }
            all.push(line);
        }
        (requests, poll_ms, steps, all)
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `usage` outlives the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    let events = counter.join().expect("stdout reader");
    let (requests, poll_ms, steps, all) = logs.join().expect("stderr reader");
    assert!(
        pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "highwater once failed:\n{}",
        all.join("\n")
    );
    Run {
        events,
        elapsed,
        peak_rss_kib: usage.ru_maxrss,
        requests,
        poll: Duration::from_millis(poll_ms),
        steps,
    }
}

/// CPU time (user + system) of a process, in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start past the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat") + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1000.0 / hz
}

/// Runs the daemon on an idle watcher for `polls` polls after it settled; returns the
/// CPU it used over them, the polls counted, the LIST requests, and its peak RSS.
fn idle_daemon(project: &Path, polls: usize) -> (f64, usize, u64, i64) {
    let mut child = command(project, &["run"]).spawn().expect("spawn highwater run");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let message = v["message"].as_str().unwrap_or("");
                if message == "Polled." {
                    let _ = tx.send(None);
                } else if message.starts_with("Listed s3://") {
                    let _ = tx.send(v["requests"].as_u64());
                }
            }
        }
    });
    let mut seen = 0;
    let mut requests = 0;
    let mut begin = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen < polls + 5 && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(None) => {
                seen += 1;
                // The first polls load the store and build the client: not idle work.
                if seen == 5 {
                    begin = Some(cpu_ms(pid));
                }
            }
            Ok(Some(r)) if seen >= 5 => requests += r,
            Ok(Some(_)) => {}
            Err(_) => break,
        }
    }
    let end = cpu_ms(pid);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0);
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    (end - begin.unwrap_or(end), seen.saturating_sub(5), requests, rss)
}
