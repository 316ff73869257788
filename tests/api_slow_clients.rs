//! Slow and idle HTTP clients (issue 8 item 5). The issue's outage: with the descriptor limit
//! a systemd service gets (1024), a stranger holding ~1,200 idle and slow connections stopped
//! `serve` answering its API. Here the stranger does exactly that, reconnecting whenever a
//! connection is shed, against the `serve` binary started with `ulimit -n 1024`, while a
//! genuine client keeps creating verifications: every genuine request is answered. And, in
//! process with small timeouts: a slow head, an idle keep-alive and a slow body are cut off.

mod api_support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api_support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Connections the stranger holds (the issue saw the outage at ~1,165).
const STRANGER_CONNECTIONS: usize = 1200;
/// Genuine requests made while the stranger holds them.
const GENUINE_REQUESTS: usize = 20;
/// A genuine request must be answered within this (generous for a loaded CI machine; the
/// figures are printed).
const GENUINE_BOUND: Duration = Duration::from_secs(5);
const METRICS_KEY: &str = "metrics-key-for-the-test";

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The open-files limits of a process, from /proc (soft, hard).
fn nofile_of(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

/// One stranger connection: connect, send half a request head, dribble a byte now and then;
/// connect again whenever the server closes it. Until `stop`.
async fn stranger(
    port: u16,
    slow: bool,
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    connects: Arc<AtomicUsize>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok(mut s)) = tokio::time::timeout(
            Duration::from_secs(5),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        held.fetch_add(1, Ordering::Relaxed);
        connects.fetch_add(1, Ordering::Relaxed);
        if slow {
            let _ = s
                .write_all(b"POST /v1/verifications HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await;
        }
        let mut buf = [0u8; 256];
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break, // closed by the server
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(700)) => {
                    if slow && s.write_all(b"a").await.is_err() {
                        break;
                    }
                }
            }
        }
        held.fetch_sub(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_holding_1200_connections_does_not_stop_genuine_requests() {
    // The stranger needs more descriptors than the service has.
    callverify::fds::raise_nofile().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("callverify.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[api]
listen = "127.0.0.1:{port}"
metrics_key = "{METRICS_KEY}"
[[api.clients]]
name = "auth"
key = "{KEY}"
[sip]
listen = "127.0.0.1:0"
trunk = "sip:127.0.0.1:9"
t1_ms = 20
[store]
url = "sqlite://{db}"
[limits]
countries = ["US"]
per_number_per_hour = 0
per_number_per_day = 0
"#,
            db = dir.path().join("serve.db").display()
        ),
    )
    .unwrap();
    // `ulimit -n` in the shell sets soft and hard: `serve` cannot raise it.
    let child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" serve --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_callverify"))
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200);
        if up {
            break;
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        nofile_of(serve.0.id()),
        ("1024".to_owned(), "1024".to_owned())
    );

    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(AtomicUsize::new(0));
    let mut strangers = Vec::new();
    for i in 0..STRANGER_CONNECTIONS {
        strangers.push(tokio::spawn(stranger(
            port,
            i % 2 == 0,
            Arc::clone(&stop),
            Arc::clone(&held),
            Arc::clone(&connects),
        )));
    }
    // Let the stranger connect all of them (the service sheds the ones it cannot keep, and
    // the stranger connects again at once), then keep at it a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while connects.load(Ordering::Relaxed) < STRANGER_CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "the stranger made only {} connections",
            connects.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "the stranger holds {} connections ({} made so far)",
        held.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed)
    );

    // A genuine client, a fresh connection per request (no pool to hide behind).
    let mut took = Vec::new();
    for n in 0..GENUINE_REQUESTS {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(GENUINE_BOUND)
            .build()
            .unwrap();
        let started = Instant::now();
        let r = client
            .post(format!("{base}/v1/verifications"))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(format!(r#"{{"phone_number":"+1201555{:04}"}}"#, 200 + n))
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "genuine request {n} failed while the stranger holds {} connections: {e:?}",
                    held.load(Ordering::Relaxed)
                )
            });
        assert_eq!(r.status(), 201, "request {n}");
        took.push(started.elapsed().as_millis());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth(METRICS_KEY)
        .timeout(GENUINE_BOUND)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let shed = counter("callverify_http_connections_dropped_total{reason=\"shed\"}");
    let accept_errors =
        counter("callverify_http_connections_dropped_total{reason=\"accept_error\"}");
    let open = counter("callverify_http_connections ");
    let refused = counter("callverify_http_connections_dropped_total{reason=\"refused\"}");
    println!(
        "genuine requests answered in (ms): {took:?}; stranger still holding {} ({} made); service: {open} open, {shed} shed, {refused} refused, {accept_errors} accept errors",
        held.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed)
    );
    assert!(
        shed > 0,
        "the stranger's connections were shed to make room"
    );
    assert_eq!(accept_errors, 0, "the process never ran out of descriptors");
    // Connections being shed still hold their socket a moment: under the descriptor budget,
    // well under the limit of 1024.
    assert!(open < 1024, "{open} open");
    stop.store(true, Ordering::Relaxed);
    for s in strangers {
        s.abort();
    }
    drop(serve);
}

/// A service in this process with small timeouts and four connection slots.
async fn small_service() -> (callverify::service::Running, u16) {
    let mut cfg = config();
    cfg.api.header_read_timeout_secs = 1;
    cfg.api.body_read_timeout_secs = 1;
    cfg.api.max_connections = 4;
    let placer = ScriptedPlacer::new(Script::UntilCancelled);
    let service = callverify::service::Service::with_store(cfg, memory_store().await, placer)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (service.start_on(listener).await.unwrap(), port)
}

/// Reads until the server closes the connection (or `within` passes); what it sent.
async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_heads_idle_keep_alives_and_slow_bodies_are_cut_off() {
    let (running, port) = small_service().await;
    // A head that never ends: closed after the header-read timeout.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "a slow head is cut off"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A kept-alive connection left idle after its response: closed too.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut idle, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that never arrives: the request fails after the body timeout.
    let mut body = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    body.write_all(
        format!(
            "POST /v1/verifications HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"phone"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let answer = until_closed(&mut body, Duration::from_secs(10))
        .await
        .expect("the slow body is cut off");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let (running, port) = small_service().await;
    // Four idle connections take every slot.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A genuine request is served at once, long before any timeout would free a slot.
    let started = Instant::now();
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    // The oldest idle connection was the one closed.
    assert!(
        until_closed(&mut idle[0], Duration::from_millis(500))
            .await
            .is_some(),
        "the oldest idle connection was shed"
    );
    let text = running.state().metrics.render(0);
    assert!(
        text.contains("callverify_http_connections_dropped_total{reason=\"shed\"} 1"),
        "{text}"
    );
    drop(idle);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_busy_with_a_request_is_never_shed() {
    let (running, port) = small_service().await;
    let base = format!("http://127.0.0.1:{port}");
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{base}/v1/verifications"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!(r#"{{"phone_number":"{US_NUMBER}"}}"#))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    // The oldest connection: a long-poll, busy for two seconds.
    let mut poll = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    poll.write_all(
        format!(
            "GET /v1/verifications/{id}?wait=2 HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {KEY}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // An idle one made room; the long-poll is answered when its wait ends.
    let answer = until_closed(&mut poll, Duration::from_secs(10))
        .await
        .expect("the long-poll completes");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&id), "{answer}");
    assert!(
        until_closed(&mut idle[0], Duration::from_millis(500))
            .await
            .is_some(),
        "the oldest idle connection was shed instead"
    );
    drop(idle);
    running.shutdown().await.unwrap();
}
