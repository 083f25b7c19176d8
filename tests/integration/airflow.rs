//! Airflow end to end, for real: a throwaway Apache Airflow 3.3.2 (installed by
//! tests/setup/airflow.sh, started by tests/airflow/start.sh) with a DAG scheduled on an
//! asset; highwater watches a directory and posts asset events; a dropped file must
//! start an `asset_triggered` DAG run whose triggering events carry highwater's event id.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{Project, eventually, field_str};

const DAG_ID: &str = "highwater_e2e";
const ASSET_URI: &str = "s3://highwater-e2e/landing";
/// Airflow's API tokens expire this fast here, so the sink's renewal runs for real.
const TOKEN_SECONDS: u64 = 3;

/// A running Airflow; dropping it stops every process group it started, also when the
/// test panics.
struct Airflow {
    home: tempfile::TempDir,
    base: String,
}

impl Airflow {
    fn start() -> Self {
        let venv = std::env::var("HIGHWATER_TEST_AIRFLOW_VENV").unwrap_or_else(|_| {
            panic!(
                "HIGHWATER_TEST_AIRFLOW_VENV is not set: run the tests with scripts/test.sh, which installs \
                 Apache Airflow for this test (tests/setup/airflow.sh)"
            )
        });
        // The port is free when picked, but another process may take it before the API
        // server binds it; start.sh then exits 3, and Airflow starts again on another.
        for _ in 0..3 {
            let port = {
                let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
                probe.local_addr().expect("addr").port()
            };
            let airflow = Airflow {
                home: tempfile::tempdir().expect("tempdir"),
                base: format!("http://127.0.0.1:{port}"),
            };
            let status = Command::new(scripts().join("start.sh"))
                .env("HIGHWATER_E2E_TOKEN_SECONDS", TOKEN_SECONDS.to_string())
                .arg(&venv)
                .arg(airflow.home.path())
                .arg(port.to_string())
                .status()
                .expect("run tests/airflow/start.sh");
            match status.code() {
                Some(0) => return airflow,
                Some(3) => eprintln!("Airflow's port {port} was taken; starting again on another"),
                _ => panic!("Airflow did not start (logs in the output above)"),
            }
        }
        panic!("Airflow's port was taken three times in a row");
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for name in ["api-server", "scheduler", "dag-processor"] {
            let text =
                std::fs::read_to_string(self.home.path().join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {name}.log\n{}\n",
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for Airflow {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("stop.sh")).arg(self.home.path()).status();
    }
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/airflow")
}

/// A small client for the checks the test makes against Airflow's API.
struct Api {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Self {
        highwater::init_tls();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        Api { runtime, client, base: base.to_string() }
    }

    /// A new token for each call: they expire within seconds here.
    async fn token(&self) -> String {
        let response = self
            .client
            .post(format!("{}/auth/token", self.base))
            .json(&json!({"username": "admin", "password": "admin"}))
            .send()
            .await
            .expect("POST /auth/token");
        let body: Value = response.json().await.expect("token JSON");
        body["access_token"].as_str().expect("access_token").to_string()
    }

    /// One API call; a 5xx or a transport error is tried again a few times, as
    /// Airflow on SQLite answers 500 now and then while its scheduler holds the
    /// database.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.runtime.block_on(async {
            let mut last = String::new();
            for _ in 0..5 {
                let token = self.token().await;
                let mut request =
                    self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(token);
                if let Some(body) = &body {
                    request = request.json(body);
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        if status.is_success() {
                            return serde_json::from_str(&text).unwrap_or(Value::Null);
                        }
                        assert!(status.is_server_error(), "{path}: HTTP {status}: {text}");
                        last = format!("HTTP {status}: {text}");
                    }
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            panic!("{path}: {last}");
        })
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None)
    }

    /// The status of `GET path` with `token`.
    fn status_with(&self, token: &str, path: &str) -> u16 {
        self.runtime.block_on(async {
            let request = self.client.get(format!("{}{path}", self.base)).bearer_auth(token);
            request.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        })
    }
}

