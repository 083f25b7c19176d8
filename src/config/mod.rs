//! Configuration: YAML files → raw serde structs → validated [`Config`].
//!
//! Loading is pure (it reads files, never the network) and reports every problem it
//! finds at once, each with file, line, column and key path. Building the runtime
//! objects from a [`Config`] is the job of `source::build`, `sink::build` and
//! `state::open`.

pub mod env;
pub mod error;
pub mod yaml;

#[cfg(test)]
mod fuzz_tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use error::{ConfigError, ConfigErrors};

use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::state::StateConfig;
use crate::value::{HumanDuration, Name, Start};

/// Largest config file read (each file, before `${VAR}` expansion).
const MAX_FILE_SIZE: u64 = 1024 * 1024;

/// Where `highwater` looks for its config when neither `--config` nor
/// `HIGHWATER_CONFIG` names one, in this order: the quick start's file under the
/// working directory, then the packaged install's.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["config/highwater.yaml", "/etc/highwater/highwater.yaml"];

/// The config file to use: the one named (`--config`, `HIGHWATER_CONFIG`), else the
/// first of [`DEFAULT_CONFIG_PATHS`] that exists. With none, the error names every
/// path tried.
pub fn find(named: Option<&Path>) -> Result<PathBuf, ConfigErrors> {
    find_among(named, &DEFAULT_CONFIG_PATHS.map(Path::new))
}

fn find_among(named: Option<&Path>, candidates: &[&Path]) -> Result<PathBuf, ConfigErrors> {
    if let Some(named) = named {
        return Ok(named.to_path_buf());
    }
    if let Some(found) = candidates.iter().find(|c| c.exists()) {
        return Ok(found.to_path_buf());
    }
    let cwd = std::env::current_dir().map(|d| format!(" (under {})", d.display())).unwrap_or_default();
    let tried: Vec<String> = candidates
        .iter()
        .map(|c| if c.is_relative() { format!("{}{cwd}", c.display()) } else { c.display().to_string() })
        .collect();
    Err(ConfigErrors(vec![ConfigError::file(
        "",
        format!(
            "no config file: tried {}; name one with --config or HIGHWATER_CONFIG \
             (or lint watcher files alone: highwater check FILE…)",
            tried.join(" and ")
        ),
    )]))
}

/// The daemon's own file (`config/highwater.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonFile {
    /// Directory of watcher files (`*.yaml`, `*.yml`; one watcher each). Relative paths
    /// here and everywhere in the config are relative to the working directory.
    #[serde(default = "default_watchers_dir")]
    pub watchers_dir: PathBuf,
    /// Where `process_state` lives.
    #[serde(default, deserialize_with = "yaml::deserialize_tagged")]
    pub state: StateConfig,
    /// Settings every watcher gets unless its own file says otherwise.
    #[serde(default)]
    pub defaults: WatcherDefaults,
    /// How long shutdown waits for deliveries in flight before it leaves them pending.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: HumanDuration,
    /// The HTTP listener for `/metrics`, `/healthz` and `/readyz`. Off unless set.
    #[serde(default)]
    pub http: Option<crate::http::HttpConfig>,
}

fn default_watchers_dir() -> PathBuf {
    PathBuf::from("watchers")
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

/// What a watcher does when its sink refuses a batch for good (a 4xx other than 408
/// and 429, a body the receiver rejects).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Hold the watcher and keep retrying slowly, loudly: nothing moves past the batch.
    Block,
    /// Keep the batch under a `dead_letter/<batch id>` key, move the watermark on;
    /// `highwater state replay` sends it again later.
    DeadLetter,
}

/// Delivery retry timing: exponential from `initial` to `max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay after a failed attempt.
    #[serde(default = "default_retry_initial")]
    pub initial: HumanDuration,
    /// Longest delay between attempts (also the pace of a blocked watcher).
    #[serde(default = "default_retry_max")]
    pub max: HumanDuration,
}

fn default_retry_initial() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_retry_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig { initial: default_retry_initial(), max: default_retry_max() }
    }
}

