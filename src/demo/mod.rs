//! `callverify demo`: the whole product on loopback with no trunk and no setup.
//!
//! Starts the service (in-memory store) with its SIP trunk pointed at a simulated phone
//! ([`phone`]), and a local webhook receiver that checks signatures; places one verification
//! through the HTTP API as an auth server would, and narrates the request, the live status,
//! the outcome, the timeline and the verified webhook.

pub mod code;
pub mod phone;
pub mod push;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError, Secret, WebhookKey};
use crate::service::{Service, ServiceError};
use crate::webhook::sign;
pub use phone::PhoneMode;

/// The demo client's API key and webhook secret (loopback only, printed for the curious).
pub(crate) const API_KEY: &str = "cv_demo_key_loopback_only";
pub(crate) const WEBHOOK_SECRET: &str = "whsec_ZGVtby1zZWNyZXQtb25seS1mb3ItbG9vcGJhY2s=";
/// The number the demo "calls": a valid US number (the simulated phone answers any).
const PHONE_NUMBER: &str = "+14255550123";
/// How long the demo waits for the outcome and then for the webhook.
const OUTCOME_WAIT: Duration = Duration::from_secs(90);
const WEBHOOK_WAIT: Duration = Duration::from_secs(20);
/// How often the demo looks at the verification's status.
const STATUS_POLL: Duration = Duration::from_millis(200);

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot bind a loopback socket: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot prepare the prompts: {0}")]
    Prompts(#[source] std::io::Error),
    #[error("the demo configuration is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("the HTTP API did not answer: {0}")]
    Http(#[from] reqwest::Error),
    #[error("unexpected API answer {status}: {body}")]
    Api { status: u16, body: String },
    #[error("no outcome after {0:?}")]
    NoOutcome(Duration),
    #[error("cannot write to the terminal: {0}")]
    Output(#[from] std::io::Error),
}

/// What the demo saw.
#[derive(Debug)]
pub struct DemoOutcome {
    /// The verification as `GET /v1/verifications/{id}` returned it when completed.
    pub verification: Value,
    /// Whether a webhook arrived with a valid signature and the same result.
    pub webhook_verified: bool,
    /// Whether the result is the one the simulated phone's behaviour should produce.
    pub as_expected: bool,
}

/// The result each phone behaviour leads to.
pub fn expected_result(mode: PhoneMode) -> &'static str {
    match mode {
        PhoneMode::Confirm => "confirmed",
        PhoneMode::Fraud => "fraud_reported",
        PhoneMode::Silent => "no_input",
        PhoneMode::Busy => "busy",
    }
}

/// Runs the demo, narrating on `out`.
pub async fn run(
    mode: PhoneMode,
    prompts: &Path,
    out: &mut (dyn Write + Send),
) -> Result<DemoOutcome, DemoError> {
    let (log_tx, mut log_rx) = mpsc::unbounded_channel::<String>();
    let phone = phone::Phone::start(mode, log_tx.clone())
        .await
        .map_err(DemoError::Bind)?;

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
        .route("/hooks/callverify", axum::routing::post(receive_webhook))
        .with_state(Arc::new((key, hook_tx)));
    let hook_server = tokio::spawn(async move { axum::serve(hook_listener, receiver).await });

    let api_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Bind)?;
    let api_addr = api_listener.local_addr().map_err(DemoError::Bind)?;
    let config = demo_config(api_addr, phone.sip_addr, hook_addr, prompts)?;
    let placer = crate::runtime::call_placer(&config).map_err(ServiceError::from)?;
    let service = Service::open(config, placer)
        .await?
        .start_on(api_listener)
        .await?;

    writeln!(
        out,
        "callverify demo: everything on loopback, no trunk needed"
    )?;
    writeln!(out, "  service   http://{api_addr}  (in-memory store)")?;
    writeln!(
        out,
        "  trunk     sip:{}  (a simulated phone that will {})",
        phone.sip_addr,
        describe(mode)
    )?;
    writeln!(
        out,
        "  webhooks  http://{hook_addr}/hooks/callverify  (checks Standard Webhooks signatures)"
    )?;
    writeln!(out)?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()?;
    let base = format!("http://{api_addr}");
    let request = json!({
        "phone_number": PHONE_NUMBER,
        "mode": "standard",
        "language": "en",
        "callback_url": format!("http://{hook_addr}/hooks/callverify"),
        "metadata": {"user": "alice@example.com", "login_attempt": "demo"},
    });
    writeln!(out, "→ POST /v1/verifications")?;
    writeln!(out, "  {request}")?;
    let created = http
        .post(format!("{base}/v1/verifications"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await?;
    let status = created.status().as_u16();
    let body = json_body(created).await?;
    if status != 201 {
        return Err(DemoError::Api {
            status,
            body: body.to_string(),
        });
    }
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    writeln!(out, "← 201 {}", json!({"id": id, "status": body["status"]}))?;
    writeln!(out)?;

    // Follow the status as an auth server's login page would, polling a few times a second
    // (so ringing and answering show as they happen), while telling what the phone does.
    let deadline = tokio::time::Instant::now() + OUTCOME_WAIT;
    let mut last_status = String::new();
    let verification = loop {
        while let Ok(line) = log_rx.try_recv() {
            writeln!(out, "  {line}")?;
        }
        let poll = http
            .get(format!("{base}/v1/verifications/{id}"))
            .bearer_auth(API_KEY)
            .send();
        let v = json_body(poll.await?).await?;
        let status = v["status"].as_str().unwrap_or_default().to_owned();
        if status != last_status {
            writeln!(out, "  status: {status}")?;
            last_status = status.clone();
        }
        if status == "completed" {
            break v;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(DemoError::NoOutcome(OUTCOME_WAIT));
        }
        tokio::time::sleep(STATUS_POLL).await;
    };
    // The phone's last words (the hang-up) arrive just after the outcome.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(line) = log_rx.try_recv() {
        writeln!(out, "  {line}")?;
    }

    let result = verification["result"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    writeln!(out)?;
    writeln!(
        out,
        "Outcome: {result} (approved: {}), DTMF by {}",
        verification["approved"],
        verification["dtmf_method"].as_str().unwrap_or("-")
    )?;
    writeln!(out, "Timeline:")?;
    for entry in verification["timeline"].as_array().into_iter().flatten() {
        let at = entry["at_ms"].as_u64().unwrap_or_default();
        let mut rest = entry.as_object().cloned().unwrap_or_default();
        rest.remove("at_ms");
        let event = rest
            .remove("event")
            .and_then(|e| e.as_str().map(str::to_owned))
            .unwrap_or_default();
        let details = if rest.is_empty() {
            String::new()
        } else {
            format!(" {}", Value::Object(rest))
        };
        writeln!(out, "  {at:>6} ms  {event}{details}")?;
    }

    let webhook_verified = report_webhook(
        &mut hook_rx,
        |data| data["result"] == verification["result"] && data["id"] == verification["id"],
        false,
        out,
    )
    .await?;

    let as_expected = result == expected_result(mode);
    service.shutdown().await?;
    hook_server.abort();
    drop(phone);
    Ok(DemoOutcome {
        verification,
        webhook_verified,
        as_expected,
    })
}

/// A response body as JSON (the API always answers JSON; anything else is reported).
pub(crate) async fn json_body(response: reqwest::Response) -> Result<Value, DemoError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|_| DemoError::Api {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn describe(mode: PhoneMode) -> &'static str {
    match mode {
        PhoneMode::Confirm => "answer and press # when it hears the prompt",
        PhoneMode::Fraud => "answer and press 0# (report fraud)",
        PhoneMode::Silent => "answer and press nothing",
        PhoneMode::Busy => "be busy",
    }
}

/// The webhook receiver's state: the client's key, and where verified payloads (or why one
/// was refused) go.
pub(crate) type Receiver = (WebhookKey, mpsc::UnboundedSender<Result<Value, String>>);

/// Checks each webhook like an auth server must: Standard Webhooks signature over
/// `{id}.{timestamp}.{body}` with the client's secret.
pub(crate) async fn receive_webhook(
    State(state): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let (key, tx) = &*state;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let verdict = sign::verify(
        key,
        &header(sign::HEADER_ID),
        &header(sign::HEADER_TIMESTAMP),
        &header(sign::HEADER_SIGNATURE),
        &body,
        now,
    )
    .map_err(|e| e.to_string())
    .and_then(|()| {
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("body is not JSON: {e}"))
    });
    let accepted = verdict.is_ok();
    let _ = tx.send(verdict);
    if accepted {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// The service configuration of the demo: loopback everywhere, the trunk is the phone.
pub(crate) fn demo_config(
    api: SocketAddr,
    phone: SocketAddr,
    hooks: SocketAddr,
    prompts: &Path,
) -> Result<Config, ConfigError> {
    let text = format!(
        r#"
[api]
listen = "{api}"

[[api.clients]]
name = "demo-auth-server"
key = "{API_KEY}"
webhook_secret = "{WEBHOOK_SECRET}"
callback_hosts = ["{hooks}"]

[sip]
listen = "127.0.0.1:0"
trunk = "sip:{phone};transport=udp"
caller_id = "+14255550100"
channels = 4

[media]
rtp_ports = "39000-39199"
prompts = "{prompts}"
languages = ["en"]

[call]
response_timeout_secs = 6

[store]
url = "sqlite::memory:"

[limits]
countries = ["US"]

[webhook]
allow_http = true
allow_private_networks = true
initial_backoff_secs = 1
"#,
        prompts = prompts.display()
    );
    Config::from_toml(&text, &PathBuf::from("<demo>"), std::iter::empty())
}

/// Waits up to [`WEBHOOK_WAIT`] for the demo's one webhook and says what came: true when it
/// arrived with a valid signature and `agrees` with what the API answered. `by_method` adds
/// the method the webhook names to the line.
async fn report_webhook(
    hooks: &mut mpsc::UnboundedReceiver<Result<Value, String>>,
    agrees: impl Fn(&Value) -> bool,
    by_method: bool,
    out: &mut (dyn Write + Send),
) -> std::io::Result<bool> {
    let webhook = tokio::time::timeout(WEBHOOK_WAIT, hooks.recv())
        .await
        .ok()
        .flatten();
    match webhook {
        Some(Ok(payload)) => {
            let same = agrees(&payload["data"]);
            let method = if by_method {
                format!(" by {}", payload["data"]["method"]["type"])
            } else {
                String::new()
            };
            writeln!(
                out,
                "Webhook: {} for {} with result {}{method}: signature verified{}",
                payload["type"].as_str().unwrap_or("?"),
                payload["data"]["id"].as_str().unwrap_or("?"),
                payload["data"]["result"],
                if same {
                    ""
                } else {
                    ", BUT IT DIFFERS FROM THE API"
                }
            )?;
            Ok(same)
        }
        Some(Err(why)) => {
            writeln!(out, "Webhook: REJECTED: {why}")?;
            Ok(false)
        }
        None => {
            writeln!(out, "Webhook: none arrived within {WEBHOOK_WAIT:?}")?;
            Ok(false)
        }
    }
}
