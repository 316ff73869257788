//! `/v1/users` and their methods (DESIGN.md "Sign-in methods"): per client (another
//! client's user or method is a 404), phone numbers through the verification destination
//! policy, app codes enrolled by an RFC 6238 ceremony whose secret is shown once and sealed.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::{OpenApi, ToSchema};

use super::{AppError, AppState, Caller, Client, ErrorBody, validate};
use crate::methods::totp::{self, Code, PendingAppCode};
use crate::signin::SigninError;
use crate::store::{Directory, now_ms};
use crate::user::{
    Method, MethodDetail, MethodId, MethodPatch, MethodStatus, NewMethod, NewUser, User, UserId,
};
use crate::view::rfc3339;

/// Longest `external_id`, in characters.
const EXTERNAL_ID_MAX: usize = 256;
/// Longest `display_name` and method `label`, in characters.
const NAME_MAX: usize = 128;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(create_user).get(find_users))
        .route("/v1/users/{id}", get(get_user).delete(delete_user))
        .route("/v1/users/{id}/methods", post(add_method).get(list_methods))
        .route(
            "/v1/users/{id}/methods/{mid}",
            get(get_method).patch(update_method).delete(delete_method),
        )
        .route("/v1/users/{id}/methods/{mid}/confirm", post(confirm_method))
}

/// The OpenAPI paths of users and methods (merged into `/openapi.json`).
#[derive(OpenApi)]
#[openapi(
    paths(
        create_user,
        find_users,
        get_user,
        delete_user,
        add_method,
        list_methods,
        get_method,
        update_method,
        delete_method,
        confirm_method
    ),
    components(schemas(
        NewUserRequest,
        UserView,
        UserList,
        NewMethodRequest,
        EnrolledMethod,
        MethodList,
        MethodUpdate,
        CodeRequest
    ))
)]
pub struct UsersDoc;

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserRequest {
    /// The auth server's own name for the user, unique per client.
    #[schema(example = "alice@example.com")]
    pub external_id: String,
    #[schema(example = "Alice")]
    pub display_name: Option<String>,
}

/// A user.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct UserView {
    #[schema(example = "usr_5b0c2e8f1a9d4c7e3b6a0f2d8c4e1a97")]
    pub id: String,
    pub external_id: String,
    pub display_name: Option<String>,
    pub created_at: String,
    /// The user's methods in order (a verification by user uses the first active one).
    pub methods: Vec<EnrolledMethod>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// `POST /v1/users/{id}/methods`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMethodRequest {
    /// `phone` or `app_code`.
    #[serde(rename = "type")]
    #[schema(example = "phone")]
    pub kind: String,
    /// phone: E.164 (or an allowed SIP URI), the same policy as a verification's.
    #[schema(example = "+14255550123")]
    pub phone_number: Option<String>,
    /// phone: dialled after answer (digits, `*`, `#`, `,`).
    pub extension: Option<String>,
    #[schema(example = "office")]
    pub label: Option<String>,
}

/// A method. On enrolment of an `app_code` (201 only) it also carries `otpauth_uri` and
/// `qr_svg`, never again.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct EnrolledMethod {
    #[schema(example = "mth_9e4b1c7a2d8f0e3b5a6c1d2e7f8a9b0c")]
    pub id: String,
    /// `phone` or `app_code`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `active`, or `pending` until an app code is confirmed.
    pub status: &'static str,
    pub label: Option<String>,
    /// 0 first.
    pub position: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<String>,
    pub created_at: String,
    pub confirmed_at: Option<String>,
    /// Set while too many wrong codes lock the method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<String>,
    /// app_code enrolment only: `otpauth://totp/…` (RFC 6238, SHA-1, 6 digits, 30 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
    /// app_code enrolment only: the QR code of `otpauth_uri`, an `<svg>` element.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qr_svg: Option<String>,
}

impl EnrolledMethod {
    fn of(m: &Method) -> EnrolledMethod {
        let (phone_number, extension) = match &m.detail {
            MethodDetail::Phone {
                destination,
                extension,
            } => (Some(destination.expose().to_owned()), extension.clone()),
            MethodDetail::AppCode { .. } => (None, None),
        };
        EnrolledMethod {
            id: m.id.as_str().to_owned(),
            kind: m.kind().as_str(),
            status: m.status.as_str(),
            label: m.label.clone(),
            position: m.position,
            phone_number,
            extension,
            created_at: rfc3339(m.created_at),
            confirmed_at: m.confirmed_at.map(rfc3339),
            locked_until: m.locked_until.filter(|u| *u > now_ms()).map(rfc3339),
            otpauth_uri: None,
            qr_svg: None,
        }
    }
}

#[derive(Debug, serde::Serialize, ToSchema)]
pub struct MethodList {
    pub methods: Vec<EnrolledMethod>,
}

