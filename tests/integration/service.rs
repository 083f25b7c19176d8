//! Running as a service: systemd notifications, SIGHUP reload, SIGTERM, the HTTP
//! endpoints, and secrets kept out of the logs. Every test runs the real binary.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{Project, WAIT, field_str, http_get};

/// A watcher on `in/<name>` that announces files at once, polling every 100 ms.
fn fast_watcher(p: &Project, name: &str, extra: &str) {
    std::fs::create_dir_all(p.path().join("in").join(name)).expect("mkdir");
    p.watcher(
        name,
        &format!(
            "source: {{type: local_dir, path: in/{name}, min_age: 0s}}\nsink: {{type: stdout}}\npoll_interval: 100ms\n{extra}"
        ),
    );
}

/// The notification socket systemd would own: one datagram per `sd_notify` call.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { socket, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }

    /// The next message, or None after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).expect("set timeout");
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => None,
        }
    }

    /// Reads messages until one has the line `needle`; returns the messages read.
    fn until(&self, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left.max(Duration::from_millis(1))) {
                Some(message) => {
                    let found = message.lines().any(|l| l == needle);
                    seen.push(message);
                    if found {
                        return seen;
                    }
                }
                None => panic!("no {needle:?} within {timeout:?}; got {seen:?}"),
            }
        }
    }
}

fn events_of<'a>(events: &'a [serde_json::Value], watcher: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["watcher"] == watcher).collect()
}

#[test]
fn notify_ready_watchdog_and_stopping_arrive_in_order() {
    let p = Project::default_config();
    fast_watcher(&p, "a", "");
    let notify = NotifySocket::bind(p.path());
    // 200 ms: systemd would expect a ping at least every 200 ms; the daemon pings
    // every half of it.
    let mut d = p.start_with(&[("NOTIFY_SOCKET", notify.path()), ("WATCHDOG_USEC", "200000")], &[]);

    let first = notify.recv(WAIT).expect("a first notification");
    assert!(first.lines().any(|l| l == "READY=1"), "the first message is READY=1: {first:?}");
    assert!(first.contains("STATUS=1 watcher: 1 ok"), "READY carries a status line: {first:?}");
    // READY means the watchers run and the store is open.
    d.wait_polls("default/a", 1);

    for _ in 0..3 {
        notify.until("WATCHDOG=1", WAIT);
    }
    p.land("in/a/one.csv", "x");
    assert_eq!(d.events(1, WAIT)[0]["watcher"], "a");

    d.signal(libc::SIGTERM);
    let stopping = notify.until("STOPPING=1", WAIT);
    let message = stopping.last().expect("message");
    assert!(!message.contains("READY=1"));
    // The shutdown timeout (10s in this project) plus a margin: systemd's stop timeout
    // must not kill the daemon while it drains.
    assert!(message.lines().any(|l| l == "EXTEND_TIMEOUT_USEC=20000000"), "{message:?}");
    let (code, logs) = d.stop();
    assert_eq!(code, Some(0), "logs:\n{}", logs.join("\n"));
}

#[test]
fn no_ready_notification_when_the_config_is_invalid() {
    let p = Project::default_config();
    p.watcher("bad", "source: {type: local_dir, path: in, pth: x}\nsink: {type: stdout}\n");
    let notify = NotifySocket::bind(p.path());
    let mut d = p.start_with(&[("NOTIFY_SOCKET", notify.path()), ("WATCHDOG_USEC", "200000")], &[]);
    assert_eq!(d.wait(WAIT), Some(78), "config errors exit with 78 so systemd stops restarting");
    assert_eq!(notify.recv(Duration::from_millis(200)), None, "nothing is announced before a failed start");
}

