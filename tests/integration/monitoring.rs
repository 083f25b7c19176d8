//! What operators watch the daemon with: the alert rules in `contrib/prometheus/`
//! (checked and unit-tested by promtool), the dashboard in `contrib/grafana/` (every
//! metric it names is in a real scrape), and `highwater status` against a running
//! daemon.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::util::{Daemon, Project, WAIT, eventually};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool() -> PathBuf {
    std::env::var_os("HIGHWATER_TEST_PROMTOOL").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "HIGHWATER_TEST_PROMTOOL is not set: run the tests with scripts/test.sh \
             (tests/setup/promtool.sh installs Debian's package prometheus, which has promtool)"
        )
    })
}

fn run_promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool()).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_with_a_firing_and_a_quiet_case_each() {
    let dir = repo().join("contrib/prometheus");
    let checked = run_promtool(&["check", "rules", "highwater.rules.yml"], &dir);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    run_promtool(&["test", "rules", "highwater.rules.test.yml"], &dir);

    // Each alert has a test that expects it and one that expects silence.
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("highwater.rules.yml")).expect("rules"))
            .expect("YAML");
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("highwater.rules.test.yml")).expect("tests"))
            .expect("YAML");
    let cases: Vec<&serde_yaml::Value> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().expect("alert_rule_test"))
        .collect();
    for rule in rules["groups"][0]["rules"].as_sequence().expect("rules") {
        let name = rule["alert"].as_str().expect("alert name");
        let of_rule = || cases.iter().filter(|c| c["alertname"].as_str() == Some(name));
        let firing =
            of_rule().filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty())).count();
        let quiet = of_rule().filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| a.is_empty())).count();
        assert!(firing >= 1 && quiet >= 1, "{name}: {firing} firing and {quiet} quiet cases");
    }
}

/// Metric names in PromQL text: every `highwater_…` identifier.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(at) = rest.find("highwater_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL query of the dashboard: its panels' targets and its variables.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_string());
        }
    }
    queries
}

/// A daemon whose `http.listen` port is free and written in its file, so that `status`
/// (which reads the file) finds it.
fn project_with_port(extra: &str) -> Project {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    Project::new(&format!(
        "watchers_dir: watchers\nstate: {{type: sqlite, path: state/highwater.db}}\n\
         shutdown_timeout: 10s\nhttp: {{listen: \"127.0.0.1:{port}\"{extra}}}\n"
    ))
}

/// Three watchers: `a` delivers, `missing` is in state error (its directory does not
/// exist), `stuck` cannot write its file and keeps a batch pending.
fn three_watchers(p: &Project) -> Daemon {
    for name in ["a", "stuck"] {
        std::fs::create_dir_all(p.path().join("in").join(name)).expect("mkdir");
        p.watcher(
            name,
            &format!(
                "source: {{type: local_dir, path: in/{name}, min_age: 0s}}\n\
                 sink: {{type: file, path: out/{name}.jsonl}}\npoll_interval: 100ms\n"
            ),
        );
    }
    p.watcher(
        "missing",
        "source: {type: local_dir, path: in/nowhere}\nsink: {type: stdout}\npoll_interval: 100ms\n",
    );
    std::fs::create_dir_all(p.path().join("out/stuck.jsonl")).expect("a directory where the file goes");
    p.write("in/a/one.csv", "x");
    p.write("in/stuck/one.csv", "x");
    let mut d = p.start();
    d.wait_delivered("default/a", 1);
    d.wait_state("default/missing", "error");
    d.wait_metrics("a pending batch of default/stuck", |m| {
        m.watcher("highwater_watcher_pending_events", "default/stuck") == 1
    });
    d
}

