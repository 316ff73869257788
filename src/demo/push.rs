//! `callverify demo --method push`: the push path end to end on loopback. A simulated device
//! does what the authenticator app at `/app/` does, with the same protocol and keys: it opens
//! the enrolment link, makes a P-256 key pair and a Web Push subscription (its push service is
//! a local endpoint that decrypts what arrives, RFC 8291), registers, receives the sign-in
//! request by Web Push, picks the number shown on the sign-in screen and signs its approval.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::code::api;
use super::{
    API_KEY, DemoError, DemoOutcome, WEBHOOK_SECRET, demo_config, json_body, report_webhook,
};
use crate::config::{ConfigError, Secret, WebhookKey};
use crate::methods::push::{Choice, answer_message, enrol_message};
use crate::service::{Service, ServiceError};
use crate::webpush::random_secret;

/// How long the demo waits for the push and for the webhook.
const WAIT: Duration = Duration::from_secs(20);

/// The simulated phone: its device key, and the keys of its push subscription.
struct Device {
    key: p256::ecdsa::SigningKey,
    ua: p256::SecretKey,
    auth: [u8; 16],
}

impl Device {
    fn new() -> Device {
        Device {
            key: p256::ecdsa::SigningKey::from(&random_secret()),
            ua: random_secret(),
            auth: rand::random(),
        }
    }

    fn sign(&self, message: &str) -> String {
        let s: p256::ecdsa::Signature = self.key.sign(message.as_bytes());
        URL_SAFE_NO_PAD.encode(s.to_bytes())
    }

    fn registration(&self, token: &str, endpoint: &str) -> Value {
        let point = self.key.verifying_key().as_affine().to_encoded_point(false);
        let ua = self.ua.public_key().to_encoded_point(false);
        json!({
            "token": token,
            "public_key": {"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point.as_bytes()[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point.as_bytes()[33..])},
            "subscription": {"endpoint": endpoint, "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(ua.as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth)}},
            "signature": self.sign(&enrol_message(token)),
        })
    }
}

/// Runs the push demo, narrating on `out`.
pub async fn run(prompts: &Path, out: &mut (dyn Write + Send)) -> Result<DemoOutcome, DemoError> {
    let device = Arc::new(Device::new());
    // The device's push service: decrypts each message with the subscription's keys.
    let (push_tx, mut push_rx) = mpsc::unbounded_channel::<Option<Value>>();
    let push_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Bind)?;
    let push_addr = push_listener.local_addr().map_err(DemoError::Bind)?;
    let d = Arc::clone(&device);
    let push_service = axum::Router::new().route(
        "/push/device",
        axum::routing::post(move |body: Bytes| {
            let (d, tx) = (Arc::clone(&d), push_tx.clone());
            async move {
                let opened = crate::webpush::decrypt(&body, &d.ua, &d.auth)
                    .and_then(|plain| serde_json::from_slice(&plain).ok());
                let _ = tx.send(opened);
                axum::http::StatusCode::CREATED
            }
        }),
    );
    let push_server = tokio::spawn(async move { axum::serve(push_listener, push_service).await });

    let (hook_tx, mut hook_rx) = mpsc::unbounded_channel::<Result<Value, String>>();
    let hook_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Bind)?;
    let hook_addr = hook_listener.local_addr().map_err(DemoError::Bind)?;
    let key =
        WebhookKey::parse(&Secret::new(WEBHOOK_SECRET)).map_err(|e| ConfigError::Invalid {
            key: "webhook_secret".into(),
            reason: e.into(),
        })?;
    let receiver = axum::Router::new()
        .route(
            "/hooks/callverify",
            axum::routing::post(super::receive_webhook),
        )
        .with_state(Arc::new((key, hook_tx)));
    let hook_server = tokio::spawn(async move { axum::serve(hook_listener, receiver).await });

