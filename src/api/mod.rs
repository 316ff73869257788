//! HTTP API v1 (DESIGN.md "HTTP API"). [`app`] is a plain function of the state, so tests drive
//! it with `oneshot` and no socket.
//!
//! One call at a time per number: with `limits.duplicate = "join"` (the default), a request
//! from the same client for the same destination with the same parameters as an open
//! verification returns that verification (200); every other request for a number being called
//! is queued behind it (the dialer never runs two calls to one destination).
//!
//! Caps (issue 8 item 6) are counted in the store, in the transaction that creates the
//! verification, so they hold across restarts and instances: per number (hour, day), per
//! client (minute, hour, day), per country (hour, day) and global (hour, day); a reached cap is
//! a 429 with `Retry-After`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

mod auth;
pub mod connections;
mod error;
pub mod signin;
pub mod sip_uri;
pub mod users;
pub mod validate;

pub use crate::view::{VerificationView, rfc3339};
pub use auth::{Caller, Client, Clients};
pub use error::{AppError, ErrorBody, ErrorDetail};

use crate::config::{Config, ConfigError, DuplicatePolicy, Secret};
use crate::dialer::DialerHandle;
use crate::metrics::Metrics;
use crate::secrets::StoreKey;
use crate::store::{
    Completions, Created, Dequeued, IdempotencyKey, Quota, Status, Store, Verification,
    VerificationId, now_ms,
};
use crate::webhook::OutboxWake;

/// Longest `Idempotency-Key` accepted, in bytes.
const IDEMPOTENCY_KEY_MAX_LEN: usize = 255;
/// Cap windows.
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub dialer: DialerHandle,
    pub completions: Completions,
    pub metrics: Arc<Metrics>,
    pub outbox: OutboxWake,
    /// Cancelled when the service shuts down: long-polls answer at once.
    pub shutdown: CancellationToken,
    /// Seals PINs, challenge digits and request fingerprints (`crate::secrets`).
    pub secrets: Arc<StoreKey>,
    /// Sign-in by user and the hosted prompt (shares the handles above).
    pub signin: crate::signin::SignIn,
    clients: Arc<Clients>,
}

impl AppState {
    /// State for `config` over `store` and its secret key, with fresh dialer, completion and
    /// outbox handles.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        secrets: StoreKey,
    ) -> Result<AppState, ConfigError> {
        let clients = Arc::new(Clients::from_config(&config)?);
        let config = Arc::new(config);
        let (dialer, completions) = (DialerHandle::new(), Completions::new());
        let (metrics, outbox) = (Arc::new(Metrics::new()), OutboxWake::new());
        let signin = crate::signin::SignIn::new(
            Arc::clone(&config),
            Arc::clone(&store),
            dialer.clone(),
            completions.clone(),
            outbox.clone(),
            Arc::clone(&metrics),
        )?;
        Ok(AppState {
            clients,
            config,
            store,
            dialer,
            completions,
            metrics,
            outbox,
            shutdown: CancellationToken::new(),
            secrets: Arc::new(secrets),
            signin,
        })
    }
}

/// The HTTP API.
pub fn app(state: AppState) -> Router {
    let body_limit = state.config.api.body_max_bytes;
    Router::new()
        .route("/v1/verifications", post(create_verification))
        .route(
            "/v1/verifications/{id}",
            get(get_verification).delete(cancel_verification),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(users::routes())
        .merge(signin::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state.clone())
        .merge(crate::signin::page::routes(state.signin))
}

/// The OpenAPI 3.1 document, generated from the handler annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "callverify", description = "Voice-call verification for multi-factor sign-in."),
    paths(create_verification, get_verification, cancel_verification, healthz, metrics, openapi),
    components(schemas(validate::CreateRequest, VerificationView, ErrorBody, ErrorDetail,
                       crate::view::MethodView, crate::view::AttemptView)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Serializes a JSON value with object keys sorted, for the idempotency fingerprint.
fn canonical_json(value: &serde_json::Value) -> String {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let ordered: BTreeMap<&String, serde_json::Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(ordered).unwrap_or(serde_json::Value::Null)
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(sorted).collect())
            }
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, AppError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().ok().filter(|k| {
        !k.is_empty()
            && k.len() <= IDEMPOTENCY_KEY_MAX_LEN
            && k.bytes().all(|b| b.is_ascii_graphic())
    });
    key.map(|k| Some(k.to_owned())).ok_or_else(|| {
        AppError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key: 1 to {IDEMPOTENCY_KEY_MAX_LEN} visible ASCII characters"),
        )
    })
}

