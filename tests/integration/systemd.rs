//! The unit as shipped, under systemd as PID 1: a Debian 12 container booted with
//! systemd-nspawn (its root built once by tests/setup/nspawn.sh), with highwater
//! installed by scripts/install.sh. Checks start (READY), a delivered event, reload on
//! an image without procps, no restart loop on a config error (exit 78), the watchdog
//! restarting a stopped daemon, and errors in `journalctl -p err`.
//!
//! Needs root and the root file system; fails (never skips) without them. The
//! container helpers here also serve the Debian package's test (`package.rs`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bin, land_file};

/// Booting, starting and stopping take a few seconds each; this bounds every wait.
pub(crate) const BOOT_WAIT: Duration = Duration::from_secs(90);

/// A booted container; powered off and removed when dropped.
pub(crate) struct Container {
    /// The copy of the cached root this container runs on.
    dir: tempfile::TempDir,
    /// `systemd-nspawn`.
    nspawn: Child,
    /// The container's PID 1 (systemd), as the host sees it.
    pid: u32,
}

impl Container {
    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs a command inside the container.
    pub(crate) fn exec(&self, args: &[&str]) -> Output {
        let pid = self.pid.to_string();
        Command::new("nsenter")
            .args(["-t", &pid, "-a", "--"])
            .args(args)
            .env("SYSTEMD_PAGER", "")
            .output()
            .expect("run nsenter")
    }