#[test]
fn sighup_adds_removes_and_restarts_watchers_and_keeps_the_old_config_when_invalid() {
    let p = Project::default_config();
    fast_watcher(&p, "changed", "");
    fast_watcher(&p, "removed", "");
    fast_watcher(&p, "kept", "");
    let notify = NotifySocket::bind(p.path());
    let mut d = p.start_with(&[("NOTIFY_SOCKET", notify.path()), ("RUST_LOG", "highwater=debug")], &[]);
    notify.until("READY=1", WAIT);
    p.land("in/changed/before.csv", "x");
    p.land("in/kept/before.csv", "x");
    let first = d.events(2, WAIT);
    assert_eq!(events_of(&first, "changed").len(), 1);
    assert_eq!(events_of(&first, "kept").len(), 1);

    // Change one, remove one, add one, leave one alone.
    fast_watcher(&p, "changed", "batch_size: 7\n");
    std::fs::remove_file(p.path().join("watchers/removed.yaml")).expect("rm");
    fast_watcher(&p, "added", "");
    d.signal(libc::SIGHUP);
    d.wait_metrics("a reload applied", |m| {
        m.get("highwater_config_reloads_total", &[("result", "applied")]) == Some(1.0)
    });
    let reloaded = d.wait_log_where("with the reload's counts", |l| l.get("unchanged").is_some());
    assert_eq!(
        (&reloaded["added"], &reloaded["removed"], &reloaded["changed"], &reloaded["unchanged"]),
        (&1.into(), &1.into(), &1.into(), &1.into()),
        "{reloaded}"
    );
    let messages = notify.until("READY=1", WAIT);
    assert!(messages.iter().any(|m| m.contains("RELOADING=1")), "{messages:?}");
    let lifecycle = |d: &mut crate::util::Daemon, watcher: &str| -> Vec<String> {
        d.log_lines_where(|l| field_str(l, "watcher") == Some(watcher))
            .iter()
            .filter_map(|l| field_str(l, "lifecycle").map(str::to_string))
            .collect()
    };
    assert!(lifecycle(&mut d, "default/changed").contains(&"restarted".to_string()));
    assert!(lifecycle(&mut d, "default/kept").is_empty(), "an unchanged watcher is left alone");
    // A removed watcher finishes the poll it may have in flight before it stops.
    d.wait_log_where("of default/removed stopping", |l| {
        field_str(l, "watcher") == Some("default/removed") && field_str(l, "lifecycle") == Some("stopped")
    });

    p.land("in/added/new.csv", "x");
    p.land("in/changed/after.csv", "x");
    p.land("in/removed/ignored.csv", "x");
    p.land("in/kept/after.csv", "x");
    let second = d.events(3, WAIT);
    assert_eq!(events_of(&second, "added").len(), 1);
    // The restarted watcher continues from its stored watermark: the file it announced
    // before the reload is not announced again.
    let changed = events_of(&second, "changed");
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["item"]["relative_path"], "after.csv");
    assert_eq!(events_of(&second, "kept").len(), 1, "{second:?}");
    d.assert_idle(&[], 2);

    // An invalid config: two errors in two files. Both are logged, nothing changes.
    p.watcher("broken", "source: {type: local_dir, path: in/x, pth: y}\nsink: {type: stdout}\n");
    p.watcher(
        "added",
        "source: {type: local_dir, path: in/added}\nsink: {type: stdout}\npoll_interval: 5x\n",
    );
    d.signal(libc::SIGHUP);
    d.wait_metrics("a reload rejected", |m| {
        m.get("highwater_config_reloads_total", &[("result", "rejected")]) == Some(1.0)
    });
    let errors: Vec<String> = d
        .log_lines_where(|l| field_str(l, "level") == Some("ERROR") && l.get("span").is_none())
        .iter()
        .filter_map(|l| field_str(l, "error").map(str::to_string))
        .collect();
    assert!(errors.iter().any(|e| e.contains("broken.yaml") && e.contains("pth")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("added.yaml") && e.contains("poll_interval")), "{errors:?}");
    let messages = notify.until("READY=1", WAIT);
    assert!(messages.last().expect("message").contains("reload rejected"), "{messages:?}");
    assert!(
        !messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "no watchdog pings when systemd set no watchdog: {messages:?}"
    );
    p.land("in/added/still.csv", "x");
    let third = d.events(1, WAIT);
    assert_eq!(third[0]["watcher"], "added", "the old config keeps running");

    let (code, logs) = d.stop();
    assert_eq!(code, Some(0), "logs:\n{}", logs.join("\n"));
}