/// Watcher settings with daemon-wide defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherDefaults {
    /// Time between polls (each sleep gets up to 10 % jitter so watchers spread out).
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Most items one poll returns, and so the size of one outbox batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// What to do with a batch the sink refuses for good.
    #[serde(default = "default_policy")]
    pub on_permanent_failure: FailurePolicy,
    /// Delivery retry timing.
    #[serde(default)]
    pub retry: RetryConfig,
}

fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_batch_size() -> usize {
    100
}

fn default_policy() -> FailurePolicy {
    FailurePolicy::Block
}

impl Default for WatcherDefaults {
    fn default() -> Self {
        WatcherDefaults {
            poll_interval: default_poll_interval(),
            batch_size: default_batch_size(),
            on_permanent_failure: default_policy(),
            retry: RetryConfig::default(),
        }
    }
}

/// One watcher file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherFile {
    /// Groups watchers (a team, a pipeline); defaults to `default`.
    #[serde(default)]
    pub namespace: Option<Name>,
    /// The watcher's name, unique within its namespace; defaults to the file name
    /// without its extension.
    #[serde(default)]
    pub name: Option<Name>,
    /// Where new items come from.
    #[serde(deserialize_with = "yaml::deserialize_tagged")]
    pub source: SourceConfig,
    /// Where their events go.
    #[serde(deserialize_with = "yaml::deserialize_tagged")]
    pub sink: SinkConfig,
    /// Overrides `defaults.poll_interval`.
    #[serde(default)]
    pub poll_interval: Option<HumanDuration>,
    /// Overrides `defaults.batch_size`.
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Overrides `defaults.on_permanent_failure`.
    #[serde(default)]
    pub on_permanent_failure: Option<FailurePolicy>,
    /// Overrides `defaults.retry`.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// Where a watcher without a watermark begins: `beginning` (default), `now`, or an
    /// RFC 3339 time. Once a watermark is stored it is not looked at again; `highwater
    /// state reset` returns to it.
    #[serde(default)]
    pub start: Option<Start>,
}

/// A validated watcher, ready to build. Equality decides whether a reload restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatcherConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its source.
    pub source: SourceConfig,
    /// Its sink.
    pub sink: SinkConfig,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Most items per poll and per batch.
    pub batch_size: usize,
    /// What a permanent sink failure does.
    pub on_permanent_failure: FailurePolicy,
    /// Delivery retry timing.
    pub retry: RetryConfig,
    /// Where it begins when it has no watermark.
    pub start: Start,
}

impl WatcherConfig {
    /// `namespace/name`, as logs and the CLI show it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The daemon file it was loaded from.
    pub file: PathBuf,
    /// The daemon settings.
    pub daemon: DaemonFile,
    /// Every watcher, in file-name order.
    pub watchers: Vec<WatcherConfig>,
}

/// Loads and validates the config at `path`, expanding `${VAR}` from the process
/// environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with an explicit environment, for tests.
pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let env = Recorded::new(env);
    load_recorded(path, &|name| env.lookup(name)).map_err(|errors| env.redact(errors))
}

/// An environment lookup that remembers what it found, so that errors can hide it: a
/// parser quotes a value of the wrong type, and that value may be a secret.
struct Recorded<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    used: std::cell::RefCell<Vec<(String, String)>>,
}

impl<'a> Recorded<'a> {
    fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Recorded { env, used: std::cell::RefCell::new(Vec::new()) }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        let value = (self.env)(name);
        if let Some(value) = &value {
            self.used.borrow_mut().push((name.to_string(), value.clone()));
        }
        value
    }

    /// Shows `${NAME}` in place of every value looked up. Values shorter than four
    /// characters are left alone: they would mangle messages and are no secret worth
    /// the name.
    fn redact(&self, mut errors: ConfigErrors) -> ConfigErrors {
        let used = self.used.borrow();
        let mut used: Vec<&(String, String)> =
            used.iter().filter(|(_, value)| value.chars().count() >= 4).collect();
        // Longest first, so that a value containing another is replaced whole.
        used.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        for error in &mut errors.0 {
            for (name, value) in &used {
                if error.message.contains(value.as_str()) {
                    error.message = error.message.replace(value.as_str(), &format!("${{{name}}}"));
                }
            }
        }
        errors
    }
}

