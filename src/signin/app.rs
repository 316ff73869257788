//! The authenticator app (issue 12) served at `/app/`: its static files from `web/app/`
//! (embedded; no build step, no third-party assets, strict CSP) and the three requests it
//! makes, each authenticated by its device key rather than a cookie.
//!
//! ```text
//! GET  /app/                       index.html (enrolment link: /app/#enrol=<token>)
//! GET  /app/{app.js,app.css,sw.js,manifest.webmanifest,icon.svg}
//! POST /app/v1/register            {token, public_key, subscription?, signature}
//! GET  /app/v1/events?method=&ts=&sig=   text/event-stream: `requests` = the open requests
//! POST /app/v1/answer              {verification_id, method_id, nonce, answer, number?, signature}
//! ```

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::SignIn;
use super::push::DeviceRefused;
use crate::methods::push::BODY_MAX_LEN;
use crate::user::MethodId;

const INDEX: &str = include_str!("../../web/app/index.html");
const JS: &str = include_str!("../../web/app/app.js");
const CSS: &str = include_str!("../../web/app/app.css");
const SW: &str = include_str!("../../web/app/sw.js");
const MANIFEST: &str = include_str!("../../web/app/manifest.webmanifest");
const ICON: &str = include_str!("../../web/app/icon.svg");
/// How often an open event stream re-reads the device's requests (other instances' requests
/// and expiries show up within this).
const EVENT_POLL: Duration = Duration::from_secs(1);
/// Longest life of one event stream (the app reconnects with a fresh signature).
const EVENT_STREAM_MAX: Duration = Duration::from_secs(300);
/// Longest query string of the event stream.
const QUERY_MAX: usize = 512;

/// The app's routes over the sign-in state.
pub fn routes(signin: SignIn) -> Router {
    Router::new()
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/app/", get(index))
        .route(
            "/app/app.js",
            get(|| asset("text/javascript; charset=utf-8", JS)),
        )
        .route(
            "/app/app.css",
            get(|| asset("text/css; charset=utf-8", CSS)),
        )
        .route(
            "/app/sw.js",
            get(|| asset("text/javascript; charset=utf-8", SW)),
        )
        .route(
            "/app/manifest.webmanifest",
            get(|| asset("application/manifest+json", MANIFEST)),
        )
        .route("/app/icon.svg", get(|| asset("image/svg+xml", ICON)))
        .route("/app/v1/register", post(register))
        .route("/app/v1/events", get(events))
        .route("/app/v1/answer", post(answer))
        .layer(DefaultBodyLimit::max(BODY_MAX_LEN))
        .with_state(signin)
}

/// Security headers of every app response: scripts, styles, images, the manifest and the
/// service worker from this origin only; fetches to this origin only.
fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; manifest-src 'self'; worker-src 'self'; form-action 'none'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX).await
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    secured(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `{"error": {"code", "message"}}` with the status that says who is at fault.
fn refused(e: DeviceRefused) -> Response {
    let (status, code) = match &e {
        DeviceRefused::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        DeviceRefused::Link(_) => (StatusCode::GONE, "enrolment_link_unusable"),
        DeviceRefused::UnknownDevice => (StatusCode::NOT_FOUND, "unknown_device"),
        DeviceRefused::Forged => (StatusCode::UNAUTHORIZED, "bad_signature"),
        DeviceRefused::Stale => (StatusCode::UNAUTHORIZED, "stale_signature"),
        DeviceRefused::NotOpen(_) => (StatusCode::CONFLICT, "request_not_open"),
        DeviceRefused::Signin(super::SigninError::NoVapidKey) => {
            (StatusCode::NOT_IMPLEMENTED, "not_configured")
        }
        DeviceRefused::Signin(inner) => {
            tracing::error!(error = %inner, "authenticator app request");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "internal error".to_owned()
    } else {
        e.to_string()
    };
    tracing::info!(code, %message, "authenticator app request refused");
    secured(
        (
            status,
            Json(serde_json::json!({"error": {"code": code, "message": message}})),
        )
            .into_response(),
    )
}

/// The body, or the 400 for one that could not be read (too large, cut off).
fn body_or_refuse(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Box<Response>> {
    body.map_err(|_| {
        Box::new(refused(DeviceRefused::Invalid(
            crate::methods::push::DeviceError::TooLarge,
        )))
    })
}

async fn register(State(signin): State<SignIn>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_or_refuse(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match signin.register_device(&body).await {
        Ok(m) => secured(
            (
                StatusCode::CREATED,
                Json(serde_json::json!({
                    "method_id": m.id.as_str(),
                    "status": m.status.as_str(),
                })),
            )
                .into_response(),
        ),
        Err(e) => refused(e),
    }
}

async fn answer(State(signin): State<SignIn>, body: Result<Bytes, BytesRejection>) -> Response {
    let body = match body_or_refuse(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match signin.answer(&body).await {
        Ok(v) => secured(
            Json(serde_json::json!({
                "verification_id": v.id.as_str(),
                "result": v.result.map(|r| r.as_str()),
            }))
            .into_response(),
        ),
        Err(e) => refused(e),
    }
}

async fn events(State(signin): State<SignIn>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    if query.len() > QUERY_MAX {
        return refused(DeviceRefused::Invalid(
            crate::methods::push::DeviceError::TooLarge,
        ));
    }
    let (mut method, mut ts, mut sig) = (None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "method" => method = MethodId::parse(&v),
            "ts" => ts = v.parse::<i64>().ok(),
            "sig" => sig = Some(v.into_owned()),
            _ => {}
        }
    }
    let (Some(method), Some(ts), Some(sig)) = (method, ts, sig) else {
        return refused(DeviceRefused::Invalid(
            crate::methods::push::DeviceError::Shape("method, ts and sig are required".into()),
        ));
    };
    if let Err(e) = signin.authenticate_listener(&method, ts, &sig).await {
        return refused(e);
    }
    struct Watch {
        signin: SignIn,
        method: MethodId,
        last: Option<BTreeSet<String>>,
        deadline: tokio::time::Instant,
        completions: tokio::sync::broadcast::Receiver<crate::store::VerificationId>,
    }
    let watch = Watch {
        completions: signin.completions.subscribe(),
        signin,
        method,
        last: None,
        deadline: tokio::time::Instant::now() + EVENT_STREAM_MAX,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        loop {
            if tokio::time::Instant::now() >= w.deadline {
                return None;
            }
            let open = match w.signin.open_requests(&w.method).await {
                Ok(open) => open,
                Err(_) => return None,
            };
            let nonces: BTreeSet<String> = open.iter().map(|r| r.nonce.clone()).collect();
            if w.last.as_ref() != Some(&nonces) {
                w.last = Some(nonces);
                let data = serde_json::json!({ "requests": open }).to_string();
                let event = Event::default().event("requests").data(data);
                return Some((Ok::<Event, Infallible>(event), w));
            }
            super::completion_or(&mut w.completions, EVENT_POLL).await;
        }
    });
    secured(
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
    )
}
