//! Several instances on one Postgres store, as real processes: three daemons share thirty
//! watchers while files land continuously; one is killed with SIGKILL, one is paused past
//! its lease (SIGSTOP, SIGCONT), one loses its store connection behind a proxy that stops
//! passing bytes, and all three are restarted one at a time. Every write of a watcher's
//! state is recorded by a trigger with the connection that made it and the lease it was
//! made under: each came from the instance holding the lease in force. Afterwards every
//! file was announced, and under one event id only. Repeats with that id (deliveries
//! inside the fencing window) are counted and reported, not failed. Hand-over times are
//! measured by `scripts/bench-leases.sh`, not asserted here.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::postgres::{Schema, url};
use crate::util::{Daemon, Project, eventually, field_str, http_get};

const WATCHERS: usize = 30;
/// Short, so that the test moves quickly; the default is 15 s.
const TTL: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(90);

/// A TCP proxy in front of the store that can be cut: it then stops passing bytes either
/// way and accepts new connections without passing anything, as a network that drops
/// every packet does (neither side hears a reset).
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) =
                        (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                    let flag = Arc::clone(&flag);
                    std::thread::spawn(move || {
                        let mut buffer = [0u8; 16384];
                        loop {
                            match from.read(&mut buffer) {
                                Ok(0) | Err(_) => break,
                                // Dropped on the floor while cut.
                                Ok(_) if flag.load(Ordering::SeqCst) => {}
                                Ok(n) => {
                                    if to.write_all(&buffer[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy { port, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Lands one file after another, round robin over the watchers' directories, until told
/// to stop; returns the paths it wrote.
struct Lander {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Lander {
    fn start(root: std::path::PathBuf) -> Lander {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut paths = Vec::new();
            let mut n = 0usize;
            while !flag.load(Ordering::SeqCst) {
                // Written aside and renamed into place: a file seen while it is still
                // being written is a generation of its own (a new id), as `local_dir`
                // promises with `min_age: 0s`.
                let path = format!("in/w{:02}/f{n:05}", n % WATCHERS);
                let aside = root.join(format!("aside/f{n:05}"));
                std::fs::write(&aside, format!("{n}")).expect("write a file aside");
                std::fs::rename(&aside, root.join(&path)).expect("land a file");
                paths.push(path);
                n += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            paths
        });
        Lander { stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("lander")
    }
}

/// The daemon file: the store is reached at `${HW_PG}` (each instance its own: one goes
/// through the proxy).
fn daemon_yaml(schema: &str) -> String {
    format!(
        "watchers_dir: watchers\nstate:\n  type: postgres\n  connection: \"${{HW_PG}}\"\n  sslmode: disable\n  \
         schema: {schema}\n  lease_ttl: {}s\nshutdown_timeout: 10s\nhttp:\n  listen: 127.0.0.1:0\n",
        TTL.as_secs()
    )
}

/// The store's live leases: watcher → owner pid.
fn owners(schema: &Schema) -> BTreeMap<String, u32> {
    let made = schema.pg.query(&format!("SELECT to_regclass('{}.leases') IS NOT NULL", schema.name));
    if !made[0].get::<_, bool>(0) {
        return BTreeMap::new();
    }
    schema
        .pg
        .query(&format!(
            "SELECT l.namespace || '/' || l.name, i.pid FROM {s}.leases l JOIN {s}.instances i ON i.id = l.owner \
             WHERE l.expires_at > clock_timestamp()",
            s = schema.name
        ))
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u32))
        .collect()
}

/// Waits until every watcher is leased, each to one of `pids`, each of which holds some.
fn spread_over(schema: &Schema, pids: &[u32], what: &str) {
    eventually(what, WAIT, || {
        let owners = owners(schema);
        let holders: BTreeSet<u32> = owners.values().copied().collect();
        (owners.len() == WATCHERS && holders == pids.iter().copied().collect()).then_some(())
    });
}

struct Instance {
    name: &'static str,
    daemon: Daemon,
}

impl Instance {
    /// Starts instance `name` (its output file) as incarnation `run` (the connection's
    /// `application_name`, which the audit records) with the store at `pg`.
    fn start(project: &Project, name: &'static str, run: &str, pg: &str) -> Instance {
        let out = format!("out/{name}.jsonl");
        let pg = format!("{pg}?application_name={run}");
        let daemon = project.start_with(&[("HW_PG", &pg), ("HW_OUT", &out)], &[]);
        Instance { name, daemon }
    }

    fn pid(&self) -> u32 {
        self.daemon.child.id()
    }
}

/// Records every write of a watcher's head (`watermark`) or pending batch with the
/// connection's `application_name` and the watcher's lease as the writing transaction
/// sees it (the lease row it holds `FOR SHARE`).
fn audit_writes(schema: &Schema) {
    let s = &schema.name;
    schema.pg.exec(&format!(
        "CREATE TABLE {s}.audit (watcher text, key text, writer text, owner text, live boolean, at timestamptz);
         CREATE FUNCTION {s}.audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO {s}.audit
           SELECT NEW.namespace || '/' || NEW.name, NEW.key, current_setting('application_name'),
                  l.owner, l.expires_at > clock_timestamp(), clock_timestamp()
           FROM (SELECT 1) one LEFT JOIN {s}.leases l ON l.namespace = NEW.namespace AND l.name = NEW.name;
           RETURN NEW;
         END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON {s}.process_state FOR EACH ROW
         WHEN (NEW.key IN ('watermark', 'pending') AND NEW.namespace = 'ha') EXECUTE FUNCTION {s}.audit();"
    ));
}

/// Every event every instance wrote: path (as the watchers see it, under the project)
/// → the ids it was announced under, and how
/// often each.
fn announced(project: &Project) -> BTreeMap<String, BTreeMap<String, usize>> {
    let mut seen: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let text =
            std::fs::read_to_string(project.path().join(format!("out/{name}.jsonl"))).unwrap_or_default();
        for line in text.lines() {
            let event: serde_json::Value = serde_json::from_str(line).expect("an event per line");
            let path = event["item"]["path"].as_str().expect("item.path").to_string();
            let id = event["id"].as_str().expect("id").to_string();
            *seen.entry(path).or_default().entry(id).or_default() += 1;
        }
    }
    seen
}

#[test]
fn three_instances_share_thirty_watchers_through_kills_pauses_cuts_and_restarts_losing_nothing() {
    let schema = Schema::new("leases");
    let project = Project::new(&daemon_yaml(&schema.name));
    for i in 0..WATCHERS {
        std::fs::create_dir_all(project.path().join(format!("in/w{i:02}"))).expect("mkdir");
        project.watcher(
            &format!("w{i:02}"),
            &format!(
                "namespace: ha\nname: w{i:02}\nsource:\n  type: local_dir\n  path: in/w{i:02}\n  min_age: 0s\n\
                 sink:\n  type: file\n  path: ${{HW_OUT}}\npoll_interval: 200ms\n"
            ),
        );
    }
    std::fs::create_dir_all(project.path().join("out")).expect("mkdir out");
    std::fs::create_dir_all(project.path().join("aside")).expect("mkdir aside");
    let direct = url();
    let config: tokio_postgres::Config = direct.parse().expect("HIGHWATER_TEST_PG_URL");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(format!("127.0.0.1:{port}"));
    let proxied = format!(
        "postgres://{}@127.0.0.1:{}/{}",
        config.get_user().unwrap_or("postgres"),
        proxy.port,
        config.get_dbname().unwrap_or("postgres")
    );

    let a = Instance::start(&project, "a", "a1", &direct);
    let mut b = Instance::start(&project, "b", "b1", &direct);
    let mut c = Instance::start(&project, "c", "c1", &proxied);
    // The process ids of each incarnation, to match a lease's owner (`host:pid:start`).
    let mut runs: BTreeMap<String, u32> = [("a1", a.pid()), ("b1", b.pid()), ("c1", c.pid())]
        .into_iter()
        .map(|(r, p)| (r.to_string(), p))
        .collect();
    eventually("the schema made", WAIT, || {
        let made = schema.pg.query(&format!("SELECT to_regclass('{}.leases') IS NOT NULL", schema.name));
        made[0].get::<_, bool>(0).then_some(())
    });
    audit_writes(&schema);
    let lander = Lander::start(project.path().to_path_buf());
    spread_over(&schema, &[a.pid(), b.pid(), c.pid()], "the watchers spread over three instances");

    // kill -9: its watchers move to the other two once its leases expire.
    a.daemon.kill9();
    spread_over(&schema, &[b.pid(), c.pid()], "a's watchers moved to b and c");

    // Paused past its lease: c takes b's watchers; b, woken, commits nothing under its
    // old leases (every write of it is fenced) and stops them.
    b.daemon.signal(libc::SIGSTOP);
    spread_over(&schema, &[c.pid()], "b's watchers moved to c while b was stopped");
    std::thread::sleep(Duration::from_secs(2));
    b.daemon.signal(libc::SIGCONT);
    b.daemon.wait_log_where("b, woken, finds its leases lost", |line| {
        field_str(line, "lifecycle") == Some("lease lost")
    });
    spread_over(&schema, &[b.pid(), c.pid()], "b back in the spread");

    // c's store connection cut: c stops its watchers within the ttl and says so on
    // /readyz; b takes them. Restored, c takes its share again.
    let addr = c.daemon.http_addr();
    proxy.set_cut(true);
    c.daemon.wait_log_where("c stops its watchers, its leases unrenewed", |line| {
        line.get("store_lost").and_then(serde_json::Value::as_bool) == Some(true)
    });
    let (status, _, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("lease_ttl"), "{body}");
    spread_over(&schema, &[b.pid()], "c's watchers moved to b while c was cut off");
    proxy.set_cut(false);
    spread_over(&schema, &[b.pid(), c.pid()], "c back in the spread");

    // A rolling restart: each instance stopped (handing its leases over at once) and
    // started again, one at a time.
    let (code, logs) = b.daemon.stop();
    assert_eq!(code, Some(0), "{logs:?}");
    assert!(logs.iter().any(|l| l.contains("Handed every lease over")), "{logs:?}");
    spread_over(&schema, &[c.pid()], "b's watchers handed to c");
    b = Instance::start(&project, "b", "b2", &direct);
    runs.insert("b2".into(), b.pid());
    spread_over(&schema, &[b.pid(), c.pid()], "b restarted and back in the spread");
    let (code, logs) = c.daemon.stop();
    assert_eq!(code, Some(0), "{logs:?}");
    let a = Instance::start(&project, "a", "a2", &direct);
    runs.insert("a2".into(), a.pid());
    spread_over(&schema, &[a.pid(), b.pid()], "c's watchers handed to a and b");
    c = Instance::start(&project, "c", "c2", &direct);
    runs.insert("c2".into(), c.pid());
    spread_over(&schema, &[a.pid(), b.pid(), c.pid()], "three instances again");

    // Nothing missed, nothing under two ids.
    let written = lander.finish();
    assert!(written.len() > 200, "only {} files landed", written.len());
    let deadline = std::time::Instant::now() + WAIT;
    let seen = loop {
        let seen = announced(&project);
        let missing: Vec<&String> = written.iter().filter(|p| !seen.contains_key(*p)).collect();
        if missing.is_empty() {
            break seen;
        }
        if std::time::Instant::now() > deadline {
            let owners = owners(&schema);
            panic!(
                "{} of {} files never announced, e.g. {:?}; leases now: {owners:?}",
                missing.len(),
                written.len(),
                &missing[..missing.len().min(10)]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let twice: Vec<_> = seen.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "announced under more than one id: {twice:?}");
    let repeats: usize = seen.values().flat_map(|ids| ids.values()).map(|n| n - 1).sum();

    // Every write of a watcher's state came from the instance holding its lease in force.
    let writes =
        schema.pg.query(&format!("SELECT watcher, key, writer, owner, live FROM {}.audit", schema.name));
    assert!(writes.len() > 100, "only {} writes audited", writes.len());
    for row in &writes {
        let (watcher, key, writer): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (owner, live): (Option<String>, Option<bool>) = (row.get(3), row.get(4));
        let pid = runs.get(&writer).unwrap_or_else(|| panic!("a write by an unknown connection {writer:?}"));
        let owner = owner.unwrap_or_default();
        assert!(
            owner.contains(&format!(":{pid}:")) && live == Some(true),
            "{watcher} {key} written by {writer} (pid {pid}) under the lease of {owner:?} (in force: {live:?})"
        );
    }
    eprintln!(
        "{} files announced, each under one id; {repeats} repeated deliveries with the same id; \
         {} writes of watchers' state, each by the lease's holder",
        written.len(),
        writes.len()
    );
    for instance in [a, b, c] {
        let (code, logs) = instance.daemon.stop();
        assert_eq!(code, Some(0), "{}: {logs:?}", instance.name);
    }
}

#[test]
fn a_watcher_defined_on_only_some_instances_runs_only_there() {
    let schema = Schema::new("leases_some");
    let yaml = daemon_yaml(&schema.name).replace("watchers_dir: watchers", "watchers_dir: ${HW_WATCHERS}");
    let project = Project::new(&yaml);
    let watcher = |name: &str| {
        format!(
            "namespace: ha\nname: {name}\nsource:\n  type: local_dir\n  path: in/{name}\n  min_age: 0s\n\
             sink:\n  type: file\n  path: ${{HW_OUT}}\npoll_interval: 200ms\n"
        )
    };
    for name in ["shared1", "shared2", "shared3", "only"] {
        std::fs::create_dir_all(project.path().join(format!("in/{name}"))).expect("mkdir");
    }
    for (dir, names) in
        [("wx", &["shared1", "shared2", "shared3"][..]), ("wy", &["shared1", "shared2", "shared3", "only"])]
    {
        for name in names {
            project.write(&format!("{dir}/{name}.yaml"), &watcher(name));
        }
    }
    let start = |dir: &str, out: &str| {
        project.start_with(&[("HW_PG", url().as_str()), ("HW_WATCHERS", dir), ("HW_OUT", out)], &[])
    };
    let x = start("wx", "out/x.jsonl");
    let y = start("wy", "out/y.jsonl");
    eventually("every watcher leased, `only` to y", WAIT, || {
        let owners = owners(&schema);
        (owners.len() == 4 && owners.get("ha/only") == Some(&y.child.id())).then_some(())
    });
    let mut listing = project.command(&["watchers"]);
    listing.envs([("HW_PG", url().as_str()), ("HW_WATCHERS", "wy"), ("HW_OUT", "out/listing.jsonl")]);
    let listing = listing.output().expect("watchers");
    let listed = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing.status.code(), Some(0), "{}", String::from_utf8_lossy(&listing.stderr));
    let only = listed.lines().find(|l| l.starts_with("ha/only")).unwrap_or_default();
    assert!(
        listed.starts_with("WATCHER") && listed.lines().next().unwrap_or_default().ends_with("OWNER"),
        "{listed}"
    );
    assert!(only.ends_with(&format!(":{}", y.child.id())), "{listed}");
    project.land("in/only/a", "a");
    eventually("y announces the file of `only`", WAIT, || {
        std::fs::read_to_string(project.path().join("out/y.jsonl")).ok().filter(|t| t.contains("in/only/a"))
    });
    // With y gone, x takes the shared watchers and never `only`, which it does not have.
    y.kill9();
    eventually("x holds the shared watchers", WAIT, || {
        let owners = owners(&schema);
        (owners.len() == 3 && owners.values().all(|p| *p == x.child.id())).then_some(())
    });
    std::thread::sleep(TTL);
    assert!(!owners(&schema).contains_key("ha/only"), "x took a watcher it does not have");

    // `once` runs a watcher nobody holds under a lease of its own, and leaves to x the
    // ones x runs.
    project.write("in/only/b", "b");
    let mut once = project.command(&["once"]);
    once.envs([("HW_PG", url().as_str()), ("HW_WATCHERS", "wy"), ("HW_OUT", "out/once.jsonl")]);
    let out = once.output().expect("run once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ha/only: 1 delivered"), "{stderr}");
    for name in ["shared1", "shared2", "shared3"] {
        assert!(
            stderr.contains(&format!("ha/{name}: skipped: another instance holds its lease")),
            "{stderr}"
        );
    }
    assert!(!owners(&schema).contains_key("ha/only"), "once kept the lease");
    let (code, logs) = x.stop();
    assert_eq!(code, Some(0), "{logs:?}");
}