#[test]
fn sigterm_commits_delivered_batches_and_leaves_a_failing_one_pending() {
    let p = Project::default_config();
    fast_watcher(&p, "ok", "");
    std::fs::create_dir_all(p.path().join("in/stuck")).expect("mkdir");
    // The sink's path is a directory: every delivery fails and is retried.
    std::fs::create_dir_all(p.path().join("out/events.jsonl")).expect("mkdir");
    p.watcher(
        "stuck",
        "source: {type: local_dir, path: in/stuck, min_age: 0s}\nsink: {type: file, path: out/events.jsonl}\npoll_interval: 100ms\nretry: {initial: 10s, max: 10s}\n",
    );
    p.land("in/ok/a.csv", "x");
    p.land("in/stuck/b.csv", "x");
    let mut d = p.start();
    assert_eq!(d.events(1, WAIT)[0]["watcher"], "ok");
    d.wait_metrics("a failed delivery of default/stuck", |m| {
        m.get("highwater_watcher_delivery_failures_total", &[("watcher", "default/stuck"), ("kind", "retry")])
            >= Some(1.0)
    });
    let (code, logs) = d.stop();
    assert_eq!(code, Some(0), "logs:\n{}", logs.join("\n"));

    let list = p.run(&["state", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("JSON");
    let row = |name: &str| {
        list.as_array().expect("array").iter().find(|r| r["name"] == name).cloned().expect("row")
    };
    assert_eq!(row("ok")["pending_events"], 0, "the delivered batch is committed");
    assert!(row("ok")["watermark"].is_object());
    assert_eq!(row("stuck")["pending_events"], 1, "the failing batch stays pending");
    let pending = p.run(&["state", "get", "default/stuck", "pending"]);
    let pending: serde_json::Value = serde_json::from_str(&pending.stdout).expect("JSON");

    // Once the sink works, the next start delivers the pending batch with its ids and
    // announces nothing twice.
    std::fs::remove_dir(p.path().join("out/events.jsonl")).expect("rmdir");
    let mut d = p.start();
    d.wait_delivered("default/stuck", 1);
    d.assert_idle(&[], 2);
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
    let written = std::fs::read_to_string(p.path().join("out/events.jsonl")).expect("events file");
    let event: serde_json::Value = serde_json::from_str(written.trim()).expect("JSON line");
    assert_eq!(event["id"], pending["events"][0]["id"]);
}

#[test]
fn metrics_healthz_and_readyz() {
    let p = Project::new(
        "watchers_dir: watchers\nstate: {type: sqlite, path: state/highwater.db}\nhttp: {listen: 127.0.0.1:0}\n",
    );
    fast_watcher(&p, "a", "");
    // A missing directory puts its watcher in the error state.
    p.watcher(
        "missing",
        "source: {type: local_dir, path: in/nowhere}\nsink: {type: stdout}\npoll_interval: 100ms\n",
    );
    p.land("in/a/one.csv", "x");
    p.land("in/a/two.csv", "x");
    let mut d = p.start();
    let addr = d.http_addr();
    d.events(2, WAIT);
    d.wait_state("default/missing", "error");

    let (status, _, body) = http_get(&addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = http_get(&addr, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ready\n"), "an error state is not a block");

    // Counters are read at scrape time; the delivery above may still be committing.
    d.wait_delivered("default/a", 2);
    let (status, content_type, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    for expected in [
        "highwater_watchers 2",
        "# TYPE highwater_watcher_polls_total counter",
        "highwater_watcher_items_found_total{watcher=\"default/a\"} 2",
        "highwater_watcher_items_skipped_total{watcher=\"default/a\"} 0",
        "highwater_watcher_events_delivered_total{watcher=\"default/a\"} 2",
        "highwater_watcher_delivery_failures_total{watcher=\"default/a\",kind=\"retry\"} 0",
        "highwater_watcher_delivery_failures_total{watcher=\"default/a\",kind=\"permanent\"} 0",
        "highwater_watcher_pending_events{watcher=\"default/a\"} 0",
        "# TYPE highwater_poll_duration_seconds histogram",
        "highwater_poll_duration_seconds_bucket{le=\"+Inf\"}",
        "highwater_watcher_lag_seconds{watcher=\"default/a\"} 0",
        "highwater_watcher_backlog_events{watcher=\"default/a\"} 0",
        "highwater_watcher_dead_letters{watcher=\"default/a\"} 0",
        "highwater_watcher_poll_interval_seconds{watcher=\"default/a\"} 0.1",
        "highwater_watcher_watermark_age_seconds{watcher=\"default/a\"}",
        "highwater_watcher_last_delivery_timestamp_seconds{watcher=\"default/a\"}",
        "highwater_watcher_state{watcher=\"default/a\",state=\"ok\"} 1",
        "highwater_watcher_state{watcher=\"default/a\",state=\"blocked\"} 0",
        "highwater_watcher_state{watcher=\"default/missing\",state=\"error\"} 1",
        "highwater_config_reloads_total{result=\"rejected\"} 0",
    ] {
        assert!(metrics.contains(expected), "no {expected:?} in\n{metrics}");
    }
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("highwater_watcher_poll_errors_total{watcher=\"default/missing\"} "))
        .and_then(|v| v.parse().ok())
        .expect("poll errors of the missing directory");
    assert!(errors >= 1);
    let (status, _, _) = http_get(&addr, "/nothing");
    assert_eq!(status, 404);

    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn secrets_from_the_environment_never_reach_the_logs() {
    const SECRET: &str = "s3cr3t-Tr0ub4dor";
    let p = Project::default_config();
    std::fs::create_dir_all(p.path().join("in/a")).expect("mkdir");
    // The secret is part of the sink's path, which is what a token in a URL would be.
    p.watcher(
        "a",
        "source: {type: local_dir, path: in/a, min_age: 0s}\nsink: {type: file, path: \"out/${HW_TEST_SECRET}/events.jsonl\"}\npoll_interval: 100ms\n",
    );
    p.land("in/a/one.csv", "x");
    let mut d = p.start_with(&[("HW_TEST_SECRET", SECRET), ("RUST_LOG", "trace")], &[]);
    d.wait_delivered("default/a", 1);
    // A reload with the secret in a value of the wrong type: the error is logged.
    p.watcher(
        "b",
        "source: {type: local_dir, path: in/b}\nsink: {type: stdout}\nbatch_size: \"${HW_TEST_SECRET}\"\n",
    );
    d.signal(libc::SIGHUP);
    d.wait_metrics("a reload rejected", |m| {
        m.get("highwater_config_reloads_total", &[("result", "rejected")]) == Some(1.0)
    });
    let (code, logs) = d.stop();
    assert_eq!(code, Some(0));
    assert!(std::fs::read_to_string(p.path().join(format!("out/{SECRET}/events.jsonl"))).is_ok());
    assert!(logs.len() > 5, "trace logging produced lines");
    let leaks: Vec<&String> = logs.iter().filter(|l| l.contains(SECRET)).collect();
    assert!(
        leaks.is_empty(),
        "the secret appears in the logs:\n{}",
        leaks.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn install_script_lays_out_a_packaged_install_whose_config_is_valid() {
    let stage = tempfile::tempdir().expect("tempdir");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(root.join("scripts/install.sh"))
        .env("DESTDIR", stage.path())
        .env("PREFIX", "/usr")
        .env("HIGHWATER_BIN", crate::util::bin())
        .status()
        .expect("run install.sh");
    assert!(status.success());
    for file in [
        "usr/bin/highwater",
        "etc/highwater/highwater.yaml",
        "usr/lib/systemd/system/highwater.service",
        "usr/lib/sysusers.d/highwater.conf",
        "usr/share/doc/highwater/README.md",
        "usr/share/doc/highwater/docs/operations.md",
        "usr/share/doc/highwater/docs/reference/config.md",
    ] {
        assert!(stage.path().join(file).is_file(), "{file} is installed");
    }
    assert!(stage.path().join("etc/highwater/watchers").is_dir());
    let unit =
        std::fs::read_to_string(stage.path().join("usr/lib/systemd/system/highwater.service")).expect("unit");
    assert!(!unit.contains("/usr/local"), "every path follows PREFIX");
    assert!(unit.contains("ExecStart=/usr/bin/highwater --config /etc/highwater/highwater.yaml run"));
    assert!(unit.contains("RestartPreventExitStatus=78"));
    // `check` in ExecStartPre= restarted an invalid config without end: `run` checks.
    assert!(!unit.lines().any(|l| l.starts_with("ExecStartPre=")), "{unit}");
    assert!(unit.contains("LimitNOFILE="));

    // The packaged config is valid once its absolute paths point into the stage, and
    // the example watcher is valid too.
    let config = std::fs::read_to_string(stage.path().join("etc/highwater/highwater.yaml")).expect("config");
    let etc = stage.path().join("etc/highwater");
    let config = config
        .replace("/etc/highwater", etc.to_str().expect("utf-8"))
        .replace("/var/lib/highwater", stage.path().join("state").to_str().expect("utf-8"));
    std::fs::write(etc.join("highwater.yaml"), config).expect("write");
    std::fs::copy(
        stage.path().join("usr/share/doc/highwater/example-watcher.yaml"),
        etc.join("watchers/orders.yaml"),
    )
    .expect("copy example");
    let out = std::process::Command::new(stage.path().join("usr/bin/highwater"))
        .args(["--config", etc.join("highwater.yaml").to_str().expect("utf-8"), "check"])
        .output()
        .expect("run check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_http_address_in_use_stops_the_start_with_exit_71() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let p = Project::new(&format!(
        "watchers_dir: watchers\nstate: {{type: sqlite, path: state/highwater.db}}\nhttp: {{listen: \"{addr}\"}}\n"
    ));
    fast_watcher(&p, "a", "");
    let notify = NotifySocket::bind(p.path());
    let mut d = p.start_with(&[("NOTIFY_SOCKET", notify.path())], &[]);
    assert_eq!(d.wait(WAIT), Some(71));
    // The reason names the setting (on the last line, the error `main` prints).
    d.drain_logs();
    assert!(d.logs.iter().any(|l| l.contains("http.listen")), "logs:\n{}", d.logs.join("\n"));
    assert_eq!(notify.recv(Duration::from_millis(200)), None, "never ready");
}

/// Reads until the server closes the connection (or `WAIT` passes, a failure); true
/// when it closed it.
fn closed_by_server(stream: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_half_sent_connections_are_closed_and_capped() {
    use std::io::Write;
    let p = Project::new(
        "watchers_dir: watchers\nstate: {type: sqlite, path: state/highwater.db}\n\
         http: {listen: 127.0.0.1:0, idle_timeout: 2s, max_connections: 3}\n",
    );
    fast_watcher(&p, "a", "");
    let mut d = p.start();
    let addr = d.http_addr();
    // Three connections take every slot: one idle, one with half its headers sent,
    // one that got an answer and stays open (keep-alive).
    let mut idle = std::net::TcpStream::connect(&addr).expect("connect");
    let mut half = std::net::TcpStream::connect(&addr).expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("send");
    let mut kept = std::net::TcpStream::connect(&addr).expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    // The fourth is refused: closed as soon as it is accepted.
    let mut fourth = std::net::TcpStream::connect(&addr).expect("connect");
    assert!(closed_by_server(&mut fourth), "a connection over the cap stays open");
    // The idle timeout closes the other three, which frees the slots.
    for (what, stream) in [("idle", &mut idle), ("half-sent", &mut half), ("kept-alive", &mut kept)] {
        assert!(closed_by_server(stream), "the {what} connection was not closed");
    }
    let (status, _, metrics) = http_get(&addr, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("highwater_http_connections_refused_total 1\n"), "{metrics}");
    d.stop();
}
