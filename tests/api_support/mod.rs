//! Shared by the api_*, webhook_*, store_* and restart_* tests: configuration, a scripted
//! CallPlacer (crosses no wire), oneshot helpers and a local webhook receiver.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::IntoResponse;
use callverify::api::{AppState, app};
use callverify::call::{CallPlacer, CallProgress, CallReport, CallRequest};
use callverify::config::Config;
use callverify::dialer::Dialer;
use callverify::store::{SqliteStore, Store};
use flow::{CallResult, TimelineEntry, TimelineEvent};
use futures::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub const KEY: &str = "cv_test_auth_server_key_0001";
pub const OTHER_KEY: &str = "cv_test_other_client_key_02";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A valid US number (libphonenumber's example fixed line).
pub const US_NUMBER: &str = "+12015550123";

/// A configuration for tests: two clients, US and GB allowed, webhooks to loopback allowed.
pub fn config() -> Config {
    config_with("")
}

/// [`config`] with extra TOML appended (later tables override).
pub fn config_with(extra: &str) -> Config {
    let text = format!(
        r#"
[api]
listen = "127.0.0.1:0"
max_wait_secs = 30

[[api.clients]]
name = "auth"
key = "{KEY}"
webhook_secret = "{SECRET}"
callback_hosts = ["127.0.0.1", "auth.example.com"]

[[api.clients]]
name = "other"
key_sha256 = "{other_hash}"

[store]
url = "sqlite::memory:"

{extra}
"#,
        other_hash = sha256_hex(OTHER_KEY),
    );
    let mut table: toml::Table = toml::from_str(&text).expect("test config is TOML");
    // Defaults the tests rely on, unless `extra` set them.
    let set = |table: &mut toml::Table, section: &str, key: &str, value: toml::Value| {
        let s = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = s {
            t.entry(key).or_insert(value);
        }
    };
    set(
        &mut table,
        "limits",
        "countries",
        toml::Value::Array(vec!["US".into(), "GB".into()]),
    );
    set(&mut table, "limits", "per_number_per_hour", 0.into());
    set(&mut table, "webhook", "allow_http", true.into());
    // Most tests read /metrics without a key; the metrics-key tests say otherwise.
    if !extra.contains("metrics_key") {
        set(&mut table, "api", "metrics_public", true.into());
    }
    set(&mut table, "webhook", "allow_private_networks", true.into());
    Config::from_toml(
        &toml::to_string(&table).expect("serializes"),
        Path::new("test.toml"),
        Vec::new(),
    )
    .expect("test config is valid")
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

pub async fn memory_store() -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::memory(callverify::webhook::payload)
            .await
            .expect("in-memory store"),
    )
}

/// The store secret key of the tests (fixed, so tests can seal digits the same way).
pub fn test_key() -> callverify::secrets::StoreKey {
    callverify::secrets::StoreKey::from_bytes([0x42; 32])
}

/// State and router over a fresh in-memory store.
pub async fn api(config: Config) -> (AppState, Router) {
    let state = AppState::new(config, memory_store().await, test_key()).expect("state");
    let router = app(state.clone());
    (state, router)
}

/// A response, with the body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }
}

/// One request through the router, no socket.
pub async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}

pub async fn post(router: &Router, body: &str) -> Reply {
    send(
        router,
        Method::POST,
        "/v1/verifications",
        Some(KEY),
        &[],
        Some(body),
    )
    .await
}

