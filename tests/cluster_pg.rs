//! Several instances on one real PostgreSQL (tests/pg_support): three `serve` processes
//! calling sipp callees survive a SIGKILL of one of them; the same request sent to two
//! instances at once makes one verification; a long-poll and a DELETE on one instance reach
//! the call running on another; webhooks survive a receiver outage and a database restart.
//!
//! Ports: PostgreSQL 35432-35499 (pg_support), SIP 33000-33099, RTP 53000-53999.

mod api_support;
mod common_peers;
mod pg_support;

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_support::*;
use axum::http::{Method, StatusCode};
use callverify::api::app;
use callverify::config::{Config, Secret};
use callverify::service::{Running, Service};
use common_peers::{Peer, Work};
use flow::CallResult;
use pg_support::Pg;

/// Scaled-down cluster timing: beat every second, dead after 4 s of silence.
const CLUSTER: &str = "[cluster]\nheartbeat_secs = 1\ndead_after_secs = 4\n";

const PYTHON_VERIFY_ALL: &str = r#"
import json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    sys.exit(3)
wh = Webhook(sys.argv[1])
n = bad = 0
for line in open(sys.argv[2]):
    r = json.loads(line)
    n += 1
    try:
        wh.verify(r["body"].encode(), {"webhook-id": r["id"], "webhook-timestamp": r["ts"],
                                       "webhook-signature": r["sig"]})
    except Exception as e:
        bad += 1
        print("rejected", r["id"], e)
print(n, "checked,", bad, "rejected")
sys.exit(1 if bad or not n else 0)
"#;

/// One webhook request as received.
#[derive(Clone, Debug)]
struct Hook {
    id: String,
    ts: String,
    sig: String,
    body: String,
}

impl Hook {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

fn hooks(received: &[Received]) -> Vec<Hook> {
    received
        .iter()
        .map(|r| Hook {
            id: r.headers["webhook-id"].to_str().unwrap().to_owned(),
            ts: r.headers["webhook-timestamp"].to_str().unwrap().to_owned(),
            sig: r.headers["webhook-signature"].to_str().unwrap().to_owned(),
            body: String::from_utf8(r.body.to_vec()).unwrap(),
        })
        .collect()
}

/// Every webhook verified with the official Standard Webhooks library, in one run; no
/// `webhook-id` with two different bodies; the verification ids they carry.
fn check_webhooks(hooks: &[Hook], dir: &Path) -> HashMap<String, serde_json::Value> {
    let file = dir.join("webhooks.jsonl");
    let mut out = std::fs::File::create(&file).unwrap();
    for h in hooks {
        let line = serde_json::json!({"id": h.id, "ts": h.ts, "sig": h.sig, "body": h.body});
        writeln!(out, "{line}").unwrap();
    }
    drop(out);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let run = Command::new(&python)
        .arg("-c")
        .arg(PYTHON_VERIFY_ALL)
        .arg(SECRET)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let said = String::from_utf8_lossy(&run.stdout);
    match run.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "{python} lacks the official Standard Webhooks library (scripts/test installs it)"
        ),
        other => panic!("standardwebhooks rejected our webhooks ({other:?}): {said}"),
    }
    let mut bodies: HashMap<&str, HashSet<&str>> = HashMap::new();
    for h in hooks {
        bodies.entry(&h.id).or_default().insert(&h.body);
    }
    for (id, b) in &bodies {
        assert_eq!(
            b.len(),
            1,
            "webhook-id {id} delivered with {} bodies",
            b.len()
        );
    }
    let mut by_verification = HashMap::new();
    for h in hooks {
        let v = h.json();
        assert_eq!(v["data"]["status"], "completed", "{}", h.body);
        by_verification.insert(
            v["data"]["id"].as_str().unwrap().to_owned(),
            v["data"].clone(),
        );
    }
    by_verification
}

// --- three `serve` processes and a SIGKILL -------------------------------------------------

