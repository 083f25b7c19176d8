//! The `local_dir` source: new and changed files under a directory.
//!
//! A file's place in time is its *change time*: the later of its modification time and
//! its inode change time. The inode change time moves when a file is created, renamed
//! or moved into the directory, and cannot be set by the writer, so a file copied with
//! its old modification time kept (`cp -p`, `rsync -t`, an SFTP client) still counts as
//! new when it lands.
//!
//! The watermark holds the newest change time announced, plus the files announced
//! within the look-back window before it (path, modification time, size, inode and inode
//! change time), so that files sharing a timestamp and files that land late inside the
//! window are announced exactly once. The window's memory is capped; when the cap bites,
//! the oldest part of the window is dropped and its floor recorded.
//!
//! A file is the same file as remembered only when its inode, inode change time, size
//! and modification time all match: a file deleted and written again with the same size
//! and a preserved modification time is a new inode (and a new change time), so it is
//! announced, with a new id.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::window::{self, Smallest};
use super::{Found, Polled, Source, SourceError, SourceKind};
use crate::event::{Change, FileItem, Item};
use crate::value::{Glob, HumanDuration, Kind};

/// `source: {type: local_dir}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDirConfig {
    /// The directory to watch. It must exist when the watcher polls.
    pub path: PathBuf,
    /// Only files whose path relative to `path` matches (`*.csv`, `**/*.parquet`).
    /// `*` stays within one directory; `**` crosses directories. Default: every file.
    #[serde(default)]
    pub glob: Option<Glob>,
    /// Descend into subdirectories.
    #[serde(default = "yes")]
    pub recursive: bool,
    /// Also announce hidden files and files in hidden directories (names starting with
    /// `.`). Off by default: uploaders (rsync, many SFTP clients) write to a hidden
    /// temporary name and rename when done.
    #[serde(default)]
    pub include_hidden: bool,
    /// A file is announced only once it has not changed for this long, so a file still
    /// being written is not announced half-done.
    #[serde(default = "default_min_age")]
    pub min_age: HumanDuration,
    /// How far behind the newest announced file to keep looking for files that land late.
    #[serde(default = "default_lookback")]
    pub lookback: HumanDuration,
    /// Which changes become events: `created`, `updated` (the same path with a new
    /// inode, inode change time, size or modification time).
    #[serde(default = "default_events")]
    pub events: Vec<Change>,
    /// Most files remembered inside the look-back window (bounds the watermark's size).
    #[serde(default = "default_max_remembered")]
    pub max_remembered: usize,
}

fn yes() -> bool {
    true
}

fn default_min_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_lookback() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}

fn default_events() -> Vec<Change> {
    vec![Change::Created, Change::Updated]
}

fn default_max_remembered() -> usize {
    100_000
}

impl Kind for LocalDirConfig {
    const TAG: &'static str = "local_dir";
}

impl SourceKind for LocalDirConfig {
    fn describe(&self) -> String {
        let glob = self.glob.as_ref().map_or("every file", |g| g.pattern.as_str());
        format!(
            "local_dir {} ({glob}{})",
            self.path.display(),
            if self.recursive { ", recursive" } else { "" }
        )
    }

    fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if self.path.as_os_str().is_empty() {
            errors.push(("path".into(), "must not be empty".into()));
        }
        if self.events.contains(&Change::Deleted) {
            errors.push(("events".into(), "local_dir announces `created` and `updated` only".into()));
        }
        if self.events.is_empty() {
            errors.push(("events".into(), "must name at least one of created, updated".into()));
        }
        if self.max_remembered == 0 {
            errors.push(("max_remembered".into(), "must be at least 1".into()));
        }
        errors
    }

    fn build(&self) -> Box<dyn Source> {
        Box::new(LocalDir::new(self.clone()))
    }
}

/// The stored watermark.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Mark {
    /// Newest change time announced, nanoseconds since the epoch.
    high_ns: i64,
    /// Files changed at or before this are not looked at again (set when the
    /// remembered set overflowed); None while it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    floor_ns: Option<i64>,
    /// Files announced inside the look-back window: relative path → [change time,
    /// modification time, size, inode, inode change time].
    #[serde(default)]
    seen: BTreeMap<String, Entry>,
}

