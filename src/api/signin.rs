//! The API of sign-in by user: `POST /v1/verifications` with `user_id`, the hosted prompt
//! option, `/code`, `/switch`, and the JWKS of signed results.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use utoipa::{OpenApi, ToSchema};

use super::users::{CodeRequest, json_body, load_user};
use super::{AppError, AppState, Caller, Client, ErrorBody, VerificationView, validate};
use crate::config::Secret;
use crate::methods::totp::Code;
use crate::store::{Created, IdempotencyKey, Status, Verification, VerificationId, now_ms};
use crate::user::{MethodDetail, MethodId, MethodKind, MethodStatus, NewUserVerification};

/// Longest `return_url`.
const RETURN_URL_MAX_LEN: usize = 2048;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/verifications/{id}/code", post(submit_code))
        .route("/v1/verifications/{id}/switch", post(switch_method))
        .route("/v1/jwks.json", get(jwks))
}

/// The OpenAPI paths of sign-in by user (merged into `/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    paths(submit_code, switch_method, jwks),
    components(schemas(UserVerificationRequest, HostedRequest, SwitchRequest))
)]
pub struct SigninDoc;

/// Documents that `POST /v1/verifications` takes either body: by number or by user.
pub(super) fn document(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{OneOfBuilder, Ref, Schema};
    let body = doc
        .paths
        .paths
        .get_mut("/v1/verifications")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut())
        .and_then(|body| body.content.get_mut("application/json"));
    if let Some(content) = body {
        content.schema = Some(RefOr::T(Schema::OneOf(
            OneOfBuilder::new()
                .item(Ref::from_schema_name("CreateRequest"))
                .item(Ref::from_schema_name("UserVerificationRequest"))
                .description(Some(
                    "By number (`phone_number`) or by user (`user_id`); either may ask for \
                     the hosted sign-in page (`hosted`).",
                ))
                .build(),
        )));
    }
}

/// `"hosted": {"return_url": …}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostedRequest {
    /// Where the page sends the browser once decided, with `callverify_token=<JWS>` added.
    /// Its host must be one of the client's `return_hosts`; `https` (plain `http` only to
    /// loopback).
    #[schema(example = "https://app.example.com/mfa/done")]
    pub return_url: String,
}

/// `POST /v1/verifications` for a user (instead of `phone_number`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserVerificationRequest {
    /// `usr_…`: the user's first active method is used…
    #[schema(example = "usr_5b0c2e8f1a9d4c7e3b6a0f2d8c4e1a97")]
    pub user_id: String,
    /// …unless one of their active methods is named.
    pub method_id: Option<String>,
    #[schema(example = "en")]
    pub language: Option<String>,
    pub callback_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    pub hosted: Option<HostedRequest>,
}

/// `{"method_id": "mth_…"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    #[schema(example = "mth_9e4b1c7a2d8f0e3b5a6c1d2e7f8a9b0c")]
    pub method_id: String,
}

/// A `return_url` the client may use: its host listed in `return_hosts`, https (or http to
/// loopback, for development), no credentials or fragment.
pub(super) fn return_url(raw: &str, client: &Client) -> Result<String, AppError> {
    let refuse = |m: String| AppError::unprocessable("return_url_not_allowed", m);
    if raw.len() > RETURN_URL_MAX_LEN {
        return Err(AppError::bad_request(
            "invalid_return_url",
            format!("hosted.return_url: longer than {RETURN_URL_MAX_LEN} characters"),
        ));
    }
    let url = url::Url::parse(raw).map_err(|e| {
        AppError::bad_request("invalid_return_url", format!("hosted.return_url: {e}"))
    })?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(refuse("hosted.return_url: must use https".into())),
        other => {
            return Err(AppError::bad_request(
                "invalid_return_url",
                format!("hosted.return_url: scheme `{other}` is not https"),
            ));
        }
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(AppError::bad_request(
            "invalid_return_url",
            "hosted.return_url: no credentials and no #fragment",
        ));
    }
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    let host_port = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    if !client
        .return_hosts
        .iter()
        .any(|h| *h == host || *h == host_port)
    {
        return Err(refuse(format!(
            "hosted.return_url: host `{host_port}` is not among this client's return_hosts"
        )));
    }
    Ok(url.to_string())
}

