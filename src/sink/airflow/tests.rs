//! The `airflow` sink against a stand-in for Airflow's API: token renewal, the asset and
//! its consumers, refused credentials, partition keys, no event posted twice after an
//! unknown outcome, a retried batch skipping what Airflow took, `emit: batch`, a left-out
//! event posted again, the health probe; and the config's checks. The real Airflow runs
//! in `tests/integration/airflow.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode as Status};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::*;
use crate::event::Item;

/// What the stand-in does with the next `POST /api/v2/assets/events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostFault {
    /// Stores and answers as usual.
    Pass,
    /// 500 without storing the event.
    Refuse,
    /// Stores the event, then answers 500.
    StoreThen500,
    /// Stores the event, then answers only after this long (past the sink's timeout).
    StoreThenStall(Duration),
}

/// A stand-in for Airflow's API with just the calls the sink makes, answering the
/// way Airflow 3.3 does.
#[derive(Default)]
struct Mock {
    tokens_issued: usize,
    /// The token currently accepted.
    valid_token: String,
    /// Assets: (id, name, uri, DAGs scheduled on it).
    assets: Vec<(i64, String, String, Vec<String>)>,
    /// Lookups by URI (list calls).
    lookups: usize,
    /// Events stored: (asset id, body, timestamp).
    events: Vec<(i64, Value, DateTime<Utc>)>,
    /// What the next POSTs do.
    post_faults: VecDeque<PostFault>,
    /// Queued runs: (asset id, DAG) → created at.
    queued: HashMap<(i64, String), DateTime<Utc>>,
    /// Asset-triggered runs: (DAG, run_after).
    runs: Vec<(String, DateTime<Utc>)>,
    /// DAGs: id → (paused, partitioned).
    dags: HashMap<String, (bool, bool)>,
    /// What `/api/v2/monitor/health` answers.
    healthy: bool,
    /// Calls of it.
    health_probes: usize,
    /// Lists of asset events (lookups).
    event_lists: usize,
}

impl Mock {
    fn with_assets() -> Self {
        Mock {
            assets: vec![
                (3, "older".into(), "s3://landing/orders-archive".into(), vec!["archive".into()]),
                (7, "orders".into(), "s3://landing/orders".into(), vec!["load_orders".into()]),
                (9, "upper".into(), "S3://LANDING/ORDERS/2".into(), vec![]),
            ],
            dags: HashMap::from([("load_orders".to_string(), (false, false))]),
            healthy: true,
            ..Mock::default()
        }
    }

    /// highwater's event ids of the stored events, in order.
    fn event_ids(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|(_, b, _)| b["extra"]["event_id"].as_str().map(str::to_string))
            .collect()
    }

    /// What Airflow's scheduler does: a run from each queued row, stamped with the
    /// row's creation time, and the row deleted.
    fn schedule(&mut self) {
        for ((_, dag), created) in std::mem::take(&mut self.queued) {
            self.runs.push((dag, created));
        }
    }
}

type Shared = Arc<Mutex<Mock>>;

