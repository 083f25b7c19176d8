//! Shared test helpers: a scratch project directory, the binary, a running daemon
//! whose standard output is read line by line.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// The `highwater` binary built for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_highwater"))
}

/// A scratch directory laid out like a deployment: `config/highwater.yaml`,
/// `watchers/`, the state file, and whatever the test adds.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project whose daemon file is `daemon_yaml`.
    pub fn new(daemon_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("config")).expect("mkdir config");
        std::fs::create_dir_all(dir.path().join("watchers")).expect("mkdir watchers");
        std::fs::write(dir.path().join("config/highwater.yaml"), daemon_yaml).expect("write config");
        Project { dir }
    }

    /// A project with the default daemon file (SQLite state in the project).
    pub fn default_config() -> Self {
        Project::new(
            "watchers_dir: watchers\nstate:\n  type: sqlite\n  path: state/highwater.db\nshutdown_timeout: 10s\n",
        )
    }

    /// The project's root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `watchers/<name>.yaml`.
    pub fn watcher(&self, name: &str, yaml: &str) {
        std::fs::write(self.path().join("watchers").join(format!("{name}.yaml")), yaml)
            .expect("write watcher");
    }

    /// Writes a file relative to the project, creating directories.
    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("write");
        path
    }

    /// A `highwater` command run in the project directory with `args`.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.path())
            .args(args)
            .env("HIGHWATER_LOG_FORMAT", "json")
            .env_remove("HIGHWATER_CONFIG");
        cmd
    }

    /// Runs `highwater args…` to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run highwater");
        Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts `highwater run` in the background.
    pub fn start(&self) -> Daemon {
        self.start_with(&[], &[])
    }

    /// Starts `highwater run` with extra environment variables and arguments.
    pub fn start_with(&self, env: &[(&str, &str)], args: &[&str]) -> Daemon {
        let mut cmd = self.command(&["run"]);
        cmd.args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn highwater run");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (out_tx, out_rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if out_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon { child, stdout: out_rx, stderr: err_rx, logs: Vec::new() }
    }
}

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running daemon.
pub struct Daemon {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Log lines read so far.
    pub logs: Vec<String>,
}

impl Daemon {
    /// Reads `n` stdout lines, parsed as JSON, or panics after `timeout`.
    pub fn events(&mut self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    out.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain_logs();
                    panic!("got {} of {n} events in {timeout:?}; logs:\n{}", out.len(), self.logs.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain_logs();
                    panic!("daemon exited after {} of {n} events; logs:\n{}", out.len(), self.logs.join("\n"))
                }
            }
        }
        out
    }

    /// Asserts that no event arrives within `quiet`.
    pub fn no_events(&mut self, quiet: Duration) {
        if let Ok(line) = self.stdout.recv_timeout(quiet) {
            panic!("unexpected event: {line}");
        }
    }

    /// Waits for a log line containing `needle`, returning it.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.logs.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.logs.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    panic!("no log line with {needle:?} in {timeout:?}; logs:\n{}", self.logs.join("\n"))
                }
            }
        }
    }

    /// Collects the log lines written so far.
    pub fn drain_logs(&mut self) -> &[String] {
        while let Ok(line) = self.stderr.try_recv() {
            self.logs.push(line);
        }
        &self.logs
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on a child we own, with a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// SIGTERM, then waits for the exit code.
    pub fn stop(mut self) -> (Option<i32>, Vec<String>) {
        self.signal(libc::SIGTERM);
        let status = self.wait(Duration::from_secs(30));
        // Give the reader threads a moment to pass on the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.drain_logs();
        (status, std::mem::take(&mut self.logs))
    }

    /// Waits for exit, killing the process after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("daemon did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