    let api_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Bind)?;
    let api_addr = api_listener.local_addr().map_err(DemoError::Bind)?;
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut config = demo_config(api_addr, nowhere, hook_addr, prompts)?;
    // A fresh VAPID key for this run (a real service reads it from configuration), and the
    // local push service allowed.
    config.push.vapid_private_key = Some(Secret::new(
        URL_SAFE_NO_PAD.encode(random_secret().to_bytes()),
    ));
    config.push.vapid_subject = "mailto:demo@example.invalid".into();
    config.push.allow_loopback_endpoints = true;
    config.signin.public_url = format!("http://{api_addr}");
    let placer = crate::runtime::call_placer(&config).map_err(ServiceError::from)?;
    let service = Service::open(config, placer)
        .await?
        .start_on(api_listener)
        .await?;
    writeln!(
        out,
        "callverify demo --method push: the authenticator app, simulated, on loopback"
    )?;
    writeln!(out, "  service       http://{api_addr}  (in-memory store)")?;
    writeln!(
        out,
        "  push service  http://{push_addr}/push/device  (decrypts RFC 8291 messages)"
    )?;
    writeln!(
        out,
        "  webhooks      http://{hook_addr}/hooks/callverify  (checks Standard Webhooks signatures)"
    )?;
    writeln!(out)?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = format!("http://{api_addr}");
    let user = api(
        &http,
        &base,
        "/v1/users",
        json!({"external_id": "alice@example.com", "display_name": "Alice"}),
        out,
    )
    .await?;
    let user_id = user["id"].as_str().unwrap_or_default().to_owned();
    writeln!(out, "← 201 {}", json!({"id": user_id}))?;
    let enrolled = api(
        &http,
        &base,
        &format!("/v1/users/{user_id}/methods"),
        json!({"type": "push", "label": "my phone"}),
        out,
    )
    .await?;
    let link = enrolled["enrol_url"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    writeln!(
        out,
        "← 201 {}",
        json!({"id": enrolled["id"], "status": enrolled["status"], "enrol_url": link})
    )?;
    let token = link.split("#enrol=").nth(1).unwrap_or_default();
    writeln!(
        out,
        "  the device opens the link, makes its key pair and subscribes to its push service"
    )?;
    let endpoint = format!("http://{push_addr}/push/device");
    let registered = device_post(
        &http,
        &base,
        "/app/v1/register",
        &device.registration(token, &endpoint),
    )
    .await?;
    writeln!(out, "→ POST /app/v1/register  ← 201 {registered}")?;
    writeln!(out)?;

    let created = api(
        &http,
        &base,
        "/v1/verifications",
        json!({"user_id": user_id,
               "metadata": {"application": "demo", "location": "loopback"},
               "callback_url": format!("http://{hook_addr}/hooks/callverify")}),
        out,
    )
    .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let number = created["number"].as_u64().unwrap_or_default();
    writeln!(
        out,
        "← 201 {}",
        json!({"id": id, "status": created["status"], "number": number})
    )?;
    writeln!(out, "  the sign-in screen says: choose {number}")?;
    let request = match tokio::time::timeout(WAIT, push_rx.recv()).await {
        Ok(Some(Some(request))) => request,
        _ => {
            return Err(DemoError::Api {
                status: 0,
                body: "no decryptable push message reached the device".into(),
            });
        }
    };
    writeln!(
        out,
        "  push received and decrypted: \"Sign-in request from {}\", {}, choices {}",
        request["client"].as_str().unwrap_or("?"),
        request["metadata"],
        request["choices"]
    )?;
    let pick = request["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .find(|n| *n == number)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| DemoError::Api {
            status: 0,
            body: format!("the device was not offered {number}"),
        })?;
    let (vid, mid, nonce) = (
        request["verification_id"].as_str().unwrap_or_default(),
        request["method_id"].as_str().unwrap_or_default(),
        request["nonce"].as_str().unwrap_or_default(),
    );
    let signature = device.sign(&answer_message(vid, mid, nonce, Choice::Approve(pick)));
    let answered = device_post(
        &http,
        &base,
        "/app/v1/answer",
        &json!({"verification_id": vid, "method_id": mid, "nonce": nonce,
                "answer": "approve", "number": pick, "signature": signature}),
    )
    .await?;
    writeln!(
        out,
        "→ POST /app/v1/answer (approve {pick}, signed by the device key)  ← 200 {answered}"
    )?;
    let verification = json_body(
        http.get(format!("{base}/v1/verifications/{id}"))
            .bearer_auth(API_KEY)
            .send()
            .await?,
    )
    .await?;
    let result = verification["result"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    writeln!(out)?;
    writeln!(
        out,
        "Outcome: {result} (approved: {}), by {}",
        verification["approved"], verification["method"]["type"]
    )?;
    let webhook_verified = report_webhook(
        &mut hook_rx,
        |data| data["result"] == verification["result"],
        false,
        out,
    )
    .await?;
    service.shutdown().await?;
    hook_server.abort();
    push_server.abort();
    Ok(DemoOutcome {
        as_expected: result == "confirmed",
        verification,
        webhook_verified,
    })
}

/// A request of the app (no API key: the device signs instead).
async fn device_post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> Result<Value, DemoError> {
    let resp = http
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status().as_u16();
    let v = json_body(resp).await?;
    if !(200..300).contains(&status) {
        return Err(DemoError::Api {
            status,
            body: v.to_string(),
        });
    }
    Ok(v)
}
