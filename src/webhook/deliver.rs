//! The outbox worker: one delivery attempt per call to [`OutboxWorker::try_deliver`], which
//! returns what it did, so tests drain the outbox with an injected clock and no sleeping.
//!
//! At least once: a message is leased before the attempt and released after it is recorded;
//! a crash in between only delays it until the lease ends (or the next start's recovery).
//!
//! In parallel (issue 9 item 4): [`OutboxWorker::run`] keeps up to `webhook.concurrency`
//! attempts in flight, at most `webhook.per_host_concurrency` per host (`host:port`); a
//! message for a host at its limit is not claimed, so a host that never answers holds only
//! its own messages back.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::OutboxWake;
pub use super::address::is_public;
use super::sign::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::config::{Config, WebhookConfig, WebhookKey};
use crate::metrics::Metrics;
use crate::store::{Attempt, OutboxMessage, OutboxState, Store, StoreError, UnixMs, now_ms};

/// Jitter applied to each backoff delay: uniformly within ±20 %.
const JITTER: f64 = 0.2;
/// The lease outlasts one attempt by this much, in milliseconds.
const LEASE_MARGIN_MS: i64 = 30_000;
/// Longest sleep of the worker loop between looks at the outbox.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Longest stored error text.
const MAX_ERROR_LEN: usize = 500;
/// Shortest pause of the worker loop when nothing could be claimed although messages are due
/// (they are for hosts at their limit): an attempt ending, or a new webhook, wakes it sooner.
const BUSY_IDLE: Duration = Duration::from_millis(250);
const USER_AGENT: &str = concat!("callverify/", env!("CARGO_PKG_VERSION"));

/// What one call of [`OutboxWorker::try_deliver`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing due.
    Empty,
    /// A 2xx came back.
    Delivered { message_id: String, status: u16 },
    /// The attempt failed; the next one is due at `next_attempt_at`.
    Retrying {
        message_id: String,
        next_attempt_at: UnixMs,
        failure: String,
    },
    /// `410 Gone`: never retried.
    Gone { message_id: String },
    /// The retry window is over.
    GaveUp { message_id: String, failure: String },
}

/// The worker could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("client `{client}` has an invalid webhook_secret: {reason}")]
    Secret {
        client: String,
        reason: &'static str,
    },
}

/// The retry delay after `attempt` failed attempts (1 = after the first): `initial · 2^(n-1)`
/// capped at `max`, times `jitter` (1.0 ± `JITTER`).
pub fn backoff(config: &WebhookConfig, attempt: u32, jitter: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(32);
    let base = config
        .initial_backoff_secs
        .saturating_mul(1u64 << doublings)
        .min(config.max_backoff_secs);
    Duration::from_secs_f64(base as f64 * jitter.clamp(1.0 - JITTER, 1.0 + JITTER))
}

/// Delivers webhooks from the outbox.
pub struct OutboxWorker {
    inner: Arc<Worker>,
}

/// What every attempt shares.
struct Worker {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    keys: HashMap<String, WebhookKey>,
    config: WebhookConfig,
    metrics: Arc<Metrics>,
}

