//! The Postgres source when the server's transaction counter goes back: a crash that
//! loses asynchronous commits, a failover to a standby that was behind, a data
//! directory restored from an older copy. Each test runs private clusters of its own
//! (initdb, pg_ctl, pg_basebackup; as the `postgres` user when the tests run as root),
//! since it crashes, stops and promotes them. Also here: event ids tell a row written
//! again with the same key from the one before.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::postgres::{Pg, Schema, ids, watcher_project};
use crate::util::Project;

/// The newest PostgreSQL server binaries installed (as tests/setup/postgres.sh finds them).
fn pg_bin() -> PathBuf {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) under /usr/lib/postgresql: \
             install PostgreSQL (e.g. apt-get install postgresql); scripts/test.sh needs them too"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free port on loopback (free when asked; a start that loses the race is retried).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A private PostgreSQL cluster in a directory of its own, stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Cluster {
    fn new_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("highwater-{name}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(&dir));
        }
        dir
    }

    /// A new cluster with these lines added to its postgresql.conf, started.
    fn init(name: &str, settings: &[&str]) -> Cluster {
        let bin = pg_bin();
        let dir = Cluster::new_dir(name);
        let cluster = Cluster { dir, port: 0, bin };
        cluster.as_postgres(
            "initdb",
            &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale"],
        );
        cluster.configure(settings);
        cluster.started()
    }

    /// A streaming standby of `primary` (pg_basebackup -R), started.
    fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let dir = Cluster::new_dir(name);
        let cluster = Cluster { dir, port: 0, bin: primary.bin.clone() };
        let port = primary.port.to_string();
        cluster.as_postgres(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &cluster.data(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        cluster.started()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn configure(&self, settings: &[&str]) {
        self.configure_file("postgresql.conf", settings);
    }

    /// Adds lines to a configuration file of the cluster (`postgresql.auto.conf`, read
    /// last, overrides what pg_basebackup -R wrote there).
    fn configure_file(&self, file: &str, settings: &[&str]) {
        let conf = Path::new(&self.data()).join(file);
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        for line in settings {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&conf, text).expect("write postgresql.conf");
    }

    fn as_postgres(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        command.args(args);
        run(&mut command);
    }

    /// Starts on a free port (or the port it had), waiting until it accepts connections.
    fn started(mut self) -> Cluster {
        if self.port == 0 {
            self.port = free_port();
        }
        self.start();
        self
    }

    fn start(&self) {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.dir.display());
        let log = self.dir.join("server.log").display().to_string();
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-l", &log, "-o", &options, "-w", "start"]);
    }

    /// `pg_ctl stop -m mode`: `immediate` is a crash (no shutdown checkpoint, nothing
    /// flushed that was not flushed).
    fn stop(&self, mode: &str) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-m", mode, "-w", "stop"]);
    }

    /// Crashes the server as a process killed by the kernel would: the postmaster kills
    /// every other process and recovers from the WAL on disk, losing what was only in
    /// memory. (The WAL writer, stopped by [`Cluster::hold_wal_writer`], is the victim.)
    fn crash(&self, wal_writer: &str) {
        run(Command::new("kill").args(["-KILL", wal_writer]));
        // Recovered once a new WAL writer runs (the old address may answer for a moment
        // before the postmaster has noticed the crash).
        let url = self.url("postgres");
        crate::util::eventually("the server to recover from the crash", crate::util::WAIT, || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok()?;
                tokio::spawn(connection);
                let row = client
                    .query_opt("SELECT pid::text FROM pg_stat_activity WHERE backend_type = 'walwriter'", &[])
                    .await
                    .ok()??;
                (row.get::<_, String>(0) != wal_writer).then_some(())
            })
        });
    }

    /// Stops the WAL writer process (SIGSTOP): asynchronous commits then stay in
    /// memory until something else flushes the WAL. Returns its pid.
    fn hold_wal_writer(&self, pg: &Pg) -> String {
        let pid = pg.text("SELECT pid::text FROM pg_stat_activity WHERE backend_type = 'walwriter'");
        run(Command::new("kill").args(["-STOP", &pid]));
        pid
    }

    fn promote(&self) {
        self.as_postgres("pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    fn pg(&self) -> Pg {
        Pg::connect_to(&self.url("postgres"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let program = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const ORDERS: &str = "CREATE TABLE orders (id bigserial PRIMARY KEY, note text, \
     hx xid8 NOT NULL DEFAULT pg_current_xact_id()); CREATE INDEX ON orders (hx, id)";

/// Inserts one row per note, each in a transaction of its own.
fn insert(pg: &Pg, notes: &[String]) {
    for note in notes {
        pg.exec(&format!("INSERT INTO orders (note) VALUES ('{note}')"));
    }
}

fn notes(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i}")).collect()
}

fn watcher(project: &Project, name: &str, connection: &str) {
    project.watcher(
        name,
        &format!(
            "namespace: pg\nname: {name}\nbatch_size: 100\nsource:\n  type: postgres\n  connection: \"{connection}\"\n  \
             sslmode: disable\n  table: orders\n  cursor: id\n  xid_column: hx\n  columns: [note]\nsink: {{type: stdout}}\n"
        ),
    );
}

/// `highwater once WATCHER`: its events, or the exit code and standard error.
fn once(project: &Project, watcher: &str) -> Result<Vec<Value>, (Option<i32>, String)> {
    let out = project.run(&["once", watcher]);
    if out.code != Some(0) {
        return Err((out.code, out.stderr));
    }
    Ok(out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON event")).collect())
}

fn once_ok(project: &Project, watcher: &str) -> Vec<Value> {
    once(project, watcher)
        .unwrap_or_else(|(code, stderr)| panic!("once {watcher} exited {code:?}:\n{stderr}"))
}

/// note → event id.
fn by_note(events: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in events {
        let note = e["item"]["columns"]["note"].as_str().expect("note").to_string();
        let id = e["id"].as_str().expect("id").to_string();
        assert!(out.insert(note.clone(), id).is_none(), "{note} announced twice in one run");
    }
    out
}

fn present(pg: &Pg) -> BTreeSet<String> {
    pg.query("SELECT note FROM orders").iter().map(|r| r.get::<_, String>(0)).collect()
}

/// The `highwater state set …` command a stop error names, run for `watcher`.
fn run_suggested(project: &Project, watcher: &str, stderr: &str) {
    let start = stderr.find("watermark '").unwrap_or_else(|| panic!("no state set command in:\n{stderr}"));
    let json = &stderr[start + "watermark '".len()..];
    let json = &json[..json.find('\'').expect("closing quote")];
    let out = project.run(&["state", "set", watcher, "watermark", json]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_crash_that_loses_async_commits_loses_no_row_and_a_restored_copy_stops_the_watcher() {
    // Commits are asynchronous, and the WAL writer is held: a crash loses every
    // commit that nothing else flushed, and their transaction ids come again.
    let cluster = Cluster::init(
        "async",
        &["synchronous_commit = off", "autovacuum = off", "checkpoint_timeout = 3600"],
    );
    let pg = cluster.pg();
    pg.exec(ORDERS);
    let project = Project::default_config();
    watcher(&project, "rows", &cluster.url("postgres"));
    insert(&pg, &notes("z", 5));
    let copied = by_note(&once_ok(&project, "pg/rows"));
    // A copy of the data directory as it is now, for the end of the test (the fast
    // stop flushes everything; the WAL writer of the new start has not run since).
    cluster.stop("fast");
    run(Command::new("cp").arg("-a").arg(cluster.data()).arg(cluster.dir.join("copy")));
    cluster.start();
    let pg = cluster.pg();
    let wal_writer = cluster.hold_wal_writer(&pg);
    insert(&pg, &notes("a", 10));
    let first = by_note(&once_ok(&project, "pg/rows"));
    assert_eq!(first.len(), 10);
    insert(&pg, &notes("b", 10));
    cluster.crash(&wal_writer);
    let pg = cluster.pg();
    let survived = present(&pg);
    assert!(survived.iter().all(|n| !n.starts_with('b')), "the crash lost no commit: {survived:?}");
    // Rows written after the crash take the lost transactions' ids again.
    insert(&pg, &notes("c", 10));
    let second = by_note(&once_ok(&project, "pg/rows"));
    let announced: BTreeSet<String> =
        copied.keys().chain(first.keys()).chain(second.keys()).cloned().collect();
    assert_eq!(announced, present(&pg), "announced (left) and in the table (right) differ");
    assert!(first.keys().all(|n| !second.contains_key(n)), "repeated: {second:?}");

    // The directory restored from the copy is the same cluster and timeline, behind
    // the watermark: the watcher stops, and names the command to go on with.
    cluster.stop("fast");
    let data = PathBuf::from(cluster.data());
    std::fs::remove_dir_all(&data).expect("remove data");
    std::fs::rename(cluster.dir.join("copy"), &data).expect("restore copy");
    cluster.start();
    let (code, stderr) = once(&project, "pg/rows").expect_err("a restored copy must stop the watcher");
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("the WAL went back") && stderr.contains("on the same timeline"), "{stderr}");
    run_suggested(&project, "pg/rows", &stderr);
    // From the suggested id on, the copy's rows are announced again, with the ids
    // they had.
    let again = by_note(&once_ok(&project, "pg/rows"));
    assert_eq!(again, copied, "the restored rows, announced again");
}

#[test]
fn a_failover_to_a_standby_that_was_behind_loses_no_row() {
    let primary = Cluster::init("primary", &["autovacuum = off", "checkpoint_timeout = 3600"]);
    let pg = primary.pg();
    pg.exec(ORDERS);
    pg.exec("CREATE ROLE reader LOGIN; GRANT SELECT ON orders TO reader");
    let standby = Cluster::standby_of(&primary, "standby");
    insert(&pg, &notes("r", 5));
    // The standby replays the first rows, then stops: it falls behind.
    let flushed = pg.text("SELECT pg_current_wal_flush_lsn()::text");
    let replica = standby.pg();
    crate::util::eventually("the standby to replay the first rows", crate::util::WAIT, || {
        let replayed = replica.text(&format!("SELECT (pg_last_wal_replay_lsn() >= '{flushed}')::text"));
        (replayed == "true").then_some(())
    });
    // A watcher can read from the standby too (its WAL position is the replay one).
    let replica_project = Project::default_config();
    watcher(&replica_project, "replica", &standby.url("reader"));
    assert_eq!(by_note(&once_ok(&replica_project, "pg/replica")).len(), 5);
    standby.stop("fast");
    insert(&pg, &notes("a", 10));
    // A superuser, who can read the timeline history, and a plain reader, who cannot.
    let project = Project::default_config();
    watcher(&project, "su", &primary.url("postgres"));
    watcher(&project, "reader", &primary.url("reader"));
    let before = by_note(&once_ok(&project, "pg/su"));
    assert_eq!(before.len(), 15);
    assert_eq!(by_note(&once_ok(&project, "pg/reader")).len(), 15);
    // The primary dies; the standby takes over its address and becomes the primary.
    primary.stop("immediate");
    let mut standby = standby;
    standby.configure_file("postgresql.auto.conf", &["primary_conninfo = ''"]);
    standby.port = primary.port;
    standby.start();
    standby.promote();
    let pg = standby.pg();
    assert!(present(&pg).iter().all(|n| !n.starts_with('a')), "the standby was not behind");
    // New rows take the ids of the transactions the failover lost.
    insert(&pg, &notes("c", 10));
    pg.exec("CHECKPOINT");
    let out = project.run(&["once", "pg/su"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rescan = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l.get("rescan_from_xid").is_some())
        .unwrap_or_else(|| panic!("no re-scan logged:\n{}", out.stderr));
    assert!(rescan["cause"].as_str().expect("cause").contains("branched off timeline 1"), "{rescan}");
    let after: Vec<Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON event")).collect();
    let after = by_note(&after);
    // Every row in the table is announced; the rows the standby had were announced
    // again with the ids they had, and the lost ones were announced before.
    for note in present(&pg) {
        let repeated_or_new = after.get(&note).or(before.get(&note));
        assert!(repeated_or_new.is_some(), "{note} was never announced: {after:?}");
        if let (Some(was), Some(again)) = (before.get(&note), after.get(&note)) {
            assert_eq!(was, again, "{note} repeated with another id");
        }
    }
    assert!(notes("c", 10).iter().all(|n| after.contains_key(n)), "{after:?}");
    // The reader cannot tell where the new timeline branched off: it stops, naming
    // the command, which then announces the rows written since.
    let (code, stderr) = once(&project, "pg/reader").expect_err("the reader must stop");
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("timeline 2") && stderr.contains("is not known"), "{stderr}");
    run_suggested(&project, "pg/reader", &stderr);
    let resumed = by_note(&once_ok(&project, "pg/reader"));
    assert!(notes("c", 10).iter().all(|n| resumed.contains_key(n)), "{resumed:?}");
}

#[test]
fn a_key_written_again_and_a_table_made_again_get_new_event_ids() {
    let schema = Schema::new("generations");
    let table = format!("{}.t", schema.name);
    let create = format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, hx xid8 NOT NULL DEFAULT pg_current_xact_id()); \
         CREATE INDEX ON {table} (hx, id)"
    );
    schema.pg.exec(&create);
    let project = watcher_project(&table, "  cursor: id\n  xid_column: hx");
    let once = |project: &Project| -> Vec<Value> {
        let out = project.run(&["once"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
    };
    schema.pg.exec(&format!("INSERT INTO {table} (id) VALUES (1)"));
    let first = once(&project);
    schema.pg.exec(&format!("DELETE FROM {table}; INSERT INTO {table} (id) VALUES (1)"));
    let second = once(&project);
    schema.pg.exec(&format!("DROP TABLE {table}; {create}; INSERT INTO {table} (id) VALUES (1)"));
    let third = once(&project);
    let all: Vec<Value> = first.into_iter().chain(second).chain(third).collect();
    assert_eq!(ids(&all), vec![1, 1, 1]);
    let distinct: BTreeSet<&str> = all.iter().map(|e| e["id"].as_str().expect("id")).collect();
    assert_eq!(distinct.len(), 3, "a new generation of key 1 kept an old id: {all:?}");
}