/// The challenge digits of an open challenge-mode verification, derived again from the key
/// (they are not stored); `None` once it is completed (its tag is cleared) or if the digits no
/// longer match the tag (`call.challenge_digits` changed since it was created).
fn challenge(state: &AppState, v: &Verification) -> Option<Secret> {
    let tag = v.digits_tag?;
    if v.mode != flow::Mode::Challenge {
        return None;
    }
    let digits = state
        .secrets
        .challenge_digits(&v.id, state.config.call.challenge_digits);
    let ours = state
        .secrets
        .seal(&v.client, v.destination.as_ref()?.expose(), &digits)
        .ok()?;
    bool::from(ours.to_bytes().ct_eq(&tag.to_bytes())).then_some(digits)
}

fn view_response(status: StatusCode, v: &Verification, challenge: Option<Secret>) -> Response {
    let mut view = VerificationView::from_record(v);
    view.challenge = challenge.map(|c| c.expose().to_owned());
    let mut response = (status, Json(view)).into_response();
    if status == StatusCode::CREATED
        && let Ok(location) = format!("/v1/verifications/{}", v.id).parse()
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Create a verification: validate, rate-limit, store as `queued`, wake the dialer.
#[utoipa::path(
    post,
    path = "/v1/verifications",
    tag = "verifications",
    request_body = validate::CreateRequest,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Same key and body: the same verification (200); other body: 409.")),
    responses(
        (status = 201, description = "Queued (challenge mode: `challenge` holds the digits to show)", body = VerificationView),
        (status = 200, description = "Idempotent replay, or joined an identical open verification", body = VerificationView),
        (status = 400, description = "Not JSON, missing or unknown field, wrong type, unknown mode, invalid number", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as application/json", body = ErrorBody),
        (status = 422, description = "Refused by policy: country, number type, SIP URI, language, callback host, metadata size", body = ErrorBody),
        (status = 429, description = "Rate limited; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn create_verification(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(state.config.api.body_max_bytes)
        } else {
            AppError::bad_request("invalid_body", format!("cannot read the body: {e}"))
        }
    })?;
    let json_content = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
        .unwrap_or(false);
    if !json_content {
        return Err(AppError::UnsupportedMediaType);
    }
    let idempotency = idempotency_key(&headers)?;
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        AppError::bad_request("invalid_json", format!("the request body is not JSON: {e}"))
    })?;
    // A MAC, not a plain hash: the body may hold a PIN (crate::secrets).
    let fingerprint = state.secrets.fingerprint(canonical_json(&value).as_bytes());
    if value.get("user_id").is_some() {
        let key = idempotency.map(|key| IdempotencyKey { key, fingerprint });
        return signin::create_for_user(&state, &client, value, key).await;
    }
    let mut request = validate::request(value)?;
    let return_url = request
        .hosted
        .take()
        .map(|h| signin::return_url(&h.return_url, &client))
        .transpose()?;
    let (new, target) = validate::verification(request, &client, &state.config, &state.secrets)?;
    let quotas = quotas(&state.config, &client, Some(&target));
    let key = idempotency.map(|key| IdempotencyKey { key, fingerprint });
    // A hosted prompt is one browser's: never joined to another request's verification.
    let join = state.config.limits.duplicate == DuplicatePolicy::Join && return_url.is_none();
    let destination = new.destination.clone();
    match state.store.create(new, key, join, &quotas).await? {
        Created::New(v) => {
            tracing::info!(id = %v.id, client = %client.name, %destination, mode = ?v.mode, "verification queued");
            state.dialer.wake();
            if let Some(url) = return_url {
                let prompt_url = state.signin.create_prompt(&v, url).await?;
                return Ok(signin::created(&v, challenge(&state, &v), Some(prompt_url)));
            }
            Ok(view_response(
                StatusCode::CREATED,
                &v,
                challenge(&state, &v),
            ))
        }
        Created::Replayed(v) => Ok(view_response(StatusCode::OK, &v, challenge(&state, &v))),
        Created::Joined(v) => {
            tracing::info!(id = %v.id, client = %client.name, %destination, "request joined an open verification");
            Ok(view_response(StatusCode::OK, &v, challenge(&state, &v)))
        }
        Created::IdempotencyConflict => Err(AppError::Conflict {
            code: "idempotency_key_reused",
            message: "Idempotency-Key was already used with a different request body".to_owned(),
        }),
        Created::Limited(limited) => {
            tracing::info!(client = %client.name, %destination, limit = limited.what, "rate limited");
            Err(AppError::RateLimited {
                message: format!(
                    "too many requests: limit of {} reached; retry in {} s",
                    limited.what,
                    limited.retry_after.as_secs().max(1)
                ),
                retry_after: limited.retry_after,
            })
        }
    }
}

