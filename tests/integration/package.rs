//! The Debian package as an operator meets it, in the Debian 12 container of
//! `systemd.rs`: built by scripts/deb.sh (cargo-deb, from the debug binary the suite
//! already built), checked by lintian, then installed with dpkg (enabled, not started,
//! the user, the directories, the man page and completions), started with a watcher
//! dropped into /etc/highwater/watchers (an event delivered, a reload applied),
//! upgraded over an earlier version (the edited conffile kept, the service restarted,
//! its state kept), and purged (unit, state and watchers gone). And
//! scripts/install.sh, for systems without the package, run for real as under sudo.
//!
//! Needs root, cargo-deb and lintian (tests/setup/deb.sh) and the container root
//! (tests/setup/nspawn.sh); fails (never skips) without them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use crate::systemd::{Container, boot, repo, write};
use crate::util::{bin, land_file};

/// A version below any the project will carry: the "previous" package of the upgrade.
const PREVIOUS: &str = "0~previous-1";

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// cargo-deb's directory, for `cargo deb` to find it.
fn cargo_deb_dir() -> PathBuf {
    let path = std::env::var_os("HIGHWATER_TEST_CARGO_DEB").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "HIGHWATER_TEST_CARGO_DEB is not set: run the tests with scripts/test.sh \
             (tests/setup/deb.sh installs cargo-deb and lintian)"
        )
    });
    assert!(path.is_file(), "{} is missing: rerun scripts/test.sh", path.display());
    path.parent().expect("a directory").to_path_buf()
}

