//! Bytes the state store writes per committed batch, with 1,000 and with 100,000 files
//! remembered, next to the bytes of the batch's events: the real daemon (`highwater
//! run`), a `local_dir` watcher, the SQLite store, `stdout` as the sink.
//!
//! Run: `cargo bench --bench store` (optionally `-- ROUNDS`, default 1200). For each size
//! the bench lands that many files and lets the daemon announce them (they stay
//! remembered: the look-back window is long), checkpoints the WAL from outside, then
//! lands ROUNDS batches of 100 new files, each once the one before was announced, and
//! reads the daemon's `/proc/<pid>/io` before the first and once the last is
//! committed (enough rounds that two of the WAL's own checkpoints, one per 64 MB of
//! log, about 500 batches, fall inside the measurement):
//! `write_bytes` (what reached the file system's page cache for writing: the WAL and
//! the database file; the events go to a pipe and are not in it) and `wchar` (every
//! byte handed to `write`, the events on standard output included). Numbers depend on
//! the machine; the ratios are what to compare.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Files per measured batch.
const BATCH: usize = 100;

/// The counters of `/proc/<pid>/io` the bench reads.
#[derive(Debug, Clone, Copy, Default)]
struct Io {
    wchar: u64,
    write_bytes: u64,
}

fn io_of(pid: u32) -> Io {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/<pid>/io");
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/io"))
    };
    Io { wchar: field("wchar:"), write_bytes: field("write_bytes:") }
}

/// The daemon's counters once `write_bytes` stops moving: its last commit is done (an
/// idle poll writes nothing to the store; `wchar` keeps creeping up by a few bytes, the
/// runtime's wake-ups).
fn settled(pid: u32) -> Io {
    let mut last = io_of(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = io_of(pid);
        if now.write_bytes == last.write_bytes {
            return now;
        }
        last = now;
    }
}

/// Lands `n` files of about 60 bytes under `dir/sub`, a hundred per directory.
fn land(dir: &Path, sub: &str, n: usize) {
    for i in 0..n {
        let d = dir.join(sub).join(format!("{:05}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&d).expect("mkdir");
        }
        std::fs::write(
            d.join(format!("part-{i:06}.csv")),
            format!("id,amount,comment\n{i},{},landed\n", i * 7),
        )
        .expect("write file");
    }
}

/// A running daemon, its standard output read line by line (one event each).
struct Daemon {
    child: Child,
    lines: Receiver<usize>,
}

impl Daemon {
    fn start(project: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_highwater"))
            .current_dir(project)
            .args(["run"])
            .env("HIGHWATER_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start highwater");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line.len() + 1).is_err() {
                    break;
                }
            }
        });
        Daemon { child, lines }
    }

    /// Waits for `n` events; returns their bytes.
    fn events(&self, n: usize) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut bytes = 0;
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            bytes += self.lines.recv_timeout(left).expect("events from the daemon") as u64;
        }
        bytes
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One size: per measured batch, (write_bytes, wchar, event bytes), averaged.
fn measure(remembered: usize, rounds: usize) -> (f64, f64, f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path();
    std::fs::create_dir_all(project.join("config")).expect("mkdir");
    std::fs::create_dir_all(project.join("watchers")).expect("mkdir");
    std::fs::write(
        project.join("config/highwater.yaml"),
        "watchers_dir: watchers\nstate: {type: sqlite, path: state/highwater.db}\n",
    )
    .expect("config");
    std::fs::write(
        project.join("watchers/landing.yaml"),
        "namespace: bench\nname: landing\n\
         source: {type: local_dir, path: landing, min_age: 0s, lookback: 3000d, max_remembered: 1000000, max_per_poll: 100000}\n\
         sink: {type: stdout}\npoll_interval: 100ms\nbatch_size: 10000\n",
    )
    .expect("watcher");
    let started = Instant::now();
    land(&project.join("landing"), "base", remembered);
    let landed = started.elapsed();
    let daemon = Daemon::start(project);
    daemon.events(remembered);
    let announced = started.elapsed();
    settled(daemon.child.id());
    // What landing the files wrote to the WAL goes to the database file now, from this
    // process: the measured batches then pay for their own pages only, checkpoints
    // included.
    let db = rusqlite::Connection::open(project.join("state/highwater.db")).expect("open the store");
    db.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).expect("checkpoint");
    drop(db);
    let before = settled(daemon.child.id());
    eprintln!(
        "  {remembered} files landed in {:.1}s, announced by {:.1}s, committed by {:.1}s",
        landed.as_secs_f64(),
        announced.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let mut event_bytes = 0u64;
    for round in 0..rounds {
        land(&project.join("landing"), &format!("round-{round:04}"), BATCH);
        event_bytes += daemon.events(BATCH);
    }
    let after = settled(daemon.child.id());
    let (write_bytes, wchar) = (after.write_bytes - before.write_bytes, after.wchar - before.wchar);
    let db = std::fs::metadata(project.join("state/highwater.db")).map_or(0, |m| m.len());
    let per = |total: u64| total as f64 / rounds as f64;
    (per(write_bytes), per(wchar) - per(event_bytes), per(event_bytes), db as f64)
}

fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1200);
    println!("highwater store benchmark: bytes written per committed batch of {BATCH} new files");
    println!("reproduce: cargo bench --bench store -- {rounds}");
    println!(
        "machine: {} CPUs (shared; compare ratios, not absolute numbers)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!();
    let mut rows = Vec::new();
    for remembered in [1_000usize, 100_000] {
        eprintln!("measuring with {remembered} files remembered ({rounds} batches)...");
        rows.push((remembered, measure(remembered, rounds)));
    }
    println!(
        "{:<22} {:>16} {:>18} {:>14} {:>18} {:>12}",
        "remembered files",
        "write_bytes/batch",
        "other wchar/batch",
        "event bytes",
        "write_bytes/events",
        "database"
    );
    for (remembered, (write_bytes, wchar, events, db)) in &rows {
        println!(
            "{:<22} {:>16.0} {:>18.0} {:>14.0} {:>17.2}x {:>10.1}MB",
            remembered,
            write_bytes,
            wchar,
            events,
            write_bytes / events,
            db / 1e6
        );
    }
    let (small, large) = (rows[0].1.0, rows[1].1.0);
    println!();
    println!("write_bytes per batch at 100k remembered / at 1k: {:.2}x (goal: at most 1.2x)", large / small);
    println!("write_bytes per batch at 100k / event bytes: {:.2}x (goal: at most 4x)", large / rows[1].1.2);
}
