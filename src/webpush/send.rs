//! Sends push messages to subscription endpoints (RFC 8030 section 5): one encrypted record,
//! VAPID authorization, `TTL` and `Urgency`; retried on transient failures with the outbox's
//! backoff until the request itself expires; `404`/`410` mean the subscription is gone.

use std::sync::Arc;
use std::time::Duration;

use super::{PushCryptoError, UaKeys, VapidKey, encrypt, random_secret};
use crate::config::{Config, WebhookConfig};
use crate::model::{UnixMs, now_ms};

/// Per-attempt timeout (as the webhook's default: a push service answers in well under it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Jitter applied to each backoff delay: uniformly within ±20 % (as the outbox).
const JITTER: f64 = 0.2;
const USER_AGENT: &str = concat!("callverify/", env!("CARGO_PKG_VERSION"));

/// What one attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// 201 (or any 2xx): the push service accepted the message.
    Accepted,
    /// 404 or 410: the subscription no longer exists (RFC 8030 section 7.3).
    Gone,
    /// 429, 5xx or a transport error: try again later.
    Transient(String),
    /// Another 4xx (the message or our identification was refused): retrying will not help.
    Refused(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Crypto(#[from] PushCryptoError),
    #[error("cannot build the push HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Where and how a push goes: what the store keeps of a subscription.
#[derive(Clone, Debug)]
pub struct Target {
    pub endpoint: url::Url,
    pub keys: UaKeys,
}

/// The push sender (cheap to clone).
#[derive(Clone)]
pub struct PushSender {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    vapid: VapidKey,
    subject: String,
    backoff: WebhookConfig,
}

impl PushSender {
    pub fn new(config: &Config, vapid: VapidKey) -> Result<PushSender, SendError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(crate::webhook::GuardedResolver::new(
                config.push.allow_loopback_endpoints,
            )))
            .build()?;
        Ok(PushSender {
            inner: Arc::new(Inner {
                http,
                vapid,
                subject: config.push.vapid_subject.clone(),
                backoff: config.webhook.clone(),
            }),
        })
    }

    pub fn vapid(&self) -> &VapidKey {
        &self.inner.vapid
    }

    /// One attempt: encrypts `payload` afresh (new one-time key and salt) and posts it.
    pub async fn send_once(
        &self,
        target: &Target,
        payload: &[u8],
        ttl_secs: u64,
    ) -> Result<Sent, SendError> {
        let salt: [u8; 16] = rand::random();
        let body = encrypt(payload, &target.keys, &random_secret(), salt)?;
        let authorization = self.inner.vapid.authorization(
            &target.endpoint,
            &self.inner.subject,
            now_ms() / 1000,
        )?;
        let response = self
            .inner
            .http
            .post(target.endpoint.clone())
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            // RFC 8030 section 5.2: how long the push service may keep it; section 5.3: a
            // sign-in waits for the user, so wake the device now.
            .header("ttl", ttl_secs.to_string())
            .header("urgency", "high")
            .header("authorization", authorization)
            .body(body)
            .send()
            .await;
        Ok(match response {
            Ok(r) if r.status().is_success() => Sent::Accepted,
            Ok(r) if matches!(r.status().as_u16(), 404 | 410) => Sent::Gone,
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => {
                Sent::Transient(format!("HTTP {}", r.status().as_u16()))
            }
            Ok(r) => Sent::Refused(r.status().as_u16()),
            Err(e) => Sent::Transient(e.without_url().to_string()),
        })
    }

    /// Sends until accepted, gone, refused, or `deadline` (the request's expiry) passes,
    /// waiting between attempts as the webhook outbox does.
    pub async fn deliver(
        &self,
        target: &Target,
        payload: &[u8],
        deadline: UnixMs,
    ) -> Result<Sent, SendError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let left = deadline.saturating_sub(now_ms());
            let ttl = u64::try_from(left / 1000).unwrap_or(0).max(1);
            let sent = self.send_once(target, payload, ttl).await?;
            let Sent::Transient(reason) = &sent else {
                return Ok(sent);
            };
            let jitter = 1.0 + JITTER * (2.0 * rand::random::<f64>() - 1.0);
            let delay = crate::webhook::backoff(&self.inner.backoff, attempt, jitter);
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            if now_ms().saturating_add(delay_ms) >= deadline {
                return Ok(sent);
            }
            tracing::info!(attempt, %reason, ?delay, "push delivery failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}