#[test]
fn a_dropped_file_starts_an_asset_triggered_dag_run() {
    let started = Instant::now();
    let airflow = Airflow::start();
    eprintln!("Airflow up in {:.1}s", started.elapsed().as_secs_f64());

    let project = Project::default_config();
    std::fs::create_dir_all(project.path().join("landing")).expect("mkdir");
    let sink = |asset: &str| {
        format!(
            "sink:\n  type: airflow\n  base_url: {}\n  username: admin\n  password_env: AIRFLOW_PASSWORD\n  \
             asset_uri: \"{asset}\"\n  slow_retry: 30s\n",
            airflow.base
        )
    };
    project.watcher(
        "landing",
        &format!(
            "namespace: e2e\nname: landing\nsource: {{type: local_dir, path: landing, min_age: 0s}}\n{}\
             poll_interval: 200ms\nretry: {{initial: 200ms, max: 2s}}\n",
            sink(ASSET_URI)
        ),
    );
    // An asset no DAG declares: a deploy-order problem, reported with its URI and held.
    std::fs::create_dir_all(project.path().join("early")).expect("mkdir");
    project.watcher(
        "early",
        &format!(
            "namespace: e2e\nname: early\nsource: {{type: local_dir, path: early, min_age: 0s}}\n{}\
             poll_interval: 200ms\n",
            sink("s3://highwater-e2e/not-declared-yet")
        ),
    );

    let check =
        project.command(&["check", "--connect"]).env("AIRFLOW_PASSWORD", "admin").output().expect("check");
    let check_err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(69), "only the undeclared asset fails: {check_err}");
    assert!(
        check_err.contains("not-declared-yet") && !check_err.contains("watcher e2e/landing"),
        "{check_err}"
    );

    let mut daemon =
        project.start_with(&[("AIRFLOW_PASSWORD", "admin"), ("RUST_LOG", "highwater=debug")], &[]);
    project.write("landing/orders-1.csv", "id,amount\n1,10\n");
    project.write("early/too-soon.csv", "x\n");
    let posted = daemon.wait_log_where("of a posted asset event", |l| {
        field_str(l, "event").is_some() && l.get("asset_id").is_some()
    });
    // Issued after the sink's token: once Airflow refuses this one, it refuses that one.
    let api = Api::new(&airflow.base);
    let later_token = api.runtime.block_on(api.token());
    let event_id = field_str(&posted, "event").expect("event id").to_string();
    let held = daemon.wait_log_where("of the undeclared asset's delivery failing", |l| {
        field_str(l, "watcher") == Some("e2e/early")
            && field_str(l, "reason")
                .is_some_and(|r| r.contains("has no asset URI `s3://highwater-e2e/not-declared-yet`"))
    });
    assert!(field_str(&held, "reason").is_some_and(|r| r.contains("held")), "{held}");

    // The run Airflow's scheduler creates from the event.
    let deadline = Instant::now() + Duration::from_secs(45);
    let run = loop {
        let runs = api.get(&format!("/api/v2/dags/{DAG_ID}/dagRuns?run_type=asset_triggered"));
        let found = runs["dag_runs"].as_array().into_iter().flatten().find_map(|run| {
            let run_id = run["dag_run_id"].as_str()?;
            let events = api.get(&format!("/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/upstreamAssetEvents"));
            let carries_ours = events["asset_events"]
                .as_array()?
                .iter()
                .any(|e| e["extra"]["event_id"] == event_id.as_str() && e["uri"] == ASSET_URI);
            carries_ours.then(|| run.clone())
        });
        if let Some(run) = found {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "no asset_triggered run carrying event {event_id}; Airflow logs:\n{}",
            airflow.log_tails()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(run["run_type"], "asset_triggered");
    let events = api.get(&format!(
        "/api/v2/dags/{DAG_ID}/dagRuns/{}/upstreamAssetEvents",
        run["dag_run_id"].as_str().expect("run id")
    ));
    let ours = events["asset_events"]
        .as_array()
        .expect("asset_events")
        .iter()
        .find(|e| e["extra"]["event_id"] == event_id.as_str())
        .expect("our event")
        .clone();
    assert_eq!(ours["extra"]["item"]["relative_path"], "orders-1.csv");
    assert_eq!(ours["extra"]["watcher"], "landing");

    // Once the sink's token has expired, the next event makes it fetch a new one.
    eventually(
        "Airflow refusing a token issued after the sink's",
        Duration::from_secs(TOKEN_SECONDS * 5),
        || (api.status_with(&later_token, "/api/v2/assets?limit=1") == 401).then_some(()),
    );
    project.write("landing/orders-2.csv", "id,amount\n2,20\n");
    daemon.wait_log_field("token", "refused");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = api.get("/api/v2/assets/events?limit=100&order_by=-timestamp");
        let arrived = events["asset_events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["extra"]["item"]["relative_path"] == "orders-2.csv");
        if arrived {
            break;
        }
        assert!(Instant::now() < deadline, "the event after the token expired did not arrive: {events}");
        std::thread::sleep(Duration::from_millis(300));
    }

    let (code, logs) = daemon.stop();
    assert_eq!(code, Some(0));
    assert!(
        !logs.iter().any(|l| l.contains("\"admin\"") && l.contains("password")),
        "a password reached the logs"
    );
    eprintln!("end to end in {:.1}s", started.elapsed().as_secs_f64());
}
