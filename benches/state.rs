//! The state stores side by side: commit latency and delivered events per second of one
//! watcher on the Postgres store next to the SQLite store, in the same run, through the
//! real binary (`highwater once`, a `local_dir` watcher, a `file` sink).
//!
//! Run: `HIGHWATER_TEST_PG_URL=postgres://postgres@127.0.0.1:5432/DB cargo bench --bench
//! state` (optionally `-- FILES`, default 2000). For each store the bench lands FILES
//! files and runs `once` until all are delivered, at `batch_size` 1 (a commit per
//! event: the commit latency, stage and sink write included) and at `batch_size` 100
//! (throughput). Each Postgres run uses a schema of its own, dropped afterwards. Numbers
//! depend on the machine; the ratios against SQLite are what to compare.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// One measured run: how long until every file was delivered, and in how many batches.
struct Run {
    elapsed: Duration,
    batches: usize,
}

fn project(dir: &Path, state: &str, files: usize, batch_size: usize) {
    std::fs::create_dir_all(dir.join("config")).expect("mkdir");
    std::fs::create_dir_all(dir.join("watchers")).expect("mkdir");
    std::fs::create_dir_all(dir.join("inbox")).expect("mkdir");
    std::fs::write(dir.join("config/highwater.yaml"), format!("watchers_dir: watchers\nstate:\n{state}"))
        .expect("write config");
    std::fs::write(
        dir.join("watchers/w.yaml"),
        format!(
            "namespace: b\nname: w\nsource:\n  type: local_dir\n  path: inbox\n  min_age: 0s\n\
             sink:\n  type: file\n  path: out/events.jsonl\nbatch_size: {batch_size}\n"
        ),
    )
    .expect("write watcher");
    for i in 0..files {
        std::fs::write(dir.join(format!("inbox/f{i:06}.csv")), "x").expect("write file");
    }
}

/// Runs `once` until `files` events were delivered.
fn deliver_all(dir: &Path, files: usize, batch_size: usize) -> Run {
    let start = Instant::now();
    let mut delivered = 0;
    for _ in 0..files + 10 {
        let out = Command::new(env!("CARGO_BIN_EXE_highwater"))
            .current_dir(dir)
            .args(["once"])
            .env_remove("HIGHWATER_CONFIG")
            .output()
            .expect("run highwater once");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let n: usize = stderr
            .split("b/w: ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no delivered count in: {stderr}"));
        delivered += n;
        if delivered >= files {
            break;
        }
    }
    assert_eq!(delivered, files, "every file delivered once");
    Run { elapsed: start.elapsed(), batches: files.div_ceil(batch_size) }
}

fn drop_schema(url: &str, schema: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.expect("drop");
    });
}

fn main() {
    let files: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2000);
    let url = std::env::var("HIGHWATER_TEST_PG_URL")
        .expect("set HIGHWATER_TEST_PG_URL to a Postgres database the bench may create schemas in");
    println!(
        "state stores: {files} files, one local_dir watcher, file sink, `highwater once` until delivered"
    );
    println!(
        "reproduce: HIGHWATER_TEST_PG_URL={url} cargo bench --bench state -- {files}\n\n\
         {:<10} {:>6} {:>12} {:>14} {:>10}",
        "store", "batch", "seconds", "ms/commit", "events/s"
    );
    for batch_size in [1, 100] {
        let mut baseline = None;
        for kind in ["sqlite", "postgres"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let schema = format!("hw bench {}", std::process::id());
            let state = match kind {
                "sqlite" => "  type: sqlite\n  path: state/highwater.db\n".to_string(),
                _ => format!(
                    "  type: postgres\n  connection: \"{url}\"\n  sslmode: disable\n  schema: \"{schema}\"\n"
                ),
            };
            if kind == "postgres" {
                drop_schema(&url, &schema);
            }
            project(dir.path(), &state, files, batch_size);
            let run = deliver_all(dir.path(), files, batch_size);
            if kind == "postgres" {
                drop_schema(&url, &schema);
            }
            let secs = run.elapsed.as_secs_f64();
            let ratio = match baseline {
                None => {
                    baseline = Some(secs);
                    String::from("(baseline)")
                }
                Some(base) => format!("x{:.2} of sqlite", secs / base),
            };
            println!(
                "{kind:<10} {batch_size:>6} {secs:>12.2} {:>14.2} {:>10.0}  {ratio}",
                secs * 1000.0 / run.batches as f64,
                files as f64 / secs
            );
        }
    }
}
