//! S3 test support: one SeaweedFS server per test binary on free loopback ports, an S3
//! client to put and delete objects, and a proxy in front of the server that can fail
//! requests (503/500), rewrite `LastModified` in listings and note what it forwarded.
//! Around the server, what the networks people use put in the way: a TLS front with a
//! private CA, an HTTP CONNECT proxy, an instance-metadata address that never answers,
//! and an IAM Identity Center portal handing out role credentials.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

/// Credentials the daemon under test is given. SeaweedFS started without identities
/// accepts any; the secret is distinctive so tests can check it never shows up in output.
pub const ACCESS_KEY: &str = "HWTESTACCESSKEY";
pub const SECRET_KEY: &str = "hw-test-secret-5c1f0e9a7d";

/// The async runtime the helpers (client, proxy) run on.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        highwater::init_tls();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// The shared server.
pub struct Weed {
    /// `http://127.0.0.1:PORT` of its S3 API.
    pub endpoint: String,
}

/// Starts the server on first use; every S3 test of this binary shares it. It is
/// stopped when the test binary exits (the kernel signals it when the thread that
/// started it dies, and that thread lives as long as the process).
pub fn weed() -> &'static Weed {
    static WEED: OnceLock<Weed> = OnceLock::new();
    WEED.get_or_init(|| match start_weed() {
        Ok(weed) => weed,
        Err(e) => panic!("{e}"),
    })
}