async fn token(State(mock): State<Shared>, Json(body): Json<Value>) -> Response {
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

fn asset_json((id, name, uri, dags): &(i64, String, String, Vec<String>)) -> Value {
    let dags: Vec<Value> = dags.iter().map(|d| json!({"dag_id": d})).collect();
    json!({"id": id, "name": name, "uri": uri, "scheduled_dags": dags})
}

async fn assets(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
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
        .filter(|(_, _, uri, _)| uri.to_lowercase().contains(&pattern))
        .map(asset_json)
        .collect();
    let page: Vec<_> = matching.iter().skip(offset).take(limit).cloned().collect();
    Json(json!({"assets": page, "total_entries": matching.len()})).into_response()
}

async fn asset(State(mock): State<Shared>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let mock = mock.lock().unwrap();
    if !authorized(&mock, &headers) {
        return (Status::UNAUTHORIZED, "Token Expired").into_response();
    }
    match mock.assets.iter().find(|a| a.0 == id) {
        Some(asset) => Json(asset_json(asset)).into_response(),
        None => (Status::NOT_FOUND, format!("The Asset with ID: `{id}` was not found")).into_response(),
    }
}

async fn post_event(State(shared): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let (fault, stored) = {
        let mut mock = shared.lock().unwrap();
        if !authorized(&mock, &headers) {
            return (Status::UNAUTHORIZED, "Token Expired").into_response();
        }
        let id = body["asset_id"].as_i64().unwrap_or(-1);
        let Some(asset) = mock.assets.iter().find(|a| a.0 == id).cloned() else {
            return (Status::NOT_FOUND, format!("Asset with ID: `{id}` was not found")).into_response();
        };
        let fault = mock.post_faults.pop_front();
        if fault == Some(PostFault::Refuse) {
            return (Status::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response();
        }
        let now = Utc::now();
        mock.events.push((id, body, now));
        // A queued row per consuming DAG, unless one is there already.
        for dag in &asset.3 {
            mock.queued.entry((id, dag.clone())).or_insert(now);
        }
        (fault, json!({"id": mock.events.len(), "asset_id": id, "timestamp": now}))
    };
    match fault {
        Some(PostFault::StoreThen500) => {
            (Status::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        }
        Some(PostFault::StoreThenStall(delay)) => {
            tokio::time::sleep(delay).await;
            Json(stored).into_response()
        }
        _ => Json(stored).into_response(),
    }
}

async fn list_events(
    State(mock): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut mock = mock.lock().unwrap();
    if !authorized(&mock, &headers) {
        return (Status::UNAUTHORIZED, "Token Expired").into_response();
    }
    mock.event_lists += 1;
    let asset: i64 = query.get("asset_id").and_then(|a| a.parse().ok()).unwrap_or(-1);
    let since: Option<DateTime<Utc>> = query.get("timestamp_gte").and_then(|t| t.parse().ok());
    let offset: usize = query.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
    let limit: usize = query.get("limit").and_then(|o| o.parse().ok()).unwrap_or(50);
    let mut matching: Vec<Value> = mock
        .events
        .iter()
        .enumerate()
        .filter(|(_, (a, _, at))| *a == asset && since.is_none_or(|s| *at >= s))
        .map(|(i, (_, body, at))| json!({"id": i + 1, "timestamp": at, "extra": body["extra"]}))
        .collect();
    matching.reverse();
    let page: Vec<_> = matching.iter().skip(offset).take(limit).cloned().collect();
    Json(json!({"asset_events": page, "total_entries": matching.len()})).into_response()
}

async fn queued(State(mock): State<Shared>, Path(id): Path<i64>) -> Response {
    let mock = mock.lock().unwrap();
    let rows: Vec<Value> = mock
        .queued
        .iter()
        .filter(|((asset, _), _)| *asset == id)
        .map(|((asset, dag), at)| json!({"dag_id": dag, "asset_id": asset, "created_at": at}))
        .collect();
    Json(json!({"queued_events": rows, "total_entries": rows.len()})).into_response()
}

async fn dag(State(mock): State<Shared>, Path(dag_id): Path<String>) -> Response {
    let mock = mock.lock().unwrap();
    match mock.dags.get(&dag_id) {
        Some((paused, partitioned)) => {
            Json(json!({"dag_id": dag_id, "is_paused": paused, "timetable_partitioned": partitioned}))
                .into_response()
        }
        None => (Status::NOT_FOUND, "no such DAG").into_response(),
    }
}

async fn runs(
    State(mock): State<Shared>,
    Path(dag_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mock = mock.lock().unwrap();
    let since: Option<DateTime<Utc>> = query.get("run_after_gte").and_then(|t| t.parse().ok());
    let n =
        mock.runs.iter().filter(|(dag, after)| *dag == dag_id && since.is_none_or(|s| *after >= s)).count();
    Json(json!({"dag_runs": [], "total_entries": n})).into_response()
}

async fn health(State(mock): State<Shared>) -> Response {
    let mut mock = mock.lock().unwrap();
    mock.health_probes += 1;
    if mock.healthy { Status::OK.into_response() } else { Status::SERVICE_UNAVAILABLE.into_response() }
}

async fn start(mock: Mock) -> (String, Shared) {
    use axum::routing::{get, post};
    let shared = Arc::new(Mutex::new(mock));
    let app = axum::Router::new()
        .route("/auth/token", post(token))
        .route("/api/v2/assets", get(assets))
        .route("/api/v2/assets/{id}", get(asset))
        .route("/api/v2/assets/{id}/queuedEvents", get(queued))
        .route("/api/v2/assets/events", post(post_event).get(list_events))
        .route("/api/v2/dags/{dag_id}", get(dag))
        .route("/api/v2/dags/{dag_id}/dagRuns", get(runs))
        .route("/api/v2/monitor/health", get(health))
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
        emit: Emit::Event,
        rate_limit: MAX_RATE_LIMIT,
        ensure_runs: false,
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
    let mut sink = AirflowSink::new(&config).unwrap();
    // These tests start from scratch: nothing of an earlier process to look for.
    sink.fresh = false;
    sink
}

fn event(id: &str, path: &str) -> Encoded {
    let mut event = crate::event::sample_file_event(id);
    if let Item::File(file) = &mut event.item {
        file.path = format!("in/{path}");
        file.relative_path = path.into();
    }
    event.emitted_at = Utc::now();
    Encoded::of(&event).unwrap()
}

fn events(n: usize) -> Vec<Encoded> {
    (0..n).map(|i| event(&format!("e{i}"), &format!("f{i}.csv"))).collect()
}

/// A batch as the watcher delivers it: each attempt sends what the sink has not
/// acknowledged yet.
struct Delivering {
    events: Vec<Encoded>,
    done: usize,
}

impl Delivering {
    fn new(events: Vec<Encoded>) -> Self {
        Delivering { events, done: 0 }
    }

    async fn attempt(&mut self, sink: &mut AirflowSink) -> Delivery {
        let acked = Acked::new();
        let outcome = sink.deliver(&self.events[self.done..], &acked).await;
        self.done += acked.get();
        outcome
    }
}

/// One delivery of `events`, whole.
async fn deliver(sink: &mut AirflowSink, events: &[Encoded]) -> Delivery {
    sink.deliver(events, &Acked::new()).await
}

#[tokio::test]
async fn picks_the_exact_uri_and_renews_an_expired_token_once() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut sink = sink(&config(&url));
    assert_eq!(
        deliver(&mut sink, &[event("e1", "a.csv"), event("e2", "b.csv")]).await,
        Delivery::Acknowledged
    );
    {
        let mock = mock.lock().unwrap();
        assert_eq!(mock.tokens_issued, 1);
        assert_eq!(mock.lookups, 1);
        let ids: Vec<_> =
            mock.events.iter().map(|(id, b, _)| (*id, b["extra"]["event_id"].clone())).collect();
        assert_eq!(ids, [(7, json!("e1")), (7, json!("e2"))]);
        assert_eq!(mock.events[0].1["extra"]["item"]["relative_path"], "a.csv");
        assert!(mock.events[0].1.get("partition_key").is_none());
    }
    // Airflow forgets the token (expiry): one new token, and the event goes. The id
    // is read by id, not looked up by URI again.
    mock.lock().unwrap().valid_token = "expired-meanwhile".into();
    assert_eq!(deliver(&mut sink, &[event("e3", "c.csv")]).await, Delivery::Acknowledged);
    let mock = mock.lock().unwrap();
    assert_eq!(mock.tokens_issued, 2);
    assert_eq!(mock.lookups, 1);
    assert_eq!(mock.events.len(), 3);
}

#[tokio::test]
async fn a_missing_asset_or_one_without_consumers_is_held_and_a_recreated_one_found_again() {
    let (url, mock) = start(Mock { healthy: true, ..Mock::default() }).await;
    let mut sink = sink(&config(&url));
    match deliver(&mut sink, &[event("e1", "a.csv")]).await {
        Delivery::NeedsAttention { reason, after } => {
            assert!(reason.contains("s3://landing/orders"), "{reason}");
            assert_eq!(after, Some(Duration::from_secs(42)));
        }
        other => panic!("expected a slow retry, got {other:?}"),
    }
    // The asset appears, declared as an outlet only: nothing consumes it yet.
    mock.lock().unwrap().assets = vec![(7, "orders".into(), "s3://landing/orders".into(), vec![])];
    match deliver(&mut sink, &[event("e1", "a.csv")]).await {
        Delivery::NeedsAttention { reason, .. } => {
            assert!(reason.contains("no DAG is scheduled on it"), "{reason}")
        }
        other => panic!("expected to be held, got {other:?}"),
    }
    assert!(mock.lock().unwrap().events.is_empty(), "nothing is posted to an asset nobody consumes");
    // The DAG is deployed.
    let token = mock.lock().unwrap().valid_token.clone();
    *mock.lock().unwrap() = Mock { valid_token: token, ..Mock::with_assets() };
    assert_eq!(deliver(&mut sink, &[event("e1", "a.csv")]).await, Delivery::Acknowledged);
    // Re-created under a new id: the 404 makes the sink look it up again.
    mock.lock().unwrap().assets = vec![(12, "orders".into(), "s3://landing/orders".into(), vec!["d".into()])];
    assert_eq!(deliver(&mut sink, &[event("e2", "b.csv")]).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().events.last().unwrap().0, 12);
    // Its DAG removed (Airflow drops the references): held again.
    mock.lock().unwrap().assets[0].3.clear();
    assert!(matches!(deliver(&mut sink, &[event("e3", "c.csv")]).await, Delivery::NeedsAttention { .. }));
    assert_eq!(mock.lock().unwrap().event_ids(), ["e1", "e2"]);
}

#[tokio::test]
async fn refused_credentials_are_held_and_a_fixed_password_file_is_read_again() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    let file = password_file("wrong");
    config.password_file = Some(file.clone());
    let mut sink = sink(&config);
    match deliver(&mut sink, &[event("e1", "a.csv")]).await {
        Delivery::NeedsAttention { reason, after: Some(_) } => {
            assert!(reason.contains("admin") && !reason.contains("wrong"), "{reason}");
            // One URL, as a browser or curl takes it.
            assert!(reason.contains(&format!("{url}/auth/token refused")), "{reason}");
            assert!(reason.contains("password_file"), "{reason}");
        }
        other => panic!("expected a slow retry, got {other:?}"),
    }
    let SecretFile::Path(path) = file else { unreachable!() };
    std::fs::write(path, "pw\n").unwrap();
    assert_eq!(deliver(&mut sink, &[event("e1", "a.csv")]).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().event_ids(), ["e1"]);
}

#[tokio::test]
async fn partition_keys_come_from_the_item() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.partition_key = Some(Template::parse("file={relative_path} {{{size}}}").unwrap());
    let mut sink = sink(&config);
    assert_eq!(deliver(&mut sink, &[event("e1", "a.csv")]).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().events[0].1["partition_key"], "file=a.csv {3}");

    config.partition_key = Some(Template::parse("{bucket}").unwrap());
    let mut sink = self::sink(&config);
    assert!(matches!(deliver(&mut sink, &[event("e2", "b.csv")]).await, Delivery::Permanent { .. }));
}

#[tokio::test]
async fn an_event_stored_without_an_answer_is_not_posted_twice() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.timeout = HumanDuration(Duration::from_millis(300));
    let mut sink = sink(&config);
    let mut batch = Delivering::new(events(6));
    mock.lock().unwrap().post_faults = VecDeque::from([
        // e0 stored, answered 500; e1 refused with 500 (not stored); e2 stored, too late.
        PostFault::StoreThen500,
        PostFault::Refuse,
        PostFault::StoreThenStall(Duration::from_secs(2)),
    ]);
    for _ in 0..3 {
        assert!(matches!(batch.attempt(&mut sink).await, Delivery::RetryLater { .. }));
    }
    assert_eq!(batch.attempt(&mut sink).await, Delivery::Acknowledged);
    let mock = mock.lock().unwrap();
    assert_eq!(mock.event_ids(), ["e0", "e1", "e2", "e3", "e4", "e5"], "each once, in order");
}

