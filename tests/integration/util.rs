//! Shared test helpers: a scratch project directory, the binary, a running daemon whose
//! standard output (events) and standard error (JSON log lines) are read line by line,
//! its `/metrics` counters, and a probe of its SQLite store.
//!
//! Tests wait on what the daemon reports, never on time passing: on a metric (the poll
//! counter moved, a batch was delivered), or on a log line's structured fields. "Nothing
//! happened" is asserted as "N more polls happened and found nothing" ([`Daemon::assert_idle`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a helper waits for what it waits on before failing the test. Generous: the
/// machine is shared, and a wait that succeeds returns as soon as its condition holds.
pub const WAIT: Duration = Duration::from_secs(30);

/// The `highwater` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_highwater"))
}

/// Calls `probe` until it returns `Some`, failing with `what` after `timeout`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lands files in `dir` that tie on what a `local_dir` source orders by: one
/// modification time a little in the future, later than the files' inode change times
/// (the source takes the later of the two), so that they settle together once it comes.
/// Each is written under a hidden name and renamed when its time is set (as uploaders
/// that rename when done do), so that no poll sees it before.
pub fn land_tied_files(dir: &Path, files: &[(&str, &str)]) {
    let at = std::time::SystemTime::now() + Duration::from_millis(300);
    for (name, contents) in files {
        land_at(dir, name, contents, Some(at));
    }
}

/// Lands the file `name` in `dir` whole (creating `dir`): written under the hidden name
/// `.<name>.landing` in `dir` and renamed, so that no poll sees it empty (a `local_dir`
/// watcher with `min_age: 0s` would announce that as a generation of its own). For a
/// plain directory where no [`Project`] is at hand; the watcher of `dir` must not set
/// `include_hidden`, or it could announce the hidden name. `name` is a file name, not a
/// path.
pub fn land_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    land_at(dir, name, contents, None)
}

/// Writes `dir/.<name>.landing`, gives it the modification time `modified` (if any) and
/// renames it to `dir/<name>`.
fn land_at(dir: &Path, name: &str, contents: &str, modified: Option<std::time::SystemTime>) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let hidden = dir.join(format!(".{name}.landing"));
    std::fs::write(&hidden, contents).expect("write");
    if let Some(at) = modified {
        let file = std::fs::File::options().write(true).open(&hidden).expect("open");
        file.set_modified(at).expect("set mtime");
    }
    let path = dir.join(name);
    std::fs::rename(&hidden, &path).expect("rename into place");
    path
}

/// A scratch directory laid out like a deployment: `config/highwater.yaml`,
/// `watchers/`, the state file, and whatever the test adds.
pub struct Project {
    pub dir: tempfile::TempDir,
}

/// The daemon file most tests use: SQLite state in the project, and the metrics
/// listener on a port the kernel picks (the daemon logs the address it bound), so that
/// tests can read the poll counter.
pub const DEFAULT_CONFIG: &str = "watchers_dir: watchers\nstate:\n  type: sqlite\n  path: state/highwater.db\n\
     shutdown_timeout: 10s\nhttp:\n  listen: 127.0.0.1:0\n";

impl Project {
    /// A project whose daemon file is `daemon_yaml`.
    pub fn new(daemon_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("config")).expect("mkdir config");
        std::fs::create_dir_all(dir.path().join("watchers")).expect("mkdir watchers");
        std::fs::write(dir.path().join("config/highwater.yaml"), daemon_yaml).expect("write config");
        Project { dir }
    }

    /// A project with [`DEFAULT_CONFIG`].
    pub fn default_config() -> Self {
        Project::new(DEFAULT_CONFIG)
    }

    /// The project's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `watchers/<name>.yaml`.
    pub fn watcher(&self, name: &str, yaml: &str) {
        std::fs::write(self.path().join("watchers").join(format!("{name}.yaml")), yaml)
            .expect("write watcher");
    }

    /// Writes a file relative to the project, creating directories.
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// Lands a file at `relative` whole: written outside the watched directories, then
    /// renamed into place, so that no poll sees it empty (a `local_dir` watcher with
    /// `min_age: 0s` would announce that as a generation of its own).
    pub fn land(&self, relative: &str, contents: &str) -> PathBuf {
        let aside = self.write(&format!(".landing/{}", relative.replace('/', "_")), contents);
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::rename(&aside, &path).expect("rename into place");
        path
    }

    /// A `highwater` command run in the project directory with `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path())
            .args(args)
            .env("HIGHWATER_LOG_FORMAT", "json")
            .env_remove("HIGHWATER_CONFIG");
        cmd
    }

    /// Runs `highwater args…` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run highwater");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `highwater run` in the background.
    pub fn start(&self) -> Daemon {
        self.start_with(&[], &[])
    }

    /// Starts `highwater run` with extra environment variables and arguments.
    pub fn start_with(&self, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut cmd = self.command(&["run"]);
        cmd.args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn highwater run");
        let (stdout, out_reader) = lines_of(child.stdout.take().expect("stdout"));
        let (stderr, err_reader) = lines_of(child.stderr.take().expect("stderr"));
        Daemon {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            logs: Vec::new(),
            http_addr: None,
        }
    }

    /// A read-only view of the project's SQLite store (the daemon's `state/highwater.db`).
    pub fn store(&self) -> StoreProbe {
        StoreProbe::open(&self.path().join("state/highwater.db"))
    }
}

