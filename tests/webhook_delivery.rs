//! Webhook delivery from the outbox to a real HTTP receiver on 127.0.0.1, driven one attempt
//! at a time with injected time (no sleeping for backoff), and signatures checked with the
//! official Standard Webhooks Python library.

mod api_support;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use api_support::*;
use callverify::config::{Config, Secret, WebhookKey};
use callverify::metrics::Metrics;
use callverify::store::{
    Completion, Destination, NewVerification, OutboxState, Store, UnixMs, VerificationId, now_ms,
};
use callverify::webhook::{Delivery, OutboxWorker, sign};
use flow::{CallResult, Mode};

/// A completed verification with a webhook to `url` in the outbox; returns the store, the id
/// and the time the webhook was queued.
async fn one_message(url: &str) -> (Arc<dyn Store>, VerificationId, UnixMs) {
    let store = memory_store().await;
    let id = VerificationId::generate();
    let t0 = now_ms();
    store
        .create(
            NewVerification {
                id: id.clone(),
                client: "auth".into(),
                destination: Destination::Phone(US_NUMBER.into()),
                extension: None,
                mode: Mode::Standard,
                digits_tag: None,
                language: "en".into(),
                callback_url: Some(url.to_owned()),
                metadata: Some(serde_json::json!({"session": "s-1"})),
                created_at: t0,
            },
            None,
            false,
            &[],
        )
        .await
        .unwrap();
    store.claim_next(t0).await.unwrap().unwrap();
    let completion = Completion {
        result: CallResult::Confirmed,
        dtmf_method: Some(media::DtmfMethod::Rfc4733),
        timeline: confirmed_timeline(),
    };
    store.complete(&id, completion, t0).await.unwrap().unwrap();
    (store, id, t0)
}

fn worker(cfg: &Config, store: &Arc<dyn Store>) -> (OutboxWorker, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let w = OutboxWorker::new(cfg, Arc::clone(store), Arc::clone(&metrics)).unwrap();
    (w, metrics)
}

fn key() -> WebhookKey {
    WebhookKey::parse(&Secret::new(SECRET)).unwrap()
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers[name].to_str().unwrap()
}

#[tokio::test]
async fn delivered_webhook_is_signed_and_carries_the_verification() {
    let rx = Receiver::start(vec![Answer::Status(204)]).await;
    let (store, id, _) = one_message(&rx.url()).await;
    let (w, metrics) = worker(&config(), &store);
    let now = now_ms();
    let d = w.try_deliver(now).await.unwrap();
    assert!(
        matches!(d, Delivery::Delivered { status: 204, .. }),
        "{d:?}"
    );
    assert_eq!(w.try_deliver(now).await.unwrap(), Delivery::Empty);
    let got = rx.received.lock().unwrap()[0].clone();
    let (wid, ts, sig) = (
        header(&got, "webhook-id"),
        header(&got, "webhook-timestamp"),
        header(&got, "webhook-signature"),
    );
    assert!(wid.starts_with("msg_"));
    assert_eq!(ts, (now / 1000).to_string());
    assert_eq!(header(&got, "content-type"), "application/json");
    sign::verify(&key(), wid, ts, sig, &got.body, now / 1000).expect("our own verifier accepts it");
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["type"], "verification.completed");
    assert_eq!(body["data"]["id"], id.as_str());
    assert_eq!(body["data"]["result"], "confirmed");
    assert_eq!(body["data"]["approved"], true);
    assert_eq!(body["data"]["dtmf_method"], "rfc4733");
    assert_eq!(body["data"]["metadata"]["session"], "s-1");
    assert_eq!(body["data"]["timeline"].as_array().unwrap().len(), 7);
    let outbox = store.outbox(&id).await.unwrap();
    assert_eq!(outbox[0].state, OutboxState::Delivered);
    assert_eq!(outbox[0].attempts.len(), 1);
    assert_eq!(outbox[0].attempts[0].status_code, Some(204));
    assert!(
        metrics
            .render(0)
            .contains("callverify_webhook_deliveries_total 1")
    );
}

