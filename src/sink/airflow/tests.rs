//! The `airflow` sink against a stand-in for Airflow's API: token renewal, the asset id
//! cache and its lookup after a 404, refused credentials, partition keys; and the
//! config's checks.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode as Status};
use axum::response::{IntoResponse, Response};

use serde_json::json;

use super::*;
use crate::event::{Event, FileItem, Item};

/// A stand-in for Airflow's API with just the calls the sink makes, answering the
/// way Airflow 3.3 does.
#[derive(Default)]
struct Mock {
    tokens_issued: usize,
    /// The token currently accepted.
    valid_token: String,
    /// Assets: (id, name, uri).
    assets: Vec<(i64, String, String)>,
    lookups: usize,
    /// Events accepted: (asset id, body).
    events: Vec<(i64, serde_json::Value)>,
}

type Shared = Arc<Mutex<Mock>>;

async fn token(State(mock): State<Shared>, Json(body): Json<serde_json::Value>) -> Response {
    if body["username"] != "admin" || body["password"] != "pw" {
        return (Status::UNAUTHORIZED, "Invalid credentials").into_response();
    }
    let mut mock = mock.lock().unwrap();
    mock.tokens_issued += 1;
    mock.valid_token = format!("t{}", mock.tokens_issued);
    (Status::CREATED, Json(json!({"access_token": mock.valid_token}))).into_response()
}

fn authorized(mock: &Mock, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", mock.valid_token))
}

async fn assets(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let mut mock = mock.lock().unwrap();
    if !authorized(&mock, &headers) {
        return (Status::UNAUTHORIZED, "Token Expired").into_response();
    }
    mock.lookups += 1;
    let pattern = query.get("uri_pattern").cloned().unwrap_or_default().to_lowercase();
    let offset: usize = query.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|o| o.parse().ok()).unwrap_or(50);
    let matching: Vec<_> = mock
        .assets
        .iter()
        .filter(|(_, _, uri)| uri.to_lowercase().contains(&pattern))
        .map(|(id, name, uri)| json!({"id": id, "name": name, "uri": uri}))
        .collect();
    let page: Vec<_> = matching.iter().skip(offset).take(limit).cloned().collect();
    Json(json!({"assets": page, "total_entries": matching.len()})).into_response()
}

async fn events(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let mut mock = mock.lock().unwrap();
    if !authorized(&mock, &headers) {
        return (Status::UNAUTHORIZED, "Token Expired").into_response();
    }
    let id = body["asset_id"].as_i64().unwrap_or(-1);
    if !mock.assets.iter().any(|(a, _, _)| *a == id) {
        return (Status::NOT_FOUND, format!("Asset with ID: `{id}` was not found")).into_response();
    }
    mock.events.push((id, body));
    Json(json!({"id": mock.events.len()})).into_response()
}

async fn start(mock: Mock) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(mock));
    let app = axum::Router::new()
        .route("/auth/token", axum::routing::post(token))
        .route("/api/v2/assets", axum::routing::get(assets))
        .route("/api/v2/assets/events", axum::routing::post(events))
        .with_state(Arc::clone(&shared));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), shared)
}

fn config(base_url: &str) -> AirflowConfig {
    AirflowConfig {
        base_url: HttpUrl::parse(base_url).unwrap(),
        username: Some("admin".into()),
        password_env: None,
        password_file: None,
        token_env: None,
        token_file: None,
        asset_uri: Some("s3://landing/orders".into()),
        asset_name: None,
        partition_key: None,
        timeout: HumanDuration(Duration::from_secs(5)),
        slow_retry: HumanDuration(Duration::from_secs(42)),
    }
}

/// A file holding `password`, for `password_file`; the directory lives as long as the
/// test process.
fn password_file(password: &str) -> SecretFile {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.path().join(format!("password-{n}"));
    std::fs::write(&path, format!("{password}\n")).unwrap();
    SecretFile::Path(path)
}

fn sink(config: &AirflowConfig) -> AirflowSink {
    let mut config = config.clone();
    if config.password_file.is_none() {
        config.password_file = Some(password_file("pw"));
    }
    AirflowSink::new(&config).unwrap()
}

fn event(id: &str, path: &str) -> Encoded {
    Encoded::of(&plain_event(id, path)).unwrap()
}

fn plain_event(id: &str, path: &str) -> Event {
    Event {
        id: id.into(),
        namespace: "ns".into(),
        watcher: "w".into(),
        source: "local_dir".into(),
        change: Change::Created,
        item: Item::File(FileItem {
            path: format!("in/{path}"),
            relative_path: path.into(),
            size: 3,
            modified: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }),
        watermark: serde_json::Value::Null,
        emitted_at: chrono::DateTime::from_timestamp(1_700_000_001, 0).unwrap(),
    }
}

fn assets_list() -> Vec<(i64, String, String)> {
    vec![
        (3, "older".into(), "s3://landing/orders-archive".into()),
        (7, "orders".into(), "s3://landing/orders".into()),
        (9, "upper".into(), "S3://LANDING/ORDERS/2".into()),
    ]
}