/// A remembered file. Stored as an array to keep the watermark compact; a watermark of
/// an older release holds only the first three (change time, modification time, size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    changed_ns: i64,
    mtime_ns: i64,
    size: u64,
    /// (inode, inode change time); None in an entry of an older release.
    inode: Option<(u64, i64)>,
}

impl Entry {
    /// True when the file found is the one remembered. An entry of an older release is
    /// judged by modification time and size, as it was written.
    fn is(&self, found: &Entry) -> bool {
        self.mtime_ns == found.mtime_ns
            && self.size == found.size
            && self.inode.is_none_or(|inode| found.inode == Some(inode))
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.inode {
            Some((ino, ctime_ns)) => {
                (self.changed_ns, self.mtime_ns, self.size, ino, ctime_ns).serialize(serializer)
            }
            None => (self.changed_ns, self.mtime_ns, self.size).serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Now(i64, i64, u64, u64, i64),
            Older(i64, i64, u64),
        }
        Ok(match Stored::deserialize(deserializer)? {
            Stored::Now(changed_ns, mtime_ns, size, ino, ctime_ns) => {
                Entry { changed_ns, mtime_ns, size, inode: Some((ino, ctime_ns)) }
            }
            Stored::Older(changed_ns, mtime_ns, size) => Entry { changed_ns, mtime_ns, size, inode: None },
        })
    }
}

/// A file that may be announced, ordered by (change time, path): the delivery order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    changed_ns: i64,
    relative: String,
    mtime_ns: i64,
    size: u64,
    ino: u64,
    ctime_ns: i64,
    change: Change,
}

/// The runtime `local_dir` source.
pub struct LocalDir {
    config: LocalDirConfig,
}

impl LocalDir {
    /// Builds the source; nothing is touched until the first poll.
    pub fn new(config: LocalDirConfig) -> Self {
        LocalDir { config }
    }
}

fn nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// How far ahead of this machine's clock a modification time is still believed.
const FUTURE_TOLERANCE_NS: i64 = 5_000_000_000;

/// A file's place in time: the later of its modification time and its inode change
/// time. A modification time in the future (an archive from a machine whose clock was
/// ahead, `touch -d`) is not believed: the change time, which the kernel sets, stands
/// instead, so such a file is neither held back as still settling until that time nor
/// lets the watermark jump ahead of the files written after it.
fn changed_at(mtime_ns: i64, ctime_ns: i64, now_ns: i64) -> i64 {
    if mtime_ns > now_ns.saturating_add(FUTURE_TOLERANCE_NS) { ctime_ns } else { mtime_ns.max(ctime_ns) }
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[async_trait]
impl Source for LocalDir {
    fn kind(&self) -> &'static str {
        LocalDirConfig::TAG
    }

    async fn poll(
        &mut self,
        watermark: Option<&serde_json::Value>,
        limit: usize,
    ) -> Result<Polled, SourceError> {
        let mark: Option<Mark> = super::read_watermark(LocalDirConfig::TAG, watermark)?;
        let config = self.config.clone();
        let now_ns = nanos(SystemTime::now());
        tokio::task::spawn_blocking(move || scan(&config, mark, limit, now_ns))
            .await
            .map_err(|e| SourceError::transient(format!("directory scan task failed: {e}")))?
    }

    async fn check(&mut self) -> Result<(), SourceError> {
        let path = self.config.path.clone();
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(SourceError::needs_attention(format!("{} is not a directory", path.display()))),
            Err(e) => {
                Err(SourceError::needs_attention(format!("cannot read directory {}: {e}", path.display())))
            }
        }
    }

    fn summarize(&self, watermark: &serde_json::Value) -> serde_json::Value {
        match serde_json::from_value::<Mark>(watermark.clone()) {
            Ok(mark) if mark == Mark::default() => serde_json::Value::Null,
            Ok(mark) => serde_json::json!({
                "changed": DateTime::<Utc>::from_timestamp_nanos(mark.high_ns)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
                "remembered": mark.seen.len(),
            }),
            Err(_) => watermark.clone(),
        }
    }
}