const PYTHON_VERIFY: &str = r#"
import os, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    sys.exit(3)
body = sys.stdin.buffer.read()
headers = {
    "webhook-id": os.environ["WH_ID"],
    "webhook-timestamp": os.environ["WH_TS"],
    "webhook-signature": os.environ["WH_SIG"],
}
try:
    Webhook(os.environ["WH_SECRET"]).verify(body, headers)
except Exception as e:
    print("rejected:", e)
    sys.exit(1)
print("verified")
"#;

/// Runs the official library; `Ok(true)` verified, `Ok(false)` rejected.
fn python_verifies(got: &Received, body: &[u8]) -> bool {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(PYTHON_VERIFY)
        .env("WH_SECRET", SECRET)
        .env("WH_ID", header(got, "webhook-id"))
        .env("WH_TS", header(got, "webhook-timestamp"))
        .env("WH_SIG", header(got, "webhook-signature"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; the webhook test needs Python 3"));
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        Some(3) => panic!(
            "{python} lacks the official Standard Webhooks library: run `python3 -m pip install standardwebhooks`"
        ),
        other => panic!(
            "{python} failed ({other:?}): {}",
            String::from_utf8_lossy(&out.stdout)
        ),
    }
}

#[tokio::test]
async fn the_official_standard_webhooks_library_verifies_our_signature() {
    let rx = Receiver::start(vec![Answer::Status(200)]).await;
    let (store, _, _) = one_message(&rx.url()).await;
    let (w, _) = worker(&config(), &store);
    assert!(matches!(
        w.try_deliver(now_ms()).await.unwrap(),
        Delivery::Delivered { .. }
    ));
    let got = rx.received.lock().unwrap()[0].clone();
    assert!(
        python_verifies(&got, &got.body),
        "standardwebhooks rejected our signature"
    );
    let mut tampered = got.body.to_vec();
    tampered.extend_from_slice(b" ");
    assert!(
        !python_verifies(&got, &tampered),
        "standardwebhooks accepted a tampered body"
    );
}

#[tokio::test]
async fn failures_retry_with_jittered_exponential_backoff_then_deliver() {
    let rx = Receiver::start(vec![
        Answer::Status(500),
        Answer::Status(503),
        Answer::Status(200),
    ])
    .await;
    let (store, id, t0) = one_message(&rx.url()).await;
    let cfg = config();
    let (w, metrics) = worker(&cfg, &store);
    let initial = cfg.webhook.initial_backoff_secs as i64 * 1000;

    let Delivery::Retrying {
        next_attempt_at: n1,
        failure,
        ..
    } = w.try_deliver(t0).await.unwrap()
    else {
        panic!("first attempt should be retried");
    };
    assert_eq!(failure, "HTTP 500");
    assert!(
        (t0 + initial * 8 / 10..=t0 + initial * 12 / 10).contains(&n1),
        "{}",
        n1 - t0
    );
    // Not due yet: nothing happens, no request.
    assert_eq!(w.try_deliver(n1 - 1).await.unwrap(), Delivery::Empty);
    assert_eq!(rx.count(), 1);

    let Delivery::Retrying {
        next_attempt_at: n2,
        ..
    } = w.try_deliver(n1).await.unwrap()
    else {
        panic!("second attempt should be retried");
    };
    let doubled = initial * 2;
    assert!(
        (n1 + doubled * 8 / 10..=n1 + doubled * 12 / 10).contains(&n2),
        "{}",
        n2 - n1
    );
    assert!(matches!(
        w.try_deliver(n2).await.unwrap(),
        Delivery::Delivered { status: 200, .. }
    ));
    assert_eq!(
        w.try_deliver(n2 + 86_400_000).await.unwrap(),
        Delivery::Empty
    );

    // Every attempt recorded; the same id and body each time.
    let entry = &store.outbox(&id).await.unwrap()[0];
    assert_eq!(entry.state, OutboxState::Delivered);
    let codes: Vec<_> = entry.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, vec![Some(500), Some(503), Some(200)]);
    assert_eq!(
        entry.attempts.iter().map(|a| a.at).collect::<Vec<_>>(),
        vec![t0, n1, n2]
    );
    let got = rx.received.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| header(r, "webhook-id") == entry.id && r.body == got[0].body)
    );
    let text = metrics.render(0);
    assert!(text.contains("callverify_webhook_failures_total 2"));
    assert!(text.contains("callverify_webhook_deliveries_total 1"));
}