fn load_recorded(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let daemon_text = read_expanded(path, env, &mut errors);
    let daemon: Option<DaemonFile> = daemon_text.as_deref().and_then(|text| {
        // An empty file means "all defaults".
        let text = if text.trim().is_empty() { "{}" } else { text };
        yaml::parse(path, text).map_err(|e| errors.extend(e)).ok()
    });
    let Some(daemon) = daemon else {
        return Err(ConfigErrors(errors));
    };
    let daemon_text = daemon_text.unwrap_or_default();
    validate_defaults(path, &daemon_text, &daemon.defaults, &mut errors);
    if let Some(http) = &daemon.http {
        for (key, message) in http.validate() {
            errors.push(located(path, &daemon_text, &format!("http.{key}"), message));
        }
    }
    for (key, message) in daemon.state.get().validate() {
        errors.push(located(path, &daemon_text, &format!("state.{key}"), message));
    }

    let files = match watcher_files(&daemon.watchers_dir) {
        Ok(files) => files,
        Err(message) => {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line: yaml::locate(&daemon_text, "watchers_dir"),
                column: None,
                key: Some("watchers_dir".into()),
                message,
            });
            Vec::new()
        }
    };

    let watchers = load_watchers(files, env, &daemon.defaults, &mut errors);
    if errors.is_empty() {
        Ok(Config { file: path.to_path_buf(), daemon, watchers })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads watcher files alone, without a daemon file (`highwater check FILE…`): each
/// path a watcher file or a directory of them, with the built-in defaults (a file
/// lints the same under any daemon file: only the keys it sets are checked). Names
/// must be unique among them, as in one watchers directory.
pub fn load_watcher_paths(paths: &[PathBuf]) -> Result<Vec<WatcherConfig>, ConfigErrors> {
    let process_env = |name: &str| std::env::var(name).ok();
    let env = Recorded::new(&process_env);
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    for path in paths {
        let found = if path.is_dir() {
            match watcher_files(path) {
                Ok(found) => found,
                Err(message) => {
                    errors.push(ConfigError::file(path, message));
                    continue;
                }
            }
        } else {
            vec![path.clone()]
        };
        // A file named twice (itself and its directory) is one watcher, not a duplicate.
        let same = |a: &Path, b: &Path| {
            a == b || a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a))
        };
        files.extend(
            found.into_iter().filter(|f| !files.iter().any(|seen| same(seen, f))).collect::<Vec<_>>(),
        );
    }
    let watchers = load_watchers(files, &|name| env.lookup(name), &WatcherDefaults::default(), &mut errors);
    if errors.is_empty() { Ok(watchers) } else { Err(env.redact(ConfigErrors(errors))) }
}

/// Parses and validates watcher files, recording every problem; a name given twice
/// is an error at its second file.
fn load_watchers(
    files: Vec<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
    defaults: &WatcherDefaults,
    errors: &mut Vec<ConfigError>,
) -> Vec<WatcherConfig> {
    let mut watchers = Vec::new();
    let mut seen: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    for file in files {
        let Some(text) = read_expanded(&file, env, errors) else { continue };
        let raw: WatcherFile = match yaml::parse(&file, &text) {
            Ok(raw) => raw,
            Err(e) => {
                errors.extend(e);
                continue;
            }
        };
        let Some(watcher) = validate_watcher(&file, &text, raw, defaults, errors) else {
            continue;
        };
        let key = (watcher.namespace.clone(), watcher.name.clone());
        if let Some(first) = seen.get(&key) {
            errors.push(ConfigError {
                file: file.clone(),
                line: yaml::locate(&text, "name"),
                column: None,
                key: Some("name".into()),
                message: format!(
                    "watcher {}/{} is already defined in {}",
                    watcher.namespace,
                    watcher.name,
                    first.display()
                ),
            });
            continue;
        }
        seen.insert(key, file.clone());
        watchers.push(watcher);
    }
    watchers
}

