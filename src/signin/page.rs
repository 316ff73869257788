//! The hosted sign-in page (`/prompt/…`): server-rendered HTML from `web/` (askama, escaped
//! by default), live status over server-sent events, plain forms for the code and for "use a
//! different verification option", and the redirect back to the auth server with the signed
//! result.
//!
//! ```text
//! GET  /prompt/{token}          single-use link: sets the session cookie, forwards (same-site)
//! GET  /prompt/s/{id}           the page (completed: 303 to return_url?callverify_token=JWS)
//! GET  /prompt/s/{id}/events    text/event-stream of status updates
//! POST /prompt/s/{id}/code      form: csrf, code
//! POST /prompt/s/{id}/switch    form: csrf, method_id
//! GET  /prompt/assets/…         the CSS and JS (CSP allows nothing else)
//! ```
//!
//! Every response carries a strict CSP (`default-src 'none'`, scripts and styles from 'self'
//! only, `frame-ancestors 'none'`), `Referrer-Policy: no-referrer` and `Cache-Control:
//! no-store`. The session cookie is HttpOnly and SameSite=Strict, scoped to its page, and each
//! form carries a CSRF token derived from it.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use super::input::{self, SESSION_COOKIE};
use super::text::{Text, text, with_number, with_phone};
use super::{Session, SignIn, SigninError};
use crate::methods::totp::Code;
use crate::store::{PromptOpened, Status, Verification, VerificationId};
use crate::user::{Method, MethodDetail, MethodId, MethodKind, mask_phone};

const CSS: &str = include_str!("../../web/signin.css");
const JS: &str = include_str!("../../web/signin.js");
/// How often an open event stream re-reads the verification.
const EVENT_POLL: Duration = Duration::from_millis(500);
/// Longest life of one event stream (the browser reconnects after it).
const EVENT_STREAM_MAX: Duration = Duration::from_secs(300);

/// The page's routes, over the sign-in state.
pub fn routes(signin: SignIn) -> Router {
    Router::new()
        .route("/prompt/assets/signin.css", get(css))
        .route("/prompt/assets/signin.js", get(js))
        .route("/prompt/{token}", get(open_link))
        .route("/prompt/s/{id}", get(page))
        .route("/prompt/s/{id}/events", get(events))
        .route("/prompt/s/{id}/code", post(submit_code))
        .route("/prompt/s/{id}/switch", post(switch_method))
        .with_state(signin)
}

#[derive(Template)]
#[template(path = "signin.html")]
struct PageTemplate<'a> {
    lang: &'a str,
    title: &'a str,
    instructions: String,
    status: String,
    refresh: bool,
    base: String,
    csrf: &'a str,
    notice: Option<&'a str>,
    code_form: Option<CodeForm<'a>>,
    alternates_heading: &'a str,
    alternates: Vec<Alternate>,
}

struct CodeForm<'a> {
    label: &'a str,
    hint: &'a str,
    button: &'a str,
}

struct Alternate {
    method_id: String,
    kind: &'static str,
    label: String,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageTemplate<'a> {
    lang: &'a str,
    title: &'a str,
    message: &'a str,
    link: &'a str,
    next: Option<&'a str>,
}

/// Adds the security headers every page response carries; `return_origin` joins
/// `form-action` (a form's redirect chain ends at the auth server).
fn secured(mut response: Response, return_origin: Option<&str>) -> Response {
    let form_action = match return_origin {
        Some(origin) => format!("'self' {origin}"),
        None => "'self'".to_owned(),
    };
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action {form_action}; frame-ancestors 'none'; \
         base-uri 'none'"
    );
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
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

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A page that only says something (an expired link, a missing session).
fn message(status: StatusCode, t: &Text, message: &str, link: &str) -> Response {
    let body = MessageTemplate {
        lang: t.lang,
        title: t.title,
        message,
        link,
        next: None,
    }
    .render()
    .unwrap_or_else(|_| message.to_owned());
    secured(html(status, body), None)
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "sign-in page");
    let t = text("en");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        t,
        t.form_refused,
        t.start_again,
    )
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn origin_of(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

async fn css() -> Response {
    secured(
        ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response(),
        None,
    )
}

async fn js() -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            JS,
        )
            .into_response(),
        None,
    )
}

