//! The SQLite store at its edges, with real processes and real faults: processes
//! creating one database at once, a second daemon on the same file, a store that
//! cannot be written at start or stops taking writes while the daemon runs (an
//! immutable file, `chattr +i`, needs root), a database moved away, the modes of the
//! files it creates, and purging old dead letters.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Project, WAIT, eventually, field, field_str, http_get};

/// A project with one fast `local_dir` watcher `t/inbox` on `inbox/`, to stdout.
fn project() -> Project {
    let p = Project::default_config();
    std::fs::create_dir_all(p.path().join("inbox")).expect("mkdir");
    p.watcher(
        "inbox",
        "namespace: t\nname: inbox\nsource: {type: local_dir, path: inbox, min_age: 0s}\n\
         sink: {type: stdout}\npoll_interval: 100ms\nretry: {initial: 100ms, max: 1s}\n",
    );
    p
}

fn db(p: &Project) -> PathBuf {
    p.path().join("state/highwater.db")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// Sets or clears the immutable attribute of `paths` (root only: it is what makes a
/// file unwritable to root, who ignores file modes).
fn immutable(on: bool, paths: &[PathBuf]) {
    let status = Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .args(paths)
        .status()
        .expect("chattr (e2fsprogs) is needed by this test");
    assert!(status.success(), "chattr {on} {paths:?} (needs root and a file system with attributes)");
}

/// Clears the immutable attribute again when a test ends, however it ends: the scratch
/// directory could not be removed otherwise.
struct Mutable(Vec<PathBuf>);

impl Drop for Mutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

#[test]
fn processes_creating_a_new_database_at_once_all_succeed() {
    let p = project();
    // Each round races four processes on a file that does not exist yet; before the
    // migration re-read the version under the write lock, most rounds failed one with
    // "migration 1 failed: table process_state already exists".
    for round in 0..30 {
        let _ = std::fs::remove_dir_all(p.path().join("state"));
        let children: Vec<_> = (0..4)
            .map(|i| {
                p.command(&["state", "set", "t/inbox", &format!("note{i}"), "1"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("wait");
            assert!(
                out.status.success(),
                "round {round}: {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(mode(&db(&p)), 0o600, "round {round}: the database is created 0600");
    }
}

#[test]
fn a_second_daemon_is_refused_naming_the_first_and_state_commands_go_on() {
    let p = project();
    let mut daemon = p.start();
    let addr = daemon.http_addr();
    let pid = daemon.child.id().to_string();
    p.land("inbox/a.csv", "a");
    daemon.events(1, WAIT);

    for args in [&["run"][..], &["once"][..]] {
        let out = p.run(args);
        assert_eq!(out.code, Some(74), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "in use by another highwater daemon (pid {pid}, lock file state/highwater.db.lock)"
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    // Looking goes on beside the daemon; writing too, said to reach it through
    // compare-and-set.
    let list = p.run(&["state", "list"]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
    assert!(!list.stderr.contains("Note:"), "{}", list.stderr);
    let set = p.run(&["state", "set", "t/inbox", "note", "1"]);
    assert_eq!(set.code, Some(0), "{}", set.stderr);
    assert!(
        set.stderr.contains(&format!("a highwater daemon (pid {pid}) runs on this store")),
        "{}",
        set.stderr
    );

    // Every file the store made is the owner's alone.
    for file in ["highwater.db", "highwater.db-wal", "highwater.db-shm", "highwater.db.lock"] {
        assert_eq!(mode(&p.path().join("state").join(file)), 0o600, "{file}");
    }
    let (status, _, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");

    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
    // The lock goes with the process.
    let once = p.run(&["once"]);
    assert_eq!(once.code, Some(0), "{}", once.stderr);
    let set = p.run(&["state", "set", "t/inbox", "note", "2"]);
    assert!(!set.stderr.contains("Note:"), "{}", set.stderr);
}

#[test]
fn a_store_that_cannot_be_written_refuses_to_start() {
    let p = project();
    assert_eq!(p.run(&["once"]).code, Some(0), "creates the store");
    let _guard = Mutable(vec![db(&p)]);
    immutable(true, &[db(&p)]);
    for args in [&["run"][..], &["once"][..]] {
        let out = p.run(args);
        assert_eq!(out.code, Some(74), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("state/highwater.db: cannot be written ("), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("refusing to start"), "{args:?}: {}", out.stderr);
    }
    // Looking needs no writes.
    let list = p.run(&["state", "list"]);
    assert_eq!(list.code, Some(0), "{}", list.stderr);
}

/// Waits until `/readyz` answers `status` with a body holding `holds`; returns the body.
fn wait_ready(addr: &str, status: u16, holds: &str) -> String {
    eventually(&format!("/readyz {status} with {holds:?}"), WAIT, || {
        let (s, _, body) = http_get(addr, "/readyz");
        (s == status && body.contains(holds)).then_some(body)
    })
}

#[test]
fn a_store_failing_while_running_puts_its_watchers_in_error_until_it_works_again() {
    let p = project();
    let mut daemon = p.start();
    let addr = daemon.http_addr();
    p.land("inbox/a.csv", "a");
    daemon.events(1, WAIT);
    wait_ready(&addr, 200, "ready");

    // The files stop taking writes (as a disk going read-only would): the next batch
    // cannot be staged.
    let files = vec![db(&p), p.path().join("state/highwater.db-wal")];
    let guard = Mutable(files.clone());
    immutable(true, &files);
    p.land("inbox/b.csv", "b");
    daemon.wait_state("t/inbox", "error");
    let body = wait_ready(&addr, 503, "the state store failed for watchers t/inbox");
    assert!(body.starts_with("not ready:"), "{body}");
    let line = daemon.wait_log_where("at ERROR with store_failed", |l| {
        field_str(l, "level") == Some("ERROR") && field(l, "store_failed") == Some(&true.into())
    });
    assert_eq!(field_str(&line, "watcher"), Some("t/inbox"), "{line}");

    // Writable again: it goes on by itself, and delivers what it found.
    immutable(false, &files);
    drop(guard);
    let events = daemon.events(1, WAIT);
    assert_eq!(events[0]["item"]["relative_path"], "b.csv");
    daemon.wait_state("t/inbox", "ok");
    wait_ready(&addr, 200, "ready");

    // Moved away, the file open is no longer the store anyone would read: nothing is
    // written to it, and it is said at once.
    let away = p.path().join("state/moved-away.db");
    std::fs::rename(db(&p), &away).expect("move the database away");
    let body = wait_ready(&addr, 503, "the database file was deleted or moved away while in use");
    assert!(body.contains("state/highwater.db"), "{body}");
    daemon.wait_state("t/inbox", "error");
    wait_ready(&addr, 503, "the state store failed for watchers t/inbox");
    // What lands meanwhile waits: the watcher does not poll while its store fails.
    p.land("inbox/c.csv", "c");
    // Put back, the same file: the watcher goes on where it was.
    std::fs::rename(&away, db(&p)).expect("put the database back");
    let events = daemon.events(1, WAIT);
    assert_eq!(events[0]["item"]["relative_path"], "c.csv");
    daemon.wait_state("t/inbox", "ok");
    wait_ready(&addr, 200, "ready");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn dead_letters_older_than_an_age_are_purged() {
    let p = project();
    p.watcher(
        "other",
        "namespace: t\nname: other\nsource: {type: local_dir, path: inbox, min_age: 0s}\nsink: {type: stdout}\n",
    );
    let letter = |failed_at: &str| {
        format!(
            r#"{{"reason": "HTTP 400", "failed_at": "{failed_at}", "batch": {{"batch_id": "b", "created_at": "{failed_at}", "events": []}}}}"#
        )
    };
    let long_ago = "2020-01-01T00:00:00Z";
    let now = chrono::Utc::now().to_rfc3339();
    for (watcher, key, at) in [
        ("t/inbox", "dead_letter/old", long_ago),
        ("t/inbox", "dead_letter/new", now.as_str()),
        ("t/other", "dead_letter/old", long_ago),
    ] {
        let out = p.run(&["state", "set", watcher, key, &letter(at)]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    let bad = p.run(&["state", "purge-dead-letters", "t/inbox", "--older-than", "30 days"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    assert!(bad.stderr.contains("is not a duration unit"), "{}", bad.stderr);

    let one = p.run(&["state", "purge-dead-letters", "t/inbox", "--older-than", "30d"]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert!(one.stderr.contains("t/inbox: 1 dead letter older than 30d purged, 1 kept."), "{}", one.stderr);
    let listed = p.run(&["state", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("state list --json");
    let letters = |name: &str| {
        let watcher = listed.as_array().expect("array").iter().find(|w| w["name"] == name).expect(name);
        watcher["dead_letters"].clone()
    };
    assert_eq!(letters("inbox"), serde_json::json!(["new"]));
    assert_eq!(letters("other"), serde_json::json!(["old"]), "another watcher's are left");

    // Every watcher in the store.
    let all = p.run(&["state", "purge-dead-letters", "--older-than", "30d"]);
    assert_eq!(all.code, Some(0), "{}", all.stderr);
    assert!(all.stderr.contains("t/inbox: 0 dead letters older than 30d purged, 1 kept."), "{}", all.stderr);
    assert!(all.stderr.contains("t/other: 1 dead letter older than 30d purged, 0 kept."), "{}", all.stderr);
    let again = p.run(&["state", "purge-dead-letters", "--older-than", "30d"]);
    assert!(again.stderr.contains("No dead letter older than 30d."), "{}", again.stderr);
}
