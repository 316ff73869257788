//! API clients and `Authorization: Bearer` authentication. Keys are kept only as SHA-256
//! hashes and compared in constant time.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AppError, AppState};
use crate::config::{Config, ConfigError};

/// One configured client, without its key.
#[derive(Debug)]
pub struct Client {
    pub name: String,
    key_hash: [u8; 32],
    /// `host` or `host:port`, lowercase.
    pub callback_hosts: Vec<String>,
    /// Verifications per minute, hour and day (0: no limit).
    pub rate_per_minute: u32,
    pub rate_per_hour: u32,
    pub rate_per_day: u32,
    pub has_webhook_secret: bool,
    /// Hosts a hosted prompt's `return_url` may point to (`host` or `host:port`), lowercase.
    pub return_hosts: Vec<String>,
}

/// Every configured client.
#[derive(Debug, Default)]
pub struct Clients(Vec<Arc<Client>>);

impl Clients {
    pub fn from_config(config: &Config) -> Result<Clients, ConfigError> {
        let mut clients = Vec::new();
        for (i, c) in config.api.clients.iter().enumerate() {
            let key_hash = c.key_hash().map_err(|reason| ConfigError::Invalid {
                key: format!("api.clients[{i}].key"),
                reason: reason.to_owned(),
            })?;
            clients.push(Arc::new(Client {
                name: c.name.clone(),
                key_hash,
                callback_hosts: c
                    .callback_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                rate_per_minute: or_default(c.rate_per_minute, config.limits.per_client_per_minute),
                rate_per_hour: or_default(c.rate_per_hour, config.limits.per_client_per_hour),
                rate_per_day: or_default(c.rate_per_day, config.limits.per_client_per_day),
                has_webhook_secret: c.webhook_secret.is_some(),
                return_hosts: c
                    .return_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            }));
        }
        Ok(Clients(clients))
    }

    /// The client whose key is `token`. Every client is compared, in constant time, so the
    /// timing says nothing about which key or how much of it matched.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Client>> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for client in &self.0 {
            if bool::from(client.key_hash.ct_eq(&hash)) {
                found = Some(Arc::clone(client));
            }
        }
        found
    }
}

/// A client's own limit, or the default when it has none (0).
fn or_default(own: u32, default: u32) -> u32 {
    if own > 0 { own } else { default }
}

/// The authenticated client of a request.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<Client>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(AppError::Unauthorized(
                "missing Authorization header: send `Authorization: Bearer <api key>`",
            ))?;
        let value = value
            .to_str()
            .map_err(|_| AppError::Unauthorized("Authorization header is not ASCII"))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AppError::Unauthorized(
                "Authorization must use the Bearer scheme: `Authorization: Bearer <api key>`",
            ));
        }
        let token = token.trim();
        if token.is_empty() {
            return Err(AppError::Unauthorized("the Bearer token is empty"));
        }
        state
            .clients
            .authenticate(token)
            .map(Caller)
            .ok_or(AppError::Unauthorized("invalid API key"))
    }
}