/// The single-use link: exchange the token for a session cookie, then forward to the page
/// with a same-site navigation (a redirect would still be part of the auth server's
/// cross-site navigation, and browsers withhold SameSite=Strict cookies there).
async fn open_link(State(signin): State<SignIn>, Path(token): Path<String>) -> Response {
    let t = text("en");
    let opened = match signin.open_prompt(&token).await {
        Ok(opened) => opened,
        Err(e) => return internal(&e),
    };
    let (prompt, session) = match opened {
        Ok(ok) => ok,
        Err(PromptOpened::AlreadyUsed) => {
            return message(StatusCode::GONE, t, t.link_used, t.start_again);
        }
        Err(PromptOpened::Expired) => {
            return message(StatusCode::GONE, t, t.link_expired, t.start_again);
        }
        Err(_) => return message(StatusCode::NOT_FOUND, t, t.link_invalid, t.start_again),
    };
    let language = match signin.store.get(&prompt.verification_id).await {
        Ok(Some(v)) => v.language,
        Ok(None) => return message(StatusCode::NOT_FOUND, t, t.link_invalid, t.start_again),
        Err(e) => return internal(&e),
    };
    let t = text(&language);
    let path = format!("/prompt/s/{}", prompt.verification_id);
    let secure = if signin.base_url().starts_with("https:") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
        session.expose(),
        signin.config.signin.session_ttl_secs
    );
    let body = MessageTemplate {
        lang: t.lang,
        title: t.title,
        message: t.queued,
        link: t.continue_label,
        next: Some(&path),
    }
    .render()
    .unwrap_or_default();
    let mut response = secured(html(StatusCode::OK, body), None);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The page's session from the cookie, or the response to give instead.
async fn session_of(
    signin: &SignIn,
    raw_id: &str,
    headers: &HeaderMap,
) -> Result<(VerificationId, Session, Verification), Response> {
    let t = text("en");
    let missing = || message(StatusCode::FORBIDDEN, t, t.session_missing, t.start_again);
    let id = VerificationId::parse(raw_id).ok_or_else(missing)?;
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let cookie = input::session_cookie(cookies).ok_or_else(missing)?;
    let session = signin
        .session(&id, cookie)
        .await
        .map_err(|e| internal(&e))?
        .ok_or_else(missing)?;
    let v = signin
        .store
        .get(&id)
        .await
        .map_err(|e| internal(&e))?
        .filter(|v| v.client == session.prompt.client)
        .ok_or_else(missing)?;
    Ok((id, session, v))
}

/// What the status line says.
fn status_line(t: &Text, v: &Verification) -> String {
    let kind = v.method.as_ref().map_or(MethodKind::Phone, |m| m.kind);
    match (v.status, kind) {
        (Status::Queued, _) => t.queued.to_owned(),
        (Status::Calling, _) => t.calling.to_owned(),
        (Status::Ringing, _) => t.ringing.to_owned(),
        (Status::InCall, _) => t.in_call.to_owned(),
        (Status::AwaitingUser, MethodKind::Phone) => t.switching.to_owned(),
        (Status::AwaitingUser, MethodKind::AppCode) => t.awaiting_code.to_owned(),
        (Status::AwaitingUser, MethodKind::Push) => t.awaiting_push.to_owned(),
        (Status::Completed, _) if v.approved() => t.approved.to_owned(),
        (Status::Completed, _) => t.not_approved.to_owned(),
    }
}

