//! Integration tests: the real `highwater` binary against real servers on loopback.
//!
//! One binary (see Cargo.toml) with one module per area; shared helpers in `util`.

mod airflow;
mod architecture;
mod cli;
mod conformance;
mod core;
mod docs;
mod leases;
mod local_dir;
mod monitoring;
mod moto_support;
mod package;
mod postgres;
mod postgres_history;
mod postgres_session;
mod postgres_state;
mod postgres_values;
mod postgres_watchers;
mod s3;
mod s3_notify;
mod s3_support;
mod service;
mod store;
mod systemd;
mod util;
mod webhook;
