//! The documentation kept true to the code: each field table of docs/reference/ names
//! exactly the keys its config struct takes, says which are required as the struct does,
//! and gives the defaults the struct's default functions return; every relative link of
//! README.md, CONTRIBUTING.md and docs/ leads to a file and a heading that exist; every
//! watcher the docs show (and every example watcher shipped) passes `highwater check`;
//! README shows the commands CI and the quick start run; `rust-version` covers the
//! locked dependencies; the SFTP guide announces an upload once.
//!
//! The structs are read from their source files (the config types are private to the
//! crate), so a renamed or added field fails here until its page says so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The heading of a source's or sink's table.
const FIELDS: &str = "## Fields";

/// A config struct a table covers: (source file, struct, key prefix of its fields in
/// the table).
type Covered = (&'static str, &'static str, &'static str);

/// Each reference page, the heading its table is under, and the structs it covers.
const PAGES: &[(&str, &str, &[Covered])] = &[
    (
        "docs/reference/config.md",
        "## The daemon file",
        &[
            ("src/config/mod.rs", "DaemonFile", ""),
            ("src/state/mod.rs", "SqliteConfig", "state."),
            ("src/state/postgres.rs", "PostgresConfig", "state."),
            ("src/config/mod.rs", "WatcherDefaults", "defaults."),
            ("src/config/mod.rs", "RetryConfig", "defaults.retry."),
            ("src/http.rs", "HttpConfig", "http."),
        ],
    ),
    ("docs/reference/config.md", "## Watcher files", &[("src/config/mod.rs", "WatcherFile", "")]),
    ("docs/reference/local_dir.md", FIELDS, &[("src/source/local_dir.rs", "LocalDirConfig", "")]),
    (
        "docs/reference/s3.md",
        FIELDS,
        &[
            ("src/source/s3/mod.rs", "S3Config", ""),
            ("src/source/s3/mod.rs", "NotificationsConfig", "notifications."),
        ],
    ),
    ("docs/reference/postgres.md", FIELDS, &[("src/source/postgres/config.rs", "PostgresConfig", "")]),
    ("docs/reference/stdout.md", FIELDS, &[("src/sink/stdout.rs", "StdoutConfig", "")]),
    ("docs/reference/file.md", FIELDS, &[("src/sink/file.rs", "FileSinkConfig", "")]),
    ("docs/reference/webhook.md", FIELDS, &[("src/sink/webhook.rs", "WebhookConfig", "")]),
    ("docs/reference/airflow.md", FIELDS, &[("src/sink/airflow/mod.rs", "AirflowConfig", "")]),
];

/// A field as the struct declares it.
#[derive(Debug)]
struct Field {
    ty: String,
    /// The `#[serde(...)]` attributes before it, joined.
    serde: String,
}

impl Field {
    fn default_fn(&self) -> Option<&str> {
        let (_, rest) = self.serde.split_once("default = \"")?;
        rest.split_once('"').map(|(f, _)| f)
    }

    fn required(&self) -> bool {
        !self.serde.contains("default") && !self.ty.starts_with("Option<")
    }
}

/// The fields of `pub struct NAME` in `file`, by their YAML key.
fn struct_fields(file: &str, name: &str) -> BTreeMap<String, Field> {
    let text = read(file);
    let mut lines = text.lines();
    let head = format!("pub struct {name} ");
    lines.by_ref().find(|l| l.starts_with(&head)).unwrap_or_else(|| panic!("{file}: no `pub struct {name}`"));
    let mut fields = BTreeMap::new();
    let mut serde = String::new();
    if text.contains(&format!("pub struct {name} {{}}")) {
        return fields;
    }
    for line in lines {
        let line = line.trim();
        if line == "}" {
            break;
        }
        if let Some(attr) = line.strip_prefix("#[serde(") {
            serde.push_str(attr);
            continue;
        }
        if let Some((field, ty)) = line.strip_prefix("pub ").and_then(|l| l.split_once(": ")) {
            let key = serde
                .split_once("rename = \"")
                .and_then(|(_, r)| r.split_once('"'))
                .map_or(field.to_string(), |(r, _)| r.to_string());
            fields.insert(
                key,
                Field { ty: ty.trim_end_matches(',').to_string(), serde: std::mem::take(&mut serde) },
            );
        }
    }
    fields
}

/// What the default function `name` in `file` returns, as the docs would write it.
fn default_value(file: &str, name: &str) -> String {
    let text = read(file);
    let head = format!("fn {name}() ");
    let mut lines = text.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().unwrap_or_else(|| panic!("{file}: no fn {name}"));
    let body = lines.next().expect("a one-line body").trim().to_string();
    if let Some(secs) =
        body.strip_prefix("HumanDuration(Duration::from_secs(").and_then(|b| b.strip_suffix("))"))
    {
        let secs: u64 = secs.split('*').map(|n| n.trim().parse::<u64>().expect("seconds")).product();
        return format!("{secs}s");
    }
    if let Some(items) = body.strip_prefix("vec![").and_then(|b| b.strip_suffix(']')) {
        let items: Vec<String> =
            items.split(',').map(|i| i.trim().rsplit("::").next().expect("variant").to_lowercase()).collect();
        return format!("[{}]", items.join(", "));
    }
    if let Some(octal) = body.strip_prefix("FileMode(0o").and_then(|b| b.strip_suffix(')')) {
        return format!("0{octal}");
    }
    if let Some(path) =
        body.strip_prefix("PathBuf::from(\"").or_else(|| body.strip_prefix("std::path::PathBuf::from(\""))
    {
        return path.trim_end_matches("\")").to_string();
    }
    if let Some(addr) = body.strip_prefix("SocketAddr::from(([").and_then(|b| b.strip_suffix("))")) {
        let (ip, port) = addr.split_once("], ").expect("([a, b, c, d], port)");
        return format!("{}:{port}", ip.split(", ").collect::<Vec<_>>().join("."));
    }
    // A string: `"highwater".to_string()`.
    if let Some((text, _)) = body.strip_prefix('"').and_then(|b| b.split_once('"')) {
        return text.to_string();
    }
    if let Some((_, variant)) = body.split_once("::").filter(|(ty, _)| ty.chars().all(char::is_alphanumeric))
    {
        // An enum's variant, as serde's snake_case writes it.
        return variant.chars().fold(String::new(), |mut out, c| {
            if c.is_ascii_uppercase() && !out.is_empty() {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            out
        });
    }
    if body.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        let decl = format!("const {body}: ");
        let line =
            text.lines().find(|l| l.contains(&decl)).unwrap_or_else(|| panic!("{file}: no const {body}"));
        let value = line.split_once(" = ").expect("const value").1.trim_end_matches(';');
        return value.replace('_', "");
    }
    body.replace('_', "")
}

/// A duration as the docs write it (`1h`, `90s`), in seconds; None for anything else.
fn doc_seconds(value: &str) -> Option<u64> {
    let unit = value.trim_start_matches(|c: char| c.is_ascii_digit());
    let n: u64 = value[..value.len() - unit.len()].parse().ok()?;
    Some(
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        },
    )
}