static WEED_PID: AtomicI32 = AtomicI32::new(0);
static WEED_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Runs at exit: stops the server, waits for it to go, removes its data.
extern "C" fn stop_weed() {
    let pid = WEED_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: signals the server this process started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks whether the process still exists.
        while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = WEED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn start_weed() -> Result<Weed, String> {
    let Some(weed) = std::env::var_os("HIGHWATER_TEST_WEED") else {
        return Err("HIGHWATER_TEST_WEED is not set: run the tests with scripts/test.sh, which installs \
             SeaweedFS (tests/setup/s3.sh) and points the S3 tests at it"
            .into());
    };
    let weed = PathBuf::from(weed);
    // The ports are free when picked, but another process may take one before the
    // server binds it; the server then exits at once, and starts again on new ones.
    let mut failures = Vec::new();
    for _ in 0..3 {
        match try_start_weed(&weed)? {
            Ok(started) => return Ok(started),
            Err(log) => failures.push(log),
        }
    }
    Err(format!("SeaweedFS exited at start three times; its logs:\n{}", failures.join("\n---\n")))
}

/// One start on newly picked ports: Ok(Ok) once ready, Ok(Err(log)) when the server
/// exited before it was ready (a port was taken), Err when it cannot be started at all
/// or does not become ready.
fn try_start_weed(weed: &std::path::Path) -> Result<Result<Weed, String>, String> {
    let dir = tempfile::Builder::new().prefix("highwater-weed-").tempdir().map_err(|e| e.to_string())?;
    let s3_port = free_port();
    // Every port the server opens gets its own free loopback port, so that several test
    // runs (and a developer's own SeaweedFS) can share the machine.
    let mut args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", dir.path().display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        "-master.telemetry=false".into(),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.port={s3_port}"),
    ];
    for flag in [
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "debug.port",
        "metricsPort",
    ] {
        args.push(format!("-{flag}={}", free_port()));
    }
    let log = std::fs::File::create(dir.path().join("weed.log")).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (exit_tx, exited) = std::sync::mpsc::channel::<()>();
    let data_dir = dir.path().to_path_buf();
    let weed = weed.to_path_buf();
    std::thread::spawn(move || {
        let mut cmd = Command::new(&weed);
        cmd.args(&args)
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // `weed mini` turns AWS_* variables into identities; without them it accepts
            // any credentials.
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("S3_BUCKET");
        // SAFETY: prctl in the child between fork and exec; async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                WEED_PID.store(child.id() as i32, Ordering::SeqCst);
                static AT_EXIT: std::sync::Once = std::sync::Once::new();
                // SAFETY: registers a plain extern "C" function with no arguments, once.
                AT_EXIT.call_once(|| unsafe {
                    libc::atexit(stop_weed);
                });
                let _ = tx.send(Ok(()));
                // This thread lives until the server exits (at the latest when the
                // process does; then the server is signalled).
                let _ = child.wait();
                let _ = exit_tx.send(());
            }
            Err(e) => {
                let _ = tx.send(Err(format!("cannot start {}: {e}", weed.display())));
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let read_log = || std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default();
    // Ready when a bucket can be created and seen.
    let client = client(&endpoint);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if exited.try_recv().is_ok() {
            return Ok(Err(read_log()));
        }
        let ok = rt().block_on(async {
            let _ = client.create_bucket().bucket("ready").send().await;
            client.head_bucket().bucket("ready").send().await.is_ok()
        });
        if ok {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("SeaweedFS did not become ready in 60s; its log:\n{}", read_log()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The data directory lives as long as the process; `stop_weed` removes it.
    let _ = WEED_DIR.set(dir.keep());
    Ok(Ok(Weed { endpoint }))
}

/// An S3 client for the tests' own puts and deletes.
pub fn client(endpoint: &str) -> Client {
    let _ = rt();
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// A bucket on the shared server, created empty for one test.
pub struct Bucket {
    pub name: String,
    pub client: Client,
}

impl Bucket {
    pub fn new(name: &str) -> Self {
        let client = client(&weed().endpoint);
        rt().block_on(async {
            client.create_bucket().bucket(name).send().await.expect("create bucket");
            // ListBuckets is not to be trusted on SeaweedFS; HeadBucket is.
            client.head_bucket().bucket(name).send().await.expect("head bucket");
        });
        Bucket { name: name.to_string(), client }
    }

    pub fn put(&self, key: &str, body: &str) {
        self.put_many(&[(key.to_string(), body.to_string())]);
    }

    /// Puts objects, 16 at a time.
    pub fn put_many(&self, objects: &[(String, String)]) {
        rt().block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for chunk in objects.chunks(objects.len().div_ceil(16).max(1)) {
                let chunk = chunk.to_vec();
                let client = self.client.clone();
                let bucket = self.name.clone();
                tasks.spawn(async move {
                    for (key, body) in chunk {
                        client
                            .put_object()
                            .bucket(&bucket)
                            .key(&key)
                            .body(ByteStream::from(body.into_bytes()))
                            .send()
                            .await
                            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("put task");
            }
        });
    }

    pub fn delete(&self, key: &str) {
        rt().block_on(async {
            self.client.delete_object().bucket(&self.name).key(key).send().await.expect("delete");
        });
    }
}

/// What the proxy does to the requests it forwards.
#[derive(Debug, Default)]
pub struct ProxyState {
    /// Answer this many of the next requests with `fail_status` instead of forwarding.
    pub fail_next: u32,
    /// The status of those answers (503 SlowDown, 500 InternalError).
    pub fail_status: u16,
    /// key → the `LastModified` text to put in listings for it.
    pub last_modified: HashMap<String, String>,
    /// Requests seen.
    pub requests: u64,
    /// ListObjectsV2 requests seen.
    pub list_requests: u64,
    /// Listings from the start of the prefix seen: ListObjectsV2 requests with neither
    /// `start-after` nor a continuation token.
    pub full_listings: u64,
    /// Access key ids the requests were signed with.
    pub access_keys: std::collections::BTreeSet<String>,
}

/// A proxy on a free loopback port in front of the shared server.
pub struct Proxy {
    pub endpoint: String,
    pub state: Arc<Mutex<ProxyState>>,
}

impl Proxy {
    pub fn start() -> Self {
        let upstream = weed().endpoint.clone();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let shared = (upstream, Arc::clone(&state), reqwest::Client::new());
        let listener = rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let app = axum::Router::new().fallback(forward).with_state(Arc::new(shared));
        rt().spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { endpoint: format!("http://127.0.0.1:{port}"), state }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, ProxyState> {
        self.state.lock().expect("proxy state")
    }
}

type Shared = Arc<(String, Arc<Mutex<ProxyState>>, reqwest::Client)>;

async fn forward(State(shared): State<Shared>, request: Request) -> Response {
    let (upstream, state, http) = (&shared.0, &shared.1, &shared.2);
    let (parts, body) = request.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let is_list = parts.uri.query().is_some_and(|q| q.contains("list-type=2"));
    let is_full_listing = is_list
        && parts
            .uri
            .query()
            .is_some_and(|q| !q.contains("start-after=") && !q.contains("continuation-token="));
    let access_key = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| between(v, "Credential=", "/"))
        .map(str::to_string);
    let (fail, rewrite) = {
        let mut s = state.lock().expect("proxy state");
        s.requests += 1;
        if is_list {
            s.list_requests += 1;
        }
        if let Some(key) = access_key {
            s.access_keys.insert(key);
        }
        if is_full_listing {
            s.full_listings += 1;
        }
        let fail = if s.fail_next > 0 {
            s.fail_next -= 1;
            Some(s.fail_status)
        } else {
            None
        };
        (fail, s.last_modified.clone())
    };
    if let Some(status) = fail {
        let code = if status == 503 { "SlowDown" } else { "InternalError" };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
        );
        return Response::builder()
            .status(status)
            .header("content-type", "application/xml")
            .body(Body::from(body))
            .expect("response");
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if name != "accept-encoding" && name != "content-length" && name != "connection" {
            headers.append(name.clone(), value.clone());
        }
    }
    let url = format!("{upstream}{path_and_query}");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).expect("method");
    let answer = match http.request(method, &url).headers(headers).body(body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .expect("response");
        }
    };
    let status = answer.status();
    let mut builder = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            builder = builder.header(name, value);
        }
    }
    let mut bytes = answer.bytes().await.unwrap_or_default().to_vec();
    if is_list && !rewrite.is_empty() {
        bytes = rewrite_last_modified(&String::from_utf8_lossy(&bytes), &rewrite).into_bytes();
    }
    builder.body(Body::from(bytes)).expect("response")
}