/// A thread that passes on every line of `from` until it ends.
fn lines_of(from: impl Read + Send + 'static) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A field of a JSON log line: the event's own fields first, then those of the span it
/// was logged in (a watcher's lines carry `span.watcher`, e.g. `"default/a"`).
pub fn field<'a>(line: &'a Value, key: &str) -> Option<&'a Value> {
    line.get(key).or_else(|| line.get("span").and_then(|span| span.get(key)))
}

/// A field of a JSON log line as text (None when absent or not a string).
pub fn field_str<'a>(line: &'a Value, key: &str) -> Option<&'a str> {
    field(line, key).and_then(Value::as_str)
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// The threads reading stdout and stderr; joined once the process has exited, so
    /// that every line it wrote has been passed on.
    readers: Vec<JoinHandle<()>>,
    /// Log lines read so far.
    pub logs: Vec<String>,
    /// The address of the daemon's HTTP listener, once read from its log.
    http_addr: Option<String>,
}

impl Daemon {
    /// Reads `n` stdout lines, parsed as JSON, or panics after `timeout`.
    pub fn events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain_logs();
                    panic!("got {} of {n} events in {timeout:?}; logs:\n{}", out.len(), self.logs.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain_logs();
                    panic!("daemon exited after {} of {n} events; logs:\n{}", out.len(), self.logs.join("\n"))
                }
            }
        }
        out
    }

    /// Every event written so far and not yet read (all of them, once the process has
    /// exited and [`Self::wait`] returned).
    pub fn events_written(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(line) = self.stdout.try_recv() {
            out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")));
        }
        out
    }

    /// Waits for the first JSON log line (of those read so far, then of new ones) for
    /// which `matches` holds, and returns it parsed; `what` says what was awaited when
    /// none comes.
    pub fn wait_log_where(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let parse = |line: &str| serde_json::from_str::<Value>(line).ok();
        if let Some(found) = self.logs.iter().filter_map(|l| parse(l)).find(|l| matches(l)) {
            return found;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let parsed = parse(&line);
                    self.logs.push(line);
                    if let Some(parsed) = parsed.filter(|l| matches(l)) {
                        return parsed;
                    }
                }
                Err(_) => panic!("no log line {what} in {WAIT:?}; logs:\n{}", self.logs.join("\n")),
            }
        }
    }

    /// Waits for a JSON log line whose field `key` (see [`field`]) equals `value`.
    pub fn wait_log_field(&mut self, key: &str, value: impl Into<Value>) -> Value {
        let value = value.into();
        self.wait_log_where(&format!("with {key} = {value}"), |line| field(line, key) == Some(&value))
    }

    /// The JSON log lines read so far (after taking in what is waiting) for which
    /// `matches` holds.
    pub fn log_lines_where(&mut self, matches: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.drain_logs();
        self.logs
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| matches(l))
            .collect()
    }

    /// Collects the log lines written so far.
    pub fn drain_logs(&mut self) -> &[String] {
        while let Ok(line) = self.stderr.try_recv() {
            self.logs.push(line);
        }
        &self.logs
    }

    /// The address of the daemon's HTTP listener (`http.listen`, port 0 in
    /// [`DEFAULT_CONFIG`]), from the `addr` field of the line it logs once bound.
    pub fn http_addr(&mut self) -> String {
        if let Some(addr) = &self.http_addr {
            return addr.clone();
        }
        let line = self.wait_log_where("with the HTTP listener's addr (is http.listen set?)", |line| {
            field_str(line, "addr").is_some()
        });
        let addr = field_str(&line, "addr").expect("addr").to_string();
        self.http_addr = Some(addr.clone());
        addr
    }

    /// A scrape of `/metrics`.
    pub fn metrics(&mut self) -> Metrics {
        let addr = self.http_addr();
        let (status, _, body) = http_get(&addr, "/metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Scrapes `/metrics` until `holds` is true of a scrape, and returns that scrape.
    pub fn wait_metrics(&mut self, what: &str, holds: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.metrics();
            if holds(&metrics) {
                return metrics;
            }
            if Instant::now() > deadline {
                self.drain_logs();
                panic!(
                    "{what}: not within {WAIT:?}; metrics:\n{}\nlogs:\n{}",
                    metrics.text,
                    self.logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `watcher`'s counter `name` (e.g. `highwater_watcher_polls_total`)
    /// reaches at least `at_least`, and returns the scrape that showed it.
    pub fn wait_counter(&mut self, watcher: &str, name: &str, at_least: u64) -> Metrics {
        self.wait_metrics(&format!("{name} of {watcher} reaching {at_least}"), |m| {
            m.watcher(name, watcher) >= at_least
        })
    }

    /// Waits until `watcher` polled `n` more times than it had when called.
    pub fn wait_polls(&mut self, watcher: &str, n: u64) -> Metrics {
        let now = self.metrics().watcher(POLLS, watcher);
        self.wait_counter(watcher, POLLS, now + n)
    }

    /// Waits until the sink of `watcher` acknowledged `total` events since the start.
    pub fn wait_delivered(&mut self, watcher: &str, total: u64) -> Metrics {
        self.wait_counter(watcher, DELIVERED, total)
    }

    /// Waits until `watcher` is in `state` (`ok`, `retrying`, `blocked`, `error`).
    pub fn wait_state(&mut self, watcher: &str, state: &str) -> Metrics {
        self.wait_metrics(&format!("{watcher} in state {state}"), |m| {
            m.get("highwater_watcher_state", &[("watcher", watcher), ("state", state)]) == Some(1.0)
        })
    }

    /// Asserts that nothing new happens: each of `watchers` (every running watcher when
    /// empty) completes `polls` whole polls that find nothing and deliver nothing, and no
    /// event reaches standard output. This is what "no event within N ms" means to say,
    /// without the chance of passing because the daemon never polled.
    ///
    /// The first poll after the call may have begun before it; the `polls` counted start
    /// after that one, so anything found by a poll under way when this is called (that
    /// was not delivered yet) also fails the assertion.
    pub fn assert_idle(&mut self, watchers: &[&str], polls: u64) {
        let watchers: Vec<String> = if watchers.is_empty() {
            self.metrics().watchers()
        } else {
            watchers.iter().map(|w| w.to_string()).collect()
        };
        assert!(!watchers.is_empty(), "no watcher is running");
        let mut baselines = Vec::new();
        for watcher in &watchers {
            // One poll first: whatever cycle was under way has delivered and committed.
            let metrics = self.wait_polls(watcher, 1);
            baselines.push(Counts::of(&metrics, watcher));
        }
        for (watcher, before) in watchers.iter().zip(&baselines) {
            let metrics = self.wait_counter(watcher, POLLS, before.polls + polls);
            let after = Counts::of(&metrics, watcher);
            assert_eq!(
                (after.items_found, after.delivered, after.pending),
                (before.items_found, before.delivered, 0),
                "{watcher} was expected to be idle for {polls} polls, but found, delivered or held \
                 events (found, delivered, pending: before {before:?}, after {after:?})"
            );
        }
        // A delivery writes its line before the cycle ends, so before the polls above.
        if let Ok(line) = self.stdout.try_recv() {
            panic!("unexpected event while idle: {line}");
        }
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we own, with a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGTERM, then waits for the exit code; returns it with every log line.
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.wait(WAIT);
        self.drain_logs();
        (status, std::mem::take(&mut self.logs))
    }

    /// Waits for exit, killing the process after `timeout`. Once it has exited, every
    /// line it wrote is ready to be read (`drain_logs`, `events`).
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The pipes close with the process: the readers have passed on
                // everything once they end.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `highwater_watcher_polls_total`: polls that returned (with or without items).
pub const POLLS: &str = "highwater_watcher_polls_total";
/// `highwater_watcher_items_found_total`: items polls found.
pub const FOUND: &str = "highwater_watcher_items_found_total";
/// `highwater_watcher_events_delivered_total`: events the sink acknowledged.
pub const DELIVERED: &str = "highwater_watcher_events_delivered_total";
/// `highwater_watcher_poll_errors_total`: polls that failed.
pub const POLL_ERRORS: &str = "highwater_watcher_poll_errors_total";

/// One watcher's counters that say whether anything happened.
#[derive(Debug, Clone, Copy)]
struct Counts {
    polls: u64,
    items_found: u64,
    delivered: u64,
    pending: u64,
}

impl Counts {
    fn of(metrics: &Metrics, watcher: &str) -> Counts {
        Counts {
            polls: metrics.watcher(POLLS, watcher),
            items_found: metrics.watcher(FOUND, watcher),
            delivered: metrics.watcher(DELIVERED, watcher),
            pending: metrics.watcher("highwater_watcher_pending_events", watcher),
        }
    }
}

/// A scrape of `/metrics` in the Prometheus text format.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The scrape as served.
    pub text: String,
    /// Every sample: name, labels, value.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text format (the subset the daemon writes: no escapes in label values
    /// other than none being needed, no timestamps).
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("metric line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("metric value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels in {line:?}"));
                    let labels = labels
                        .split(',')
                        .filter(|l| !l.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("label in {line:?}"));
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics { text: text.to_string(), samples }
    }

    /// The value of the one sample `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.samples.iter().filter(|(n, l, _)| {
            n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        });
        let first = found.next().map(|(_, _, v)| *v);
        assert!(found.next().is_none(), "several samples {name} {labels:?} in\n{}", self.text);
        first
    }

    /// A counter or gauge of `watcher` as a whole number (0 while absent).
    pub fn watcher(&self, name: &str, watcher: &str) -> u64 {
        self.get(name, &[("watcher", watcher)]).unwrap_or(0.0) as u64
    }

    /// The watchers the scrape reports on.
    pub fn watchers(&self) -> Vec<String> {
        self.samples
            .iter()
            .filter(|(n, _, _)| n == POLLS)
            .filter_map(|(_, l, _)| l.get("watcher").cloned())
            .collect()
    }
}

/// `GET path` on `addr` over a plain connection: (status, content type, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_string))
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// A TCP port on 127.0.0.1 that refuses connections for as long as this lives: a
/// socket bound to it that never listens. Unlike a port bound and released, nobody
/// else can take it in the meantime.
pub struct ClosedPort {
    fd: i32,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        // SAFETY: plain socket calls on a descriptor this function owns; `addr` is a
        // valid sockaddr_in of the size passed.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            addr.sin_port = 0;
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut len = len;
            let rc = libc::getsockname(fd, (&raw mut bound).cast(), &mut len);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort { fd, port: u16::from_be(bound.sin_port) }
        }
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor `new` opened, once.
        unsafe { libc::close(self.fd) };
    }
}