/// The 201 of a new verification, with its challenge digits (challenge mode) and its prompt
/// link when hosted.
pub(super) fn created(
    v: &Verification,
    challenge: Option<Secret>,
    prompt_url: Option<String>,
) -> Response {
    let mut view = VerificationView::from_record(v);
    view.challenge = challenge.map(|c| c.expose().to_owned());
    view.prompt_url = prompt_url;
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = format!("/v1/verifications/{}", v.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `POST /v1/verifications {"user_id": …}`.
pub(super) async fn create_for_user(
    state: &AppState,
    client: &Client,
    value: serde_json::Value,
    idempotency: Option<IdempotencyKey>,
) -> Result<Response, AppError> {
    let req: UserVerificationRequest = validate::parse(value)?;
    let return_url = req
        .hosted
        .as_ref()
        .map(|h| return_url(&h.return_url, client))
        .transpose()?;
    let language = language(req.language, state)?;
    let callback_url = req
        .callback_url
        .map(|u| validate::callback_url(&u, client, &state.config))
        .transpose()?;
    let metadata = metadata(req.metadata, state)?;
    let user = load_user(state, client, &req.user_id).await?;
    let directory = state.signin.directory()?;
    let method = match req.method_id {
        Some(raw) => {
            let id = MethodId::parse(&raw)
                .ok_or_else(|| AppError::NotFound(format!("no method `{raw}`")))?;
            let m = directory
                .method(&user.id, &id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("no method `{raw}`")))?;
            if m.status != MethodStatus::Active {
                return Err(AppError::unprocessable(
                    "method_not_active",
                    format!("method `{raw}` is not active (enrolment unfinished)"),
                ));
            }
            m
        }
        None => directory
            .methods(&user.id)
            .await?
            .into_iter()
            .find(|m| m.status == MethodStatus::Active)
            .ok_or_else(|| {
                AppError::unprocessable("no_active_method", "the user has no active method")
            })?,
    };
    if method.kind() == MethodKind::AppCode {
        state.signin.sealer()?;
    }
    // A phone method is checked against today's destination policy (countries, number types,
    // SIP URI hosts may have changed since it was enrolled) and counts against its number's
    // and country's caps, as a verification by number would.
    let target = match &method.detail {
        MethodDetail::Phone { destination, .. } => {
            Some(validate::destination(destination.expose(), &state.config)?)
        }
        MethodDetail::AppCode { .. } => None,
    };
    let quotas = super::quotas(&state.config, client, target.as_ref());
    let new = NewUserVerification {
        id: VerificationId::generate(),
        client: client.name.clone(),
        user_id: user.id.clone(),
        method,
        language,
        callback_url,
        metadata,
        created_at: now_ms(),
    };
    match directory
        .create_user_verification(new, idempotency, &quotas)
        .await?
    {
        Created::New(v) => {
            tracing::info!(id = %v.id, client = %client.name, user = %user.id,
                method = ?v.method, "verification by user created");
            if v.status == Status::Queued {
                state.dialer.wake();
            }
            let prompt_url = match return_url {
                Some(url) => Some(state.signin.create_prompt(&v, url).await?),
                None => None,
            };
            Ok(created(&v, None, prompt_url))
        }
        Created::Replayed(v) | Created::Joined(v) => {
            Ok((StatusCode::OK, Json(VerificationView::from_record(&v))).into_response())
        }
        Created::IdempotencyConflict => Err(AppError::Conflict {
            code: "idempotency_key_reused",
            message: "Idempotency-Key was already used with a different request body".into(),
        }),
        Created::Limited(limited) => Err(AppError::RateLimited {
            message: format!(
                "too many requests: limit of {} reached; retry in {} s",
                limited.what,
                limited.retry_after.as_secs().max(1)
            ),
            retry_after: limited.retry_after,
        }),
    }
}

fn language(requested: Option<String>, state: &AppState) -> Result<String, AppError> {
    let offered = &state.config.media.languages;
    match requested {
        None => Ok(offered.first().cloned().unwrap_or_else(|| "en".to_owned())),
        Some(lang) if !crate::config::is_language_tag(&lang) => Err(AppError::bad_request(
            "invalid_language",
            format!("language: `{lang}` is not a language tag like `en` or `en-US`"),
        )),
        Some(lang) if !offered.contains(&lang) => Err(AppError::unprocessable(
            "unsupported_language",
            format!(
                "language: `{lang}` is not offered (offered: {})",
                offered.join(", ")
            ),
        )),
        Some(lang) => Ok(lang),
    }
}

fn metadata(
    value: Option<serde_json::Value>,
    state: &AppState,
) -> Result<Option<serde_json::Value>, AppError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(m @ serde_json::Value::Object(_)) => {
            let size = m.to_string().len();
            let max = state.config.api.metadata_max_bytes;
            if size > max {
                return Err(AppError::unprocessable(
                    "metadata_too_large",
                    format!("metadata: {size} bytes, at most {max} allowed"),
                ));
            }
            Ok(Some(m))
        }
        Some(_) => Err(AppError::bad_request(
            "invalid_field",
            "metadata: must be a JSON object",
        )),
    }
}

