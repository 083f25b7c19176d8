//! The `file` sink: JSON lines appended to a file, synced to disk before acknowledging.
//!
//! A crash in the middle of a write (kill -9, a power cut) can leave a partial last
//! line, and the batch is then delivered again. The next append first ends that line,
//! so the redelivered events start on a line of their own.

use std::fs::TryLockError;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;

use super::{Acked, BuildError, Delivery, Lines, Sink, SinkKind};
use crate::event::Encoded;
use crate::value::{FileMode, Kind};

/// `sink: {type: file}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to; created (with its directory) if missing. It is opened
    /// for every batch, so moving it away (log rotation) starts a new file. A named
    /// pipe works too: the reader then gets each batch as it is written.
    pub path: PathBuf,
    /// The permission bits the file gets when the sink creates it (octal; the umask
    /// does not apply). A file that exists keeps its own. Events can carry what a
    /// source read, so not readable by everyone by default.
    #[serde(default = "default_mode")]
    pub mode: FileMode,
}

fn default_mode() -> FileMode {
    FileMode(0o640)
}

impl Kind for FileSinkConfig {
    const TAG: &'static str = "file";
}

impl SinkKind for FileSinkConfig {
    fn describe(&self) -> String {
        format!("{} {}", Self::TAG, self.path.display())
    }

    fn validate(&self) -> Vec<(String, String)> {
        if self.path.as_os_str().is_empty() {
            vec![("path".into(), "must not be empty".into())]
        } else {
            Vec::new()
        }
    }

    fn build(&self) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(FileSink::new(self.clone())))
    }
}

/// Appends events to a file.
pub struct FileSink {
    config: FileSinkConfig,
    /// How long a delivery waits for the file's lock ([`LOCK_WAIT`]).
    lock_wait: Duration,
}

impl FileSink {
    /// Builds the sink; the file is opened at the first delivery.
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink { config, lock_wait: LOCK_WAIT }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, events: &[Encoded], acked: &Acked) -> Delivery {
        let lines = Lines::of(events);
        let (path, mode, wait) = (self.config.path.clone(), self.config.mode, self.lock_wait);
        let written = tokio::task::spawn_blocking(move || {
            let (written, result) = append(&path, mode, &lines.bytes, wait);
            (lines.whole(written), result)
        })
        .await;
        match written {
            Ok((_, Ok(()))) => Delivery::Acknowledged,
            Ok((whole, Err(e))) => {
                // The lines written whole and synced are in the file; a retry appends
                // the rest (after ending a torn last line).
                acked.add(whole);
                Delivery::retry(format!("cannot append to {}: {e}", self.config.path.display()))
            }
            Err(e) => Delivery::retry(format!("file sink task failed: {e}")),
        }
    }
}

/// Appends `buffer` (whole JSON lines) to the file at `path`, creating it (and its
/// directory) if missing, and syncs it; waits at most `lock_wait` for the file's lock.
/// Returns how many bytes of `buffer` are in the file for good: all on success; on a
/// failure part-way (a full disk), those written before it, once synced (none when the
/// sync fails too).
fn append(path: &Path, mode: FileMode, buffer: &[u8], lock_wait: Duration) -> (usize, std::io::Result<()>) {
    let mut file = match open(path, mode, lock_wait) {
        Ok(file) => file,
        Err(e) => return (0, Err(e)),
    };
    let (written, result) = super::write_counting(&mut file.0, buffer);
    // Acknowledging means the events survive a power cut. A named pipe or a device has
    // nothing to sync (and refuses the call).
    let synced = if file.1 { file.0.sync_data() } else { Ok(()) };
    match (result, synced) {
        (Ok(()), Ok(())) => (written, Ok(())),
        (Err(e), Ok(())) => (written, Err(e)),
        (_, Err(e)) => (0, Err(e)),
    }
}