/// A read-only look at a project's SQLite store, to tell whether the daemon wrote to it.
pub struct StoreProbe {
    connection: rusqlite::Connection,
}

impl StoreProbe {
    pub fn open(path: &Path) -> StoreProbe {
        let connection =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        StoreProbe { connection }
    }

    /// Changes whenever another connection (the daemon's) commits a write; stays the
    /// same across any number of transactions that write nothing.
    pub fn data_version(&self) -> i64 {
        self.connection.query_row("PRAGMA data_version", [], |row| row.get(0)).expect("PRAGMA data_version")
    }

    /// Every row of every table, as text: what to show when the store changed.
    pub fn dump(&self) -> String {
        let mut tables = self
            .connection
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .expect("list tables");
        let names: Vec<String> =
            tables.query_map([], |row| row.get(0)).expect("tables").map(|n| n.expect("name")).collect();
        let mut out = String::new();
        for name in names {
            out.push_str(&format!("-- {name}\n"));
            let mut rows =
                self.connection.prepare(&format!("SELECT * FROM \"{name}\"")).expect("select table");
            let columns = rows.column_count();
            let mut query = rows.query([]).expect("rows");
            while let Some(row) = query.next().expect("row") {
                let cells: Vec<String> = (0..columns)
                    .map(|i| match row.get_ref(i).expect("cell") {
                        rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        other => format!("{other:?}"),
                    })
                    .collect();
                out.push_str(&cells.join(" | "));
                out.push('\n');
            }
        }
        out
    }
}