impl OutboxWorker {
    pub fn new(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Result<OutboxWorker, WebhookError> {
        let mut keys = HashMap::new();
        for client in &config.api.clients {
            if let Some(secret) = &client.webhook_secret {
                let key = WebhookKey::parse(secret).map_err(|reason| WebhookError::Secret {
                    client: client.name.clone(),
                    reason,
                })?;
                keys.insert(client.name.clone(), key);
            }
        }
        let timeout = Duration::from_secs(config.webhook.timeout_secs);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(USER_AGENT)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.webhook.allow_private_networks,
            }))
            .build()?;
        Ok(OutboxWorker {
            inner: Arc::new(Worker {
                store,
                http,
                keys,
                config: config.webhook.clone(),
                metrics,
            }),
        })
    }

    /// Makes at most one delivery attempt: the next message due at `now`, if any.
    pub async fn try_deliver(&self, now: UnixMs) -> Result<Delivery, StoreError> {
        match self.inner.claim(now, &[]).await? {
            Some(msg) => self.inner.deliver(msg, now).await,
            None => Ok(Delivery::Empty),
        }
    }

    /// Delivers until `shutdown`: keeps up to `webhook.concurrency` attempts in flight (at
    /// most `webhook.per_host_concurrency` per host), sleeps until the next message is due or
    /// something is queued. Attempts in progress at shutdown are finished and recorded.
    pub async fn run(self, wake: OutboxWake, shutdown: CancellationToken) {
        let worker = self.inner;
        let total = worker.config.concurrency.max(1);
        let per_host = worker.config.per_host_concurrency.max(1);
        let mut in_flight: JoinSet<(String, Result<Delivery, StoreError>)> = JoinSet::new();
        let mut hosts: HashMap<String, usize> = HashMap::new();
        let done =
            |hosts: &mut HashMap<String, usize>,
             finished: Result<(String, Result<Delivery, StoreError>), _>| {
                match finished {
                    Ok((host, result)) => {
                        if let Some(n) = hosts.get_mut(&host) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                hosts.remove(&host);
                            }
                        }
                        if let Err(e) = result {
                            tracing::error!(error = %e, "outbox worker cannot record an attempt");
                        }
                    }
                    // A panicking attempt: its message stays leased until the lease ends. Its
                    // host's count cannot be found any more; recount from what is left.
                    Err(e) => {
                        tracing::error!(error = %e, "a webhook attempt panicked");
                        hosts.clear();
                    }
                }
            };
        loop {
            while let Some(finished) = in_flight.try_join_next() {
                done(&mut hosts, finished);
            }
            if shutdown.is_cancelled() {
                break;
            }
            let mut claimed = false;
            while in_flight.len() < total {
                let busy: Vec<String> = hosts
                    .iter()
                    .filter(|(_, n)| **n >= per_host)
                    .map(|(h, _)| h.clone())
                    .collect();
                let now = now_ms();
                match worker.claim(now, &busy).await {
                    Ok(Some(msg)) => {
                        claimed = true;
                        *hosts.entry(msg.host.clone()).or_default() += 1;
                        let w = Arc::clone(&worker);
                        in_flight.spawn(async move {
                            let host = msg.host.clone();
                            (host, w.deliver(msg, now).await)
                        });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "outbox worker cannot read the store");
                        break;
                    }
                }
            }
            let idle = match worker.store.next_webhook_due().await {
                Ok(Some(due)) => {
                    Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0)).min(MAX_IDLE)
                }
                _ => MAX_IDLE,
            };
            // Due messages left unclaimed are for busy hosts: wait for an attempt to end.
            let idle = if claimed { idle } else { idle.max(BUSY_IDLE) };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.woken() => {}
                _ = tokio::time::sleep(idle) => {}
                Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                    done(&mut hosts, finished);
                }
            }
        }
        while let Some(finished) = in_flight.join_next().await {
            done(&mut hosts, finished);
        }
    }
}

impl Worker {
    /// Leases the next message due at `now` whose host is not in `busy`.
    async fn claim(
        &self,
        now: UnixMs,
        busy: &[String],
    ) -> Result<Option<OutboxMessage>, StoreError> {
        let timeout_ms = i64::try_from(self.config.timeout_secs * 1000).unwrap_or(i64::MAX);
        let lease_until = now
            .saturating_add(timeout_ms)
            .saturating_add(LEASE_MARGIN_MS);
        self.store.claim_webhook(now, lease_until, busy).await
    }