#[tokio::test]
async fn a_retried_batch_skips_what_airflow_took() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut sink = sink(&config(&url));
    let mut batch = Delivering::new(events(5));
    // Three go through, the fourth fails before Airflow stores it (one Airflow 500
    // part-way through a batch).
    mock.lock().unwrap().post_faults =
        VecDeque::from([PostFault::Pass, PostFault::Pass, PostFault::Pass, PostFault::Refuse]);
    assert!(matches!(batch.attempt(&mut sink).await, Delivery::RetryLater { .. }));
    assert_eq!(mock.lock().unwrap().event_ids(), ["e0", "e1", "e2"]);
    assert_eq!(batch.done, 3, "the three Airflow took are acknowledged");
    assert_eq!(batch.attempt(&mut sink).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().event_ids(), ["e0", "e1", "e2", "e3", "e4"], "the first three not again");
}

#[tokio::test]
async fn a_fresh_sink_looks_for_the_events_of_its_first_delivery() {
    // A process stopped after Airflow stored e0 but before it kept that progress.
    let (url, mock) = start(Mock::with_assets()).await;
    let mut first = sink(&config(&url));
    let batch = events(4);
    assert_eq!(deliver(&mut first, &batch[..2]).await, Delivery::Acknowledged);
    let mut config = config(&url);
    config.password_file = Some(password_file("pw"));
    let mut restarted = AirflowSink::new(&config).unwrap();
    let acked = Acked::new();
    assert_eq!(restarted.deliver(&batch, &acked).await, Delivery::Acknowledged);
    assert_eq!(acked.get(), 4);
    assert_eq!(mock.lock().unwrap().event_ids(), ["e0", "e1", "e2", "e3"], "e0 and e1 not again");
    // Later deliveries look nothing up.
    let listed = mock.lock().unwrap().event_lists;
    assert_eq!(deliver(&mut restarted, &[event("e4", "x.csv")]).await, Delivery::Acknowledged);
    assert_eq!(mock.lock().unwrap().event_lists, listed);
}