/// Loads only the daemon file (for `highwater state`, which must work while a watcher
/// file is broken).
pub fn load_daemon(path: &Path) -> Result<DaemonFile, ConfigErrors> {
    let mut errors = Vec::new();
    let process_env = |name: &str| std::env::var(name).ok();
    let env = Recorded::new(&process_env);
    let parsed = read_expanded(path, &|name| env.lookup(name), &mut errors).and_then(|text| {
        let text = if text.trim().is_empty() { "{}".to_string() } else { text };
        yaml::parse(path, &text).map_err(|e| errors.extend(e)).ok()
    });
    parsed.ok_or_else(|| env.redact(ConfigErrors(errors)))
}

/// Reads a file and expands its variables, recording any failure.
fn read_expanded(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<String> {
    // Read at most one byte past the cap: a config file is a few kilobytes, and a huge
    // one must not be read whole (or parsed) to be refused.
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|file| {
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_FILE_SIZE + 1), &mut bytes)
    });
    if let Err(e) = read {
        errors.push(ConfigError::file(path, format!("cannot read: {e}")));
        return None;
    }
    if bytes.len() as u64 > MAX_FILE_SIZE {
        errors.push(ConfigError::file(
            path,
            format!("is larger than {} KiB, the most a config file may be", MAX_FILE_SIZE / 1024),
        ));
        return None;
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(_) => {
            errors.push(ConfigError::file(path, "cannot read: stream did not contain valid UTF-8"));
            return None;
        }
    };
    match env::expand(&text, env) {
        Ok(text) => Some(text),
        Err(env_errors) => {
            errors.extend(env_errors.into_iter().map(|e| ConfigError {
                file: path.to_path_buf(),
                line: Some(e.line),
                column: Some(e.column),
                key: None,
                message: e.message,
            }));
            None
        }
    }
}

/// The watcher files in `dir`: `*.yaml` and `*.yml`, not hidden, sorted by name.
pub fn watcher_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read watchers directory {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read watchers directory {}: {e}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A problem found after parsing, placed with [`yaml::locate`].
fn located(file: &Path, text: &str, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        line: yaml::locate(text, key),
        column: None,
        key: Some(key.to_string()),
        message: message.into(),
    }
}

fn validate_defaults(file: &Path, text: &str, d: &WatcherDefaults, errors: &mut Vec<ConfigError>) {
    check_common(file, text, "defaults.", d.poll_interval.0, d.batch_size, &d.retry, errors);
}

/// Checks shared by the defaults and each watcher.
fn check_common(
    file: &Path,
    text: &str,
    prefix: &str,
    poll_interval: Duration,
    batch_size: usize,
    retry: &RetryConfig,
    errors: &mut Vec<ConfigError>,
) {
    if poll_interval < Duration::from_millis(10) {
        errors.push(located(file, text, &format!("{prefix}poll_interval"), "must be at least 10ms"));
    }
    if !(1..=100_000).contains(&batch_size) {
        errors.push(located(file, text, &format!("{prefix}batch_size"), "must be between 1 and 100000"));
    }
    if retry.initial.0.is_zero() {
        errors.push(located(file, text, &format!("{prefix}retry.initial"), "must be more than zero"));
    }
    if retry.initial > retry.max {
        errors.push(located(
            file,
            text,
            &format!("{prefix}retry.max"),
            "must not be shorter than retry.initial",
        ));
    }
}

