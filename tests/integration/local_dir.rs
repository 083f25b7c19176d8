//! The `local_dir` source against a real directory: the shared conformance suite, and
//! what is specific to files (generations of a path told apart by inode and change
//! time). (The quick start, crash safety and a missing directory are in `core`.)

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

use crate::conformance::{self, SourceFixture};
use crate::util::{Project, land_tied_files};

/// A directory of its own.
struct LocalDir {
    dir: tempfile::TempDir,
}

impl LocalDir {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl SourceFixture for LocalDir {
    fn kind(&self) -> &'static str {
        "local_dir"
    }

    fn source_keys(&self) -> String {
        format!("  path: {}\n  min_age: 0s\n", self.dir.path().display())
    }

    /// The files of one call tie (see [`land_tied_files`]).
    fn add(&self, names: &[&str]) {
        let files: Vec<(&str, &str)> = names.iter().map(|n| (*n, *n)).collect();
        land_tied_files(self.dir.path(), &files);
    }

    fn name_of(&self, event: &Value) -> String {
        event["item"]["relative_path"].as_str().expect("relative_path").to_string()
    }

    fn check_item(&self, event: &Value) {
        let item = &event["item"];
        assert_eq!(item["kind"], "file", "{event}");
        let name = self.name_of(event);
        assert_eq!(item["size"], name.len(), "{event}");
        assert_eq!(item["path"], self.path(&name).display().to_string(), "{event}");
    }
}

#[test]
fn local_dir_conformance() {
    conformance::run(&LocalDir { dir: tempfile::tempdir().expect("tempdir") });
}

/// `highwater once`; the events it printed.
fn once(project: &Project) -> Vec<serde_json::Value> {
    let out = project.run(&["once"]);
    assert_eq!(out.code, Some(0), "once failed:\n{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// A file deleted and copied in again with `cp -p` (same size, same modification time)
/// used to match its remembered entry and never be announced.
#[test]
fn local_dir_a_file_copied_in_again_with_its_times_kept_is_announced() {
    let p = Project::default_config();
    p.watcher(
        "landing",
        "name: landing\nsource: {type: local_dir, path: landing, min_age: 0s}\nsink: {type: stdout}\n",
    );
    let source = p.write("outside/orders.csv", "1,2,3\n");
    // An upload keeps the time the file was made elsewhere.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    std::fs::File::options().write(true).open(&source).expect("open").set_modified(old).expect("set mtime");
    std::fs::create_dir_all(p.path().join("landing")).expect("mkdir");
    let target = p.path().join("landing/orders.csv");
    let cp = || {
        let status = Command::new("cp").arg("-p").arg(&source).arg(&target).status().expect("cp -p");
        assert!(status.success());
    };
    cp();
    let first = once(&p);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(once(&p).is_empty());
    std::fs::remove_file(&target).expect("rm");
    cp();
    let again = once(&p);
    assert_eq!(again.len(), 1, "the new copy is announced: {again:?}");
    assert_eq!(again[0]["item"]["modified"], first[0]["item"]["modified"], "same modification time");
    assert_eq!(again[0]["item"]["size"], first[0]["item"]["size"]);
    assert_ne!(again[0]["id"], first[0]["id"], "a new generation, a new id");
    assert!(once(&p).is_empty());
}

/// docs/reference/local_dir.md promises a warning when `max_remembered` makes the look-back window shrink.
#[test]
fn local_dir_says_when_the_cap_forgets_files() {
    let p = Project::default_config();
    p.watcher(
        "landing",
        "name: landing\nsource: {type: local_dir, path: landing, min_age: 0s, max_remembered: 2}\nsink: {type: stdout}\n",
    );
    let mut warned = Vec::new();
    // One run per file: each lands at a later change time than the one before.
    for name in ["a.csv", "b.csv", "c.csv"] {
        p.write(&format!("landing/{name}"), name);
        let out = p.run(&["once"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        warned.extend(
            out.stderr
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|l| l["max_remembered"] == 2),
        );
    }
    assert_eq!(warned.len(), 1, "said once, when the third file pushed the first out: {warned:?}");
    assert_eq!(warned[0]["forgotten"], 1, "{}", warned[0]);
    assert_eq!(warned[0]["level"], "WARN");
    assert!(warned[0]["floor"].is_string(), "{}", warned[0]);
}
