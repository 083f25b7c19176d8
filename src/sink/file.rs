//! The `file` sink: JSON lines appended to a file, synced to disk before acknowledging.

use std::io::Write;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;

use super::{BuildError, Delivery, Sink, SinkKind};
use crate::event::Event;
use crate::value::Kind;

/// `sink: {type: file}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file to append to; created (with its directory) if missing. It is opened
    /// for every batch, so moving it away (log rotation) starts a new file. A named
    /// pipe works too: the reader then gets each batch as it is written.
    pub path: PathBuf,
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
}

impl FileSink {
    /// Builds the sink; the file is opened at the first delivery.
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink { config }
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&mut self, events: &[Event]) -> Delivery {
        let buffer = match super::json_lines(events) {
            Ok(buffer) => buffer,
            Err(failed) => return failed,
        };
        let path = self.config.path.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            file.write_all(&buffer)?;
            // Acknowledging means the events survive a power cut. A named pipe or a
            // device has nothing to sync (and refuses the call).
            if file.metadata()?.is_file() { file.sync_data() } else { Ok(()) }
        })
        .await;
        match written {
            Ok(Ok(())) => Delivery::Acknowledged,
            Ok(Err(e)) => Delivery::retry(format!("cannot append to {}: {e}", self.config.path.display())),
            Err(e) => Delivery::retry(format!("file sink task failed: {e}")),
        }
    }
}