/// Packages the test binary with scripts/deb.sh into `out`; returns the .deb's path.
fn package(out: &Path) -> PathBuf {
    // target/debug/highwater: the profile's directory and the target directory above it.
    let target = bin().parent().and_then(Path::parent).expect("target dir").to_path_buf();
    let path = format!("{}:{}", cargo_deb_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(repo().join("scripts/deb.sh"));
    cmd.args(["--profile", "dev", "--no-build", "--fast", "--output"]).arg(out);
    let built = cmd.env("PATH", path).env("CARGO_TARGET_DIR", &target).output().expect("scripts/deb.sh");
    assert!(built.status.success(), "scripts/deb.sh failed:\n{}", text(&built));
    // cargo-deb prints the path of the package it wrote last.
    let stdout = String::from_utf8_lossy(&built.stdout);
    let deb = PathBuf::from(stdout.lines().last().expect("the package's path").trim());
    assert!(deb.is_file(), "no package at {}:\n{}", deb.display(), text(&built));
    deb
}

/// The same package under another version: the earlier build an upgrade goes over
/// (repacked with dpkg-deb in seconds rather than packaged again in half a minute).
fn with_version(deb: &Path, version: &str) -> PathBuf {
    let dir = deb.parent().expect("dir").join("repack");
    let unpacked = Command::new("dpkg-deb").arg("-R").arg(deb).arg(&dir).output().expect("dpkg-deb -R");
    assert!(unpacked.status.success(), "{}", text(&unpacked));
    let control = dir.join("DEBIAN/control");
    let fields = std::fs::read_to_string(&control).expect("control");
    let fields: Vec<String> = fields
        .lines()
        .map(|l| if l.starts_with("Version: ") { format!("Version: {version}") } else { l.to_string() })
        .collect();
    std::fs::write(&control, fields.join("\n") + "\n").expect("write control");
    let out = deb.with_file_name("highwater_previous.deb");
    let packed = Command::new("dpkg-deb")
        .args(["-Zgzip", "-z1", "--build"])
        .arg(&dir)
        .arg(&out)
        .output()
        .expect("dpkg-deb -b");
    assert!(packed.status.success(), "{}", text(&packed));
    out
}

/// Runs in the container, and fails the test with its output unless it succeeded.
fn run(c: &Container, args: &[&str]) -> String {
    let out = c.exec(args);
    assert!(out.status.success(), "{args:?} failed:\n{}\n{}", text(&out), c.journal(&[]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dpkg(c: &Container, args: &[&str]) -> String {
    let mut all = vec!["env", "DEBIAN_FRONTEND=noninteractive", "dpkg"];
    all.extend_from_slice(args);
    run(c, &all)
}

/// The lines of the events file that name `file`.
fn events_naming(root: &Path, file: &str) -> usize {
    std::fs::read_to_string(root.join("var/lib/highwater/events.jsonl"))
        .map(|t| t.lines().filter(|l| l.contains(file)).count())
        .unwrap_or(0)
}

#[test]
fn the_package_installs_enabled_runs_reloads_upgrades_keeping_the_config_and_purges() {
    let started = Instant::now();
    let debs = tempfile::tempdir().expect("tempdir");
    let current = package(debs.path());
    let previous = with_version(&current, PREVIOUS);
    let built = started.elapsed();

    // lintian reads the package while the container works (it takes half a minute).
    let lintian: Child = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&current)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lintian (tests/setup/deb.sh installs it)");

    let c = boot(|root| {
        for deb in [&previous, &current] {
            let name = deb.file_name().expect("name");
            std::fs::copy(deb, root.join("root").join(name)).expect("copy package");
        }
        // What the watchers read and where the operator drops files.
        std::fs::create_dir_all(root.join("srv/inbox")).expect("mkdir");
        std::fs::create_dir_all(root.join("srv/later")).expect("mkdir");
    });
    let root = c.root();
    let in_container = |deb: &Path| format!("/root/{}", deb.file_name().expect("name").to_string_lossy());

    // A first install: enabled, not started; the user, the directories, the docs.
    dpkg(&c, &["-i", &in_container(&previous)]);
    assert_eq!(c.show("UnitFileState"), "enabled");
    assert_eq!(c.show("ActiveState"), "inactive", "not started before a watcher is in place");
    let user = run(&c, &["getent", "passwd", "highwater"]);
    assert!(user.contains(":/var/lib/highwater:"), "{user}");
    run(&c, &["getent", "group", "highwater"]);
    assert_eq!(run(&c, &["stat", "-c", "%U:%G %a", "/var/lib/highwater"]).trim(), "highwater:highwater 700");
    assert!(root.join("etc/highwater/watchers").is_dir());
    let files = dpkg(&c, &["-L", "highwater"]);
    for path in [
        "/usr/bin/highwater",
        "/usr/lib/systemd/system/highwater.service",
        "/usr/lib/sysusers.d/highwater.conf",
        "/usr/share/man/man1/highwater.1.gz",
        "/usr/share/man/man1/highwater-state-list.1.gz",
        "/usr/share/bash-completion/completions/highwater",
        "/usr/share/zsh/vendor-completions/_highwater",
        "/usr/share/fish/vendor_completions.d/highwater.fish",
        "/usr/share/doc/highwater/examples/local-to-file.yaml",
        "/usr/share/doc/highwater/changelog.gz",
        "/usr/share/doc/highwater/contrib/prometheus/highwater.rules.yml",
        "/usr/share/doc/highwater/contrib/grafana/highwater.json",
    ] {
        assert!(files.lines().any(|l| l == path), "{path} is in the package:\n{files}");
    }
    let conffiles = run(&c, &["dpkg-query", "-W", "-f", "${Conffiles}", "highwater"]);
    assert!(conffiles.contains("/etc/highwater/highwater.yaml"), "{conffiles}");

    // The operator edits the config (the container shares the host's network: port 0)
    // and drops a watcher in; then starts the service.
    let config_path = root.join("etc/highwater/highwater.yaml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    let edited = format!("# Edited by the operator.\n{}", config.replace("127.0.0.1:9850", "127.0.0.1:0"));
    std::fs::write(&config_path, &edited).expect("edit config");
    write(
        &root,
        "/etc/highwater/watchers/inbox.yaml",
        "source: {type: local_dir, path: /srv/inbox, min_age: 0s}\n\
         sink: {type: file, path: /var/lib/highwater/events.jsonl}\npoll_interval: 200ms\n",
    );
    run(&c, &["systemctl", "start", "highwater"]);
    assert_eq!(c.show("ActiveState"), "active");
    land_file(&root.join("srv/inbox"), "a.csv", "x");
    c.wait_for("the event of /srv/inbox/a.csv", |_| events_naming(&root, "a.csv") == 1);

    // Reload: a watcher added while running starts delivering.
    write(
        &root,
        "/etc/highwater/watchers/later.yaml",
        "source: {type: local_dir, path: /srv/later, min_age: 0s}\n\
         sink: {type: file, path: /var/lib/highwater/events.jsonl}\npoll_interval: 200ms\n",
    );
    let pid = c.show("MainPID");
    run(&c, &["systemctl", "reload", "highwater"]);
    land_file(&root.join("srv/later"), "b.csv", "x");
    c.wait_for("the event of the reloaded watcher", |_| events_naming(&root, "b.csv") == 1);
    assert_eq!(c.show("MainPID"), pid, "a reload, not a restart");

    // The upgrade: the edited conffile stays, the service restarts on the new binary,
    // the state stays (nothing delivered again).
    dpkg(&c, &["-i", &in_container(&current)]);
    let version = run(&c, &["dpkg-query", "-W", "-f", "${Version}", "highwater"]);
    assert_ne!(version, PREVIOUS, "upgraded");
    assert_eq!(std::fs::read_to_string(&config_path).expect("config"), edited, "the edited config is kept");
    c.wait_for("the service to run again", |c| c.show("ActiveState") == "active");
    assert_ne!(c.show("MainPID"), pid, "restarted by the upgrade");
    land_file(&root.join("srv/inbox"), "c.csv", "x");
    c.wait_for("the event after the upgrade", |_| events_naming(&root, "c.csv") == 1);
    assert_eq!(events_naming(&root, "a.csv"), 1, "the state survived the upgrade");

    // Purge: stopped, and the unit, the state and the watcher files are gone.
    dpkg(&c, &["--purge", "highwater"]);
    assert_eq!(c.show("LoadState"), "not-found", "the unit is gone");
    for gone in [
        "usr/bin/highwater",
        "usr/lib/systemd/system/highwater.service",
        "etc/systemd/system/multi-user.target.wants/highwater.service",
        "var/lib/highwater",
        "etc/highwater",
    ] {
        assert!(!root.join(gone).exists(), "/{gone} is left after purge");
    }
    // (Processes may end while the glob is read.)
    let processes = run(&c, &["sh", "-c", "cat /proc/[0-9]*/comm 2>/dev/null; true"]);
    assert!(!processes.lines().any(|l| l == "highwater"), "the daemon is stopped");
    // The user stays (files it owns may remain elsewhere), as Debian leaves system users.
    run(&c, &["getent", "passwd", "highwater"]);
    let installed = started.elapsed();

    let lint = lintian.wait_with_output().expect("lintian");
    assert!(lint.status.success(), "lintian:\n{}", text(&lint));
    eprintln!(
        "package test: packages built in {built:?}, container part done at {installed:?}, \
         whole test {:?}",
        started.elapsed()
    );
}

/// Copies what scripts/install.sh reads from the tree into `dest`.
fn copy_tree_for_install(dest: &Path) {
    for part in ["scripts", "config", "systemd", "docs", "watchers", "README.md"] {
        let copied = Command::new("cp").arg("-a").arg(repo().join(part)).arg(dest).status().expect("cp");
        assert!(copied.success(), "cannot copy {part}");
    }
}

/// scripts/install.sh for real (no DESTDIR) the way `sudo scripts/install.sh` runs it:
/// as root with sudo's PATH, which does not hold the user's ~/.cargo/bin. It builds with
/// that user's cargo (a stand-in here that "builds" by copying the test binary: a
/// release build takes minutes), puts the sysusers entry where systemd-sysusers reads
/// it, and a second run restarts the running service on the new binary.
#[test]
fn install_script_under_sudo_builds_as_the_user_creates_the_user_and_restarts_on_upgrade() {
    let c = boot(|root| {
        let src = root.join("home/dev/src");
        std::fs::create_dir_all(&src).expect("mkdir");
        copy_tree_for_install(&src);
        std::fs::copy(bin(), root.join("opt/highwater.build")).expect("copy binary");
        write(
            root,
            "/home/dev/.cargo/bin/cargo",
            "#!/bin/sh\n# Stands in for `cargo build --release`: the test binary as its product.\n\
             [ \"$1\" = build ] || exit 64\nmkdir -p target/release && cp /opt/highwater.build target/release/highwater\n",
        );
        let made = Command::new("chmod").arg("755").arg(root.join("home/dev/.cargo/bin/cargo")).status();
        assert!(made.expect("chmod").success());
        std::fs::create_dir_all(root.join("srv/inbox")).expect("mkdir");
    });
    let root = c.root();
    run(&c, &["useradd", "--home-dir", "/home/dev", "dev"]);
    run(&c, &["chown", "-R", "dev:dev", "/home/dev"]);
    // What `sudo scripts/install.sh` leaves the script: sudo's secure_path, SUDO_USER.
    let as_sudo = [
        "env",
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SUDO_USER=dev",
        "HOME=/root",
        "bash",
        "/home/dev/src/scripts/install.sh",
    ];
    run(&c, &as_sudo);
    assert_eq!(
        run(&c, &["stat", "-c", "%U", "/home/dev/src/target/release/highwater"]).trim(),
        "dev",
        "built as the user who ran sudo"
    );
    assert!(root.join("usr/local/bin/highwater").is_file());
    assert!(root.join("etc/sysusers.d/highwater.conf").is_file());
    assert!(!root.join("usr/local/lib/sysusers.d").exists(), "not where systemd-sysusers never looks");
    run(&c, &["getent", "passwd", "highwater"]);
    // systemd-sysusers itself, run as at boot, reads the entry where it was put.
    run(&c, &["userdel", "highwater"]);
    run(&c, &["systemd-sysusers"]);
    run(&c, &["getent", "passwd", "highwater"]);

    let config_path = root.join("etc/highwater/highwater.yaml");
    let config = std::fs::read_to_string(&config_path).expect("config");
    std::fs::write(&config_path, config.replace("127.0.0.1:9850", "127.0.0.1:0")).expect("edit config");
    write(
        &root,
        "/etc/highwater/watchers/inbox.yaml",
        "source: {type: local_dir, path: /srv/inbox, min_age: 0s}\n\
         sink: {type: file, path: /var/lib/highwater/events.jsonl}\npoll_interval: 200ms\n",
    );
    run(&c, &["systemctl", "enable", "--now", "highwater"]);
    assert_eq!(c.show("ActiveState"), "active");
    let pid = c.show("MainPID");

    // The upgrade: a second run restarts the running daemon on the new binary.
    run(&c, &as_sudo);
    c.wait_for("the service to run again", |c| c.show("ActiveState") == "active");
    assert_ne!(c.show("MainPID"), pid, "the old daemon does not go on running");
    land_file(&root.join("srv/inbox"), "a.csv", "x");
    c.wait_for("an event after the upgrade", |_| events_naming(&root, "a.csv") == 1);
}