#[tokio::test]
async fn emit_batch_posts_one_event_listing_the_batch() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.emit = Emit::Batch;
    let mut sink = sink(&config);
    let batch = events(3);
    assert_eq!(deliver(&mut sink, &batch).await, Delivery::Acknowledged);
    let mock = mock.lock().unwrap();
    assert_eq!(mock.events.len(), 1);
    let extra = &mock.events[0].1["extra"];
    assert_eq!(extra["batch_id"], webhook_id(&batch));
    let ids: Vec<&str> =
        extra["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["e0", "e1", "e2"]);
    assert_eq!(extra["events"][1]["item"]["relative_path"], "f1.csv");
    assert_eq!(extra["watcher"], "w");
}

/// Waits until the sink's coverage task is done with `n` targets.
async fn settled(sink: &AirflowSink, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sink.coverage.as_ref().map_or(0, Coverage::settled) < n {
        assert!(std::time::Instant::now() < deadline, "the coverage task did not settle {n} targets");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requeued(mock: &Shared) -> Vec<String> {
    let mock = mock.lock().unwrap();
    mock.events
        .iter()
        .filter(|(_, b, _)| b["extra"]["requeued"] == true)
        .map(|(_, b, _)| b["extra"]["event_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_last_event_left_without_a_run_is_posted_again() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.ensure_runs = true;
    let mut sink = sink(&config);
    // The batch's first event queues the run; the later ones find the row there and
    // add none (Airflow 3.3).
    assert_eq!(deliver(&mut sink, &events(3)).await, Delivery::Acknowledged);
    // The scheduler makes the run from that row, with the events stamped up to the
    // row's creation: the first. The last two are left out.
    mock.lock().unwrap().schedule();
    settled(&sink, 1).await;
    assert_eq!(requeued(&mock), ["e2"], "the batch's last event posted again, with its own id");
    let mock = mock.lock().unwrap();
    assert_eq!(mock.queued.len(), 1, "the repost queued a run, which includes e1 and e2");
    assert_eq!(mock.events.len(), 4);
}

#[tokio::test]
async fn a_batch_whose_run_is_queued_is_not_posted_again() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.ensure_runs = true;
    let mut sink = sink(&config);
    // One event: the row it queues is stamped after it, so the run includes it.
    assert_eq!(deliver(&mut sink, &events(1)).await, Delivery::Acknowledged);
    settled(&sink, 1).await;
    mock.lock().unwrap().schedule();
    assert_eq!(deliver(&mut sink, &[event("e9", "z.csv")]).await, Delivery::Acknowledged);
    settled(&sink, 2).await;
    assert!(requeued(&mock).is_empty());
    // A row queued before the event that becomes a run after it was posted includes
    // nothing newer than the row: the event is posted again.
    mock.lock().unwrap().queued.clear();
    mock.lock().unwrap().queued.insert((7, "load_orders".into()), Utc::now() - chrono::Duration::seconds(10));
    assert_eq!(deliver(&mut sink, &[event("e10", "y.csv")]).await, Delivery::Acknowledged);
    mock.lock().unwrap().schedule();
    settled(&sink, 3).await;
    assert_eq!(requeued(&mock), ["e10"]);
}

#[tokio::test]
async fn recovery_is_noticed_by_the_health_endpoint() {
    let (url, mock) = start(Mock { healthy: false, ..Mock::with_assets() }).await;
    let mut sink = sink(&config(&url));
    // A 500 of Airflow's own: it was reachable, there is no coming back to wait for.
    mock.lock().unwrap().post_faults = VecDeque::from([PostFault::Refuse]);
    assert!(matches!(deliver(&mut sink, &events(1)).await, Delivery::RetryLater { .. }));
    assert!(!sink.api.unreachable);
    // Out of reach (a refused connection, a gateway's 503): the probe watches for it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut away = self::sink(&config(&format!("http://127.0.0.1:{closed}")));
    assert!(matches!(deliver(&mut away, &events(1)).await, Delivery::RetryLater { .. }));
    assert!(away.api.unreachable);
    sink.api.unreachable = true;
    let probe = tokio::spawn(async move {
        sink.recovered().await;
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while mock.lock().unwrap().health_probes < 2 {
        assert!(std::time::Instant::now() < deadline, "no health probes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!probe.is_finished(), "recovered while the health endpoint failed");
    mock.lock().unwrap().healthy = true;
    tokio::time::timeout(Duration::from_secs(10), probe).await.expect("recovered").unwrap();
}

#[tokio::test]
async fn check_warns_about_partition_keys_a_dag_ignores_and_paused_dags() {
    let (url, mock) = start(Mock::with_assets()).await;
    let mut config = config(&url);
    config.partition_key = Some(Template::parse("{relative_path}").unwrap());
    let checked = sink(&config).check().await.unwrap();
    assert_eq!(checked.warnings.len(), 1, "{checked:?}");
    assert!(checked.warnings[0].contains("load_orders is not partitioned"), "{checked:?}");
    assert!(checked.notes[0].contains("asset id 7, consumed by load_orders"), "{checked:?}");
    mock.lock().unwrap().dags.insert("load_orders".into(), (true, true));
    config.partition_key = None;
    let checked = sink(&config).check().await.unwrap();
    let warnings = checked.warnings.join("\n");
    assert!(warnings.contains("paused") && warnings.contains("is partitioned"), "{warnings}");
}

#[test]
fn the_pacer_spaces_requests_evenly() {
    let mut pacer = Pacer::new(20);
    let start = tokio::time::Instant::now();
    let slots: Vec<Duration> = (0..5).map(|_| pacer.slot(start) - start).collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(slots, [ms(0), ms(50), ms(100), ms(150), ms(200)], "no burst: 50 ms apart");
    // After a pause the next one goes at once, and the spacing starts again from it.
    let later = start + Duration::from_secs(10);
    assert_eq!(pacer.slot(later), later);
    assert_eq!(pacer.slot(later) - later, ms(50));
}

#[test]
fn validation_reports_each_problem_and_describe_hides_secrets() {
    let mut config = config("http://airflow:8080");
    config.asset_name = Some("orders".into());
    config.token_env = Some(EnvVar::new("AIRFLOW_TOKEN").unwrap());
    config.rate_limit = 0;
    config.emit = Emit::Batch;
    config.partition_key = Some(Template::parse("{key}").unwrap());
    let keys: Vec<String> = config.validate().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["asset_name", "username", "token_env", "rate_limit", "partition_key"]);
    let mut ok = self::config("http://airflow:8080/");
    ok.password_env = Some(EnvVar::new("AIRFLOW_PASSWORD").unwrap());
    assert!(ok.validate().is_empty(), "{:?}", ok.validate());
    assert_eq!(ok.describe(), "airflow http://airflow:8080/ asset URI `s3://landing/orders`, as admin");
}

#[test]
fn a_requeued_extra_keeps_the_rest_of_its_text() {
    let extra = serde_json::value::RawValue::from_string(
        r#"{"event_id":"e1","item":{"n":123456789012345678901234567890}}"#.into(),
    )
    .unwrap();
    assert_eq!(
        events::requeued(&extra).get(),
        r#"{"requeued":true,"event_id":"e1","item":{"n":123456789012345678901234567890}}"#
    );
    let empty = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    assert_eq!(events::requeued(&empty).get(), r#"{"requeued":true}"#);
}