#[tokio::test]
async fn picks_the_exact_uri_caches_it_and_renews_an_expired_token_once() {
    let (url, mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
    let mut sink = sink(&config(&url));
    assert_eq!(
        sink.deliver(&[event("e1", "a.csv"), event("e2", "b.csv")], &Acked::new()).await,
        Delivery::Acknowledged
    );
    {
        let mock = mock.lock().unwrap();
        assert_eq!(mock.tokens_issued, 1);
        assert_eq!(mock.lookups, 1, "the asset id is cached");
        let ids: Vec<_> = mock.events.iter().map(|(id, b)| (*id, b["extra"]["event_id"].clone())).collect();
        assert_eq!(ids, [(7, json!("e1")), (7, json!("e2"))]);
        assert_eq!(mock.events[0].1["extra"]["item"]["relative_path"], "a.csv");
        assert!(mock.events[0].1.get("partition_key").is_none());
    }
    // Airflow forgets the token (expiry): one new token, and the event goes.
    mock.lock().unwrap().valid_token = "expired-meanwhile".into();
    assert_eq!(sink.deliver(&[event("e3", "c.csv")], &Acked::new()).await, Delivery::Acknowledged);
    let mock = mock.lock().unwrap();
    assert_eq!(mock.tokens_issued, 2);
    assert_eq!(mock.events.len(), 3);
}

#[tokio::test]
async fn a_missing_asset_is_held_and_retried_slowly_and_a_recreated_one_found_again() {
    let (url, mock) = start(Mock::default()).await;
    let mut sink = sink(&config(&url));
    match sink.deliver(&[event("e1", "a.csv")], &Acked::new()).await {
        Delivery::NeedsAttention { reason, after } => {
            assert!(reason.contains("s3://landing/orders"), "{reason}");
            assert_eq!(after, Some(Duration::from_secs(42)));
        }
        other => panic!("expected a slow retry, got {other:?}"),
    }
    // The DAG is deployed: the asset appears.
    mock.lock().unwrap().assets = assets_list();
    assert_eq!(sink.deliver(&[event("e1", "a.csv")], &Acked::new()).await, Delivery::Acknowledged);
    // Re-created under a new id: the 404 makes the sink look it up again.
    mock.lock().unwrap().assets = vec![(12, "orders".into(), "s3://landing/orders".into())];
    assert_eq!(sink.deliver(&[event("e2", "b.csv")], &Acked::new()).await, Delivery::Acknowledged);
    let mock = mock.lock().unwrap();
    assert_eq!(mock.events.last().unwrap().0, 12);
}

#[tokio::test]
async fn refused_credentials_are_held_not_dropped() {
    let (url, _mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
    let mut config = config(&url);
    let file = password_file("wrong");
    config.password_file = Some(file.clone());
    let mut sink = sink(&config);
    match sink.deliver(&[event("e1", "a.csv")], &Acked::new()).await {
        Delivery::NeedsAttention { reason, after: Some(_) } => {
            assert!(reason.contains("admin") && !reason.contains("wrong"), "{reason}");
            assert!(reason.contains("/auth/token refused") && reason.contains("password_file"), "{reason}");
        }
        other => panic!("expected a slow retry, got {other:?}"),
    }
    // Fixed in its file: the next attempt reads it.
    let SecretFile::Path(path) = file else { unreachable!() };
    std::fs::write(path, "pw\n").unwrap();
    assert_eq!(sink.deliver(&[event("e1", "a.csv")], &Acked::new()).await, Delivery::Acknowledged);
}

#[tokio::test]
async fn partition_keys_come_from_the_item() {
    let (url, mock) = start(Mock { assets: assets_list(), ..Mock::default() }).await;
    let mut config = config(&url);
    config.partition_key = Some(Template::parse("file={relative_path} {{{size}}}").unwrap());
    let mut sink = sink(&config);
    assert_eq!(sink.deliver(&[event("e1", "a.csv")], &Acked::new()).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().events[0].1["partition_key"], "file=a.csv {3}");

    config.partition_key = Some(Template::parse("{bucket}").unwrap());
    let mut sink = self::sink(&config);
    assert!(matches!(sink.deliver(&[event("e2", "b.csv")], &Acked::new()).await, Delivery::Permanent { .. }));
}

#[test]
fn validation_reports_each_problem_and_describe_hides_secrets() {
    let mut config = config("http://airflow:8080");
    config.asset_name = Some("orders".into());
    config.token_env = Some(EnvVar::new("AIRFLOW_TOKEN").unwrap());
    let keys: Vec<String> = config.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["asset_name", "username", "token_env"]);
    let mut ok = self::config("http://airflow:8080/");
    ok.password_env = Some(EnvVar::new("AIRFLOW_PASSWORD").unwrap());
    assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    assert_eq!(ok.describe(), "airflow http://airflow:8080/ asset URI `s3://landing/orders`, as admin");
}
