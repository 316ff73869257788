//! `callverify demo --method code`: the app-code path end to end on loopback. Enrols an
//! authenticator for a user through the API, prints the `otpauth://` URI an app would scan,
//! computes the codes from it as an authenticator app does (RFC 6238), confirms the
//! enrolment, signs in with a code, and checks the signed webhook.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::{
    API_KEY, DemoError, DemoOutcome, WEBHOOK_SECRET, demo_config, json_body, report_webhook,
};
use crate::config::{ConfigError, Secret, WebhookKey};
use crate::methods::totp::{STEP_SECS, Totp, step_at};
use crate::service::{Service, ServiceError};

/// An authenticator app: the secret read from an `otpauth://totp/…` URI.
struct Authenticator {
    totp: Totp,
}

impl Authenticator {
    fn scan(uri: &str) -> Option<Authenticator> {
        let url = url::Url::parse(uri).ok()?;
        if url.scheme() != "otpauth" || url.host_str() != Some("totp") {
            return None;
        }
        let b32 = url
            .query_pairs()
            .find(|(k, _)| k == "secret")
            .map(|(_, v)| v.into_owned())?;
        let secret = totp_rs::Secret::Encoded(b32).to_bytes().ok()?;
        Some(Authenticator {
            totp: Totp::new(secret, "", ""),
        })
    }

    /// The code shown at `unix_secs`.
    fn code_at(&self, unix_secs: u64) -> String {
        self.totp.code_at_step(step_at(unix_secs))
    }
}

pub(super) async fn api(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: Value,
    out: &mut (dyn Write + Send),
) -> Result<Value, DemoError> {
    writeln!(out, "→ POST {path}")?;
    writeln!(out, "  {body}")?;
    let resp = http
        .post(format!("{base}{path}"))
        .bearer_auth(API_KEY)
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

/// Runs the app-code demo, narrating on `out`.
pub async fn run(prompts: &Path, out: &mut (dyn Write + Send)) -> Result<DemoOutcome, DemoError> {
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
    // No call is placed: the trunk is a discard address nobody dials.
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut config = demo_config(api_addr, nowhere, hook_addr, prompts)?;
    // A fresh sealing key for this in-memory run (a real service reads it from configuration).
    let seal = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    config.methods.seal_key = Some(Secret::new(seal));
    let placer = crate::runtime::call_placer(&config).map_err(ServiceError::from)?;
    let service = Service::open(config, placer)
        .await?
        .start_on(api_listener)
        .await?;
    writeln!(
        out,
        "callverify demo --method code: an authenticator app on loopback"
    )?;
    writeln!(out, "  service   http://{api_addr}  (in-memory store)")?;
    writeln!(
        out,
        "  webhooks  http://{hook_addr}/hooks/callverify  (checks Standard Webhooks signatures)"
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
        json!({"type": "app_code", "label": "authenticator"}),
        out,
    )
    .await?;
    let method_id = enrolled["id"].as_str().unwrap_or_default().to_owned();
    let uri = enrolled["otpauth_uri"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    writeln!(
        out,
        "← 201 {}",
        json!({"id": method_id, "status": enrolled["status"]})
    )?;
    writeln!(
        out,
        "  otpauth URI (scan it, or its qr_svg, with an authenticator app):"
    )?;
    writeln!(out, "  {uri}")?;
    let app = Authenticator::scan(&uri).ok_or_else(|| DemoError::Api {
        status: 201,
        body: format!("not an otpauth://totp URI: {uri}"),
    })?;
    let mut now = u64::try_from(crate::model::now_ms() / 1000).unwrap_or(0);
    if now % STEP_SECS > STEP_SECS - 3 {
        // Too close to the next step for the code of the step before to still count when it
        // arrives: wait for the next one, as a person glancing at the app would.
        tokio::time::sleep(Duration::from_secs(3)).await;
        now = u64::try_from(crate::model::now_ms() / 1000).unwrap_or(0);
    }
    // The app showed a code a moment ago (the step before); it proves the enrolment.
    let first = app.code_at(now.saturating_sub(STEP_SECS));
    writeln!(out, "  the app shows {first}")?;
    let confirmed = api(
        &http,
        &base,
        &format!("/v1/users/{user_id}/methods/{method_id}/confirm"),
        json!({"code": first}),
        out,
    )
    .await?;
    writeln!(out, "← 200 {}", json!({"status": confirmed["status"]}))?;
    writeln!(out)?;

    let created = api(
        &http,
        &base,
        "/v1/verifications",
        json!({"user_id": user_id,
               "callback_url": format!("http://{hook_addr}/hooks/callverify")}),
        out,
    )
    .await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    writeln!(
        out,
        "← 201 {}",
        json!({"id": id, "status": created["status"], "method": created["method"]})
    )?;
    let code = app.code_at(now);
    writeln!(out, "  the app now shows {code}")?;
    let verification = api(
        &http,
        &base,
        &format!("/v1/verifications/{id}/code"),
        json!({"code": code}),
        out,
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
        |data| data["result"] == verification["result"] && data["method"] == verification["method"],
        true,
        out,
    )
    .await?;
    service.shutdown().await?;
    hook_server.abort();
    Ok(DemoOutcome {
        as_expected: result == "confirmed",
        verification,
        webhook_verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authenticator_reads_only_totp_uris() {
        let app = Authenticator::scan(
            "otpauth://totp/callverify:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=callverify",
        )
        .unwrap();
        // RFC 6238 Appendix B, T = 59, the last 6 of 94287082.
        assert_eq!(app.code_at(59), "287082");
        assert!(Authenticator::scan("otpauth://hotp/x?secret=GEZDGNBV").is_none());
        assert!(Authenticator::scan("https://totp/x?secret=GEZDGNBV").is_none());
    }
}