/// What changes the page as a whole (then it reloads): the method, or completion.
fn shape(v: &Verification) -> (Option<MethodId>, bool) {
    (
        v.method.as_ref().map(|m| m.id.clone()),
        v.status == Status::Completed,
    )
}

fn masked_number(v: &Verification, methods: &[Method]) -> String {
    if let Some(d) = &v.destination {
        return mask_phone(d);
    }
    let current = v.method.as_ref().map(|m| &m.id);
    methods
        .iter()
        .find(|m| Some(&m.id) == current)
        .and_then(|m| match &m.detail {
            MethodDetail::Phone { destination, .. } => Some(mask_phone(destination)),
            _ => None,
        })
        .unwrap_or_default()
}

async fn page(
    State(signin): State<SignIn>,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (id, session, v) = match session_of(&signin, &raw_id, &headers).await {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let return_origin = origin_of(&session.prompt.return_url);
    if v.status == Status::Completed {
        return match signin.signed_result(&v) {
            Ok(Some(token)) => {
                let to = signin.return_with_result(&session.prompt.return_url, &token);
                tracing::info!(%id, result = ?v.result, "sign-in page returns to the auth server");
                secured(see_other(&to), return_origin.as_deref())
            }
            Ok(None) => internal(&"no signing key for a hosted prompt"),
            Err(e) => internal(&e),
        };
    }
    let t = text(&v.language);
    let methods = match &v.user_id {
        Some(user) => match signin.directory().map(|d| d.methods(user)) {
            Ok(f) => match f.await {
                Ok(m) => m,
                Err(e) => return internal(&e),
            },
            Err(e) => return internal(&e),
        },
        None => Vec::new(),
    };
    let alternates = match signin.alternates(&v).await {
        Ok(a) => a,
        Err(e) => return internal(&e),
    };
    let kind = v.method.as_ref().map_or(MethodKind::Phone, |m| m.kind);
    let number = match signin.push_number(&v).await {
        Ok(n) => n.map(|n| n.to_string()).unwrap_or_else(|| "…".to_owned()),
        Err(e) => return internal(&e),
    };
    let notice = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "n")
        .and_then(|(_, v)| match v.as_ref() {
            "wrong" => Some(t.wrong_code),
            "used" => Some(t.code_used),
            "bad" => Some(t.bad_code),
            "locked" => Some(t.locked),
            "refused" => Some(t.form_refused),
            _ => None,
        });
    let body = PageTemplate {
        lang: t.lang,
        title: t.title,
        instructions: match kind {
            MethodKind::Phone => with_phone(t.phone_instructions, &masked_number(&v, &methods)),
            MethodKind::AppCode => t.app_code_instructions.to_owned(),
            MethodKind::Push => with_number(t.push_instructions, &number),
        },
        status: status_line(t, &v),
        refresh: matches!(kind, MethodKind::Phone | MethodKind::Push),
        base: format!("/prompt/s/{id}"),
        csrf: &session.csrf,
        notice,
        code_form: (kind == MethodKind::AppCode && v.status == Status::AwaitingUser).then_some(
            CodeForm {
                label: t.code_label,
                hint: t.code_hint,
                button: t.verify,
            },
        ),
        alternates_heading: t.alternates,
        alternates: alternates
            .iter()
            .map(|m| Alternate {
                method_id: m.id.as_str().to_owned(),
                kind: m.kind().as_str(),
                label: match &m.detail {
                    MethodDetail::Phone { destination, .. } => {
                        with_phone(t.alt_phone, &mask_phone(destination))
                    }
                    MethodDetail::AppCode { .. } => t.alt_app_code.to_owned(),
                    MethodDetail::Push { .. } => t.alt_push.to_owned(),
                },
            })
            .collect(),
    }
    .render();
    match body {
        Ok(body) => secured(html(StatusCode::OK, body), return_origin.as_deref()),
        Err(e) => internal(&e),
    }
}