/// The caps a new verification of `client` counts against: the client's and the global ones,
/// and, when it calls `target`, the number's and the country's.
pub(super) fn quotas(
    config: &Config,
    client: &Client,
    target: Option<&validate::Target>,
) -> Vec<Quota> {
    let limits = &config.limits;
    let client_key = format!("client:{}", client.name);
    let mut quotas = vec![
        Quota {
            key: client_key.clone(),
            max: client.rate_per_minute,
            window: MINUTE,
            what: "this client's verifications per minute",
        },
        Quota {
            key: client_key.clone(),
            max: client.rate_per_hour,
            window: HOUR,
            what: "this client's verifications per hour",
        },
        Quota {
            key: client_key,
            max: client.rate_per_day,
            window: DAY,
            what: "this client's verifications per day",
        },
        Quota {
            key: "global".to_owned(),
            max: limits.global_per_hour,
            window: HOUR,
            what: "verifications per hour (all clients)",
        },
        Quota {
            key: "global".to_owned(),
            max: limits.global_per_day,
            window: DAY,
            what: "verifications per day (all clients)",
        },
    ];
    let Some(target) = target else {
        return quotas;
    };
    let number = format!("number:{}", target.destination.expose());
    quotas.push(Quota {
        key: number.clone(),
        max: limits.per_number_per_hour,
        window: HOUR,
        what: "verifications of this phone number per hour",
    });
    quotas.push(Quota {
        key: number,
        max: limits.per_number_per_day,
        window: DAY,
        what: "verifications of this phone number per day",
    });
    if let Some(country) = &target.country {
        let key = format!("country:{country}");
        quotas.push(Quota {
            key: key.clone(),
            max: limits.per_country_per_hour,
            window: HOUR,
            what: "verifications to this country per hour",
        });
        quotas.push(Quota {
            key,
            max: limits.per_country_per_day,
            window: DAY,
            what: "verifications to this country per day",
        });
    }
    quotas
}

fn parse_id(raw: &str) -> Result<VerificationId, AppError> {
    VerificationId::parse(raw).ok_or_else(|| AppError::NotFound(format!("no verification `{raw}`")))
}

async fn load_owned(
    state: &AppState,
    id: &VerificationId,
    client: &Client,
) -> Result<Verification, AppError> {
    state
        .store
        .get(id)
        .await?
        .filter(|v| v.client == client.name)
        .ok_or_else(|| AppError::NotFound(format!("no verification `{id}`")))
}

fn parse_wait(query: Option<&str>, max: u64) -> Result<u64, AppError> {
    let mut wait = 0;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "wait" {
            wait = v.parse::<u64>().ok().filter(|w| *w <= max).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_wait",
                    format!("wait: whole seconds from 0 to {max}, got `{v}`"),
                )
            })?;
        }
    }
    Ok(wait)
}

/// A verification; `?wait=N` long-polls up to N seconds for its completion.
#[utoipa::path(
    get,
    path = "/v1/verifications/{id}",
    tag = "verifications",
    params(
        ("id" = String, Path, description = "Verification id (`vrf_…`)"),
        ("wait" = Option<u64>, Query, description = "Seconds to wait for completion (0 to api.max_wait_secs)"),
    ),
    responses(
        (status = 200, description = "The verification (completed, or still open when the wait ended)", body = VerificationView),
        (status = 400, description = "Invalid wait", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such verification for this client", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn get_verification(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let wait = parse_wait(query.as_deref(), state.config.api.max_wait_secs)?;
    let id = parse_id(&raw_id)?;
    // Subscribe before reading, so a completion in between is not missed.
    let mut completions = state.completions.subscribe();
    let v = load_owned(&state, &id, &client).await?;
    if wait == 0 || v.status == Status::Completed {
        return Ok(view_response(StatusCode::OK, &v, None));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let next = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            next = tokio::time::timeout_at(deadline, completions.recv()) => next,
        };
        match next {
            Err(_) => break,
            Ok(Ok(done)) if done == id => break,
            Ok(Ok(_)) => {}
            Ok(Err(RecvError::Lagged(_))) => {
                let v = load_owned(&state, &id, &client).await?;
                if v.status == Status::Completed {
                    return Ok(view_response(StatusCode::OK, &v, None));
                }
            }
            Ok(Err(RecvError::Closed)) => break,
        }
    }
    let v = load_owned(&state, &id, &client).await?;
    Ok(view_response(StatusCode::OK, &v, None))
}

