//! The `local_dir` source against a real directory: the shared conformance suite.
//! (The quick start, crash safety and a missing directory are in `core`.)

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::conformance::{self, SourceFixture};

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

    /// A file's place in time is the later of its modification and inode change times.
    /// The files of one call get one modification time a little in the future, later
    /// than their change times: they tie, and settle together when it comes. Each is
    /// written under a hidden name first (not announced), so that no poll sees it before
    /// its time is set.
    fn add(&self, names: &[&str]) {
        let at = SystemTime::now() + Duration::from_millis(300);
        for name in names {
            let hidden = self.path(&format!(".{name}"));
            std::fs::write(&hidden, name).expect("write");
            let file = std::fs::File::options().write(true).open(&hidden).expect("open");
            file.set_modified(at).expect("set mtime");
            drop(file);
            std::fs::rename(&hidden, self.path(name)).expect("rename");
        }
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