    /// One attempt at a leased message, recorded.
    async fn deliver(&self, msg: OutboxMessage, now: UnixMs) -> Result<Delivery, StoreError> {
        let number = msg.attempts + 1;
        let started = Instant::now();
        let outcome = self.attempt(&msg, now).await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (status_code, failure) = match &outcome {
            Ok(status) if (200..300).contains(status) => (Some(*status), None),
            Ok(status) => (Some(*status), Some(format!("HTTP {status}"))),
            Err(e) => (None, Some(e.clone())),
        };
        let attempt = Attempt {
            message_id: msg.id.clone(),
            number,
            at: now,
            status_code,
            error: failure.clone(),
            duration_ms,
        };
        let message_id = msg.id.clone();
        let delivery = match (status_code, failure) {
            (Some(status), None) => {
                self.store
                    .record_attempt(attempt, OutboxState::Delivered, now)
                    .await?;
                self.metrics.webhook_delivered();
                tracing::info!(%message_id, verification = %msg.verification_id, status, "webhook delivered");
                Delivery::Delivered { message_id, status }
            }
            (Some(410), Some(_)) => {
                self.store
                    .record_attempt(attempt, OutboxState::Gone, now)
                    .await?;
                self.metrics.webhook_failed();
                self.metrics.webhook_gone();
                tracing::warn!(%message_id, "webhook receiver answered 410 Gone: not retried");
                Delivery::Gone { message_id }
            }
            (_, failure) => {
                let failure = failure.unwrap_or_default();
                self.metrics.webhook_failed();
                let jitter = rand::rng().random_range((1.0 - JITTER)..=(1.0 + JITTER));
                let delay = backoff(&self.config, number, jitter);
                let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                let window_ms =
                    i64::try_from(self.config.retry_for_hours * 3_600_000).unwrap_or(i64::MAX);
                if next > msg.created_at.saturating_add(window_ms) {
                    self.store
                        .record_attempt(attempt, OutboxState::GaveUp, now)
                        .await?;
                    self.metrics.webhook_gave_up();
                    tracing::error!(%message_id, %failure, attempts = number, "webhook abandoned: retry window over");
                    Delivery::GaveUp {
                        message_id,
                        failure,
                    }
                } else {
                    self.store
                        .record_attempt(attempt, OutboxState::Pending, next)
                        .await?;
                    tracing::warn!(%message_id, %failure, attempt = number, retry_in_s = delay.as_secs(), "webhook attempt failed");
                    Delivery::Retrying {
                        message_id,
                        next_attempt_at: next,
                        failure,
                    }
                }
            }
        };
        Ok(delivery)
    }

    /// One HTTP POST. `Ok(status)` when a response came, `Err(what)` otherwise.
    async fn attempt(&self, msg: &OutboxMessage, now: UnixMs) -> Result<u16, String> {
        let key = self
            .keys
            .get(&msg.client)
            .ok_or_else(|| format!("client `{}` has no webhook_secret", msg.client))?;
        let url = reqwest::Url::parse(&msg.url).map_err(|e| format!("bad URL: {e}"))?;
        if let Some(host) = url.host() {
            let literal: Option<IpAddr> = match host {
                url::Host::Ipv4(ip) => Some(ip.into()),
                url::Host::Ipv6(ip) => Some(ip.into()),
                url::Host::Domain(_) => None,
            };
            if let Some(ip) = literal
                && !self.config.allow_private_networks
                && !is_public(ip)
            {
                return Err(format!("refused: {ip} is not a public address"));
            }
        }
        let timestamp = now.div_euclid(1000);
        let signature = sign::sign(key, &msg.id, timestamp, msg.payload.as_bytes());
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, &msg.id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(msg.payload.clone())
            .send()
            .await
            .map_err(|e| {
                let text = if e.is_timeout() {
                    "timeout".to_owned()
                } else {
                    error_chain(&e)
                };
                truncated(text, MAX_ERROR_LEN)
            })?;
        Ok(response.status().as_u16())
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncated(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Resolves callback hosts and drops non-public addresses (unless allowed), so a DNS name
/// cannot point the worker at internal services, even by rebinding between check and use.
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    /// `allow_private`: loopback, private and link-local answers are kept (tests, development).
    pub fn new(allow_private: bool) -> GuardedResolver {
        GuardedResolver { allow_private }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("refused: {host} resolves to no public address").into();
                return Err(e);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let c = WebhookConfig::default();
        assert_eq!(backoff(&c, 1, 1.0), Duration::from_secs(5));
        assert_eq!(backoff(&c, 2, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(&c, 4, 1.0), Duration::from_secs(40));
        assert_eq!(
            backoff(&c, 30, 1.0),
            Duration::from_secs(c.max_backoff_secs)
        );
        assert_eq!(backoff(&c, 1, 0.8), Duration::from_secs(4));
        assert_eq!(backoff(&c, 1, 5.0), Duration::from_secs(6));
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "192.0.2.1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "::1",
            "fe80::1",
            "fec0::1",
            "fd00::1",
            "ff02::1",
            "ff0e::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "::192.168.0.1",
            "64:ff9b::a00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::1",
            "2002:c0a8:101::1",
            "2002:808:808::1",
            "2001:0:4136:e378::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(truncated("ééé".to_owned(), 3), "é");
    }
}