/// Cancel: a queued verification is dequeued (completed as `cancelled`, 200); a live call is
/// hung up (202; it completes as `cancelled` shortly).
#[utoipa::path(
    delete,
    path = "/v1/verifications/{id}",
    tag = "verifications",
    params(("id" = String, Path, description = "Verification id (`vrf_…`)")),
    responses(
        (status = 200, description = "Was queued: now completed as cancelled", body = VerificationView),
        (status = 202, description = "Call in progress: hang-up requested", body = VerificationView),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No such verification for this client", body = ErrorBody),
        (status = 409, description = "Already completed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn cancel_verification(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(raw_id): Path<String>,
) -> Result<Response, AppError> {
    let id = parse_id(&raw_id)?;
    match state.store.dequeue(&id, &client.name, now_ms()).await? {
        Dequeued::NotFound => Err(AppError::NotFound(format!("no verification `{id}`"))),
        Dequeued::Cancelled(v) => {
            tracing::info!(%id, "queued verification cancelled");
            state.metrics.completed(flow::CallResult::Cancelled, None);
            state.completions.announce(&id);
            state.outbox.wake();
            Ok(view_response(StatusCode::OK, &v, None))
        }
        Dequeued::NotQueued(v) if v.status == Status::AwaitingUser => {
            match state.signin.cancel_awaiting(&id).await? {
                Some(done) => {
                    tracing::info!(%id, "verification waiting for its user cancelled");
                    Ok(view_response(StatusCode::OK, &done, None))
                }
                // It moved on meanwhile (a code decided it, or its call was queued).
                None => Err(AppError::Conflict {
                    code: "state_changed",
                    message: format!("verification `{id}` changed meanwhile; read it and retry"),
                }),
            }
        }
        Dequeued::NotQueued(v) if v.status == Status::Completed => Err(AppError::Conflict {
            code: "already_completed",
            message: format!(
                "verification `{id}` is already completed ({})",
                v.result.map_or("no result", |r| r.as_str())
            ),
        }),
        Dequeued::NotQueued(v) => {
            tracing::info!(%id, "hang-up requested");
            match state.store.shared() {
                // Several instances: the call may run on another one; the instance that
                // claimed it hears the request and hangs up.
                Some(shared) if !state.dialer.is_live(&id) => {
                    if !shared.request_hang_up(&id).await? {
                        tracing::info!(%id, "no live call to hang up (it just ended)");
                    }
                }
                _ => state.dialer.hang_up(&id),
            }
            Ok(view_response(StatusCode::ACCEPTED, &v, None))
        }
    }
}

/// Health: 200 when the store answers (`{"status":"ok","store":"reachable"}`, with this
/// instance's id on a shared store), 503 when it does not.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Up: the store is reachable"), (status = 503, description = "Store unreachable", body = ErrorBody)))]
async fn healthz(State(state): State<AppState>) -> Result<Response, AppError> {
    state.store.ping().await.map_err(AppError::Unavailable)?;
    let mut body = serde_json::json!({"status": "ok", "store": "reachable"});
    if let Some(shared) = state.store.shared() {
        body["instance"] = shared.instance().as_str().into();
    }
    Ok(Json(body).into_response())
}

/// Prometheus metrics (text format 0.0.4): `Authorization: Bearer <api.metrics_key>`, unless
/// `api.metrics_public`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, description = "Missing or wrong metrics key", body = ErrorBody)),
    security(("bearer" = [])))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    if !state.config.api.metrics_public {
        let Some(key) = &state.config.api.metrics_key else {
            return Err(AppError::Unauthorized(
                "GET /metrics needs api.metrics_key (or api.metrics_public) in the configuration",
            ));
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or("");
        // Compared as SHA-256 digests: constant time, whatever the lengths.
        use sha2::{Digest as _, Sha256};
        let want = Sha256::digest(key.expose().as_bytes());
        let got = Sha256::digest(token.as_bytes());
        if !bool::from(want.ct_eq(&got)) {
            return Err(AppError::Unauthorized(
                "GET /metrics: send `Authorization: Bearer <api.metrics_key>`",
            ));
        }
    }
    let depth = state.store.queue_depth().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(depth),
    )
        .into_response())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(users::UsersDoc::openapi());
    doc.merge(signin::SigninDoc::openapi());
    signin::document(&mut doc);
    Json(doc)
}

async fn not_found() -> AppError {
    AppError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}
