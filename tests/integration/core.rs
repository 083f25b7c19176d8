//! Core tests: the quick start as shipped, restart without repeats, crash safety,
//! `check` error reports, `once` and the `state` commands.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, channel};

use crate::util::{Project, WAIT as EVENT_WAIT, bin, field_str};

/// The repository root (where the shipped config lives).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A watcher on `inbox/` with no settling delay and a fast poll.
fn fast_watcher(sink: &str) -> String {
    format!(
        "namespace: t\nname: inbox\nsource:\n  type: local_dir\n  path: inbox\n  min_age: 0s\nsink:\n{sink}\npoll_interval: 100ms\n"
    )
}

fn ids(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().expect("id").to_string()).collect()
}

fn paths(events: &[serde_json::Value]) -> Vec<String> {
    let mut p: Vec<String> =
        events.iter().map(|e| e["item"]["relative_path"].as_str().expect("path").to_string()).collect();
    p.sort();
    p
}

#[test]
fn check_reports_every_error_with_file_line_and_key() {
    let fixtures = repo().join("tests/fixtures/check");
    let mut cases: Vec<PathBuf> =
        std::fs::read_dir(&fixtures).expect("fixtures").map(|e| e.expect("entry").path()).collect();
    cases.sort();
    assert!(cases.len() >= 3);
    for case in cases {
        let expected = std::fs::read_to_string(case.join("expected.txt")).expect("expected.txt");
        let out = std::process::Command::new(bin())
            .arg("check")
            .current_dir(&case)
            .env_remove("HIGHWATER_CONFIG")
            .env_remove("HIGHWATER_FIXTURE_MISSING")
            .env_remove("HIGHWATER_FIXTURE_OUT")
            .output()
            .expect("run check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr, expected, "case {}", case.display());
        assert_eq!(out.status.code(), Some(78), "config errors exit 78 (case {})", case.display());
    }
}

#[test]
fn quick_start_as_shipped_announces_once_across_restarts() {
    let project = Project::default_config();
    // The shipped files, unchanged.
    std::fs::copy(repo().join("config/highwater.yaml"), project.path().join("config/highwater.yaml"))
        .expect("copy config");
    std::fs::copy(repo().join("watchers/demo-inbox.yaml"), project.path().join("watchers/demo-inbox.yaml"))
        .expect("copy watcher");
    std::fs::create_dir_all(project.path().join("demo/inbox")).expect("mkdir");

    let check = project.run(&["check"]);
    assert_eq!(check.code, Some(0), "{check:?}");
    // Plus the metrics listener, so that the test can count polls.
    let config = project.path().join("config/highwater.yaml");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str("\nhttp:\n  listen: 127.0.0.1:0\n");
    std::fs::write(&config, text).expect("write config");

    let mut daemon = project.start();
    project.write("demo/inbox/orders-1.csv", "id,amount\n1,2\n");
    let events = daemon.events(1, EVENT_WAIT);
    let event = &events[0];
    assert_eq!(event["namespace"], "demo");
    assert_eq!(event["watcher"], "inbox");
    assert_eq!(event["source"], "local_dir");
    assert_eq!(event["type"], "created");
    assert_eq!(event["item"]["kind"], "file");
    assert_eq!(event["item"]["relative_path"], "orders-1.csv");
    assert_eq!(event["item"]["size"], 14);
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));

    // Restart: nothing repeated; a new file is announced alone.
    let mut daemon = project.start();
    daemon.assert_idle(&["demo/inbox"], 2);
    project.write("demo/inbox/orders-2.csv", "id,amount\n");
    let events = daemon.events(1, EVENT_WAIT);
    assert_eq!(events[0]["item"]["relative_path"], "orders-2.csv");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