/// Replaces `<LastModified>` of the `<Contents>` entries whose `<Key>` is in `times`.
/// Keys given here are ASCII letters, digits and `-._/`, which neither XML escaping nor
/// the listing's URL encoding changes.
fn rewrite_last_modified(xml: &str, times: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(start) = rest.find("<Contents>") {
        let Some(len) = rest[start..].find("</Contents>") else { break };
        let end = start + len + "</Contents>".len();
        out.push_str(&rest[..start]);
        let mut entry = rest[start..end].to_string();
        let key = between(&entry, "<Key>", "</Key>").map(str::to_string);
        if let Some(time) = key.and_then(|k| times.get(&k))
            && let Some(old) = between(&entry, "<LastModified>", "</LastModified>").map(str::to_string)
        {
            entry = entry.replace(
                &format!("<LastModified>{old}</LastModified>"),
                &format!("<LastModified>{time}</LastModified>"),
            );
        }
        out.push_str(&entry);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(&text[start..start + len])
}

/// A loopback listener that accepts connections and never answers: an address that
/// exists only on EC2 (instance metadata), as seen from anywhere else. Counts the
/// connections made to it.
pub struct Silent {
    pub endpoint: String,
    pub connections: Arc<std::sync::atomic::AtomicU64>,
}

impl Silent {
    pub fn start() -> Self {
        let listener = rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        rt().spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        Silent { endpoint: format!("http://127.0.0.1:{port}"), connections }
    }
}

/// An HTTP proxy on loopback that tunnels `CONNECT host:port` requests (what a client
/// behind `HTTPS_PROXY` sends) and counts them.
pub struct ConnectProxy {
    pub url: String,
    pub tunnels: Arc<std::sync::atomic::AtomicU64>,
}

impl ConnectProxy {
    pub fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let tunnels = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&tunnels);
        rt().spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    // The request head, up to the blank line; the tunnel starts after it.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read_exact(&mut byte).await.is_err() || head.len() > 8192 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head);
                    let Some(target) = head.strip_prefix("CONNECT ").and_then(|r| r.split(' ').next()) else {
                        let _ = client.write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await;
                        return;
                    };
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    if client.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n").await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        ConnectProxy { url: format!("http://127.0.0.1:{port}"), tunnels }
    }
}

/// HTTPS in front of the shared server, with a certificate for 127.0.0.1 signed by a
/// private CA made for this run (`ca_file`, the PEM a client must be told to trust).
pub struct TlsFront {
    pub endpoint: String,
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsFront {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .unwrap_or_else(|e| panic!("cannot run openssl (needed to make a test CA): {e}"));
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=highwater test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_file_iter(d.join("server.pem"))
                .expect("server.pem")
                .collect::<Result<_, _>>()
                .expect("certs");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join("server.key")).expect("server.key");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let upstream = weed().endpoint.trim_start_matches("http://").to_string();
        let listener = rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        rt().spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else { return };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { endpoint: format!("https://127.0.0.1:{port}"), ca_file: d.join("ca.pem"), _dir: dir }
    }
}

/// An IAM Identity Center portal (`GetRoleCredentials`) on loopback: a client pointed at
/// it with `AWS_ENDPOINT_URL_SSO` and holding `token` gets `access_key` for the role.
pub struct SsoPortal {
    pub endpoint: String,
    /// Role credential requests answered.
    pub answered: Arc<std::sync::atomic::AtomicU64>,
}

impl SsoPortal {
    pub fn start(token: &'static str, access_key: &'static str) -> Self {
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&answered);
        let app = axum::Router::new().route(
            "/federation/credentials",
            axum::routing::get(move |headers: HeaderMap| {
                let counter = Arc::clone(&counter);
                async move {
                    if headers.get("x-amz-sso_bearer_token").and_then(|v| v.to_str().ok()) != Some(token) {
                        return Response::builder()
                            .status(401)
                            .header("x-amzn-errortype", "UnauthorizedException")
                            .body(Body::from("{\"message\":\"bad token\"}"))
                            .expect("response");
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let expiration = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
                    let body = format!(
                        "{{\"roleCredentials\":{{\"accessKeyId\":\"{access_key}\",\"secretAccessKey\":\"sso-secret\",\"sessionToken\":\"sso-session\",\"expiration\":{expiration}}}}}"
                    );
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .expect("response")
                }
            }),
        );
        let listener = rt().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        rt().spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        SsoPortal { endpoint: format!("http://127.0.0.1:{port}"), answered }
    }
}