fn verification_id(raw: &str) -> Result<VerificationId, AppError> {
    VerificationId::parse(raw).ok_or_else(|| AppError::NotFound(format!("no verification `{raw}`")))
}

/// Submit the code of an app-code attempt.
#[utoipa::path(post, path = "/v1/verifications/{id}/code", tag = "verifications",
    params(("id" = String, Path, description = "Verification id (`vrf_…`)")),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "The verification after the code: completed `confirmed`; still `awaiting_user` after a wrong code (see the attempt's `wrong_codes`); completed `wrong_digits` after the last allowed one", body = VerificationView),
        (status = 400, description = "Not six digits (`invalid_code`)", body = ErrorBody),
        (status = 404, description = "No such verification for this client", body = ErrorBody),
        (status = 409, description = "Not waiting for a code (`not_awaiting_code`, `already_completed`), or a code already used for this method (`code_already_used`)", body = ErrorBody),
        (status = 429, description = "Too many wrong codes for this method (`method_locked`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn submit_code(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (CodeRequest, _) = json_body(&state, &headers, body)?;
    let code = Code::parse(&req.code).ok_or_else(|| {
        AppError::bad_request(
            "invalid_code",
            "code: exactly 6 digits, as the app shows it",
        )
    })?;
    let id = verification_id(&raw_id)?;
    let v = state.signin.submit_code(&client.name, &id, &code).await?;
    Ok(Json(VerificationView::from_record(&v)).into_response())
}

/// "Use a different verification option": end the current attempt (hanging up its call,
/// `cancelled` in its timeline) and start another of the user's methods.
#[utoipa::path(post, path = "/v1/verifications/{id}/switch", tag = "verifications",
    params(("id" = String, Path, description = "Verification id (`vrf_…`)")),
    request_body = SwitchRequest,
    responses(
        (status = 200, description = "The verification on its new method (a phone attempt is `queued` once the previous call has hung up)", body = VerificationView),
        (status = 404, description = "No such verification, or no such method of its user", body = ErrorBody),
        (status = 409, description = "Already completed", body = ErrorBody),
        (status = 422, description = "Not a verification by user; method not active", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn switch_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (SwitchRequest, _) = json_body(&state, &headers, body)?;
    let id = verification_id(&raw_id)?;
    let method = MethodId::parse(&req.method_id)
        .ok_or_else(|| AppError::NotFound(format!("no method `{}`", req.method_id)))?;
    let v = state.signin.switch(&client.name, &id, &method).await?;
    Ok(Json(VerificationView::from_record(&v)).into_response())
}

/// The public keys of signed results (JWK Set, RFC 7517): verify `callverify_token` with them.
#[utoipa::path(get, path = "/v1/jwks.json", tag = "verifications",
    responses((status = 200, description = "JWK Set (`kty` OKP, `crv` Ed25519, `alg` EdDSA); empty without signin.signing_key", content_type = "application/json")))]
async fn jwks(State(state): State<AppState>) -> Response {
    let body = match state.signin.signer() {
        Some(signer) => signer.jwks(),
        None => serde_json::json!({ "keys": [] }),
    };
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body.to_string(),
    )
        .into_response()
}