/// The rows of the first table under `heading`: key -> (required cell, default cell).
fn table(page: &str, heading: &str) -> BTreeMap<String, (String, String)> {
    let text = read(page);
    let section = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{page}: no `{heading}` section"))
        .1;
    let mut rows = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2)
    {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 5, "{page}: a row of five cells: {line}");
        let key = cells[0].trim_matches('`').to_string();
        assert!(
            rows.insert(key.clone(), (cells[2].to_string(), cells[3].to_string())).is_none(),
            "{page}: {key} twice"
        );
    }
    rows
}

#[test]
fn every_reference_table_matches_its_config_struct() {
    let mut problems = Vec::new();
    for (page, heading, structs) in PAGES {
        let mut rows = table(page, heading);
        // `type` picks the struct; it is not a field of it.
        let tags: Vec<String> =
            rows.keys().filter(|k| *k == "type" || k.ends_with(".type")).cloned().collect();
        for tag in tags {
            let (required, _) = rows.remove(&tag).expect("row");
            assert!(required.starts_with("yes"), "{page}: `{tag}` is required");
        }
        let mut documented: BTreeSet<String> = rows.keys().cloned().collect();
        for (file, name, prefix) in *structs {
            for (key, field) in struct_fields(file, name) {
                let key = format!("{prefix}{key}");
                let Some((required, default)) = rows.get(&key) else {
                    problems.push(format!("{page}: `{key}` ({name} in {file}) is missing from the table"));
                    continue;
                };
                documented.remove(&key);
                let says_required = required == "yes" || required.starts_with("yes,");
                if says_required != field.required() {
                    problems.push(format!(
                        "{page}: `{key}` is {}required in {name}, the table says `{required}`",
                        if field.required() { "" } else { "not " }
                    ));
                }
                let literal = default.strip_prefix('`').and_then(|d| d.strip_suffix('`'));
                if let Some(function) = field.default_fn() {
                    let value = default_value(file, function);
                    let matches = literal.is_some_and(|l| {
                        l == value || doc_seconds(l).is_some_and(|s| Some(s) == doc_seconds(&value))
                    });
                    if !matches {
                        problems.push(format!(
                            "{page}: `{key}` defaults to `{value}` ({function}), the table says {default}"
                        ));
                    }
                } else if field.serde.contains("default") && field.ty == "bool" && literal != Some("false") {
                    problems.push(format!("{page}: `{key}` defaults to `false`, the table says {default}"));
                }
            }
        }
        for key in documented {
            problems.push(format!("{page}: `{key}` is in the table but no config struct takes it"));
        }
    }
    assert!(
        problems.is_empty(),
        "the reference tables and the config structs disagree:\n{}",
        problems.join("\n")
    );
}