#[test]
fn the_dashboard_and_the_rules_name_only_metrics_a_running_daemon_exports() {
    let p = project_with_port("");
    let mut d = three_watchers(&p);
    let scrape = d.metrics();
    let exported: BTreeSet<String> = scrape
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect();

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("contrib/grafana/highwater.json")).expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{queries:?}");
    let rules =
        std::fs::read_to_string(repo().join("contrib/prometheus/highwater.rules.yml")).expect("rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&rules).expect("YAML");
    let exprs: Vec<String> = rules["groups"][0]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .map(|r| r["expr"].as_str().expect("expr").to_string())
        .collect();
    for (what, queries) in [("dashboard", &queries), ("alert rules", &exprs)] {
        let named: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
        let missing: Vec<&String> = named.difference(&exported).collect();
        assert!(missing.is_empty(), "the {what} name {missing:?}, not in a scrape:\n{}", scrape.text);
    }

    // The daemon-wide histogram is there; the per-watcher one only when asked for.
    assert!(exported.contains("highwater_poll_duration_seconds_bucket"));
    assert!(!exported.contains("highwater_watcher_poll_duration_seconds_bucket"));
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));

    let p = project_with_port(", per_watcher_histograms: true");
    std::fs::create_dir_all(p.path().join("in/a")).expect("mkdir");
    p.watcher("a", "source: {type: local_dir, path: in/a}\nsink: {type: stdout}\npoll_interval: 100ms\n");
    let mut d = p.start();
    let scrape = d.wait_polls("default/a", 1);
    assert!(
        scrape.get(
            "highwater_watcher_poll_duration_seconds_bucket",
            &[("watcher", "default/a"), ("le", "+Inf")]
        ) >= Some(1.0),
        "{}",
        scrape.text
    );
    d.stop();
}

/// `status --json` of `p`, parsed, with its watchers by name.
fn status_json(p: &Project) -> (Value, std::collections::BTreeMap<String, Value>) {
    let out = p.run(&["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let rows = doc["watchers"]
        .as_array()
        .expect("watchers")
        .iter()
        .map(|w| (w["watcher"].as_str().expect("watcher").to_string(), w.clone()))
        .collect();
    (doc, rows)
}

#[test]
fn status_shows_each_watcher_from_the_store_and_the_running_daemon() {
    let p = project_with_port("");
    let d = three_watchers(&p);

    // The daemon answers: live states, the pending batch and its lag.
    let (doc, rows) = eventually("status showing the stuck batch as lag", WAIT, || {
        let (doc, rows) = status_json(&p);
        (rows["default/stuck"]["lag_seconds"].as_f64() > Some(0.0)).then_some((doc, rows))
    });
    assert_eq!(doc["daemon"]["reachable"], true, "{doc}");
    assert_eq!(rows["default/a"]["state"], "ok");
    assert_eq!(rows["default/a"]["pending_events"], 0);
    assert!(rows["default/a"]["last_delivery"].is_string(), "{doc}");
    assert_eq!(rows["default/missing"]["state"], "error");
    assert_eq!(rows["default/stuck"]["state"], "retrying");
    assert_eq!(rows["default/stuck"]["pending_events"], 1);
    assert!(rows["default/stuck"]["pending_since"].is_string(), "{doc}");
    assert_eq!(rows["default/stuck"]["backlog_events"], 1);
    for row in rows.values() {
        assert_eq!(row["dead_letters"], 0);
        assert_eq!(row["owner"], Value::Null);
    }

    let out = p.run(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and a line per watcher:\n{}", out.stdout);
    let columns = |line: &str| line.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        columns(lines[0]),
        ["WATCHER", "STATE", "LAG", "PENDING", "AGE", "DELIVERED", "DEAD", "OWNER"]
    );
    let stuck = columns(lines[3]);
    assert_eq!((stuck[0].as_str(), stuck[1].as_str(), stuck[3].as_str()), ("default/stuck", "retrying", "1"));
    assert_eq!(columns(lines[2])[1], "error");
    assert!(lines.iter().all(|l| l.chars().count() <= 100));

    // Without the daemon: what the store holds, and a line saying the live state is
    // not known.
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
    let out = p.run(&["status"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("Live state unknown: the daemon at http://127.0.0.1:"), "{}", out.stdout);
    let stuck = out.stdout.lines().find(|l| l.starts_with("default/stuck")).expect("stuck line");
    assert_eq!(columns(stuck)[3], "1", "the pending batch is in the store: {stuck}");
    let (doc, rows) = status_json(&p);
    assert_eq!(doc["daemon"]["reachable"], false);
    assert_eq!(rows["default/stuck"]["state"], Value::Null);
    assert_eq!(rows["default/stuck"]["pending_events"], 1);
    assert!(rows["default/a"]["last_delivery"].is_string(), "the last commit, from the store: {doc}");
}

#[test]
fn status_watch_refreshes() {
    let p = project_with_port("");
    std::fs::create_dir_all(p.path().join("in/a")).expect("mkdir");
    p.watcher("a", "source: {type: local_dir, path: in/a}\nsink: {type: stdout}\n");
    let mut child = p
        .command(&["status", "--watch", "--json", "--interval", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    for _ in 0..3 {
        let line = lines.next().expect("a refresh").expect("read");
        let doc: Value = serde_json::from_str(&line).expect("one JSON document per refresh");
        assert_eq!(doc["watchers"][0]["watcher"], "default/a");
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
}
