//! The `local_dir` source against a real directory: the shared conformance suite.
//! (The quick start, crash safety and a missing directory are in `core`.)

use serde_json::Value;
use std::path::PathBuf;

use crate::conformance::{self, SourceFixture};
use crate::util::land_tied_files;

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