/// The status as a stream: an event whenever the status line changes; `reload` when the
/// page must be rendered anew (method switched, or decided).
async fn events(
    State(signin): State<SignIn>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (id, _session, v) = match session_of(&signin, &raw_id, &headers).await {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let t = text(&v.language);
    struct Watch {
        signin: SignIn,
        id: VerificationId,
        t: &'static Text,
        shape: (Option<MethodId>, bool),
        last: Option<String>,
        ended: bool,
        deadline: tokio::time::Instant,
        completions: tokio::sync::broadcast::Receiver<VerificationId>,
    }
    let watch = Watch {
        completions: signin.completions.subscribe(),
        shape: shape(&v),
        signin,
        id,
        t,
        last: None,
        ended: false,
        deadline: tokio::time::Instant::now() + EVENT_STREAM_MAX,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        loop {
            if w.ended || tokio::time::Instant::now() >= w.deadline {
                return None;
            }
            let v = match w.signin.store.get(&w.id).await {
                Ok(Some(v)) => v,
                _ => return None,
            };
            let reload = shape(&v) != w.shape;
            let line = status_line(w.t, &v);
            if reload || w.last.as_deref() != Some(line.as_str()) {
                w.ended = reload;
                w.last = Some(line.clone());
                let data = serde_json::json!({
                    "status": v.status.as_str(),
                    "text": line,
                    "reload": reload,
                });
                let event = Event::default().event("status").data(data.to_string());
                return Some((Ok::<Event, Infallible>(event), w));
            }
            super::completion_or(&mut w.completions, EVENT_POLL).await;
        }
    });
    secured(
        Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
        None,
    )
}

/// The form's CSRF token must be the session's.
fn csrf_ok(session: &Session, form: &input::Form) -> bool {
    form.csrf
        .as_deref()
        .is_some_and(|c| bool::from(c.as_bytes().ct_eq(session.csrf.as_bytes())))
}

async fn submit_code(
    State(signin): State<SignIn>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, session, v) = match session_of(&signin, &raw_id, &headers).await {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let t = text(&v.language);
    let form = match input::parse_form(&body) {
        Ok(f) if csrf_ok(&session, &f) => f,
        _ => return message(StatusCode::FORBIDDEN, t, t.form_refused, t.start_again),
    };
    let page = format!("/prompt/s/{id}");
    let Some(code) = form.code.as_deref().and_then(Code::parse) else {
        return secured(see_other(&format!("{page}?n=bad")), None);
    };
    let to = match signin.submit_code(&v.client, &id, &code).await {
        Ok(after) if after.status == Status::Completed => page,
        Ok(_) => format!("{page}?n=wrong"),
        Err(SigninError::Locked { .. }) => format!("{page}?n=locked"),
        Err(SigninError::Conflict {
            code: "code_already_used",
            ..
        }) => format!("{page}?n=used"),
        Err(SigninError::Conflict { .. } | SigninError::NotFound(_)) => page,
        Err(e) => return internal(&e),
    };
    secured(see_other(&to), None)
}

async fn switch_method(
    State(signin): State<SignIn>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, session, v) = match session_of(&signin, &raw_id, &headers).await {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let t = text(&v.language);
    let form = match input::parse_form(&body) {
        Ok(f) if csrf_ok(&session, &f) => f,
        _ => return message(StatusCode::FORBIDDEN, t, t.form_refused, t.start_again),
    };
    let page = format!("/prompt/s/{id}");
    let Some(method) = form.method_id.as_deref().and_then(MethodId::parse) else {
        return secured(see_other(&format!("{page}?n=refused")), None);
    };
    let to = match signin.switch(&v.client, &id, &method).await {
        Ok(_) => page,
        Err(SigninError::Store(e)) => return internal(&e),
        Err(e) => {
            tracing::info!(%id, error = %e, "switch from the sign-in page refused");
            format!("{page}?n=refused")
        }
    };
    secured(see_other(&to), None)
}