/// Opens the file for appending, ending a line torn by a crash; and whether it is a
/// regular file (which has something to sync).
fn open(path: &Path, mode: FileMode, lock_wait: Duration) -> std::io::Result<(std::fs::File, bool)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    // Created here with its mode, set again past the umask; an existing file (or a
    // named pipe) is left as it is. An existing regular file is opened for reading
    // too, to look at its last byte; a named pipe must not be (a reader-writer open of
    // a FIFO never blocks and never sees EPIPE).
    let (mut file, readable) =
        match std::fs::OpenOptions::new().create_new(true).append(true).mode(mode.0).open(path) {
            Ok(file) => {
                file.set_permissions(std::fs::Permissions::from_mode(mode.0))?;
                (file, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file());
                (std::fs::OpenOptions::new().create(true).append(true).read(regular).open(path)?, regular)
            }
            Err(e) => return Err(e),
        };
    let regular = file.metadata()?.is_file();
    if regular {
        // Held (an `flock`) until the file is closed, after its sync: another watcher
        // of this daemon or another process appending to the same file meanwhile would
        // see a batch half written, its last byte no newline, and end a line that was
        // not torn (an empty line in the file).
        lock(&file, lock_wait)?;
    }
    // Read once the lock is held, so that what it sees is whole batches.
    let len = file.metadata()?.len();
    if regular && readable && len > 0 {
        let mut last = [0u8; 1];
        file.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            // The rest of a line torn by a crash: end it, so that a line-by-line reader
            // meets one bad line and then the redelivered batch, not one glued line.
            file.write_all(b"\n")?;
        }
    }
    Ok((file, regular))
}

/// How long a delivery waits for the file's lock before it fails (and is retried with
/// backoff). Far longer than any batch holds it (a write and a sync), so that only
/// another program holding the lock makes it run out; the blocking thread the wait
/// occupies is then given back.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes the exclusive `flock` on `file`, waiting at most `wait`: polled, not a
/// blocking `flock`, which nothing could stop.
fn lock(file: &std::fs::File, wait: Duration) -> std::io::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if started.elapsed() < wait => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "another writer has held the file's lock (an flock) for over {}s; \
                         events are appended once it lets go",
                        wait.as_secs()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_ended_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/events.jsonl");
        append(&path, default_mode(), b"{\"a\":1}\n", LOCK_WAIT).1.unwrap();
        append(&path, default_mode(), b"{\"b\":2}\n", LOCK_WAIT).1.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
        // A crash in the middle of a line.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"c\":").unwrap();
        append(&path, default_mode(), b"{\"c\":3}\n", LOCK_WAIT).1.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n{\"c\":\n{\"c\":3}\n");
    }

    #[test]
    fn watchers_appending_to_one_file_at_once_never_end_each_others_lines() {
        // Several watchers may name the same file; a batch larger than a page is seen
        // growing while it is written, and its last byte then is not a newline.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.jsonl");
        let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(200));
        let batch = line.repeat(100);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        append(&path, default_mode(), batch.as_bytes(), LOCK_WAIT).1.unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 4 * 25 * 100);
        assert!(text.lines().all(|l| l == line.trim_end()), "a line was ended by another writer");
    }

    #[tokio::test]
    async fn a_file_another_process_keeps_locked_fails_the_delivery_after_a_bounded_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locked.jsonl");
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        // An `flock` on another open of the file conflicts as another process's would.
        let holder = std::fs::File::open(&path).unwrap();
        holder.lock().unwrap();
        let config = FileSinkConfig { path: path.clone(), mode: default_mode() };
        let mut sink = FileSink { config, lock_wait: Duration::from_millis(50) };
        let event = Encoded::of(&crate::event::sample_file_event("e1")).unwrap();
        let acked = Acked::new();
        match sink.deliver(std::slice::from_ref(&event), &acked).await {
            Delivery::RetryLater { reason, .. } => {
                assert!(reason.contains(&path.display().to_string()), "{reason}");
                assert!(reason.contains("lock"), "{reason}");
            }
            other => panic!("expected a retry, got {other:?}"),
        }
        assert_eq!(acked.get(), 0);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"a\":1}\n", "nothing appended meanwhile");
        // Once it lets go, the next attempt appends.
        holder.unlock().unwrap();
        assert!(matches!(sink.deliver(std::slice::from_ref(&event), &acked).await, Delivery::Acknowledged));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_new_file_gets_its_mode_past_the_umask_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = dir.path().join("new.jsonl");
        append(&fresh, default_mode(), b"{}\n", LOCK_WAIT).1.unwrap();
        assert_eq!(mode_of(&fresh), 0o640);
        // 0666 is more than any usual umask lets through: set after creating.
        let wide = dir.path().join("wide.jsonl");
        append(&wide, FileMode(0o666), b"{}\n", LOCK_WAIT).1.unwrap();
        assert_eq!(mode_of(&wide), 0o666);
        append(&wide, FileMode(0o600), b"{}\n", LOCK_WAIT).1.unwrap();
        assert_eq!(mode_of(&wide), 0o666, "an existing file keeps its mode");
        assert_eq!(std::fs::read_to_string(&wide).unwrap(), "{}\n{}\n");
    }
}