#[tokio::test]
async fn gone_410_stops_retries() {
    let rx = Receiver::start(vec![Answer::Status(410)]).await;
    let (store, id, t0) = one_message(&rx.url()).await;
    let (w, _) = worker(&config(), &store);
    assert!(matches!(
        w.try_deliver(t0).await.unwrap(),
        Delivery::Gone { .. }
    ));
    assert_eq!(
        w.try_deliver(t0 + 3_600_000).await.unwrap(),
        Delivery::Empty
    );
    let entry = &store.outbox(&id).await.unwrap()[0];
    assert_eq!(entry.state, OutboxState::Gone);
    assert_eq!(entry.attempts.len(), 1);
    assert_eq!(rx.count(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let rx = Receiver::start(vec![Answer::Redirect]).await;
    let (store, id, t0) = one_message(&rx.url()).await;
    let (w, _) = worker(&config(), &store);
    let d = w.try_deliver(t0).await.unwrap();
    assert!(
        matches!(&d, Delivery::Retrying { failure, .. } if failure == "HTTP 302"),
        "{d:?}"
    );
    assert_eq!(
        rx.elsewhere_hits.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    assert_eq!(
        store.outbox(&id).await.unwrap()[0].attempts[0].status_code,
        Some(302)
    );
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let rx = Receiver::start(vec![Answer::Slow(Duration::from_secs(5))]).await;
    let (store, id, t0) = one_message(&rx.url()).await;
    let cfg = config_with("[webhook]\ntimeout_secs = 1\n");
    let (w, _) = worker(&cfg, &store);
    let started = std::time::Instant::now();
    let d = w.try_deliver(t0).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(
        matches!(&d, Delivery::Retrying { failure, .. } if failure == "timeout"),
        "{d:?}"
    );
    let attempt = &store.outbox(&id).await.unwrap()[0].attempts[0];
    assert_eq!(
        (attempt.status_code, attempt.error.as_deref()),
        (None, Some("timeout"))
    );
    assert!(attempt.duration_ms >= 900);
}

#[tokio::test]
async fn retries_stop_after_the_retry_window() {
    let rx = Receiver::start(vec![Answer::Status(500)]).await;
    let (store, id, t0) = one_message(&rx.url()).await;
    let (w, metrics) = worker(&config(), &store);
    let almost_a_day = t0 + 24 * 3_600_000 - 1_000;
    assert!(matches!(
        w.try_deliver(almost_a_day).await.unwrap(),
        Delivery::GaveUp { .. }
    ));
    assert_eq!(
        w.try_deliver(almost_a_day + 86_400_000).await.unwrap(),
        Delivery::Empty
    );
    assert_eq!(
        store.outbox(&id).await.unwrap()[0].state,
        OutboxState::GaveUp
    );
    assert!(
        metrics
            .render(0)
            .contains("callverify_webhooks_abandoned_total{reason=\"gave_up\"} 1")
    );
}

#[tokio::test]
async fn the_ssrf_guard_refuses_private_targets_at_delivery() {
    let rx = Receiver::start(vec![Answer::Status(200)]).await;
    let guarded = config_with("[webhook]\nallow_private_networks = false\n");
    // A literal loopback address.
    let (store, _, t0) = one_message(&rx.url()).await;
    let (w, _) = worker(&guarded, &store);
    let d = w.try_deliver(t0).await.unwrap();
    assert!(
        matches!(&d, Delivery::Retrying { failure, .. } if failure.contains("not a public address")),
        "{d:?}"
    );
    // A name that resolves to loopback.
    let (store, _, t0) = one_message(&format!("http://localhost:{}/hook", rx.addr.port())).await;
    let (w, _) = worker(&guarded, &store);
    let d = w.try_deliver(t0).await.unwrap();
    assert!(
        matches!(&d, Delivery::Retrying { failure, .. } if failure.contains("no public address")),
        "{d:?}"
    );
    assert_eq!(rx.count(), 0, "nothing may reach a private address");
}
