//! highwater: a daemon that watches places where data lands (local directories, S3
//! prefixes, Postgres tables) and sends one event per new item, once, to a sink.
//!
//! # Layout
//!
//! - [`config`]: YAML → raw structs → validated [`config::Config`]; every error at once.
//! - [`event`]: the one event shape and deterministic event ids.
//! - [`json`]: JSON text carried as text (store values, a source's state). A leaf.
//! - [`source`]: the `Source` trait and the sources (`local_dir`, `s3`, `postgres`).
//! - [`sink`]: the `Sink` trait, delivery outcomes, and the sinks (`stdout`, `file`).
//! - [`state`]: the `process_state` store (SQLite).
//! - [`outbox`]: a watcher's keys in the store (watermark, pending batch, dead letters)
//!   and their transactions.
//! - [`watcher`]: the one loop: outbox, deliver, commit.
//! - [`daemon`]: one task per watcher, signals, reload, clean shutdown.
//! - [`lease`]: which watchers this instance runs when several share a Postgres store.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`notify`]: systemd readiness, status and watchdog notifications.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`telemetry`]: per-watcher counters and state; what the endpoints and systemd see.
//! - [`cli`]: the subcommands and exit codes.
//! - [`value`]: config values parsed once and carried typed (durations, globs, names,
//!   URLs, headers, templates); the kinds of `type:`-tagged enums. A leaf.

/// mimalloc, for every binary and test that links the crate (so that the daemon and
/// its tests run on the same allocator): the allocator took a third of the daemon's
/// CPU at 10000-row Postgres batches under glibc's malloc, most of it in frees and
/// consolidation of small blocks (docs/internals.md). Built with `no_thp` (Cargo.toml).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub(crate) mod backoff;
pub mod cli;
pub(crate) mod config;
pub(crate) mod daemon;
pub mod event;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod lease;
pub(crate) mod notify;
pub(crate) mod outbox;
pub mod sink;
pub(crate) mod source;
pub(crate) mod state;
pub(crate) mod telemetry;
pub mod value;
pub(crate) mod watcher;

/// Makes ring the process-wide TLS provider. The HTTP clients are built without a
/// provider of their own (aws-lc, their default, would double the build); call this once
/// before any TLS client is built. Calling it again is harmless.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