/// `PATCH /v1/users/{id}/methods/{mid}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MethodUpdate {
    /// A new label (`null` clears it).
    #[serde(default, deserialize_with = "some_or_null")]
    #[schema(value_type = Option<String>)]
    pub label: Option<Option<String>>,
    /// The method's new place in the user's order (0 first).
    pub position: Option<u32>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `{"code": "123456"}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// Six digits from the authenticator app.
    #[schema(example = "123456")]
    pub code: String,
}

/// A JSON body: the same content-type, size and syntax rules as `POST /v1/verifications`.
pub(super) fn json_body<T: DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, serde_json::Value), AppError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::PayloadTooLarge(state.config.api.body_max_bytes)
        } else {
            AppError::bad_request("invalid_body", format!("cannot read the body: {e}"))
        }
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        });
    if !json {
        return Err(AppError::UnsupportedMediaType);
    }
    let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        AppError::bad_request("invalid_json", format!("the request body is not JSON: {e}"))
    })?;
    Ok((validate::parse(value.clone())?, value))
}

/// A name: trimmed, 1 to `max` characters, no control characters.
fn name(field: &str, raw: &str, max: usize) -> Result<String, AppError> {
    let s = raw.trim();
    if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(AppError::bad_request(
            "invalid_field",
            format!("{field}: 1 to {max} characters, no control characters"),
        ));
    }
    Ok(s.to_owned())
}

fn directory(state: &AppState) -> Result<&std::sync::Arc<dyn Directory>, AppError> {
    Ok(state.signin.directory()?)
}

/// The client's user, or 404 (another client's user is not found either).
pub(super) async fn load_user(
    state: &AppState,
    client: &Client,
    raw: &str,
) -> Result<User, AppError> {
    let not_found = || AppError::NotFound(format!("no user `{raw}`"));
    let id = UserId::parse(raw).ok_or_else(not_found)?;
    directory(state)?
        .user(&client.name, &id)
        .await?
        .ok_or_else(not_found)
}

async fn load_method(state: &AppState, user: &User, raw: &str) -> Result<Method, AppError> {
    let not_found = || AppError::NotFound(format!("no method `{raw}`"));
    let id = MethodId::parse(raw).ok_or_else(not_found)?;
    directory(state)?
        .method(&user.id, &id)
        .await?
        .ok_or_else(not_found)
}

async fn user_view(state: &AppState, user: &User) -> Result<UserView, AppError> {
    let methods = directory(state)?.methods(&user.id).await?;
    Ok(UserView {
        id: user.id.as_str().to_owned(),
        external_id: user.external_id.clone(),
        display_name: user.display_name.clone(),
        created_at: rfc3339(user.created_at),
        methods: methods.iter().map(EnrolledMethod::of).collect(),
    })
}

fn parse_code(raw: &str) -> Result<Code, AppError> {
    Code::parse(raw).ok_or_else(|| {
        AppError::bad_request(
            "invalid_code",
            "code: exactly 6 digits, as the app shows it",
        )
    })
}

/// Create a user.
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = NewUserRequest,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 409, description = "This client already has a user with this external_id (`user_exists`)", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn create_user(
    State(state): State<AppState>,
    Caller(client): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (NewUserRequest, _) = json_body(&state, &headers, body)?;
    let new = NewUser {
        id: UserId::generate(),
        client: client.name.clone(),
        external_id: name("external_id", &req.external_id, EXTERNAL_ID_MAX)?,
        display_name: req
            .display_name
            .map(|d| name("display_name", &d, NAME_MAX))
            .transpose()?,
        created_at: now_ms(),
    };
    let user = directory(&state)?
        .create_user(new)
        .await?
        .ok_or_else(|| AppError::Conflict {
            code: "user_exists",
            message: "this client already has a user with this external_id".into(),
        })?;
    let mut response = (StatusCode::CREATED, Json(user_view(&state, &user).await?)).into_response();
    if let Ok(location) = format!("/v1/users/{}", user.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Find the user with an `external_id`.
#[utoipa::path(get, path = "/v1/users", tag = "users",
    params(("external_id" = String, Query, description = "The auth server's name for the user")),
    responses(
        (status = 200, description = "The matching user (none or one)", body = UserList),
        (status = 400, description = "external_id missing", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn find_users(
    State(state): State<AppState>,
    Caller(client): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, AppError> {
    let external_id = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "external_id")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| {
            AppError::bad_request(
                "missing_query",
                "external_id: required (users are looked up, not listed)",
            )
        })?;
    let mut users = Vec::new();
    if let Some(user) = directory(&state)?
        .user_by_external_id(&client.name, &external_id)
        .await?
    {
        users.push(user_view(&state, &user).await?);
    }
    Ok(Json(UserList { users }).into_response())
}

/// A user with their methods.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "`usr_…`")),
    responses((status = 200, description = "The user", body = UserView),
              (status = 404, description = "No such user for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_user(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = load_user(&state, &client, &id).await?;
    Ok(Json(user_view(&state, &user).await?).into_response())
}

/// Delete a user and their methods (verifications stay, as history).
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users",
    params(("id" = String, Path, description = "`usr_…`")),
    responses((status = 204, description = "Deleted"),
              (status = 404, description = "No such user for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_user(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = load_user(&state, &client, &id).await?;
    directory(&state)?
        .delete_user(&client.name, &user.id)
        .await?;
    tracing::info!(user = %user.id, client = %client.name, "user deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Enrol a method: a phone (active at once) or an app code (pending until confirmed; the
/// 201 carries `otpauth_uri` and `qr_svg`, shown this once).
#[utoipa::path(post, path = "/v1/users/{id}/methods", tag = "users",
    params(("id" = String, Path, description = "`usr_…`")),
    request_body = NewMethodRequest,
    responses(
        (status = 201, description = "Enrolled (app_code: pending, with otpauth_uri and qr_svg)", body = EnrolledMethod),
        (status = 400, description = "Invalid body, type or number", body = ErrorBody),
        (status = 404, description = "No such user for this client", body = ErrorBody),
        (status = 422, description = "Number refused by policy; too many methods", body = ErrorBody),
        (status = 501, description = "app_code without methods.seal_key", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn add_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (NewMethodRequest, _) = json_body(&state, &headers, body)?;
    let user = load_user(&state, &client, &id).await?;
    let label = req.label.map(|l| name("label", &l, NAME_MAX)).transpose()?;
    let method_id = MethodId::generate();
    let (detail, status, offer) = match req.kind.as_str() {
        "phone" => {
            let number = req
                .phone_number
                .ok_or_else(|| AppError::bad_request("missing_field", "phone_number: required"))?;
            let destination = validate::destination(&number, &state.config)?;
            let extension = req.extension.map(validate::extension).transpose()?;
            (
                MethodDetail::Phone {
                    destination: destination.destination,
                    extension,
                },
                MethodStatus::Active,
                None,
            )
        }
        "app_code" => {
            if req.phone_number.is_some() || req.extension.is_some() {
                return Err(AppError::bad_request(
                    "unexpected_field",
                    "phone_number and extension: only for a phone method",
                ));
            }
            let sealer = state.signin.sealer()?;
            let (pending, offer) = totp::begin_enrolment(
                sealer,
                &method_id,
                &state.config.methods.totp_issuer,
                &user.external_id,
            )
            .map_err(|e| {
                AppError::Crypto(SigninError::Unprocessable {
                    code: "enrolment_failed",
                    message: e.to_string(),
                })
            })?;
            (
                MethodDetail::AppCode {
                    secret: pending.secret,
                },
                MethodStatus::Pending,
                Some(offer),
            )
        }
        other => {
            return Err(AppError::bad_request(
                "invalid_type",
                format!("type: `{other}` is not a method type (`phone`, `app_code`)"),
            ));
        }
    };
    let max = state.config.methods.max_per_user;
    let method = directory(&state)?
        .add_method(
            NewMethod {
                id: method_id,
                user_id: user.id.clone(),
                status,
                label,
                detail,
                created_at: now_ms(),
            },
            max,
        )
        .await?
        .ok_or_else(|| {
            AppError::unprocessable(
                "too_many_methods",
                format!("a user has at most {max} methods (methods.max_per_user)"),
            )
        })?;
    tracing::info!(user = %user.id, method = %method.id, kind = method.kind().as_str(), "method enrolled");
    let mut view = EnrolledMethod::of(&method);
    if let Some(offer) = offer {
        view.otpauth_uri = Some(offer.otpauth_uri);
        view.qr_svg = Some(offer.qr_svg);
    }
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = format!("/v1/users/{}/methods/{}", user.id, method.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The user's methods in order.
#[utoipa::path(get, path = "/v1/users/{id}/methods", tag = "users",
    params(("id" = String, Path, description = "`usr_…`")),
    responses((status = 200, description = "In the user's order", body = MethodList),
              (status = 404, description = "No such user for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_methods(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let user = load_user(&state, &client, &id).await?;
    let methods = directory(&state)?.methods(&user.id).await?;
    Ok(Json(MethodList {
        methods: methods.iter().map(EnrolledMethod::of).collect(),
    })
    .into_response())
}

/// One method (never its secret).
#[utoipa::path(get, path = "/v1/users/{id}/methods/{mid}", tag = "users",
    params(("id" = String, Path, description = "`usr_…`"), ("mid" = String, Path, description = "`mth_…`")),
    responses((status = 200, description = "The method", body = EnrolledMethod),
              (status = 404, description = "No such user or method for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn get_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let user = load_user(&state, &client, &id).await?;
    let method = load_method(&state, &user, &mid).await?;
    Ok(Json(EnrolledMethod::of(&method)).into_response())
}

/// Rename or reorder a method.
#[utoipa::path(patch, path = "/v1/users/{id}/methods/{mid}", tag = "users",
    params(("id" = String, Path, description = "`usr_…`"), ("mid" = String, Path, description = "`mth_…`")),
    request_body = MethodUpdate,
    responses((status = 200, description = "The method after the change", body = EnrolledMethod),
              (status = 400, description = "Invalid body", body = ErrorBody),
              (status = 404, description = "No such user or method for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn update_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (MethodUpdate, _) = json_body(&state, &headers, body)?;
    let user = load_user(&state, &client, &id).await?;
    let method = load_method(&state, &user, &mid).await?;
    let patch = MethodPatch {
        label: req
            .label
            .map(|l| l.map(|l| name("label", &l, NAME_MAX)).transpose())
            .transpose()?,
        position: req.position,
    };
    let updated = directory(&state)?
        .update_method(&user.id, &method.id, patch)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no method `{mid}`")))?;
    Ok(Json(EnrolledMethod::of(&updated)).into_response())
}

/// Remove a method.
#[utoipa::path(delete, path = "/v1/users/{id}/methods/{mid}", tag = "users",
    params(("id" = String, Path, description = "`usr_…`"), ("mid" = String, Path, description = "`mth_…`")),
    responses((status = 204, description = "Removed"),
              (status = 404, description = "No such user or method for this client", body = ErrorBody)),
    security(("bearer" = [])))]
async fn delete_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((id, mid)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let user = load_user(&state, &client, &id).await?;
    let method = load_method(&state, &user, &mid).await?;
    directory(&state)?
        .delete_method(&user.id, &method.id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Finish an app-code enrolment with the first code the app shows.
#[utoipa::path(post, path = "/v1/users/{id}/methods/{mid}/confirm", tag = "users",
    params(("id" = String, Path, description = "`usr_…`"), ("mid" = String, Path, description = "`mth_…`")),
    request_body = CodeRequest,
    responses(
        (status = 200, description = "Confirmed: the method is active", body = EnrolledMethod),
        (status = 400, description = "Not six digits (`invalid_code`)", body = ErrorBody),
        (status = 404, description = "No such user or method for this client", body = ErrorBody),
        (status = 409, description = "Not a pending app code (`not_pending`)", body = ErrorBody),
        (status = 422, description = "The code does not match (`wrong_code`)", body = ErrorBody),
        (status = 429, description = "Too many wrong codes (`method_locked`); see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = [])))]
async fn confirm_method(
    State(state): State<AppState>,
    Caller(client): Caller,
    Path((id, mid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, AppError> {
    let (req, _): (CodeRequest, _) = json_body(&state, &headers, body)?;
    let code = parse_code(&req.code)?;
    let user = load_user(&state, &client, &id).await?;
    let method = load_method(&state, &user, &mid).await?;
    let now = now_ms();
    if let Some(until) = method.locked_until.filter(|u| *u > now) {
        return Err(SigninError::Locked { until }.into());
    }
    let pending = PendingAppCode::of(&method).ok_or_else(|| AppError::Conflict {
        code: "not_pending",
        message: format!("method `{mid}` is not an app code waiting for confirmation"),
    })?;
    let sealer = state.signin.sealer()?;
    let unix_secs = u64::try_from(now / 1000).unwrap_or(0);
    match pending.finish(sealer, &code, unix_secs) {
        Ok(proven) => {
            let active = directory(&state)?
                .activate_method(&user.id, &proven.method, proven.step, now)
                .await?
                .ok_or_else(|| AppError::Conflict {
                    code: "not_pending",
                    message: format!("method `{mid}` was confirmed meanwhile"),
                })?;
            tracing::info!(user = %user.id, method = %active.id, "app code confirmed");
            Ok(Json(EnrolledMethod::of(&active)).into_response())
        }
        Err(totp::EnrolError::WrongCode) => {
            let m = &state.config.methods;
            let lock_ms = i64::try_from(m.lockout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            directory(&state)?
                .record_code_failure(&method.id, now, m.lockout_failures, lock_ms)
                .await?;
            Err(AppError::unprocessable(
                "wrong_code",
                "the code does not match: check the app's clock and the account it was added to",
            ))
        }
        Err(e) => Err(AppError::Crypto(SigninError::Unprocessable {
            code: "enrolment_failed",
            message: e.to_string(),
        })),
    }
}
