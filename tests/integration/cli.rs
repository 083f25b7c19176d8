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
    assert_eq!(p.run(&["state", "set", "orders", "watermark", r#"{"high_ns": 1}"#]).code, Some(0));
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
    p.land("in/a.csv", "x");
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

#[test]
fn check_lints_watcher_files_given_as_paths_without_a_daemon_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    let s3 = "source: {type: s3, bucket: drop, prefix: in/}\nsink: {type: stdout}\n";
    write("new/orders.yaml", s3);
    write("new/refunds.yml", &format!("namespace: shop\n{s3}"));
    write("draft.yaml", "source:\n  type: s3\n  bucket: drop\n  prefx: in/\nsink: {type: stdout}\n");
    let check = |args: &[&str]| {
        let out = std::process::Command::new(crate::util::bin())
            .arg("check")
            .args(args)
            .current_dir(dir.path())
            .env_remove("HIGHWATER_CONFIG")
            .output()
            .expect("check");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    // No config/highwater.yaml here: the files are checked on their own.
    let (code, stdout, stderr) = check(&["new/orders.yaml"]);
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "new/orders.yaml: OK, watcher default/orders\n"),
        "{stderr}"
    );
    // A directory, and a file in it again: each watcher once.
    let (code, stdout, stderr) = check(&["new", "new/orders.yaml"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stdout,
        "new/orders.yaml: OK, watcher default/orders\nnew/refunds.yml: OK, watcher shop/refunds\n"
    );
    let (code, stdout, stderr) = check(&["new", "draft.yaml"]);
    assert_eq!((code, stdout.as_str()), (Some(78), ""));
    assert_eq!(
        stderr,
        "error: 1 config error:\n  draft.yaml:4:3: source.prefx: unknown field `prefx`; did you mean `prefix`?\n\n"
    );
    let (code, _, stderr) = check(&["missing.yaml"]);
    assert_eq!(code, Some(78));
    assert!(stderr.contains("missing.yaml: cannot read: No such file"), "{stderr}");
    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let (code, _, stderr) = check(&["empty"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("warning: no watcher files"), "{stderr}");

    // Without paths, `check` wants the daemon config, and says where it looked.
    let (code, _, stderr) = check(&[]);
    assert_eq!(code, Some(78), "{stderr}");
    if !std::path::Path::new("/etc/highwater/highwater.yaml").exists() {
        assert!(
            stderr.contains("no config file: tried config/highwater.yaml (under ")
                && stderr.contains(" and /etc/highwater/highwater.yaml;"),
            "{stderr}"
        );
    }
}

#[test]
fn check_warns_about_zero_watchers_and_run_logs_its_config_file_first() {
    let p = Project::default_config();
    let check = p.run(&["check"]);
    assert_eq!(check.code, Some(0), "{check:?}");
    assert_eq!(check.stdout, "config/highwater.yaml: OK, 0 watchers in watchers\n");
    assert!(check.stderr.contains("warning: config/highwater.yaml: no watcher files"), "{}", check.stderr);

    let p = project_with_one_watcher();
    let mut d = p.start();
    d.wait_log_where("the config file named", |line| {
        crate::util::field_str(line, "config") == Some("config/highwater.yaml")
    });
    let first = d.drain_logs().first().cloned().unwrap_or_default();
    assert!(first.contains("\"config\":\"config/highwater.yaml\""), "not the first log line: {first}");
    d.stop();
}

#[test]
fn state_set_refuses_a_watermark_the_watchers_source_cannot_read() {
    let p = project_with_one_watcher();
    p.watcher("drop", "source: {type: s3, bucket: drop}\nsink: {type: stdout}\n");
    // A local_dir head given to an s3 watcher: refused, and nothing written.
    let wrong = p.run(&["state", "set", "drop", "watermark", r#"{"high_ns": 0}"#]);
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(
        wrong
            .stderr
            .contains("default/drop: not set: watermark is not a s3 watermark (unknown field `high_ns`"),
        "{}",
        wrong.stderr
    );
    assert!(wrong.stderr.contains("state set --help"), "{}", wrong.stderr);
    assert_eq!(p.run(&["state", "get", "drop", "watermark"]).code, Some(1), "nothing was stored");
    let wrong = p.run(&["state", "set", "orders", "watermark", r#"{"high_ms": 0}"#]);
    assert_eq!(wrong.code, Some(2), "{wrong:?}");
    assert!(wrong.stderr.contains("missing field `high_ns`"), "{}", wrong.stderr);
    // The shapes the help shows are taken.
    for (watcher, head) in [("drop", r#"{"high_ms": 1700000000000}"#), ("orders", r#"{"high_ns": 0}"#)] {
        let set = p.run(&["state", "set", watcher, "watermark", head]);
        assert_eq!(set.code, Some(0), "{watcher}: {set:?}");
    }
    let help = p.run(&["state", "set", "--help"]);
    for shape in [r#"{"high_ns": "#, r#"{"high_ms": "#, r#"{"mode": "cursor", "after": ["42"]}"#] {
        assert!(help.stdout.contains(shape), "{shape} not in {}", help.stdout);
    }
    // The watcher reads the watermark set by hand at its next cycle.
    let once = p.run(&["once", "--dry-run", "orders"]);
    assert_eq!(once.code, Some(0), "{once:?}");
}

#[test]
fn check_reads_an_environment_file_and_names_every_credential_provider_it_lacked() {
    let p = Project::default_config();
    let closed = crate::util::ClosedPort::new();
    p.watcher(
        "drop",
        &format!(
            "source: {{type: s3, bucket: \"${{DROP_BUCKET}}\", region: us-east-1, endpoint_url: \"http://127.0.0.1:{}\"}}\n\
             sink: {{type: stdout}}\n",
            closed.port
        ),
    );
    std::fs::create_dir(p.path().join("home")).expect("mkdir");
    // The service's environment, as systemd would read it.
    p.write("env", "# for highwater.service\nDROP_BUCKET='partner-drop'\n");
    // Nothing of this process's environment: no credentials anywhere, and an instance
    // metadata address that refuses at once.
    let check = |args: &[&str]| {
        let out = p
            .command(args)
            .env_clear()
            .env("HOME", p.path().join("home"))
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{}", closed.port))
            .output()
            .expect("check");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = check(&["check"]);
    assert_eq!(code, Some(78), "DROP_BUCKET is not set: {stderr}");
    let (code, stderr) = check(&["check", "--env-file", "env"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(&["check", "--connect", "--env-file", "env"]);
    assert_eq!(code, Some(69), "{stderr}");
    assert!(
        stderr.contains("checking s3://partner-drop/: no usable AWS credentials; looked in the environment"),
        "{stderr}"
    );
    for provider in
        ["~/.aws/credentials", "AWS_WEB_IDENTITY_TOKEN_FILE", "ECS container", "EC2 instance metadata"]
    {
        assert!(stderr.contains(provider), "{provider} not named: {stderr}");
    }
    // The SDK's own records stay out: one error, in the command's words.
    assert!(!stderr.contains("provider failed to provide credentials"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with('{')).count(), 0, "log records: {stderr}");
    let (code, stderr) = check(&["check", "--env-file", "missing-env"]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("missing-env: cannot read the environment file"), "{stderr}");
}
