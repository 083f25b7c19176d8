//! The command line at its edges: unknown or invalid watcher names, read-only commands
//! on a store that does not exist, and standard output or error closed by the reader.

use std::io::Read;
use std::process::Stdio;

use crate::util::{Project, WAIT};

fn project_with_one_watcher() -> Project {
    let p = Project::default_config();
    std::fs::create_dir_all(p.path().join("in")).expect("mkdir");
    p.watcher(
        "orders",
        "source: {type: local_dir, path: in, min_age: 0s}\nsink: {type: stdout}\npoll_interval: 100ms\n",
    );
    p
}

#[test]
fn unknown_and_invalid_watcher_names_are_usage_errors_that_change_nothing() {
    let p = project_with_one_watcher();
    assert_eq!(p.run(&["state", "set", "orders", "watermark", "1"]).code, Some(0));
    for args in [
        &["once", "pol/typo"][..],
        &["once", "x/y/z"],
        &["state", "get", "pol/typo"],
        &["state", "set", "evil/na/me", "watermark", "1"],
        &["state", "set", "default/typo", "watermark", "1"],
        &["state", "reset", "typo"],
    ] {
        let out = p.run(args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("watcher"), "{args:?}: {}", out.stderr);
    }
    let out = p.run(&["once", "pol/typo"]);
    assert!(out.stderr.contains("known watchers: default/orders"), "{}", out.stderr);
    // Nothing was written for any of them.
    let list = p.run(&["state", "list", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&list.stdout).expect("json");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["orders"]);
}

#[test]
fn read_only_state_commands_do_not_create_the_store() {
    let p = project_with_one_watcher();
    let db = p.path().join("state/highwater.db");
    let list = p.run(&["state", "list"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    assert!(list.stdout.contains("default/orders"), "configured watchers are listed: {}", list.stdout);
    let get = p.run(&["state", "get", "orders"]);
    assert_eq!(get.code, Some(1), "{get:?}");
    assert!(get.stderr.contains("no state yet"), "{}", get.stderr);
    assert!(!db.exists(), "a read-only command created {}", db.display());
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let p = project_with_one_watcher();
    // More than a pipe's buffer in all, so that the writer is still writing when the
    // reader closes its end (one argument may hold at most 128 KiB).
    let big = format!("\"{}\"", "x".repeat(100_000));
    for key in ["k1", "k2", "k3", "k4"] {
        assert_eq!(p.run(&["state", "set", "orders", key, &big]).code, Some(0));
    }
    let mut child = p
        .command(&["state", "get", "orders"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 20];
    stdout.read_exact(&mut first).expect("read the start");
    drop(stdout);
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn a_closed_standard_error_does_not_stop_the_daemon() {
    let p = project_with_one_watcher();
    let mut child =
        p.command(&["run"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn run");
    // The reader of the logs goes away at once; every log line after it fails to write.
    drop(child.stderr.take());
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    p.write("in/a.csv", "x");
    // The event (logged around too) still arrives: the daemon is alive.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut stdout, &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).expect("an event after standard error closed");
    assert!(line.contains("a.csv"), "{line}");
    // SAFETY: kill(2) on the child's pid, which the test owns and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "the daemon stopped cleanly, not with a panic (101)");
}