/// Reads every line written to a FIFO, reopening it after each writer closes it.
fn fifo_reader(path: &Path) -> Receiver<String> {
    let (tx, rx) = channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        loop {
            let Ok(file) = std::fs::File::open(&path) else { return };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn pending_ids(project: &Project) -> Option<Vec<String>> {
    let out = project.run(&["state", "get", "t/inbox", "pending"]);
    if out.code != Some(0) {
        return None;
    }
    let pending: serde_json::Value = serde_json::from_str(&out.stdout).expect("pending JSON");
    Some(ids(pending["events"].as_array().expect("events")))
}

#[test]
fn kill_9_between_outbox_and_acknowledgement_redelivers_the_same_ids() {
    kill_9_between_outbox_and_acknowledgement(2);
}

/// The same with a batch large enough to be stored packed (LZ4): read back whole, with
/// its ids, after the kill.
#[test]
fn kill_9_with_a_packed_batch_pending_redelivers_the_same_ids() {
    kill_9_between_outbox_and_acknowledgement(300);
}

/// `files` land, the sink never acknowledges their batch, the daemon is killed; after
/// the restart the batch goes first, with the ids it was first attempted with.
fn kill_9_between_outbox_and_acknowledgement(files: usize) {
    let project = Project::default_config();
    let fifo = project.path().join("out.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: mkfifo(3) with a valid C string and mode.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // The file sink opens the FIFO for each batch; with no reader, the open blocks:
    // the batch is in the outbox and the sink never acknowledges.
    project.watcher("inbox", &format!("{}batch_size: 500\n", fast_watcher("  type: file\n  path: out.fifo")));
    let names: Vec<String> = (0..files).map(|i| format!("{}-{i:03}.csv", ["a", "b"][i % 2])).collect();
    for name in &names {
        project.write(&format!("inbox/{name}"), "a");
    }

    let mut daemon = project.start();
    daemon.wait_metrics(&format!("a pending batch of {files}"), |m| {
        m.watcher("highwater_watcher_pending_events", "t/inbox") == files as u64
    });
    let stored = pending_ids(&project).expect("the pending batch is stored");
    assert_eq!(stored.len(), files);
    // `state get` unpacks; the row itself is packed only when it is large.
    let row = project.store().dump();
    assert_eq!(row.contains("\"lz4\":"), files > 100, "{}", &row[..row.len().min(2000)]);
    daemon.kill9();

    // While it is down another file lands.
    project.write("inbox/c.csv", "c");
    let lines = fifo_reader(&fifo);
    let daemon = project.start();
    let mut got = Vec::new();
    while got.len() < files + 1 {
        let line = lines.recv_timeout(EVENT_WAIT).expect("events after restart");
        got.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON line"));
    }
    // The pending batch comes first, with the ids it was first attempted with.
    assert_eq!(ids(&got[..files]), stored);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(paths(&got[..files]), sorted);
    assert_eq!(got[files]["item"]["relative_path"], "c.csv", "{got:#?}");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
    assert_eq!(pending_ids(&project), None, "nothing left pending");
    // Whatever the daemon wrote is in the FIFO before it exited: a line written after
    // it must be the next one read.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).expect("open FIFO");
    writer.write_all(b"end\n").expect("write FIFO");
    drop(writer);
    assert_eq!(lines.recv_timeout(EVENT_WAIT).as_deref(), Ok("end"), "nothing repeated");
}

#[test]
fn once_and_the_state_commands() {
    let project = Project::default_config();
    project.watcher("inbox", &fast_watcher("  type: file\n  path: out/events.jsonl"));
    project.write("inbox/a.csv", "a");
    project.write("inbox/b.csv", "b");
    let read_events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(project.path().join("out/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };

    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("t/inbox: 2 delivered"), "{}", out.stderr);
    let first = read_events();
    assert_eq!(paths(&first), vec!["a.csv", "b.csv"]);

    let out = project.run(&["once", "inbox"]);
    assert!(out.stderr.contains("t/inbox: 0 delivered"), "{}", out.stderr);
    assert_eq!(read_events().len(), 2);

    let list = project.run(&["state", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("state list JSON");
    assert_eq!(list[0]["namespace"], "t");
    assert_eq!(list[0]["name"], "inbox");
    assert_eq!(list[0]["pending_events"], 0);
    assert_eq!(list[0]["watermark"]["remembered"], 2);
    let table = project.run(&["state", "list"]);
    assert!(table.stdout.starts_with("WATCHER"), "{}", table.stdout);
    assert!(table.stdout.contains("t/inbox"), "{}", table.stdout);

    // Reset replays everything, with the same ids.
    let out = project.run(&["state", "reset", "t/inbox"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    project.run(&["once"]);
    let all = read_events();
    assert_eq!(all.len(), 4);
    let (mut a, mut b) = (ids(&all[..2]), ids(&all[2..]));
    a.sort();
    b.sort();
    assert_eq!(a, b);

    // Bad input to `state set` is a usage error, and changes nothing.
    let out = project.run(&["state", "set", "t/inbox", "watermark", "{not json"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("not JSON"), "{}", out.stderr);
    let out = project.run(&["state", "get", "nobody"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no watcher named \"nobody\""), "{}", out.stderr);

    let watchers = project.run(&["watchers", "--json"]);
    let watchers: serde_json::Value = serde_json::from_str(&watchers.stdout).expect("watchers JSON");
    assert_eq!(watchers[0]["source"]["type"], "local_dir");
    assert_eq!(watchers[0]["sink"]["type"], "file");
}

#[test]
fn a_missing_directory_holds_only_its_own_watcher() {
    let project = Project::default_config();
    project.watcher("inbox", &fast_watcher("  type: stdout"));
    project.watcher(
        "broken",
        "namespace: t\nname: broken\nsource:\n  type: local_dir\n  path: not-there\nsink:\n  type: stdout\npoll_interval: 100ms\n",
    );
    project.write("inbox/a.csv", "a");
    let mut daemon = project.start();
    let events = daemon.events(1, EVENT_WAIT);
    assert_eq!(events[0]["watcher"], "inbox");
    daemon.wait_state("t/broken", "error");
    let line = daemon.wait_log_where("of t/broken at level ERROR", |l| {
        field_str(l, "watcher") == Some("t/broken") && field_str(l, "level") == Some("ERROR")
    });
    assert!(field_str(&line, "error").is_some_and(|e| e.contains("not-there")), "names the path: {line}");
    // The other watcher goes on.
    project.land("inbox/b.csv", "b");
    assert_eq!(daemon.events(1, EVENT_WAIT)[0]["item"]["relative_path"], "b.csv");
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
}

#[test]
fn the_shipped_examples_are_valid() {
    let project = Project::new(&format!("watchers_dir: {}\n", repo().join("watchers/examples").display()));
    // Their secrets are the operator's: this checks the files, not this environment.
    let out = project.run(&["check", "--skip-secrets"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("OK, 3 watchers"), "{}", out.stdout);
}

/// Runs `highwater args…` with `input` on standard input.
fn run_with_input(project: &Project, args: &[&str], input: &str) -> crate::util::Output {
    let mut child = project
        .command(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn highwater");
    let mut stdin = child.stdin.take().expect("stdin");
    let text = input.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    crate::util::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn a_remembered_set_is_rows_that_state_reads_and_writes_whole() {
    let project = Project::default_config();
    project.watcher("inbox", &fast_watcher("  type: file\n  path: out/events.jsonl"));
    for name in ["a.csv", "b.csv", "c.csv"] {
        project.write(&format!("inbox/{name}"), name);
    }
    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 3 delivered"), "{}", out.stderr);

    // One row per remembered file; `state list` counts them without reading them.
    let dump = project.store().dump();
    for name in ["a.csv", "b.csv", "c.csv"] {
        assert!(dump.contains(&format!("watermark/{name}")), "{dump}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&project.run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    assert_eq!(
        (list[0]["remembered"].as_u64(), list[0]["watermark"]["remembered"].as_u64()),
        (Some(3), Some(3))
    );

    // The whole watermark: head and members, also in `state export`.
    let whole = project.run(&["state", "get", "t/inbox", "watermark"]);
    assert_eq!(whole.code, Some(0), "{whole:?}");
    let whole: serde_json::Value = serde_json::from_str(&whole.stdout).expect("watermark JSON");
    assert!(whole["head"]["high_ns"].is_i64(), "{whole}");
    assert_eq!(whole["members"].as_object().map(|m| m.len()), Some(3), "{whole}");
    let export = project.run(&["state", "export"]);
    let line: serde_json::Value = serde_json::from_str(export.stdout.trim()).expect("one JSON line");
    assert_eq!((&line["namespace"], &line["name"]), (&serde_json::json!("t"), &serde_json::json!("inbox")));
    assert_eq!(line["watermark"], whole);

    // Set from standard input, too large for an argument: forgetting b.csv announces it
    // again; thousands of other members ride along.
    let mut edited = whole.clone();
    let members = edited["members"].as_object_mut().expect("members");
    members.remove("b.csv");
    for i in 0..50_000 {
        members.insert(
            format!("gone/{i:05}-with-a-long-name-to-make-the-value-large.csv"),
            serde_json::json!([1, 1, 1]),
        );
    }
    let text = edited.to_string();
    assert!(text.len() > 2_000_000, "{} bytes", text.len());
    let out = run_with_input(&project, &["state", "set", "t/inbox", "watermark", "--file", "-"], &text);
    assert_eq!(out.code, Some(0), "{out:?}");
    let list: serde_json::Value =
        serde_json::from_str(&project.run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    assert_eq!(list[0]["remembered"].as_u64(), Some(50_002));
    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 1 delivered"), "{}", out.stderr);
    let last = std::fs::read_to_string(project.path().join("out/events.jsonl")).expect("events");
    let last: serde_json::Value = serde_json::from_str(last.lines().last().expect("a line")).expect("JSON");
    assert_eq!(last["item"]["relative_path"], "b.csv");

    // A member is not edited alone.
    let out = project.run(&["state", "delete", "t/inbox", "watermark/a.csv"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    // A reset forgets head and members.
    assert_eq!(project.run(&["state", "reset", "t/inbox"]).code, Some(0));
    assert!(!project.store().dump().contains("watermark"), "{}", project.store().dump());
}

#[test]
fn start_now_skips_what_is_there_and_reset_returns_to_it() {
    let project = Project::default_config();
    project
        .watcher("inbox", &format!("{}start: now\n", fast_watcher("  type: file\n  path: out/events.jsonl")));
    project.write("inbox/old.csv", "old");
    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 0 delivered"), "{}", out.stderr);
    // The first watermark is stored: a file written now is newer than it.
    project.write("inbox/new.csv", "new");
    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 1 delivered"), "{}", out.stderr);
    let events = std::fs::read_to_string(project.path().join("out/events.jsonl")).expect("events");
    assert_eq!(events.lines().count(), 1);
    assert!(events.contains("new.csv"));

    // A start that is no start is a config error at its line.
    project.watcher(
        "later",
        &format!("{}start: yesterday\n", fast_watcher("  type: stdout"))
            .replace("name: inbox", "name: later"),
    );
    let out = project.run(&["check"]);
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(
        out.stderr.contains("watchers/later.yaml:10:8: start: `yesterday` is not a start"),
        "{}",
        out.stderr
    );
}

/// The store a release wrote, as the current one finds it after an upgrade:
/// `tests/fixtures/state/release-0.1.0/` (its README says how it was made).
#[test]
fn a_database_written_by_0_1_0_is_backed_up_and_migrated() {
    let project = Project::default_config();
    std::fs::create_dir_all(project.path().join("state")).expect("mkdir state");
    let db = project.path().join("state/highwater.db");
    std::fs::copy(repo().join("tests/fixtures/state/release-0.1.0/highwater.db"), &db).expect("copy fixture");
    for dir in ["inbox", "stuck-in", "refused-in"] {
        std::fs::create_dir_all(project.path().join(dir)).expect("mkdir");
    }
    // The same watchers, now all writing to files; a long look-back keeps the files
    // 0.1.0 announced inside the window whenever this runs.
    for (name, dir) in [("inbox", "inbox"), ("stuck", "stuck-in"), ("refused", "refused-in")] {
        project.watcher(
            name,
            &format!(
                "namespace: t\nname: {name}\nsource: {{type: local_dir, path: {dir}, min_age: 0s, lookback: 3000d}}\n\
                 sink: {{type: file, path: out/{name}.jsonl}}\n"
            ),
        );
    }
    let old = crate::util::StoreProbe::open(&db);
    let pending_before = old.dump();
    assert!(pending_before.contains("next_watermark"), "the fixture is in the 0.1.0 form");
    drop(old);

    // The first command takes a copy, then upgrades.
    let list = project.run(&["state", "list", "--json"]);
    assert_eq!(list.code, Some(0), "{list:?}");
    let line = list
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["from"] == 1)
        .unwrap_or_else(|| panic!("no upgrade logged: {}", list.stderr));
    assert_eq!((line["to"].as_u64(), line["rows"].as_u64()), (Some(2), Some(2)), "{line}");
    let backup = line["backup"].as_str().expect("backup path");
    assert!(backup.starts_with("state/highwater.db.v1."), "next to the store: {backup}");
    let backup = project.path().join(backup);
    let copy = crate::util::StoreProbe::open(&backup).dump();
    assert_eq!(copy, pending_before, "the copy is the store as 0.1.0 left it");
    let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("state list JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(3));

    let pending = project.run(&["state", "get", "t/stuck", "pending"]);
    let pending: serde_json::Value = serde_json::from_str(&pending.stdout).expect("pending JSON");
    assert!(
        pending.get("next_watermark").is_none() && pending["change"]["head"]["seen"].is_object(),
        "{pending}"
    );
    let stored_ids = ids(pending["events"].as_array().expect("events"));
    assert_eq!(stored_ids.len(), 2);
    // A second start finds nothing to upgrade.
    let again = project.run(&["state", "list"]);
    assert!(!again.stderr.contains("\"from\""), "{}", again.stderr);

    // The pending batch is delivered with its ids; nothing is announced again.
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("t/stuck: 0 delivered, 2 redelivered"), "{}", out.stderr);
    assert!(out.stderr.contains("t/inbox: 0 delivered, 0 redelivered"), "{}", out.stderr);
    let read = |name: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(project.path().join(format!("out/{name}.jsonl")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    assert_eq!(ids(&read("stuck")), stored_ids);

    // The next batch stores the remembered files of the 0.1.0 watermark as rows.
    project.write("inbox/d.csv", "d");
    let out = project.run(&["once", "t/inbox"]);
    assert!(out.stderr.contains("t/inbox: 1 delivered"), "{}", out.stderr);
    let whole = project.run(&["state", "get", "t/inbox", "watermark"]);
    let whole: serde_json::Value = serde_json::from_str(&whole.stdout).expect("watermark JSON");
    let members: Vec<&String> = whole["members"].as_object().expect("members").keys().collect();
    assert_eq!(members, ["a.csv", "b.csv", "c.csv", "d.csv"], "{whole}");
    assert!(whole["head"].get("seen").is_none(), "{whole}");

    // The dead letter of 0.1.0 replays.
    let list: serde_json::Value =
        serde_json::from_str(&project.run(&["state", "list", "--json"]).stdout).expect("state list JSON");
    let refused = list.as_array().expect("list").iter().find(|w| w["name"] == "refused").expect("t/refused");
    let batch = refused["dead_letters"][0].as_str().expect("a dead letter");
    assert_eq!(project.run(&["state", "replay", "t/refused", batch]).code, Some(0));
    let out = project.run(&["once", "t/refused"]);
    assert!(out.stderr.contains("t/refused: 0 delivered, 1 redelivered"), "{}", out.stderr);
    assert_eq!(read("refused").len(), 1);

    // `state backup` copies the store as it is now, whatever runs.
    let out = project.run(&["state", "backup", "copy.db"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let copy = crate::util::StoreProbe::open(&project.path().join("copy.db")).dump();
    assert!(copy.contains("watermark/d.csv"), "{copy}");
    let out = project.run(&["state", "backup", "copy.db"]);
    assert_eq!(out.code, Some(74), "an existing file is not overwritten: {out:?}");
}

#[test]
fn once_dry_run_prints_the_next_cycle_and_stores_nothing() {
    let project = Project::default_config();
    project.watcher("inbox", &fast_watcher("  type: file\n  path: out/events.jsonl"));
    project.write("inbox/a.csv", "a");
    project.write("inbox/b.csv", "b");
    let dry = project.run(&["once", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{dry:?}");
    assert!(dry.stderr.contains("t/inbox: would deliver 2; nothing delivered or stored"), "{}", dry.stderr);
    let printed: Vec<serde_json::Value> =
        dry.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(paths(&printed), ["a.csv", "b.csv"]);
    assert!(!project.path().join("out/events.jsonl").exists(), "the sink is not touched");
    assert!(!project.path().join("state/highwater.db").exists(), "nothing is created");

    let out = project.run(&["once"]);
    assert!(out.stderr.contains("t/inbox: 2 delivered"), "{}", out.stderr);
    let delivered: Vec<serde_json::Value> = std::fs::read_to_string(project.path().join("out/events.jsonl"))
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(ids(&delivered), ids(&printed), "what the dry run printed is what was delivered");
    let dry = project.run(&["once", "--dry-run", "t/inbox"]);
    assert!(dry.stderr.contains("t/inbox: would deliver 0;"), "{}", dry.stderr);

    // A `start:` set on a watcher that has a watermark is said to be ignored.
    project
        .watcher("inbox", &format!("{}start: now\n", fast_watcher("  type: file\n  path: out/events.jsonl")));
    let out = project.run(&["once"]);
    let said =
        out.stderr.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).any(|l| {
            field_str(&l, "began_from") == Some("beginning") && field_str(&l, "start") == Some("now")
        });
    assert!(said, "{}", out.stderr);
}