/// The headings of a markdown file as GitHub makes anchors of them.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            let title = line.trim_start_matches('#').trim().to_lowercase();
            let anchor: String = title
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            found.insert(anchor);
        }
    }
    found
}

fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read docs/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut files = vec![root().join("README.md"), root().join("CONTRIBUTING.md")];
    walk(&root().join("docs"), &mut files);
    files
}

#[test]
fn every_relative_link_of_the_docs_leads_somewhere() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let mut fenced = false;
        for line in text.lines() {
            if line.starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            for (_, rest) in line.match_indices("](").map(|(i, _)| line.split_at(i + 2)) {
                let Some((target, _)) = rest.split_once(')') else { continue };
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let linked =
                    if path.is_empty() { file.clone() } else { file.parent().expect("dir").join(path) };
                let shown = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                if !linked.exists() {
                    broken.push(format!("{shown}: {target}: no such file"));
                } else if !anchor.is_empty() && linked.is_file() {
                    let text = std::fs::read_to_string(&linked).expect("read");
                    if !anchors(&text).contains(anchor) {
                        broken.push(format!("{shown}: {target}: no such heading"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn readme_shows_the_commands_the_quick_start_and_ci_run() {
    let readme = read("README.md");
    assert!(readme.contains("```sh\ncargo run --locked -- run\n```"), "README: the quick start's command");
    assert!(readme.contains("```sh\nscripts/test.sh\n```"), "README: the test command");
    assert!(read(".ci/run").lines().any(|l| l == "scripts/test.sh"), ".ci/run runs README's test command");
    assert!(root().join("watchers/demo-inbox.yaml").is_file() && root().join("demo/inbox").is_dir());
}

#[test]
fn rust_version_covers_every_locked_dependency() {
    let manifest = read("Cargo.toml");
    let ours = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("Cargo.toml states rust-version");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Not --offline: the metadata covers every platform's dependencies, and a fresh
    // machine's cache holds only this one's.
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--locked", "--format-version", "1"])
        .current_dir(root())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let version = |v: &str| -> Vec<u64> { v.split('.').map(|n| n.parse().unwrap_or(0)).collect() };
    let needs: Vec<String> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| Some((p["name"].as_str()?, p["rust_version"].as_str()?)))
        .filter(|(_, v)| version(v) > version(ours))
        .map(|(name, v)| format!("{name} needs {v}"))
        .collect();
    assert!(needs.is_empty(), "Cargo.toml's rust-version {ours} is too old: {}", needs.join(", "));
}

/// The fenced YAML blocks of a markdown text, with the line each starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some((n + 2, String::new())),
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_watcher_shown_in_the_docs_passes_check() {
    // The blocks of the docs, and the example watchers shipped beside them.
    let mut shown = Vec::new();
    for file in markdown_files() {
        let page = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
        let text = std::fs::read_to_string(&file).expect("read");
        shown.extend(yaml_blocks(&text).into_iter().map(|(line, block)| (format!("{page}:{line}"), block)));
    }
    let mut examples =
        vec!["watchers/example.yaml.sample".to_string(), "watchers/demo-inbox.yaml".to_string()];
    for entry in std::fs::read_dir(root().join("watchers/examples")).expect("watchers/examples").flatten() {
        examples.push(format!("watchers/examples/{}", entry.file_name().to_string_lossy()));
    }
    shown.extend(examples.into_iter().map(|e| (e.clone(), read(&e))));

    let project =
        crate::util::Project::new("watchers_dir: watchers\nstate: {type: sqlite, path: state/hw.db}\n");
    let mut origins = BTreeMap::new();
    for (origin, block) in shown {
        // Only whole watchers and `source:`/`sink:` fragments: a daemon file or a
        // Prometheus rule is not a watcher.
        let Ok(serde_yaml::Value::Mapping(mut map)) = serde_yaml::from_str::<serde_yaml::Value>(&block)
        else {
            continue;
        };
        let (has_source, has_sink) = (map.contains_key("source"), map.contains_key("sink"));
        if !has_source && !has_sink {
            continue;
        }
        if !has_source {
            map.insert("source".into(), serde_yaml::from_str("{type: local_dir, path: .}").expect("yaml"));
        }
        if !has_sink {
            map.insert("sink".into(), serde_yaml::from_str("{type: stdout}").expect("yaml"));
        }
        // Each block a watcher of its own, whatever name it gives itself.
        let name = format!("doc-{}", origins.len());
        map.insert("namespace".into(), "docs".into());
        map.insert("name".into(), name.clone().into());
        project.watcher(&name, &serde_yaml::to_string(&map).expect("yaml"));
        origins.insert(name, origin);
    }
    assert!(origins.len() >= 12, "the docs and examples show watchers: {origins:?}");
    let out = project.command(&["check", "--skip-secrets"]).output().expect("highwater check");
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for (name, origin) in origins.iter().rev() {
        stderr =
            stderr.replace(&format!("watchers/{name}.yaml"), &format!("{origin} (as watchers/{name}.yaml)"));
    }
    assert_eq!(out.status.code(), Some(0), "a watcher shown in the docs fails `highwater check`:\n{stderr}");
}

/// The fenced block that follows `<!-- guide-test: NAME -->` in the guide at `guide`, so
/// that a test runs what the guide shows.
pub(crate) fn guide_block(guide: &str, name: &str) -> String {
    let text = read(guide);
    let marker = format!("<!-- guide-test: {name} -->");
    let after = text.split_once(&marker).unwrap_or_else(|| panic!("{guide} has no {marker}")).1;
    let fenced = after.trim_start();
    assert!(fenced.starts_with("```"), "{guide}: {marker} is not followed by a fenced block");
    let body = fenced.split_once('\n').expect("the fence's line").1;
    let (block, _) = body.split_once("\n```").unwrap_or_else(|| panic!("{guide}: {name}: no closing fence"));
    format!("{block}\n")
}

#[test]
fn the_sftp_guide_announces_an_upload_once() {
    let mut watcher: serde_yaml::Value =
        serde_yaml::from_str(&guide_block("docs/guides/sftp-dir-to-file.md", "watcher"))
            .expect("the guide's watcher");
    let project = crate::util::Project::default_config();
    // The two paths, moved into the project.
    watcher["source"]["path"] = "drop".into();
    watcher["sink"]["path"] = "events/sftp-drop.jsonl".into();
    project.watcher("sftp-drop", &serde_yaml::to_string(&watcher).expect("yaml"));
    std::fs::create_dir_all(project.path().join("drop")).expect("mkdir drop");
    let mut daemon = project.start();
    daemon.wait_counter("landing/sftp-drop", crate::util::POLLS, 1);

    // An SFTP client writes under a hidden name, then renames the finished file.
    project.write("drop/.partner-1.csv.part", "id,amount\n1,10\n");
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::rename(
        project.path().join("drop/.partner-1.csv.part"),
        project.path().join("drop/partner-1.csv"),
    )
    .expect("rename");
    let events = project.path().join("events/sftp-drop.jsonl");
    crate::util::eventually("the upload's event in the events file", Duration::from_secs(60), || {
        std::fs::read_to_string(&events).ok().filter(|t| !t.is_empty())
    });
    // Two more polls: nothing else comes (not the hidden name).
    daemon.wait_polls("landing/sftp-drop", 2);
    let (code, _) = daemon.stop();
    assert_eq!(code, Some(0));
    let text = std::fs::read_to_string(&events).expect("events file");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(lines.len(), 1, "one event: {text}");
    assert_eq!(lines[0]["item"]["relative_path"], "partner-1.csv");
    assert_eq!(lines[0]["type"], "created");
}
