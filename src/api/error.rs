//! One error type for every handler, rendered as `{"error":{"code","message"}}` with the
//! status that says who is at fault. Internal errors are logged, never shown.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable machine code and a message for humans.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case (`invalid_json`, `missing_field`, `country_not_allowed`…).
    #[schema(example = "invalid_phone_number")]
    pub code: &'static str,
    pub message: String,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 400: the request cannot be understood (syntax, types, missing or unknown fields).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no or wrong API key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// 409: conflicts with the state of the resource or an earlier request.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 415.
    #[error("send the body as JSON with `Content-Type: application/json`")]
    UnsupportedMediaType,
    /// 422: understood, but refused by policy (country, number type, callback host…).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// 429 with `Retry-After`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// 429 with `Retry-After` and code `method_locked`: too many wrong codes for a method.
    #[error("{message}")]
    Locked {
        message: String,
        retry_after: Duration,
    },
    /// 501: a feature this deployment has not configured (`methods.seal_key`…).
    #[error("{0}")]
    NotConfigured(String),
    /// 500: a secret that does not open or a result that cannot be signed; logged, not shown.
    #[error("internal error")]
    Crypto(#[source] crate::signin::SigninError),
    /// 503: the store does not answer.
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    /// 500: a bug or a broken store; logged, not shown.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<StoreError> for AppError {
    /// An unreachable database (down, restarting) is 503, so clients retry; anything else
    /// from the store is a 500.
    fn from(e: StoreError) -> AppError {
        if e.is_unavailable() {
            AppError::Unavailable(e)
        } else {
            AppError::Internal(e)
        }
    }
}

impl AppError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> AppError {
        AppError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> AppError {
        AppError::Unprocessable {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            AppError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            AppError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            AppError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            AppError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            AppError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            AppError::Locked { .. } => (StatusCode::TOO_MANY_REQUESTS, "method_locked"),
            AppError::NotConfigured(_) => (StatusCode::NOT_IMPLEMENTED, "not_configured"),
            AppError::Crypto(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::signin::SigninError> for AppError {
    fn from(e: crate::signin::SigninError) -> AppError {
        use crate::signin::SigninError as E;
        match e {
            E::NoDirectory | E::NoSealKey => AppError::NotConfigured(e.to_string()),
            E::NotFound(m) => AppError::NotFound(m),
            E::Conflict { code, message } => AppError::Conflict { code, message },
            E::Unprocessable { code, message } => AppError::Unprocessable { code, message },
            E::Locked { until } => {
                let ms = u64::try_from(until - crate::model::now_ms()).unwrap_or(0);
                AppError::Locked {
                    message: format!(
                        "too many wrong codes for this method; retry in {} s or use another method",
                        ms.div_ceil(1000).max(1)
                    ),
                    retry_after: Duration::from_millis(ms),
                }
            }
            E::Store(e) => AppError::Internal(e),
            e @ (E::Seal(_) | E::Sign(_)) => AppError::Crypto(e),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            AppError::Internal(e) => tracing::error!(error = %e, "internal error"),
            AppError::Crypto(e) => tracing::error!(error = %e, "internal error"),
            AppError::Unavailable(e) => tracing::warn!(error = %e, "store unavailable"),
            _ => tracing::debug!(status = status.as_u16(), code, "request refused"),
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code,
                message: self.to_string(),
            },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            AppError::RateLimited { retry_after, .. } | AppError::Locked { retry_after, .. } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            AppError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"callverify\""),
                );
            }
            _ => {}
        }
        response
    }
}