/// One full poll: walk the directory, keep the `limit` oldest candidates, build the
/// next watermark. Memory is bounded by `limit` and the remembered set, not by the size
/// of the directory.
fn scan(
    config: &LocalDirConfig,
    mark: Option<Mark>,
    limit: usize,
    now_ns: i64,
) -> Result<Polled, SourceError> {
    let root = &config.path;
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(SourceError::needs_attention(format!("{} is not a directory", root.display()))),
        Err(e) => {
            return Err(SourceError::needs_attention(format!(
                "cannot read directory {}: {e}",
                root.display()
            )));
        }
    }
    let lookback_ns = duration_ns(config.lookback.0);
    let settled_before = now_ns.saturating_sub(duration_ns(config.min_age.0));
    let horizon = mark.as_ref().map(|m| window::horizon(m.high_ns, m.floor_ns, lookback_ns));
    let empty = BTreeMap::new();
    let seen = mark.as_ref().map_or(&empty, |m| &m.seen);

    let mut heap: Smallest<Candidate> = Smallest::new(limit);
    let mut dirs = vec![PathBuf::new()];
    while let Some(relative_dir) = dirs.pop() {
        let dir = root.join(&relative_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if relative_dir.as_os_str().is_empty() => {
                return Err(SourceError::needs_attention(format!(
                    "cannot read directory {}: {e}",
                    dir.display()
                )));
            }
            Err(e) => {
                // One unreadable subdirectory must not hide the rest of the tree.
                tracing::warn!(directory = %dir.display(), error = %e, "Skipping unreadable directory.");
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(directory = %dir.display(), error = %e, "Skipping unreadable directory entry.");
                    continue;
                }
            };
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                tracing::warn!(directory = %dir.display(), name = ?entry.file_name(), "Skipping a file whose name is not UTF-8.");
                continue;
            };
            if !config.include_hidden && file_name.starts_with('.') {
                continue;
            }
            let relative_path = relative_dir.join(file_name);
            // Follows symlinks: a link to a file is announced as that file.
            let meta = match std::fs::metadata(entry.path()) {
                Ok(meta) => meta,
                Err(e) => {
                    tracing::debug!(path = %entry.path().display(), error = %e, "Skipping a file that vanished or cannot be read.");
                    continue;
                }
            };
            if meta.is_dir() {
                if config.recursive {
                    dirs.push(relative_path);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let relative = relative_path.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
            if let Some(glob) = &config.glob
                && !glob.is_match(&relative)
            {
                continue;
            }
            let mtime_ns = meta.mtime().saturating_mul(1_000_000_000).saturating_add(meta.mtime_nsec());
            let ctime_ns = meta.ctime().saturating_mul(1_000_000_000).saturating_add(meta.ctime_nsec());
            let changed_ns = changed_at(mtime_ns, ctime_ns, now_ns);
            if changed_ns > settled_before {
                continue; // still settling; the next poll sees it
            }
            if horizon.is_some_and(|h| changed_ns < h) {
                continue;
            }
            let found = Entry { changed_ns, mtime_ns, size: meta.len(), inode: Some((meta.ino(), ctime_ns)) };
            let change = match seen.get(&relative) {
                Some(entry) if entry.is(&found) => continue,
                Some(_) => Change::Updated,
                None => Change::Created,
            };
            if !config.events.contains(&change) {
                continue;
            }
            heap.push(Candidate {
                changed_ns,
                relative,
                mtime_ns,
                size: meta.len(),
                ino: meta.ino(),
                ctime_ns,
                change,
            });
        }
    }

    let overflow = heap.overflowed();
    let chosen = heap.into_sorted_vec();
    let mut next = mark.unwrap_or_default();
    let mut items = Vec::with_capacity(chosen.len());
    for c in chosen {
        next.high_ns = next.high_ns.max(c.changed_ns);
        next.seen.insert(
            c.relative.clone(),
            Entry {
                changed_ns: c.changed_ns,
                mtime_ns: c.mtime_ns,
                size: c.size,
                inode: Some((c.ino, c.ctime_ns)),
            },
        );
        let modified = DateTime::<Utc>::from_timestamp_nanos(c.mtime_ns);
        items.push(Found {
            change: c.change,
            // Inode and change time tell generations of a path apart: a file written
            // again, even with the same size and modification time, gets a new id.
            identity: vec![
                c.relative.clone(),
                c.size.to_string(),
                c.mtime_ns.to_string(),
                c.ino.to_string(),
                c.ctime_ns.to_string(),
            ],
            item: Item::File(FileItem {
                path: root.join(&c.relative).to_string_lossy().into_owned(),
                relative_path: c.relative,
                size: c.size,
                modified,
            }),
        });
    }
    prune(&mut next, lookback_ns, config.max_remembered);
    Ok(Polled { items, next: serde_json::to_value(&next).unwrap_or_default(), more: overflow })
}