/// A `callverify serve` child with its log, killed on drop.
struct Instance {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Instance {
    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(4000)..].iter().collect()
    }

    fn kill9(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_instance(work: &Work, n: u16, url: &str) -> Instance {
    let port = free_port();
    let prompts = work.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    let config = work.path().join(format!("instance{n}.toml"));
    let rtp = 53000 + n * 200;
    std::fs::write(
        &config,
        format!(
            r#"
[api]
listen = "127.0.0.1:{port}"
max_wait_secs = 30
[[api.clients]]
name = "auth"
key = "{KEY}"
webhook_secret = "{SECRET}"
callback_hosts = ["127.0.0.1"]
rate_per_minute = 1000
[sip]
listen = "127.0.0.1:{sip}"
allow_sip_uris = true
channels = 4
[media]
rtp_ports = "{rtp}-{rtp_end}"
prompts = "{prompts}"
[call]
ring_timeout_secs = 20
[limits]
countries = ["US"]
per_number_per_hour = 0
[webhook]
allow_http = true
allow_private_networks = true
initial_backoff_secs = 1
max_backoff_secs = 2
{CLUSTER}"#,
            sip = 33000 + n,
            rtp_end = rtp + 199,
            prompts = prompts.display(),
        ),
    )
    .unwrap();
    let log = work.path().join(format!("instance{n}.out"));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(["serve", "--config"])
        .arg(&config)
        // The URL (a secret) from the environment, as operators are told to give it.
        .env("CALLVERIFY_STORE__URL", url)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let instance = Instance {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", instance.base)).send().await
            && r.status() == 200
        {
            let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(body["store"], "reachable");
            assert!(body["instance"].as_str().unwrap().starts_with("ins_"));
            return instance;
        }
        assert!(
            Instant::now() < deadline,
            "instance {n} did not come up: {}",
            instance.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn json(r: reqwest::Response) -> (u16, serde_json::Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn calls_in_flight(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("callverify_calls_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_one_database_survive_a_sigkill() {
    const N: usize = 100;
    let pg = Pg::start();
    let url = pg.database().await;
    let work = Work::new();
    // A sipp callee serving every call: answers, presses # (RFC 4733), waits for our BYE.
    let keys = "  <nop><action><exec play_pcap_audio=\"/usr/share/sip-tester/dtmf_2833_pound.pcap\"/></action></nop>\n  <pause milliseconds=\"400\"/>\n";
    let scenario = work.scenario("uas_keys_rfc4733.xml", &[("KEYS", keys)]);
    let mut sipp_cmd = Command::new("sipp");
    sipp_cmd
        .arg("-sf")
        .arg(&scenario)
        .args(["-i", "127.0.0.1", "-p", "33050", "-mp", "53900"])
        .args(["-m", "1000", "-nostdin", "-trace_err", "-pause_msg_ign"]);
    let mut sipp = Peer::spawn("sipp", work.path(), &mut sipp_cmd);
    sipp.wait_udp(33050);
    let receiver = Receiver::start(vec![Answer::Status(200)]).await;

    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(start_instance(&work, n, &url).await);
    }
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for i in 0..N {
        let base = &instances[i % 3].base;
        let body = format!(
            r#"{{"phone_number":"sip:u{i}@127.0.0.1:33050","callback_url":"{}"}}"#,
            receiver.url()
        );
        let (status, v) = json(
            http.post(format!("{base}/v1/verifications"))
                .bearer_auth(KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }

    // Kill instance 1 while it has calls up and others are done.
    let victim = 1;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = http
            .get(format!("{}/metrics", instances[victim].base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if calls_in_flight(&metrics) >= 2 && receiver.count() >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance {victim} never had calls up: {}",
            instances[victim].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    instances[victim].kill9();
    let killed_at = Instant::now();

    // Every verification completes, asked of the survivors.
    let survivors = [&instances[0].base, &instances[2].base];
    let mut results: HashMap<String, serde_json::Value> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut lost_seen_at = None;
    while results.len() < N {
        for (k, id) in ids.iter().enumerate() {
            if results.contains_key(id) {
                continue;
            }
            let base = survivors[k % 2];
            let (status, v) = json(
                http.get(format!("{base}/v1/verifications/{id}?wait=5"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 200, "{v}");
            if v["status"] == "completed" {
                if v["result"] == "failed" {
                    lost_seen_at.get_or_insert_with(Instant::now);
                }
                results.insert(id.clone(), v);
            }
            assert!(
                Instant::now() < deadline,
                "{} of {N} completed; sipp: {}\n{}\n{}",
                results.len(),
                sipp.log_text(),
                instances[0].log_text(),
                instances[2].log_text()
            );
        }
    }
    let lost: Vec<&serde_json::Value> = results
        .values()
        .filter(|v| v["result"] == "failed")
        .collect();
    assert!(
        !lost.is_empty(),
        "the killed instance had calls up: some must be failed"
    );
    for v in &lost {
        let events: Vec<&str> = v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert!(events.contains(&"instance_lost"), "{v:#}");
        assert_eq!(events.last(), Some(&"outcome"), "{v:#}");
    }
    for v in results.values().filter(|v| v["result"] != "failed") {
        assert_eq!(v["result"], "confirmed", "{v:#}");
        assert_eq!(v["dtmf_method"], "rfc4733", "{v:#}");
    }
    let takeover = lost_seen_at.unwrap().duration_since(killed_at);
    eprintln!(
        "{N} verifications: {} confirmed, {} failed (instance_lost), first seen failed {takeover:?} after the kill",
        N - lost.len(),
        lost.len()
    );
    assert!(
        takeover < Duration::from_secs(30),
        "take-over after {takeover:?}"
    );

    // Every webhook arrives, verified by the official library, one body per webhook-id, and
    // says what the API says.
    let deadline = Instant::now() + Duration::from_secs(120);
    let delivered = loop {
        let all = hooks(&receiver.received.lock().unwrap());
        let by_verification: HashSet<String> = all
            .iter()
            .map(|h| h.json()["data"]["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.iter().all(|id| by_verification.contains(id)) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} webhooks: {}",
            by_verification.len(),
            instances[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let data = check_webhooks(&delivered, work.path());
    for id in &ids {
        assert_eq!(data[id]["result"], results[id]["result"], "{id}");
    }
    drop(sipp);
}

// --- in-process instances ------------------------------------------------------------------

fn instance_config(url: &str, extra: &str) -> Config {
    let mut cfg = config_with(&format!("{CLUSTER}{extra}"));
    cfg.store.url = Secret::new(url);
    cfg.store.timeout_secs = 2;
    // Calls still held by a scripted phone at the end are hung up at once.
    cfg.api.shutdown_grace_secs = 0;
    cfg
}

async fn start(config: Config, placer: Arc<ScriptedPlacer>) -> (Running, axum::Router) {
    let service = Service::open(config, placer).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = service.start_on(listener).await.unwrap();
    let router = app(running.state().clone());
    (running, router)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_request_on_two_instances_at_once_creates_one_verification() {
    let url = Pg::shared().database().await;
    let (a, ra) = start(
        instance_config(&url, ""),
        ScriptedPlacer::new(Script::Held(CallResult::Confirmed)),
    )
    .await;
    let (b, rb) = start(
        instance_config(&url, ""),
        ScriptedPlacer::new(Script::Held(CallResult::Confirmed)),
    )
    .await;
    let mut created = HashSet::new();
    for round in 0..10 {
        let key = format!("key-{round}");
        let body = format!(r#"{{"phone_number":"+1201555{round:04}"}}"#);
        let headers = [("idempotency-key", key.as_str())];
        let (x, y) = tokio::join!(
            send(
                &ra,
                Method::POST,
                "/v1/verifications",
                Some(KEY),
                &headers,
                Some(&body)
            ),
            send(
                &rb,
                Method::POST,
                "/v1/verifications",
                Some(KEY),
                &headers,
                Some(&body)
            ),
        );
        let mut statuses = [x.status, y.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::CREATED],
            "{}\n{}",
            x.text,
            y.text
        );
        assert_eq!(x.json["id"], y.json["id"]);
        created.insert(x.json["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(created.len(), 10);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows: i64 = client
        .query_one("SELECT COUNT(*) FROM verifications", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 10,
        "one verification per request, whichever instance got it"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_and_a_delete_reach_the_call_on_another_instance() {
    let url = Pg::shared().database().await;
    let pa = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let pb = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let (a, ra) = start(instance_config(&url, ""), Arc::clone(&pa)).await;
    let (b, rb) = start(instance_config(&url, ""), Arc::clone(&pb)).await;
    let routers = [&ra, &rb];
    let placers = [&pa, &pb];

    // Which instance dialled it, and the other one.
    async fn owner(placers: [&Arc<ScriptedPlacer>; 2], id: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, p) in placers.iter().enumerate() {
                if p.placed.lock().unwrap().iter().any(|c| c.id.as_str() == id) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "{id} was never dialled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let id = post(&ra, r#"{"phone_number":"+12015550101"}"#).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = owner(placers, &id).await;
    let other = routers[1 - o].clone();
    let poll = {
        let id = id.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = get(&other, &format!("{id}?wait=30")).await;
            (r, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    placers[o].release.add_permits(1);
    let (r, waited) = poll.await.unwrap();
    assert_eq!(r.json["result"], "confirmed", "{}", r.text);
    assert!(
        waited < Duration::from_secs(20),
        "the long-poll on the other instance waited {waited:?} of its 30 s"
    );

    let id = post(&rb, r#"{"phone_number":"+12015550102"}"#).await.json["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = owner(placers, &id).await;
    let r = send(
        routers[1 - o],
        Method::DELETE,
        &format!("/v1/verifications/{id}"),
        Some(KEY),
        &[],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let r = get(routers[1 - o], &format!("{id}?wait=20")).await;
    assert_eq!(r.json["result"], "cancelled", "{}", r.text);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A webhook receiver on a fixed port that can be started late.
#[derive(Clone, Default)]
struct LateReceiver {
    received: Arc<Mutex<Vec<Received>>>,
}

impl LateReceiver {
    async fn listen(&self, port: u16) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let received = Arc::clone(&self.received);
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let received = Arc::clone(&received);
                    async move {
                        received.lock().unwrap().push(Received { headers, body });
                        StatusCode::NO_CONTENT
                    }
                },
            ),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_survive_a_receiver_outage_and_a_postgres_restart() {
    const N: usize = 20;
    let pg = Pg::start();
    let url = pg.database().await;
    let extra = "[webhook]\ninitial_backoff_secs = 1\nmax_backoff_secs = 2\n";
    let pa = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let pb = ScriptedPlacer::new(Script::Held(CallResult::Confirmed));
    let (a, ra) = start(instance_config(&url, extra), Arc::clone(&pa)).await;
    let (b, rb) = start(instance_config(&url, extra), Arc::clone(&pb)).await;
    // The receiver is down (nothing listens on its port) until the end.
    let port = free_port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let mut ids = Vec::new();
    for i in 0..N {
        let router = if i % 2 == 0 { &ra } else { &rb };
        let r = post(
            router,
            &format!(r#"{{"phone_number":"+1201555{i:04}","callback_url":"{hook}"}}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        ids.push(r.json["id"].as_str().unwrap().to_owned());
    }
    // Every call is up (ten channels per instance); some end now, and their webhooks fail
    // (connection refused) ...
    let deadline = Instant::now() + Duration::from_secs(20);
    while pa.placed() + pb.placed() < N {
        assert!(Instant::now() < deadline, "calls never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pa.release.add_permits(3);
    pb.release.add_permits(3);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // ... then the database goes away, and the other calls end while it is away.
    pg.stop();
    let r = send(&ra, Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{}",
        r.text
    );
    let r = post(&rb, r#"{"phone_number":"+12015559999"}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    pa.release.add_permits(N);
    pb.release.add_permits(N);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again();
    pg.wait_ready().await;

    // Every verification completes: no outcome was lost to the outage.
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let r = get(&ra, &format!("{id}?wait=5")).await;
            if r.json["status"] == "completed" {
                assert_eq!(r.json["result"], "confirmed", "{}", r.text);
                break;
            }
            assert!(Instant::now() < deadline, "{id}: {}", r.text);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let r = send(&rb, Method::GET, "/healthz", None, &[], None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = post(&rb, r#"{"phone_number":"+12015559999"}"#).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // The receiver comes back: every webhook arrives.
    let receiver = LateReceiver::default();
    receiver.listen(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let all = hooks(&receiver.received.lock().unwrap());
        let seen: HashSet<String> = all
            .iter()
            .map(|h| h.json()["data"]["id"].as_str().unwrap().to_owned())
            .collect();
        if ids.iter().all(|id| seen.contains(id)) {
            break all;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {N} webhooks after the receiver came back",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = check_webhooks(&delivered, dir.path());
    for id in &ids {
        assert_eq!(data[id]["result"], "confirmed");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