/// A sink template (`partition_key`) naming a field the source's items never have
/// would fail every batch for good: refused here, with the fields they do have.
fn check_templates(
    file: &Path,
    text: &str,
    source: &SourceConfig,
    sink: &SinkConfig,
    errors: &mut Vec<ConfigError>,
) {
    let fields = source.item_kind().fields();
    for (key, template) in sink.item_templates() {
        for field in template.fields().filter(|f| !fields.contains(f)) {
            let hint = match yaml::closest(field, &fields) {
                Some(near) => format!("; did you mean `{{{near}}}`?"),
                None => {
                    let known: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
                    format!(" (they have {})", known.join(", "))
                }
            };
            errors.push(located(
                file,
                text,
                &format!("sink.{key}"),
                format!(
                    "`{{{field}}}`: the items of this `{}` source have no field `{field}`{hint}",
                    source.kind()
                ),
            ));
        }
    }
}

fn validate_watcher(
    file: &Path,
    text: &str,
    raw: WatcherFile,
    defaults: &WatcherDefaults,
    errors: &mut Vec<ConfigError>,
) -> Option<WatcherConfig> {
    let before = errors.len();
    let name = match raw.name {
        Some(name) => Some(name.0),
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            match Name::new(&stem) {
                Ok(name) => Some(name.0),
                Err(message) => {
                    errors.push(ConfigError::file(
                        file,
                        format!("the file name cannot be the watcher name ({message}); set `name:`"),
                    ));
                    None
                }
            }
        }
    };
    let poll_interval = raw.poll_interval.unwrap_or(defaults.poll_interval).0;
    let batch_size = raw.batch_size.unwrap_or(defaults.batch_size);
    let retry = raw.retry.unwrap_or(defaults.retry);
    // Only what this file sets is checked here: a bad default is reported once, at
    // its own line in the daemon file, not again for every watcher.
    let mut own = Vec::new();
    check_common(file, text, "", poll_interval, batch_size, &retry, &mut own);
    own.retain(|e| match e.key.as_deref() {
        Some("poll_interval") => raw.poll_interval.is_some(),
        Some("batch_size") => raw.batch_size.is_some(),
        Some(_) => raw.retry.is_some(),
        None => true,
    });
    errors.extend(own);
    for (key, message) in raw.source.validate() {
        errors.push(located(file, text, &format!("source.{key}"), message));
    }
    for (key, message) in raw.sink.validate() {
        errors.push(located(file, text, &format!("sink.{key}"), message));
    }
    check_templates(file, text, &raw.source, &raw.sink, errors);
    if let Some(start) = &raw.start
        && let Err(message) = raw.source.check_start(start)
    {
        errors.push(located(file, text, "start", message));
    }
    if errors.len() != before {
        return None;
    }
    Some(WatcherConfig {
        file: file.to_path_buf(),
        namespace: raw.namespace.map_or_else(|| "default".to_string(), |n| n.0),
        name: name?,
        source: raw.source,
        sink: raw.sink,
        poll_interval,
        batch_size,
        on_permanent_failure: raw.on_permanent_failure.unwrap_or(defaults.on_permanent_failure),
        retry,
        start: raw.start.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(daemon: &str, watchers: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let wdir = dir.path().join("w");
        std::fs::create_dir(&wdir).expect("mkdir");
        for (name, text) in watchers {
            std::fs::write(wdir.join(name), text).expect("write watcher");
        }
        let daemon = format!("watchers_dir: {}\n{daemon}", wdir.display());
        let path = dir.path().join("highwater.yaml");
        std::fs::write(&path, daemon).expect("write daemon");
        (dir, path)
    }

    fn env(name: &str) -> Option<String> {
        (name == "INBOX").then(|| "/data/in".to_string())
    }

    #[test]
    fn defaults_fill_in_and_names_come_from_file_names() {
        let (_dir, path) = project(
            "defaults:\n  poll_interval: 7s\n",
            &[
                ("orders.yaml", "source: {type: local_dir, path: \"${INBOX}\"}\nsink: {type: stdout}\n"),
                (
                    "other.yml",
                    "namespace: n\nname: x\nsource: {type: local_dir, path: p}\nsink: {type: stdout}\nbatch_size: 5\n",
                ),
                ("notes.txt", "not a watcher"),
                (".hidden.yaml", "not: a watcher"),
            ],
        );
        let config = load_with_env(&path, &env).expect("valid");
        assert_eq!(config.watchers.len(), 2);
        let orders = &config.watchers[0];
        assert_eq!((orders.namespace.as_str(), orders.name.as_str()), ("default", "orders"));
        assert_eq!(orders.poll_interval, Duration::from_secs(7));
        assert_eq!(orders.batch_size, 100);
        assert_eq!(orders.on_permanent_failure, FailurePolicy::Block);
        assert_eq!(orders.source.describe(), "local_dir /data/in (every file, recursive)");
        assert_eq!(config.watchers[1].id(), "n/x");
        assert_eq!(config.watchers[1].batch_size, 5);
        assert_eq!(config.daemon.shutdown_timeout, HumanDuration(Duration::from_secs(30)));
    }

    #[test]
    fn every_file_is_checked_before_reporting() {
        let (_dir, path) = project(
            "",
            &[
                ("a.yaml", "source: {type: local_dir, path: p}\nsink: {type: stdout}\nextra: 1\n"),
                ("b.yaml", "source: {type: local_dir, path: \"${NOPE}\"}\nsink: {type: stdout}\n"),
                ("c.yaml", "source: {type: local_dir, path: p}\nsink: {type: stdout}\nbatch_size: 0\n"),
            ],
        );
        let errors = load_with_env(&path, &env).expect_err("invalid").0;
        let keys: Vec<Option<&str>> = errors.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, vec![Some("extra"), None, Some("batch_size")]);
        assert_eq!(errors[0].line, Some(3));
        assert!(errors[1].message.contains("NOPE"));
        assert_eq!(errors[2].line, Some(3));
    }

    #[test]
    fn the_daemon_file_alone_loads_even_when_a_watcher_is_broken() {
        let (_dir, path) = project("state: {type: sqlite, path: s.db}\n", &[("a.yaml", "garbage: [")]);
        assert!(load_with_env(&path, &env).is_err());
        let daemon = load_daemon(&path).expect("daemon file");
        assert_eq!(daemon.state, StateConfig::Sqlite(crate::state::SqliteConfig { path: "s.db".into() }));
    }

    #[test]
    fn the_config_is_the_one_named_else_the_first_default_that_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (local, system) = (dir.path().join("local.yaml"), dir.path().join("system.yaml"));
        let candidates = [local.as_path(), system.as_path()];
        let named = Path::new("/elsewhere/h.yaml");
        assert_eq!(find_among(Some(named), &candidates), Ok(named.to_path_buf()), "named, even if absent");
        let none = find_among(None, &candidates).expect_err("neither exists").to_string();
        assert!(none.contains(&format!("tried {} and {}", local.display(), system.display())), "{none}");
        std::fs::write(&system, "").expect("write");
        assert_eq!(find_among(None, &candidates), Ok(system.clone()));
        std::fs::write(&local, "").expect("write");
        assert_eq!(find_among(None, &candidates), Ok(local));
        let relative =
            find_among(None, &[Path::new("surely/not/here.yaml")]).expect_err("absent").to_string();
        assert!(relative.contains("surely/not/here.yaml (under /"), "{relative}");
    }

    #[test]
    fn values_from_the_environment_are_hidden_in_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("w")).expect("mkdir");
        let daemon = dir.path().join("d.yaml");
        std::fs::write(&daemon, format!("watchers_dir: {}\n", dir.path().join("w").display()))
            .expect("write");
        std::fs::write(
            dir.path().join("w/a.yaml"),
            "source: {type: local_dir, path: x}\nsink: {type: stdout}\nbatch_size: \"${TOKEN}\"\n",
        )
        .expect("write");
        let env = |name: &str| (name == "TOKEN").then(|| "hunter2-xyz".to_string());
        let errors = load_with_env(&daemon, &env).expect_err("batch_size is not a number").to_string();
        assert!(!errors.contains("hunter2"), "{errors}");
        assert!(errors.contains("${TOKEN}"), "{errors}");
    }
}
