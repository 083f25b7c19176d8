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

#[test]
fn check_reads_the_secrets_run_reads_unless_told_to_skip_them() {
    let p = Project::default_config();
    std::fs::create_dir_all(p.path().join("in")).expect("mkdir");
    p.watcher(
        "hook",
        "source: {type: local_dir, path: in}\n\
         sink: {type: webhook, url: http://127.0.0.1:9/in, secret_env: HIGHWATER_TEST_SURELY_UNSET}\n",
    );
    let check = p.command(&["check"]).env_remove("HIGHWATER_TEST_SURELY_UNSET").output().expect("check");
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("HIGHWATER_TEST_SURELY_UNSET"), "{stderr}");
    let run = p.command(&["run"]).env_remove("HIGHWATER_TEST_SURELY_UNSET").output().expect("run");
    assert_eq!(
        run.status.code(),
        Some(78),
        "run fails the same way: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let skipped = p
        .command(&["check", "--skip-secrets"])
        .env_remove("HIGHWATER_TEST_SURELY_UNSET")
        .output()
        .expect("check");
    assert_eq!(skipped.status.code(), Some(0), "{}", String::from_utf8_lossy(&skipped.stderr));
}

#[test]
fn a_renamed_watcher_is_warned_about_and_its_state_moved_with_state_rename() {
    let p = project_with_one_watcher();
    p.write("in/a.csv", "x");
    let first = p.run(&["once"]);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(first.stdout.contains("a.csv"), "{}", first.stdout);
    // The file is renamed, and with it the watcher.
    std::fs::rename(p.path().join("watchers/orders.yaml"), p.path().join("watchers/renamed.yaml"))
        .expect("mv");
    let mut d = p.start();
    let warning = d.wait_log_where("a warning about orphaned state", |line| {
        crate::util::field(line, "orphaned").and_then(|v| v.as_u64()) == Some(1)
    });
    assert_eq!(crate::util::field_str(&warning, "watchers"), Some("default/orders"));
    // `renamed` starts from nothing: it announces a.csv again, which is what
    // `state rename` is for. Its state is then in the way, as it would be for an
    // operator who renamed the file first and moved the state second.
    d.wait_delivered("default/renamed", 1);
    d.stop();
    let refused = p.run(&["state", "rename", "default/orders", "default/renamed"]);
    assert_eq!(refused.code, Some(2), "{refused:?}");
    assert_eq!(p.run(&["state", "reset", "renamed"]).code, Some(0));
    assert_eq!(p.run(&["state", "delete", "renamed", "watermark"]).code, Some(1), "reset removed it");
    let moved = p.run(&["state", "rename", "orders", "default/renamed"]);
    assert_eq!(moved.code, Some(0), "{moved:?}");
    // The watermark moved: nothing is announced again under the new name.
    let again = p.run(&["once"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert!(!again.stdout.contains("a.csv"), "announced again: {}", again.stdout);
}
