//! systemd's notification protocol (`Type=notify`): readiness, reload, stopping, a
//! one-line status, and watchdog pings. Every call is a no-op outside systemd (no
//! `NOTIFY_SOCKET`), and a failed send is logged, never fatal: the daemon's work does
//! not depend on the service manager hearing about it.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager that every watcher is built and the store is open.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager that a reload began. `MONOTONIC_USEC` lets systemd match
/// the `READY=1` that ends it to this reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Tells the service manager that shutdown began and may take up to `drain` (the
/// shutdown timeout): `EXTEND_TIMEOUT_USEC` keeps its stop timeout from killing the
/// daemon while deliveries in flight finish, however `TimeoutStopSec=` is set.
pub fn stopping(drain: Duration) {
    // A margin for the last commit and the exit after the deadline.
    let usec = (drain + Duration::from_secs(10)).as_micros().min(u128::from(u32::MAX)) as u32;
    send(&[
        NotifyState::Stopping,
        NotifyState::ExtendTimeoutUsec(usec),
        NotifyState::Status("Stopping: finishing deliveries in flight."),
    ]);
}

/// Updates the one-line status `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Tells the watchdog the daemon is alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog timeout systemd set for this process (`WatchdogSec=`), if any.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "Cannot notify the service manager.");
    }
}