    pub(crate) fn systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["systemctl"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// One property of the highwater unit (`ActiveState`, `NRestarts`, …).
    pub(crate) fn show(&self, property: &str) -> String {
        let out = self.systemctl(&["show", "--property", property, "--value", "highwater"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Waits until `check` holds, polling the container's state; panics with `what`.
    pub(crate) fn wait_for(&self, what: &str, check: impl Fn(&Container) -> bool) {
        let deadline = Instant::now() + BOOT_WAIT;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; journal:\n{}",
                self.journal(&[])
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The unit's journal as JSON records (`journalctl -o json`), with extra arguments.
    pub(crate) fn journal_records(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let mut args = vec!["journalctl", "--no-pager", "-o", "json", "-u", "highwater"];
        args.extend_from_slice(extra);
        let out = self.exec(&args);
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    pub(crate) fn journal(&self, extra: &[&str]) -> String {
        let mut args = vec!["journalctl", "--no-pager", "-u", "highwater"];
        args.extend_from_slice(extra);
        String::from_utf8_lossy(&self.exec(&args).stdout).into_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.systemctl(&["poweroff"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shallowest process below `ancestor` whose name is `systemd`: the container's
/// PID 1, as the host sees it.
fn container_init(ancestor: u32) -> Option<u32> {
    let mut parents: Vec<(u32, u32, String)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid …`; comm may hold spaces, so split after its `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        parents.push((pid, ppid, comm));
    }
    let mut level = vec![ancestor];
    while !level.is_empty() {
        let next: Vec<&(u32, u32, String)> =
            parents.iter().filter(|(_, ppid, _)| level.contains(ppid)).collect();
        if let Some((pid, _, _)) = next.iter().find(|(_, _, comm)| comm == "systemd") {
            return Some(*pid);
        }
        level = next.iter().map(|(pid, _, _)| *pid).collect();
    }
    None
}

/// Copies the cached root, lets `prepare` install into it and boots it.
pub(crate) fn boot(prepare: impl FnOnce(&Path)) -> Container {
    let cached = std::env::var_os("HIGHWATER_TEST_NSPAWN_ROOT").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "HIGHWATER_TEST_NSPAWN_ROOT is not set: run the tests with scripts/test.sh \
             (tests/setup/nspawn.sh builds the Debian root this test boots)"
        )
    });
    assert!(
        cached.join(".installed").exists(),
        "{} is not a finished root: rerun scripts/test.sh",
        cached.display()
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "booting a container needs root (as scripts/test.sh runs in CI)"
    );

    let dir = tempfile::Builder::new().prefix("highwater-nspawn").tempdir_in("/var/tmp").expect("tempdir");
    let root = dir.path().join("root");
    let copied =
        Command::new("cp").args(["-a", "--reflink=auto"]).arg(&cached).arg(&root).status().expect("cp");
    assert!(copied.success(), "cannot copy {}", cached.display());

    prepare(&root);

    let log = std::fs::File::create(dir.path().join("console.log")).expect("console log");
    let nspawn = Command::new("systemd-nspawn")
        .args(["-q", "--boot", "--register=no", "--keep-unit", "--console=read-only", "-D"])
        .arg(&root)
        // This host's cgroup layout needs the unified hierarchy named explicitly.
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("systemd-nspawn (tests/setup/nspawn.sh installs it)");
    // The container's systemd is a descendant of nspawn (its grandchild).
    let deadline = Instant::now() + BOOT_WAIT;
    let pid = loop {
        if let Some(pid) = container_init(nspawn.id()) {
            break pid;
        }
        let console = std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the container did not boot:\n{console}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let container = Container { dir, nspawn, pid };
    // Blocks until start-up finished ("running", or "degraded" when some unit of the
    // minimal image failed).
    // Right after PID 1 appears its bus may not answer yet: ask again until it does.
    loop {
        let out = container.exec(&["systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if state == "running" || state == "degraded" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "system state {state:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    container
}

/// Stages an install by scripts/install.sh into `root`.
fn install_with_script(root: &Path) {
    let installed = Command::new(repo().join("scripts/install.sh"))
        .env("DESTDIR", root)
        .env("PREFIX", "/usr")
        .env("HIGHWATER_BIN", bin())
        .stdout(Stdio::null())
        .status()
        .expect("install.sh");
    assert!(installed.success(), "scripts/install.sh failed");
}

/// Writes a file into the container's file system (`path` is absolute inside it).
pub(crate) fn write(root: &Path, path: &str, text: &str) {
    let path = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

#[test]
fn the_unit_under_systemd_starts_delivers_reloads_stops_restarting_on_config_errors_and_logs_errors() {
    let started = Instant::now();
    let c = boot(|root| {
        install_with_script(root);
        // Port 0: the container shares the host's network.
        let config = std::fs::read_to_string(root.join("etc/highwater/highwater.yaml")).expect("config");
        write(root, "/etc/highwater/highwater.yaml", &config.replace("127.0.0.1:9850", "127.0.0.1:0"));
        write(
            root,
            "/etc/highwater/watchers/inbox.yaml",
            "source: {type: local_dir, path: /srv/inbox, min_age: 0s}\n\
             sink: {type: file, path: /var/lib/highwater/events.jsonl}\npoll_interval: 200ms\n",
        );
        // A directory that is not there: the watcher needs attention and says so at
        // ERROR, the others go on.
        write(
            root,
            "/etc/highwater/watchers/missing.yaml",
            "source: {type: local_dir, path: /srv/missing}\nsink: {type: stdout}\npoll_interval: 200ms\n",
        );
        std::fs::create_dir_all(root.join("srv/inbox")).expect("mkdir inbox");
        // A faster watchdog than the shipped 30s, so that the test need not wait for it.
        write(
            root,
            "/etc/systemd/system/highwater.service.d/test.conf",
            "[Service]\nWatchdogSec=3s\nRestartSec=1s\n",
        );
    });
    let booted = started.elapsed();
    let root = c.root();
    assert!(
        !root.join("bin/kill").exists() && !root.join("usr/bin/kill").exists(),
        "the image has no procps"
    );

    // Start: `systemctl start` of a Type=notify unit returns once READY=1 arrived.
    let out = c.systemctl(&["start", "highwater"]);
    assert!(
        out.status.success(),
        "start failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.journal(&[])
    );
    assert_eq!(c.show("ActiveState"), "active");
    assert!(c.show("StatusText").contains("watcher"), "STATUS= reached systemd: {:?}", c.show("StatusText"));

    // A delivered event.
    land_file(&root.join("srv/inbox"), "a.csv", "x");
    let events = root.join("var/lib/highwater/events.jsonl");
    c.wait_for("the event of /srv/inbox/a.csv", |_| {
        std::fs::read_to_string(&events).is_ok_and(|text| text.contains("a.csv"))
    });

    // Records reach the journal natively: priorities and fields.
    c.wait_for("an ERROR record of the missing directory", |c| !c.journal(&["-p", "err"]).is_empty());
    let errors = c.journal_records(&["-p", "err"]);
    assert!(
        errors
            .iter()
            .any(|r| r["PRIORITY"] == "3" && r["MESSAGE"].as_str().is_some_and(|m| m.contains("attention"))),
        "{errors:?}"
    );
    let records = c.journal_records(&[]);
    assert!(records.iter().any(|r| r.get("F_ADDR").is_some()), "structured fields in the journal");

    // Reload, with the shell's kill (the image has no /bin/kill).
    let out = c.systemctl(&["reload", "highwater"]);
    assert!(out.status.success(), "reload failed: {}", String::from_utf8_lossy(&out.stderr));
    // The record of an applied reload carries the diff's counts.
    c.wait_for("the reload to be applied", |c| {
        c.journal_records(&[]).iter().any(|r| r.get("F_UNCHANGED").is_some())
    });
    assert_eq!(c.show("ActiveState"), "active");

    // The watchdog: a daemon that stops answering is killed and started again.
    let pid = c.show("MainPID");
    let out = c.exec(&["sh", "-c", &format!("kill -STOP {pid}")]);
    assert!(out.status.success(), "cannot stop the daemon");
    c.wait_for("a restart by the watchdog", |c| {
        c.show("NRestarts") == "1" && c.show("ActiveState") == "active"
    });
    assert!(c.show("MainPID") != pid, "a new process runs");
    assert!(c.journal(&[]).to_lowercase().contains("watchdog timeout"), "systemd names the watchdog");

    // A config error: exit 78, and no restart loop.
    write(
        &root,
        "/etc/highwater/watchers/bad.yaml",
        "source: {type: local_dir, pth: /srv}\nsink: {type: stdout}\n",
    );
    let out = c.systemctl(&["restart", "highwater"]);
    assert!(!out.status.success(), "a restart with an invalid config must fail");
    c.wait_for("the unit to settle", |c| c.show("ActiveState") != "activating");
    assert_eq!(c.show("ActiveState"), "failed", "not scheduled for another restart");
    assert_eq!(c.show("ExecMainStatus"), "78");
    assert_eq!(c.show("NRestarts"), "0", "systemd counts restarts since this start; none followed exit 78");
    // The journal takes records asynchronously: wait for the one the exit left.
    c.wait_for("the config error in journalctl -p err", |c| c.journal(&["-p", "err"]).contains("pth"));

    eprintln!("systemd container test: booted in {booted:?}, whole test {:?}", started.elapsed());
}