pub async fn get(router: &Router, id: &str) -> Reply {
    send(
        router,
        Method::GET,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await
}

/// What the scripted placer does with each call.
#[derive(Clone, Debug)]
pub enum Script {
    /// Ring, answer, then end at once with this result.
    Immediate(CallResult),
    /// Ring, answer, then hold until cancelled (reports `cancelled`).
    UntilCancelled,
    /// Ring, answer, hold until a permit of `release` is added, then this result.
    Held(CallResult),
    /// A bug in the runtime.
    Panic,
}

/// A CallPlacer for tests: scripted outcomes, records what it was asked and how many calls
/// ran at once (in total and per destination).
pub struct ScriptedPlacer {
    pub script: Mutex<Script>,
    pub placed: Mutex<Vec<CallRequest>>,
    pub release: Arc<Semaphore>,
    active: Arc<Mutex<Vec<String>>>,
    pub max_active: AtomicUsize,
    pub same_number_overlaps: AtomicUsize,
    /// What `has_capacity` answers (false: an overloaded runtime).
    pub capacity: AtomicBool,
}

impl ScriptedPlacer {
    pub fn new(script: Script) -> Arc<ScriptedPlacer> {
        Arc::new(ScriptedPlacer {
            script: Mutex::new(script),
            placed: Mutex::new(Vec::new()),
            release: Arc::new(Semaphore::new(0)),
            active: Arc::default(),
            max_active: AtomicUsize::new(0),
            same_number_overlaps: AtomicUsize::new(0),
            capacity: AtomicBool::new(true),
        })
    }

    pub fn placed(&self) -> usize {
        self.placed.lock().unwrap().len()
    }
}

/// The timeline of a confirmed call, as the runtime would report it.
pub fn confirmed_timeline() -> Vec<TimelineEntry> {
    let e = |at_ms, event| TimelineEntry { at_ms, event };
    vec![
        e(0, TimelineEvent::InviteSent),
        e(120, TimelineEvent::Provisional { code: 180 }),
        e(2_000, TimelineEvent::Answered),
        e(
            2_300,
            TimelineEvent::PromptStarted {
                prompt: "en/confirm".into(),
            },
        ),
        e(
            6_100,
            TimelineEvent::Digit {
                digit: "#".into(),
                method: "inband".into(),
            },
        ),
        e(6_200, TimelineEvent::ByeSent),
        e(
            6_200,
            TimelineEvent::Outcome {
                result: CallResult::Confirmed,
            },
        ),
    ]
}

impl CallPlacer for ScriptedPlacer {
    fn place(
        &self,
        call: CallRequest,
        progress: mpsc::UnboundedSender<CallProgress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, CallReport> {
        let script = self.script.lock().unwrap().clone();
        let dest = call.destination.expose().to_owned();
        {
            let mut active = self.active.lock().unwrap();
            if active.contains(&dest) {
                self.same_number_overlaps.fetch_add(1, Ordering::SeqCst);
            }
            active.push(dest.clone());
            self.max_active.fetch_max(active.len(), Ordering::SeqCst);
        }
        self.placed.lock().unwrap().push(call);
        let release = Arc::clone(&self.release);
        let active = Arc::clone(&self.active);
        Box::pin(async move {
            let _ = progress.send(CallProgress::Ringing);
            let _ = progress.send(CallProgress::Timeline(TimelineEntry {
                at_ms: 0,
                event: TimelineEvent::InviteSent,
            }));
            let _ = progress.send(CallProgress::Answered);
            let _ = progress.send(CallProgress::DetectorLatency(Duration::from_millis(45)));
            let result = match script {
                Script::Immediate(r) => r,
                Script::UntilCancelled => {
                    cancel.cancelled().await;
                    CallResult::Cancelled
                }
                Script::Panic => panic!("scripted placer panic"),
                Script::Held(r) => tokio::select! {
                    permit = release.acquire() => {
                        permit.expect("semaphore open").forget();
                        r
                    }
                    _ = cancel.cancelled() => CallResult::Cancelled,
                },
            };
            let mut a = active.lock().unwrap();
            if let Some(pos) = a.iter().position(|d| *d == dest) {
                a.remove(pos);
            }
            drop(a);
            let timeline = if result == CallResult::Confirmed {
                confirmed_timeline()
            } else {
                vec![TimelineEntry {
                    at_ms: 0,
                    event: TimelineEvent::InviteSent,
                }]
            };
            CallReport {
                result,
                dtmf_method: (result == CallResult::Confirmed).then_some(media::DtmfMethod::Inband),
                timeline,
            }
        })
    }

    fn has_capacity(&self) -> bool {
        self.capacity.load(Ordering::SeqCst)
    }
}

/// Runs a dialer over the state's store and handles until the returned token is cancelled.
pub fn spawn_dialer(
    state: &AppState,
    placer: Arc<dyn CallPlacer>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let dialer = Dialer::new(
        &state.config,
        Arc::clone(&state.store),
        placer,
        state.dialer.clone(),
        Arc::clone(&state.metrics),
        state.completions.clone(),
        state.outbox.clone(),
        state.secrets.digits_key(),
    );
    let stop = CancellationToken::new();
    let handle = tokio::spawn(dialer.run(stop.clone(), Duration::from_secs(5)));
    (stop, handle)
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    Status(u16),
    /// 302 to `/elsewhere` (which counts hits, to prove it is never followed).
    Redirect,
    /// Sleeps, then 200.
    Slow(Duration),
}

/// A request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A real HTTP webhook receiver on 127.0.0.1 (an axum server).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub answers: Arc<Mutex<Vec<Answer>>>,
    pub elsewhere_hits: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts on the current runtime. `answers` are used in order; the last one repeats.
    pub async fn start(answers: Vec<Answer>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            answers: Arc::new(Mutex::new(answers)),
            elsewhere_hits: Arc::default(),
        };
        let r = receiver.clone();
        let hits = Arc::clone(&receiver.elsewhere_hits);
        let router = Router::new()
            .route(
                "/hook",
                axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                    let r = r.clone();
                    async move {
                        r.received.lock().unwrap().push(Received { headers, body });
                        let answer = {
                            let mut a = r.answers.lock().unwrap();
                            if a.len() > 1 {
                                a.remove(0)
                            } else {
                                a[0].clone()
                            }
                        };
                        match answer {
                            Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
                            Answer::Redirect => {
                                (StatusCode::FOUND, [("location", "/elsewhere")]).into_response()
                            }
                            Answer::Slow(d) => {
                                tokio::time::sleep(d).await;
                                StatusCode::OK.into_response()
                            }
                        }
                    }
                }),
            )
            .route(
                "/elsewhere",
                axum::routing::any(move || {
                    let hits = Arc::clone(&hits);
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        StatusCode::OK
                    }
                }),
            );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn set_answers(&self, answers: Vec<Answer>) {
        *self.answers.lock().unwrap() = answers;
    }

    /// Waits (bounded) until `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count() >= n
    }
}

/// POSTs `body` and asserts it is refused with `status` and error `code`; returns the reply
/// for further checks of the message.
pub async fn refused(router: &Router, body: &str, status: StatusCode, code: &str) -> Reply {
    let r = post(router, body).await;
    assert_eq!((r.status, r.code()), (status, code), "{body}: {}", r.text);
    r
}