/// Forgets files that fell out of the look-back window, then caps the rest (see
/// [`window::prune`]).
fn prune(mark: &mut Mark, lookback_ns: i64, cap: usize) {
    let high = mark.high_ns;
    window::prune(
        &mut mark.seen,
        |entry| entry.changed_ns,
        high,
        &mut mark.floor_ns,
        lookback_ns,
        cap,
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(dir: &Path) -> LocalDirConfig {
        LocalDirConfig {
            path: dir.to_path_buf(),
            glob: None,
            recursive: true,
            include_hidden: false,
            min_age: HumanDuration(Duration::ZERO),
            lookback: HumanDuration(Duration::from_secs(3600)),
            events: default_events(),
            max_remembered: 1000,
        }
    }

    fn names(p: &Polled) -> Vec<String> {
        p.items
            .iter()
            .map(|f| match &f.item {
                Item::File(file) => file.relative_path.clone(),
                other => panic!("not a file: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn ties_and_batches_announce_each_file_once() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..25 {
            std::fs::write(dir.path().join(format!("f{i:02}.csv")), "x").unwrap();
        }
        let cfg = config(dir.path());
        let now = nanos(SystemTime::now()) + 1_000_000_000;
        let mut mark = None;
        let mut all = Vec::new();
        loop {
            let polled = scan(&cfg, mark.clone(), 10, now).unwrap();
            all.extend(names(&polled));
            if polled.items.is_empty() {
                break;
            }
            mark = Some(serde_json::from_value(polled.next).unwrap());
        }
        all.sort();
        let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}.csv")).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn updates_hidden_files_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.csv"), "1").unwrap();
        std::fs::write(dir.path().join("sub/b.csv"), "1").unwrap();
        std::fs::write(dir.path().join(".part.csv"), "1").unwrap();
        std::fs::write(dir.path().join("c.txt"), "1").unwrap();
        let mut cfg = config(dir.path());
        cfg.glob = Some(Glob::new("**/*.csv").unwrap());
        let now = nanos(SystemTime::now()) + 10_000_000_000;
        let first = scan(&cfg, None, 100, now).unwrap();
        assert_eq!(names(&first), vec!["a.csv", "sub/b.csv"]);
        let mark: Mark = serde_json::from_value(first.next).unwrap();
        assert!(scan(&cfg, Some(mark.clone()), 100, now).unwrap().items.is_empty());
        std::fs::write(dir.path().join("a.csv"), "22").unwrap();
        let second = scan(&cfg, Some(mark), 100, now).unwrap();
        assert_eq!(names(&second), vec!["a.csv"]);
        assert_eq!(second.items[0].change, Change::Updated);
    }

    #[test]
    fn a_late_file_inside_the_window_is_announced_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        std::fs::write(dir.path().join("new.csv"), "x").unwrap();
        let now = nanos(SystemTime::now()) + 10_000_000_000;
        let first = scan(&cfg, None, 100, now).unwrap();
        let mark: Mark = serde_json::from_value(first.next).unwrap();
        // A file whose change time is a minute older than the watermark (as a
        // multipart-style late arrival would be) is still inside the window.
        let late = Mark { high_ns: mark.high_ns + 60_000_000_000, ..mark.clone() };
        std::fs::write(dir.path().join("late.csv"), "x").unwrap();
        let second = scan(&cfg, Some(late.clone()), 100, now + 120_000_000_000).unwrap();
        assert_eq!(names(&second), vec!["late.csv"]);
        let after: Mark = serde_json::from_value(second.next).unwrap();
        assert!(scan(&cfg, Some(after), 100, now + 120_000_000_000).unwrap().items.is_empty());
        // Outside the window it is not looked at.
        let far =
            Mark { high_ns: late.high_ns + 7200 * 1_000_000_000, seen: BTreeMap::new(), floor_ns: None };
        assert!(scan(&cfg, Some(far), 100, now + 8000 * 1_000_000_000).unwrap().items.is_empty());
    }

    #[test]
    fn settling_files_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.min_age = HumanDuration(Duration::from_secs(60));
        std::fs::write(dir.path().join("a"), "x").unwrap();
        let now = nanos(SystemTime::now());
        assert!(scan(&cfg, None, 100, now).unwrap().items.is_empty());
        assert_eq!(scan(&cfg, None, 100, now + 61_000_000_000).unwrap().items.len(), 1);
    }

    #[test]
    fn pruning_applies_the_window_and_the_cap() {
        let mut mark = Mark { high_ns: 100, floor_ns: None, seen: BTreeMap::new() };
        let entry = |changed_ns| Entry { changed_ns, mtime_ns: 0, size: 0, inode: Some((1, 0)) };
        for i in 0..5 {
            mark.seen.insert(format!("old{i}"), entry(50 + i));
        }
        for i in 0..3 {
            mark.seen.insert(format!("new{i}"), entry(100));
        }
        prune(&mut mark, 1000, 4);
        assert_eq!(mark.seen.len(), 4);
        assert_eq!(mark.floor_ns, Some(53));
        prune(&mut mark, 10, 100);
        assert_eq!(mark.seen.len(), 3, "outside the window");
    }

    #[test]
    fn a_file_written_again_with_the_same_size_and_mtime_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "same").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let now = nanos(SystemTime::now()) + 10_000_000_000;
        let first = scan(&cfg, None, 100, now).unwrap();
        let mark: Mark = serde_json::from_value(first.next).unwrap();
        assert!(scan(&cfg, Some(mark.clone()), 100, now).unwrap().items.is_empty());
        // Deleted and written again as `cp -p` would: same size, same modification time.
        // A hidden link keeps the old inode taken, so the new file cannot get it back
        // within the same tick of the change-time clock.
        std::fs::hard_link(&path, dir.path().join(".old")).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "same").unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        let second = scan(&cfg, Some(mark), 100, now).unwrap();
        assert_eq!(names(&second), vec!["a.csv"]);
        assert_eq!(second.items[0].change, Change::Updated);
        assert_ne!(first.items[0].identity, second.items[0].identity, "a new generation, a new id");
    }

    #[test]
    fn a_modification_time_in_the_future_neither_waits_nor_hides_the_present() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.min_age = HumanDuration(Duration::from_secs(1));
        let path = dir.path().join("ahead.csv");
        std::fs::write(&path, "x").unwrap();
        let ahead = SystemTime::now() + Duration::from_secs(2 * 86_400);
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(ahead).unwrap();
        let now = nanos(SystemTime::now()) + 2_000_000_000;
        let first = scan(&cfg, None, 100, now).unwrap();
        assert_eq!(names(&first), vec!["ahead.csv"], "settled by its change time");
        let mark: Mark = serde_json::from_value(first.next).unwrap();
        assert!(mark.high_ns <= now, "the watermark stays in the present");
        std::fs::write(dir.path().join("present.csv"), "y").unwrap();
        let later = nanos(SystemTime::now()) + 2_000_000_000;
        assert_eq!(names(&scan(&cfg, Some(mark), 100, later).unwrap()), vec!["present.csv"]);
    }

    #[test]
    fn watermarks_of_the_older_format_are_read() {
        let old = serde_json::json!({"high_ns": 5, "seen": {"a.csv": [5, 4, 3]}});
        let mark: Mark = serde_json::from_value(old).unwrap();
        let entry = mark.seen["a.csv"];
        assert_eq!(entry.inode, None);
        assert!(entry.is(&Entry { changed_ns: 9, mtime_ns: 4, size: 3, inode: Some((7, 9)) }));
        let new =
            serde_json::to_value(Entry { changed_ns: 1, mtime_ns: 2, size: 3, inode: Some((4, 5)) }).unwrap();
        assert_eq!(new, serde_json::json!([1, 2, 3, 4, 5]));
    }

    #[test]
    fn a_missing_directory_needs_attention() {
        let cfg = config(Path::new("/nonexistent/highwater-test"));
        let err = scan(&cfg, None, 10, 0).unwrap_err();
        assert_eq!(err.class, super::super::ErrorClass::NeedsAttention);
        assert!(err.message.contains("/nonexistent/highwater-test"), "{}", err.message);
    }
}
